//! `POST {issuer}/token`: the token endpoint (RFC 6749 §3.2), a thin shell. The rules
//! (the request, the errors, what a client's tokens may say) are the core's
//! ([`crate::token_endpoint`]), the family rules too ([`crate::refresh`]); the store path
//! is [`crate::tokens::refresh`]. Here: the client authenticated, the store asked, the
//! access token signed with the Active key of the client's SigningKey, the answer
//! written as RFC 6749 §5.1/§5.2 say (JSON, `Cache-Control: no-store`, `Pragma:
//! no-cache`).
//!
//! A client is served only on its own key's issuer: a `client_id` presented on another
//! issuer is unknown there. Nothing a client sends is ever answered with a 500; a store
//! that is down or slow is a 503 with `Retry-After`, and nothing else in authplane waits
//! for the store.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use aws_lc_rs::digest::{SHA256, digest};
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ObjectMeta;
use serde_json::json;

use super::AppState;
use super::client_address::{ClientKey, TrustedProxies};
use super::client_basic;
use super::rate_limit::Budget;
use super::refresh_cookie;
use super::revoke::RevocationWriter;
use super::shared_limits::{Limit, SharedLimits};
use crate::api::{Delivery, ObjectKey, Revocation, RevocationSpec, RevokedKeyRef};
use crate::keys::lifecycle::add;
use crate::policy::verify::unverified_claim;
use crate::refresh::{self, AccessGrant, Family, RefreshToken, SystemEntropy};
use crate::registry::PublishedIssuer;
use crate::revocation::{SessionEnd, SessionRevocation};
use crate::token_clients::ServedClient;
use crate::token_endpoint::id_token::{IDP_CLAIM, IdTokenError, IdTokenSubject};
use crate::token_endpoint::secret::StoredSecret;
use crate::token_endpoint::{
    self as rules, ClientAuth, ErrorCode, Grant, OAuthError, TOKEN_TYPE_ACCESS,
    TOKEN_TYPE_ID_TOKEN, TOKEN_TYPE_SUBJECT,
};
use crate::tokens::client_auth::{AssertionError, AssertionReviewer};
use crate::tokens::session_log::SessionLog;
use crate::tokens::{FamilyStore, RefreshError, Refreshed, StoreError};

pub const TOKEN_SUFFIX: &str = "/token";
/// The largest body read: the core's limit (413 beyond it).
pub(super) const MAX_BODY_BYTES: usize = rules::MAX_BODY_BYTES;
/// What a client is told to wait when the store (or the apiserver) cannot answer.
const RETRY_AFTER_SECS: u64 = 1;

/// Dev mode's client secrets (`authplane token client-secret`): the stored hash of a
/// TokenClient's secret, if it has one.
pub trait ClientSecrets: Send + Sync + 'static {
    fn secret<'a>(
        &'a self,
        client: &'a ObjectKey,
    ) -> BoxFuture<'a, Result<Option<StoredSecret>, String>>;
}

/// Default budgets per minute: failed requests per client address, rotations per family.
pub const DEFAULT_TOKEN_RATE: u32 = 10;
/// Keys each limit remembers; beyond it the least recently seen is forgotten.
const MAX_KEYS: usize = 10_000;

/// What the token endpoint works with.
///
/// Limits, each a GCRA budget over a bounded map ([`super::rate_limit`]), as `/revoke`
/// has: requests that fail, per client address (through trusted proxies), so garbage and
/// wrong credentials are slowed down without users behind one address (an office, a
/// carrier's NAT) sharing a budget for their refreshes; and rotations per family, so one
/// session cannot make the store write and the key sign in a loop. A retry within the
/// grace is a read and costs neither. Successful logins are the trusted workload's: they
/// come from its address for every user, and are not limited here.
///
/// A failure is counted per client address *and client* once the request is proven to
/// be that client's (its credentials checked, or a refresh token the store knows as the
/// client's), within the TokenClient's `rateLimit`: one team's failing logins or dead
/// sessions never spend another team's budget at a shared address. Before that (no
/// client, an unknown one, wrong credentials, a refresh token nobody issued to it) the
/// server's per-address budget applies: naming a generous client buys nothing. Rotations
/// are per family within its client's `rateLimit`.
pub struct TokenEndpoint {
    /// The families (bounded by a deadline: [`crate::tokens::Timed`]).
    pub store: Arc<dyn FamilyStore>,
    /// Client assertions (a cluster's TokenReview); `None` in dev mode.
    pub reviewer: Option<Arc<dyn AssertionReviewer>>,
    /// Client secrets (dev mode); `None` on a cluster.
    pub secrets: Option<Arc<dyn ClientSecrets>>,
    /// Where a session revoked for reuse is written when the store cannot take it:
    /// `/revoke`'s writer.
    pub writer: Arc<dyn RevocationWriter>,
    /// The store's log of ended sessions, where logouts and reuse are kept (`None`: a
    /// store that cannot be used; they are written as Revocations instead).
    pub sessions: Option<Arc<dyn SessionLog>>,
    /// Proxies in front whose `X-Forwarded-For` entries are believed.
    pub trusted_proxies: TrustedProxies,
    failures: Limit<ClientKey>,
    client_failures: Limit<(String, ClientKey)>,
    rotations: Limit<String>,
    /// The limits every replica shares (with a Redis store), for `/revoke`'s too.
    shared: Option<Arc<SharedLimits>>,
}

impl TokenEndpoint {
    /// Where a write that ends a family records its session's end (under `key`, the
    /// issuer's SigningKey): the store's log, when it keeps one.
    pub fn sessions_under<'a>(&self, key: &'a ObjectKey) -> crate::tokens::Sessions<'a> {
        self.sessions.as_ref().map(|_| key)
    }

    /// `per_minute` failed requests per client address and rotations per family; no
    /// client assertions, no client secrets, no trusted proxies until set.
    pub fn new(
        store: Arc<dyn FamilyStore>,
        writer: Arc<dyn RevocationWriter>,
        per_minute: u32,
    ) -> Self {
        Self {
            store,
            reviewer: None,
            secrets: None,
            writer,
            sessions: None,
            trusted_proxies: TrustedProxies::None,
            failures: Limit::new("token-failures", per_minute, MAX_KEYS),
            client_failures: Limit::new("token-client-failures", per_minute, MAX_KEYS),
            rotations: Limit::new("token-rotations", per_minute, MAX_KEYS),
            shared: None,
        }
    }

    /// Counts the limits in `shared` with every replica (this replica's own while it
    /// does not answer).
    pub fn share_limits(&mut self, shared: Arc<SharedLimits>) {
        self.failures.share(Some(shared.clone()));
        self.client_failures.share(Some(shared.clone()));
        self.rotations.share(Some(shared.clone()));
        self.shared = Some(shared);
    }

    /// The limits shared with every replica, if any.
    pub fn shared_limits(&self) -> Option<Arc<SharedLimits>> {
        self.shared.clone()
    }

    /// The budget of `client`'s failures per address and rotations per family: its
    /// `rateLimit` over the server's.
    fn budget(&self, client: &ServedClient) -> Budget {
        Budget::of(client.rate_limit.as_ref(), self.failures.budget())
    }

    /// Counts a failed request from `address`: against `proven`'s budget per address when
    /// the request was proven to be that client's, else against the address's own.
    async fn failed(&self, address: IpAddr, proven: Option<&(String, Budget)>) -> Result<(), u64> {
        let address = ClientKey::of(address);
        match proven {
            Some((client, budget)) => {
                self.client_failures
                    .take_within(&(client.clone(), address), *budget)
                    .await
            }
            None => self.failures.take(&address).await,
        }
    }
}

/// `POST {issuer path}/token`.
pub async fn token(
    state: Arc<AppState>,
    issuer_path: &str,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    body: Bytes,
) -> Response {
    let Some(endpoint) = state.token.clone() else {
        return (
            StatusCode::NOT_FOUND,
            "the token endpoint is not served here\n",
        )
            .into_response();
    };
    let Some(issuer) = super::served_issuer(&state, issuer_path) else {
        return super::no_issuer_at(issuer_path);
    };
    let client_address =
        peer.map(|peer| endpoint.trusted_proxies.client_address(peer.ip(), headers));
    let request = Request {
        state: &state,
        endpoint: &endpoint,
        issuer: &issuer,
        client_address,
        from_cookie: AtomicBool::new(false),
        used_basic: AtomicBool::new(false),
        proven: OnceLock::new(),
    };
    let metrics = &state.metrics.tokens;
    match request.answer(headers, &body).await {
        Ok(answer) => answer,
        // A failure is counted against its client address; once over budget, it is
        // told to slow down instead of being answered.
        Err(Failure::OAuth(error)) => {
            let spent = match client_address {
                Some(a) => endpoint.failed(a, request.proven.get()).await.err(),
                None => None,
            };
            metrics.request(match spent {
                Some(_) => "rate_limited",
                None => error.code.as_str(),
            });
            match spent {
                None if error.code == ErrorCode::InvalidGrant
                    && request.from_cookie.load(Ordering::Relaxed) =>
                {
                    let mut answer = oauth_error(&error);
                    answer
                        .headers_mut()
                        .insert(header::SET_COOKIE, refresh_cookie::clear());
                    answer
                }
                None if error.code == ErrorCode::InvalidClient
                    && request.used_basic.load(Ordering::Relaxed) =>
                {
                    // RFC 6749 §5.2: a client that used the Authorization header is told
                    // the scheme.
                    let mut answer = oauth_error(&error);
                    answer.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Basic realm=\"authplane\""),
                    );
                    answer
                }
                None => oauth_error(&error),
                Some(wait) => slow_down(wait, "too many failed token requests from this address"),
            }
        }
        Err(Failure::Subject(error)) => {
            metrics.request(error.code.as_str());
            oauth_error(&error)
        }
        Err(Failure::Spent(wait)) => {
            metrics.request("rate_limited");
            slow_down(wait, "too many failed token requests from this address")
        }
        Err(Failure::Limited(wait)) => {
            metrics.request("rate_limited");
            slow_down(
                wait,
                "this session refreshed too often; retry with the same refresh token later",
            )
        }
        Err(Failure::Unavailable(why)) => {
            metrics.request("unavailable");
            tracing::warn!(issuer = issuer.issuer.as_str(), error = %why, "token request not answered");
            // The details (a file, a key) are for the log, not for the client.
            unavailable("the token service cannot answer right now; retry")
        }
        Err(Failure::Full(why)) => {
            metrics.request("sessions_full");
            unavailable(&why)
        }
        Err(Failure::Server(why)) => {
            metrics.request("error");
            tracing::error!(issuer = issuer.issuer.as_str(), error = %why, "token request failed");
            server_error()
        }
    }
}

/// Why a request is not answered with tokens.
enum Failure {
    /// The client's: an OAuth error (RFC 6749 §5.2).
    OAuth(OAuthError),
    /// The user's, brought by an authenticated workload (an ID token that does not
    /// verify: expired, of another app ...): an OAuth error that does not count against
    /// the workload's address, so that a few users' stale ID tokens never lock every
    /// other user out of logging in for a minute.
    Subject(OAuthError),
    /// The store or the apiserver could not answer: 503 with `Retry-After`.
    Unavailable(String),
    /// Ours, never the client's (an unreadable stored family, a key that does not sign).
    Server(String),
    /// The client holds as many sessions as the store keeps for one client: 503 with
    /// `Retry-After`, the reason told (it is the client's own cap; the store logged it).
    Full(String),
    /// The family's budget of rotations is spent: 429 after this many seconds.
    Limited(u64),
    /// The client address's budget of failures is spent: 429 after this many seconds,
    /// before any costly work.
    Spent(u64),
}

impl From<OAuthError> for Failure {
    fn from(error: OAuthError) -> Self {
        Failure::OAuth(error)
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Full(why) => Failure::Full(why),
            other => Failure::Unavailable(other.to_string()),
        }
    }
}

fn invalid_client(description: impl Into<String>) -> Failure {
    Failure::OAuth(OAuthError::new(ErrorCode::InvalidClient, description))
}

fn invalid_grant(description: impl Into<String>) -> Failure {
    Failure::OAuth(OAuthError::new(ErrorCode::InvalidGrant, description))
}

struct Request<'a> {
    state: &'a AppState,
    endpoint: &'a TokenEndpoint,
    issuer: &'a PublishedIssuer,
    client_address: Option<IpAddr>,
    /// The refresh token came in the cookie: a dead session's cookie is cleared.
    from_cookie: AtomicBool,
    /// The client authenticated with HTTP Basic: a 401 names the scheme.
    used_basic: AtomicBool,
    /// The client this request is proven to be (its id and budget): set once its
    /// credentials are checked, or the store knows its refresh token as this client's.
    proven: OnceLock<(String, Budget)>,
}

impl Request<'_> {
    async fn answer(&self, headers: &HeaderMap, body: &[u8]) -> Result<Response, Failure> {
        if !is_form(headers) {
            return Err(OAuthError::invalid_request(
                "the body must be application/x-www-form-urlencoded (RFC 6749 §3.2)",
            )
            .into());
        }
        let mut params = rules::parse_form(body)?;
        if headers.contains_key(header::AUTHORIZATION) {
            self.used_basic.store(true, Ordering::Relaxed);
        }
        if let Some(basic) = client_basic::credentials(headers)? {
            client_basic::merge(&mut params, basic)?;
        }
        // A browser app's refresh token comes in its cookie, unless the form has one.
        let cookie = params.get("grant_type").map(String::as_str)
            == Some(rules::GRANT_REFRESH_TOKEN)
            && !params.contains_key("refresh_token");
        let cookie = cookie.then(|| refresh_cookie::read(headers)).flatten();
        if let Some(token) = cookie {
            params.insert("refresh_token".into(), token);
            self.from_cookie.store(true, Ordering::Relaxed);
        }
        let request = rules::parse_request(&params)?;
        let client = self.client(&request.client)?;
        if self.from_cookie.load(Ordering::Relaxed) {
            if client.delivery != Delivery::Cookie {
                return Err(OAuthError::invalid_request(format!(
                    "TokenClient {} delivers refresh tokens in the body: send refresh_token",
                    client.rules.client
                ))
                .into());
            }
            refresh_cookie::check_csrf(headers, &self.issuer.issuer)
                .map_err(OAuthError::invalid_request)?;
        }
        match request.grant {
            Grant::Exchange {
                subject_token,
                subject_token_type,
                audiences,
                claims,
            } => {
                self.authenticate_workload(&client, &request.client).await?;
                self.exchange(
                    &client,
                    &subject_token,
                    &subject_token_type,
                    &audiences,
                    claims.as_deref(),
                )
                .await
            }
            Grant::Refresh { refresh_token } => {
                self.authenticate_if_credentials(&client, &request.client)
                    .await?;
                self.refresh(&client, &refresh_token).await
            }
        }
    }

    /// The TokenClient the request names, served on this issuer.
    fn client(&self, auth: &ClientAuth) -> Result<Arc<ServedClient>, Failure> {
        let Some(client_id) = auth.client_id() else {
            return Err(invalid_client(
                "client_id is missing: name the TokenClient as namespace/name",
            ));
        };
        let clients = self.state.registry.token_clients();
        let served = clients.get(client_id).filter(|client| {
            client.key.namespace == self.issuer.namespace && client.key.name == self.issuer.name
        });
        served.cloned().ok_or_else(|| {
            invalid_client(format!(
                "no TokenClient {client_id:?} is served on this issuer"
            ))
        })
    }

    /// A login is a trusted workload's: a client secret (dev mode) or a ServiceAccount's
    /// assertion (a cluster), never a public client.
    async fn authenticate_workload(
        &self,
        client: &ServedClient,
        auth: &ClientAuth,
    ) -> Result<(), Failure> {
        match auth {
            ClientAuth::Public { .. } => Err(invalid_client(
                "a token exchange needs client authentication: client_secret (dev mode) or client_assertion (a ServiceAccount token)",
            )),
            _ => self.authenticate_if_credentials(client, auth).await,
        }
    }

    /// Checks the credentials a request carries (a public client carries none); once
    /// checked, the request is proven to be the client's.
    async fn authenticate_if_credentials(
        &self,
        client: &ServedClient,
        auth: &ClientAuth,
    ) -> Result<(), Failure> {
        self.check_credentials(client, auth).await?;
        if !matches!(auth, ClientAuth::Public { .. }) {
            self.prove(client);
        }
        Ok(())
    }

    /// The request is `client`'s: its failures count against the client's budget.
    fn prove(&self, client: &ServedClient) {
        let _ = self
            .proven
            .set((client.rules.client.clone(), self.endpoint.budget(client)));
    }

    async fn check_credentials(
        &self,
        client: &ServedClient,
        auth: &ClientAuth,
    ) -> Result<(), Failure> {
        let (namespace, name) = client.rules.client.split_once('/').unwrap_or_default();
        let id = ObjectKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        match auth {
            ClientAuth::Public { .. } => Ok(()),
            ClientAuth::Secret { secret, .. } => {
                let Some(secrets) = &self.endpoint.secrets else {
                    return Err(invalid_client(
                        "client secrets are dev mode's: on a cluster, authenticate with a ServiceAccount token as client_assertion",
                    ));
                };
                let stored = secrets
                    .secret(&id)
                    .await
                    .map_err(|e| Failure::Unavailable(format!("the client secrets: {e}")))?;
                match stored {
                    Some(stored) if stored.matches(secret) => Ok(()),
                    Some(_) => Err(invalid_client("the client secret is wrong")),
                    None => Err(invalid_client(format!(
                        "TokenClient {} has no client secret: make one with `authplane token client-secret {}`",
                        client.rules.client, client.rules.client
                    ))),
                }
            }
            ClientAuth::Assertion { assertion, .. } => {
                let Some(reviewer) = &self.endpoint.reviewer else {
                    return Err(invalid_client(
                        "client assertions (ServiceAccount tokens) need a cluster: in dev mode, use client_secret",
                    ));
                };
                // A review is a round trip to the apiserver: an address whose failures
                // are over budget gets no more of them (otherwise its 429s would still
                // cost the apiserver one TokenReview each, on authplane's account).
                if let Some(address) = self.client_address
                    && let Err(wait) = self.endpoint.failures.peek(&ClientKey::of(address)).await
                {
                    return Err(Failure::Spent(wait));
                }
                match reviewer.review(assertion, &self.issuer.issuer).await {
                    Ok(account) if client.service_accounts.contains(&account) => Ok(()),
                    Ok(account) => Err(Failure::OAuth(OAuthError::new(
                        ErrorCode::UnauthorizedClient,
                        format!(
                            "ServiceAccount {account} is not one of TokenClient {}'s serviceAccounts",
                            client.rules.client
                        ),
                    ))),
                    Err(AssertionError::Refused(why)) => Err(invalid_client(format!(
                        "the client assertion was refused: {why}"
                    ))),
                    Err(AssertionError::Unavailable(why)) => Err(Failure::Unavailable(why)),
                }
            }
        }
    }

    /// RFC 8693: a login; a new family (its id is the `sid`).
    async fn exchange(
        &self,
        client: &ServedClient,
        subject_token: &str,
        subject_token_type: &str,
        audiences: &[String],
        claims: Option<&str>,
    ) -> Result<Response, Failure> {
        let rules = &client.rules;
        let (subject, idp) = match subject_token_type {
            TOKEN_TYPE_SUBJECT => (rules.subject(subject_token)?, None),
            TOKEN_TYPE_ID_TOKEN => {
                let user = self.id_token_user(client, subject_token).await?;
                (user.subject, Some(user.issuer))
            }
            other => {
                return Err(OAuthError::invalid_request(format!(
                    "subject_token_type {other:?} is not supported: use {TOKEN_TYPE_SUBJECT} or {TOKEN_TYPE_ID_TOKEN}"
                ))
                .into());
            }
        };
        let audiences = rules.audiences(audiences)?;
        let mut claims = rules.claims(claims)?;
        // Which issuer vouched for the user: every access token of the login says so
        // (a workload can never set it, see `ClientRules::claims`).
        if let Some(idp) = idp {
            claims.insert(IDP_CLAIM.to_owned(), idp.into());
        }
        let now = self.state.clock.now();
        let started = refresh::start(
            rules.login(subject, audiences, claims),
            now,
            &mut SystemEntropy,
        )
        .map_err(|e| match e {
            refresh::StartError::Entropy(e) => Failure::Unavailable(e.to_string()),
            refresh::StartError::Lifetimes(e) => {
                Failure::Server(format!("TokenClient {}: {e}", rules.client))
            }
        })?;
        // A subject revoked up to an instant still to come gets no session until then.
        let revocations = self.state.registry.revocations();
        if rules::family_revoked(&revocations, &client.key, &started.family, now) {
            return Err(invalid_grant(
                "a Revocation in force refuses this subject's tokens: no session is started",
            ));
        }
        drop(revocations);
        let access = self.sign(client, &started.family, &started.family.access(), now)?;
        self.endpoint.store.create(&started.family).await?;
        let metrics = &self.state.metrics.tokens;
        metrics.issued(&rules.client, "token_exchange");
        metrics.request("issued");
        Ok(tokens(
            &access,
            Some(TOKEN_TYPE_ACCESS),
            expires_in(&started.family.access(), rules.access_lifetime, now),
            &started.token,
            client.delivery,
            session_left(&started.family, now),
        ))
    }

    /// The user of an external issuer's ID token, verified as AuthPolicies verify that
    /// issuer's tokens. A kid no key has may be a key the issuer just rotated in: its
    /// keys are fetched again (rate-limited per issuer) and the token checked once more.
    async fn id_token_user(
        &self,
        client: &ServedClient,
        token: &str,
    ) -> Result<IdTokenSubject, Failure> {
        let issuers = &client.id_tokens;
        let verify = || issuers.verify(token, self.state.clock.now(), &client.rules.client);
        let verified = match verify() {
            Err(IdTokenError::Refetch(_)) => {
                issuers.refetch(token).await;
                verify()
            }
            other => other,
        };
        verified.map_err(|error| {
            let issuer = unverified_claim(token, "iss").unwrap_or_default();
            Failure::Subject(error.refusal(&issuer, &client.rules.client))
        })
    }

    /// RFC 6749 §6: rotation, the grace's replay, reuse.
    async fn refresh(&self, client: &ServedClient, presented: &str) -> Result<Response, Failure> {
        let Ok(token) = RefreshToken::parse(presented) else {
            return Err(invalid_grant(
                "the refresh token is not one authplane issued",
            ));
        };
        let now = self.state.clock.now();
        let rotations = &self.endpoint.rotations;
        let budget = self.endpoint.budget(client);
        // An Arc, not the guard: it is held across the store's awaits.
        let revocations = Arc::clone(&self.state.registry.revocations());
        let refreshed = crate::tokens::refresh_admitted(
            &*self.endpoint.store,
            &token,
            crate::tokens::Presenter {
                client: &client.rules.client,
                issuer: &self.issuer.issuer,
                sessions: self.endpoint.sessions_under(&client.key),
            },
            now,
            &mut SystemEntropy,
            &|family| rules::family_revoked(&revocations, &client.key, family, now),
            &|family| {
                let id = family.id.clone();
                Box::pin(async move { rotations.take_within(&id, budget).await })
            },
        )
        .await;
        // The store knows the token as this client's (whatever it answers now): the
        // request is the client's. Unknown tokens and other clients' prove nothing.
        if !matches!(
            refreshed,
            Err(RefreshError::Unknown
                | RefreshError::Refused(refresh::Refused::OtherClient)
                | RefreshError::Store(_)
                | RefreshError::Contended(_))
        ) {
            self.prove(client);
        }
        match refreshed {
            Ok(Refreshed::Pair {
                family,
                token,
                access,
                rotated,
            }) => {
                let signed = self.sign(client, &family, &access, now)?;
                let metrics = &self.state.metrics.tokens;
                if rotated {
                    metrics.issued(&client.rules.client, "refresh_token");
                    metrics.request("issued");
                } else {
                    metrics.request("replayed");
                }
                Ok(tokens(
                    &signed,
                    None,
                    expires_in(&access, client.rules.access_lifetime, now),
                    &token,
                    client.delivery,
                    session_left(&family, now),
                ))
            }
            Ok(Refreshed::Reuse { family }) => {
                self.state.metrics.tokens.reuse(&family.client);
                tracing::warn!(
                    client = family.client.as_str(),
                    family = family.id.as_str(),
                    client_address = %self
                        .client_address
                        .map_or_else(|| "unknown".to_owned(), |a| a.to_string()),
                    "refresh token reuse: the session is revoked"
                );
                // `compromised`: a superseded token came back, so someone else holds it.
                self.revoke_session(&family, now).await;
                Err(invalid_grant(
                    "the refresh token was already used: its session is revoked (log in again)",
                ))
            }
            Err(RefreshError::Unknown) => Err(invalid_grant(
                "the refresh token is unknown, or its session has ended (log in again)",
            )),
            Err(RefreshError::Refused(refused)) => match refused {
                refresh::Refused::Entropy => Err(Failure::Unavailable(refused.to_string())),
                refresh::Refused::Inconsistent { .. } => Err(Failure::Server(refused.to_string())),
                // Another client learns nothing about the family.
                refresh::Refused::OtherClient => Err(invalid_grant(
                    "the refresh token is unknown, or its session has ended (log in again)",
                )),
                other => Err(invalid_grant(other.to_string())),
            },
            Err(RefreshError::Store(e)) => Err(e.into()),
            Err(e @ RefreshError::Contended(_)) => Err(Failure::Unavailable(e.to_string())),
            Err(RefreshError::Limited(wait)) => Err(Failure::Limited(wait)),
        }
    }

    /// Ends the session of a family this refresh revoked for reuse, so that its access
    /// tokens are refused at every gateway. The store recorded it with the family's write
    /// when it keeps a log of ended sessions; otherwise it is written as a Revocation. A
    /// failure is logged: the family itself is revoked in the store already, so no
    /// refresh works; its access tokens then live out their lifetime.
    async fn revoke_session(&self, family: &Family, now: Timestamp) {
        if self.endpoint.sessions.is_some() {
            self.state.metrics.tokens.session_revocations_recorded.inc();
            return;
        }
        let revocation =
            session_revocation(self.issuer, &family.id, SessionEnd::Reuse.label(), now);
        if let Err(e) = self.endpoint.writer.create(revocation).await {
            tracing::error!(
                client = family.client.as_str(),
                family = family.id.as_str(),
                error = %e,
                "the session of a reused refresh token could not be revoked; its access tokens stay valid until they expire"
            );
        }
    }

    /// The access token of `grant`, signed by the Active key of the client's SigningKey.
    fn sign(
        &self,
        client: &ServedClient,
        family: &Family,
        grant: &AccessGrant,
        now: Timestamp,
    ) -> Result<String, Failure> {
        let Some(keys) = self.state.registry.signer(&client.key) else {
            return Err(Failure::Unavailable(format!(
                "SigningKey {} has no keys loaded",
                client.key
            )));
        };
        let claims = rules::access_claims(family, grant, client.rules.access_lifetime);
        crate::token::sign(&keys, &claims, now)
            .map_err(|e| Failure::Unavailable(format!("SigningKey {}: {e}", client.key)))
    }
}

/// Ends the session `sid` of `issuer`'s tokens at `now`: in the store's log of ended
/// sessions (every replica follows it), or, when there is none or it cannot be written
/// (the store is down), as a Revocation object (a logout must not be lost to a store
/// outage).
pub async fn end_session(
    endpoint: &TokenEndpoint,
    metrics: &crate::tokens::metrics::TokenMetrics,
    issuer: &PublishedIssuer,
    sid: &str,
    reason: SessionEnd,
    now: Timestamp,
) -> Result<(), String> {
    if let Some(log) = &endpoint.sessions {
        let key = ObjectKey {
            namespace: issuer.namespace.clone(),
            name: issuer.name.clone(),
        };
        let ended = SessionRevocation::new(key, sid, reason, now);
        let recorded = tokio::time::timeout(
            crate::tokens::serving::STORE_DEADLINE,
            log.record(&ended, now),
        )
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "the token store did not record an ended session in time".into(),
            ))
        });
        match recorded {
            Ok(()) => {
                metrics.session_revocations_recorded.inc();
                return Ok(());
            }
            Err(e) => tracing::warn!(
                issuer = issuer.issuer.as_str(),
                error = %e,
                "an ended session could not be kept in the token store: written as a Revocation instead"
            ),
        }
    }
    let revocation = session_revocation(issuer, sid, reason.label(), now);
    endpoint
        .writer
        .create(revocation)
        .await
        .map_err(|e| e.to_string())
}

/// A Revocation of the session `sid` of `issuer`'s tokens, named as `/revoke` names a
/// session's (so that a logout by access token and one by refresh token are the same
/// object). It lapses as every session Revocation does: once no token issued before it
/// can pass any policy.
pub fn session_revocation(
    issuer: &PublishedIssuer,
    sid: &str,
    reason: &str,
    now: Timestamp,
) -> Revocation {
    let hash = digest(&SHA256, format!("{}\0sid\0{sid}", issuer.issuer).as_bytes());
    let suffix: String = hash.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let second = |t: Timestamp| Timestamp::from_second(t.as_second()).unwrap_or(t);
    Revocation {
        metadata: ObjectMeta {
            name: Some(format!("logout-session-{suffix}")),
            namespace: Some(issuer.namespace.clone()),
            creation_timestamp: Some(Time(second(now))),
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_owned(),
                    "authplane".to_owned(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        spec: RevocationSpec {
            signing_key_ref: Some(RevokedKeyRef {
                name: issuer.name.clone(),
                namespace: Some(issuer.namespace.clone()),
            }),
            session_id: Some(sid.to_owned()),
            reason: Some(reason.to_owned()),
            // The family is revoked in the store already (no refresh works): the
            // Revocation only has to outlive its access tokens, at most the longest
            // lifetime a TokenClient may give them plus any policy's leeway. Without it a
            // logout's Revocation would live as long as the longest refresh family of
            // the key (a week by default), one per logout.
            expires_at: Some(Time(second(add(
                now,
                crate::revocation::sessions::SESSION_REVOCATION_LIFETIME,
            )))),
            ..RevocationSpec::default()
        },
        status: None,
    }
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| {
            t.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// Seconds a family's refresh tokens may still work at `now`.
fn session_left(family: &Family, now: Timestamp) -> i64 {
    family.expires_at.as_second() - now.as_second()
}

/// Seconds the access token of `grant` still lives at `now`.
fn expires_in(grant: &AccessGrant, lifetime: SignedDuration, now: Timestamp) -> i64 {
    (add(grant.issued_at, lifetime).as_second() - now.as_second()).max(0)
}

/// RFC 6749 §5.1 (and RFC 8693 §2.2.1 with `issued_token_type`).
/// With `Delivery::Cookie`, the refresh token is in the cookie (living as long as its
/// session has left) and not in the body.
fn tokens(
    access: &str,
    issued_token_type: Option<&str>,
    expires_in: i64,
    refresh_token: &RefreshToken,
    delivery: Delivery,
    session_left: i64,
) -> Response {
    let mut body = json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": expires_in,
    });
    if delivery == Delivery::Body {
        body["refresh_token"] = refresh_token.expose().into();
    }
    if let Some(kind) = issued_token_type {
        body["issued_token_type"] = kind.into();
    }
    let mut response = no_store(axum::Json(body).into_response());
    if delivery == Delivery::Cookie
        && let Some(cookie) = refresh_cookie::set(refresh_token, session_left)
    {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

fn oauth_error(error: &OAuthError) -> Response {
    let status = StatusCode::from_u16(error.code.status()).unwrap_or(StatusCode::BAD_REQUEST);
    no_store((status, axum::Json(error.body())).into_response())
}

fn unavailable(description: &str) -> Response {
    let body = json!({"error": "temporarily_unavailable", "error_description": description});
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    no_store(response)
}

fn slow_down(wait: u64, description: &str) -> Response {
    let body = json!({"error": "slow_down", "error_description": description});
    let mut response = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(wait));
    no_store(response)
}

fn server_error() -> Response {
    let body = json!({"error": "server_error", "error_description": "the server could not answer; this is logged"});
    no_store((StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body)).into_response())
}

/// What a refresh token presented to `POST {issuer}/revoke` comes to (RFC 7009).
pub enum Logout {
    /// The family is revoked (now, or before), its session is the given issuer's: end
    /// it (unless the store recorded that with the family) and answer once it is in
    /// force.
    Revoke(Box<(Revocation, crate::tokens::Ended, Arc<PublishedIssuer>)>),
    /// Unknown, another client's, or of an issuer no longer published (its family is
    /// ended, and no key verifies its access tokens): 200, nothing more to do.
    Nothing,
    /// The request cannot be answered: the client's fault (an OAuth error) ...
    Refused(OAuthError),
    /// ... or the store's (503).
    Unavailable(String),
}

/// Logout with a refresh token of `client_id` on `issuer`: its family revoked in the
/// store. The caller writes the session's Revocation.
pub async fn logout(
    state: &AppState,
    issuer: &Arc<PublishedIssuer>,
    token: &RefreshToken,
    client_id: Option<&str>,
) -> Logout {
    let Some(endpoint) = &state.token else {
        return Logout::Refused(OAuthError::new(
            ErrorCode::UnsupportedTokenType,
            "refresh tokens are not served here (the token endpoint is off)",
        ));
    };
    let Some(client_id) = client_id else {
        return Logout::Refused(OAuthError::invalid_request(
            "client_id is missing: a refresh token is revoked by the client it was issued to",
        ));
    };
    let clients = state.registry.token_clients();
    let served = clients.get(client_id).is_some_and(|client| {
        client.key.namespace == issuer.namespace && client.key.name == issuer.name
    });
    if !served {
        return Logout::Refused(OAuthError::new(
            ErrorCode::InvalidClient,
            format!("no TokenClient {client_id:?} is served on this issuer"),
        ));
    }
    let now = state.clock.now();
    // The issuer a family was issued by: this one, or the client's earlier one (its
    // SigningKey changed since), whose key signed the family's access tokens. An issuer no
    // longer published verifies none of them: the family's end is all there is to do.
    // Only a key of the client's namespace can be it: a tenant's logout must not write
    // under another namespace's key that serves the earlier issuer's URL since.
    let owner_of = |family: &Family| -> Option<Arc<PublishedIssuer>> {
        if family.issuer == issuer.issuer {
            return Some(Arc::clone(issuer));
        }
        state
            .registry
            .load()
            .issuer_of_namespace(&issuer.namespace, &family.issuer)
            .cloned()
    };
    let sessions_of = |family: &Family| {
        endpoint.sessions.as_ref()?;
        owner_of(family).map(|owner| ObjectKey {
            namespace: owner.namespace.clone(),
            name: owner.name.clone(),
        })
    };
    match crate::tokens::logout(&*endpoint.store, token, client_id, &sessions_of, now).await {
        Ok(Some(ended)) => {
            let Some(owner) = owner_of(&ended.family) else {
                return Logout::Nothing;
            };
            let revocation = session_revocation(&owner, &ended.family.id, "logout", now);
            Logout::Revoke(Box::new((revocation, ended, owner)))
        }
        Ok(None) => Logout::Nothing,
        Err(e) => Logout::Unavailable(e.to_string()),
    }
}
