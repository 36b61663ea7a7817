//! Raw RS256 verification rate on one thread: jsonwebtoken decoding and verifying a token
//! from the published JWK, the baseline the load script compares `/authz` with.
//!
//! `cargo run --release --example verify_rate -- [SECONDS]`; prints one line,
//! `raw_rs256_verifications_per_second N`.

use std::time::{Duration, Instant};

use authplane::keys::lifecycle::{KeyRecord, KeySet};
use authplane::keys::{Algorithm, KeyMaterial};
use authplane::token::{MintRequest, mint};
use jiff::{SignedDuration, Timestamp};

/// The server's allocator, so that the comparison is about verification only.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let seconds: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let now = Timestamp::now();
    let material = KeyMaterial::generate(Algorithm::RS256, 2048).expect("key generation");
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(
        material
            .public_jwk()
            .to_json(material.kid(), Algorithm::RS256),
    )
    .expect("jwk");
    let keys = KeySet::new(vec![KeyRecord {
        material,
        created: now,
        activates_at: now,
    }]);
    let request = MintRequest {
        subject: "alice".into(),
        audiences: vec!["api".into()],
        ttl: SignedDuration::from_hours(1),
        ..MintRequest::default()
    };
    let token = mint(&keys, "https://issuer.example", &request, now).expect("mint");
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).expect("decoding key");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&["api"]);
    validation.set_issuer(&["https://issuer.example"]);

    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut count: u64 = 0;
    while Instant::now() < deadline {
        for _ in 0..100 {
            let verified = jsonwebtoken::decode::<serde_json::Value>(&token, &key, &validation);
            assert!(verified.is_ok());
        }
        count += 100;
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    println!("raw_rs256_verifications_per_second {rate:.0}");
}
