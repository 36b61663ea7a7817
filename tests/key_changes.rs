//! Spec changes to a running SigningKey in dev mode: the keys follow the spec, and a
//! reverted change leaves nothing of itself behind (issue 11, item 1).

mod common;

use authplane::keys::Algorithm;
use common::{CHANGE_DEADLINE, Dev, eventually, signing_key};
use jiff::{SignedDuration, Timestamp};
use serde_json::Value;

const JWKS: &str = "/auth/flip/.well-known/jwks.json";

fn flip(algorithm: &str) -> String {
    signing_key(
        "auth",
        "flip",
        &format!("  algorithm: {algorithm}\n  rotation: {{every: 10m, prePublish: 15s}}\n"),
    )
}

/// The `alg` of every key the JWKS serves.
async fn served_algs(dev: &Dev) -> Vec<String> {
    let jwks: Value = dev.json(JWKS).await;
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["alg"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_reverted_algorithm_change_never_signs_with_the_abandoned_algorithm() {
    let dev = Dev::start(&[("flip.yaml", &flip("ES256"))]).await;
    assert_eq!(served_algs(&dev).await, ["ES256"]);

    dev.write("flip.yaml", &flip("EdDSA"));
    eventually("the EdDSA key pre-published", CHANGE_DEADLINE, || async {
        (served_algs(&dev).await == ["ES256", "EdDSA"]).then_some(())
    })
    .await;

    dev.write("flip.yaml", &flip("ES256"));
    eventually(
        "the abandoned EdDSA key to leave the JWKS",
        CHANGE_DEADLINE,
        || async { (served_algs(&dev).await == ["ES256"]).then_some(()) },
    )
    .await;

    // What is stored decides who signs later: the ES256 key, at any time before its
    // scheduled rotation, and no EdDSA key is waiting.
    let keys = dev.keys("auth", "flip");
    assert_eq!(keys.records().len(), 1);
    for later in [SignedDuration::from_secs(16), SignedDuration::from_mins(9)] {
        let at = Timestamp::now() + later;
        assert_eq!(keys.active(at).unwrap().material.alg(), Algorithm::ES256);
    }
    dev.stop().await;
}
