//! Dev mode: the core driven by a folder of manifests and a state folder, no cluster.

pub mod folder_watch;
pub mod manifests;
pub mod revocations;
pub mod state;
pub mod tokens;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use arc_swap::ArcSwap;
use jiff::Timestamp;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::admission::{self, SigningKeyIndex};
use crate::api::SigningKey;
use crate::clock::Clock;
use crate::driver::{
    self,
    keys::KeyStepError,
    rollouts::Tracked,
    serve::{ServeError, Serving},
};
use crate::external::FetchSettings;
use crate::index::Index;
use crate::issuer_claims::{IssuerScope, KeyClaim};
use crate::metrics::Metrics;
use crate::policy::progression::RolloutTracker;
use crate::registry::{PolicyRuntime, PublishedIssuer, Registry, ServedKeys};
use crate::server::{self, AppState, Endpoints};
use crate::tls::files::TlsFiles;
use folder_watch::FolderWatch;
use manifests::{Desired, ManifestLoader, ObjectKey};
use state::StateStore;

/// A timer this long is re-armed: it bounds the effect of a wall-clock jump.
const MAX_SLEEP: StdDuration = StdDuration::from_secs(3600);
/// A SigningKey whose reconcile failed (unwritable state, say) is retried this soon.
const RETRY: jiff::SignedDuration = jiff::SignedDuration::from_secs(10);
/// Editors and copies write a file in several steps: read once the folder has been
/// quiet this long ...
const QUIET: StdDuration = StdDuration::from_millis(200);
/// ... or once changes have kept coming for this long.
const MAX_SETTLE: StdDuration = StdDuration::from_secs(2);
/// Admission warnings logged per reload; the rest are counted in one line.
const MAX_WARNINGS_LOGGED: usize = 20;
/// The folder is read again this often even without a change event: a safety net for
/// events the watcher cannot see (a network file system, a replaced parent folder).
const RESCAN: StdDuration = StdDuration::from_secs(15);

/// How the driver notices changes. Tests shorten the rescan or turn the watcher off to
/// check each path alone.
#[derive(Clone, Debug)]
pub struct Tuning {
    /// Read the folder again this often, change events or not.
    pub rescan_every: StdDuration,
    /// Watch the folder for changes (off: the rescan alone sees them).
    pub watch: bool,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            rescan_every: RESCAN,
            watch: true,
        }
    }
}

#[derive(Clone, Debug)]
pub struct DevConfig {
    pub manifests: PathBuf,
    pub state: PathBuf,
    pub listen: SocketAddr,
    /// Base of default issuer URLs; `http(s)://<bound address>` when unset.
    pub external_url: Option<String>,
    /// Entries of the verified-token cache; 0 turns it off.
    pub decision_cache_size: usize,
    /// Serve HTTPS with this certificate (reloaded when the files change) instead of
    /// HTTP.
    pub tls: Option<TlsFiles>,
    /// `POST {issuer}/revoke` requests per minute per client address.
    pub revoke_rate_per_minute: u32,
    /// Namespaces whose SigningKeys may publish an issuer at any path of the external
    /// URL; the others only under `/<namespace>/`.
    pub unconfined_issuer_namespaces: Vec<String>,
    /// Listener limits and what the serving half trusts.
    pub serving: driver::serve::Settings,
    /// The token endpoint: on or off, and where its store is.
    pub tokens: tokens::TokenSettings,
    /// An admin listener (`--admin-listen`, plain HTTP): status, metrics and the sessions
    /// of a subject there and nowhere else.
    pub admin_listen: Option<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("external URL: {0}")]
    ExternalUrl(#[from] crate::api::IssuerError),
    #[error("manifests folder {0}: {1}")]
    Manifests(PathBuf, std::io::Error),
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error("cannot watch {0}: {1}")]
    Watch(PathBuf, notify::Error),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("internal task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A running dev server.
pub struct DevServer {
    addr: SocketAddr,
    grpc_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    base_url: String,
    external_url: String,
    shutdown: watch::Sender<bool>,
    serving: Serving,
    driver: JoinHandle<()>,
}

impl DevServer {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where Envoy's gRPC ext_authz is served (`--grpc-listen`), if anywhere.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc_addr
    }

    /// Where the admin listener is (`--admin-listen`), if anywhere.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    pub fn external_url(&self) -> &str {
        &self.external_url
    }

    /// `http://<addr>`, or `https://<addr>` when serving TLS.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Stops the driver, lets open requests finish, and returns.
    pub async fn shutdown(self) -> Result<(), DevError> {
        let _ = self.shutdown.send(true);
        self.driver.await?;
        Ok(self.serving.stopped().await?)
    }
}

/// Loads the manifests, brings the keys up to date, and serves. Returns once the first
/// state is published (so `/readyz` is already ready).
pub async fn start(config: DevConfig, clock: Arc<dyn Clock>) -> Result<DevServer, DevError> {
    start_tuned(config, clock, Tuning::default()).await
}

/// [`start`], with how changes are noticed.
pub async fn start_tuned(
    config: DevConfig,
    clock: Arc<dyn Clock>,
    tuning: Tuning,
) -> Result<DevServer, DevError> {
    if let Err(e) = std::fs::read_dir(&config.manifests) {
        return Err(DevError::Manifests(config.manifests.clone(), e));
    }
    let store = StateStore::open(&config.state)?;
    let listener = driver::serve::bind(config.listen)?;
    let addr = listener
        .local_addr()
        .map_err(|e| ServeError::Listen(config.listen, e))?;
    let base_url = match config.tls {
        Some(_) => format!("https://{addr}"),
        None => format!("http://{addr}"),
    };
    let external_url = config
        .external_url
        .clone()
        .unwrap_or_else(|| base_url.clone())
        .trim_end_matches('/')
        .to_owned();

    // Watch before the first read, so that no change between the two is missed.
    let (changes_tx, changes) = mpsc::channel(1);
    let watch = match tuning.watch {
        true => Some(
            FolderWatch::new(&config.manifests, changes_tx)
                .map_err(|e| DevError::Watch(config.manifests.clone(), e))?,
        ),
        false => None,
    };

    let scope = Arc::new(IssuerScope::new(
        &external_url,
        config.unconfined_issuer_namespaces.iter().cloned(),
    )?);
    let registry = Arc::new(Registry::default());
    // The folder is watched from here on; a refused manifest is a reload error, never
    // the input failing (the rest keeps serving), so it is followed for good.
    registry.set_source("manifest folder", crate::registry::SourceState::Synced);
    let metrics = Arc::new(Metrics::default());
    let known = Arc::new(KnownKeys {
        keys: ArcSwap::default(),
        registry: registry.clone(),
        scope: scope.clone(),
    });
    let (shutdown, shutdown_rx) = watch::channel(false);
    // The certificate is loaded before anything is served: a bad one fails the start.
    let tls = match &config.tls {
        Some(files) => Some(
            driver::serve::certificate_from_files(
                files.clone(),
                metrics.clone(),
                shutdown_rx.clone(),
            )
            .await
            .map_err(ServeError::Tls)?,
        ),
        None => None,
    };
    // Dev mode fetches providers on the developer's machine: loopback is allowed.
    let fetch = FetchSettings {
        allow_loopback: true,
        ..config.serving.fetch.clone()
    };
    let runtime = Arc::new(PolicyRuntime::with_fetch(
        metrics.clone(),
        clock.clone(),
        config.decision_cache_size,
        fetch,
    ));
    // TokenClients' ID-token issuers are fetched as the policies' issuers are.
    let token_clients = runtime.token_client_index();
    let mut driver = Driver {
        manifests: config.manifests.clone(),
        loader: ManifestLoader::default(),
        desired: Desired::default(),
        changed: Changed::default(),
        store,
        external_url: external_url.clone(),
        clock: clock.clone(),
        registry: registry.clone(),
        index: Index::new(runtime.clone(), scope),
        runtime,
        key_checks: HashMap::new(),
        rollouts: RolloutTracker::default(),
        recorded_rollouts: HashMap::new(),
        metrics: metrics.clone(),
        known: known.clone(),
        revocations: revocations::DevRevocations::default(),
        token_clients,
        signers: crate::registry::Signers::default(),
        loaded: false,
    };
    let (driver, wakeup) = tokio::task::spawn_blocking(move || {
        driver.reload_manifests();
        let wakeup = driver.reconcile();
        driver.log_issuers();
        (driver, wakeup)
    })
    .await?;

    let writer: Arc<dyn server::revoke::RevocationWriter> = Arc::new(revocations::ManifestWriter {
        dir: config.manifests.clone(),
    });
    let token = tokens::endpoint(
        &config.tokens,
        &StateStore::new(config.state.clone()),
        writer.clone(),
        config.serving.trusted_proxies.clone(),
        clock.clone(),
        registry.clone(),
        &metrics,
        shutdown_rx.clone(),
    )
    .await;
    let state = AppState {
        registry,
        metrics,
        clock,
        base_url: Arc::from(external_url.as_str()),
        signing_keys: known,
        tls: tls.clone(),
        revoke: Some(Arc::new(
            server::revoke::RevokeEndpoint::new(writer, config.revoke_rate_per_minute)
                .trusting_proxies(config.serving.trusted_proxies.clone())
                .sharing_limits(token.as_ref().and_then(|t| t.shared_limits())),
        )),
        token,
    };
    // Dev mode serves the admission webhook too, so that it can be tried with curl.
    let listener = driver::serve::Listener {
        socket: listener,
        endpoints: Endpoints::WithAdmission,
        tls,
        client_cas: None,
    };
    let grpc = driver::serve::grpc_listener(&config.serving)?;
    let grpc_addr = match &grpc {
        Some(grpc) => Some(grpc.socket.local_addr().map_err(ServeError::Serve)?),
        None => None,
    };
    let admin = match config.admin_listen {
        Some(addr) => Some(driver::serve::Listener {
            socket: driver::serve::bind(addr)?,
            endpoints: Endpoints::Admin,
            tls: None,
            client_cas: None,
        }),
        None => None,
    };
    let admin_addr = match &admin {
        Some(admin) => Some(admin.socket.local_addr().map_err(ServeError::Serve)?),
        None => None,
    };
    let listeners = std::iter::once(listener).chain(grpc).chain(admin).collect();
    let serving = driver::serve::start(state, listeners, config.serving.limits, &shutdown_rx)?;
    let driver = tokio::spawn(run(
        driver,
        wakeup,
        Changes {
            events: changes,
            watch,
            rescan: tuning.rescan_every,
        },
        shutdown_rx,
    ));
    Ok(DevServer {
        addr,
        grpc_addr,
        admin_addr,
        base_url,
        external_url,
        shutdown,
        serving,
        driver,
    })
}

/// Where reloads come from: the watcher's events, and the periodic rescan.
struct Changes {
    events: mpsc::Receiver<()>,
    watch: Option<FolderWatch>,
    rescan: StdDuration,
}

impl Changes {
    /// Waits until the folder has been quiet for [`QUIET`] (at most [`MAX_SETTLE`]), so
    /// that a file being written is read once it is complete.
    async fn settle(&mut self) {
        let deadline = tokio::time::Instant::now() + MAX_SETTLE;
        while tokio::time::Instant::now() < deadline {
            match tokio::time::timeout(QUIET, self.events.recv()).await {
                Ok(Some(())) => continue,
                _ => break,
            }
        }
    }
}

async fn run(
    mut driver: Driver,
    mut wakeup: Option<Timestamp>,
    mut changes: Changes,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut rescan = tokio::time::interval(changes.rescan);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    rescan.tick().await; // the first tick is immediate; the folder was just read
    loop {
        let delay = wakeup
            .map(|t| {
                let left = t.duration_since(driver.clock.now());
                StdDuration::try_from(left).unwrap_or(StdDuration::ZERO)
            })
            .unwrap_or(MAX_SLEEP)
            .min(MAX_SLEEP);
        let reload = tokio::select! {
            _ = shutdown.changed() => return,
            Some(()) = changes.events.recv() => {
                changes.settle().await;
                true
            }
            _ = rescan.tick() => true,
            () = tokio::time::sleep(delay) => false,
        };
        if reload {
            // Before reading: a change made after this is seen by the new watch.
            if let Some(watch) = &mut changes.watch {
                watch.refresh();
            }
            rescan.reset();
        }
        let result = tokio::task::spawn_blocking(move || {
            if reload {
                driver.reload_manifests();
            }
            let wakeup = driver.reconcile();
            (driver, wakeup)
        })
        .await;
        match result {
            Ok((back, next)) => {
                driver = back;
                wakeup = next;
            }
            Err(e) => {
                tracing::error!("dev driver stopped: {e}");
                return;
            }
        }
    }
}

struct Driver {
    manifests: PathBuf,
    loader: ManifestLoader,
    desired: Desired,
    /// What the manifests changed since the last reconcile.
    changed: Changed,
    store: StateStore,
    external_url: String,
    clock: Arc<dyn Clock>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    /// What is served: the last good keys per SigningKey (kept while its state is
    /// unreadable) and the compiled policies.
    index: Index,
    runtime: Arc<PolicyRuntime>,
    /// Per SigningKey, what its last reconcile saw: a key is reconciled again only when
    /// its manifest, its state file or the time asks for it.
    key_checks: HashMap<ObjectKey, KeyCheck>,
    rollouts: RolloutTracker,
    /// The rollout progress last recorded per policy, written back if its file vanishes.
    recorded_rollouts: HashMap<ObjectKey, crate::api::RolloutProgress>,
    /// The SigningKeys of the manifests, for the admission webhook.
    known: Arc<KnownKeys>,
    /// The Revocations of the manifests, published on their own.
    revocations: revocations::DevRevocations,
    /// The TokenClients of the manifests, with the issuer and limit of each SigningKey:
    /// what the token endpoint serves, published on their own.
    token_clients: crate::token_clients::TokenClientIndex,
    /// The key sets of the served SigningKeys, for the token endpoint to sign with.
    signers: crate::registry::Signers,
    /// Whether the folder has been read once: what it held at start-up is not "created".
    loaded: bool,
}

/// The objects whose manifests changed since the last reconcile.
#[derive(Default)]
struct Changed {
    signing_keys: BTreeSet<ObjectKey>,
    auth_policies: BTreeSet<ObjectKey>,
    token_clients: BTreeSet<ObjectKey>,
}

impl Changed {
    /// The SigningKeys and AuthPolicies of `after` that are new or differ from `before`.
    /// Objects of files that did not change are the same allocations: no deep comparison
    /// for them.
    fn between(before: &Desired, after: &Desired) -> Self {
        fn changed<T: PartialEq>(
            before: &BTreeMap<ObjectKey, Arc<T>>,
            after: &BTreeMap<ObjectKey, Arc<T>>,
        ) -> BTreeSet<ObjectKey> {
            after
                .iter()
                .filter(|(id, new)| {
                    !before
                        .get(*id)
                        .is_some_and(|old| Arc::ptr_eq(old, new) || old == *new)
                })
                .map(|(id, _)| id.clone())
                .collect()
        }
        Self {
            signing_keys: changed(&before.signing_keys, &after.signing_keys),
            auth_policies: changed(&before.auth_policies, &after.auth_policies),
            token_clients: changed(&before.token_clients, &after.token_clients),
        }
    }

    fn is_empty(&self) -> bool {
        self.signing_keys.is_empty() && self.auth_policies.is_empty()
    }
}

/// What the last reconcile of a SigningKey saw.
struct KeyCheck {
    /// Its state file then (after any write): another writer, a deleted file or folder
    /// shows as a different stamp.
    stamp: Option<FileStamp>,
    /// When it must run again (rotation, retry).
    next: Option<Timestamp>,
}

/// A file's modification time and length: `stat` is cheap, reading 1,000 key files at
/// every change is not.
type FileStamp = (std::time::SystemTime, u64);

fn stamp(path: &std::path::Path) -> Option<FileStamp> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

/// The SigningKeys the manifests define with their `maxTokenLifetime`, and what the
/// served ones hold, as the admission webhook sees them.
struct KnownKeys {
    keys: ArcSwap<BTreeMap<ObjectKey, jiff::SignedDuration>>,
    registry: Arc<Registry>,
    scope: Arc<IssuerScope>,
}

impl SigningKeyIndex for KnownKeys {
    fn contains(&self, id: &ObjectKey) -> bool {
        self.keys.load().contains_key(id)
    }

    fn max_token_lifetime(&self, id: &ObjectKey) -> Option<jiff::SignedDuration> {
        self.keys.load().get(id).copied()
    }

    fn claims(&self) -> Option<admission::Claims> {
        Some(admission::Claims {
            scope: self.scope.clone(),
            snapshot: self.registry.load(),
        })
    }
}

impl Driver {
    fn reload_manifests(&mut self) {
        let reload = self.loader.reload(&self.manifests);
        for refusal in &reload.refused {
            tracing::error!("refused: {refusal}");
            self.metrics.reload_error("manifest");
        }
        for file in &reload.accepted {
            tracing::info!(
                "{}: accepted; its earlier refusal is resolved",
                file.display()
            );
        }
        let desired = reload.desired;
        let changed = Changed::between(&self.desired, &desired);
        let removed = self
            .desired
            .signing_keys
            .keys()
            .any(|id| !desired.signing_keys.contains_key(id))
            || self
                .desired
                .auth_policies
                .keys()
                .any(|id| !desired.auth_policies.contains_key(id));
        if !changed.is_empty() || removed {
            tracing::info!(
                signing_keys = desired.signing_keys.len(),
                auth_policies = desired.auth_policies.len(),
                "manifests loaded from {}",
                self.manifests.display()
            );
        }
        self.known.keys.store(Arc::new(
            desired
                .signing_keys
                .iter()
                .map(|(id, key)| (id.clone(), key.spec.max_token_lifetime()))
                .collect(),
        ));
        let start = !std::mem::replace(&mut self.loaded, true);
        let warnings = admission_warnings(
            &self.desired,
            &desired,
            &changed,
            &*self.known,
            start,
            self.clock.now(),
        );
        for warning in warnings.iter().take(MAX_WARNINGS_LOGGED) {
            tracing::warn!("{warning}");
        }
        if warnings.len() > MAX_WARNINGS_LOGGED {
            // A first start with 10,000 policies would otherwise print 10,000 lines; an
            // object's own warnings come again whenever it is edited.
            tracing::warn!(
                "... and {} more admission warnings (each object's are given again when it changes)",
                warnings.len() - MAX_WARNINGS_LOGGED
            );
        }
        self.changed.signing_keys.extend(changed.signing_keys);
        self.changed.auth_policies.extend(changed.auth_policies);
        for id in self.desired.token_clients.keys() {
            if !desired.token_clients.contains_key(id) {
                self.token_clients.delete(id);
                self.metrics.tokens.forget_client(&id.to_string());
            }
        }
        // Applied after the policies (in `reconcile`): the older policies take their
        // room in the external-issuer cap first, so that a client over it is never
        // fetched, not even once at a start.
        self.changed.token_clients.extend(changed.token_clients);
        self.desired = desired;
        self.update_revocations();
    }

    /// Feeds the Revocations of the manifests to their index and publishes its set: no
    /// policy is compiled for them.
    fn update_revocations(&mut self) {
        self.revocations.update(
            &self.desired,
            self.clock.now(),
            &self.registry,
            &self.metrics,
        );
    }

    /// Brings the SigningKeys that need it up to date (changed, due, or whose state file
    /// changed), indexes what changed, publishes the result, and returns when to run
    /// again. The cost is in proportion to what changed, not to the number of objects.
    fn reconcile(&mut self) -> Option<Timestamp> {
        let now = self.clock.now();
        let mut wakeup: Option<Timestamp> = None;
        let gone: Vec<ObjectKey> = self
            .index
            .served_keys()
            .map(|(id, _)| id)
            .chain(self.key_checks.keys())
            .filter(|id| !self.desired.signing_keys.contains_key(id))
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        for id in gone {
            if self.index.served(&id).is_some() {
                tracing::info!(
                    "SigningKey {id} removed: its issuer is no longer served (its keys stay in the state folder)"
                );
            }
            self.forget(&id);
        }
        let desired = std::mem::take(&mut self.desired);
        let changed = std::mem::take(&mut self.changed);
        for (id, key) in &desired.signing_keys {
            let check = self.key_checks.get(id);
            let due = changed.signing_keys.contains(id)
                || check.is_none_or(|check| {
                    check.next.is_some_and(|next| next <= now)
                        || stamp(&self.store.path(id)) != check.stamp
                });
            if !due {
                wakeup = [wakeup, check.and_then(|c| c.next)]
                    .into_iter()
                    .flatten()
                    .min();
                continue;
            }
            let next = match self.reconcile_key(id, key) {
                Ok((claim, served, next)) => {
                    self.token_clients.apply_key(
                        id.clone(),
                        crate::token_clients::KeyFacts {
                            issuer: served.published.issuer.clone(),
                            max_token_lifetime: served.max_token_lifetime,
                        },
                    );
                    self.signers
                        .insert(id.clone(), Arc::new(served.keys.clone()));
                    self.index.apply_claim(id, claim, Some(served));
                    next
                }
                Err(e) => {
                    let keep = "the last good keys keep serving and nothing is overwritten";
                    match &e {
                        KeyStepError::Key(_) => tracing::error!("SigningKey {id}: {e}"),
                        KeyStepError::Unreadable(_) => tracing::error!(
                            "SigningKey {id}: {}: {e}; {keep}",
                            self.store.path(id).display()
                        ),
                        _ => tracing::error!("SigningKey {id}: {e}; {keep}"),
                    }
                    self.metrics.reload_error("keystore");
                    Some(crate::keys::lifecycle::add(now, RETRY))
                }
            };
            let check = KeyCheck {
                stamp: stamp(&self.store.path(id)),
                next,
            };
            self.key_checks.insert(id.clone(), check);
            wakeup = [wakeup, next].into_iter().flatten().min();
        }
        self.desired = desired;
        let next = self.track_rollouts(&changed.auth_policies);
        wakeup = [wakeup, next].into_iter().flatten().min();
        for id in &changed.token_clients {
            if let Some(client) = self.desired.token_clients.get(id) {
                self.token_clients.apply(client.clone());
                if let Some(refusal) = self.token_clients.quota_refusal(id) {
                    tracing::warn!("TokenClient {id}: {refusal}; its ID tokens are refused");
                }
            }
        }
        // One cap counts both kinds: a change of one may let in, or keep out, the other.
        self.index.apply_quota_moves();
        for id in self.token_clients.apply_quota_moves() {
            match self.token_clients.quota_refusal(&id) {
                Some(refusal) => {
                    tracing::warn!("TokenClient {id}: {refusal}; its ID tokens are refused")
                }
                None => tracing::info!("TokenClient {id}: its ID-token issuers are fetched"),
            }
        }
        self.registry.publish(self.index.snapshot());
        self.registry
            .publish_token_clients(self.token_clients.published());
        self.registry.publish_signers(self.signers.clone());
        wakeup
    }

    /// Indexes the AuthPolicies that changed, and moves stepped rollouts along, recording
    /// their progress in the state folder; a policy is indexed with its progress in its
    /// status, as the operator has it. Returns when a rollout moves next.
    fn track_rollouts(&mut self, changed: &BTreeSet<ObjectKey>) -> Option<Timestamp> {
        let now = self.clock.now();
        let mut wakeup = None;
        let gone: Vec<ObjectKey> = self
            .index
            .policy_ids()
            .filter(|id| !self.desired.auth_policies.contains_key(id))
            .cloned()
            .collect();
        for id in gone {
            self.index.delete_policy(&id);
        }
        for (id, policy) in &self.desired.auth_policies {
            // Only a stepped rollout moves by itself; any other policy is looked at when
            // its manifest changes (or when it stops being stepped, while its record is
            // forgotten).
            let moves =
                !policy.spec.rollout.steps.is_empty() || self.recorded_rollouts.contains_key(id);
            if !moves && !changed.contains(id) && self.index.has_policy(id) {
                continue;
            }
            let store = state::FolderRollouts {
                store: &self.store,
                remembered: &self.recorded_rollouts,
                metrics: &self.metrics,
            };
            let totals = self.runtime.audit_totals(id);
            let tracked = driver::rollouts::track(
                &store,
                &mut self.rollouts,
                &self.metrics,
                id,
                policy,
                now,
                totals,
            );
            driver::rollouts::say_moved(id, &tracked);
            let Tracked { progress, next, .. } = tracked;
            wakeup = [wakeup, next].into_iter().flatten().min();
            match &progress {
                Some(progress) => self.recorded_rollouts.insert(id.clone(), progress.clone()),
                None => self.recorded_rollouts.remove(id),
            };
            let current = policy.status.as_ref().and_then(|s| s.rollout.as_ref());
            let policy = if current == progress.as_ref() {
                policy.clone()
            } else {
                let mut policy = crate::api::AuthPolicy::clone(policy);
                policy.status.get_or_insert_with(Default::default).rollout = progress;
                Arc::new(policy)
            };
            self.index.apply_policy(policy);
        }
        let desired = &self.desired.auth_policies;
        self.rollouts.retain(|id| desired.contains_key(id));
        self.recorded_rollouts
            .retain(|id, _| desired.contains_key(id));
        wakeup
    }

    fn reconcile_key(
        &mut self,
        id: &ObjectKey,
        key: &SigningKey,
    ) -> Result<(KeyClaim, ServedKeys, Option<Timestamp>), KeyStepError<state::StateError>> {
        let now = self.clock.now();
        let store = state::FolderKeys {
            store: &self.store,
            served: self.index.served(id),
            metrics: &self.metrics,
            now,
        };
        // The state folder's futures never wait: plain file I/O, on this blocking
        // thread (the driver runs in `spawn_blocking`).
        let (outcome, ()) = futures::executor::block_on(driver::keys::bring_up_to_date(
            &store,
            &(),
            &self.metrics,
            id,
            key,
            &self.external_url,
            now,
        ))?;
        let claim = KeyClaim::of(key, &self.external_url, Some(&outcome.data));
        let served = ServedKeys {
            published: Arc::new(outcome.published(&id.namespace, &id.name)),
            keys: outcome.keys,
            max_token_lifetime: key.spec.max_token_lifetime(),
        };
        Ok((claim, served, outcome.next_wakeup))
    }

    fn forget(&mut self, id: &ObjectKey) {
        self.index.delete_key(id);
        self.token_clients.delete_key(id);
        self.signers.remove(id);
        self.key_checks.remove(id);
        self.metrics.forget_keys(&id.namespace, &id.name);
    }

    /// Says where each issuer is served, as fields (an issuer is the user's text).
    fn log_issuers(&self) {
        let ordered: BTreeMap<&ObjectKey, &Arc<PublishedIssuer>> = self
            .index
            .served_keys()
            .map(|(id, s)| (id, &s.published))
            .collect();
        let snapshot = self.index.snapshot();
        for (id, published) in ordered {
            let served_here = snapshot
                .issuers
                .get(&published_path(published))
                .is_some_and(|p| Arc::ptr_eq(p, published));
            let issuer = published.issuer.as_str();
            if served_here {
                tracing::info!(
                    signing_key = %id,
                    issuer,
                    jwks_uri = published.jwks_uri.as_str(),
                    "issuer served (discovery at <issuer>/.well-known/openid-configuration)"
                );
            } else {
                tracing::info!(
                    signing_key = %id,
                    issuer,
                    "issuer not served here (published elsewhere, or its path is another's); its keys sign"
                );
            }
        }
    }
}

/// The URL path an issuer is served at, if it has one.
fn published_path(published: &PublishedIssuer) -> String {
    crate::api::issuer_path(&published.issuer).unwrap_or_default()
}

/// The warnings the admission webhook gives for each object that is new or changed, as
/// `kubectl` prints them: what works in dev mode then surprises no one on a cluster.
///
/// At start-up the objects are not new: they were in the folder before (across a
/// restart, the same files). They are reviewed as unchanged, so that what a warning says
/// about the object itself is given at every start, and what it says about a change (an
/// enforcement of 100% "on creation") only when the change happens.
fn admission_warnings(
    before: &Desired,
    after: &Desired,
    changed: &Changed,
    index: &dyn SigningKeyIndex,
    start: bool,
    now: Timestamp,
) -> Vec<String> {
    let mut warnings = Vec::new();
    let mut report = |kind: &str, id: &ObjectKey, verdict: admission::Verdict| {
        // Dev mode already applied every refusal; what is left needs the old object
        // (a renamed Secret) and would be refused on a cluster.
        for refusal in verdict.refusals {
            warnings.push(format!(
                "{kind} {id}: Warning: a cluster would refuse this change: {refusal}"
            ));
        }
        for warning in verdict.warnings {
            warnings.push(format!("{kind} {id}: Warning: {warning}"));
        }
    };
    for id in &changed.signing_keys {
        if let Some(key) = after.signing_keys.get(id) {
            let old = before.signing_keys.get(id).or(start.then_some(key));
            report(
                "SigningKey",
                id,
                admission::signing_key(key, old.map(|o| &**o), index),
            );
        }
    }
    for id in &changed.auth_policies {
        if let Some(policy) = after.auth_policies.get(id) {
            let old = before.auth_policies.get(id).or(start.then_some(policy));
            report(
                "AuthPolicy",
                id,
                admission::auth_policy(policy, old.map(|o| &**o), index, now),
            );
        }
    }
    for id in &changed.token_clients {
        if let Some(client) = after.token_clients.get(id) {
            report("TokenClient", id, admission::token_client(client, index));
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;
    use manifests::{Object, parse_file};

    fn desired(text: &str) -> Desired {
        let mut desired = Desired::default();
        for object in parse_file(std::path::Path::new("m.yaml"), text).unwrap() {
            match object {
                Object::SigningKey(k) => {
                    desired.signing_keys.insert(ObjectKey::of(&k.metadata), k);
                }
                Object::AuthPolicy(p) => {
                    desired.auth_policies.insert(ObjectKey::of(&p.metadata), p);
                }
                Object::Revocation(r) => {
                    desired.revocations.insert(ObjectKey::of(&r.metadata), r);
                }
                Object::TokenClient(c) => {
                    desired.token_clients.insert(ObjectKey::of(&c.metadata), c);
                }
            }
        }
        desired
    }

    #[test]
    fn admission_warnings_are_given_for_new_and_changed_objects_only() {
        let key = "apiVersion: authplane.io/v1alpha1\nkind: SigningKey\nmetadata: {name: web, namespace: auth}\nspec: {rotation: {every: 1h, prePublish: 5s, retainFor: 10s}}\n";
        let policy = "apiVersion: authplane.io/v1alpha1\nkind: AuthPolicy\nmetadata: {name: pay, namespace: shop}\nspec:\n  issuers: [{signingKeyRef: {name: web, namespace: auth}}]\n  audiences: [pay]\n  rollout: {mode: Enforce, percentage: 100}\n";
        let both = desired(&format!("{key}---\n{policy}"));
        let known: BTreeMap<ObjectKey, jiff::SignedDuration> = both
            .signing_keys
            .iter()
            .map(|(id, key)| (id.clone(), key.spec.max_token_lifetime()))
            .collect();
        let index = KnownKeys {
            keys: ArcSwap::from_pointee(known),
            registry: Arc::default(),
            scope: Arc::new(IssuerScope::new("http://127.0.0.1:8080", []).unwrap()),
        };
        let created = admission_warnings(
            &Desired::default(),
            &both,
            &Changed::between(&Desired::default(), &both),
            &index,
            false,
            Timestamp::now(),
        );
        assert!(
            created.iter().any(|w| w.starts_with(
                "SigningKey auth/web: Warning: spec.rotation.retainFor: 10s is shorter"
            )),
            "{created:?}"
        );
        assert!(
            created.iter().any(|w| w.starts_with(
                "AuthPolicy shop/pay: Warning: spec.rollout.percentage: enforces for 100% of users on creation"
            )),
            "{created:?}"
        );
        assert!(
            admission_warnings(
                &both,
                &both,
                &Changed::between(&both, &both),
                &index,
                false,
                Timestamp::now()
            )
            .is_empty(),
            "unchanged"
        );
        // At start-up the same objects are not created: a warning about the object itself
        // stays, one about a change (100% "on creation") is not given at every restart.
        let restarted = admission_warnings(
            &Desired::default(),
            &both,
            &Changed::between(&Desired::default(), &both),
            &index,
            true,
            Timestamp::now(),
        );
        assert!(
            restarted
                .iter()
                .any(|w| w.contains("spec.rotation.retainFor: 10s is shorter")),
            "{restarted:?}"
        );
        assert!(
            !restarted.iter().any(|w| w.contains("on creation")),
            "{restarted:?}"
        );
    }
}
