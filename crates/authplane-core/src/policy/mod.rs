//! AuthPolicy compiled into an immutable, ready-to-evaluate form, and the decision for
//! one request. Pure: the request's headers and the time go in, a decision comes out.

pub mod audit;
pub mod cache;
pub mod challenge;
pub mod claims;
pub mod legacy;
pub mod lifetime;
pub mod progression;
pub mod remote;
pub mod request;
pub mod rollout;
pub mod verify;

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use jiff::Timestamp;

use crate::api::{
    AuthPolicy, AuthPolicyStatus, ClaimRequirement, Mode, ObjectKey, TargetRef, TargetStatus,
    TokenReviewSpec,
};
use crate::keys::lifecycle::KeySet;
use crate::revocation::{RevocationSet, TokenFacts};
use audit::AuditCounters;
use cache::{DecisionCache, Identity};
use challenge::Challenges;
use legacy::LegacySessions;
use progression::Schedule;
use remote::{Health, RemoteIssuers};
use verify::{Claims, Verifier, VerifyKey};

/// Why a token is not good enough. Each has a stable machine-readable reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Rejection {
    MissingToken,
    TooLarge,
    Malformed,
    UnsupportedCrit,
    UnknownKid,
    AlgNotAllowed,
    BadSignature,
    MissingExp,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    InvalidClaims,
    IssuerUnavailable,
    /// A valid token without a required claim (403, not 401).
    InsufficientScope,
    /// A valid token that a Revocation names.
    TokenRevoked,
    /// `exp - iat` exceeds the longest lifetime accepted from the token's issuer.
    TokenLifetimeTooLong,
    /// No `iat` while the token's issuer has a lifetime limit.
    MissingIat,
    /// `iat` later than now plus the leeway.
    IatInFuture,
}

impl Rejection {
    /// Every rejection, in declaration order (checked by a test).
    pub const ALL: [Rejection; 19] = [
        Rejection::MissingToken,
        Rejection::TooLarge,
        Rejection::Malformed,
        Rejection::UnsupportedCrit,
        Rejection::UnknownKid,
        Rejection::AlgNotAllowed,
        Rejection::BadSignature,
        Rejection::MissingExp,
        Rejection::Expired,
        Rejection::NotYetValid,
        Rejection::WrongIssuer,
        Rejection::WrongAudience,
        Rejection::InvalidClaims,
        Rejection::IssuerUnavailable,
        Rejection::InsufficientScope,
        Rejection::TokenRevoked,
        Rejection::TokenLifetimeTooLong,
        Rejection::MissingIat,
        Rejection::IatInFuture,
    ];

    pub fn reason(self) -> &'static str {
        match self {
            Rejection::MissingToken => "missing_token",
            Rejection::TooLarge => "token_too_large",
            Rejection::Malformed => "malformed_token",
            Rejection::UnsupportedCrit => "unsupported_crit",
            Rejection::UnknownKid => "unknown_kid",
            Rejection::AlgNotAllowed => "alg_not_allowed",
            Rejection::BadSignature => "bad_signature",
            Rejection::MissingExp => "missing_exp",
            Rejection::Expired => "expired",
            Rejection::NotYetValid => "not_yet_valid",
            Rejection::WrongIssuer => "wrong_issuer",
            Rejection::WrongAudience => "wrong_audience",
            Rejection::InvalidClaims => "invalid_claims",
            Rejection::IssuerUnavailable => "issuer_unavailable",
            Rejection::InsufficientScope => "insufficient_scope",
            Rejection::TokenRevoked => "token_revoked",
            Rejection::TokenLifetimeTooLong => "token_lifetime_too_long",
            Rejection::MissingIat => "missing_iat",
            Rejection::IatInFuture => "iat_in_future",
        }
    }

    /// For humans, in `error_description`. Never echoes the token.
    pub fn description(self) -> &'static str {
        match self {
            Rejection::MissingToken => "no token in the request",
            Rejection::TooLarge => "the token is too large",
            Rejection::Malformed => "the token is not a well-formed JWT",
            Rejection::UnsupportedCrit => "the token requires an unsupported extension (crit)",
            Rejection::UnknownKid => "the token was not signed by a known key",
            Rejection::AlgNotAllowed => "the token's algorithm is not the key's algorithm",
            Rejection::BadSignature => "the token's signature is invalid",
            Rejection::MissingExp => "the token has no expiry (exp)",
            Rejection::Expired => "the token has expired",
            Rejection::NotYetValid => "the token is not valid yet (nbf)",
            Rejection::WrongIssuer => "the token's issuer is not accepted",
            Rejection::WrongAudience => "the token's audience is not accepted",
            Rejection::InvalidClaims => {
                "a registered claim has the wrong type, or a forwarded claim holds a control character"
            }
            Rejection::IssuerUnavailable => "the policy's issuer is not available",
            Rejection::InsufficientScope => "the token lacks a required claim",
            Rejection::TokenRevoked => "the token has been revoked",
            Rejection::TokenLifetimeTooLong => "the token lives longer than the policy allows",
            Rejection::MissingIat => "the token has no issue time (iat)",
            Rejection::IatInFuture => "the token's issue time (iat) is in the future",
        }
    }
}

/// Where tokens are read from.
enum TokenSource {
    Header {
        name: HeaderName,
        prefix: Option<String>,
    },
    Cookie(String),
}

enum BucketKey {
    Claim(String),
    Header(HeaderName),
    Cookie(String),
}

/// The outcome for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Mode Disabled: nothing checked.
    Disabled,
    /// A valid token with every required claim.
    Allow,
    /// Refused: 401, or 403 for [`Rejection::InsufficientScope`].
    Deny(Rejection),
    /// Outside enforcement: passes, but would have been refused. No identity.
    WouldDeny(Rejection),
    /// Outside enforcement without a valid token, passing on the legacy session cookie.
    /// No identity.
    LegacySession(Rejection),
}

impl Verdict {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Disabled => "disabled",
            Verdict::Allow => "allow",
            Verdict::Deny(_) => "deny",
            Verdict::WouldDeny(_) => "would_deny",
            Verdict::LegacySession(_) => "legacy_session",
        }
    }

    /// A distinct number per (decision, reason) pair, below [`METER_SLOTS`].
    fn meter_slot(&self) -> usize {
        let kind = match self {
            Verdict::Disabled => 0,
            Verdict::Allow => 1,
            Verdict::Deny(_) => 2,
            Verdict::WouldDeny(_) => 3,
            Verdict::LegacySession(_) => 4,
        };
        let reason = self.rejection().map_or(REASONS - 1, |r| r as usize);
        kind * REASONS + reason
    }

    pub fn rejection(&self) -> Option<Rejection> {
        match self {
            Verdict::Deny(r) | Verdict::WouldDeny(r) | Verdict::LegacySession(r) => Some(*r),
            Verdict::Disabled | Verdict::Allow => None,
        }
    }
}

/// Rejection reasons plus "none"; a reason's meter slot is its discriminant.
const REASONS: usize = Rejection::ALL.len() + 1;
pub const METER_SLOTS: usize = 5 * REASONS;

pub struct Decision {
    pub verdict: Verdict,
    /// The headers to answer besides the verdict's own. On every request that passes,
    /// each `forwardClaims` header: its verified value when every check passed
    /// ([`Verdict::Allow`]), else the empty value, so that a gateway which only copies
    /// what authplane answers still overwrites a copy the client wrote. On a legacy
    /// session pass, `Deprecation` and `Sunset` too. Nothing on a refusal.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Outside enforcement: counted for the deny ratio of a stepped rollout.
    pub audited: bool,
}

/// Where the decisions of one policy are counted: the runtime's metrics, behind a trait
/// so that the core does not depend on them.
pub trait DecisionMeters: Send + Sync {
    /// One decision; `slot` is [`Verdict`]'s number for the (decision, reason) pair, below
    /// [`METER_SLOTS`], so that an implementation can keep a counter per pair.
    fn record(&self, slot: usize, decision: &'static str, reason: &'static str, seconds: f64);
    /// One request decided outside enforcement (audited), and whether it would have been
    /// refused: the traffic `pauseAboveDenyRatio` measures.
    fn audited(&self, would_deny: bool) {
        let _ = would_deny;
    }
    /// A lookup in the verified-token cache.
    fn cache_hit(&self, hit: bool);
    /// When the policy's legacy sessions stop passing (`legacySession.until`), as it was
    /// compiled: `None` when they do not end (or there are none).
    fn legacy_sessions_end(&self, until: Option<Timestamp>) {
        let _ = until;
    }
}

/// What outlives one compiled form of a policy: its meters and audit counters.
pub struct PolicyStats {
    pub audit: AuditCounters,
    pub meters: Box<dyn DecisionMeters>,
}

impl PolicyStats {
    pub fn new(meters: Box<dyn DecisionMeters>) -> Self {
        Self {
            audit: AuditCounters::default(),
            meters,
        }
    }

    pub fn record(&self, decision: &Decision, seconds: f64) {
        let verdict = &decision.verdict;
        let reason = verdict.rejection().map_or("", Rejection::reason);
        self.meters
            .record(verdict.meter_slot(), verdict.label(), reason, seconds);
        if decision.audited {
            let would_deny = verdict.rejection().is_some();
            self.audit.record(would_deny);
            self.meters.audited(would_deny);
        }
    }
}

/// What compiling needs besides the policy: external issuers, the shared cache, and
/// the stats of the policy.
pub struct CompileContext<'a> {
    pub external: Option<&'a dyn RemoteIssuers>,
    pub cache: Option<Arc<DecisionCache>>,
    pub stats: Option<Arc<PolicyStats>>,
    /// The cache epoch; a new one when `None`. Reusing one keeps cached verifications,
    /// so it must change with anything that changes what verifies.
    pub epoch: Option<u64>,
}

/// The public keys of one SigningKey, as the registry knows them.
pub struct IssuerKeys<'a> {
    pub issuer: &'a str,
    pub keys: &'a KeySet,
    /// The SigningKey's `maxTokenLifetime`: the longest its tokens may live.
    pub max_token_lifetime: jiff::SignedDuration,
}

pub struct CompiledPolicy {
    pub namespace: String,
    pub name: String,
    pub mode: Mode,
    /// The enforced percentage over time (stepped rollouts), capped by the spec's.
    schedule: Schedule,
    /// Buckets under enforcement per schedule entry.
    enforced: Vec<(Timestamp, u32)>,
    salt: String,
    bucket_by: BucketKey,
    sources: Vec<TokenSource>,
    legacy: Option<LegacySessions>,
    verifier: Verifier,
    /// The issuer of each SigningKey the policy resolved: a verified `iss` names the
    /// SigningKey whose Revocations apply.
    key_issuers: Vec<(Arc<str>, ObjectKey)>,
    requirements: Vec<ClaimRequirement>,
    forward: Vec<(String, HeaderName)>,
    pub token_review: TokenReviewSpec,
    /// SigningKeys the policy names that do not exist (`namespace/name`).
    pub unresolved: Vec<String>,
    generation: Option<i64>,
    targets: Vec<TargetRef>,
    epoch: u64,
    cache: Option<Arc<DecisionCache>>,
    pub stats: Option<Arc<PolicyStats>>,
    /// The recorded progression of a stepped rollout, as compiled.
    pub progress: Option<crate::api::RolloutProgress>,
    /// A stepped rollout with a deny-ratio rule: audited requests are counted.
    counts_audits: bool,
    /// The `WWW-Authenticate` challenge of each refusal.
    pub challenges: Challenges,
}

impl CompiledPolicy {
    /// Compiles a validated policy without external issuers, cache or stats (tools,
    /// benchmarks).
    pub fn compile<'a>(
        policy: &AuthPolicy,
        resolve: impl Fn(&ObjectKey) -> Option<IssuerKeys<'a>>,
    ) -> Self {
        Self::compile_with(
            policy,
            resolve,
            CompileContext {
                external: None,
                cache: None,
                stats: None,
                epoch: None,
            },
        )
    }

    /// Compiles a validated policy. `resolve` finds a SigningKey's issuer and keys.
    pub fn compile_with<'a>(
        policy: &AuthPolicy,
        resolve: impl Fn(&ObjectKey) -> Option<IssuerKeys<'a>>,
        context: CompileContext<'_>,
    ) -> Self {
        let id = ObjectKey::of(&policy.metadata);
        let spec = &policy.spec;
        let mut verifier = Verifier::new(spec.audiences.clone(), spec.leeway.value().as_secs());
        let mut unresolved = Vec::new();
        let mut key_issuers = Vec::new();
        for issuer in &spec.issuers {
            if let Some(config) = remote::external_config(issuer) {
                match context.external {
                    Some(external) => verifier.add_external(
                        external.get(&config),
                        lifetime::accepted(spec, issuer, None),
                    ),
                    None => {
                        unresolved.push(config.issuer.clone());
                        verifier.mark_incomplete();
                    }
                }
                continue;
            }
            let Some(key_id) = issuer.signing_key_id(&id.namespace) else {
                continue;
            };
            let Some(found) = resolve(&key_id) else {
                unresolved.push(key_id.to_string());
                verifier.mark_incomplete();
                continue;
            };
            let limit = lifetime::accepted(spec, issuer, Some(found.max_token_lifetime))
                .unwrap_or(found.max_token_lifetime);
            let issuer: Arc<str> = Arc::from(found.issuer);
            key_issuers.push((issuer.clone(), key_id.clone()));
            for record in found.keys.records() {
                let material = &record.material;
                match VerifyKey::new(issuer.clone(), material.public_jwk(), material.alg()) {
                    Ok(key) => verifier.add_key(material.kid(), key.with_max_lifetime(limit)),
                    Err(e) => tracing::error!(
                        "AuthPolicy {id}: key {} of {key_id} unusable: {e}",
                        material.kid()
                    ),
                }
            }
        }
        let mut sources: Vec<TokenSource> = spec
            .token_sources
            .headers
            .iter()
            .filter_map(|h| {
                Some(TokenSource::Header {
                    name: HeaderName::from_bytes(h.name.as_bytes()).ok()?,
                    prefix: h.prefix.clone(),
                })
            })
            .collect();
        sources.extend(
            spec.token_sources
                .cookies
                .iter()
                .cloned()
                .map(TokenSource::Cookie),
        );
        let bucket_by = match (
            &spec.rollout.bucket_by.header,
            &spec.rollout.bucket_by.cookie,
        ) {
            (Some(h), _) => HeaderName::from_bytes(h.as_bytes())
                .map(BucketKey::Header)
                .unwrap_or_else(|_| BucketKey::Claim("sub".into())),
            (None, Some(c)) => BucketKey::Cookie(c.clone()),
            (None, None) => BucketKey::Claim(
                spec.rollout
                    .bucket_by
                    .claim
                    .clone()
                    .unwrap_or_else(|| "sub".into()),
            ),
        };
        let progress = policy.status.as_ref().and_then(|s| s.rollout.clone());
        let schedule = Schedule::of(&spec.rollout, progress.as_ref());
        let legacy = spec.legacy_session.as_ref().map(LegacySessions::new);
        if let Some(stats) = &context.stats {
            stats
                .meters
                .legacy_sessions_end(legacy.as_ref().and_then(LegacySessions::until));
        }
        CompiledPolicy {
            namespace: id.namespace.clone(),
            name: id.name.clone(),
            mode: spec.rollout.mode,
            enforced: schedule
                .entries
                .iter()
                .map(|(from, p)| (*from, rollout::percentage_to_buckets(*p)))
                .collect(),
            schedule,
            salt: spec.rollout.salt.clone().unwrap_or_else(|| id.to_string()),
            bucket_by,
            sources,
            legacy,
            verifier,
            key_issuers,
            requirements: spec.required_claims.clone(),
            forward: spec
                .forward_claims
                .iter()
                .filter_map(|(claim, h)| {
                    Some((claim.clone(), HeaderName::from_bytes(h.as_bytes()).ok()?))
                })
                .collect(),
            token_review: spec.token_review.clone(),
            unresolved,
            generation: policy.metadata.generation,
            targets: spec.target_refs.clone(),
            epoch: context.epoch.unwrap_or_else(cache::next_epoch),
            counts_audits: context.stats.is_some()
                && !spec.rollout.steps.is_empty()
                && spec.rollout.pause_above_deny_ratio.is_some(),
            cache: context.cache,
            stats: context.stats,
            progress,
            challenges: Challenges::new(&id.to_string()),
        }
    }

    /// The `metadata.generation` of the policy this was compiled from.
    pub fn generation(&self) -> Option<i64> {
        self.generation
    }

    /// Buckets under enforcement at `now`.
    fn enforced_buckets(&self, now: Timestamp) -> u32 {
        self.enforced
            .iter()
            .rev()
            .find(|(from, _)| *from <= now)
            .map_or(0, |(_, b)| *b)
    }

    /// Share of users under enforcement at `now`.
    pub fn effective_percentage(&self, now: Timestamp) -> f64 {
        match self.mode {
            Mode::Enforce => f64::from(self.enforced_buckets(now)) / 1000.0,
            Mode::Disabled | Mode::Audit => 0.0,
        }
    }

    /// Whether a token with an unknown kid could belong to an external issuer whose keys
    /// may have rotated.
    pub fn has_external_issuers(&self) -> bool {
        !self.verifier.external().is_empty()
    }

    /// Refetches external key sets after an unknown kid (rate-limited per issuer). True
    /// when any set was fetched, so deciding again may give another answer.
    pub async fn refetch_external(&self) -> bool {
        let fetches = self
            .verifier
            .external()
            .iter()
            .map(|issuer| issuer.refetch_for_unknown_kid());
        futures::future::join_all(fetches)
            .await
            .into_iter()
            .any(|fetched| fetched)
    }

    /// When [`CompiledPolicy::status`] changes next by the passing of time alone (the
    /// legacy session's end approaching, then reached), for a driver to report it then.
    /// Stepped rollouts have their own schedule ([`progression`]).
    pub fn next_status_change(&self, now: Timestamp) -> Option<Timestamp> {
        self.legacy.as_ref()?.next_change(now)
    }

    /// The legacy session's end, if it has one.
    pub fn legacy_session_until(&self) -> Option<Timestamp> {
        self.legacy.as_ref()?.until()
    }

    /// The status a driver reports. `found` tells whether a target exists (`None`: not
    /// known, as in dev mode).
    pub fn status(
        &self,
        base_url: &str,
        now: Timestamp,
        found: impl Fn(&TargetRef) -> Option<bool>,
    ) -> AuthPolicyStatus {
        let condition = |kind: &str, ok: bool, reason: &str, message: String| {
            crate::api::condition(kind, ok, reason, message, self.generation, now)
        };
        let external: Vec<(&str, Health)> = self
            .verifier
            .external()
            .iter()
            .map(|i| (i.config().issuer.as_str(), i.health(now)))
            .collect();
        let unavailable: Vec<String> = external
            .iter()
            .filter_map(|(issuer, health)| match health {
                Health::Unavailable { error } => Some(format!("{issuer}: {error}")),
                _ => None,
            })
            .collect();
        let ready = if !self.unresolved.is_empty() {
            condition(
                "Ready",
                false,
                "SigningKeyNotFound",
                format!(
                    "SigningKey {} not found: requests under enforcement are refused",
                    self.unresolved.join(", ")
                ),
            )
        } else if !unavailable.is_empty() {
            condition(
                "Ready",
                false,
                "IssuerUnavailable",
                format!(
                    "no usable keys for {}: its tokens are refused",
                    unavailable.join("; ")
                ),
            )
        } else {
            condition(
                "Ready",
                true,
                "IssuersResolved",
                format!(
                    "{} verification keys, {} external issuers",
                    self.key_count(),
                    external.len()
                ),
            )
        };
        let mut conditions = vec![
            condition("Accepted", true, "Valid", "the spec is valid".to_owned()),
            ready,
        ];
        if !external.is_empty() {
            let stale: Vec<String> = external
                .iter()
                .filter_map(|(issuer, health)| match health {
                    Health::Stale { error, until, .. } => Some(format!(
                        "{issuer}: refresh failing ({error}); the last good keys serve until {until}"
                    )),
                    Health::Pending => Some(format!("{issuer}: first fetch pending")),
                    _ => None,
                })
                .collect();
            conditions.push(if stale.is_empty() && unavailable.is_empty() {
                condition(
                    "KeysFresh",
                    true,
                    "Refreshed",
                    "every external key set refreshed on time".to_owned(),
                )
            } else {
                let pending_only = unavailable.is_empty()
                    && external
                        .iter()
                        .all(|(_, h)| matches!(h, Health::Pending | Health::Fresh { .. }));
                let reason = if pending_only {
                    "FirstFetchPending"
                } else {
                    "RefreshFailing"
                };
                let mut problems = stale;
                problems.extend(unavailable.iter().cloned());
                condition("KeysFresh", false, reason, problems.join("; "))
            });
        }
        if let Some(legacy) = &self.legacy {
            let (passes, reason, message) = legacy.condition(now);
            conditions.push(condition(
                crate::api::conditions::LEGACY_SESSIONS_ACCEPTED,
                passes,
                reason,
                message,
            ));
        }
        let base = base_url.trim_end_matches('/');
        let mut status = AuthPolicyStatus {
            observed_generation: self.generation,
            conditions,
            targets: self
                .targets
                .iter()
                .map(|t| TargetStatus {
                    group: t.kind.is_gateway_api().then(|| t.kind.group().to_owned()),
                    kind: t.kind,
                    name: t.name.clone(),
                    section_name: t.section_name.clone(),
                    found: found(t),
                    ancestors: Vec::new(),
                    conditions: Vec::new(),
                })
                .collect(),
            forward_auth_url: Some(format!("{base}/authz/{}/{}", self.namespace, self.name)),
            token_review_url: Some(format!(
                "{base}/tokenreview/{}/{}",
                self.namespace, self.name
            )),
            ..AuthPolicyStatus::default()
        };
        progression::report(
            &mut status,
            self.mode,
            &self.schedule,
            self.progress.clone(),
            now,
        );
        status
    }

    /// How many of a passing [`Decision`]'s headers, from the front, are the identity
    /// (the `forwardClaims` headers); the rest are a legacy pass's notice.
    pub fn identity_header_count(&self) -> usize {
        self.forward.len()
    }

    /// The decision table of DESIGN.md for one forward-auth request. Claim headers carry
    /// values only when every check passed: a token that failed any of them (a revoked
    /// one, one without a required claim) is never an identity, in any bucket or mode.
    pub fn decide(
        &self,
        headers: &HeaderMap,
        now: Timestamp,
        revocations: &RevocationSet,
    ) -> Decision {
        if self.mode == Mode::Disabled {
            return self.decision(Verdict::Disabled, None, false);
        }
        let token = self.token(headers);
        let (claims, checked, identity) = self.check_identity(token, now, revocations);
        // A claim that cannot be a header value fails the token: dropping the header
        // would leave a client-written copy in place.
        let (identity, checked) = match (checked, identity) {
            (Ok(()), Ok(values)) => (Some(values), Ok(())),
            (Ok(()), Err(rejection)) | (Err(rejection), _) => (None, Err(rejection)),
        };
        let buckets = match self.mode {
            Mode::Enforce => self.enforced_buckets(now),
            Mode::Disabled | Mode::Audit => 0,
        };
        // An enforced user may be bucketed by a claim of a token that failed (an expired
        // or revoked one keeps its user enforced); that claim never becomes a header.
        let enforced = |claims: Option<&Claims>| {
            self.mode == Mode::Enforce && self.is_enforced(headers, token, claims, buckets)
        };
        let verdict = match checked {
            // Whether an allowed request was audited only matters to a stepped rollout's
            // deny ratio; skip the bucketing otherwise.
            Ok(()) => {
                let audited = self.counts_audits && !enforced(claims.as_deref());
                return self.decision(Verdict::Allow, identity, audited);
            }
            Err(rejection) if enforced(claims.as_deref()) => Verdict::Deny(rejection),
            // A valid token without a required claim is an authenticated user outside
            // enforcement: audited, as without `legacySession`, but not an identity.
            Err(rejection @ Rejection::InsufficientScope) => Verdict::WouldDeny(rejection),
            // Any other failure is no valid token, whatever the token was.
            Err(rejection) => match (&self.legacy, self.mode) {
                (Some(legacy), Mode::Enforce) => {
                    if legacy.admits(headers, now) {
                        Verdict::LegacySession(rejection)
                    } else {
                        Verdict::Deny(rejection)
                    }
                }
                _ => Verdict::WouldDeny(rejection),
            },
        };
        let audited = self.counts_audits && !matches!(verdict, Verdict::Deny(_));
        self.decision(verdict, None, audited)
    }

    /// A decision with its headers: the identity (each `forwardClaims` header, verified or
    /// empty) when it passes, and the legacy session's notice on a legacy pass.
    fn decision(
        &self,
        verdict: Verdict,
        identity: Option<Arc<[HeaderValue]>>,
        audited: bool,
    ) -> Decision {
        let mut headers = Vec::new();
        if !matches!(verdict, Verdict::Deny(_)) {
            let mut values = identity.iter().flat_map(|values| values.iter());
            headers.extend(self.forward.iter().map(|(_, name)| {
                let value = values.next().cloned().unwrap_or(EMPTY);
                (name.clone(), value)
            }));
        }
        if let (Verdict::LegacySession(_), Some(legacy)) = (&verdict, &self.legacy) {
            headers.extend(legacy.notice().iter().cloned());
        }
        Decision {
            verdict,
            headers,
            audited,
        }
    }

    /// The `forwardClaims` values of verified claims, in the order of `forward`: a claim
    /// the token lacks is the empty value; one that cannot be a header value fails.
    fn identity(&self, claims: &Claims) -> Identity {
        self.forward
            .iter()
            .map(|(claim, _)| match claims::lookup(claims, claim) {
                Some(value) => claims::header_value(value).map_err(|_| Rejection::InvalidClaims),
                None => Ok(EMPTY),
            })
            .collect()
    }

    /// Verifies a token, that no Revocation names it, and its required claims. The
    /// claims come back whenever the token itself verified (revoked or not).
    pub fn check(
        &self,
        token: Option<&str>,
        now: Timestamp,
        revocations: &RevocationSet,
    ) -> (Option<Arc<Claims>>, Result<(), Rejection>) {
        let (claims, checked, _) = self.check_identity(token, now, revocations);
        (claims, checked)
    }

    /// [`Self::check`], and the token's identity (its `forwardClaims` values), rendered
    /// when the token was verified and cached with it; meaningful only when the check
    /// passed.
    fn check_identity(
        &self,
        token: Option<&str>,
        now: Timestamp,
        revocations: &RevocationSet,
    ) -> (Option<Arc<Claims>>, Result<(), Rejection>, Identity) {
        let Some(token) = token else {
            let missing = Rejection::MissingToken;
            return (None, Err(missing), Err(missing));
        };
        // Revocations are read after the signature and on cache hits alike: the cache
        // holds verifications, never the absence of a revocation.
        let scope = |claims: &Claims, satisfied: bool| {
            if self.revoked(claims, revocations, now) {
                Err(Rejection::TokenRevoked)
            } else if satisfied {
                Ok(())
            } else {
                Err(Rejection::InsufficientScope)
            }
        };
        let cached = self.cache.as_ref().map(|cache| {
            let key = cache.key(self.epoch, token);
            let hit = cache.get(&key).filter(|entry| {
                now.as_second() <= entry.expires && self.still_current(entry.external.as_ref(), now)
            });
            if let Some(stats) = &self.stats {
                stats.meters.cache_hit(hit.is_some());
            }
            (cache, key, hit)
        });
        if let Some((_, _, Some(entry))) = &cached {
            return (
                Some(entry.claims.clone()),
                scope(&entry.claims, entry.satisfied),
                entry.identity.clone(),
            );
        }
        match self.verifier.verify(token, now) {
            Ok(verified) => {
                let satisfied = self.satisfied(&verified.claims);
                let identity = self.identity(&verified.claims);
                let claims = Arc::new(verified.claims);
                if let Some((cache, key, _)) = cached {
                    cache.insert(
                        key,
                        claims.clone(),
                        verified.expires,
                        satisfied,
                        verified.external,
                        identity.clone(),
                    );
                }
                let checked = scope(&claims, satisfied);
                (Some(claims), checked, identity)
            }
            Err(rejection) => (None, Err(rejection), Err(rejection)),
        }
    }

    /// Whether a Revocation in force names these verified claims under this policy.
    fn revoked(&self, claims: &Claims, revocations: &RevocationSet, now: Timestamp) -> bool {
        if revocations.is_empty() {
            return false;
        }
        let iss = claims.get("iss").and_then(serde_json::Value::as_str);
        let is_revoked = |key: Option<&ObjectKey>| {
            revocations.is_revoked(
                &self.namespace,
                &TokenFacts::of(claims, key),
                now.as_second(),
            )
        };
        // Several SigningKeys of this policy may carry one issuer (another team's key
        // published elsewhere under the same `iss`, or one let in while the webhook was
        // down): the Revocations of each count, so that no other key listed first can
        // shadow a key's revocations. A revocation never grants anything.
        let mut keys = self
            .key_issuers
            .iter()
            .filter(|(issuer, _)| Some(&**issuer) == iss)
            .map(|(_, key)| key)
            .peekable();
        if keys.peek().is_none() {
            return is_revoked(None);
        }
        keys.any(|key| is_revoked(Some(key)))
    }

    fn satisfied(&self, claims: &Claims) -> bool {
        self.requirements
            .iter()
            .all(|r| claims::satisfies(r, claims))
    }

    /// A cached verification by an external key set holds while that set is the
    /// issuer's current, usable one.
    fn still_current(
        &self,
        external: Option<&(usize, Arc<remote::ExternalKeys>)>,
        now: Timestamp,
    ) -> bool {
        let Some((index, set)) = external else {
            return true;
        };
        self.verifier
            .external()
            .get(*index)
            .and_then(|issuer| issuer.usable_keys(now))
            .is_some_and(|current| Arc::ptr_eq(&current, set))
    }

    /// The first token found in the configured sources. A value that cannot be read
    /// (not UTF-8, or without the prefix) is skipped, not the end of the search.
    pub fn token<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        self.sources.iter().find_map(|source| match source {
            TokenSource::Header { name, prefix } => {
                request::texts(headers, name).find_map(|value| {
                    let token = match prefix {
                        Some(prefix) => strip_prefix_ignore_case(value, prefix)?.trim(),
                        None => value,
                    };
                    (!token.is_empty()).then_some(token)
                })
            }
            TokenSource::Cookie(name) => request::cookie_text(headers, name),
        })
    }

    fn is_enforced(
        &self,
        headers: &HeaderMap,
        token: Option<&str>,
        claims: Option<&Claims>,
        buckets: u32,
    ) -> bool {
        if buckets >= rollout::BUCKETS {
            return true;
        }
        if buckets == 0 {
            return false;
        }
        self.bucket_key(headers, token, claims)
            .is_some_and(|key| rollout::is_enforced(rollout::bucket(&self.salt, &key), buckets))
    }

    fn bucket_key(
        &self,
        headers: &HeaderMap,
        token: Option<&str>,
        claims: Option<&Claims>,
    ) -> Option<String> {
        match &self.bucket_by {
            BucketKey::Claim(name) => match claims {
                Some(claims) => claims::lookup(claims, name)?.as_str().map(str::to_owned),
                None => verify::unverified_claim(token?, name),
            },
            BucketKey::Header(name) => request::texts(headers, name).next().map(str::to_owned),
            BucketKey::Cookie(name) => request::cookie_text(headers, name).map(str::to_owned),
        }
    }

    /// The bucket of a key under this policy, and whether it is enforced now.
    pub fn bucket_of(&self, key: &str, now: Timestamp) -> (u32, bool) {
        let bucket = rollout::bucket(&self.salt, key);
        let enforced =
            self.mode == Mode::Enforce && rollout::is_enforced(bucket, self.enforced_buckets(now));
        (bucket, enforced)
    }

    pub fn key_count(&self) -> usize {
        self.verifier.key_count()
    }
}

fn strip_prefix_ignore_case<'v>(value: &'v str, prefix: &str) -> Option<&'v str> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &value[prefix.len()..])
}

/// The value of a `forwardClaims` header without a verified identity.
const EMPTY: HeaderValue = HeaderValue::from_static("");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rejection_has_its_own_meter_slot() {
        for (i, rejection) in Rejection::ALL.iter().enumerate() {
            assert_eq!(*rejection as usize, i, "{rejection:?}: ALL is out of order");
            // A new variant stops this from compiling: add it here and to ALL.
            match rejection {
                Rejection::MissingToken
                | Rejection::TooLarge
                | Rejection::Malformed
                | Rejection::UnsupportedCrit
                | Rejection::UnknownKid
                | Rejection::AlgNotAllowed
                | Rejection::BadSignature
                | Rejection::MissingExp
                | Rejection::Expired
                | Rejection::NotYetValid
                | Rejection::WrongIssuer
                | Rejection::WrongAudience
                | Rejection::InvalidClaims
                | Rejection::IssuerUnavailable
                | Rejection::InsufficientScope
                | Rejection::TokenRevoked
                | Rejection::TokenLifetimeTooLong
                | Rejection::MissingIat
                | Rejection::IatInFuture => {}
            }
        }
        let slots: std::collections::HashSet<usize> = Rejection::ALL
            .iter()
            .flat_map(|r| {
                [
                    Verdict::Deny(*r),
                    Verdict::WouldDeny(*r),
                    Verdict::LegacySession(*r),
                ]
            })
            .chain([Verdict::Disabled, Verdict::Allow])
            .map(|v| v.meter_slot())
            .collect();
        assert_eq!(slots.len(), 3 * Rejection::ALL.len() + 2);
        assert!(slots.iter().all(|s| *s < METER_SLOTS));
    }
}
