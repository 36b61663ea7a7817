//! `POST {issuer}/revoke`: token revocation for token holders, in the manner of RFC 7009,
//! on authplane's own issuers (advertised as `revocation_endpoint` in discovery).
//!
//! Possession of a valid token is the authority to revoke it: its `jti`, or with
//! `token_type_hint=session` its `sid`. The answer is 200 whether or not the token was
//! valid or known (RFC 7009 §2.2), so it says nothing about tokens. The receiving
//! replica writes the Revocation object (a user request, not a leader's write); its name
//! is derived from what is revoked, so a repeated logout is the same object. Rate-limited
//! per client address.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use aws_lc_rs::digest::{SHA256, digest};
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ObjectMeta;
use serde_json::json;

use super::AppState;
use crate::api::{ObjectKey, Revocation, RevocationSpec, RevokedKeyRef};
use crate::policy::verify::Verifier;
use crate::registry::PublishedIssuer;

pub const REVOKE_SUFFIX: &str = "/revoke";
/// A revocation request is a token and a hint.
pub(super) const MAX_BODY_BYTES: usize = 16 * 1024;
/// The tolerated clock skew when verifying the token to revoke; also how long after its
/// `exp` its revocation is kept (policies accept at most 5 minutes of leeway).
const LEEWAY_SECS: i64 = 60;
const MAX_POLICY_LEEWAY_SECS: i64 = 300;
/// Default requests per minute per client address.
pub const DEFAULT_REVOKE_RATE: u32 = 10;
/// Client addresses remembered by the limiter; beyond it, full buckets are forgotten.
const MAX_CLIENTS: usize = 10_000;

/// Why a Revocation could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{0}")]
    Failed(String),
}

pub type WriteFuture = Pin<Box<dyn Future<Output = Result<(), WriteError>> + Send>>;

/// Where `/revoke` writes Revocations: the Kubernetes API, or the manifests folder in
/// dev mode. Creating one that already exists (the same token again) is a success.
pub trait RevocationWriter: Send + Sync {
    fn create(&self, revocation: Revocation) -> WriteFuture;
}

/// The `/revoke` endpoint's writer and rate limit.
pub struct RevokeEndpoint {
    pub writer: Arc<dyn RevocationWriter>,
    pub limiter: RateLimiter,
}

impl RevokeEndpoint {
    pub fn new(writer: Arc<dyn RevocationWriter>, per_minute: u32) -> Self {
        Self {
            writer,
            limiter: RateLimiter::new(per_minute),
        }
    }
}

/// A token bucket per client address: `per_minute` requests, refilled evenly.
pub struct RateLimiter {
    per_minute: u32,
    buckets: Mutex<HashMap<IpAddr, (f64, i64)>>,
}

impl RateLimiter {
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute: per_minute.max(1),
            buckets: Mutex::default(),
        }
    }

    /// Takes one request from `client`'s budget at `now_ms`; `Err(seconds)` to wait.
    pub fn take(&self, client: IpAddr, now_ms: i64) -> Result<(), u64> {
        let capacity = f64::from(self.per_minute);
        let per_ms = capacity / 60_000.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_CLIENTS && !buckets.contains_key(&client) {
            buckets.retain(|_, (tokens, at)| {
                *tokens + (now_ms - *at).max(0) as f64 * per_ms < capacity
            });
        }
        let (tokens, at) = buckets.entry(client).or_insert((capacity, now_ms));
        *tokens = (*tokens + (now_ms - *at).max(0) as f64 * per_ms).min(capacity);
        *at = now_ms;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            let wait_ms = (1.0 - *tokens) / per_ms;
            Err((wait_ms / 1000.0).ceil().max(1.0) as u64)
        }
    }
}

/// `POST {issuer path}/revoke`.
pub async fn revoke(
    state: Arc<AppState>,
    issuer_path: &str,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    body: Bytes,
) -> Response {
    let Some(endpoint) = state.revoke.clone() else {
        return (StatusCode::NOT_FOUND, "revocation is not served here\n").into_response();
    };
    let snapshot = state.registry.load();
    let Some(issuer) = snapshot
        .issuers
        .get(issuer_path.trim_end_matches('/'))
        .cloned()
    else {
        return (
            StatusCode::NOT_FOUND,
            format!("no issuer is served at {issuer_path:?}\n"),
        )
            .into_response();
    };
    drop(snapshot);
    let now = state.clock.now();
    if let Some(address) = peer
        && let Err(wait) = endpoint.limiter.take(address.ip(), now.as_millisecond())
    {
        state.metrics.revoke_request("rate_limited");
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, HeaderValue::from(wait))],
            oauth_error(
                "slow_down",
                "too many revocation requests from this address",
            ),
        )
            .into_response();
    }
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';').next().is_some_and(|t| {
                t.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
        });
    if !is_form || body.len() > MAX_BODY_BYTES {
        state.metrics.revoke_request("invalid_request");
        return (
            StatusCode::BAD_REQUEST,
            oauth_error(
                "invalid_request",
                "send token=<jwt> as application/x-www-form-urlencoded",
            ),
        )
            .into_response();
    }
    let mut token = None;
    let mut hint = None;
    for (name, value) in url::form_urlencoded::parse(&body) {
        match &*name {
            "token" => token = Some(value.into_owned()),
            "token_type_hint" => hint = Some(value.into_owned()),
            _ => {}
        }
    }
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        state.metrics.revoke_request("invalid_request");
        return (
            StatusCode::BAD_REQUEST,
            oauth_error("invalid_request", "the token parameter is missing"),
        )
            .into_response();
    };
    let session = hint.as_deref() == Some("session");
    let Some(revocation) = revocation_for(&issuer, &token, session, now) else {
        // Unknown, invalid or expired: nothing to revoke, and nothing said about it.
        state.metrics.revoke_request("ignored");
        return ok();
    };
    match endpoint.writer.create(revocation).await {
        Ok(()) => {
            state.metrics.revoke_request("revoked");
            ok()
        }
        Err(e) => {
            tracing::error!("revocation for issuer {}: {e}", issuer.issuer);
            state.metrics.revoke_request("error");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, HeaderValue::from_static("1"))],
                oauth_error(
                    "temporarily_unavailable",
                    "the revocation could not be stored; retry",
                ),
            )
                .into_response()
        }
    }
}

fn ok() -> Response {
    (
        StatusCode::OK,
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
    )
        .into_response()
}

fn oauth_error(error: &str, description: &str) -> Response {
    let mut response =
        axum::Json(json!({"error": error, "error_description": description})).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The Revocation a valid token of `issuer` asks for: its `jti`, or its `sid` for a
/// session. `None` when the token does not verify against the issuer's published keys,
/// or carries no such claim.
pub fn revocation_for(
    issuer: &PublishedIssuer,
    token: &str,
    session: bool,
    now: Timestamp,
) -> Option<Revocation> {
    let name: Arc<str> = Arc::from(issuer.issuer.as_str());
    let keys = crate::external::fetch::parse_jwks(&issuer.jwks, &name, &issuer.jwks_uri).ok()?;
    let mut verifier = Verifier::new(Vec::new(), LEEWAY_SECS);
    for (kid, key) in keys {
        verifier.add_key(&kid, key);
    }
    let verified = verifier.verify(token, now).ok()?;
    let claim = |name: &str| {
        verified
            .claims
            .get(name)
            .and_then(serde_json::Value::as_str)
            .filter(|v| !v.is_empty() && v.len() <= 256)
            .map(str::to_owned)
    };
    let mut spec = RevocationSpec {
        signing_key_ref: Some(RevokedKeyRef {
            name: issuer.name.clone(),
            namespace: Some(issuer.namespace.clone()),
        }),
        issuer: None,
        token_id: None,
        subject: None,
        issued_before: None,
        session_id: None,
        expires_at: None,
        reason: Some("logout".to_owned()),
    };
    let what = if session {
        spec.session_id = Some(claim("sid")?);
        format!("sid\0{}", spec.session_id.as_deref().unwrap_or(""))
    } else {
        spec.token_id = Some(claim("jti")?);
        // One token: its revocation is needed until it expires (plus any leeway a
        // policy may grant).
        spec.expires_at =
            Timestamp::from_second(verified.expires.saturating_add(MAX_POLICY_LEEWAY_SECS))
                .ok()
                .map(Time);
        format!("jti\0{}", spec.token_id.as_deref().unwrap_or(""))
    };
    let hash = digest(&SHA256, format!("{}\0{what}", issuer.issuer).as_bytes());
    let suffix: String = hash.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let kind = if session { "logout-session" } else { "logout" };
    Some(Revocation {
        metadata: ObjectMeta {
            name: Some(format!("{kind}-{suffix}")),
            namespace: Some(issuer.namespace.clone()),
            creation_timestamp: Some(Time(Timestamp::from_second(now.as_second()).unwrap_or(now))),
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_owned(),
                    "authplane".to_owned(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        spec,
        status: None,
    })
}

/// The id of a Revocation object.
pub fn id_of(revocation: &Revocation) -> ObjectKey {
    ObjectKey::of(&revocation.metadata)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_refills_evenly_and_says_how_long_to_wait() {
        let limiter = RateLimiter::new(10);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..10 {
            assert!(limiter.take(a, 0).is_ok());
        }
        assert_eq!(limiter.take(a, 0), Err(6));
        assert!(
            limiter.take(b, 0).is_ok(),
            "another address has its own budget"
        );
        // One request comes back every 6 seconds.
        assert!(limiter.take(a, 6_000).is_ok());
        assert!(limiter.take(a, 6_000).is_err());
    }
}
