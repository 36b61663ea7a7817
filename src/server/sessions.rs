//! The sessions of a user, for support (`authplane token sessions`), on the admin
//! listener only: `GET /sessions/{namespace}/{name}?subject=S` lists the refresh-token
//! families of TokenClient `namespace/name` and subject `S`; `POST` to the same URL with
//! `?subject=S&revoke=true` ends them all: each family revoked in the store, then each
//! session's `sid` Revocation written through `/revoke`'s writer, so its access tokens
//! are refused at every gateway.
//!
//! Who may call: whoever reaches the admin listener, which has no authentication of its
//! own (as `/status` and `/metrics`). It is never the public listener (a 404 there); on a
//! cluster it must stay cluster-internal (README: a NetworkPolicy). Ending sessions is the
//! one write on a port that Prometheus (`networkPolicy.metricsFrom`) reaches too, so it is
//! accepted only from this host's loopback (`kubectl port-forward` arrives there inside the
//! pod), and nothing here answers a browser (a page could post to a dev machine's port).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use serde_json::json;

use super::AppState;
use super::listen;
use super::token::session_revocation;
use crate::refresh::{Family, RevokedBecause};
use crate::tokens::{self, RefreshError};

/// `GET` lists, `POST ...&revoke=true` ends them.
pub(super) async fn sessions(
    State(state): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
    Path((namespace, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Some(why) = refused_caller(&method, &headers) {
        return refuse(StatusCode::FORBIDDEN, why);
    }
    let Some(endpoint) = state.token.clone() else {
        return refuse(StatusCode::NOT_FOUND, "the token endpoint is off");
    };
    let client_id = format!("{namespace}/{name}");
    let Some(subject) = query.get("subject").filter(|s| !s.is_empty()) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "the query parameter subject is missing",
        );
    };
    let now = state.clock.now();
    let revoke = match (&method, query.get("revoke").map(String::as_str)) {
        (&Method::GET, None) => false,
        (&Method::POST, Some("true")) => true,
        _ => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "GET lists the sessions; POST with revoke=true ends them",
            );
        }
    };
    if !revoke {
        return match endpoint.store.sessions(&client_id, subject, now).await {
            Ok(families) => answer(&client_id, subject, &families, now),
            Err(e) => unavailable(&e.to_string()),
        };
    }
    // A client no longer served still has sessions worth ending; its issuer is the one
    // its families were issued by.
    let ended = match tokens::end_sessions(&*endpoint.store, &client_id, subject, now).await {
        Ok(ended) => ended,
        Err(RefreshError::Store(e)) => return unavailable(&e.to_string()),
        Err(e) => return unavailable(&e.to_string()),
    };
    let snapshot = state.registry.load();
    for family in &ended {
        // No key of this namespace serves the family's issuer any more: none of them
        // verifies its access tokens, and the family's end is all there is to do.
        let Some(issuer) = snapshot.issuer_of_namespace(&namespace, &family.issuer) else {
            continue;
        };
        let revocation = session_revocation(issuer, &family.id, "logout", now);
        if let Err(e) = endpoint.writer.create(revocation).await {
            return unavailable(&format!(
                "the Revocation of session {} could not be written: {e}",
                family.id
            ));
        }
    }
    tracing::info!(
        client = client_id.as_str(),
        sessions = ended.len(),
        "the sessions of a subject were ended through the admin listener"
    );
    answer(&client_id, subject, &ended, now)
}

/// Why this caller may not use the endpoint, if it may not: a browser (it sends `Origin`
/// or `Sec-Fetch-Site`; the CLI sends neither) never, and a `POST` only from loopback.
fn refused_caller(method: &Method, headers: &HeaderMap) -> Option<&'static str> {
    if headers.contains_key(header::ORIGIN) || headers.contains_key("sec-fetch-site") {
        return Some("the sessions of a subject are not served to browsers");
    }
    let loopback = listen::connection().is_some_and(|c| c.peer.ip().to_canonical().is_loopback());
    if *method == Method::POST && !loopback {
        return Some(
            "sessions are ended only from this host's loopback: on a cluster, through kubectl port-forward",
        );
    }
    None
}

fn answer(client: &str, subject: &str, families: &[Family], now: Timestamp) -> Response {
    let sessions: Vec<_> = families
        .iter()
        .map(|family| {
            json!({
                "sid": family.id,
                "startedAt": family.started_at.to_string(),
                "lastUsedAt": family.rotated_at.to_string(),
                "expiresAt": family.expires_at.to_string(),
                "idleExpiresAt": family.idle_deadline().to_string(),
                "generation": family.generation,
                "revoked": family.revoked.as_ref().map(|r| json!({
                    "at": r.at.to_string(),
                    "because": match r.because {
                        RevokedBecause::Reuse => "reuse",
                        RevokedBecause::Logout => "logout",
                        RevokedBecause::Revocation => "revocation",
                    },
                })),
                "active": family.revoked.is_none() && now < family.idle_deadline(),
            })
        })
        .collect();
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({"client": client, "subject": subject, "sessions": sessions})),
    )
        .into_response()
}

fn refuse(status: StatusCode, why: &str) -> Response {
    (status, Json(json!({"error": why}))).into_response()
}

fn unavailable(why: &str) -> Response {
    tracing::warn!(
        error = why,
        "sessions of a subject: the store could not answer"
    );
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        Json(json!({"error": why})),
    )
        .into_response()
}
