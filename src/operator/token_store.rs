//! The token service's store on a cluster, and the one rule that keeps it sound: an
//! embedded store (a redb file, `--token-store PATH`) is one replica's own. Two replicas
//! with their own files would each know only the refresh-token families that logged in
//! through them: a refresh routed to the other replica is `invalid_grant`, and a family
//! could rotate on both, which is exactly the split rotation is there to prevent. So an
//! operator given an embedded store refuses to start while its Deployment asks for more
//! than one replica, and says why (a shared store comes with issue 24).
//!
//! Refusing the start, not only the endpoint: a misconfigured rollout then never becomes
//! ready and the Deployment keeps the old replicas serving (`maxUnavailable: 0`), and the
//! reason is the first line of the pod's log and its `kubectl describe`.
//!
//! A Redis (`--token-store redis://…`) is shared by every replica, so the check does not
//! apply to it: its keys are this installation's (`<namespace>/<instance>`), apart from
//! any other installation's in the same Redis.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::ListParams;
use kube::{Api, Client};
use tokio::sync::watch;

use crate::clock::Clock;
use crate::server::revoke::RevocationWriter;
use crate::server::shared_limits::SharedLimits;
use crate::server::token::TokenEndpoint;
use crate::tokens::location::{CaCertificates, Password, StoreLocation};
use crate::tokens::redis::RedisSettings;
use crate::tokens::{FamilyStore, Metered, serving};

/// Where the token service keeps its state on a cluster.
#[derive(Clone, Debug)]
pub struct TokenStoreConfig {
    /// The embedded store's file (on a volume), or a Redis every replica shares.
    pub location: StoreLocation,
    /// The Redis password (replacing the URL's), from `--token-store-password-file`.
    pub password: Option<Password>,
    /// The CA of a `rediss://` store, from `--token-store-ca-file`.
    pub ca: Option<CaCertificates>,
    /// The Deployment this operator runs as (`--deployment`, which the chart sets), in
    /// the operator's namespace: its replica count is checked at start. Unset: not
    /// checked (a warning says so).
    pub deployment: Option<String>,
    /// The budgets of `POST {issuer}/token` per minute: failed requests per client
    /// address, rotations per session (`--token-rate`, as in dev mode).
    pub rate_per_minute: u32,
    /// What the embedded store holds in memory (`--session-memory-mib`,
    /// `--session-memory-per-namespace-mib`, `--max-sessions-per-client`; Redis holds
    /// sessions outside the process).
    pub session_limits: crate::tokens::embedded::SessionLimits,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenStoreError {
    #[error(
        "--token-store {path}: this embedded store is this replica's own file, but Deployment {namespace}/{deployment} asks for {replicas} replicas; refresh-token families would be split across replicas and rotation would be unsound. Run one replica (replicaCount: 1) while the token service uses an embedded store"
    )]
    SeveralReplicas {
        path: String,
        namespace: String,
        deployment: String,
        replicas: i32,
    },
    #[error(
        "--token-store: reading Deployment {namespace}/{deployment} to check its replicas: {source}"
    )]
    Read {
        namespace: String,
        deployment: String,
        source: kube::Error,
    },
}

/// Checks that the Deployment `config.deployment` in `namespace` runs one replica while
/// the store is embedded (a Redis is shared: any replica count is sound). A Deployment
/// that is not found is not checked (the operator may run otherwise, as in
/// development); one that cannot be read fails the start.
pub async fn check_replicas(
    client: &Client,
    namespace: &str,
    config: &TokenStoreConfig,
) -> Result<(), TokenStoreError> {
    let StoreLocation::File(path) = &config.location else {
        return Ok(());
    };
    let Some(deployment) = &config.deployment else {
        tracing::warn!(
            path = %path.display(),
            "--token-store without --deployment: the replica count is not checked; run one replica"
        );
        return Ok(());
    };
    // `list` by name: the operator may list Deployments (AuthPolicy targets), not get
    // one by name.
    let found = Api::<Deployment>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().fields(&format!("metadata.name={deployment}")))
        .await
        .map_err(|source| TokenStoreError::Read {
            namespace: namespace.to_owned(),
            deployment: deployment.clone(),
            source,
        })?;
    let replicas = found.items.first().map(replicas_of);
    match replicas {
        None => {
            tracing::warn!(
                deployment = %format!("{namespace}/{deployment}"),
                "--deployment not found: the token store's replica count is not checked"
            );
            Ok(())
        }
        Some(replicas) if replicas > 1 => Err(TokenStoreError::SeveralReplicas {
            path: path.display().to_string(),
            namespace: namespace.to_owned(),
            deployment: deployment.clone(),
            replicas,
        }),
        Some(_) => Ok(()),
    }
}

/// `spec.replicas` (Kubernetes defaults it to 1).
fn replicas_of(deployment: &Deployment) -> i32 {
    deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.replicas)
        .unwrap_or(1)
}

/// The token endpoint on a cluster: the embedded store or the Redis of `config`, client
/// assertions reviewed by the apiserver (`reviewer`), no client secrets, and sessions
/// revoked for reuse written as Revocations (`writer`). A store that cannot be opened is
/// logged and answers 503: everything else serves on. `installation` sets this
/// installation's keys apart in a shared Redis.
#[allow(clippy::too_many_arguments)]
pub async fn endpoint(
    config: &TokenStoreConfig,
    installation: String,
    reviewer: Arc<dyn crate::tokens::client_auth::AssertionReviewer>,
    writer: Arc<dyn RevocationWriter>,
    trusted_proxies: crate::server::client_address::TrustedProxies,
    clock: Arc<dyn Clock>,
    registry: Arc<crate::registry::Registry>,
    metrics: &Arc<crate::metrics::Metrics>,
    shutdown: watch::Receiver<bool>,
) -> Arc<TokenEndpoint> {
    let mut shared = None;
    let opened = match &config.location {
        StoreLocation::File(path) => {
            serving::open_embedded(path.clone(), config.session_limits, metrics.tokens.clone())
                .await
        }
        StoreLocation::Redis(url) => {
            let redis = RedisSettings {
                url: url.clone(),
                password: config.password.as_ref().map(|p| p.expose().to_owned()),
                ca: config.ca.as_ref().map(|ca| ca.pem().to_vec()),
                installation,
                timeout: serving::STORE_DEADLINE,
            };
            // Every replica counts the limits together; a URL that cannot be used is
            // the store's error to report (it answers 503), and the limits are local.
            shared = SharedLimits::new(&redis, metrics.tokens.clone())
                .ok()
                .map(Arc::new);
            serving::Opened {
                families: Arc::new(Metered::new(
                    crate::tokens::redis::shared(&redis),
                    metrics.tokens.clone(),
                )),
                sessions: crate::tokens::redis_sessions::shared_log(&redis),
            }
        }
    };
    let store: Arc<dyn FamilyStore> = opened.families;
    serving::keep_purged(store.clone(), clock.clone(), shutdown.clone()).await;
    if let Some(log) = &opened.sessions {
        crate::tokens::session_log::follow(log.clone(), registry, metrics.clone(), clock, shutdown)
            .await;
    }
    let mut endpoint = TokenEndpoint::new(store, writer, config.rate_per_minute);
    endpoint.sessions = opened.sessions;
    endpoint.reviewer = Some(reviewer);
    endpoint.trusted_proxies = trusted_proxies;
    if let Some(shared) = shared {
        endpoint.share_limits(shared);
    }
    Arc::new(endpoint)
}
