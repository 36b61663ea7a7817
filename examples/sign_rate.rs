//! Signing rates on one thread, the baselines the refresh load script compares `POST
//! {issuer}/token` with: raw aws-lc-rs signatures of an access token's header and
//! payload with a key parsed once (the floor), `jsonwebtoken::encode` with a prebuilt
//! `EncodingKey` (what a hand-written token service does; it parses the key again at
//! every signature), and `token::sign` (what the token endpoint calls).
//!
//! `cargo run --release --example sign_rate -- [SECONDS] [RS256|ES256|...]`; prints three
//! lines, `<what>_<alg>_signatures_per_second N`.

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

    let alg_name = alg.to_string().to_lowercase();
    let material = &keys.active(now).expect("an active key").material;
    let message = {
        let token = authplane::token::sign(&keys, &claims, now).expect("signing");
        token.rsplit_once('.').expect("a JWS").0.to_owned()
    };
    let raw = rate(seconds, || material.sign(message.as_bytes()).map(|_| ()));
    println!("raw_{alg_name}_signatures_per_second {raw:.0}");
    let mut header = jsonwebtoken::Header::new(alg.to_jwt());
    header.kid = Some(material.kid().to_owned());
    let encoding = material.encoding_key().expect("encoding key");
    let jwt = rate(seconds, || {
        jsonwebtoken::encode(&header, &claims, &encoding).map(|_| ())
    });
    println!("jsonwebtoken_{alg_name}_signatures_per_second {jwt:.0}");
    let ours = rate(seconds, || {
        authplane::token::sign(&keys, &claims, now).map(|_| ())
    });
    println!("token_sign_{alg_name}_signatures_per_second {ours:.0}");
}

/// Calls `sign` for `seconds`; signatures per second.
fn rate<E: std::fmt::Debug>(seconds: u64, mut sign: impl FnMut() -> Result<(), E>) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut count: u64 = 0;
    while Instant::now() < deadline {
        for _ in 0..20 {
            sign().expect("signing");
        }
        count += 20;
    }
    count as f64 / started.elapsed().as_secs_f64()
}
