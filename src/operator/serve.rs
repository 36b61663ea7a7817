//! Serving on every replica: watches SigningKeys, the Secrets authplane manages and
//! AuthPolicies, and keeps the registry as dev mode does (same core, same server). The
//! request path never calls the API server.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use tokio::sync::watch;

use super::auth_policies::Recompiled;
use super::signing_keys::{MANAGED_BY, check_owner, secret_data};
use crate::admission::{Claims, SigningKeyIndex};
use crate::api::{AuthPolicy, ObjectKey, SigningKey, Validate};
use crate::index::Index;
use crate::issuer_claims::{IssuerScope, KeyClaim};
use crate::keys::store;
use crate::registry::{PolicyRuntime, PublishedIssuer, Registry, ServedKeys, SourceState};

pub fn managed_selector() -> String {
    format!("{}={}", MANAGED_BY.0, MANAGED_BY.1)
}

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

/// What the serving loop tells the leader's controllers: the AuthPolicies it compiled,
/// and the SigningKeys whose issuer claim moved (their status says whether it is
/// served).
pub struct Announced {
    pub recompiled: Arc<Recompiled>,
    pub reclaimed: Arc<Recompiled>,
}

/// Runs the serving watches. `caches` are the writers of the SigningKey and AuthPolicy
/// caches, made by the caller so that the admission webhook and the Revocations (their
/// token lifetimes) can read them too.
///
/// Each watch event names the object it touched; the loop applies those objects to the
/// index (reading them from the watch caches) and publishes. A relist (at start, after a
/// watch restart) resyncs that kind once it is complete, which also finds the objects
/// deleted meanwhile.
pub async fn run(
    client: Client,
    scope: Arc<IssuerScope>,
    registry: Arc<Registry>,
    runtime: Arc<PolicyRuntime>,
    caches: (
        reflector::store::Writer<DeserializeGuard<SigningKey>>,
        reflector::store::Writer<DeserializeGuard<AuthPolicy>>,
    ),
    announced: Announced,
    mut shutdown: watch::Receiver<bool>,
) {
    let external_url = scope.external_url().to_owned();
    let (keys_writer, policies_writer) = caches;
    let (keys, policies) = (keys_writer.as_reader(), policies_writer.as_reader());
    let (secrets, secrets_writer) = reflector::store::<Secret>();
    let managed = watcher::Config::default().labels(&managed_selector());
    let streams = vec![
        reflector::reflector(
            keys_writer,
            watcher(Api::all(client.clone()), watcher::Config::default()),
        )
        .default_backoff()
        .map(|e| (0, e.map(|event| touched(&event))))
        .boxed(),
        reflector::reflector(secrets_writer, watcher(Api::all(client.clone()), managed))
            .default_backoff()
            .map(|e| (1, e.map(|event| touched(&event))))
            .boxed(),
        reflector::reflector(
            policies_writer,
            watcher(Api::all(client), watcher::Config::default()),
        )
        .default_backoff()
        .map(|e| (2, e.map(|event| touched(&event))))
        .boxed(),
    ];
    for name in WATCHES {
        registry.set_source(name, SourceState::Syncing);
    }
    let mut changes = futures::stream::select_all(streams);
    let mut view = View::new(runtime, scope);
    let caches = Caches {
        keys: &keys,
        secrets: &secrets,
        policies: &policies,
        external_url: &external_url,
    };
    loop {
        let mut batch = Vec::new();
        tokio::select! {
            _ = shutdown.changed() => return,
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
            keys.wait_until_ready().now_or_never(),
            secrets.wait_until_ready().now_or_never(),
            policies.wait_until_ready().now_or_never(),
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
                Some(Err(why)) => report(&registry, WATCHES[index], SourceState::Failing(why)),
                Some(Ok(())) if synced[index] => {
                    report(&registry, WATCHES[index], SourceState::Synced)
                }
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
            view.apply_pending(&caches);
            let mut snapshot = view.index.snapshot();
            snapshot.policies_known = synced[2];
            registry.publish(snapshot);
            // Once served, reported: on the leader, this is what its status controller
            // reconciles (every replica compiles the same objects the same way).
            announced.recompiled.announce(view.index.take_recompiled());
            announced.reclaimed.announce(view.index.take_reclaimed());
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
struct Caches<'a> {
    keys: &'a Store<DeserializeGuard<SigningKey>>,
    secrets: &'a Store<Secret>,
    policies: &'a Store<DeserializeGuard<AuthPolicy>>,
    external_url: &'a str,
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
    pending: Pending,
    /// The Secret each SigningKey keeps its keys in, and the reverse: a Secret event
    /// re-renders only the SigningKeys using it.
    secret_of: HashMap<ObjectKey, ObjectKey>,
    users_of: HashMap<ObjectKey, BTreeSet<ObjectKey>>,
    /// The `resourceVersion` of each AuthPolicy last applied: a relist does not validate
    /// again what did not change.
    policy_versions: HashMap<ObjectKey, Option<String>>,
    warned: HashSet<String>,
}

impl View {
    fn new(runtime: Arc<PolicyRuntime>, scope: Arc<IssuerScope>) -> Self {
        Self {
            index: Index::new(runtime, scope).recording_recompiled(),
            pending: Pending::default(),
            secret_of: HashMap::new(),
            users_of: HashMap::new(),
            policy_versions: HashMap::new(),
            warned: HashSet::new(),
        }
    }

    fn warn_once(&mut self, message: String) {
        if self.warned.insert(message.clone()) {
            tracing::warn!("{message}");
        }
    }

    /// Applies every pending object to the index: keys first, so that the policies
    /// compiled next see them.
    fn apply_pending(&mut self, caches: &Caches<'_>) {
        let pending = std::mem::take(&mut self.pending);
        let [keys, secrets, policies] = pending.objects;
        let mut keys = keys;
        if pending.everything[0] || pending.everything[1] {
            keys.extend(caches.keys.state().iter().map(|k| ObjectKey::of(k.meta())));
            keys.extend(self.index.served_keys().map(|(id, _)| id.clone()));
            keys.extend(self.secret_of.keys().cloned());
        }
        for secret in &secrets {
            keys.extend(self.users_of.get(secret).into_iter().flatten().cloned());
        }
        for id in &keys {
            self.sync_key(id, caches);
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
        for id in &policies {
            self.sync_policy(id, caches);
        }
    }

    fn set_secret(&mut self, id: &ObjectKey, secret: Option<ObjectKey>) {
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
    fn sync_key(&mut self, id: &ObjectKey, caches: &Caches<'_>) {
        let guard = caches
            .keys
            .get(&ObjectRef::new(&id.name).within(&id.namespace));
        let key = match guard.as_deref().map(|g| &g.0) {
            None => {
                self.set_secret(id, None);
                self.index.delete_key(id);
                return;
            }
            Some(Err(invalid)) => {
                self.warn_once(format!(
                    "SigningKey {id} skipped, it does not parse: {}",
                    invalid.error
                ));
                self.set_secret(id, None);
                self.index.delete_key(id);
                return;
            }
            Some(Ok(key)) => key,
        };
        if !key.validate().is_empty() {
            self.warn_once(format!("SigningKey {id} skipped: invalid spec"));
            self.set_secret(id, None);
            self.index.delete_key(id);
            return;
        }
        let secret = ObjectKey {
            namespace: id.namespace.clone(),
            name: key.secret_name(),
        };
        self.set_secret(id, Some(secret.clone()));
        let secret_ref = ObjectRef::<Secret>::new(&secret.name).within(&secret.namespace);
        let cached = caches.secrets.get(&secret_ref);
        // Another SigningKey's Secret is never read for this one: not its keys, not its
        // claim's age.
        if let Some(not_its) = cached.as_deref().and_then(|s| check_owner(s, key).err()) {
            self.warn_once(format!(
                "SigningKey {id} not served: Secret {} is not its own ({not_its})",
                secret.name
            ));
            let claim = KeyClaim::of(key, caches.external_url, None);
            self.index.apply_claim(id, claim, None);
            return;
        }
        let data = match cached.as_deref().map(secret_data) {
            Some(Ok(data)) => Some(data),
            Some(Err(e)) => return self.keep_last_good(id, key, caches, e.to_string()),
            None => None,
        };
        let claim = KeyClaim::of(key, caches.external_url, data.as_ref());
        let Some(data) = data else {
            // Not stored yet: the claim holds its issuer path meanwhile.
            if self.index.served(id).is_some() {
                return self.keep_last_good(id, key, caches, "its Secret is gone".into());
            }
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
                    key.key_policy().pre_publish,
                );
                let served = ServedKeys {
                    published: Arc::new(published),
                    keys: keyset,
                    max_token_lifetime: key.spec.max_token_lifetime(),
                };
                self.index.apply_claim(id, claim, Some(served));
            }
            Err(e) => self.keep_last_good(id, key, caches, e.to_string()),
        }
    }

    /// A SigningKey whose Secret is gone or broken: its last good keys keep serving; one
    /// never served holds its claim until its keys can be read.
    fn keep_last_good(
        &mut self,
        id: &ObjectKey,
        key: &SigningKey,
        caches: &Caches<'_>,
        reason: String,
    ) {
        if self.index.served(id).is_some() {
            self.warn_once(format!(
                "SigningKey {id}: {reason}; serving its last good keys"
            ));
        } else {
            self.warn_once(format!("SigningKey {id} not served yet: {reason}"));
            let claim = KeyClaim::of(key, caches.external_url, None);
            self.index.apply_claim(id, claim, None);
        }
    }

    /// Serves an AuthPolicy as the cache has it now, if it is valid.
    fn sync_policy(&mut self, id: &ObjectKey, caches: &Caches<'_>) {
        let guard = caches
            .policies
            .get(&ObjectRef::new(&id.name).within(&id.namespace));
        let Some(guard) = guard else {
            self.policy_versions.remove(id);
            self.index.delete_policy(id);
            return;
        };
        let version = guard.meta().resource_version.clone();
        if self.policy_versions.get(id) == Some(&version) {
            return;
        }
        self.policy_versions.insert(id.clone(), version);
        match &guard.0 {
            Ok(policy) if policy.validate().is_empty() => {
                self.index.apply_policy(Arc::new(policy.clone()));
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
    fn keys_are_served_from_secrets_keeping_the_last_good_and_skipping_the_malformed() {
        let (keys, mut keys_writer) = reflector::store::<DeserializeGuard<SigningKey>>();
        let (secrets, mut secrets_writer) = reflector::store::<Secret>();
        let (policies, _policies_writer) = reflector::store::<DeserializeGuard<AuthPolicy>>();

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

        let caches = Caches {
            keys: &keys,
            secrets: &secrets,
            policies: &policies,
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
