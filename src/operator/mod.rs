//! The Kubernetes driver, `authplane run`: the same core and server as dev mode, with
//! keys in Secrets. Every replica serves; the Lease holder writes.

pub mod assertions;
pub mod attachments;
pub mod auth_policies;
pub mod error;
pub mod feed;
pub mod gateways;
pub mod instance;
pub mod latest;
pub mod lease;
pub mod revocations;
pub mod secret_store;
pub mod serve;
pub mod signing_keys;
pub mod status;
pub mod targets;
pub mod token_clients;
pub mod token_store;
pub mod watch_failure;
pub mod writer;

#[cfg(test)]
mod lead_tests;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, future, stream};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::ListParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::DeserializeGuard;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, WatchStreamExt, controller, reflector, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::SigningKey;
use crate::clock::{Clock, SystemClock};
use crate::driver::{
    self,
    serve::{Listener, ServeError},
};
use crate::issuer_claims::IssuerScope;
use crate::metrics::Metrics;
use crate::registry::{PolicyRuntime, Registry};
use crate::server::{self, AppState, Endpoints};
use crate::tls::bootstrap::BootstrapSettings;
use crate::tls::files::TlsFiles;
use crate::tls::{self, CertSlot};
use instance::Instance;
use lease::LeaseSettings;
use signing_keys::{Context, OwnedCaches, SIGNING_KEY_LABEL};
use writer::Pace;

#[derive(Clone, Debug)]
pub struct OperatorConfig {
    /// A kubeconfig file; in-cluster config or `KUBECONFIG` when unset.
    pub kubeconfig: Option<PathBuf>,
    /// Where the Lease lives (the operator's own namespace).
    pub namespace: String,
    pub listen: SocketAddr,
    /// Base of default issuer URLs: how verifiers reach this service.
    pub external_url: String,
    /// This replica's identity in the Lease (the pod name).
    pub identity: String,
    /// Entries of the verified-token cache; 0 turns it off.
    pub decision_cache_size: usize,
    /// HTTPS: every endpoint plus the admission webhook (`POST /validate`).
    pub tls: Option<TlsConfig>,
    /// `POST {issuer}/revoke` requests per minute per client address.
    pub revoke_rate_per_minute: u32,
    /// Namespaces whose SigningKeys may publish an issuer at any path of the external
    /// URL; the others only under `/<namespace>/`.
    pub unconfined_issuer_namespaces: Vec<String>,
    /// Status, metrics and health on their own listener (plain HTTP), and nowhere else.
    pub admin_listen: Option<SocketAddr>,
    /// HTTPS clients must present a certificate of these CAs (PEM): the apiserver, where
    /// it is configured to present one to webhooks.
    pub tls_client_ca_file: Option<PathBuf>,
    /// Listener limits and what the serving half trusts.
    pub serving: driver::serve::Settings,
    /// The installation: only this instance's objects are served and written.
    pub instance: Instance,
    /// How fast the leader writes; `None`: as fast as the apiserver answers.
    pub write_pace: Option<Pace>,
    /// Which gateways the leader writes configuration for, and where they reach
    /// authplane.
    pub attach: attachments::AttachConfig,
    /// The token service's store; `None`: no token service.
    pub token_store: Option<token_store::TokenStoreConfig>,
}

/// The HTTPS listener and where its certificate comes from.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    pub listen: SocketAddr,
    pub source: TlsSource,
}

#[derive(Clone, Debug)]
pub enum TlsSource {
    /// PEM files (a mounted Secret, such as cert-manager's), reloaded when they change.
    Files(TlsFiles),
    /// authplane's own CA and serving certificate in a Secret; see [`tls::bootstrap`].
    Bootstrap(BootstrapSettings),
}

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("Kubernetes configuration: {0}")]
    Config(String),
    #[error(
        "the authplane CRDs are not installed in this cluster: run `kubectl apply -f crds/` (or install the Helm chart) first"
    )]
    CrdsMissing,
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("external URL: {0}")]
    ExternalUrl(#[from] crate::api::IssuerError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("--tls-client-ca-file: {0}")]
    ClientCa(#[from] tls::TlsError),
    #[error(transparent)]
    TokenStore(#[from] token_store::TokenStoreError),
}

/// A client from a kubeconfig file, or inferred (in-cluster, `KUBECONFIG`).
pub async fn client(kubeconfig: Option<&PathBuf>) -> Result<Client, OperatorError> {
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .map_err(|e| OperatorError::Config(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(|e| OperatorError::Config(e.to_string()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| OperatorError::Config(e.to_string()))?,
    };
    Client::try_from(config).map_err(OperatorError::Kube)
}

/// Runs until `shutdown` resolves.
pub async fn run(
    config: OperatorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), OperatorError> {
    let client = client(config.kubeconfig.as_ref()).await?;
    let operator = start(client, config).await?;
    shutdown.await;
    tracing::info!("shutting down");
    operator.stop().await
}

/// A running operator.
pub struct Operator {
    /// Where the plain HTTP listener is bound.
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    serving: driver::serve::Serving,
}

impl Operator {
    /// The plain HTTP listener's address (its port, when `listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops everything: the leader releases its Lease; open requests finish.
    pub async fn stop(self) -> Result<(), OperatorError> {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        Ok(self.serving.stopped().await?)
    }
}

/// How long a SigningKey's or AuthPolicy's problem must last to be logged (watches
/// arrive in any order; the leader makes a new key's Secret a moment after the key).
const PROBLEM_GRACE: Duration = Duration::from_secs(30);

/// Starts the operator with `client`: serving on every replica, writing on the leader.
pub async fn start(client: Client, config: OperatorConfig) -> Result<Operator, OperatorError> {
    match Api::<SigningKey>::all(client.clone())
        .list(&ListParams::default().limit(1))
        .await
    {
        Err(kube::Error::Api(status)) if status.code == 404 => {
            return Err(OperatorError::CrdsMissing);
        }
        Err(e) => return Err(e.into()),
        Ok(_) => {}
    }
    if let Some(store) = &config.token_store {
        token_store::check_replicas(&client, &config.namespace, store).await?;
    }

    let scope = Arc::new(IssuerScope::new(
        &config.external_url,
        config.unconfined_issuer_namespaces.iter().cloned(),
    )?);
    let registry = Arc::new(Registry::default());
    let metrics = Arc::new(Metrics::default());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let socket = driver::serve::bind(config.listen)?;
    let addr = socket
        .local_addr()
        .map_err(|e| ServeError::Listen(config.listen, e))?;
    let mut listeners = vec![Listener {
        socket,
        endpoints: Endpoints::Public,
        tls: None,
        client_cas: None,
    }];
    let (stop, stopped) = watch::channel(false);
    // The serving watches' caches: the admission webhook reads the SigningKeys, the
    // leader's controllers all of them.
    let (caches, cache_writers) = serve::caches();
    // Certificate files are loaded before anything is served (a bad one fails the
    // start); a bootstrapped certificate is made meanwhile, and `/readyz` waits for it.
    let slot = match config.tls.as_ref().map(|tls| &tls.source) {
        None => None,
        Some(TlsSource::Files(files)) => Some(
            driver::serve::certificate_from_files(files.clone(), metrics.clone(), stopped.clone())
                .await
                .map_err(ServeError::Tls)?,
        ),
        Some(TlsSource::Bootstrap(settings)) => {
            let slot = Arc::new(CertSlot::default());
            tokio::spawn(tls::bootstrap::run(
                client.clone(),
                settings.clone(),
                slot.clone(),
                metrics.clone(),
                clock.clone(),
                stopped.clone(),
            ));
            Some(slot)
        }
    };
    if let (Some(tls), Some(slot)) = (&config.tls, &slot) {
        let client_cas = match &config.tls_client_ca_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|source| tls::TlsError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                Some(tls::client_roots(&pem, &path.display().to_string())?)
            }
            None => None,
        };
        listeners.push(Listener {
            socket: driver::serve::bind(tls.listen)?,
            endpoints: Endpoints::WithAdmission,
            tls: Some(slot.clone()),
            client_cas,
        });
    }
    listeners.extend(driver::serve::grpc_listener(&config.serving)?);
    if let Some(admin) = config.admin_listen {
        listeners.push(Listener {
            socket: driver::serve::bind(admin)?,
            endpoints: Endpoints::Admin,
            tls: None,
            client_cas: None,
        });
    }
    let revocation_writer = Arc::new(revocations::KubeWriter {
        client: client.clone(),
        instance: config.instance.clone(),
    });
    let token = match &config.token_store {
        Some(store) => Some(
            token_store::endpoint(
                store,
                format!("{}/{}", config.namespace, config.instance.name()),
                Arc::new(assertions::TokenReviewer::new(client.clone())),
                revocation_writer.clone(),
                config.serving.trusted_proxies.clone(),
                clock.clone(),
                registry.clone(),
                &metrics,
                stopped.clone(),
            )
            .await,
        ),
        None => None,
    };
    let state = AppState {
        registry: registry.clone(),
        metrics: metrics.clone(),
        clock: clock.clone(),
        base_url: Arc::from(config.external_url.as_str()),
        signing_keys: Arc::new(serve::KeyIndex {
            keys: caches.keys.clone(),
            registry: registry.clone(),
            scope: scope.clone(),
        }),
        tls: slot,
        revoke: Some(Arc::new(
            server::revoke::RevokeEndpoint::new(revocation_writer, config.revoke_rate_per_minute)
                .trusting_proxies(config.serving.trusted_proxies.clone())
                .sharing_limits(token.as_ref().and_then(|t| t.shared_limits())),
        )),
        token,
    };
    let serving = driver::serve::start(state, listeners, config.serving.limits, &stopped)?;
    let runtime = Arc::new(
        PolicyRuntime::with_fetch(
            metrics.clone(),
            clock.clone(),
            config.decision_cache_size,
            config.serving.fetch.clone(),
        )
        .with_problem_grace(PROBLEM_GRACE),
    );
    // The serving loop tells the leader's controllers what it applied.
    let feeds = serve::Feeds::default();
    // TokenClients have their own watch and index, fed the SigningKeys the serving loop
    // applies (listening from now on, so that nothing it applies is missed).
    let (token_client_cache, token_client_writer) = reflector::store();
    // Revocations have their own watch and set: a new one rebuilds no policy.
    let revoking = tokio::spawn(revocations::run(
        client.clone(),
        registry.clone(),
        metrics.clone(),
        clock.clone(),
        revocations::LifetimeCaches {
            keys: caches.keys.clone(),
            policies: caches.policies.clone(),
            clients: token_client_cache.clone(),
        },
        stopped.clone(),
    ));
    // Their ID-token issuers are fetched as AuthPolicies' external issuers are, under
    // the same per-namespace cap.
    let token_clients = Arc::new(token_clients::Served::new(runtime.token_client_index()));
    let token_client_changes = Arc::new(feed::Feed::default());
    let following_token_clients = tokio::spawn(token_clients::run(
        client.clone(),
        token_clients::Follow {
            registry: registry.clone(),
            instance: config.instance.clone(),
            external_url: config.external_url.clone(),
            keys: caches.keys.clone(),
            served: token_clients.clone(),
            changed: token_client_changes.clone(),
        },
        token_client_writer,
        feeds.token_client_keys.clone().triggers(),
        stopped.clone(),
    ));
    let watching = tokio::spawn(serve::run(
        client.clone(),
        serve::Settings {
            scope: scope.clone(),
            instance: config.instance.clone(),
        },
        registry.clone(),
        runtime.clone(),
        (caches.clone(), cache_writers),
        feeds.clone(),
        stopped.clone(),
    ));

    let (leader_tx, leader) = watch::channel(false);
    let settings = LeaseSettings {
        name: config.instance.lease_name(),
        namespace: config.namespace.clone(),
        identity: config.identity.clone(),
        // client-go's defaults are 15 s / 10 s / 2 s; a failover takes at most about
        // duration + renew_every.
        duration: Duration::from_secs(15),
        renew_deadline: Duration::from_secs(10),
        renew_every: Duration::from_secs(5),
    };
    let lease = tokio::spawn(lease::run(
        Api::namespaced(client.clone(), &config.namespace),
        settings,
        clock.clone(),
        leader_tx,
        stopped.clone(),
    ));

    // Every write the leader makes goes through this gate.
    let mut writer = writer::LeaderWriter::new(
        client.clone(),
        leader.clone(),
        Some(config.identity.clone()),
    )
    .for_instance(config.instance.clone());
    if let Some(pace) = config.write_pace {
        writer = writer.paced(pace);
    }
    let policies = Arc::new(auth_policies::PolicyContext {
        targets: Default::default(),
        attachments: Arc::new(attachments::Attachments::new(
            config.attach.clone(),
            &config.instance,
        )),
        policies: caches.policies.clone(),
        registry: registry.clone(),
        external_url: config.external_url.clone(),
        clock: clock.clone(),
        writer: writer.clone(),
        runtime,
        rollouts: Default::default(),
        keys: caches.keys.clone(),
        leading_since: Default::default(),
    });
    let controller = tokio::spawn(lead(
        Controllers {
            client,
            writer,
            caches,
            feeds,
            metrics,
            external_url: config.external_url.clone(),
            clock,
            policies,
            issuer_claims: (scope, registry),
            token_clients: TokenClients {
                cache: token_client_cache,
                served: token_clients,
                changed: token_client_changes,
            },
        },
        leader,
        stopped,
    ));

    tracing::info!(
        listen = %addr,
        tls_listen = ?config.tls.as_ref().map(|t| t.listen),
        admin_listen = ?config.admin_listen,
        identity = %config.identity,
        instance = %config.instance,
        "authplane operator running"
    );
    Ok(Operator {
        addr,
        stop,
        tasks: vec![
            controller,
            lease,
            watching,
            revoking,
            following_token_clients,
        ],
        serving,
    })
}

/// SigningKeys reconciled at once. At a cold start with 1,000 keys each makes a Secret,
/// an Event, a ConfigMap and a status, one after the other: the apiserver's latency,
/// not its capacity, decides how fast that goes, so several run at once; but a bounded
/// few (without a bound, 1,000 ran at once and held 1,400 connections), and key
/// generation (RSA) takes a core while it runs.
const SIGNING_KEY_RECONCILES: u16 = 32;
/// AuthPolicies reconciled at once: one status write each, at most, and little CPU.
/// API Priority and Fairness queues what exceeds the operator's share of the apiserver.
const AUTH_POLICY_RECONCILES: u16 = 64;

/// What the leader runs, and what it reads: the serving caches, and what the serving
/// loop announces.
struct Controllers {
    client: Client,
    writer: writer::LeaderWriter,
    caches: serve::Caches,
    feeds: serve::Feeds,
    metrics: Arc<Metrics>,
    external_url: String,
    clock: Arc<dyn Clock>,
    policies: Arc<auth_policies::PolicyContext>,
    /// Where issuers may be published, and the serving index's snapshot: each
    /// SigningKey's status says whether its issuer is served.
    issuer_claims: (Arc<IssuerScope>, Arc<Registry>),
    token_clients: TokenClients,
}

/// The TokenClient watch's cache and index, and what it announces: the leader reports
/// each client's readiness.
struct TokenClients {
    cache: reflector::Store<DeserializeGuard<crate::api::TokenClient>>,
    served: Arc<token_clients::Served>,
    changed: Arc<feed::Feed>,
}

/// Runs the controllers while this replica leads, and stops them the moment it does not.
async fn lead(
    controllers: Controllers,
    mut leader: watch::Receiver<bool>,
    mut stopped: watch::Receiver<bool>,
) {
    let metrics = controllers.metrics.clone();
    loop {
        tokio::select! {
            biased;
            _ = stopped.changed() => return,
            became = leader.wait_for(|l| *l) => if became.is_err() { return },
        }
        metrics.leader.set(1);
        tokio::select! {
            // A clean shutdown releases the lease too: that is no news.
            biased;
            _ = stopped.changed() => return,
            _ = leader.wait_for(|l| !*l) => if !*stopped.borrow() {
                tracing::warn!("lease lost: stopped writing");
            },
            () = term(&controllers) => {}
        }
        metrics.leader.set(0);
        metrics.forget_leader_state();
    }
}

/// One term of leadership: the SigningKey and AuthPolicy controllers, the target
/// watches, and the deletion of lapsed Revocations. Never ends by itself.
async fn term(controllers: &Controllers) {
    let Controllers {
        client,
        writer,
        caches,
        feeds,
        metrics,
        external_url,
        clock,
        policies: policy_ctx,
        issuer_claims: (scope, registry),
        token_clients,
    } = controllers;
    // Writes remembered from an earlier term may be stale: this term reads the caches.
    writer.forget_writes();
    *policy_ctx
        .leading_since
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = Some(clock.now());

    // The JWKS ConfigMaps are read only by the leader, from a watch of its term; every
    // managed one, so that one of another instance is seen and left alone.
    let (config_maps, config_maps_writer) = reflector::store::<ConfigMap>();
    let config_map_changes = reflector::reflector(
        config_maps_writer,
        watcher(
            Api::<ConfigMap>::all(client.clone()),
            watcher::Config::default().labels(&serve::managed_selector()),
        )
        .default_backoff()
        .modify(|config_map| {
            let trimmed = instance::trimmed(std::mem::take(config_map));
            *config_map = trimmed;
        }),
    )
    .filter_map(|event| future::ready(config_map_owner(event)));
    let ctx = Arc::new(
        Context::new(
            metrics.clone(),
            external_url.clone(),
            clock.clone(),
            writer.clone(),
            OwnedCaches {
                secrets: caches.secrets.clone(),
                config_maps: config_maps.clone(),
            },
        )
        .with_issuer_claims(scope.clone(), registry.clone()),
    );
    // Every SigningKey once all three caches are listed, then those the serving loop
    // announces and those whose ConfigMap changed.
    let listed = {
        let (keys, secrets, config_maps) = (
            caches.keys.clone(),
            caches.secrets.clone(),
            config_maps.clone(),
        );
        async move {
            let _ = keys.wait_until_ready().await;
            let _ = secrets.wait_until_ready().await;
            let _ = config_maps.wait_until_ready().await;
        }
    };
    let signing_keys = Controller::for_stream(stream::pending(), caches.keys.clone())
        .with_config(controller::Config::default().concurrency(SIGNING_KEY_RECONCILES))
        .reconcile_all_on(stream::once(listed))
        .reconcile_on(feeds.keys.clone().triggers())
        .reconcile_on(config_map_changes)
        .run(
            signing_keys::reconcile_guarded,
            signing_keys::error_policy_guarded,
            ctx,
        )
        .for_each(|_| async {});

    // Targets are watched while this replica leads, from a fresh list.
    policy_ctx.targets.clear();
    let (target_changes, changed_targets) = futures::channel::mpsc::unbounded();
    policy_ctx.attachments.clear();
    let watching_targets = future::join3(
        targets::watch(
            client.clone(),
            policy_ctx.targets.clone(),
            target_changes.clone(),
        ),
        gateways::watch(
            client.clone(),
            policy_ctx.targets.clone(),
            policy_ctx.attachments.topology.clone(),
            target_changes.clone(),
        ),
        policy_ctx.attachments.clone().watch(
            client.clone(),
            writer.clone(),
            caches.policies.clone(),
            target_changes,
        ),
    );
    let auth_policies = async {
        // Status written before the targets are listed would say "unknown", then be
        // corrected: wait for the lists (or their failure) first.
        policy_ctx.targets.settled(targets::FIRST_LIST_WAIT).await;
        let cached = caches.policies.clone();
        let listed = {
            let cached = cached.clone();
            async move {
                let _ = cached.wait_until_ready().await;
            }
        };
        Controller::for_stream(stream::pending(), cached.clone())
            // A key named by 10,000 policies recompiles them all at a rotation:
            // their status writes go to the apiserver a few at a time.
            .with_config(controller::Config::default().concurrency(AUTH_POLICY_RECONCILES))
            .reconcile_all_on(stream::once(listed))
            .reconcile_on(feeds.policies.clone().triggers())
            .reconcile_on(targets::triggers(changed_targets, cached))
            .run(
                auth_policies::reconcile_guarded,
                auth_policies::error_policy,
                policy_ctx.clone(),
            )
            .for_each(|_| async {})
            .await;
    };
    // TokenClient statuses: every one once the watch has published its first list, then
    // those whose readiness may have changed.
    let token_client_statuses =
        Controller::for_stream(stream::pending(), token_clients.cache.clone())
            .reconcile_all_on(stream::once(token_clients::synced(
                token_clients.served.clone(),
            )))
            .reconcile_on(token_clients.changed.clone().triggers())
            .run(
                token_clients::reconcile,
                token_clients::error_policy,
                Arc::new(token_clients::Report {
                    served: token_clients.served.clone(),
                    writer: writer.clone(),
                    clock: clock.clone(),
                }),
            )
            .for_each(|_| async {});
    // Lapsed Revocations are deleted by the leader only (this never ends by itself).
    let expiry = revocations::expire(client.clone(), writer.clone(), clock.clone());
    let forgetting = forget_seen_writes(writer, caches, &config_maps, &token_clients.cache);
    tokio::select! {
        _ = future::join3(signing_keys, auth_policies, token_client_statuses) => {}
        _ = watching_targets => {}
        _ = expiry => {}
        () = forgetting => {}
    }
}

/// How often the leader forgets those of its own writes that the caches have seen.
const FORGET_SEEN_WRITES_EVERY: Duration = Duration::from_secs(10);

/// Forgets, every [`FORGET_SEEN_WRITES_EVERY`], the leader's own writes that the caches
/// have caught up with: most objects are not reconciled again after a cold start, and
/// their writes would be held until the next term. Revocations have no cache here:
/// their statuses are forgotten after two sweeps, which at worst costs a write the
/// apiserver already holds.
async fn forget_seen_writes(
    writer: &writer::LeaderWriter,
    caches: &serve::Caches,
    config_maps: &reflector::Store<ConfigMap>,
    token_clients: &reflector::Store<DeserializeGuard<crate::api::TokenClient>>,
) {
    let mut every = tokio::time::interval(FORGET_SEEN_WRITES_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        writer.forget_seen_writes(|kind, id| match kind {
            "SigningKey" => version_in(&caches.keys, id),
            "AuthPolicy" => version_in(&caches.policies, id),
            "Secret" => version_in(&caches.secrets, id),
            "ConfigMap" => version_in(config_maps, id),
            "TokenClient" => version_in(token_clients, id),
            _ => None,
        });
    }
}

/// The `resourceVersion` of the object `id` in `store`, if it holds it.
fn version_in<K>(store: &reflector::Store<K>, id: &crate::api::ObjectKey) -> Option<String>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    let object = store.get(&ObjectRef::new(&id.name).within(&id.namespace))?;
    object.meta().resource_version.clone()
}

/// The SigningKey a JWKS ConfigMap that changed (or went away) belongs to.
fn config_map_owner(
    event: Result<watcher::Event<ConfigMap>, watcher::Error>,
) -> Option<ObjectRef<DeserializeGuard<SigningKey>>> {
    let config_map = match event {
        Ok(watcher::Event::Apply(c) | watcher::Event::Delete(c)) => c,
        _ => return None,
    };
    let key = config_map.labels().get(SIGNING_KEY_LABEL)?;
    Some(ObjectRef::new(key).within(&config_map.namespace()?))
}
