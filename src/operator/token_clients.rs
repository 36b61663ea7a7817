//! TokenClients on a cluster. Every replica watches them and feeds the core's
//! [`TokenClientIndex`] incrementally (a TokenClient event applies that client; a
//! SigningKey the serving loop announces recompiles only the clients naming it), and
//! publishes the served clients on its own, as Revocations are: the token endpoint of
//! every replica reads them. The leader reports each client's `Ready` condition.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt};
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use tokio::sync::watch;

use super::error::Error;
use super::feed::Feed;
use super::instance::Instance;
use super::writer::LeaderWriter;
use crate::api::{ObjectKey, SigningKey, TokenClient, TokenClientStatus, Validate, condition};
use crate::clock::Clock;
use crate::registry::{Registry, SourceState};
use crate::token_clients::{KeyFacts, Readiness, TokenClientIndex};

pub const WATCH: &str = "TokenClient watch";
/// Every SigningKey is read again this often, in case an announcement was missed (the
/// serving loop announces keys only while its Secret watch works).
const RESWEEP_KEYS: Duration = Duration::from_secs(30);
/// A failed status write is tried again after this long.
const RETRY: Duration = Duration::from_secs(10);
/// How often clients whose refusal by the external-issuer cap an AuthPolicy moved are
/// compiled again (the AuthPolicies are indexed in the serving loop).
const QUOTA_MOVES_EVERY: Duration = Duration::from_secs(5);
/// How often the status of a client with ID-token issuers follows their keys' health.
const ID_TOKEN_ISSUERS_RECHECK: Duration = Duration::from_secs(60);

/// The index as the watch keeps it, shared with the leader's status writer.
#[derive(Default)]
pub struct Served {
    state: Mutex<State>,
    /// True once the first complete list is published: the leader reports nothing before
    /// (a client read before its key would be reported `SigningKeyNotFound` for a moment).
    synced: watch::Sender<bool>,
}

#[derive(Default)]
struct State {
    index: TokenClientIndex,
    /// The generation and `resourceVersion` of each TokenClient as last applied: the
    /// leader reports a readiness only for the generation it describes, and a relist
    /// does not compile again what did not change.
    applied: HashMap<ObjectKey, (Option<i64>, Option<String>)>,
}

impl Served {
    /// Clients served from `index`: fetching ID-token issuers as it does.
    pub fn new(index: TokenClientIndex) -> Self {
        Self {
            state: Mutex::new(State {
                index,
                applied: HashMap::new(),
            }),
            synced: watch::Sender::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The status `client` should report, or `None` while the watch has not applied
    /// this generation of it yet.
    pub fn status(&self, client: &TokenClient, now: jiff::Timestamp) -> Option<TokenClientStatus> {
        if !*self.synced.borrow() {
            return None;
        }
        let id = ObjectKey::of(&client.metadata);
        let state = self.lock();
        let generation = client.metadata.generation;
        if state.applied.get(&id).map(|(g, _)| *g) != Some(generation) {
            return None;
        }
        let readiness = state.index.readiness(&id)?;
        let published = state.index.published();
        let served = published.get(&id.to_string());
        let (ready, reason, message) = match served {
            Some(served) => served.condition(readiness, now),
            None => readiness.condition(),
        };
        let token_endpoint =
            served.map(|served| format!("{}/token", served.rules.issuer.trim_end_matches('/')));
        Some(TokenClientStatus {
            observed_generation: generation,
            token_endpoint,
            conditions: vec![condition(
                "Ready",
                ready == "True",
                reason,
                message,
                generation,
                now,
            )],
        })
    }
}

/// What the watch needs besides the apiserver.
pub struct Follow {
    pub registry: Arc<Registry>,
    pub instance: Instance,
    /// The base of default issuer URLs.
    pub external_url: String,
    /// The serving loop's SigningKeys.
    pub keys: Store<DeserializeGuard<SigningKey>>,
    pub served: Arc<Served>,
    /// Where the clients whose readiness may have changed are announced (to the leader).
    pub changed: Arc<Feed>,
}

/// Watches TokenClients into `cache` and publishes the served ones until `shutdown`.
/// `key_changes`: the SigningKeys the serving loop applied.
pub async fn run(
    client: Client,
    follow: Follow,
    cache: Writer<DeserializeGuard<TokenClient>>,
    key_changes: impl Stream<Item = ObjectRef<SigningKey>> + Send + 'static,
    mut shutdown: watch::Receiver<bool>,
) {
    let Follow {
        registry,
        instance,
        external_url,
        keys,
        served,
        changed,
    } = follow;
    registry.set_source(WATCH, SourceState::Syncing);
    let store = cache.as_reader();
    let mut events = reflector::reflector(
        cache,
        instance.watch(
            "TokenClients",
            watcher(Api::all(client), watcher::Config::default()).default_backoff(),
        ),
    )
    .boxed();
    let mut key_changes = key_changes.boxed();
    let mut resweep = tokio::time::interval(RESWEEP_KEYS);
    resweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut quota_moves = tokio::time::interval(QUOTA_MOVES_EVERY);
    quota_moves.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut keys_known = false;
    let mut listed = false;
    loop {
        let mut client_events = Vec::new();
        let mut key_ids = Vec::new();
        let mut sweep = false;
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = resweep.tick() => sweep = true,
            _ = quota_moves.tick() => {}
            event = events.next() => match event {
                None => return,
                Some(event) => client_events.push(event),
            },
            key = key_changes.next() => if let Some(key) = key {
                key_ids.push(ObjectKey { namespace: key.namespace.unwrap_or_default(), name: key.name });
            },
        }
        // What has already arrived is applied together: one publication per burst.
        while let Some(Some(event)) = events.next().now_or_never() {
            client_events.push(event);
        }
        while let Some(Some(key)) = key_changes.next().now_or_never() {
            key_ids.push(ObjectKey {
                namespace: key.namespace.unwrap_or_default(),
                name: key.name,
            });
        }
        let mut touched = Vec::new();
        let mut state = served.lock();
        // The keys first: read from the serving loop's cache once it is listed, all of
        // them the first time.
        if !keys_known && keys.wait_until_ready().now_or_never().is_some() {
            keys_known = true;
            sweep = true;
        }
        if keys_known {
            if sweep {
                key_ids.extend(keys.state().iter().map(|k| ObjectKey::of(k.meta())));
            }
            for id in key_ids {
                // Only the clients whose report changes are announced: the periodic
                // sweep touches every key, and mostly changes nothing.
                let clients: Vec<ObjectKey> = state.index.clients_of(&id).cloned().collect();
                let before: Vec<_> = clients.iter().map(|c| report_of(&state.index, c)).collect();
                sync_key(&mut state.index, &keys, &external_url, &id);
                for (client, before) in clients.into_iter().zip(before) {
                    if report_of(&state.index, &client) != before {
                        touched.push(client);
                    }
                }
            }
        }
        for event in client_events {
            match event {
                Ok(event) => {
                    if let Some(ids) = apply(&mut state, &store, event, &mut listed) {
                        touched.extend(ids);
                    }
                }
                Err(e) => {
                    let previous = registry.set_source(WATCH, SourceState::Failing(e.to_string()));
                    if !matches!(previous, Some(SourceState::Failing(_))) {
                        tracing::warn!(
                            error = %e,
                            "{WATCH} failing (retrying with backoff; the TokenClients listed before keep serving). Is the TokenClient CRD installed?"
                        );
                    }
                }
            }
        }
        // Clients let in, or kept out, of the external-issuer cap by an AuthPolicy.
        touched.extend(state.index.apply_quota_moves());
        if !(listed && keys_known) {
            continue;
        }
        registry.publish_token_clients(state.index.published());
        drop(state);
        if registry.set_source(WATCH, SourceState::Synced) != Some(SourceState::Synced) {
            tracing::info!(clients = store.state().len(), "{WATCH} synced");
        }
        served
            .synced
            .send_if_modified(|synced| !std::mem::replace(synced, true));
        changed.announce(touched);
    }
}

/// What a client's status reports: its readiness and the issuer it is served on.
fn report_of(index: &TokenClientIndex, id: &ObjectKey) -> (Option<Readiness>, Option<String>) {
    let issuer = index
        .published()
        .get(&id.to_string())
        .map(|served| served.rules.issuer.clone());
    (index.readiness(id).cloned(), issuer)
}

/// Feeds one SigningKey, as the cache has it now, to the index.
fn sync_key(
    index: &mut TokenClientIndex,
    keys: &Store<DeserializeGuard<SigningKey>>,
    external_url: &str,
    id: &ObjectKey,
) {
    let cached = keys.get(&ObjectRef::new(&id.name).within(&id.namespace));
    match cached.as_deref().map(|guard| &guard.0) {
        // Only a valid key is one a client can name: one that does not parse or is
        // invalid is not served, so neither are its clients.
        Some(Ok(key)) if key.validate().is_empty() => index.apply_key(
            id.clone(),
            KeyFacts {
                issuer: key.issuer(external_url),
                max_token_lifetime: key.spec.max_token_lifetime(),
            },
        ),
        _ => index.delete_key(id),
    }
}

/// Applies one watch event. Returns the clients whose readiness may have changed; sets
/// `listed` once a list is complete.
fn apply(
    state: &mut State,
    store: &Store<DeserializeGuard<TokenClient>>,
    event: watcher::Event<DeserializeGuard<TokenClient>>,
    listed: &mut bool,
) -> Option<Vec<ObjectKey>> {
    match event {
        // Objects of a relist reach the cache only once it is complete.
        watcher::Event::Init | watcher::Event::InitApply(_) => None,
        watcher::Event::InitDone => {
            *listed = true;
            let present: Vec<ObjectKey> = store
                .state()
                .iter()
                .map(|c| ObjectKey::of(c.meta()))
                .collect();
            let gone: Vec<ObjectKey> = state
                .applied
                .keys()
                .filter(|id| !present.contains(id))
                .cloned()
                .collect();
            for id in &gone {
                forget(state, id);
            }
            for id in &present {
                if let Some(guard) = store.get(&ObjectRef::new(&id.name).within(&id.namespace)) {
                    sync_client(state, &guard);
                }
            }
            Some(present)
        }
        watcher::Event::Apply(guard) => {
            sync_client(state, &guard);
            Some(vec![ObjectKey::of(guard.meta())])
        }
        watcher::Event::Delete(guard) => {
            forget(state, &ObjectKey::of(guard.meta()));
            None
        }
    }
}

fn sync_client(state: &mut State, guard: &DeserializeGuard<TokenClient>) {
    let id = ObjectKey::of(guard.meta());
    let version = (
        guard.meta().generation,
        guard.meta().resource_version.clone(),
    );
    if state.applied.get(&id) == Some(&version) {
        return;
    }
    match &guard.0 {
        Ok(client) => state.index.apply(Arc::new(client.clone())),
        Err(invalid) => {
            tracing::warn!(token_client = %id, error = %invalid.error, "TokenClient skipped, it does not parse");
            state.index.delete(&id);
        }
    }
    state.applied.insert(id, version);
}

fn forget(state: &mut State, id: &ObjectKey) {
    state.index.delete(id);
    state.applied.remove(id);
}

/// The leader's part: what the status writer needs.
pub struct Report {
    pub served: Arc<Served>,
    pub writer: LeaderWriter,
    pub clock: Arc<dyn Clock>,
}

/// Writes a TokenClient's status where the apiserver does not hold it already.
pub async fn reconcile(
    guard: Arc<DeserializeGuard<TokenClient>>,
    ctx: Arc<Report>,
) -> Result<Action, Error> {
    let Ok(client) = &guard.0 else {
        // Reported by the watch; the status of what does not parse cannot be written.
        return Ok(Action::await_change());
    };
    if let Some(status) = ctx.served.status(client, ctx.clock.now()) {
        ctx.writer.status(client, status).await?;
    }
    // Whether an ID-token issuer's keys are available changes with no event: looked at
    // again now and then (the writer skips a status the apiserver holds already).
    if !client.spec.id_token_issuers.is_empty() {
        return Ok(Action::requeue(ID_TOKEN_ISSUERS_RECHECK));
    }
    Ok(Action::await_change())
}

pub fn error_policy(
    guard: Arc<DeserializeGuard<TokenClient>>,
    error: &Error,
    _: Arc<Report>,
) -> Action {
    tracing::warn!(token_client = %ObjectKey::of(guard.meta()), error = %error, "status update failed");
    Action::requeue(RETRY)
}

/// Resolves once the watch has published its first complete list.
pub async fn synced(served: Arc<Served>) {
    let mut synced = served.synced.subscribe();
    let _ = synced.wait_for(|s| *s).await;
}
