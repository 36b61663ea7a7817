//! `/tokenreview/{namespace}/{name}`: Kubernetes webhook token authentication
//! (`authentication.k8s.io/v1` and `v1beta1`; the apiserver still defaults to v1beta1).
//! Always verifies (the rollout applies to forward-auth only).

use std::sync::Arc;

use std::collections::BTreeMap;
use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use crate::api::ObjectKey;
use crate::policy::claims::lookup;
use crate::policy::{CompiledPolicy, Rejection};

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
    let mut outcome = authenticate(
        policy,
        &review.spec,
        state.clock.now(),
        &state.registry.revocations(),
    );
    // As for /authz: an unknown kid may be an external provider's new key.
    let unknown = [Rejection::UnknownKid, Rejection::IssuerUnavailable].map(Rejection::reason);
    if outcome
        .as_ref()
        .is_err_and(|(reason, _)| unknown.contains(reason))
        && policy.has_external_issuers()
        && policy.refetch_external().await
    {
        outcome = authenticate(
            policy,
            &review.spec,
            state.clock.now(),
            &state.registry.revocations(),
        );
    }
    let status = match outcome {
        Ok(status) => {
            state.metrics.decision(
                &id.namespace,
                &id.name,
                "allow",
                "",
                started.elapsed().as_secs_f64(),
            );
            status
        }
        Err((reason, error)) => {
            state.metrics.decision(
                &id.namespace,
                &id.name,
                "deny",
                reason,
                started.elapsed().as_secs_f64(),
            );
            json!({"authenticated": false, "error": error})
        }
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

type Failure = (&'static str, String);

fn authenticate(
    policy: &CompiledPolicy,
    spec: &ReviewSpec,
    now: jiff::Timestamp,
    revocations: &crate::revocation::RevocationSet,
) -> Result<Value, Failure> {
    let token = Some(spec.token.trim()).filter(|t| !t.is_empty());
    let (claims, checked) = policy.check(token, now, revocations);
    if let Err(rejection) = checked {
        return Err((rejection.reason(), rejection.description().to_owned()));
    }
    let claims = claims.ok_or((Rejection::Malformed.reason(), "no claims".to_owned()))?;
    let mapping = &policy.token_review;
    let username_claim = mapping.username_claim.as_deref().unwrap_or("sub");
    let username = lookup(&claims, username_claim)
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        .ok_or((
            "missing_username",
            format!("the token has no string {username_claim} claim"),
        ))?;
    let groups: Vec<String> = match mapping
        .groups_claim
        .as_deref()
        .and_then(|c| lookup(&claims, c))
    {
        Some(Value::String(group)) => vec![group.clone()],
        Some(Value::Array(groups)) => groups
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    let prefix = |p: &Option<String>, s: &str| format!("{}{s}", p.as_deref().unwrap_or(""));
    let token_audiences: Vec<&str> = match claims.get("aud") {
        Some(Value::String(aud)) => vec![aud.as_str()],
        Some(Value::Array(auds)) => auds.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    // Audience-aware: a review that names audiences needs the token to carry one of them.
    let audiences: Vec<&str> = if spec.audiences.is_empty() {
        token_audiences.clone()
    } else {
        let shared: Vec<&str> = token_audiences
            .iter()
            .copied()
            .filter(|a| spec.audiences.iter().any(|r| r == a))
            .collect();
        if shared.is_empty() {
            return Err((
                Rejection::WrongAudience.reason(),
                "the token is not for any of the requested audiences".to_owned(),
            ));
        }
        shared
    };
    let mut extra: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    if let Some(issuer) = claims.get("iss").and_then(Value::as_str) {
        extra.insert("authplane.io/issuer", vec![issuer]);
    }
    Ok(json!({
        "authenticated": true,
        "user": {
            "username": prefix(&mapping.username_prefix, username),
            "uid": claims.get("sub").and_then(Value::as_str).unwrap_or(username),
            "groups": groups.iter().map(|g| prefix(&mapping.groups_prefix, g)).collect::<Vec<_>>(),
            "extra": extra,
        },
        "audiences": audiences,
    }))
}
