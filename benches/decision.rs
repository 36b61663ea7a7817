//! One forward-auth decision (headers in, verdict out), without HTTP, next to raw
//! signature verification with jsonwebtoken on the same key.
//!
//! `cargo bench --bench decision`. Compare the decision with `raw verify` of the same
//! algorithm: the difference is the policy's own cost.

use std::hint::black_box;

use authplane::api::{AuthPolicy, ObjectKey};
use authplane::keys::lifecycle::{KeyRecord, KeySet};
use authplane::keys::{Algorithm, KeyMaterial};
use authplane::policy::cache::DecisionCache;
use authplane::policy::{CompileContext, CompiledPolicy, IssuerKeys, Verdict};
use authplane::token::{MintRequest, mint};
use axum::http::{HeaderMap, HeaderValue, header};
use criterion::{Criterion, criterion_group, criterion_main};
use jiff::{SignedDuration, Timestamp};

const ISSUER: &str = "https://issuer.example/auth/web";

struct Fixture {
    policy: CompiledPolicy,
    cached: CompiledPolicy,
    token: String,
    keys: KeySet,
}

fn fixture(alg: Algorithm) -> Fixture {
    let now = Timestamp::now();
    let keys = KeySet::new(vec![KeyRecord {
        material: KeyMaterial::generate(alg, 2048).unwrap(),
        created: now,
        activates_at: now,
    }]);
    let policy: AuthPolicy = serde_yaml::from_str(
        "apiVersion: authplane.io/v1alpha1\nkind: AuthPolicy\nmetadata: {name: api, namespace: bench}\n\
         spec:\n  issuers: [{signingKeyRef: {name: web, namespace: auth}}]\n  audiences: [api]\n\
         \x20 requiredClaims: [{claim: roles, contains: api}]\n  forwardClaims: {sub: X-Auth-Subject}\n\
         \x20 rollout: {mode: Enforce, percentage: 100}\n",
    )
    .unwrap();
    let resolve = |_: &ObjectKey| {
        Some(IssuerKeys {
            issuer: ISSUER,
            keys: &keys,
        })
    };
    let compiled = CompiledPolicy::compile(&policy, resolve);
    let context = CompileContext {
        external: None,
        cache: DecisionCache::new(1000),
        stats: None,
        epoch: None,
    };
    let cached = CompiledPolicy::compile_with(&policy, resolve, context);
    let request = MintRequest {
        subject: "alice".into(),
        audiences: vec!["api".into()],
        ttl: SignedDuration::from_hours(1),
        claims: serde_json::json!({"roles": ["api"]})
            .as_object()
            .cloned()
            .unwrap(),
    };
    let token = mint(&keys, ISSUER, &request, now).unwrap();
    Fixture {
        policy: compiled,
        cached,
        token,
        keys,
    }
}

fn bearer(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    headers
}

fn decisions(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide");
    let now = Timestamp::now();
    for alg in [Algorithm::RS256, Algorithm::ES256] {
        let f = fixture(alg);
        let headers = bearer(&f.token);
        assert_eq!(f.policy.decide(&headers, now).verdict, Verdict::Allow);
        group.bench_function(format!("valid {alg}"), |b| {
            b.iter(|| f.policy.decide(black_box(&headers), now))
        });
        assert_eq!(f.cached.decide(&headers, now).verdict, Verdict::Allow);
        group.bench_function(format!("valid {alg}, cached"), |b| {
            b.iter(|| f.cached.decide(black_box(&headers), now))
        });

        // Raw verification of the same token with jsonwebtoken, from the published JWK.
        let record = &f.keys.records()[0];
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(
            record
                .material
                .public_jwk()
                .to_json(record.material.kid(), alg),
        )
        .unwrap();
        let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
        let mut validation = jsonwebtoken::Validation::new(alg.to_jwt());
        validation.set_audience(&["api"]);
        validation.set_issuer(&[ISSUER]);
        group.bench_function(format!("raw verify {alg}"), |b| {
            b.iter(|| {
                jsonwebtoken::decode::<serde_json::Value>(black_box(&f.token), &key, &validation)
                    .unwrap()
            })
        });
    }
    let f = fixture(Algorithm::RS256);
    let bad = bearer(&format!("{}A", &f.token[..f.token.len() - 1]));
    group.bench_function("invalid signature RS256", |b| {
        b.iter(|| f.policy.decide(black_box(&bad), now))
    });
    let none = HeaderMap::new();
    group.bench_function("missing token", |b| {
        b.iter(|| f.policy.decide(black_box(&none), now))
    });
    group.finish();
}

criterion_group!(benches, decisions);
criterion_main!(benches);
