//! Dev mode: the core driven by a folder of manifests and a state folder, no cluster.

pub mod manifests;
pub mod state;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use arc_swap::ArcSwap;
use jiff::Timestamp;
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::admission::SigningKeyIndex;
use crate::api::SigningKey;
use crate::clock::Clock;
use crate::keys::KeyMaterial;
use crate::metrics::Metrics;
use crate::policy::progression::RolloutTracker;
use crate::reconcile::{self, ReconcileError};
use crate::registry::{PolicyRuntime, PublishedIssuer, Registry, ServedKeys, build_snapshot};
use crate::server::{self, AppState, Endpoints};
use crate::tls::files::TlsFiles;
use crate::tls::{self, CertSlot, TlsError};
use manifests::{Desired, ManifestLoader, ObjectKey};
use state::StateStore;

/// A timer this long is re-armed: it bounds the effect of a wall-clock jump.
const MAX_SLEEP: StdDuration = StdDuration::from_secs(3600);
/// A SigningKey whose reconcile failed (unwritable state, say) is retried this soon.
const RETRY: jiff::SignedDuration = jiff::SignedDuration::from_secs(10);
/// Editors write a file in several steps; react once they are done.
const SETTLE: StdDuration = StdDuration::from_millis(50);

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
}

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("manifests folder {0}: {1}")]
    Manifests(PathBuf, std::io::Error),
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("cannot watch {0}: {1}")]
    Watch(PathBuf, notify::Error),
    #[error("server: {0}")]
    Serve(std::io::Error),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("internal task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A running dev server.
pub struct DevServer {
    addr: SocketAddr,
    base_url: String,
    external_url: String,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<std::io::Result<()>>,
    driver: JoinHandle<()>,
}

impl DevServer {
    pub fn addr(&self) -> SocketAddr {
        self.addr
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
        self.server.await?.map_err(DevError::Serve)
    }
}

/// Loads the manifests, brings the keys up to date, and serves. Returns once the first
/// state is published (so `/readyz` is already ready).
pub async fn start(config: DevConfig, clock: Arc<dyn Clock>) -> Result<DevServer, DevError> {
    if let Err(e) = std::fs::read_dir(&config.manifests) {
        return Err(DevError::Manifests(config.manifests.clone(), e));
    }
    let store = StateStore::open(&config.state)?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| DevError::Listen(config.listen, e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| DevError::Listen(config.listen, e))?;
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
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Our own reads show up as access events; only changes matter.
        if event.is_ok_and(|e| !matches!(e.kind, EventKind::Access(_))) {
            let _ = changes_tx.try_send(()); // a full channel already means "reload"
        }
    })
    .map_err(|e| DevError::Watch(config.manifests.clone(), e))?;
    watcher
        .watch(&config.manifests, RecursiveMode::NonRecursive)
        .map_err(|e| DevError::Watch(config.manifests.clone(), e))?;

    let registry = Arc::new(Registry::default());
    let metrics = Arc::new(Metrics::default());
    let known = Arc::new(KnownKeys::default());
    let (shutdown, shutdown_rx) = watch::channel(false);
    // The certificate is loaded before anything is served: a bad one fails the start.
    let tls = match &config.tls {
        Some(files) => {
            let slot = Arc::new(CertSlot::default());
            let watch = tls::files::watch(
                files.clone(),
                slot.clone(),
                metrics.clone(),
                shutdown_rx.clone(),
            )
            .await?;
            Some((slot, watch))
        }
        None => None,
    };
    let mut driver = Driver {
        manifests: config.manifests.clone(),
        loader: ManifestLoader::default(),
        desired: Desired::default(),
        store,
        external_url: external_url.clone(),
        clock: clock.clone(),
        registry: registry.clone(),
        runtime: Arc::new(PolicyRuntime::new(
            metrics.clone(),
            clock.clone(),
            config.decision_cache_size,
        )),
        rollouts: RolloutTracker::default(),
        metrics: metrics.clone(),
        served: HashMap::new(),
        known: known.clone(),
    };
    let (driver, wakeup) = tokio::task::spawn_blocking(move || {
        driver.reload_manifests();
        let wakeup = driver.reconcile();
        driver.log_issuers();
        (driver, wakeup)
    })
    .await?;

    let state = AppState {
        registry,
        metrics,
        clock,
        base_url: Arc::from(external_url.as_str()),
        signing_keys: known,
        tls: tls.as_ref().map(|(slot, _)| slot.clone()),
    };
    // Dev mode serves the admission webhook too, so that it can be tried with curl.
    let app = server::router(state, Endpoints::WithAdmission);
    let mut server_stop = shutdown_rx.clone();
    let stopped = async move {
        let _ = server_stop.wait_for(|stop| *stop).await;
    };
    let server = match tls {
        Some((slot, _watch)) => {
            let config = tls::server_config(slot)?;
            tokio::spawn(server::serve_tls(listener, app, config, stopped))
        }
        None => tokio::spawn(server::serve(listener, app, stopped)),
    };
    let driver = tokio::spawn(run(driver, wakeup, changes, watcher, shutdown_rx));
    Ok(DevServer {
        addr,
        base_url,
        external_url,
        shutdown,
        server,
        driver,
    })
}

async fn run(
    mut driver: Driver,
    mut wakeup: Option<Timestamp>,
    mut changes: mpsc::Receiver<()>,
    _watcher: notify::RecommendedWatcher,
    mut shutdown: watch::Receiver<bool>,
) {
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
            Some(()) = changes.recv() => {
                tokio::time::sleep(SETTLE).await;
                while changes.try_recv().is_ok() {}
                true
            }
            () = tokio::time::sleep(delay) => false,
        };
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
    store: StateStore,
    external_url: String,
    clock: Arc<dyn Clock>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    /// Last good keys and documents per SigningKey, served while its state is unreadable.
    served: HashMap<ObjectKey, ServedKeys>,
    runtime: Arc<PolicyRuntime>,
    rollouts: RolloutTracker,
    /// The SigningKeys of the manifests, for the admission webhook.
    known: Arc<KnownKeys>,
}

/// The SigningKeys the manifests define, as the admission webhook sees them.
#[derive(Default)]
struct KnownKeys(ArcSwap<BTreeSet<ObjectKey>>);

impl SigningKeyIndex for KnownKeys {
    fn contains(&self, id: &ObjectKey) -> bool {
        self.0.load().contains(id)
    }
}

impl Driver {
    fn reload_manifests(&mut self) {
        let (desired, errors) = self.loader.load(&self.manifests);
        for error in &errors {
            tracing::error!("refused: {error} (the last good version keeps serving)");
            self.metrics.reload_error("manifest");
        }
        if desired != self.desired {
            tracing::info!(
                signing_keys = desired.signing_keys.len(),
                auth_policies = desired.auth_policies.len(),
                "manifests loaded from {}",
                self.manifests.display()
            );
        }
        self.known
            .0
            .store(Arc::new(desired.signing_keys.keys().cloned().collect()));
        self.desired = desired;
    }

    /// Brings every SigningKey up to date, publishes the result, and returns when to run
    /// again.
    fn reconcile(&mut self) -> Option<Timestamp> {
        let mut wakeup: Option<Timestamp> = None;
        let gone: Vec<ObjectKey> = self
            .served
            .keys()
            .filter(|id| !self.desired.signing_keys.contains_key(id))
            .cloned()
            .collect();
        for id in gone {
            tracing::info!(
                "SigningKey {id} removed: its issuer is no longer served (its keys stay in the state folder)"
            );
            self.forget(&id);
        }
        let desired = std::mem::take(&mut self.desired);
        for (id, key) in &desired.signing_keys {
            let next = match self.reconcile_key(id, key) {
                Ok((served, next)) => {
                    self.served.insert(id.clone(), served);
                    next
                }
                Err(message) => {
                    tracing::error!("SigningKey {id}: {message}");
                    self.metrics.reload_error("keystore");
                    Some(crate::keys::lifecycle::add(self.clock.now(), RETRY))
                }
            };
            wakeup = [wakeup, next].into_iter().flatten().min();
        }
        self.desired = desired;
        let (policies, next) = self.track_rollouts();
        wakeup = [wakeup, next].into_iter().flatten().min();
        let policies = policies.iter().map(|(id, p)| (id, p));
        self.registry
            .publish(build_snapshot(&self.served, policies, &self.runtime));
        wakeup
    }

    /// Moves stepped rollouts along, recording their progress in the state folder, and
    /// returns the policies with that progress in their status, as the operator has them.
    fn track_rollouts(&mut self) -> (Vec<(ObjectKey, crate::api::AuthPolicy)>, Option<Timestamp>) {
        let now = self.clock.now();
        let mut wakeup = None;
        let mut policies = Vec::new();
        for (id, policy) in &self.desired.auth_policies {
            let recorded = self.store.load_rollout(id).unwrap_or_else(|e| {
                tracing::error!("AuthPolicy {id}: {e}; its rollout starts over");
                None
            });
            let totals = self.runtime.audit_totals(id);
            let (progress, next) =
                self.rollouts
                    .track(id, &policy.spec.rollout, recorded.as_ref(), now, totals);
            wakeup = [wakeup, next].into_iter().flatten().min();
            if let Some(progress) = &progress
                && recorded.as_ref() != Some(progress)
            {
                if let Err(e) = self.store.save_rollout(id, progress) {
                    tracing::error!("AuthPolicy {id}: cannot record its rollout: {e}");
                    self.metrics.reload_error("keystore");
                }
                tracing::info!(
                    "AuthPolicy {id}: rollout at step {} of {:?}{}",
                    progress.step + 1,
                    progress.steps,
                    progress
                        .held
                        .as_deref()
                        .map(|r| format!(", held: {r}"))
                        .unwrap_or_default()
                );
            }
            if progress.is_none()
                && recorded.is_some()
                && let Err(e) = self.store.remove_rollout(id)
            {
                tracing::error!("AuthPolicy {id}: cannot forget its finished rollout: {e}");
            }
            let mut policy = policy.clone();
            policy.status.get_or_insert_with(Default::default).rollout = progress;
            policies.push((id.clone(), policy));
        }
        let desired = &self.desired.auth_policies;
        self.rollouts.retain(|id| desired.contains_key(id));
        (policies, wakeup)
    }

    fn reconcile_key(
        &mut self,
        id: &ObjectKey,
        key: &SigningKey,
    ) -> Result<(ServedKeys, Option<Timestamp>), String> {
        let keep = "the last good keys keep serving and nothing is overwritten";
        let now = self.clock.now();
        let stored = self.store.load(id).map_err(|e| format!("{e}; {keep}"))?;
        let outcome = reconcile::signing_key(
            key,
            stored.as_ref(),
            &self.external_url,
            now,
            &mut KeyMaterial::generate,
        )
        .map_err(|e| match e {
            ReconcileError::Store(e) => format!("{}: {e}; {keep}", self.store.path(id).display()),
            e => e.to_string(),
        })?;
        if outcome.write {
            // Persist before publishing: a key is never served, or used, unsaved.
            self.store
                .save(id, &outcome.data)
                .map_err(|e| e.to_string())?;
        }
        for event in &outcome.events {
            let (_, message, warning) = reconcile::describe(event, outcome.policy.algorithm);
            if warning {
                tracing::warn!("SigningKey {id}: {message}");
            } else {
                tracing::info!("SigningKey {id}: {message}");
            }
        }
        self.metrics
            .observe_keys(&outcome, &id.namespace, &id.name, now);
        let served = ServedKeys {
            published: Arc::new(outcome.published(&id.namespace, &id.name)),
            keys: outcome.keys,
        };
        Ok((served, outcome.next_wakeup))
    }

    fn forget(&mut self, id: &ObjectKey) {
        self.served.remove(id);
        self.metrics.forget_keys(&id.namespace, &id.name);
    }

    fn log_issuers(&self) {
        let ordered: BTreeMap<&ObjectKey, &Arc<PublishedIssuer>> = self
            .served
            .iter()
            .map(|(id, s)| (id, &s.published))
            .collect();
        for (id, published) in ordered {
            tracing::info!(
                "SigningKey {id}: issuer {} (discovery {}/.well-known/openid-configuration, JWKS {})",
                published.issuer,
                published.issuer,
                published.jwks_uri
            );
        }
    }
}
