//! The Kubernetes driver, `authplane run`: the same core and server as dev mode, with
//! keys in Secrets. Every replica serves; the Lease holder writes.

pub mod auth_policies;
pub mod error;
pub mod lease;
pub mod revocations;
pub mod secret_store;
pub mod serve;
pub mod signing_keys;
pub mod status;
pub mod targets;
pub mod writer;

#[cfg(test)]
mod lead_tests;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ListParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::DeserializeGuard;
use kube::runtime::{Controller, controller, reflector, watcher};
use kube::{Api, Client};
use tokio::sync::watch;

use crate::api::{AuthPolicy, SigningKey};
use crate::clock::SystemClock;
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
use lease::LeaseSettings;
use signing_keys::Context;

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

    let scope = Arc::new(IssuerScope::new(
        &config.external_url,
        config.unconfined_issuer_namespaces.iter().cloned(),
    )?);
    let registry = Arc::new(Registry::default());
    let metrics = Arc::new(Metrics::default());
    let mut listeners = vec![Listener {
        socket: driver::serve::bind(config.listen)?,
        endpoints: Endpoints::Public,
        tls: None,
        client_cas: None,
    }];
    let (stop, stopped) = watch::channel(false);
    // The serving watch's SigningKey cache doubles as the admission webhook's index.
    let (keys, keys_writer) = reflector::store::<DeserializeGuard<SigningKey>>();
    // And its AuthPolicy cache tells the Revocations how long tokens are accepted.
    let (policies, policies_writer) = reflector::store::<DeserializeGuard<AuthPolicy>>();
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
                Arc::new(SystemClock),
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
    if let Some(admin) = config.admin_listen {
        listeners.push(Listener {
            socket: driver::serve::bind(admin)?,
            endpoints: Endpoints::Admin,
            tls: None,
            client_cas: None,
        });
    }
    let state = AppState {
        registry: registry.clone(),
        metrics: metrics.clone(),
        clock: Arc::new(SystemClock),
        base_url: Arc::from(config.external_url.as_str()),
        signing_keys: Arc::new(serve::KeyIndex {
            keys: keys.clone(),
            registry: registry.clone(),
            scope: scope.clone(),
        }),
        tls: slot,
        revoke: Some(Arc::new(
            server::revoke::RevokeEndpoint::new(
                Arc::new(revocations::KubeWriter {
                    client: client.clone(),
                }),
                config.revoke_rate_per_minute,
            )
            .trusting_proxy_hops(config.serving.trusted_proxy_hops),
        )),
    };
    let serving = driver::serve::start(state, listeners, config.serving.limits, &stopped)?;
    let runtime = Arc::new(PolicyRuntime::with_fetch(
        metrics.clone(),
        Arc::new(SystemClock),
        config.decision_cache_size,
        config.serving.fetch.clone(),
    ));
    // Revocations have their own watch and set: a new one rebuilds no policy.
    let revoking = tokio::spawn(revocations::run(
        client.clone(),
        registry.clone(),
        metrics.clone(),
        Arc::new(SystemClock),
        (keys.clone(), policies.clone()),
        stopped.clone(),
    ));
    // The serving index tells the status controllers which policies it compiled and
    // which SigningKeys' issuer claims moved.
    let recompiled = Arc::new(auth_policies::Recompiled::default());
    let reclaimed = Arc::new(auth_policies::Recompiled::default());
    let watching = tokio::spawn(serve::run(
        client.clone(),
        scope.clone(),
        registry.clone(),
        runtime.clone(),
        (keys_writer, policies_writer),
        serve::Announced {
            recompiled: recompiled.clone(),
            reclaimed: reclaimed.clone(),
        },
        stopped.clone(),
    ));

    let (leader_tx, leader) = watch::channel(false);
    let settings = LeaseSettings {
        name: "authplane-leader".into(),
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
        Arc::new(SystemClock),
        leader_tx,
        stopped.clone(),
    ));

    // Every write the leader makes goes through this gate.
    let writer = writer::LeaderWriter::new(
        client.clone(),
        leader.clone(),
        Some(config.identity.clone()),
    );
    let ctx = Arc::new(
        Context::new(
            client.clone(),
            metrics.clone(),
            config.external_url.clone(),
            Arc::new(SystemClock),
            writer.clone(),
        )
        .with_issuer_claims(scope, registry.clone()),
    );
    let policy_ctx = Arc::new(auth_policies::PolicyContext {
        targets: Default::default(),
        registry: registry.clone(),
        external_url: config.external_url.clone(),
        clock: Arc::new(SystemClock),
        writer: writer.clone(),
        runtime,
        rollouts: Default::default(),
    });
    let controller = tokio::spawn(lead(
        Controllers {
            client,
            writer,
            keys: ctx,
            policies: policy_ctx,
            recompiled,
            reclaimed,
        },
        metrics,
        leader,
        stopped,
    ));

    tracing::info!(
        listen = %config.listen,
        tls_listen = ?config.tls.as_ref().map(|t| t.listen),
        admin_listen = ?config.admin_listen,
        identity = %config.identity,
        "authplane operator running"
    );
    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop.send(true);
    let _ = tokio::join!(controller, lease, watching, revoking);
    Ok(serving.stopped().await?)
}

/// AuthPolicies reconciled at once.
const AUTH_POLICY_RECONCILES: u16 = 16;

/// What the leader runs.
struct Controllers {
    client: Client,
    writer: writer::LeaderWriter,
    keys: Arc<Context>,
    policies: Arc<auth_policies::PolicyContext>,
    recompiled: Arc<auth_policies::Recompiled>,
    /// SigningKeys whose issuer claim moved: their status says whether it is served.
    reclaimed: Arc<auth_policies::Recompiled>,
}

/// Runs the controllers while this replica leads, and stops them the moment it does not.
async fn lead(
    controllers: Controllers,
    metrics: Arc<Metrics>,
    mut leader: watch::Receiver<bool>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            became = leader.wait_for(|l| *l) => if became.is_err() { return },
        }
        metrics.leader.set(1);
        let Controllers {
            client,
            writer,
            keys: ctx,
            policies: policy_ctx,
            recompiled,
            reclaimed,
        } = &controllers;
        let keys = Api::<DeserializeGuard<SigningKey>>::all(client.clone());
        let secrets = Api::<Secret>::all(client.clone());
        let signing_keys = Controller::new(keys, watcher::Config::default())
            .owns(
                secrets,
                watcher::Config::default().labels(&serve::managed_selector()),
            )
            .reconcile_on(reclaimed.clone().triggers())
            .run(
                signing_keys::reconcile_guarded,
                signing_keys::error_policy_guarded,
                ctx.clone(),
            )
            .for_each(|_| async {});
        // Targets are watched while this replica leads, from a fresh list.
        policy_ctx.targets.clear();
        let (target_changes, changed_targets) = futures::channel::mpsc::unbounded();
        let watching_targets =
            targets::watch(client.clone(), policy_ctx.targets.clone(), target_changes);
        let auth_policies = async {
            // Status written before the targets are listed would say "unknown", then be
            // corrected: wait for the lists (or their failure) first.
            policy_ctx.targets.settled(targets::FIRST_LIST_WAIT).await;
            let policies = Api::<DeserializeGuard<AuthPolicy>>::all(client.clone());
            let controller = Controller::new(policies, watcher::Config::default());
            let cached = controller.store();
            controller
                // A key named by 10,000 policies recompiles them all at a rotation:
                // their status writes go to the apiserver a few at a time.
                .with_config(controller::Config::default().concurrency(AUTH_POLICY_RECONCILES))
                .reconcile_on(recompiled.clone().triggers())
                .reconcile_on(targets::triggers(changed_targets, cached))
                .run(
                    auth_policies::reconcile_guarded,
                    auth_policies::error_policy,
                    policy_ctx.clone(),
                )
                .for_each(|_| async {})
                .await;
        };
        // Lapsed Revocations are deleted by the leader only (this never ends by itself).
        let expiry = revocations::expire(client.clone(), writer.clone(), Arc::new(SystemClock));
        tokio::select! {
            _ = futures::future::join(signing_keys, auth_policies) => {}
            _ = watching_targets => {}
            _ = expiry => {}
            _ = leader.wait_for(|l| !*l) => tracing::warn!("lease lost: stopped writing"),
            _ = stopped.changed() => return,
        }
        metrics.leader.set(0);
    }
}
