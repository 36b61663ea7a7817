//! `POST {issuer}/revoke`: token revocation for token holders, in the manner of RFC 7009,
//! on authplane's own issuers (advertised as `revocation_endpoint` in discovery).
//!
//! Possession of a valid token is the authority to revoke it: its `jti`, or with
//! `token_type_hint=session` (or when it has no usable `jti`) its session, `sid`. A valid
//! token that carries neither is refused with `unsupported_token_type` (RFC 7009
//! §2.2.1): answering 200 would say it was revoked while it keeps passing. An invalid or
//! unknown token gets 200 (RFC 7009 §2.2), so the answer says nothing about tokens.
//!
//! The receiving replica writes the Revocation object (a user request, not a leader's
//! write); its name is derived from what is revoked, so a repeated logout is the same
//! object. The answer waits until the revocation is in force on this replica (a
//! notification from the registry, within a bound), so that a client's next request,
//! here, is already refused.
//!
//! Two limits, each a GCRA budget over a bounded map ([`super::rate_limit`]): requests
//! that do not verify, per client address (through trusted proxies, see
//! [`super::client_address`]); and verified logouts, per issuer and subject (or session).
//! A client sending garbage never spends another user's logout, and users behind one
//! ingress address do not share a budget.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::digest::{SHA256, digest};
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ObjectMeta;
use serde_json::json;

use super::AppState;
use super::client_address::{ClientKey, TrustedProxies};
use super::shared_limits::{Limit, SharedLimits};
use crate::api::{ObjectKey, Revocation, RevocationSpec, RevokedKeyRef};
use crate::policy::verify::Verifier;
use crate::refresh::RefreshToken;
use crate::registry::PublishedIssuer;
use crate::revocation::SessionEnd;
use crate::revocation::TokenFacts;

pub const REVOKE_SUFFIX: &str = "/revoke";
/// A revocation request is a token and a hint.
pub(super) const MAX_BODY_BYTES: usize = 16 * 1024;
/// The tolerated clock skew when verifying the token to revoke; also how long after its
/// `exp` its revocation is kept (policies accept at most 5 minutes of leeway).
const LEEWAY_SECS: i64 = 60;
const MAX_POLICY_LEEWAY_SECS: i64 = 300;
/// Default budget per minute: failed requests per client address, and logouts per
/// subject (or session).
pub const DEFAULT_REVOKE_RATE: u32 = 10;
/// Keys each limit remembers; beyond it the least recently seen is forgotten.
const MAX_KEYS: usize = 10_000;
/// How long an answer waits for the revocation to be in force on this replica: a watch
/// event on a cluster, the folder watch in dev mode (both well under a second).
pub const DEFAULT_IN_FORCE_WITHIN: Duration = Duration::from_secs(5);
/// The longest `jti` or `sid` a Revocation holds (its CRD's bound).
const MAX_ID_CHARS: usize = 256;

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

/// The `/revoke` endpoint: where Revocations are written, and its limits.
pub struct RevokeEndpoint {
    pub writer: Arc<dyn RevocationWriter>,
    /// Requests that did not verify, per client address.
    failures: Limit<ClientKey>,
    /// Verified logouts, per issuer and subject (or session): a hash of them.
    logouts: Limit<[u8; 32]>,
    /// Proxies in front whose `X-Forwarded-For` entries are believed.
    trusted_proxies: TrustedProxies,
    in_force_within: Duration,
}

impl RevokeEndpoint {
    /// `per_minute` failed requests per client address and logouts per subject, the
    /// peer's address taken as the client's.
    pub fn new(writer: Arc<dyn RevocationWriter>, per_minute: u32) -> Self {
        Self {
            writer,
            failures: Limit::new("revoke-failures", per_minute, MAX_KEYS),
            logouts: Limit::new("revoke-logouts", per_minute, MAX_KEYS),
            trusted_proxies: TrustedProxies::None,
            in_force_within: DEFAULT_IN_FORCE_WITHIN,
        }
    }

    /// Client addresses from `X-Forwarded-For`, through these trusted proxies.
    pub fn trusting_proxies(mut self, proxies: TrustedProxies) -> Self {
        self.trusted_proxies = proxies;
        self
    }

    /// Counts the limits in `shared` (when `Some`) with every replica.
    pub fn sharing_limits(mut self, shared: Option<Arc<SharedLimits>>) -> Self {
        self.failures.share(shared.clone());
        self.logouts.share(shared);
        self
    }

    /// How long an answer waits for the revocation to be in force here.
    pub fn in_force_within(mut self, wait: Duration) -> Self {
        self.in_force_within = wait;
        self
    }

    /// A request from `client` that did not verify: `Err(seconds)` once its budget of
    /// failures is spent.
    async fn failed(&self, client: Option<IpAddr>) -> Result<(), u64> {
        match client {
            Some(address) => self.failures.take(&ClientKey::of(address)).await,
            None => Ok(()),
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
    let Some(issuer) = super::served_issuer(&state, issuer_path) else {
        return super::no_issuer_at(issuer_path);
    };
    let client = peer.map(|peer| endpoint.trusted_proxies.client_address(peer.ip(), headers));
    // A request that fails is counted against its client; once over budget, it is told
    // to slow down instead of being answered.
    let refuse = |result: &'static str, answer: Response| {
        let (state, endpoint) = (&state, &endpoint);
        async move {
            match endpoint.failed(client).await {
                Ok(()) => {
                    state.metrics.revoke_request(result);
                    answer
                }
                Err(wait) => {
                    state.metrics.revoke_request("rate_limited");
                    slow_down(
                        wait,
                        "too many failed revocation requests from this address",
                    )
                }
            }
        }
    };
    let Some(form) = Form::read(headers, &body) else {
        return refuse(
            "invalid_request",
            bad_request(
                "invalid_request",
                "send token=<jwt> as application/x-www-form-urlencoded",
            ),
        )
        .await;
    };
    // A browser app logs out with its refresh cookie (the page cannot read it), under
    // the same protection against cross-site requests as a refresh with it.
    let form_token = form.token.filter(|t| !t.is_empty());
    let cookie = match form_token {
        Some(_) => None,
        None => super::refresh_cookie::read(headers),
    };
    if cookie.is_some()
        && let Err(why) = super::refresh_cookie::check_csrf(headers, &issuer.issuer)
    {
        return refuse("invalid_request", bad_request("invalid_request", &why)).await;
    }
    let from_cookie = cookie.is_some();
    let Some(token) = form_token.or(cookie) else {
        return refuse(
            "invalid_request",
            bad_request("invalid_request", "the token parameter is missing"),
        )
        .await;
    };
    // The cookie's session is over once answered 200: the cookie goes too.
    let clear_cookie = |mut answer: Response| {
        if from_cookie && answer.status() == StatusCode::OK {
            answer
                .headers_mut()
                .insert(header::SET_COOKIE, super::refresh_cookie::clear());
        }
        answer
    };
    let now = state.clock.now();
    // A refresh token (RFC 7009 `token_type_hint=refresh_token`, or recognised by its
    // form without a hint: the two kinds cannot be mistaken for each other) ends its
    // family and its session.
    if let Ok(refresh_token) = RefreshToken::parse(&token) {
        let logout = match super::token::logout(
            &state,
            &issuer,
            &refresh_token,
            form.client_id.as_deref(),
        )
        .await
        {
            super::token::Logout::Revoke(revoked) => {
                let (revocation, ended, owner) = *revoked;
                let in_log = in_log(&state, &ended);
                let family = ended.family;
                let logout = Logout {
                    claims: [
                        ("iss", owner.issuer.as_str()),
                        ("sub", family.subject.as_str()),
                        ("sid", family.id.as_str()),
                    ]
                    .into_iter()
                    .map(|(name, value)| (name.to_owned(), value.into()))
                    .collect(),
                    session: Some(family.id.clone()),
                    in_log,
                    revocation,
                    key: ObjectKey {
                        namespace: owner.namespace.clone(),
                        name: owner.name.clone(),
                    },
                };
                (logout, owner)
            }
            // Unknown, another client's: nothing to revoke, and nothing said about it.
            super::token::Logout::Nothing => return clear_cookie(refuse("ignored", ok()).await),
            super::token::Logout::Refused(error) => {
                let status =
                    StatusCode::from_u16(error.code.status()).unwrap_or(StatusCode::BAD_REQUEST);
                let answer =
                    (status, oauth_error(error.code.as_str(), &error.description)).into_response();
                return refuse("invalid_request", answer).await;
            }
            super::token::Logout::Unavailable(why) => {
                tracing::warn!(issuer = issuer.issuer.as_str(), error = %why, "a refresh token could not be revoked");
                state.metrics.revoke_request("error");
                return unavailable("the token store is unavailable; retry");
            }
        };
        let (logout, owner) = logout;
        // No budget per subject for a logout whose session's end is in the store's log:
        // it was recorded with the family, which ends once (sessions come from logins,
        // which the token endpoint limits), and presented again it writes nothing. A
        // family ended otherwise (a Revocation in force then, since deleted; no log) whose
        // session is not refused here is written again: that write is the subject's,
        // within its budget, or a client could make authplane write in a loop.
        if !logout.in_log
            && !refused_here(&state, &owner, &logout)
            && let Err(wait) = endpoint
                .logouts
                .take(&logout.limit_key(&owner.issuer))
                .await
        {
            state.metrics.revoke_request("rate_limited");
            return slow_down(wait, "too many revocations for this subject");
        }
        return clear_cookie(in_force(&state, &endpoint, &owner, logout).await);
    }
    let session = form.hint.as_deref() == Some("session");
    let logout = match revocation_for(&issuer, &token, session, now) {
        // Unknown, invalid or expired: nothing to revoke, and nothing said about it.
        Verdict::Invalid => return refuse("ignored", ok()).await,
        Verdict::Unsupported => {
            state.metrics.revoke_request("unsupported");
            return bad_request(
                "unsupported_token_type",
                "this token carries no jti or sid of at most 256 characters to revoke it by",
            );
        }
        Verdict::Revoke(logout) => *logout,
    };
    if let Err(wait) = endpoint
        .logouts
        .take(&logout.limit_key(&issuer.issuer))
        .await
    {
        state.metrics.revoke_request("rate_limited");
        return slow_down(wait, "too many revocations for this subject");
    }
    let mut logout = logout;
    if let Some(ended) = kept_in_store(&state, &issuer, &logout, now).await {
        logout.in_log = in_log(&state, &ended);
        logout.session = Some(ended.family.id);
    }
    in_force(&state, &endpoint, &issuer, logout).await
}

/// Whether a session logout by access token is kept in the token store: when the
/// session is a family of the token service on this issuer (then the family is revoked
/// too, as a logout by its refresh token does). A session of tokens minted elsewhere
/// (`authplane token mint`, an app with the key) is not the store's: its Revocation
/// object lapses with the key's longest token lifetime, as before. So is any session
/// when the store cannot be asked: a logout is never lost to a store outage.
async fn kept_in_store(
    state: &AppState,
    issuer: &PublishedIssuer,
    logout: &Logout,
    now: Timestamp,
) -> Option<crate::tokens::Ended> {
    let sid = logout.revocation.spec.session_id.as_deref()?;
    let token = state.token.as_ref()?;
    token.sessions.as_ref()?;
    let sessions = token.sessions_under(&logout.key);
    let ended = crate::tokens::end_session(
        &*token.store,
        &issuer.issuer,
        &issuer.namespace,
        sid,
        sessions,
        now,
    );
    match ended.await {
        Ok(ended) => ended,
        Err(e) => {
            tracing::warn!(issuer = issuer.issuer.as_str(), error = %e, "the token store could not be asked about a session: its logout is written as a Revocation");
            None
        }
    }
}

/// Whether the end of `ended`'s session is in the token store's log: recorded with the
/// family by this logout (counted here), or by the logout or reuse that ended it before
/// (a family's end and its entry are one write). Presented again, such a session is
/// not written again, even when it is not refused here (its namespace's share of ended
/// sessions in memory is full): that would append to the log at every request.
fn in_log(state: &AppState, ended: &crate::tokens::Ended) -> bool {
    if ended.recorded {
        state.metrics.tokens.session_revocations_recorded.inc();
        return true;
    }
    let has_log = state.token.as_ref().is_some_and(|t| t.sessions.is_some());
    has_log
        && ended.family.revoked.as_ref().is_some_and(|revoked| {
            matches!(
                revoked.because,
                crate::refresh::RevokedBecause::Logout | crate::refresh::RevokedBecause::Reuse
            )
        })
}

/// Whether the token `logout` names is refused here already.
fn refused_here(state: &AppState, issuer: &PublishedIssuer, logout: &Logout) -> bool {
    let facts = TokenFacts::of(&logout.claims, Some(&logout.key));
    let now = state.clock.now().as_second();
    state
        .registry
        .revocations()
        .is_revoked(&issuer.namespace, &facts, now)
}

/// Writes the Revocation of `logout` and answers once it is in force on this replica.
async fn in_force(
    state: &AppState,
    endpoint: &RevokeEndpoint,
    issuer: &PublishedIssuer,
    logout: Logout,
) -> Response {
    let in_force = || refused_here(state, issuer, &logout);
    // Already refused here (a logout repeated, a dead refresh token presented again):
    // nothing to write. Otherwise each such request would be a write to the apiserver
    // (or a rewrite of a manifest and a reload in dev mode), and a logout by refresh
    // token has no budget of its own: a client could make authplane write in a loop.
    if in_force() {
        state.metrics.revoke_request("revoked");
        return ok();
    }
    // Subscribed before writing: a publication between the write and the wait is not
    // missed.
    let mut published = state.registry.revocations_published();
    let written = match (&logout.session, &state.token) {
        // In the store's log with the family's revocation.
        (Some(_), Some(_)) if logout.in_log => Ok(()),
        (Some(sid), Some(token)) => {
            let now = state.clock.now();
            super::token::end_session(
                token,
                &state.metrics.tokens,
                issuer,
                sid,
                SessionEnd::Logout,
                now,
            )
            .await
        }
        _ => endpoint
            .writer
            .create(logout.revocation.clone())
            .await
            .map_err(|e| e.to_string()),
    };
    if let Err(e) = written {
        tracing::error!(issuer = issuer.issuer.as_str(), error = %e, "a revocation could not be stored");
        state.metrics.revoke_request("error");
        return unavailable("the revocation could not be stored; retry");
    }
    let waited = tokio::time::timeout(endpoint.in_force_within, async {
        while !in_force() {
            if published.changed().await.is_err() {
                return false;
            }
        }
        true
    })
    .await;
    if waited == Ok(true) {
        state.metrics.revoke_request("revoked");
        return ok();
    }
    // Stored, not yet in force here: the client retries, and the retry (the same
    // object) is answered as soon as it is.
    tracing::warn!(
        issuer = issuer.issuer.as_str(),
        waited_seconds = endpoint.in_force_within.as_secs_f64(),
        "a revocation was stored but is not in force on this replica yet"
    );
    state.metrics.revoke_request("error");
    unavailable("the revocation is stored but not yet in force; retry")
}

/// The form of a revocation request.
struct Form {
    token: Option<String>,
    hint: Option<String>,
    /// Names the TokenClient of a refresh token.
    client_id: Option<String>,
}

impl Form {
    /// `None` unless the body is `application/x-www-form-urlencoded`.
    fn read(headers: &HeaderMap, body: &[u8]) -> Option<Self> {
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
            return None;
        }
        let mut form = Form {
            token: None,
            hint: None,
            client_id: None,
        };
        for (name, value) in url::form_urlencoded::parse(body) {
            match &*name {
                "token" => form.token = Some(value.into_owned()),
                "token_type_hint" => form.hint = Some(value.into_owned()),
                "client_id" => form.client_id = Some(value.into_owned()),
                _ => {}
            }
        }
        Some(form)
    }
}

fn ok() -> Response {
    (
        StatusCode::OK,
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
    )
        .into_response()
}

fn bad_request(error: &str, description: &str) -> Response {
    (StatusCode::BAD_REQUEST, oauth_error(error, description)).into_response()
}

fn slow_down(wait: u64, description: &str) -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, HeaderValue::from(wait))],
        oauth_error("slow_down", description),
    )
        .into_response()
}

fn unavailable(description: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, HeaderValue::from_static("1"))],
        oauth_error("temporarily_unavailable", description),
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

/// What a token presented for revocation comes to.
pub enum Verdict {
    /// It does not verify against the issuer's published keys (or has expired).
    Invalid,
    /// It verifies, but carries nothing a Revocation can name.
    Unsupported,
    Revoke(Box<Logout>),
}

/// A verified token and the Revocation it asks for.
pub struct Logout {
    pub revocation: Revocation,
    /// The session, when its end is kept in the token store instead of as
    /// `revocation` (a session of the token service, with a store configured).
    pub session: Option<String>,
    /// That end is in the store's log, written with the family's revocation (now or
    /// when it ended): nothing is left to write ([`in_log`]).
    pub in_log: bool,
    /// The token's verified claims, to tell when the revocation is in force.
    pub claims: serde_json::Map<String, serde_json::Value>,
    /// The SigningKey that issued it.
    pub key: ObjectKey,
}

impl Logout {
    /// The logout limit's key: the issuer and the subject, else the session.
    fn limit_key(&self, issuer: &str) -> [u8; 32] {
        let text = |name: &str| {
            self.claims
                .get(name)
                .and_then(serde_json::Value::as_str)
                .unwrap_or("")
        };
        let who = match text("sub") {
            "" => format!("sid\0{}", text("sid")),
            sub => format!("sub\0{sub}"),
        };
        let hash = digest(&SHA256, format!("{issuer}\0{who}").as_bytes());
        hash.as_ref().try_into().unwrap_or([0; 32])
    }
}

/// The Revocation a token of `issuer` asks for: its `jti`, or its `sid` when `session` is
/// hinted or it has no usable `jti`.
pub fn revocation_for(
    issuer: &PublishedIssuer,
    token: &str,
    session: bool,
    now: Timestamp,
) -> Verdict {
    let name: Arc<str> = Arc::from(issuer.issuer.as_str());
    let Ok(keys) = crate::external::fetch::parse_jwks(&issuer.jwks, &name, &issuer.jwks_uri) else {
        return Verdict::Invalid;
    };
    let mut verifier = Verifier::new(Vec::new(), LEEWAY_SECS);
    for (kid, key) in keys {
        verifier.add_key(&kid, key);
    }
    let Ok(verified) = verifier.verify(token, now) else {
        return Verdict::Invalid;
    };
    let claim = |name: &str| {
        verified
            .claims
            .get(name)
            .and_then(serde_json::Value::as_str)
            .filter(|v| !v.is_empty() && v.chars().count() <= MAX_ID_CHARS)
            .map(str::to_owned)
    };
    let mut spec = RevocationSpec {
        signing_key_ref: Some(RevokedKeyRef {
            name: issuer.name.clone(),
            namespace: Some(issuer.namespace.clone()),
        }),
        reason: Some("logout".to_owned()),
        ..RevocationSpec::default()
    };
    let (jti, sid) = (claim("jti"), claim("sid"));
    let what = match (session, jti, sid) {
        (true, _, Some(sid)) | (false, None, Some(sid)) => {
            let what = format!("sid\0{sid}");
            spec.session_id = Some(sid);
            what
        }
        (_, Some(jti), _) => {
            let what = format!("jti\0{jti}");
            spec.token_id = Some(jti);
            // One token: its revocation is needed until it expires (plus any leeway a
            // policy may grant).
            spec.expires_at =
                Timestamp::from_second(verified.expires.saturating_add(MAX_POLICY_LEEWAY_SECS))
                    .ok()
                    .map(Time);
            what
        }
        (_, None, None) => return Verdict::Unsupported,
    };
    let hash = digest(&SHA256, format!("{}\0{what}", issuer.issuer).as_bytes());
    let suffix: String = hash.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let kind = if spec.session_id.is_some() {
        "logout-session"
    } else {
        "logout"
    };
    let revocation = Revocation {
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
    };
    Verdict::Revoke(Box::new(Logout {
        revocation,
        session: None,
        in_log: false,
        claims: verified.claims,
        key: ObjectKey {
            namespace: issuer.namespace.clone(),
            name: issuer.name.clone(),
        },
    }))
}

/// The id of a Revocation object.
pub fn id_of(revocation: &Revocation) -> ObjectKey {
    ObjectKey::of(&revocation.metadata)
}
