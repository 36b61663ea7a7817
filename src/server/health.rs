use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use super::AppState;

/// Liveness: the process serves HTTP.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the first complete state has been published, and the HTTPS listener (if
/// any) has a certificate: the webhook Service must not send reviews to a replica that
/// cannot answer them.
pub async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    if !state.registry.is_ready() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the first reconcile has not finished\n",
        )
    } else if state.tls.as_ref().is_some_and(|slot| !slot.is_loaded()) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no TLS certificate yet\n",
        )
    } else {
        (StatusCode::OK, "ready\n")
    }
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}
