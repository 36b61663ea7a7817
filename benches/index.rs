//! What one change costs the serving path, at 1,000 SigningKeys and 10,000 AuthPolicies:
//! the work a watch event or a dev-mode edit triggers, from the object to a published
//! snapshot, without I/O.
//!
//! `cargo bench --bench index`. `policy edit` (validate, compile one policy, publish)
//! and `key change` (render a SigningKey's JWKS, recompile the 10 policies naming it,
//! publish) are what the incremental index does; `rebuild everything` is what every
//! change cost before it (validate and compile every policy), measured in the same run
//! for the ratio. It validates with the CEL rules compiled once, as now, so it is a
//! lower bound of the old cost, which also parsed every rule per object
//! (`scripts/scale.sh` measures whole builds against each other).

use std::hint::black_box;
use std::sync::Arc;

use authplane::api::{AuthPolicy, ObjectKey, SigningKey, Validate};
use authplane::clock::SystemClock;
use authplane::index::Index;
use authplane::keys::KeyMaterial;
use authplane::metrics::Metrics;
use authplane::policy::CompiledPolicy;
use authplane::registry::{PolicyRuntime, PublishedIssuer, ServedKeys};
use criterion::{Criterion, criterion_group, criterion_main};
use jiff::Timestamp;
use serde_json::json;

const KEYS: usize = 1_000;
const POLICIES: usize = 10_000;
const URL: &str = "https://auth.example";

fn key_id(j: usize) -> ObjectKey {
    ObjectKey {
        namespace: "scale".into(),
        name: format!("k{j}"),
    }
}

fn served(j: usize) -> ServedKeys {
    let key: SigningKey = serde_json::from_value(json!({
        "apiVersion": "authplane.io/v1alpha1", "kind": "SigningKey",
        "metadata": {"name": format!("k{j}"), "namespace": "scale"},
        "spec": {"algorithm": "EdDSA"},
    }))
    .unwrap();
    let outcome = authplane::reconcile::signing_key(
        &key,
        None,
        URL,
        Timestamp::now(),
        &mut KeyMaterial::generate,
    )
    .unwrap();
    ServedKeys {
        published: Arc::new(outcome.published("scale", &format!("k{j}"))),
        keys: outcome.keys,
        max_token_lifetime: key.spec.max_token_lifetime(),
    }
}

fn policy(i: usize, audience: &str) -> AuthPolicy {
    serde_json::from_value(json!({
        "apiVersion": "authplane.io/v1alpha1", "kind": "AuthPolicy",
        "metadata": {"name": format!("p{i}"), "namespace": "scale", "generation": 1},
        "spec": {
            "issuers": [{"signingKeyRef": {"name": format!("k{}", i % KEYS)}}],
            "audiences": [audience],
            "rollout": {"mode": "Enforce", "percentage": 100},
        },
    }))
    .unwrap()
}

fn runtime() -> Arc<PolicyRuntime> {
    Arc::new(PolicyRuntime::new(
        Arc::new(Metrics::default()),
        Arc::new(SystemClock),
        10_000,
    ))
}

fn changes(c: &mut Criterion) {
    let keys: Vec<ServedKeys> = (0..KEYS).map(served).collect();
    let policies: Vec<AuthPolicy> = (0..POLICIES).map(|i| policy(i, &format!("a{i}"))).collect();
    let scope = authplane::issuer_claims::IssuerScope::anywhere("https://scale.example");
    let mut index = Index::new(runtime(), Arc::new(scope));
    for (j, served) in keys.iter().enumerate() {
        index.apply_key(&key_id(j), served.clone());
    }
    for policy in &policies {
        index.apply_policy(Arc::new(policy.clone()));
    }

    let mut group = c.benchmark_group("1,000 keys, 10,000 policies");
    let edits = [policy(7, "a7"), policy(7, "other")];
    let mut flip = 0;
    group.bench_function("policy edit", |b| {
        b.iter(|| {
            flip ^= 1;
            let edited = &edits[flip];
            assert!(edited.validate().is_empty());
            index.apply_policy(Arc::new(edited.clone()));
            black_box(index.snapshot());
        })
    });
    // A new key set for k3 (a rotation): 10 policies name it.
    let rotations = [served(3), keys[3].clone()];
    group.bench_function("key change", |b| {
        b.iter(|| {
            flip ^= 1;
            let rotated = &rotations[flip];
            let published = PublishedIssuer::render(
                "scale",
                "k3",
                &rotated.published.issuer,
                &rotated.keys,
                authplane::snapshot::Rotation {
                    every: jiff::SignedDuration::from_hours(720),
                    pre_publish: jiff::SignedDuration::from_hours(1),
                    retain_for: jiff::SignedDuration::from_hours(24),
                },
            );
            index.apply_key(
                &key_id(3),
                ServedKeys {
                    published: Arc::new(published),
                    keys: rotated.keys.clone(),
                    max_token_lifetime: rotated.max_token_lifetime,
                },
            );
            black_box(index.snapshot());
        })
    });
    group.sample_size(10);
    group.bench_function("rebuild everything (before the index)", |b| {
        b.iter(|| {
            let compiled: Vec<CompiledPolicy> = policies
                .iter()
                .filter(|p| p.validate().is_empty())
                .map(|p| {
                    CompiledPolicy::compile(p, |id| {
                        index.served(id).map(|s| authplane::policy::IssuerKeys {
                            issuer: &s.published.issuer,
                            keys: &s.keys,
                            max_token_lifetime: s.max_token_lifetime,
                        })
                    })
                })
                .collect();
            black_box(compiled);
        })
    });
    group.finish();
}

criterion_group!(benches, changes);
criterion_main!(benches);
