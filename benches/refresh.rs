//! A refresh with rotation in process: `tokens::refresh_admitted` on the embedded store
//! (a redb file in a temporary folder, durable commits) and the access token's signature,
//! against the signature alone, RS256 and ES256. `IN_FLIGHT` chains refresh at once (as
//! the token endpoint's concurrent requests do), so the store's group commit works as it
//! does under load. What is left after the signature is the store's cost per refresh,
//! without HTTP.
//!
//! `taskset -c 0 cargo bench --bench refresh` (one core, as the load script gives the
//! server). Compare the groups' per-element times within one run.

use std::cell::RefCell;
use std::hint::black_box;

use authplane::keys::lifecycle::{KeyRecord, KeySet};
use authplane::keys::{Algorithm, KeyMaterial};
use authplane::refresh::{Lifetimes, Login, RefreshToken, SystemEntropy, start};
use authplane::tokens::embedded::EmbeddedStore;
use authplane::tokens::{FamilyStore, Presenter, Refreshed, refresh};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use jiff::{SignedDuration, Timestamp};
use serde_json::{Map, Value, json};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Refreshes in flight at once (the load script's connections).
const IN_FLIGHT: usize = 32;
const CLIENT: &str = "bench/web";
const ISSUER: &str = "http://127.0.0.1/bench/web";

fn keys(alg: Algorithm) -> KeySet {
    let now = Timestamp::now();
    KeySet::new(vec![KeyRecord {
        material: KeyMaterial::generate(alg, 2048).unwrap(),
        created: now,
        activates_at: now,
    }])
}

/// The claims the token endpoint signs for a refreshed pair (their size and shape).
fn claims(subject: &str, sid: &str, jti: &str, now: Timestamp) -> Map<String, Value> {
    json!({
        "iss": ISSUER, "sub": subject, "aud": "api", "iat": now.as_second(),
        "exp": now.as_second() + 900, "jti": jti, "sid": sid,
    })
    .as_object()
    .unwrap()
    .clone()
}

fn login(user: usize) -> Login {
    Login {
        client: CLIENT.into(),
        issuer: ISSUER.into(),
        subject: format!("user-{user:06}"),
        audiences: vec!["api".into()],
        claims: Map::new(),
        lifetimes: Lifetimes {
            absolute: SignedDuration::from_hours(168),
            idle: SignedDuration::from_hours(24),
            grace: SignedDuration::from_secs(5),
        },
    }
}

fn refresh_with_rotation(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for alg in [Algorithm::RS256, Algorithm::ES256] {
        let keys = keys(alg);
        let mut group = c.benchmark_group(format!("refresh/{alg}"));
        group.throughput(Throughput::Elements(IN_FLIGHT as u64));

        let sid = "b1uO3oVq0m7mI5mKJpW0mA";
        group.bench_function("sign only", |b| {
            b.iter(|| {
                let now = Timestamp::now();
                for _ in 0..IN_FLIGHT {
                    let claims = claims("user-000001", sid, "Jx3bq1nqGZ0vX2oWl3o1yA", now);
                    black_box(authplane::token::sign(&keys, &claims, now).unwrap());
                }
            })
        });

        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("tokens.redb")).unwrap();
        // 1,000 users (as the load script): the store's tables are not trivially small.
        let chains: Vec<RefreshToken> = runtime.block_on(async {
            let mut chains = Vec::new();
            for user in 0..1000 {
                let started = start(login(user), Timestamp::now(), &mut SystemEntropy).unwrap();
                store.create(&started.family).await.unwrap();
                chains.push(started.token);
            }
            chains
        });
        let chains = RefCell::new(chains);
        let next = RefCell::new(0usize);
        group.bench_function("refresh + sign", |b| {
            b.iter(|| {
                let now = Timestamp::now();
                let mut chains = chains.borrow_mut();
                let first = *next.borrow();
                *next.borrow_mut() = (first + IN_FLIGHT) % chains.len();
                let picked: Vec<usize> = (0..IN_FLIGHT).map(|i| (first + i) % 1000).collect();
                let answers =
                    runtime.block_on(futures::future::join_all(picked.iter().map(|&i| {
                        let token = chains[i].clone();
                        let store = &store;
                        let keys = &keys;
                        async move {
                            let by = Presenter {
                                client: CLIENT,
                                issuer: ISSUER,
                                sessions: None,
                            };
                            let Refreshed::Pair {
                                family,
                                token,
                                access,
                                ..
                            } = refresh(store, &token, by, now, &mut SystemEntropy)
                                .await
                                .unwrap()
                            else {
                                panic!("reuse in a benchmark of honest chains");
                            };
                            let claims = claims(&family.subject, &family.id, &access.jti, now);
                            black_box(authplane::token::sign(keys, &claims, now).unwrap());
                            token
                        }
                    })));
                for (i, token) in picked.into_iter().zip(answers) {
                    chains[i] = token;
                }
            })
        });
        group.finish();
    }
}

criterion_group!(benches, refresh_with_rotation);
criterion_main!(benches);
