//! `/authz/{namespace}/{name}`: the forward-auth contract of ingress-nginx `auth-url`,
//! Traefik `forwardAuth` and Envoy `ext_authz` (HTTP). Any method, empty body; the
//! decision is in the status code and headers.

use std::time::Instant;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::api::ObjectKey;
use crate::policy::{CompiledPolicy, Rejection, Verdict};

pub const REASON_HEADER: HeaderName = HeaderName::from_static("x-authplane-reason");
pub const AUDIT_HEADER: HeaderName = HeaderName::from_static("x-authplane-audit");

/// Where a decision is asked for: `/authz/{namespace}/{name}`, optionally followed by
/// `/{original path}` (Envoy's HTTP ext_authz appends the request's path), matched on the
/// path as sent and then percent-decoded, as axum's path parameters (matchit) were:
/// a segment followed by a slash may be empty, the last one may not, and the original
/// path is any bytes, slashes included, or none: Envoy asks about a request for the
/// site's root (`/`, `/?q`) at `/authz/{namespace}/{name}/`, which the router's
/// `{*original_path}` did not match (a 404: every such request refused); `None` for any
/// other path. An escape that
/// does not decode to UTF-8, in any of the three, is the answer axum gave it (`Err`: 400,
/// naming the part).
///
/// Matched by hand rather than by the router: axum's parameters cost a cached decision
/// about 2,400 instructions (allocated keys and values, then a deserializer), more than
/// the rest of its routing, for two strings that are usually borrowed from the path.
pub fn decision_path(path: &str) -> Option<Result<ObjectKey, NotUtf8>> {
    let rest = path.strip_prefix("/authz/")?;
    let (namespace, rest) = rest.split_once('/')?;
    let (name, original_path) = match rest.split_once('/') {
        Some((name, original_path)) => (name, Some(original_path)),
        None => (rest, None),
    };
    if original_path.is_none() && name.is_empty() {
        return None;
    }
    Some(decoded_policy(namespace, name, original_path))
}

/// The policy a [`decision_path`] names, its parts decoded in the order axum decoded them.
fn decoded_policy(
    namespace: &str,
    name: &str,
    original_path: Option<&str>,
) -> Result<ObjectKey, NotUtf8> {
    let namespace = decoded("namespace", namespace)?;
    let name = decoded("name", name)?;
    if let Some(original_path) = original_path {
        decoded("original_path", original_path)?;
    }
    Ok(ObjectKey {
        namespace: namespace.into_owned(),
        name: name.into_owned(),
    })
}

/// A part of a [`decision_path`], percent-decoded (borrowed when it has no escape), unless
/// that is not UTF-8.
fn decoded<'p>(part: &'static str, raw: &'p str) -> Result<std::borrow::Cow<'p, str>, NotUtf8> {
    if !raw.contains('%') {
        // Already text: nothing to decode or check again.
        return Ok(std::borrow::Cow::Borrowed(raw));
    }
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| NotUtf8 { part })
}

/// A part of a [`decision_path`] whose escapes are not UTF-8: axum's 400, naming it.
pub struct NotUtf8 {
    part: &'static str,
}

impl IntoResponse for NotUtf8 {
    fn into_response(self) -> Response {
        let message = format!("Invalid URL: Invalid UTF-8 in `{}`", self.part);
        (StatusCode::BAD_REQUEST, message).into_response()
    }
}

/// The answer to a request for a [`decision_path`] with these headers, whether the router
/// or the connection itself ([`super::listen`], which skips the router for decisions)
/// found the path.
pub async fn answer(
    state: &AppState,
    target: Result<ObjectKey, NotUtf8>,
    headers: &HeaderMap,
) -> Response {
    match target {
        Ok(id) => authz(state, &id, headers).await,
        Err(refusal) => refusal.into_response(),
    }
}

/// What axum's router does to a `HEAD` answer, done to one that skipped it: a
/// `Content-Length` from the body's exact size, then no body. (hyper adds the same
/// `Content-Length` to any other answer by itself, but not to `HEAD`'s.)
pub fn as_routed(mut response: Response, method: &Method) -> Response {
    use axum::body::HttpBody as _;
    if method != Method::HEAD {
        return response;
    }
    if !response.headers().contains_key(header::CONTENT_LENGTH)
        && let Some(size) = response.body().size_hint().exact()
    {
        let length = HeaderValue::from(size);
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, length);
    }
    *response.body_mut() = axum::body::Body::empty();
    response
}

/// The answer to a [`decision_path`]'s request with these headers.
async fn authz(state: &AppState, id: &ObjectKey, headers: &HeaderMap) -> Response {
    match decide(state, id, headers).await {
        Outcome::Pass { headers, audit, .. } => {
            let mut response = StatusCode::OK.into_response();
            let answer = response.headers_mut();
            // Answered on every pass, empty when in force, so that a gateway copying it
            // to the workload overwrites a client's own copy (Envoy passes a header the
            // answer lacks through unchanged).
            answer.insert(
                AUDIT_HEADER,
                audit.unwrap_or_else(|| HeaderValue::from_static("")),
            );
            for (name, value) in headers {
                answer.insert(name, value);
            }
            response
        }
        Outcome::Deny {
            status,
            challenge,
            reason,
        } => {
            let mut response = status.into_response();
            let answer = response.headers_mut();
            if let Some(challenge) = challenge {
                answer.insert(header::WWW_AUTHENTICATE, challenge);
            }
            answer.insert(REASON_HEADER, HeaderValue::from_static(reason));
            response
        }
        Outcome::NoPolicy {
            status,
            reason,
            message,
        } => (
            status,
            [(REASON_HEADER, HeaderValue::from_static(reason))],
            message,
        )
            .into_response(),
    }
}

/// What a gateway is told about one request: the one decision behind `/authz` and the
/// gRPC `Check` ([`super::grpc`]), each translating it to its own protocol.
pub enum Outcome {
    /// Let the request through.
    Pass {
        /// The identity (every `forwardClaims` header: verified, or empty when there is
        /// none), then a legacy pass's `Deprecation` and `Sunset`. The core decides
        /// them, so no path here can forward a claim of its own.
        headers: Vec<(HeaderName, HeaderValue)>,
        /// How many of `headers`, from the front, are the identity.
        identity: usize,
        /// `X-Authplane-Audit` of a request outside enforcement that would have been
        /// refused.
        audit: Option<HeaderValue>,
    },
    /// Refused: 401, or 403 for a missing required claim, with the policy's RFC 6750
    /// challenge (rendered when the policy was compiled) and the reason.
    Deny {
        status: StatusCode,
        challenge: Option<HeaderValue>,
        reason: &'static str,
    },
    /// No such policy is served (404), or the policies are not known yet (503): fail
    /// closed.
    NoPolicy {
        status: StatusCode,
        reason: &'static str,
        message: String,
    },
}

/// The decision of the policy `id` for a request with these headers, counted in the
/// metrics.
pub async fn decide(state: &AppState, id: &ObjectKey, headers: &HeaderMap) -> Outcome {
    let started = Instant::now();
    let snapshot = state.registry.load();
    let Some(policy) = snapshot.policies.get(id) else {
        if !snapshot.policies_known {
            // The policy may well exist: fail closed, and say why.
            return Outcome::NoPolicy {
                status: StatusCode::SERVICE_UNAVAILABLE,
                reason: "policies_unavailable",
                message: format!(
                    "AuthPolicy {id} is not known yet: the AuthPolicies have not been listed (see /readyz)\n"
                ),
            };
        }
        return Outcome::NoPolicy {
            status: StatusCode::NOT_FOUND,
            reason: "unknown_policy",
            message: format!("no AuthPolicy {id}\n"),
        };
    };
    let mut decision = policy.decide(headers, state.clock.now(), &state.registry.revocations());
    // An unknown kid may be an external provider's new key: refetch (rate-limited per
    // issuer). A refusal waits for it and decides again; a request that passes anyway
    // (audited) does not wait.
    if matches!(
        decision.verdict.rejection(),
        Some(Rejection::UnknownKid | Rejection::IssuerUnavailable)
    ) && policy.has_external_issuers()
    {
        if matches!(decision.verdict, Verdict::Deny(_)) {
            // Boxed: a large future, rarely awaited, that every decision's future would
            // otherwise carry (and move: the connection moves it once per request).
            if Box::pin(policy.refetch_external()).await {
                decision = policy.decide(headers, state.clock.now(), &state.registry.revocations());
            }
        } else {
            let policy = policy.clone();
            tokio::spawn(async move { policy.refetch_external().await });
        }
    }

    let outcome = match &decision.verdict {
        Verdict::Deny(rejection) => denied(*rejection, policy),
        verdict => Outcome::Pass {
            audit: verdict.rejection().and_then(|rejection| {
                let audit = match verdict {
                    Verdict::LegacySession(_) => {
                        format!("legacy-session; reason={}", rejection.reason())
                    }
                    _ => format!("would-deny; reason={}", rejection.reason()),
                };
                HeaderValue::from_str(&audit).ok()
            }),
            headers: std::mem::take(&mut decision.headers),
            identity: policy.identity_header_count(),
        },
    };
    let reason = decision.verdict.rejection().map_or("", Rejection::reason);
    // The original request is looked up only for a log line that is usually off.
    if !reason.is_empty() && tracing::enabled!(tracing::Level::DEBUG) {
        let original = OriginalRequest::from_headers(headers);
        tracing::debug!(
            policy = %id,
            decision = decision.verdict.label(),
            reason,
            method = original.method,
            url = original.url.as_deref().unwrap_or(""),
            "authz"
        );
    }
    match &policy.stats {
        Some(stats) => stats.record(&decision, started.elapsed().as_secs_f64()),
        None => state.metrics.decision(
            &id.namespace,
            &id.name,
            decision.verdict.label(),
            reason,
            started.elapsed().as_secs_f64(),
        ),
    }
    outcome
}

fn denied(rejection: Rejection, policy: &CompiledPolicy) -> Outcome {
    Outcome::Deny {
        status: match rejection {
            Rejection::InsufficientScope => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        },
        challenge: policy.challenges.get(rejection).cloned(),
        reason: rejection.reason(),
    }
}

/// The request the gateway is asking about, in either dialect: ingress-nginx
/// (`X-Original-Method`, `X-Original-URL`) or Traefik and Envoy (`X-Forwarded-Method`,
/// `-Proto`, `-Host`, `-Uri`). Used for logs.
pub struct OriginalRequest<'h> {
    pub method: &'h str,
    pub url: Option<String>,
}

impl<'h> OriginalRequest<'h> {
    pub fn from_headers(headers: &'h HeaderMap) -> Self {
        let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let method = get("x-original-method")
            .or_else(|| get("x-forwarded-method"))
            .unwrap_or("");
        let url = get("x-original-url").map(str::to_owned).or_else(|| {
            let uri = get("x-forwarded-uri")?;
            match (get("x-forwarded-proto"), get("x-forwarded-host")) {
                (Some(proto), Some(host)) => Some(format!("{proto}://{host}{uri}")),
                _ => Some(uri.to_owned()),
            }
        });
        Self { method, url }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_dialects_name_the_original_request() {
        let mut nginx = HeaderMap::new();
        nginx.insert("x-original-method", HeaderValue::from_static("POST"));
        nginx.insert(
            "x-original-url",
            HeaderValue::from_static("https://shop.example/pay?x=1"),
        );
        let original = OriginalRequest::from_headers(&nginx);
        assert_eq!(
            (original.method, original.url.as_deref()),
            ("POST", Some("https://shop.example/pay?x=1"))
        );

        let mut traefik = HeaderMap::new();
        traefik.insert("x-forwarded-method", HeaderValue::from_static("GET"));
        traefik.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        traefik.insert("x-forwarded-host", HeaderValue::from_static("shop.example"));
        traefik.insert("x-forwarded-uri", HeaderValue::from_static("/cart"));
        let original = OriginalRequest::from_headers(&traefik);
        assert_eq!(
            (original.method, original.url.as_deref()),
            ("GET", Some("https://shop.example/cart"))
        );
    }
}
