//! The token path of a forward-auth decision, fed arbitrary bytes as the token (in the
//! Authorization header and in a cookie) and as whole `Cookie` headers beside a revoked
//! and a valid token. Nothing may panic; every input gets a verdict; claim headers carry
//! a value only when every check passed, and odd cookie bytes never hide a token.
//!
//! `cargo fuzz run token` (see the README for the smoke run CI does).
#![no_main]

use std::sync::LazyLock;

use authplane_core::api::{AuthPolicy, ObjectKey, Revocation};
use authplane_core::keys::lifecycle::{KeyRecord, KeySet};
use authplane_core::keys::{Algorithm, KeyMaterial};
use authplane_core::policy::cache::DecisionCache;
use authplane_core::policy::{CompileContext, CompiledPolicy, Decision, IssuerKeys, Verdict};
use authplane_core::revocation::{RevocationIndex, RevocationSet};
use authplane_core::token::{MintRequest, mint};
use http::{HeaderMap, HeaderValue, header};
use jiff::{SignedDuration, Timestamp};
use libfuzzer_sys::fuzz_target;

const ISSUER: &str = "https://issuer.example";

static NO_REVOCATIONS: LazyLock<RevocationSet> = LazyLock::new(RevocationSet::default);

struct Fixture {
    policy: CompiledPolicy,
    /// Every token of `revoked` (by subject).
    revocations: RevocationSet,
    /// `Bearer` tokens of `alice` and of the revoked `mallory`.
    valid: HeaderValue,
    revoked: HeaderValue,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let now = Timestamp::now();
    let keys = KeySet::new(
        [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA]
            .into_iter()
            .map(|alg| KeyRecord {
                material: KeyMaterial::generate(alg, 2048).expect("key generation"),
                created: now,
                activates_at: now,
            })
            .collect(),
    );
    let policy: AuthPolicy = serde_yaml::from_str(
        "apiVersion: authplane.io/v1alpha1\nkind: AuthPolicy\nmetadata: {name: api, namespace: fuzz}\n\
         spec:\n  issuers: [{signingKeyRef: {name: web, namespace: auth}}]\n  audiences: [api]\n\
         \x20 tokenSources: {headers: [{name: Authorization}], cookies: [access_token]}\n\
         \x20 requiredClaims: [{claim: realm.roles, contains: api}]\n  forwardClaims: {sub: X-Sub}\n\
         \x20 rollout: {mode: Enforce, percentage: 50}\n  legacySession: {cookie: session}\n",
    )
    .expect("fuzz policy");
    // With a verified-token cache, as the server runs: the valid and the revoked token
    // verify once, and every later input costs what its own bytes cost (revocations are
    // checked on cache hits too).
    let context = CompileContext {
        external: None,
        cache: DecisionCache::new(64),
        stats: None,
        epoch: None,
    };
    let resolve = |_: &ObjectKey| {
        Some(IssuerKeys {
            issuer: ISSUER,
            keys: &keys,
            max_token_lifetime: authplane_core::api::DEFAULT_MAX_TOKEN_LIFETIME,
        })
    };
    let policy = CompiledPolicy::compile_with(&policy, resolve, context);
    let bearer = |sub: &str| {
        let request = MintRequest {
            subject: sub.into(),
            audiences: vec!["api".into()],
            ttl: SignedDuration::from_mins(15),
            claims: serde_json::json!({"realm": {"roles": ["api"]}})
                .as_object()
                .cloned()
                .expect("claims"),
            session: None,
        };
        let token = mint(&keys, ISSUER, &request, now).expect("mint");
        HeaderValue::from_str(&token).expect("a token is a header value")
    };
    let revocation: Revocation = serde_yaml::from_str(
        "apiVersion: authplane.io/v1alpha1\nkind: Revocation\nmetadata: {name: stolen, namespace: auth}\n\
         spec: {signingKeyRef: {name: web}, subject: mallory}\n",
    )
    .expect("fuzz revocation");
    let mut index = RevocationIndex::default();
    // Seen an hour from now: every token of mallory minted now is revoked.
    index
        .apply(&revocation, now + SignedDuration::from_hours(1))
        .expect("revocation");
    Fixture {
        policy,
        revocations: index.publish(now).0,
        valid: bearer("alice"),
        revoked: bearer("mallory"),
    }
});

/// Claim headers carry a value only when every check passed, and are answered on every
/// pass.
fn check_identity(decision: &Decision) {
    let values: Vec<&[u8]> = decision
        .headers
        .iter()
        .filter(|(name, _)| name.as_str() == "x-sub")
        .map(|(_, value)| value.as_bytes())
        .collect();
    match &decision.verdict {
        Verdict::Deny(_) => assert!(decision.headers.is_empty(), "headers on a refusal"),
        Verdict::Allow => assert_eq!(values.len(), 1, "the identity header is answered"),
        _ => assert_eq!(values, [b""], "an identity without a full pass"),
    }
}

fuzz_target!(|data: &[u8]| {
    let f = &*FIXTURE;
    let now = Timestamp::now();
    let policy = &f.policy;
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = policy.check(Some(text), now, &NO_REVOCATIONS);
    }

    // The bytes as a token, in a header and in a cookie.
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_bytes(data) {
        headers.insert(header::AUTHORIZATION, value);
    }
    let mut cookie = b"session=1; access_token=".to_vec();
    cookie.extend_from_slice(data);
    if let Ok(value) = HeaderValue::from_bytes(&cookie) {
        headers.insert(header::COOKIE, value);
    }
    check_identity(&policy.decide(&headers, now, &NO_REVOCATIONS));

    // The bytes as a whole Cookie header, beside a revoked token: never an identity.
    let Ok(odd) = HeaderValue::from_bytes(data) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.append(header::COOKIE, odd.clone());
    headers.insert(header::AUTHORIZATION, f.revoked.clone());
    let decision = policy.decide(&headers, now, &f.revocations);
    check_identity(&decision);
    assert_ne!(decision.verdict, Verdict::Allow, "a revoked token passed");

    // Beside a valid token cookie: odd bytes hide nothing (unless they hold a token
    // cookie of their own, which comes first).
    if data
        .windows(b"access_token".len())
        .any(|w| w == b"access_token")
    {
        return;
    }
    let mut headers = HeaderMap::new();
    headers.append(header::COOKIE, odd);
    let mut token = b"access_token=".to_vec();
    token.extend_from_slice(f.valid.as_bytes());
    headers.append(
        header::COOKIE,
        HeaderValue::from_bytes(&token).expect("a cookie"),
    );
    let decision = policy.decide(&headers, now, &f.revocations);
    check_identity(&decision);
    assert_eq!(
        decision.verdict,
        Verdict::Allow,
        "odd cookie bytes hid the token"
    );
});
