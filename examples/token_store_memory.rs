//! What the embedded token store holds in memory per session: the process's resident
//! memory after N logins (families the shape of the load script's: a subject, one
//! audience, no custom claims), each refreshed once, against the same process before.
//! The store keeps every live family in memory (lookups and compare-and-set without a
//! read of the file); redb's page cache (at most 32 MiB) is included.
//!
//! `cargo run --release --example token_store_memory -- [SESSIONS...]` (default 10000
//! 100000); prints `sessions N rss_bytes_per_session B`. With `CLAIMS=largest` in the
//! environment each login carries the costliest custom claims a login may
//! (`{"r":[0,0,…]}`, just under the 8 KiB `authplane_claims` allows).

use authplane::refresh::{Lifetimes, Login, SystemEntropy, start};
use authplane::tokens::embedded::{EmbeddedStore, SessionLimits};
use authplane::tokens::{FamilyStore, Presenter, refresh};
use jiff::{SignedDuration, Timestamp};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CLIENT: &str = "bench/web";
const ISSUER: &str = "http://127.0.0.1:18096/bench/web";
/// Logins written at once (so that group commit works as under load).
const IN_FLIGHT: usize = 256;

fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}

fn login(user: usize) -> Login {
    Login {
        client: CLIENT.into(),
        issuer: ISSUER.into(),
        subject: format!("user-{user:06}"),
        audiences: vec!["api".into()],
        claims: claims(),
        lifetimes: Lifetimes {
            absolute: SignedDuration::from_hours(168),
            idle: SignedDuration::from_hours(24),
            grace: SignedDuration::from_secs(5),
        },
    }
}

fn claims() -> serde_json::Map<String, serde_json::Value> {
    if std::env::var("CLAIMS").as_deref() != Ok("largest") {
        return Default::default();
    }
    // `{"r":[` + `0,` per value + `]}` within 8 KiB.
    let zeros = (authplane::token_endpoint::MAX_CLAIMS_BYTES - 9) / 2;
    let value = serde_json::json!({ "r": vec![0; zeros] });
    let serde_json::Value::Object(claims) = value else {
        unreachable!()
    };
    claims
}

fn main() {
    let counts: Vec<usize> = std::env::args()
        .skip(1)
        .map(|n| n.parse().expect("a number of sessions"))
        .collect();
    let counts = if counts.is_empty() {
        vec![10_000, 100_000]
    } else {
        counts
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    for sessions in counts {
        let dir = tempfile::tempdir().expect("a temporary folder");
        // No budget: this measures what the budgets are sized from.
        let store = EmbeddedStore::open(&dir.path().join("tokens.redb"))
            .expect("the store")
            .with_limits(SessionLimits {
                total_bytes: usize::MAX,
                bytes_per_namespace: usize::MAX,
                sessions_per_client: None,
            });
        let before = resident_bytes();
        runtime.block_on(async {
            let by = Presenter {
                client: CLIENT,
                issuer: ISSUER,
                sessions: None,
            };
            for first in (0..sessions).step_by(IN_FLIGHT) {
                let now = Timestamp::now();
                let chunk = first..(first + IN_FLIGHT).min(sessions);
                futures::future::join_all(chunk.map(|user| {
                    let store = &store;
                    async move {
                        let started = start(login(user), now, &mut SystemEntropy).expect("start");
                        store.create(&started.family).await.expect("create");
                        refresh(store, &started.token, by, now, &mut SystemEntropy)
                            .await
                            .expect("refresh");
                    }
                }))
                .await;
            }
        });
        let after = resident_bytes();
        println!(
            "sessions {sessions} rss_bytes_per_session {}",
            after.saturating_sub(before) / sessions as u64
        );
    }
}
