//! The token path of a forward-auth decision, fed arbitrary bytes as the token (in the
//! Authorization header and in a cookie). Nothing may panic; every input gets a verdict.
//!
//! `cargo fuzz run token` (see the README for the smoke run CI does).
#![no_main]

use std::sync::LazyLock;

use authplane_core::api::{AuthPolicy, ObjectKey};
use authplane_core::keys::lifecycle::{KeyRecord, KeySet};
use authplane_core::keys::{Algorithm, KeyMaterial};
use authplane_core::policy::{CompiledPolicy, IssuerKeys};
use authplane_core::revocation::RevocationSet;
use http::{HeaderMap, HeaderValue, header};
use jiff::Timestamp;
use libfuzzer_sys::fuzz_target;

static NO_REVOCATIONS: LazyLock<RevocationSet> = LazyLock::new(RevocationSet::default);

static POLICY: LazyLock<CompiledPolicy> = LazyLock::new(|| {
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
    CompiledPolicy::compile(&policy, |_: &ObjectKey| {
        Some(IssuerKeys {
            issuer: "https://issuer.example",
            keys: &keys,
            max_token_lifetime: authplane_core::api::DEFAULT_MAX_TOKEN_LIFETIME,
        })
    })
});

fuzz_target!(|data: &[u8]| {
    let now = Timestamp::now();
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = POLICY.check(Some(text), now, &NO_REVOCATIONS);
    }
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_bytes(data) {
        headers.insert(header::AUTHORIZATION, value);
    }
    let mut cookie = b"session=1; access_token=".to_vec();
    cookie.extend_from_slice(data);
    if let Ok(value) = HeaderValue::from_bytes(&cookie) {
        headers.insert(header::COOKIE, value);
    }
    let decision = POLICY.decide(&headers, now, &NO_REVOCATIONS);
    if let Some(claims) = &decision.claims {
        POLICY.forwarded_headers(claims).for_each(drop);
    }
});
