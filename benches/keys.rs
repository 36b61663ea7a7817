//! Key generation per algorithm, signing, and rendering the public documents.
//!
//! `cargo bench --bench keys`. Absolute numbers vary between machines and runs; compare
//! algorithms with each other within one run.

use std::hint::black_box;

use authplane::keys::lifecycle::{KeyRecord, KeySet};
use authplane::keys::{Algorithm, KeyMaterial};
use authplane::registry::PublishedIssuer;
use authplane::token::{MintRequest, mint};
use criterion::{Criterion, criterion_group, criterion_main};
use jiff::{SignedDuration, Timestamp};

fn generation(c: &mut Criterion) {
    let mut group = c.benchmark_group("generate");
    group.sample_size(10);
    let cases = [
        (Algorithm::RS256, 2048),
        (Algorithm::RS256, 3072),
        (Algorithm::RS256, 4096),
        (Algorithm::PS256, 2048),
        (Algorithm::ES256, 0),
        (Algorithm::ES384, 0),
        (Algorithm::EdDSA, 0),
    ];
    for (alg, bits) in cases {
        let name = if alg.is_rsa() {
            format!("{alg}-{bits}")
        } else {
            alg.to_string()
        };
        group.bench_function(name, |b| {
            b.iter(|| KeyMaterial::generate(alg, bits).unwrap())
        });
    }
    group.finish();
}

fn one_key(alg: Algorithm) -> KeySet {
    let now = Timestamp::now();
    KeySet::new(vec![KeyRecord {
        material: KeyMaterial::generate(alg, 2048).unwrap(),
        created: now,
        activates_at: now,
    }])
}

fn signing(c: &mut Criterion) {
    let mut group = c.benchmark_group("mint");
    let request = MintRequest {
        subject: "alice".into(),
        audiences: vec!["api".into()],
        ttl: SignedDuration::from_mins(15),
        ..MintRequest::default()
    };
    for alg in [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA] {
        let keys = one_key(alg);
        group.bench_function(alg.to_string(), |b| {
            b.iter(|| {
                mint(
                    black_box(&keys),
                    "https://issuer",
                    &request,
                    Timestamp::now(),
                )
                .unwrap()
            })
        });
    }
    group.finish();
}

fn rendering(c: &mut Criterion) {
    let keys = one_key(Algorithm::RS256);
    c.bench_function("render JWKS and discovery (RS256)", |b| {
        b.iter(|| {
            PublishedIssuer::render(
                "ns",
                "name",
                "https://issuer",
                black_box(&keys),
                authplane::snapshot::Rotation {
                    every: SignedDuration::from_hours(720),
                    pre_publish: SignedDuration::from_hours(1),
                    retain_for: SignedDuration::from_hours(24),
                },
            )
        })
    });
}

criterion_group!(benches, generation, signing, rendering);
criterion_main!(benches);
