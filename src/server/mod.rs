//! The embedded HTTP server: small handlers over the registry.

mod admission;
mod authz;
mod health;
pub mod listen;
pub mod runtime;
mod status;
mod tokenreview;
mod wellknown;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{any, get, post};
use tokio::net::TcpListener;

use crate::admission::SigningKeyIndex;
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::tls::CertSlot;

/// How long a TLS server waits for open requests at shutdown.
const TLS_GRACE: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    /// This server's own base URL, for the URLs reported in status.
    pub base_url: Arc<str>,
    /// Which SigningKeys exist, for the admission webhook's `signingKeyRef` check.
    pub signing_keys: Arc<dyn SigningKeyIndex>,
    /// The HTTPS certificate, when this process serves HTTPS: not ready without one.
    pub tls: Option<Arc<CertSlot>>,
}

/// Which endpoints a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoints {
    /// JWKS, discovery, decisions, TokenReview, status, health and metrics.
    Public,
    /// The same plus `POST /validate`, the admission webhook.
    WithAdmission,
}

pub fn router(state: AppState, endpoints: Endpoints) -> Router {
    let router = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/authz/{namespace}/{name}", any(authz::authz))
        // Envoy's HTTP ext_authz (Envoy Gateway, Istio) appends the original path.
        .route(
            "/authz/{namespace}/{name}/{*original_path}",
            any(authz::authz_with_path),
        )
        .route("/tokenreview/{namespace}/{name}", post(tokenreview::review))
        .route("/status/{namespace}/{name}", get(status::policy_status));
    let router = match endpoints {
        Endpoints::Public => router,
        Endpoints::WithAdmission => router.route("/validate", post(admission::validate)),
    };
    // Issuer paths are data, not code: discovery and JWKS are found by suffix.
    // One shared state: axum clones it per request, and one Arc is cheaper than six.
    router
        .fallback(wellknown::serve)
        .with_state(Arc::new(state))
}

/// Serves plain HTTP until `shutdown` resolves, then lets open requests finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // Answers are one small write each: send them at once, never behind Nagle's timer.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Serves HTTPS until `shutdown` resolves, then lets open requests finish (for at most
/// ten seconds). The certificate is read from `tls` at every handshake.
pub async fn serve_tls(
    listener: TcpListener,
    app: Router,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    let stop = tokio::spawn(async move {
        shutdown.await;
        stopper.graceful_shutdown(Some(TLS_GRACE));
    });
    let served = axum_server::from_tcp_rustls(
        listener.into_std()?,
        axum_server::tls_rustls::RustlsConfig::from_config(tls),
    )?
    .handle(handle)
    .serve(app.into_make_service())
    .await;
    stop.abort();
    served
}
