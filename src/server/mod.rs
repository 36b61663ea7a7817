//! The embedded HTTP server: small handlers over the registry.

mod admission;
mod authz;
mod health;
pub mod listen;
pub mod revoke;
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
    /// `POST {issuer}/revoke`: where Revocations are written, and the rate limit. `None`:
    /// not served (404).
    pub revoke: Option<Arc<revoke::RevokeEndpoint>>,
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
        .fallback(issuer_documents)
        .with_state(Arc::new(state))
}

/// Everything under an issuer's path: `POST {issuer}/revoke`, else discovery and JWKS.
async fn issuer_documents(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    request: axum::extract::Request,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (parts, body) = request.into_parts();
    if let Some(issuer_path) = parts.uri.path().strip_suffix(revoke::REVOKE_SUFFIX) {
        if parts.method != axum::http::Method::POST {
            return (
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                [(axum::http::header::ALLOW, "POST")],
                "only POST\n",
            )
                .into_response();
        }
        let client = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .cloned();
        // Read one byte more than allowed: the handler refuses what is too large.
        let Ok(body) = axum::body::to_bytes(body, 16 * 1024 + 1).await else {
            return (
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                "a revocation request is at most 16 KiB\n",
            )
                .into_response();
        };
        return revoke::revoke(state, issuer_path, &parts.headers, client, body).await;
    }
    wellknown::serve(
        axum::extract::State(state),
        parts.method,
        parts.uri,
        parts.headers,
    )
    .await
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
    // The client address is the rate limit's key on `/revoke`.
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
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
    .serve(app.into_make_service_with_connect_info::<std::net::SocketAddr>())
    .await;
    stop.abort();
    served
}
