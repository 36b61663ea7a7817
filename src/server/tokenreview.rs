//! `/tokenreview/{namespace}/{name}`: Kubernetes webhook token authentication
//! (`authentication.k8s.io/v1` and `v1beta1`; the apiserver still defaults to v1beta1).
//! Always verifies (the rollout applies to forward-auth only); the mapping to a user is
//! the core's [`token_review`].

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use crate::api::ObjectKey;
use crate::policy::Rejection;
use crate::token_review::{self, Refusal};

const VERSIONS: [&str; 2] = ["authentication.k8s.io/v1", "authentication.k8s.io/v1beta1"];
/// A TokenReview is a token and a few audiences; anything bigger is not one.
pub(super) const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review {
    api_version: String,
    kind: String,
    #[serde(default)]
    spec: ReviewSpec,
}

#[derive(Deserialize, Default)]
struct ReviewSpec {
    #[serde(default)]
    token: String,
    #[serde(default)]
    audiences: Vec<String>,
}

pub async fn review(
    State(state): State<Arc<AppState>>,
    Path((namespace, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let id = ObjectKey { namespace, name };
    let review: Review = match parse(&body) {
        Ok(review) => review,
        Err(message) => return (StatusCode::BAD_REQUEST, format!("{message}\n")).into_response(),
    };
    let snapshot = state.registry.load();
    let Some(policy) = snapshot.policies.get(&id) else {
        return (StatusCode::NOT_FOUND, format!("no AuthPolicy {id}\n")).into_response();
    };
    let spec = &review.spec;
    let authenticate = || {
        token_review::review(
            policy,
            &spec.token,
            &spec.audiences,
            state.clock.now(),
            &state.registry.revocations(),
        )
    };
    let mut outcome = authenticate();
    // As for /authz: an unknown kid may be an external provider's new key.
    let unknown = [Rejection::UnknownKid, Rejection::IssuerUnavailable];
    if matches!(&outcome, Err(Refusal::Token(r)) if unknown.contains(r))
        && policy.has_external_issuers()
        && policy.refetch_external().await
    {
        outcome = authenticate();
    }
    let (decision, reason) = match &outcome {
        Ok(_) => ("allow", ""),
        Err(refusal) => ("deny", refusal.reason()),
    };
    state.metrics.decision(
        &id.namespace,
        &id.name,
        decision,
        reason,
        started.elapsed().as_secs_f64(),
    );
    let status = match outcome {
        Ok(authenticated) => json!({
            "authenticated": true,
            "user": authenticated.user,
            "audiences": authenticated.audiences,
        }),
        Err(refusal) => json!({"authenticated": false, "error": refusal.to_string()}),
    };
    Json(json!({"apiVersion": review.api_version, "kind": "TokenReview", "status": status}))
        .into_response()
}

/// Why a request body is not a TokenReview this endpoint answers (a 400).
#[derive(Debug, thiserror::Error)]
enum ParseError {
    #[error("a TokenReview is at most {MAX_BODY_BYTES} bytes")]
    TooLarge,
    #[error("not a TokenReview: {0}")]
    Json(#[from] serde_json::Error),
    #[error("expected kind TokenReview with apiVersion {}, got {kind} {api_version}", VERSIONS.join(" or "))]
    WrongType { kind: String, api_version: String },
}

fn parse(body: &[u8]) -> Result<Review, ParseError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ParseError::TooLarge);
    }
    let review: Review = serde_json::from_slice(body)?;
    if review.kind != "TokenReview" || !VERSIONS.contains(&review.api_version.as_str()) {
        return Err(ParseError::WrongType {
            kind: review.kind,
            api_version: review.api_version,
        });
    }
    Ok(review)
}
