//! Raw signing rate on one thread: `token::sign` (the function the token endpoint signs
//! with, jsonwebtoken over aws-lc-rs) of an access token's claims with one key, the
//! baseline the refresh load script compares `POST {issuer}/token` with.
//!
//! `cargo run --release --example sign_rate -- [SECONDS] [RS256|ES256|...]`; prints one
//! line, `raw_<alg>_signatures_per_second N`.

use std::time::{Duration, Instant};

use authplane::keys::lifecycle::{KeyRecord, KeySet};
use authplane::keys::{Algorithm, KeyMaterial};
use jiff::Timestamp;
use serde_json::json;

/// The server's allocator, so that the comparison is about signing only.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(5);
    let alg: Algorithm = args
        .next()
        .unwrap_or_else(|| "RS256".into())
        .parse()
        .expect("an algorithm, e.g. RS256 or ES256");
    let now = Timestamp::now();
    let keys = KeySet::new(vec![KeyRecord {
        material: KeyMaterial::generate(alg, 2048).expect("key generation"),
        created: now,
        activates_at: now,
    }]);
    // The size and shape of what the token endpoint signs.
    let claims = json!({
        "iss": "http://127.0.0.1:18096/bench/web",
        "sub": "user-000001",
        "aud": "api",
        "iat": now.as_second(),
        "exp": now.as_second() + 900,
        "jti": "Jx3bq1nqGZ0vX2oWl3o1yA",
        "sid": "b1uO3oVq0m7mI5mKJpW0mA",
    });
    let claims = claims.as_object().expect("an object").clone();

    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut count: u64 = 0;
    while Instant::now() < deadline {
        for _ in 0..20 {
            let token = authplane::token::sign(&keys, &claims, now).expect("signing");
            std::hint::black_box(token);
        }
        count += 20;
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    println!(
        "raw_{}_signatures_per_second {rate:.0}",
        alg.to_string().to_lowercase()
    );
}
