//! `{issuer path}/.well-known/openid-configuration` and `{issuer path}/.well-known/jwks.json`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::registry::PublishedIssuer;

const JWKS_SUFFIX: &str = "/.well-known/jwks.json";
const DISCOVERY_SUFFIX: &str = "/.well-known/openid-configuration";

enum Document {
    Jwks,
    Discovery,
}

pub async fn serve(
    State(state): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let path = uri.path();
    let (issuer_path, document) = if let Some(prefix) = path.strip_suffix(JWKS_SUFFIX) {
        (prefix, Document::Jwks)
    } else if let Some(prefix) = path.strip_suffix(DISCOVERY_SUFFIX) {
        (prefix, Document::Discovery)
    } else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    if method != Method::GET && method != Method::HEAD {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "GET, HEAD")],
            "only GET and HEAD\n",
        )
            .into_response();
    }
    let snapshot = state.registry.load();
    let Some(issuer) = snapshot.issuers.get(issuer_path.trim_end_matches('/')) else {
        return (
            StatusCode::NOT_FOUND,
            format!("no issuer is served at {issuer_path:?}\n"),
        )
            .into_response();
    };
    match document {
        Document::Jwks => jwks(issuer, &headers, method == Method::HEAD),
        Document::Discovery => cached(
            "application/json",
            with_endpoints(
                &issuer.discovery,
                &issuer.issuer,
                state.revoke.is_some(),
                state.token.is_some(),
            ),
            issuer.max_age_secs,
            method == Method::HEAD,
        ),
    }
}

/// The discovery document with `revocation_endpoint` (RFC 7009, RFC 8414) when this
/// server answers `POST {issuer}/revoke`, and `token_endpoint` with what it supports
/// when it answers `POST {issuer}/token`.
fn with_endpoints(
    discovery: &axum::body::Bytes,
    issuer: &str,
    revoke: bool,
    token: bool,
) -> axum::body::Bytes {
    if !revoke && !token {
        return discovery.clone();
    }
    let Ok(mut document) = serde_json::from_slice::<serde_json::Value>(discovery) else {
        return discovery.clone();
    };
    let base = issuer.trim_end_matches('/');
    if let Some(members) = document.as_object_mut() {
        if revoke {
            members.insert(
                "revocation_endpoint".into(),
                format!("{base}{}", super::revoke::REVOKE_SUFFIX).into(),
            );
        }
        if token {
            members.insert(
                "token_endpoint".into(),
                format!("{base}{}", super::token::TOKEN_SUFFIX).into(),
            );
            members.insert(
                "grant_types_supported".into(),
                serde_json::json!([
                    crate::token_endpoint::GRANT_TOKEN_EXCHANGE,
                    crate::token_endpoint::GRANT_REFRESH_TOKEN
                ]),
            );
            members.insert(
                "token_endpoint_auth_methods_supported".into(),
                serde_json::json!([
                    "client_secret_post",
                    "client_secret_basic",
                    "private_key_jwt",
                    "none"
                ]),
            );
        }
    }
    serde_json::to_vec(&document).map_or_else(|_| discovery.clone(), axum::body::Bytes::from)
}

fn jwks(issuer: &PublishedIssuer, headers: &HeaderMap, head: bool) -> Response {
    let mut response = if etag_matches(headers, &issuer.etag) {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        set_cache_headers(response.headers_mut(), issuer.max_age_secs);
        response
    } else {
        cached(
            "application/jwk-set+json",
            issuer.jwks.clone(),
            issuer.max_age_secs,
            head,
        )
    };
    if let Ok(etag) = HeaderValue::from_str(&issuer.etag) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

fn cached(
    content_type: &'static str,
    body: axum::body::Bytes,
    max_age: i64,
    head: bool,
) -> Response {
    let length = body.len();
    let mut response = if head {
        Response::new(Body::empty())
    } else {
        Response::new(Body::from(body))
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    set_cache_headers(headers, max_age);
    response
}

fn set_cache_headers(headers: &mut HeaderMap, max_age: i64) {
    if let Ok(value) = HeaderValue::from_str(&format!("public, max-age={max_age}")) {
        headers.insert(header::CACHE_CONTROL, value);
    }
    // Public keys only: browser-based verifiers may fetch them from any origin.
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
}

/// `If-None-Match` per RFC 9110: a list of (possibly weak) tags, or `*`.
fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
}
