use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use super::AppState;
use crate::registry::SourceState;

/// Liveness: the process serves HTTP.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: a first state has been published, every input has listed or failed, and
/// the HTTPS listener (if any) has a certificate: the webhook Service must not send
/// reviews to a replica that cannot answer them. A failing input (an AuthPolicy watch
/// whose CRD is missing, say) does not take the replica out of service: what it knows
/// keeps serving, and the body names what is degraded.
pub async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let unsynced: Vec<String> = state
        .registry
        .unsynced_sources()
        .into_iter()
        .map(|(name, source)| match source {
            SourceState::Syncing => format!("{name}: not listed yet"),
            SourceState::Synced => format!("{name}: synced"),
            SourceState::Failing(why) => format!("{name}: failing: {why}"),
        })
        .collect();
    let details = if unsynced.is_empty() {
        String::new()
    } else {
        format!(" ({})", unsynced.join("; "))
    };
    let listing = state
        .registry
        .unsynced_sources()
        .iter()
        .any(|(_, source)| *source == SourceState::Syncing);
    // Still listing for the first time (10,000 AuthPolicies take a while): a replica that
    // took traffic now would answer 503 for policies it is about to know.
    if !state.registry.is_ready() || listing {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: still listing{details}\n"),
        )
    } else if state.tls.as_ref().is_some_and(|slot| !slot.is_loaded()) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no TLS certificate yet\n".to_owned(),
        )
    } else if unsynced.is_empty() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (StatusCode::OK, format!("ready, degraded{details}\n"))
    }
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    // The inputs' states live in the registry (for /readyz); copied when scraped, so the
    // gauges are never older than the scrape.
    state
        .metrics
        .observe_inputs(&state.registry.sources_synced());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}
