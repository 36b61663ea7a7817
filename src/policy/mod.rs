//! AuthPolicy compiled into an immutable, ready-to-evaluate form, and the decision for
//! one request. Pure: the request's headers and the time go in, a decision comes out.

pub mod claims;
pub mod rollout;
pub mod verify;

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderName, header};
use jiff::Timestamp;

use crate::api::{
    AuthPolicy, AuthPolicyStatus, ClaimRequirement, Mode, ObjectKey, TargetRef, TargetStatus,
    TokenReviewSpec,
};
use crate::keys::lifecycle::KeySet;
use verify::{Claims, Verifier};

/// Why a token is not good enough. Each has a stable machine-readable reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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
}

impl Rejection {
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
            Rejection::InvalidClaims => "a registered claim has the wrong type",
            Rejection::IssuerUnavailable => "the policy's issuer is not available",
            Rejection::InsufficientScope => "the token lacks a required claim",
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
    /// Mode Off: nothing checked.
    Off,
    /// A valid token with every required claim.
    Allow,
    /// Refused: 401, or 403 for [`Rejection::InsufficientScope`].
    Deny(Rejection),
    /// Outside enforcement: passes, but would have been refused.
    WouldDeny(Rejection),
    /// Outside enforcement without a valid token, passing on the legacy session cookie.
    LegacySession(Rejection),
}

impl Verdict {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Off => "off",
            Verdict::Allow => "allow",
            Verdict::Deny(_) => "deny",
            Verdict::WouldDeny(_) => "would_deny",
            Verdict::LegacySession(_) => "legacy_session",
        }
    }

    pub fn rejection(&self) -> Option<Rejection> {
        match self {
            Verdict::Deny(r) | Verdict::WouldDeny(r) | Verdict::LegacySession(r) => Some(*r),
            Verdict::Off | Verdict::Allow => None,
        }
    }
}

pub struct Decision {
    pub verdict: Verdict,
    /// The verified claims, when the token verified (even if a required claim is missing).
    pub claims: Option<Claims>,
}

/// The public keys of one SigningKey, as the registry knows them.
pub struct IssuerKeys<'a> {
    pub issuer: &'a str,
    pub keys: &'a KeySet,
}

pub struct CompiledPolicy {
    pub namespace: String,
    pub name: String,
    pub mode: Mode,
    pub percentage: f64,
    enforced_buckets: u32,
    salt: String,
    bucket_by: BucketKey,
    sources: Vec<TokenSource>,
    legacy_cookie: Option<String>,
    verifier: Verifier,
    requirements: Vec<ClaimRequirement>,
    forward: Vec<(String, HeaderName)>,
    pub token_review: TokenReviewSpec,
    /// SigningKeys the policy names that do not exist (`namespace/name`).
    pub unresolved: Vec<String>,
    generation: Option<i64>,
    targets: Vec<TargetRef>,
}

impl CompiledPolicy {
    /// Compiles a validated policy. `resolve` finds a SigningKey's issuer and keys.
    pub fn compile<'a>(
        policy: &AuthPolicy,
        resolve: impl Fn(&ObjectKey) -> Option<IssuerKeys<'a>>,
    ) -> Self {
        let id = ObjectKey::of(&policy.metadata);
        let spec = &policy.spec;
        let mut verifier = Verifier::new(spec.audiences.clone(), spec.leeway.value().as_secs());
        let mut unresolved = Vec::new();
        for issuer in &spec.issuers {
            let reference = &issuer.signing_key_ref;
            let key_id = ObjectKey {
                namespace: reference
                    .namespace
                    .clone()
                    .unwrap_or_else(|| id.namespace.clone()),
                name: reference.name.clone(),
            };
            let Some(found) = resolve(&key_id) else {
                unresolved.push(key_id.to_string());
                verifier.mark_incomplete();
                continue;
            };
            let issuer: Arc<str> = Arc::from(found.issuer);
            for record in found.keys.records() {
                let material = &record.material;
                let jwk = material
                    .public_jwk()
                    .to_json(material.kid(), material.alg());
                let added = serde_json::from_value(jwk)
                    .map_err(|e| e.to_string())
                    .and_then(|jwk| {
                        verifier.add_key(&issuer, material.kid(), material.alg(), &jwk)
                    });
                if let Err(e) = added {
                    tracing::error!(
                        "AuthPolicy {id}: key {} of {key_id} unusable: {e}",
                        material.kid()
                    );
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
        CompiledPolicy {
            namespace: id.namespace.clone(),
            name: id.name.clone(),
            mode: spec.rollout.mode,
            percentage: spec.rollout.percentage,
            enforced_buckets: rollout::percentage_to_buckets(spec.rollout.percentage),
            salt: spec.rollout.salt.clone().unwrap_or_else(|| id.to_string()),
            bucket_by,
            sources,
            legacy_cookie: spec.legacy_session.as_ref().map(|l| l.cookie.clone()),
            verifier,
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
        }
    }

    /// The `metadata.generation` of the policy this was compiled from.
    pub fn generation(&self) -> Option<i64> {
        self.generation
    }

    /// Share of users under enforcement now.
    pub fn effective_percentage(&self) -> f64 {
        match self.mode {
            Mode::Enforce => f64::from(self.enforced_buckets) / 1000.0,
            Mode::Off | Mode::Audit => 0.0,
        }
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
        let ready = if self.unresolved.is_empty() {
            condition(
                "Ready",
                true,
                "IssuersResolved",
                format!("{} verification keys", self.key_count()),
            )
        } else {
            condition(
                "Ready",
                false,
                "SigningKeyNotFound",
                format!(
                    "SigningKey {} not found: requests under enforcement are refused",
                    self.unresolved.join(", ")
                ),
            )
        };
        let base = base_url.trim_end_matches('/');
        AuthPolicyStatus {
            observed_generation: self.generation,
            conditions: vec![
                condition("Accepted", true, "Valid", "the spec is valid".to_owned()),
                ready,
            ],
            effective_percentage: Some(self.effective_percentage()),
            targets: self
                .targets
                .iter()
                .map(|t| TargetStatus {
                    kind: t.kind,
                    name: t.name.clone(),
                    found: found(t),
                })
                .collect(),
            forward_auth_url: Some(format!("{base}/authz/{}/{}", self.namespace, self.name)),
            token_review_url: Some(format!(
                "{base}/tokenreview/{}/{}",
                self.namespace, self.name
            )),
        }
    }

    /// The decision table of DESIGN.md for one forward-auth request.
    pub fn decide(&self, headers: &HeaderMap, now: Timestamp) -> Decision {
        if self.mode == Mode::Off {
            return Decision {
                verdict: Verdict::Off,
                claims: None,
            };
        }
        let token = self.token(headers);
        let (claims, checked) = self.check(token, now);
        let verdict = match checked {
            Ok(()) => Verdict::Allow,
            Err(rejection)
                if self.mode == Mode::Enforce
                    && self.is_enforced(headers, token, claims.as_ref()) =>
            {
                Verdict::Deny(rejection)
            }
            Err(rejection) => match (&self.legacy_cookie, self.mode) {
                (Some(cookie), Mode::Enforce) if claims.is_none() => {
                    if cookie_value(headers, cookie).is_some() {
                        Verdict::LegacySession(rejection)
                    } else {
                        Verdict::Deny(rejection)
                    }
                }
                _ => Verdict::WouldDeny(rejection),
            },
        };
        Decision { verdict, claims }
    }

    /// Verifies a token and its required claims. The claims come back whenever the token
    /// itself verified.
    pub fn check(
        &self,
        token: Option<&str>,
        now: Timestamp,
    ) -> (Option<Claims>, Result<(), Rejection>) {
        let Some(token) = token else {
            return (None, Err(Rejection::MissingToken));
        };
        match self.verifier.verify(token, now) {
            Ok(claims) => {
                let satisfied = self
                    .requirements
                    .iter()
                    .all(|r| claims::satisfies(r, &claims));
                let result = if satisfied {
                    Ok(())
                } else {
                    Err(Rejection::InsufficientScope)
                };
                (Some(claims), result)
            }
            Err(rejection) => (None, Err(rejection)),
        }
    }

    /// The first token found in the configured sources.
    pub fn token<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        self.sources.iter().find_map(|source| match source {
            TokenSource::Header { name, prefix } => {
                headers.get_all(name).iter().find_map(|value| {
                    let value = value.to_str().ok()?.trim();
                    let token = match prefix {
                        Some(prefix) => strip_prefix_ignore_case(value, prefix)?.trim(),
                        None => value,
                    };
                    (!token.is_empty()).then_some(token)
                })
            }
            TokenSource::Cookie(name) => cookie_value(headers, name).filter(|v| !v.is_empty()),
        })
    }

    fn is_enforced(
        &self,
        headers: &HeaderMap,
        token: Option<&str>,
        claims: Option<&Claims>,
    ) -> bool {
        if self.enforced_buckets >= rollout::BUCKETS {
            return true;
        }
        if self.enforced_buckets == 0 {
            return false;
        }
        self.bucket_key(headers, token, claims).is_some_and(|key| {
            rollout::is_enforced(rollout::bucket(&self.salt, &key), self.enforced_buckets)
        })
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
            BucketKey::Header(name) => headers.get(name)?.to_str().ok().map(str::to_owned),
            BucketKey::Cookie(name) => cookie_value(headers, name).map(str::to_owned),
        }
    }

    /// The bucket of a key under this policy, and whether it is enforced now.
    pub fn bucket_of(&self, key: &str) -> (u32, bool) {
        let bucket = rollout::bucket(&self.salt, key);
        let enforced =
            self.mode == Mode::Enforce && rollout::is_enforced(bucket, self.enforced_buckets);
        (bucket, enforced)
    }

    /// The response headers carrying the forwarded claims.
    pub fn forwarded_headers<'c>(
        &'c self,
        claims: &'c Claims,
    ) -> impl Iterator<Item = (&'c HeaderName, axum::http::HeaderValue)> + 'c {
        self.forward.iter().filter_map(|(claim, header)| {
            Some((
                header,
                claims::header_value(claims::lookup(claims, claim)?)?,
            ))
        })
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

/// The value of a cookie, from every `Cookie` header (HTTP/2 may send several).
pub fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (n, v) = pair.trim().split_once('=')?;
            (n.trim() == name).then(|| v.trim().trim_matches('"'))
        })
}
