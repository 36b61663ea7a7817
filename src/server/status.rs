//! `/status/{namespace}/{name}`: an AuthPolicy's status as the operator would report it,
//! for dev mode and for scripts.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::api::ObjectKey;

pub async fn policy_status(
    State(state): State<Arc<AppState>>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    let id = ObjectKey { namespace, name };
    match state.registry.load().policies.get(&id) {
        Some(policy) => {
            let mut status = policy.status(&state.base_url, state.clock.now(), |_| None);
            state.registry.reported.settle(&id, &mut status.conditions);
            Json(status).into_response()
        }
        None => (StatusCode::NOT_FOUND, format!("no AuthPolicy {id}\n")).into_response(),
    }
}
