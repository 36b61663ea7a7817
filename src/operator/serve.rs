//! Serving on every replica: watches SigningKeys, the Secrets authplane manages and
//! AuthPolicies, and keeps the registry as dev mode does (same core, same server). The
//! request path never calls the API server.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use tokio::sync::watch;

use super::feed::Feed;
use super::instance::Instance;
use super::signing_keys::{MANAGED_BY, check_owner, secret_data};
use crate::admission::{Claims, SigningKeyIndex};
use crate::api::{AuthPolicy, AuthPolicyStatus, ObjectKey, SigningKey, Validate};
use crate::index::Index;
use crate::issuer_claims::{IssuerScope, KeyClaim};
use crate::keys::store;
use crate::registry::{PolicyRuntime, PublishedIssuer, Registry, ServedKeys, SourceState};

pub fn managed_selector() -> String {
    format!("{}={}", MANAGED_BY.0, MANAGED_BY.1)
}

/// How often problems are looked at, to log those that lasted (see
/// [`PolicyRuntime::with_problem_grace`]).
const PROBLEMS_EVERY: Duration = Duration::from_secs(5);
/// How long a SigningKey without its Secret is taken to be one whose Secret the leader
/// is still making (at a cold start with 1,000 keys on a slow apiserver, 90 s): its
/// problem, and those of the policies naming it, are not logged meanwhile.
const SECRET_EXPECTED_WITHIN: Duration = Duration::from_secs(300);

/// The SigningKeys of the watch cache, for the admission webhook: one that does not
/// parse still exists (its own review refuses it, not the policies naming it). What they
/// hold (issuer paths, Secrets) comes from the serving index, in `registry`.
pub struct KeyIndex {
    pub keys: Store<DeserializeGuard<SigningKey>>,
    pub registry: Arc<Registry>,
    pub scope: Arc<IssuerScope>,
}

impl SigningKeyIndex for KeyIndex {
    fn contains(&self, id: &ObjectKey) -> bool {
        self.keys
            .get(&ObjectRef::new(&id.name).within(&id.namespace))
            .is_some()
    }

    fn max_token_lifetime(&self, id: &ObjectKey) -> Option<jiff::SignedDuration> {
        let key = self
            .keys
            .get(&ObjectRef::new(&id.name).within(&id.namespace))?;
        key.0.as_ref().ok().map(|key| key.spec.max_token_lifetime())
    }

    fn claims(&self) -> Option<Claims> {
        Some(Claims {
            scope: self.scope.clone(),
            snapshot: self.registry.load(),
        })
    }
}

/// The serving watches' caches. They are the only copy of these objects in the
/// process: the admission webhook reads the SigningKeys, and the leader's controllers
/// read all three instead of watching the same objects again.
#[derive(Clone)]
pub struct Caches {
    pub keys: Store<DeserializeGuard<SigningKey>>,
    pub secrets: Store<Secret>,
    pub policies: Store<DeserializeGuard<AuthPolicy>>,
}

/// What fills [`Caches`]: the serving watches.
pub struct CacheWriters {
    keys: Writer<DeserializeGuard<SigningKey>>,
    secrets: Writer<Secret>,
    policies: Writer<DeserializeGuard<AuthPolicy>>,
}

impl CacheWriters {
    /// Fills the caches with complete lists, as the watches do when they have listed
    /// (tests feed the leader's controllers this way, without the serving loop).
    pub fn fill(
        &mut self,
        keys: Vec<DeserializeGuard<SigningKey>>,
        secrets: Vec<Secret>,
        policies: Vec<DeserializeGuard<AuthPolicy>>,
    ) {
        fn list<K>(writer: &mut Writer<K>, objects: Vec<K>)
        where
            K: Resource + Clone + 'static,
            K::DynamicType: Eq + std::hash::Hash + Clone,
        {
            writer.apply_watcher_event(&watcher::Event::Init);
            for object in objects {
                writer.apply_watcher_event(&watcher::Event::InitApply(object));
            }
            writer.apply_watcher_event(&watcher::Event::InitDone);
        }
        list(&mut self.keys, keys);
        list(&mut self.secrets, secrets);
        list(&mut self.policies, policies);
    }
}

/// Empty caches, and what fills them.
pub fn caches() -> (Caches, CacheWriters) {
    let (keys, keys_writer) = reflector::store();
    let (secrets, secrets_writer) = reflector::store();
    let (policies, policies_writer) = reflector::store();
    (
        Caches {
            keys,
            secrets,
            policies,
        },
        CacheWriters {
            keys: keys_writer,
            secrets: secrets_writer,
            policies: policies_writer,
        },
    )
}

/// What the serving loop announces, once served: the SigningKeys it applied (their
/// own change, or their Secret's) or whose issuer claim moved (their status says whether
/// it is served), and the AuthPolicies it applied or compiled again.
#[derive(Clone, Default)]
pub struct Feeds {
    pub keys: Arc<Feed>,
    pub policies: Arc<Feed>,
    /// The same SigningKeys, for the TokenClient watch (every replica): a key's issuer
    /// or `maxTokenLifetime` decides how its clients are served.
    pub token_client_keys: Arc<Feed>,
}

/// What the serving loop serves.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The base of default issuer URLs, and where each SigningKey's issuer may be
    /// published.
    pub scope: Arc<IssuerScope>,
    /// Only this instance's objects are watched and served.
    pub instance: Instance,
}

/// Runs the serving watches into `caches`.
///
/// Each watch event names the object it touched; the loop applies those objects to the
/// index (reading them from the watch caches), publishes, and then announces them to
/// the leader's controllers. A relist (at start, after a watch restart) resyncs that
/// kind once it is complete, which also finds the objects deleted meanwhile. A watch is
/// reported synced (and `/readyz` says ready) only once every object it listed is in the
/// published snapshot.
pub async fn run(
    client: Client,
    settings: Settings,
    registry: Arc<Registry>,
    runtime: Arc<PolicyRuntime>,
    caches: (Caches, CacheWriters),
    feeds: Feeds,
    mut shutdown: watch::Receiver<bool>,
) {
    let (caches, writers) = caches;
    let instance = &settings.instance;
    let managed = watcher::Config::default().labels(&managed_selector());
    let streams = vec![
        reflector::reflector(
            writers.keys,
            instance.watch(
                "SigningKeys",
                watcher(Api::all(client.clone()), watcher::Config::default()).default_backoff(),
            ),
        )
        .map(|e| (0, e.map(|event| touched(&event))))
        .boxed(),
        reflector::reflector(
            writers.secrets,
            instance.watch(
                "Secrets",
                watcher(Api::all(client.clone()), managed).default_backoff(),
            ),
        )
        .map(|e| (1, e.map(|event| touched(&event))))
        .boxed(),
        reflector::reflector(
            writers.policies,
            instance.watch(
                "AuthPolicies",
                watcher(Api::all(client), watcher::Config::default()).default_backoff(),
            ),
        )
        .map(|e| (2, e.map(|event| touched(&event))))
        .boxed(),
    ];
    for name in WATCHES {
        registry.set_source(name, SourceState::Syncing);
    }
    let mut changes = futures::stream::select_all(streams);
    let mut view = View::new(runtime.clone(), settings.scope.clone());
    let sources = Sources {
        caches: &caches,
        external_url: settings.scope.external_url(),
    };
    // Watches listed, whose objects are not all served yet.
    let mut listed = [false; 3];
    let mut problems = tokio::time::interval(PROBLEMS_EVERY);
    problems.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut batch = Vec::new();
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = problems.tick() => {
                runtime.report_lasting_problems(|subject| view.expected(subject, &caches));
                // Policies let in, or kept out, of the external-issuer cap by a
                // TokenClient (indexed in its own task): compiled again and served.
                if view.index.apply_quota_moves() {
                    let mut snapshot = view.index.snapshot();
                    snapshot.policies_known = registry.load().policies_known;
                    registry.publish(snapshot);
                    feeds.policies.announce(view.index.take_recompiled());
                }
                continue;
            }
            change = changes.next() => match change {
                None => return,
                Some(change) => batch.push(change),
            },
        }
        // What has already arrived is applied together (a list, a rotation touching
        // Secret and status); nothing waits for more.
        while let Some(Some(change)) = changes.next().now_or_never() {
            batch.push(change);
        }
        let synced = [
            caches.keys.wait_until_ready().now_or_never(),
            caches.secrets.wait_until_ready().now_or_never(),
            caches.policies.wait_until_ready().now_or_never(),
        ]
        .map(|r| matches!(r, Some(Ok(()))));
        // The last item of each watch in this batch says how it is doing now.
        let mut latest: [Option<Result<(), String>>; 3] = Default::default();
        for (index, result) in batch {
            match result {
                Ok(touched) => {
                    view.pending.add(index, touched);
                    latest[index] = Some(Ok(()));
                }
                Err(e) => latest[index] = Some(Err(describe_watch_error(&e))),
            }
        }
        for (index, result) in latest.into_iter().enumerate() {
            match result {
                Some(Err(why)) => {
                    listed[index] = false;
                    report(&registry, WATCHES[index], SourceState::Failing(why));
                }
                Some(Ok(())) if synced[index] => listed[index] = true,
                _ => {}
            }
        }
        // Serve per resource: the keys as soon as SigningKeys and Secrets are listed,
        // whatever the AuthPolicy watch does; the policies once listed, even while a key
        // watch fails (those of external issuers work, those of our keys fail closed).
        // Not while the key watches are merely still listing: policies would be served
        // for a moment without the keys they name.
        let key_watch_failing = registry.unsynced_sources().iter().any(|(name, state)| {
            WATCHES[..2].contains(name) && matches!(state, SourceState::Failing(_))
        });
        if (synced[0] && synced[1]) || (synced[2] && key_watch_failing) {
            let applied = view.apply_pending(&sources);
            let mut snapshot = view.index.snapshot();
            snapshot.policies_known = synced[2];
            registry.publish(snapshot);
            registry.publish_signers(view.signers.clone());
            // Every listed object is in the published snapshot now: only now is the
            // watch synced. Reported before, a replica took traffic while it was still
            // compiling 10,000 listed policies, and answered 503 meanwhile.
            for (index, listed) in listed.iter_mut().enumerate() {
                if std::mem::take(listed) {
                    report(&registry, WATCHES[index], SourceState::Synced);
                }
            }
            // Once served, announced: on the leader, this is what its controllers
            // reconcile (every replica compiles the same objects the same way).
            let mut policies = applied.policies;
            policies.extend(view.index.take_recompiled());
            let mut keys = applied.keys;
            keys.extend(view.index.take_reclaimed());
            feeds.token_client_keys.announce(keys.iter().cloned());
            feeds.keys.announce(keys);
            feeds.policies.announce(policies);
        }
    }
}

/// What one watch event touched: an object, or (a relist complete) every object of the
/// kind.
enum Touched {
    Object(ObjectKey),
    Everything,
    Nothing,
}

fn touched<K: kube::Resource>(event: &watcher::Event<K>) -> Touched {
    match event {
        watcher::Event::Apply(object) | watcher::Event::Delete(object) => {
            Touched::Object(ObjectKey::of(object.meta()))
        }
        // Objects of a relist reach the cache only once it is complete.
        watcher::Event::Init | watcher::Event::InitApply(_) => Touched::Nothing,
        watcher::Event::InitDone => Touched::Everything,
    }
}

/// The watch caches and what rendering needs.
struct Sources<'a> {
    caches: &'a Caches,
    external_url: &'a str,
}

/// The objects one pass applied.
#[derive(Default)]
struct Applied {
    keys: BTreeSet<ObjectKey>,
    /// Those whose object changed (a new resourceVersion).
    policies: BTreeSet<ObjectKey>,
}

/// Objects touched since they were last applied, per kind (in the order of WATCHES).
#[derive(Default)]
struct Pending {
    objects: [BTreeSet<ObjectKey>; 3],
    everything: [bool; 3],
}

impl Pending {
    fn add(&mut self, watch: usize, touched: Touched) {
        match touched {
            Touched::Object(id) => {
                self.objects[watch].insert(id);
            }
            Touched::Everything => self.everything[watch] = true,
            Touched::Nothing => {}
        }
    }
}

/// The serving watches, in the order of their streams.
const WATCHES: [&str; 3] = ["SigningKey watch", "Secret watch", "AuthPolicy watch"];

/// Records a watch's state, logging only when it changes. A failing watch is retried
/// with backoff; a watch that recovers and lists again reports `Synced`.
fn report(registry: &Registry, name: &'static str, state: SourceState) {
    let previous = registry.set_source(name, state.clone());
    if previous.as_ref() == Some(&state) {
        return;
    }
    match (&state, previous) {
        (SourceState::Failing(why), _) => tracing::warn!(
            "{name} failing: {why} (retrying with backoff; what was listed before keeps serving)"
        ),
        (SourceState::Synced, Some(SourceState::Failing(_))) => {
            tracing::info!("{name} recovered")
        }
        _ => {}
    }
}

/// A watch error in words, with the likely fix for a missing CRD.
fn describe_watch_error(error: &watcher::Error) -> String {
    let text = error.to_string();
    let missing = matches!(
        error,
        watcher::Error::InitialListFailed(kube::Error::Api(status))
            | watcher::Error::WatchStartFailed(kube::Error::Api(status))
            | watcher::Error::WatchFailed(kube::Error::Api(status))
            if status.code == 404
    );
    if missing {
        format!("{text}: is its CRD installed? (kubectl apply --server-side -f crds/)")
    } else {
        text
    }
}

/// The index fed from the watch caches, and what was already warned about (so a bad
/// object is reported once, not at every change).
struct View {
    index: Index,
    /// Where problems are reported (and logged once they last).
    runtime: Arc<PolicyRuntime>,
    pending: Pending,
    /// The Secret each SigningKey keeps its keys in, and the reverse: a Secret event
    /// re-renders only the SigningKeys using it.
    secret_of: HashMap<ObjectKey, ObjectKey>,
    users_of: HashMap<ObjectKey, BTreeSet<ObjectKey>>,
    /// The `resourceVersion` of each AuthPolicy last applied: a relist does not validate
    /// again what did not change.
    policy_versions: HashMap<ObjectKey, Option<String>>,
    /// SigningKeys not served because their Secret does not exist yet, since when.
    awaiting_secret: HashMap<ObjectKey, tokio::time::Instant>,
    /// The key sets served, for the token endpoint to sign with: published next to the
    /// snapshot, never in it (status and metrics read the snapshot).
    signers: crate::registry::Signers,
    warned: HashSet<String>,
}

impl View {
    fn new(runtime: Arc<PolicyRuntime>, scope: Arc<IssuerScope>) -> Self {
        Self {
            index: Index::new(runtime.clone(), scope).recording_recompiled(),
            runtime,
            pending: Pending::default(),
            secret_of: HashMap::new(),
            users_of: HashMap::new(),
            policy_versions: HashMap::new(),
            awaiting_secret: HashMap::new(),
            signers: Default::default(),
            warned: HashSet::new(),
        }
    }

    /// Whether a subject's problem is still expected to resolve itself: a SigningKey
    /// whose Secret has not been there for long (the leader is making it), or an
    /// AuthPolicy naming one.
    fn expected(&self, subject: &str, caches: &Caches) -> bool {
        let young = |key: &ObjectKey| {
            self.awaiting_secret
                .get(key)
                .is_some_and(|since| since.elapsed() < SECRET_EXPECTED_WITHIN)
        };
        let id = |text: &str| {
            let (namespace, name) = text.split_once('/')?;
            Some(ObjectKey {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            })
        };
        if let Some(key) = subject.strip_prefix("SigningKey ").and_then(id) {
            return young(&key);
        }
        let Some(policy) = subject.strip_prefix("AuthPolicy ").and_then(id) else {
            return false;
        };
        let cached = caches
            .policies
            .get(&ObjectRef::new(&policy.name).within(&policy.namespace));
        cached.is_some_and(|guard| match &guard.0 {
            Ok(policy) => policy
                .spec
                .issuers
                .iter()
                .filter_map(|issuer| {
                    issuer.signing_key_id(&ObjectKey::of(&policy.metadata).namespace)
                })
                .any(|key| young(&key)),
            Err(_) => false,
        })
    }

    fn warn_once(&mut self, message: String) {
        if self.warned.insert(message.clone()) {
            tracing::warn!("{message}");
        }
    }

    /// Applies every pending object to the index: keys first, so that the policies
    /// compiled next see them. Returns what it applied.
    fn apply_pending(&mut self, sources: &Sources<'_>) -> Applied {
        let pending = std::mem::take(&mut self.pending);
        let [keys, secrets, policies] = pending.objects;
        let mut keys = keys;
        let caches = sources.caches;
        if pending.everything[0] || pending.everything[1] {
            keys.extend(caches.keys.state().iter().map(|k| ObjectKey::of(k.meta())));
            keys.extend(self.index.served_keys().map(|(id, _)| id.clone()));
            keys.extend(self.secret_of.keys().cloned());
        }
        for secret in &secrets {
            keys.extend(self.users_of.get(secret).into_iter().flatten().cloned());
        }
        for id in &keys {
            self.sync_key(id, sources);
            match self.index.served(id) {
                Some(served) => {
                    self.signers
                        .insert(id.clone(), Arc::new(served.keys.clone()));
                }
                None => {
                    self.signers.remove(id);
                }
            }
        }
        let mut policies = policies;
        if pending.everything[2] {
            policies.extend(
                caches
                    .policies
                    .state()
                    .iter()
                    .map(|p| ObjectKey::of(p.meta())),
            );
            policies.extend(self.policy_versions.keys().cloned());
        }
        let policies = policies
            .into_iter()
            .filter(|id| self.sync_policy(id, caches))
            .collect();
        Applied { keys, policies }
    }

    fn set_secret(&mut self, id: &ObjectKey, secret: Option<ObjectKey>) {
        if secret.is_none() {
            self.awaiting_secret.remove(id);
        }
        if let Some(old) = self.secret_of.remove(id)
            && let Some(users) = self.users_of.get_mut(&old)
        {
            users.remove(id);
            if users.is_empty() {
                self.users_of.remove(&old);
            }
        }
        if let Some(secret) = secret {
            self.users_of
                .entry(secret.clone())
                .or_default()
                .insert(id.clone());
            self.secret_of.insert(id.clone(), secret);
        }
    }

    /// Serves a SigningKey as the caches have it now: from its Secret, the last good keys
    /// while that is missing or broken, nothing once it is gone or invalid.
    fn sync_key(&mut self, id: &ObjectKey, sources: &Sources<'_>) {
        let caches = sources.caches;
        let guard = caches
            .keys
            .get(&ObjectRef::new(&id.name).within(&id.namespace));
        let subject = format!("SigningKey {id}");
        let key = match guard.as_deref().map(|g| &g.0) {
            None => {
                self.set_secret(id, None);
                self.index.delete_key(id);
                self.runtime.problem(&subject, None);
                return;
            }
            Some(Err(invalid)) => {
                self.warn_once(format!(
                    "SigningKey {id} skipped, it does not parse: {}",
                    invalid.error
                ));
                self.set_secret(id, None);
                self.index.delete_key(id);
                self.runtime.problem(&subject, None);
                return;
            }
            Some(Ok(key)) => key,
        };
        if !key.validate().is_empty() {
            self.warn_once(format!("SigningKey {id} skipped: invalid spec"));
            self.set_secret(id, None);
            self.index.delete_key(id);
            self.runtime.problem(&subject, None);
            return;
        }
        let secret = ObjectKey {
            namespace: id.namespace.clone(),
            name: key.secret_name(),
        };
        self.set_secret(id, Some(secret.clone()));
        let secret_ref = ObjectRef::<Secret>::new(&secret.name).within(&secret.namespace);
        let cached = caches.secrets.get(&secret_ref);
        // Not there at all (as opposed to unreadable): the leader is making it.
        if cached.is_none() {
            self.awaiting_secret
                .entry(id.clone())
                .or_insert_with(tokio::time::Instant::now);
        } else {
            self.awaiting_secret.remove(id);
        }
        // Another SigningKey's Secret is never read for this one: not its keys, not its
        // claim's age.
        if let Some(not_its) = cached.as_deref().and_then(|s| check_owner(s, key).err()) {
            self.warn_once(format!(
                "SigningKey {id} not served: Secret {} is not its own ({not_its})",
                secret.name
            ));
            let claim = KeyClaim::of(key, sources.external_url, None);
            self.index.apply_claim(id, claim, None);
            return;
        }
        let data = match cached.as_deref().map(secret_data) {
            Some(Ok(data)) => Some(data),
            Some(Err(e)) => return self.keep_last_good(id, key, sources, e.to_string()),
            None => None,
        };
        let claim = KeyClaim::of(key, sources.external_url, data.as_ref());
        let Some(data) = data else {
            if self.index.served(id).is_some() {
                return self.keep_last_good(id, key, sources, "its Secret is gone".into());
            }
            // A new SigningKey's Secret is written by the leader in a moment: said only
            // if it lasts. The claim holds its issuer path meanwhile.
            self.runtime.problem(
                &subject,
                Some("not served yet: its Secret does not exist yet".to_owned()),
            );
            self.index.apply_claim(id, claim, None);
            return;
        };
        match store::from_data(&data) {
            Ok(keyset) => {
                let published = PublishedIssuer::render(
                    &id.namespace,
                    &id.name,
                    &claim.issuer,
                    &keyset,
                    (&key.key_policy()).into(),
                );
                let served = ServedKeys {
                    published: Arc::new(published),
                    keys: keyset,
                    max_token_lifetime: key.spec.max_token_lifetime(),
                };
                self.index.apply_claim(id, claim, Some(served));
            }
            Err(e) => self.keep_last_good(id, key, sources, e.to_string()),
        }
    }

    /// A SigningKey whose Secret is gone or broken: its last good keys keep serving; one
    /// never served holds its claim until its keys can be read (said only if it lasts).
    fn keep_last_good(
        &mut self,
        id: &ObjectKey,
        key: &SigningKey,
        sources: &Sources<'_>,
        reason: String,
    ) {
        if self.index.served(id).is_some() {
            self.warn_once(format!(
                "SigningKey {id}: {reason}; serving its last good keys"
            ));
        } else {
            self.runtime.problem(
                &format!("SigningKey {id}"),
                Some(format!("not served yet: {reason}")),
            );
            let claim = KeyClaim::of(key, sources.external_url, None);
            self.index.apply_claim(id, claim, None);
        }
    }

    /// Serves an AuthPolicy as the cache has it now, if it is valid. Returns whether
    /// the object changed since it was last applied.
    fn sync_policy(&mut self, id: &ObjectKey, caches: &Caches) -> bool {
        let guard = caches
            .policies
            .get(&ObjectRef::new(&id.name).within(&id.namespace));
        let Some(guard) = guard else {
            self.policy_versions.remove(id);
            self.index.delete_policy(id);
            return true;
        };
        let version = guard.meta().resource_version.clone();
        if self.policy_versions.get(id) == Some(&version) {
            return false;
        }
        self.policy_versions.insert(id.clone(), version);
        match &guard.0 {
            Ok(policy) if policy.validate().is_empty() => {
                self.index.apply_policy(Arc::new(compiled_from(policy)));
            }
            Ok(_) => {
                self.warn_once(format!("AuthPolicy {id} skipped: invalid spec"));
                self.index.delete_policy(id);
            }
            Err(invalid) => {
                self.warn_once(format!(
                    "AuthPolicy {id} skipped, it does not parse: {}",
                    invalid.error
                ));
                self.index.delete_policy(id);
            }
        }
        true
    }
}

/// The part of an AuthPolicy the index keeps (it compiles from it, and compares it with
/// the next version): everything but the status it does not read, which the cache
/// already holds, for 10,000 policies some megabytes.
fn compiled_from(policy: &AuthPolicy) -> AuthPolicy {
    AuthPolicy {
        metadata: policy.metadata.clone(),
        spec: policy.spec.clone(),
        status: policy.status.as_ref().map(|status| AuthPolicyStatus {
            rollout: status.rollout.clone(),
            ..AuthPolicyStatus::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyMaterial;
    use k8s_openapi::ByteString;
    use kube::runtime::watcher::Event;
    use serde_json::json;

    fn runtime() -> PolicyRuntime {
        PolicyRuntime::new(
            Arc::new(crate::metrics::Metrics::default()),
            Arc::new(crate::clock::SystemClock),
            0,
        )
    }

    fn key(name: &str, spec: serde_json::Value) -> DeserializeGuard<SigningKey> {
        serde_json::from_value(json!({
            "apiVersion": "authplane.io/v1alpha1", "kind": "SigningKey",
            "metadata": {"name": name, "namespace": "auth"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn secret(name: &str, data: &crate::keys::store::Data) -> Secret {
        let mut secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "auth", "labels": {
                "app.kubernetes.io/managed-by": "authplane",
                "authplane.io/signing-key": name.trim_end_matches("-keys"),
            }},
        }))
        .unwrap();
        secret.data = Some(
            data.iter()
                .map(|(k, v)| (k.clone(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        );
        secret
    }

    #[test]
    fn problems_of_a_key_whose_secret_is_being_made_and_of_its_policies_are_expected_to_pass() {
        let (caches, writers) = caches();
        let (mut keys_writer, mut secrets_writer, mut policies_writer) =
            (writers.keys, writers.secrets, writers.policies);
        let web = key("web", json!({"algorithm": "EdDSA"}));
        keys_writer.apply_watcher_event(&Event::Apply(web.clone()));
        let policy: DeserializeGuard<AuthPolicy> = serde_json::from_value(json!({
            "apiVersion": "authplane.io/v1alpha1", "kind": "AuthPolicy",
            "metadata": {"name": "pay", "namespace": "auth"},
            "spec": {"issuers": [{"signingKeyRef": {"name": "web"}}]},
        }))
        .unwrap();
        policies_writer.apply_watcher_event(&Event::Apply(policy));
        let sources = Sources {
            caches: &caches,
            external_url: "https://auth.example",
        };
        let scope = IssuerScope::new("https://auth.example", []).unwrap();
        let mut view = View::new(Arc::new(runtime()), Arc::new(scope));
        view.pending.everything = [true; 3];
        view.apply_pending(&sources);
        assert!(view.expected("SigningKey auth/web", &caches));
        assert!(view.expected("AuthPolicy auth/pay", &caches));
        assert!(!view.expected("AuthPolicy auth/other", &caches));

        // The Secret arrives: nothing is expected any more.
        let Ok(web_key) = &web.0 else {
            panic!("web parses")
        };
        let outcome = crate::reconcile::signing_key(
            web_key,
            None,
            "https://auth.example",
            jiff::Timestamp::now(),
            &mut KeyMaterial::generate,
        )
        .unwrap();
        let event = Event::Apply(secret("web-keys", &outcome.data));
        secrets_writer.apply_watcher_event(&event);
        view.pending.add(1, touched(&event));
        view.apply_pending(&sources);
        assert!(!view.expected("SigningKey auth/web", &caches));
        assert!(!view.expected("AuthPolicy auth/pay", &caches));
    }

    #[test]
    fn keys_are_served_from_secrets_keeping_the_last_good_and_skipping_the_malformed() {
        let (caches, writers) = caches();
        let (mut keys_writer, mut secrets_writer) = (writers.keys, writers.secrets);

        let web = key("web", json!({"algorithm": "EdDSA"}));
        let Ok(web_key) = &web.0 else {
            panic!("web parses")
        };
        let now = jiff::Timestamp::now();
        let outcome = crate::reconcile::signing_key(
            web_key,
            None,
            "https://auth.example",
            now,
            &mut KeyMaterial::generate,
        )
        .unwrap();
        keys_writer.apply_watcher_event(&Event::Apply(web.clone()));
        keys_writer
            .apply_watcher_event(&Event::Apply(key("broken", json!({"algorithm": "HS256"}))));
        // Another SigningKey naming web's Secret, with its own issuer path.
        keys_writer.apply_watcher_event(&Event::Apply(key(
            "x",
            json!({"algorithm": "EdDSA", "secretName": "web-keys"}),
        )));
        secrets_writer.apply_watcher_event(&Event::Apply(secret("web-keys", &outcome.data)));

        let caches = Sources {
            caches: &caches,
            external_url: "https://auth.example",
        };
        let scope = IssuerScope::new("https://auth.example", []).unwrap();
        let mut view = View::new(Arc::new(runtime()), Arc::new(scope));
        view.pending.everything = [true; 3];
        view.apply_pending(&caches);
        let snapshot = view.index.snapshot();
        let served = &snapshot.issuers["/auth/web"];
        let jwks: serde_json::Value = serde_json::from_slice(&served.jwks).unwrap();
        assert_eq!(
            jwks["keys"][0]["kid"],
            outcome.keys.records()[0].material.kid()
        );
        assert_eq!(
            snapshot.issuers.len(),
            1,
            "the malformed SigningKey is skipped, the rest served"
        );
        let x = ObjectKey {
            namespace: "auth".into(),
            name: "x".into(),
        };
        assert!(
            view.index.served(&x).is_none(),
            "web's keys are never served as x's"
        );
        assert_eq!(
            snapshot.path_owners["/auth/x"],
            Some(x),
            "x holds its own path, serving nothing"
        );

        // The Secret edited into garbage: the last good keys keep serving.
        let mut garbage = outcome.data.clone();
        garbage.insert("keys.json".into(), "{".into());
        let event = Event::Apply(secret("web-keys", &garbage));
        secrets_writer.apply_watcher_event(&event);
        view.pending.add(1, touched(&event));
        view.apply_pending(&caches);
        let snapshot = view.index.snapshot();
        assert_eq!(snapshot.issuers["/auth/web"].jwks, served.jwks);
    }
}
