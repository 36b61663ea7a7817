//! One forward-auth decision (headers in, verdict out), without HTTP, next to raw
//! signature verification with jsonwebtoken on the same key.
//!
//! `cargo bench --bench decision`. Compare the decision with `raw verify` of the same
//! algorithm: the difference is the policy's own cost.
//!
//! The `authz handler` group runs the whole `/authz` handler (routing, decision, response
//! headers, metrics) in-process, without sockets, as the server does with
//! `--decision-cache-size 0`: a refused request must not cost more than an allowed one,
//! or an attacker's forged tokens would buy more of the server than a user's.

use std::hint::black_box;
use std::sync::Arc;

use authplane::admission::NoSigningKeys;
use authplane::clock::SystemClock;
use authplane::metrics::Metrics;
use authplane::registry::{Registry, Snapshot};
use authplane::revocation::{RevocationIndex, RevocationSet, TokenFacts};
use authplane::server::{self, AppState, Endpoints};
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use tower::ServiceExt as _;

use authplane::api::{AuthPolicy, ObjectKey};
use authplane::keys::lifecycle::{KeyRecord, KeySet};
use authplane::keys::{Algorithm, KeyMaterial};
use authplane::policy::cache::DecisionCache;
use authplane::policy::{
    CompileContext, CompiledPolicy, IssuerKeys, METER_SLOTS, PolicyStats, Rejection, Verdict,
};
use authplane::token::{MintRequest, mint};
use axum::http::{HeaderMap, HeaderValue, header};
use criterion::{Criterion, criterion_group, criterion_main};
use jiff::{SignedDuration, Timestamp};

const ISSUER: &str = "https://issuer.example/auth/web";

struct Fixture {
    manifest: AuthPolicy,
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
            max_token_lifetime: authplane::api::DEFAULT_MAX_TOKEN_LIFETIME,
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
        session: None,
    };
    let token = mint(&keys, ISSUER, &request, now).unwrap();
    Fixture {
        manifest: policy,
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

/// The token with another RS256 signature: its last character, which carries 2 bits (A, Q,
/// g or w), changed.
fn forged(token: &str) -> String {
    let last = if token.ends_with('A') { "Q" } else { "A" };
    format!("{}{last}", &token[..token.len() - 1])
}

fn decisions(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide");
    let now = Timestamp::now();
    let unrevoked = RevocationSet::default();
    for alg in [Algorithm::RS256, Algorithm::ES256] {
        let f = fixture(alg);
        let headers = bearer(&f.token);
        assert_eq!(
            f.policy.decide(&headers, now, &unrevoked).verdict,
            Verdict::Allow
        );
        group.bench_function(format!("valid {alg}"), |b| {
            b.iter(|| f.policy.decide(black_box(&headers), now, &unrevoked))
        });
        assert_eq!(
            f.cached.decide(&headers, now, &unrevoked).verdict,
            Verdict::Allow
        );
        group.bench_function(format!("valid {alg}, cached"), |b| {
            b.iter(|| f.cached.decide(black_box(&headers), now, &unrevoked))
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
    let bad = bearer(&forged(&f.token));
    assert_eq!(
        f.policy.decide(&bad, now, &unrevoked).verdict,
        Verdict::Deny(Rejection::BadSignature)
    );
    group.bench_function("invalid signature RS256", |b| {
        b.iter(|| f.policy.decide(black_box(&bad), now, &unrevoked))
    });
    let none = HeaderMap::new();
    group.bench_function("missing token", |b| {
        b.iter(|| f.policy.decide(black_box(&none), now, &unrevoked))
    });
    group.finish();
}

/// The server's router over one policy compiled as the server compiles it (with its
/// meters), without the verified-token cache.
fn server_over(f: &Fixture) -> Router {
    let metrics = Arc::new(Metrics::default());
    let stats = PolicyStats::new(Box::new(metrics.policy_meters("bench", "api", METER_SLOTS)));
    let context = CompileContext {
        external: None,
        cache: None,
        stats: Some(Arc::new(stats)),
        epoch: None,
    };
    let resolve = |_: &ObjectKey| {
        Some(IssuerKeys {
            issuer: ISSUER,
            keys: &f.keys,
            max_token_lifetime: authplane::api::DEFAULT_MAX_TOKEN_LIFETIME,
        })
    };
    let compiled = CompiledPolicy::compile_with(&f.manifest, resolve, context);
    let id = ObjectKey {
        namespace: "bench".into(),
        name: "api".into(),
    };
    let registry = Registry::default();
    registry.publish(Snapshot {
        policies: imbl::HashMap::unit(id, Arc::new(compiled)),
        policies_known: true,
        ..Snapshot::default()
    });
    let state = AppState {
        registry: Arc::new(registry),
        metrics,
        clock: Arc::new(SystemClock),
        base_url: Arc::from("http://127.0.0.1"),
        signing_keys: Arc::new(NoSigningKeys),
        tls: None,
        revoke: None,
        token: None,
    };
    server::router(state, Endpoints::Public)
}

/// One `/authz` request as ingress-nginx sends it.
fn authz_request(token: &str) -> Request<Body> {
    Request::get("/authz/bench/api")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header("x-original-method", "GET")
        .header("x-original-url", "https://shop.example/cart?item=1")
        .body(Body::empty())
        .unwrap()
}

fn handler(c: &mut Criterion) {
    let f = fixture(Algorithm::RS256);
    let router = server_over(&f);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let bad = forged(&f.token);
    let answer = |token: &str| {
        runtime
            .block_on(router.clone().oneshot(authz_request(token)))
            .unwrap()
    };
    assert_eq!(answer(&f.token).status(), StatusCode::OK);
    let refused = answer(&bad);
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(refused.headers()["x-authplane-reason"], "bad_signature");

    let mut group = c.benchmark_group("authz handler");
    group.bench_function("valid RS256, uncached", |b| {
        b.iter(|| answer(black_box(&f.token)))
    });
    group.bench_function("bad signature RS256", |b| {
        b.iter(|| answer(black_box(&bad)))
    });
    group.finish();
}

/// `count` Revocations of auth/web's tokens (global scope): half single tokens, a third
/// subjects, the rest sessions. None matches the fixture's token, so every lookup probes
/// all three maps: the worst case.
fn revocations(count: usize, now: Timestamp) -> RevocationSet {
    use authplane::api::{Revocation, RevocationSpec, RevokedKeyRef};
    let mut index = RevocationIndex::default();
    index.set_key_lifetime(
        ObjectKey {
            namespace: "auth".into(),
            name: "web".into(),
        },
        Some(SignedDuration::from_hours(1)),
    );
    for i in 0..count {
        let mut spec = RevocationSpec {
            signing_key_ref: Some(RevokedKeyRef {
                name: "web".into(),
                namespace: None,
            }),
            issuer: None,
            token_id: None,
            subject: None,
            issued_before: None,
            session_id: None,
            expires_at: None,
            reason: Some("logout".into()),
        };
        match i % 6 {
            0..=2 => spec.token_id = Some(format!("jti-{i:08}-aaaaaaaaaaaaaaaa")),
            3 | 4 => spec.subject = Some(format!("user-{i:08}")),
            _ => spec.session_id = Some(format!("sid-{i:08}-bbbbbbbb")),
        }
        let revocation = Revocation {
            metadata: kube::api::ObjectMeta {
                name: Some(format!("r-{i}")),
                namespace: Some("auth".into()),
                ..Default::default()
            },
            spec,
            status: None,
        };
        index.apply(&revocation, now).unwrap();
    }
    // What a change costs the watch: the whole set is published again.
    let started = std::time::Instant::now();
    let (set, _) = index.publish(now);
    eprintln!(
        "publishing {count} revocations took {:?}",
        started.elapsed()
    );
    assert_eq!(set.len(), count);
    set
}

/// The decision with 0 and with 100,000 Revocations in force, uncached and cached RS256:
/// what the revocation lookup costs.
fn revoked(c: &mut Criterion) {
    let mut group = c.benchmark_group("revocations");
    let now = Timestamp::now();
    let f = fixture(Algorithm::RS256);
    let headers = bearer(&f.token);
    for count in [0, 100_000] {
        let set = revocations(count, now);
        assert_eq!(f.policy.decide(&headers, now, &set).verdict, Verdict::Allow);
        group.bench_function(format!("RS256, {count} revocations"), |b| {
            b.iter(|| f.policy.decide(black_box(&headers), now, &set))
        });
        assert_eq!(f.cached.decide(&headers, now, &set).verdict, Verdict::Allow);
        group.bench_function(format!("RS256 cached, {count} revocations"), |b| {
            b.iter(|| f.cached.decide(black_box(&headers), now, &set))
        });
        // The lookup alone, on the token's verified claims.
        let claims: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(
            &base64::Engine::decode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                f.token.split('.').nth(1).unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        let key = ObjectKey {
            namespace: "auth".into(),
            name: "web".into(),
        };
        let second = now.as_second();
        group.bench_function(format!("lookup alone, {count} revocations"), |b| {
            b.iter(|| {
                let facts = TokenFacts::of(black_box(&claims), Some(&key));
                set.is_revoked("bench", &facts, second)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decisions, handler, revoked);
criterion_main!(benches);
