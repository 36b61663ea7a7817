use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use super::AppState;

/// Liveness: the process serves HTTP.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the first complete state has been published.
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.registry.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the first reconcile has not finished\n",
        )
    }
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}
