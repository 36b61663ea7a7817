//! Revocations on a cluster: every replica watches them and publishes their set on its
//! own (no policy is rebuilt for one); the leader deletes the lapsed ones; `/revoke`
//! writes new ones from whichever replica received the request (a user's request, not a
//! leader's write).

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, PostParams, Preconditions};
use kube::core::DeserializeGuard;
use kube::runtime::reflector::Store;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::watch;

use super::error::Error;
use super::instance::{INSTANCE_LABEL, Instance};
use super::writer::{Deleted, LeaderWriter};
use crate::api::{AuthPolicy, ObjectKey, Revocation, RevocationStatus, SigningKey, TokenClient};
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::registry::{Registry, SourceState};
use crate::revocation::{Lapse, RevocationIndex};
use crate::server::revoke::{RevocationWriter, WriteError, WriteFuture};

pub const WATCH: &str = "Revocation watch";
/// The set is published again this often even without a change: lapsed entries leave
/// the metric, and SigningKey lifetimes are read again.
const REFRESH: Duration = Duration::from_secs(30);
/// How often the leader looks for lapsed Revocations to delete.
pub const EXPIRE_EVERY: Duration = Duration::from_secs(60);

/// The watch caches that say how long a Revocation must live.
pub struct LifetimeCaches {
    /// The SigningKeys: their tokens' `maxTokenLifetime`.
    pub keys: Store<DeserializeGuard<SigningKey>>,
    /// The AuthPolicies: the token lifetimes they accept.
    pub policies: Store<DeserializeGuard<AuthPolicy>>,
    /// The TokenClients: how long the refresh families of each key live.
    pub clients: Store<DeserializeGuard<TokenClient>>,
}

/// Watches Revocations and publishes their set until `shutdown`.
pub async fn run(
    client: Client,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    caches: LifetimeCaches,
    mut shutdown: watch::Receiver<bool>,
) {
    let LifetimeCaches {
        keys,
        policies,
        clients,
    } = caches;
    registry.set_source(WATCH, SourceState::Syncing);
    let api = Api::<DeserializeGuard<Revocation>>::all(client);
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut follower = Follower::default();
    let mut refresh = tokio::time::interval(REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut batch = Vec::new();
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = refresh.tick() => {}
            event = events.next() => match event {
                None => return,
                Some(event) => batch.push(event),
            },
        }
        // Apply what has already arrived together: one publication per burst.
        while let Some(Some(event)) = events.next().now_or_never() {
            batch.push(event);
        }
        for event in batch {
            match event {
                Ok(event) => follower.handle(event, clock.now(), &metrics),
                Err(e) => {
                    let previous = registry.set_source(WATCH, SourceState::Failing(e.to_string()));
                    if !matches!(previous, Some(SourceState::Failing(_))) {
                        tracing::warn!(
                            "{WATCH} failing: {e} (retrying; the revocations listed before keep counting). Is the Revocation CRD installed?"
                        );
                    }
                }
            }
        }
        if follower.synced {
            if registry.set_source(WATCH, SourceState::Synced) != Some(SourceState::Synced) {
                tracing::info!("{WATCH} synced: {} revocations", follower.index.len());
            }
            follower.lifetimes(&keys, &policies, &clients);
            let (set, counts) = follower.index.publish(clock.now());
            metrics.observe_revocations(&counts);
            registry.publish_revocations(set);
        }
    }
}

/// The index as the watch feeds it.
#[derive(Default)]
struct Follower {
    index: RevocationIndex,
    synced: bool,
    /// Objects seen during a relist.
    relisted: Vec<ObjectKey>,
    /// The `resourceVersion` of each AuthPolicy last read for its token lifetimes: an
    /// unchanged one is not read again at every publication.
    policy_versions: std::collections::HashMap<ObjectKey, Option<String>>,
    /// Likewise each TokenClient's.
    client_versions: std::collections::HashMap<ObjectKey, Option<String>>,
}

impl Follower {
    fn handle(
        &mut self,
        event: watcher::Event<DeserializeGuard<Revocation>>,
        now: Timestamp,
        metrics: &Metrics,
    ) {
        match event {
            watcher::Event::Init => self.relisted.clear(),
            watcher::Event::InitApply(object) => {
                if let Some(id) = self.apply(object, now, metrics, false) {
                    self.relisted.push(id);
                }
            }
            watcher::Event::InitDone => {
                let seen: std::collections::HashSet<ObjectKey> = self.relisted.drain(..).collect();
                self.index.retain(|id| seen.contains(id));
                self.synced = true;
            }
            watcher::Event::Apply(object) => {
                self.apply(object, now, metrics, true);
            }
            watcher::Event::Delete(object) => {
                let meta = match &object.0 {
                    Ok(revocation) => &revocation.metadata,
                    Err(invalid) => &invalid.metadata,
                };
                let id = ObjectKey::of(meta);
                if self.index.delete(&id.namespace, &id.name) {
                    tracing::info!("Revocation {id} deleted");
                }
            }
        }
    }

    /// Applies one object; a bad one is skipped with a warning (the earlier version of
    /// it, if any, keeps counting).
    fn apply(
        &mut self,
        object: DeserializeGuard<Revocation>,
        now: Timestamp,
        metrics: &Metrics,
        live: bool,
    ) -> Option<ObjectKey> {
        let revocation = match object.0 {
            Ok(revocation) => revocation,
            Err(invalid) => {
                let id = ObjectKey::of(&invalid.metadata);
                tracing::warn!("Revocation {id} skipped: {}", invalid.error);
                return Some(id);
            }
        };
        let id = ObjectKey::of(&revocation.metadata);
        match self.index.apply(&revocation, now) {
            Ok(true) => {
                let entry = self.index.get(&id)?;
                // Propagation is measured for changes seen live, not for a relist.
                let lag = revocation
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .filter(|_| live)
                    .map(|t| now.duration_since(t.0).as_secs_f64());
                // As fields: they come from the object (text fields are escaped).
                let issuer = entry.issuer.to_string();
                tracing::info!(
                    revocation = %id,
                    issuer = issuer.as_str(),
                    matcher = entry.matcher.to_string().as_str(),
                    reason = entry.reason.as_deref().unwrap_or(""),
                    "Revocation applied"
                );
                metrics.revocation_applied(entry.reason_label, lag);
            }
            Ok(false) => {}
            Err(refused) => tracing::warn!("{refused} (skipped)"),
        }
        Some(id)
    }

    fn lifetimes(
        &mut self,
        keys: &Store<DeserializeGuard<SigningKey>>,
        policies: &Store<DeserializeGuard<AuthPolicy>>,
        clients: &Store<DeserializeGuard<TokenClient>>,
    ) {
        for key in keys.state() {
            if let Ok(key) = &key.0 {
                self.index.apply_key(key);
            }
        }
        // Until the AuthPolicies are listed, one not read yet may accept longer tokens:
        // nothing lapses meanwhile (each restart would otherwise let revoked long-lived
        // tokens through for a moment).
        let listed = policies
            .wait_until_ready()
            .now_or_never()
            .is_some_and(|ready| ready.is_ok());
        self.index.set_policies_known(listed);
        let mut seen = std::collections::HashSet::new();
        for policy in policies.state() {
            // One that does not parse is not served: it accepts no token.
            let Ok(policy) = &policy.0 else { continue };
            let id = ObjectKey::of(&policy.metadata);
            let version = policy.metadata.resource_version.clone();
            if self.policy_versions.get(&id) != Some(&version) {
                self.index.apply_policy(policy);
                self.policy_versions.insert(id.clone(), version);
            }
            seen.insert(id);
        }
        let index = &mut self.index;
        self.policy_versions.retain(|id, _| {
            let kept = seen.contains(id);
            if !kept {
                index.delete_policy(id);
            }
            kept
        });
        // Likewise the TokenClients: one not read yet may keep a key's refresh families
        // alive longer than its tokens.
        let listed = clients
            .wait_until_ready()
            .now_or_never()
            .is_some_and(|ready| ready.is_ok());
        self.index.set_clients_known(listed);
        let mut seen = std::collections::HashSet::new();
        for client in clients.state() {
            // One that does not parse is not served: it starts no family.
            let Ok(client) = &client.0 else { continue };
            let id = ObjectKey::of(&client.metadata);
            let version = client.metadata.resource_version.clone();
            if self.client_versions.get(&id) != Some(&version) {
                self.index.apply_client(client);
                self.client_versions.insert(id.clone(), version);
            }
            seen.insert(id);
        }
        let index = &mut self.index;
        self.client_versions.retain(|id, _| {
            let kept = seen.contains(id);
            if !kept {
                index.delete_client(id);
            }
            kept
        });
    }
}

/// What the leader does with each Revocation at `now`, with the lifetimes of `keys`.
#[derive(Debug, Default)]
pub struct Judgement {
    /// Lapsed: no token they match can still be valid. Deleted.
    pub lapsed: Vec<Revocation>,
    /// In force, with the status they should report.
    pub active: Vec<(Revocation, RevocationStatus)>,
}

/// Judges `revocations` at `now`, with the token lifetimes of `keys` and `policies` and
/// the refresh families of `clients`.
/// Pure: the leader lists, this decides. Objects that are refused are left alone (the
/// apiserver's CEL rules keep them out in practice).
pub fn judge(
    revocations: &[Revocation],
    keys: &[SigningKey],
    policies: &[AuthPolicy],
    clients: &[TokenClient],
    now: Timestamp,
) -> Judgement {
    let (mut lifetimes, _) = RevocationIndex::of([], keys, policies, clients, now);
    judge_with(&mut lifetimes, revocations, now)
}

/// [`judge`] with the token lifetimes already read into `index`; it holds no Revocation
/// before or after (each is judged on its own).
fn judge_with(
    index: &mut RevocationIndex,
    revocations: &[Revocation],
    now: Timestamp,
) -> Judgement {
    for revocation in revocations {
        if let Err(refused) = index.apply(revocation, now) {
            tracing::warn!("{refused} (left alone)");
        }
    }
    let mut judgement = Judgement::default();
    for revocation in revocations {
        // A refused one is not in the index.
        let Some(entry) = index.get(&ObjectKey::of(&revocation.metadata)) else {
            continue;
        };
        let lapse = index.lapse(entry);
        if lapse.lapsed(now.as_second()) {
            judgement.lapsed.push(revocation.clone());
            continue;
        }
        let (reason, message) = match &lapse {
            Lapse::At(_) => (
                "Applied",
                "enforced by every replica until it lapses".to_owned(),
            ),
            Lapse::Unknown => (
                "LifetimeUnknown",
                format!(
                    "enforced; its SigningKey {} is not known, so it does not lapse",
                    entry.issuer
                ),
            ),
            Lapse::Never { policy } => (
                "NoLifetimeLimit",
                format!(
                    "enforced; AuthPolicy {policy} accepts tokens of {} of any lifetime (it sets no maxTokenLifetime), so it does not lapse: set spec.expiresAt, or a maxTokenLifetime on that policy",
                    entry.issuer
                ),
            ),
        };
        let status = RevocationStatus {
            observed_generation: revocation.metadata.generation,
            expires_at: lapse
                .at()
                .and_then(|s| Timestamp::from_second(s).ok())
                .map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time),
            conditions: vec![crate::api::condition(
                "Active",
                true,
                reason,
                message,
                revocation.metadata.generation,
                now,
            )],
        };
        judgement.active.push((revocation.clone(), status));
    }
    index.retain(|_| false);
    judgement
}

/// The leader's part: deletes lapsed Revocations and reports when the others lapse, once
/// now and then every [`EXPIRE_EVERY`], until the future is dropped (the lease is lost).
pub async fn expire(client: Client, writer: LeaderWriter, clock: Arc<dyn Clock>) {
    let mut tick = tokio::time::interval(EXPIRE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = expire_once(&client, &writer, clock.now()).await {
            tracing::warn!("deleting lapsed Revocations: {e} (retrying in {EXPIRE_EVERY:?})");
        }
    }
}

/// Objects the leader's pass lists at a time. It reads every SigningKey, AuthPolicy and
/// TokenClient of the cluster once a minute, every instance's (another installation's
/// policy may accept the tokens a Revocation names for longer): 10,000 AuthPolicies with
/// their status, listed whole, were tens of megabytes of JSON and 130-140 MiB decoded at
/// once, for a few seconds every minute. A page of them is a twentieth of that.
const LIST_PAGE: u32 = 500;

/// Lists every `K` of the cluster a page at a time, handing each one that parses to
/// `each` and keeping none: one that does not parse is not served (it accepts no token,
/// starts no family).
async fn list_paged<K>(client: &Client, mut each: impl FnMut(K)) -> Result<(), Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let api = Api::<DeserializeGuard<K>>::all(client.clone());
    let mut params = Some(ListParams::default().limit(LIST_PAGE));
    while let Some(this) = params {
        let (page, next) = list_page(&api, this).await?;
        page.into_iter().for_each(&mut each);
        params = next;
    }
    Ok(())
}

/// One page of a list: the objects that parse, and the parameters of the next page
/// (`None` after the last).
async fn list_page<K>(
    api: &Api<DeserializeGuard<K>>,
    params: ListParams,
) -> Result<(Vec<K>, Option<ListParams>), Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let page = api.list(&params).await?;
    let next = match page.metadata.continue_ {
        Some(token) if !token.is_empty() => Some(params.continue_token(&token)),
        _ => None,
    };
    Ok((
        page.items.into_iter().filter_map(|o| o.0.ok()).collect(),
        next,
    ))
}

/// One pass of [`expire`]: reads the token lifetimes from SigningKeys, AuthPolicies (what
/// token lifetimes they accept) and TokenClients (how long their refresh families live),
/// each listed a page at a time ([`LIST_PAGE`]), lists the Revocations, deletes the lapsed
/// ones (each conditional on its uid and resourceVersion: only the object judged), and
/// writes `status.expiresAt` of the others where it is not what it should be. Returns
/// how many were deleted.
pub async fn expire_once(
    client: &Client,
    writer: &LeaderWriter,
    now: Timestamp,
) -> Result<usize, Error> {
    let mut lifetimes = RevocationIndex::default();
    list_paged(client, |key: SigningKey| {
        lifetimes.apply_key(&key);
    })
    .await?;
    list_paged(client, |policy: AuthPolicy| {
        lifetimes.apply_policy(&policy);
    })
    .await?;
    // How long refresh families live: a key's Revocations must outlive them.
    list_paged(client, |token_client: TokenClient| {
        lifetimes.apply_client(&token_client);
    })
    .await?;
    // The Revocations a page at a time too (a "payment failed" per user makes many), each
    // page judged and acted on before the next is listed: none is held beyond its page.
    let api = Api::<DeserializeGuard<Revocation>>::all(client.clone());
    let mut params = Some(ListParams::default().limit(LIST_PAGE));
    let mut deleted = 0;
    while let Some(this) = params {
        let (page, next) = list_page(&api, this).await?;
        params = next;
        // Every instance honours every Revocation (revoking never grants anything);
        // each deletes and reports only its own.
        let own: Vec<Revocation> = page
            .into_iter()
            .filter(|r| writer.instance().owns(&r.metadata))
            .collect();
        deleted += act_on(writer, judge_with(&mut lifetimes, &own, now)).await?;
    }
    Ok(deleted)
}

/// Deletes the lapsed Revocations of a judgement and writes the others' status; returns
/// how many were deleted.
async fn act_on(writer: &LeaderWriter, judgement: Judgement) -> Result<usize, Error> {
    let mut deleted = 0;
    for revocation in judgement.lapsed {
        let id = ObjectKey::of(&revocation.metadata);
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: revocation.metadata.uid.clone(),
                resource_version: revocation.metadata.resource_version.clone(),
            }),
            ..DeleteParams::default()
        };
        // Gone already, or changed since it was judged: the next pass decides again.
        if writer
            .delete::<Revocation>(&id.namespace, &id.name, &params)
            .await?
            == Deleted::Deleted
        {
            tracing::info!("Revocation {id} lapsed: deleted");
            deleted += 1;
        }
    }
    for (revocation, status) in judgement.active {
        writer.status(&revocation, status).await?;
    }
    Ok(deleted)
}

/// `/revoke` on a cluster: creates the Revocation through the API.
pub struct KubeWriter {
    pub client: Client,
    /// Labels what it writes, so that this installation's leader judges it (its status,
    /// its deletion once lapsed): unlabelled, it would be the default instance's, which
    /// may not know its SigningKey and would then never delete it.
    pub instance: Instance,
}

impl RevocationWriter for KubeWriter {
    fn create(&self, mut revocation: Revocation) -> WriteFuture {
        let client = self.client.clone();
        let instance = self.instance.clone();
        Box::pin(async move {
            let id = ObjectKey::of(&revocation.metadata);
            // The apiserver sets it.
            revocation.metadata.creation_timestamp = None;
            revocation
                .metadata
                .labels
                .get_or_insert_with(Default::default)
                .insert(INSTANCE_LABEL.to_owned(), instance.name().to_owned());
            let api = Api::<Revocation>::namespaced(client, &id.namespace);
            match api.create(&PostParams::default(), &revocation).await {
                Ok(_) => {
                    tracing::info!("Revocation {id} created by a token holder");
                    Ok(())
                }
                // The same token (or session) again: already revoked.
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
                Err(e) => Err(WriteError::Failed(format!("creating Revocation {id}: {e}"))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(name: &str, jti: &str) -> DeserializeGuard<Revocation> {
        DeserializeGuard(Ok(serde_json::from_value(serde_json::json!({
            "apiVersion": "authplane.io/v1alpha1", "kind": "Revocation",
            "metadata": {"name": name, "namespace": "auth",
                "creationTimestamp": "2026-03-01T00:00:00Z"},
            "spec": {"signingKeyRef": {"name": "web"}, "tokenId": jti},
        }))
        .unwrap()))
    }

    fn names(follower: &Follower) -> Vec<String> {
        follower
            .index
            .entries()
            .map(|e| e.id.name.clone())
            .collect()
    }

    #[test]
    fn a_relist_forgets_what_is_gone_and_a_bad_object_is_skipped() {
        let metrics = Metrics::default();
        let now: Timestamp = "2026-03-01T00:00:01Z".parse().unwrap();
        let mut follower = Follower::default();
        follower.handle(watcher::Event::Init, now, &metrics);
        follower.handle(watcher::Event::InitApply(object("a", "1")), now, &metrics);
        follower.handle(watcher::Event::InitApply(object("b", "2")), now, &metrics);
        assert!(!follower.synced, "not synced before the list is complete");
        follower.handle(watcher::Event::InitDone, now, &metrics);
        assert!(follower.synced);
        assert_eq!(names(&follower), ["a", "b"]);
        // A relist after the watch was lost: b was deleted meanwhile.
        follower.handle(watcher::Event::Init, now, &metrics);
        follower.handle(watcher::Event::InitApply(object("a", "1")), now, &metrics);
        follower.handle(watcher::Event::InitDone, now, &metrics);
        assert_eq!(names(&follower), ["a"]);
        // One that breaks a rule (two matchers) is skipped; a keeps counting.
        let mut both = object("a", "1");
        if let Ok(r) = &mut both.0 {
            r.spec.subject = Some("s".into());
        }
        follower.handle(watcher::Event::Apply(both), now, &metrics);
        assert_eq!(
            follower.index.entries().next().unwrap().matcher,
            crate::revocation::Matcher::TokenId("1".into())
        );
        follower.handle(watcher::Event::Delete(object("a", "1")), now, &metrics);
        assert!(follower.index.is_empty());
        // Propagation is observed for live changes only; what applied here came from lists.
        let text = metrics.encode();
        assert!(
            text.contains("authplane_revocation_propagation_seconds_count 0"),
            "{text}"
        );
    }

    /// The follower reads the token lifetimes of the serving caches: a policy that
    /// accepts longer tokens of the key keeps its Revocations in force, and its edit or
    /// deletion is seen at the next publication.
    #[test]
    fn the_follower_reads_the_policies_token_lifetimes() {
        use kube::runtime::reflector;
        let metrics = Metrics::default();
        // Created at 00:00 with the key's 1-hour tokens: in force until 01:05.
        let now: Timestamp = "2026-03-01T02:00:00Z".parse().unwrap();
        let mut follower = Follower::default();
        follower.handle(watcher::Event::Init, now, &metrics);
        follower.handle(watcher::Event::InitApply(object("a", "1")), now, &metrics);
        follower.handle(watcher::Event::InitDone, now, &metrics);
        let (keys, mut keys_writer) = reflector::store::<DeserializeGuard<SigningKey>>();
        keys_writer.apply_watcher_event(&watcher::Event::Apply(DeserializeGuard(Ok(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "authplane.io/v1alpha1", "kind": "SigningKey",
                "metadata": {"name": "web", "namespace": "auth"}, "spec": {},
            }))
            .unwrap(),
        ))));
        let (policies, mut policies_writer) = reflector::store::<DeserializeGuard<AuthPolicy>>();
        let legacy = |version: &str, lifetime: &str| {
            watcher::Event::Apply(DeserializeGuard(Ok(serde_json::from_value(
                serde_json::json!({
                    "apiVersion": "authplane.io/v1alpha1", "kind": "AuthPolicy",
                    "metadata": {"name": "legacy", "namespace": "shop", "resourceVersion": version},
                    "spec": {"issuers": [{"signingKeyRef": {"name": "web", "namespace": "auth"},
                        "maxTokenLifetime": lifetime}]},
                }),
            )
            .unwrap())))
        };
        let (clients, mut clients_writer) = reflector::store::<DeserializeGuard<TokenClient>>();
        let in_force = |follower: &mut Follower| {
            follower.lifetimes(&keys, &policies, &clients);
            follower.index.publish(now).0.len()
        };
        assert_eq!(
            in_force(&mut follower),
            1,
            "the policies are not listed yet"
        );
        policies_writer.apply_watcher_event(&watcher::Event::Init);
        policies_writer.apply_watcher_event(&watcher::Event::InitDone);
        assert_eq!(
            in_force(&mut follower),
            1,
            "the TokenClients are not listed yet"
        );
        clients_writer.apply_watcher_event(&watcher::Event::Init);
        clients_writer.apply_watcher_event(&watcher::Event::InitDone);
        assert_eq!(in_force(&mut follower), 0, "lapsed at 01:05");
        // A TokenClient of the key whose families refresh for 8 hours keeps it in force;
        // its deletion lets it lapse again.
        let token_client = || -> TokenClient {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "authplane.io/v1alpha1", "kind": "TokenClient",
                "metadata": {"name": "app", "namespace": "auth", "resourceVersion": "1"},
                "spec": {"signingKeyRef": {"name": "web"}, "audiences": ["api"],
                    "refreshTokens": {"absoluteLifetime": "8h"}},
            }))
            .unwrap()
        };
        clients_writer
            .apply_watcher_event(&watcher::Event::Apply(DeserializeGuard(Ok(token_client()))));
        assert_eq!(in_force(&mut follower), 1, "in force until 08:05");
        clients_writer.apply_watcher_event(&watcher::Event::Delete(DeserializeGuard(Ok(
            token_client(),
        ))));
        assert_eq!(in_force(&mut follower), 0, "the TokenClient is gone");
        policies_writer.apply_watcher_event(&legacy("1", "3h"));
        assert_eq!(in_force(&mut follower), 1, "in force until 03:05");
        policies_writer.apply_watcher_event(&legacy("2", "90m"));
        assert_eq!(in_force(&mut follower), 0, "lapsed at 01:35");
        policies_writer.apply_watcher_event(&legacy("3", "3h"));
        assert_eq!(in_force(&mut follower), 1);
        policies_writer.apply_watcher_event(&watcher::Event::Delete(DeserializeGuard(Ok(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "authplane.io/v1alpha1", "kind": "AuthPolicy",
                "metadata": {"name": "legacy", "namespace": "shop"},
                "spec": {"issuers": [{"signingKeyRef": {"name": "web"}}]},
            }))
            .unwrap(),
        ))));
        assert_eq!(in_force(&mut follower), 0, "the policy is gone");
    }

    #[test]
    fn the_leader_judges_lapsed_and_active_revocations() {
        let key: SigningKey = serde_json::from_value(serde_json::json!({
            "apiVersion": "authplane.io/v1alpha1", "kind": "SigningKey",
            "metadata": {"name": "web", "namespace": "auth"},
            "spec": {"maxTokenLifetime": "15m"},
        }))
        .unwrap();
        let revocation = |created: &str| -> Revocation {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "authplane.io/v1alpha1", "kind": "Revocation",
                "metadata": {"name": created.replace(':', "-").to_lowercase(), "namespace": "auth",
                    "creationTimestamp": created},
                "spec": {"signingKeyRef": {"name": "web"}, "subject": "s"},
            }))
            .unwrap()
        };
        let now: Timestamp = "2026-03-01T01:00:00Z".parse().unwrap();
        let revocations = [
            revocation("2026-03-01T00:39:59Z"),
            revocation("2026-03-01T00:40:00Z"),
        ];
        let judged = judge(&revocations, std::slice::from_ref(&key), &[], &[], now);
        // With 15-minute tokens, a revocation lives 15 minutes and the largest leeway,
        // 5 minutes (to the second).
        assert_eq!(judged.lapsed.len(), 1);
        assert_eq!(judged.active.len(), 1);
        assert_eq!(judged.active[0].1.expires_at.as_ref().unwrap().0, now);
        // A policy that accepts 3-hour tokens of the key keeps both.
        let legacy: AuthPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "authplane.io/v1alpha1", "kind": "AuthPolicy",
            "metadata": {"name": "legacy", "namespace": "shop"},
            "spec": {"issuers": [{"signingKeyRef": {"name": "web", "namespace": "auth"},
                "maxTokenLifetime": "3h"}]},
        }))
        .unwrap();
        let kept = judge(
            &revocations,
            std::slice::from_ref(&key),
            &[legacy],
            &[],
            now,
        );
        assert!(kept.lapsed.is_empty());
        assert_eq!(
            kept.active[0].1.expires_at.as_ref().unwrap().0,
            "2026-03-01T03:44:59Z".parse::<Timestamp>().unwrap()
        );
        // A TokenClient of the key whose families refresh for a week keeps both a week:
        // a family started before them may refresh, and is ended by them, until then.
        let weekly: TokenClient = serde_json::from_value(serde_json::json!({
            "apiVersion": "authplane.io/v1alpha1", "kind": "TokenClient",
            "metadata": {"name": "app", "namespace": "auth"},
            "spec": {"signingKeyRef": {"name": "web"}, "audiences": ["api"]},
        }))
        .unwrap();
        let kept = judge(
            &revocations,
            std::slice::from_ref(&key),
            &[],
            &[weekly],
            now,
        );
        assert!(kept.lapsed.is_empty());
        assert_eq!(
            kept.active[0].1.expires_at.as_ref().unwrap().0,
            "2026-03-08T00:44:59Z".parse::<Timestamp>().unwrap()
        );
        // Without the SigningKey the lifetime is unknown: it counts, and is not deleted.
        let unknown = judge(&[revocation("2026-01-01T00:00:00Z")], &[], &[], &[], now);
        assert!(unknown.lapsed.is_empty());
        assert_eq!(unknown.active[0].1.conditions[0].reason, "LifetimeUnknown");
    }
}
