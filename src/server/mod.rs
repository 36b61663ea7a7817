//! The embedded HTTP server: small handlers over the registry.

mod authz;
mod health;
mod status;
mod tokenreview;
mod wellknown;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::routing::{any, get, post};
use tokio::net::TcpListener;

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::registry::Registry;

#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    /// This server's own base URL, for the URLs reported in status.
    pub base_url: Arc<str>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
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
        .route("/status/{namespace}/{name}", get(status::policy_status))
        // Issuer paths are data, not code: discovery and JWKS are found by suffix.
        .fallback(wellknown::serve)
        .with_state(state)
}

/// Serves until `shutdown` resolves, then lets open requests finish.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
