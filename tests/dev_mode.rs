//! Dev mode end to end: the real server on a loopback port, real keys, real files.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use authplane::dev::manifests::ObjectKey;
use authplane::dev::state::StateStore;
use authplane::keys::store;
use authplane::token::{MintRequest, mint};
use common::{CHANGE_DEADLINE, Dev, eventually, read_state, signing_key};
use jsonwebtoken::jwk::{Jwk, JwkSet, ThumbprintHash};
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::Value;

const WEB: &str = "  algorithm: RS256\n";
/// A SigningKey with an explicit issuer: on the server's URL (whose port is known once it
/// runs), under its namespace's path, as every issuer served here must be.
fn edge(dev: &Dev, algorithm: &str) -> String {
    let spec = format!(
        "  algorithm: {algorithm}\n  issuer: {}/auth/tenants/edge\n",
        dev.external_url()
    );
    signing_key("auth", "edge", &spec)
}
const EDGE_JWKS: &str = "/auth/tenants/edge/.well-known/jwks.json";

fn web() -> String {
    signing_key("auth", "web", WEB)
}

/// Verifies `token` the way an independent verifier would: the JWK from the served JWKS,
/// jsonwebtoken's own key parsing, required iss/aud/exp/nbf.
fn verify(token: &str, jwks: &JwkSet, issuer: &str, audience: &str) -> Result<Value, String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
    let kid = header.kid.ok_or("no kid in the header")?;
    let jwk = jwks
        .find(&kid)
        .ok_or(format!("kid {kid} is not in the JWKS"))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut validation = Validation::new(header.alg);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .map(|data| data.claims)
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn serves_discovery_and_jwks_for_each_signing_key() {
    let dev = Dev::start(&[("keys.yaml", &web())]).await;
    dev.write("edge.yaml", &edge(&dev, "EdDSA"));
    eventually("edge to be served", CHANGE_DEADLINE, || async {
        dev.kids(EDGE_JWKS).await
    })
    .await;

    let issuer = format!("{}/auth/web", dev.external_url());
    let discovery = dev.json("/auth/web/.well-known/openid-configuration").await;
    assert_eq!(discovery["issuer"], issuer.as_str());
    assert_eq!(
        discovery["jwks_uri"],
        format!("{issuer}/.well-known/jwks.json")
    );
    assert_eq!(
        discovery["id_token_signing_alg_values_supported"],
        serde_json::json!(["RS256"])
    );
    assert_eq!(
        discovery["response_types_supported"],
        serde_json::json!(["id_token"])
    );
    assert_eq!(
        discovery["subject_types_supported"],
        serde_json::json!(["public"])
    );

    let response = dev.get("/auth/web/.well-known/jwks.json").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/jwk-set+json"
    );
    assert_eq!(response.headers()["cache-control"], "public, max-age=300");
    assert!(response.headers().contains_key("etag"));
    let jwks: JwkSet = response.json().await.unwrap();
    assert_eq!(jwks.keys.len(), 1);
    let jwk: &Jwk = &jwks.keys[0];
    // Invariant 6, checked with jsonwebtoken's own RFC 7638 implementation.
    assert_eq!(
        jwk.common.key_id.as_deref(),
        Some(jwk.thumbprint(ThumbprintHash::SHA256).unwrap().as_str())
    );

    // Invariant 2: public members only.
    let raw = dev.json("/auth/web/.well-known/jwks.json").await;
    for member in ["d", "p", "q", "dp", "dq", "qi"] {
        assert!(
            raw["keys"][0].get(member).is_none(),
            "private member {member} published"
        );
    }

    // An explicit issuer decides the route by its path.
    let edge = dev
        .json("/auth/tenants/edge/.well-known/openid-configuration")
        .await;
    let edge_issuer = format!("{}/auth/tenants/edge", dev.external_url());
    assert_eq!(edge["issuer"], edge_issuer.as_str());
    assert_eq!(
        edge["jwks_uri"],
        format!("{edge_issuer}/.well-known/jwks.json").as_str()
    );
    assert_eq!(dev.kids(EDGE_JWKS).await.unwrap().len(), 1);

    assert_eq!(
        dev.get("/auth/nope/.well-known/jwks.json").await.status(),
        404
    );
    assert_eq!(dev.get("/healthz").await.status(), 200);
    assert_eq!(dev.get("/readyz").await.status(), 200);
    let metrics = dev.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"authplane_signing_keys{namespace="auth",name="web",state="Active"} 1"#),
        "{metrics}"
    );
    dev.stop().await;
}

#[tokio::test]
async fn a_minted_token_verifies_against_the_served_jwks() {
    let dev = Dev::start(&[("web.yaml", &web())]).await;
    let issuer = format!("{}/auth/web", dev.external_url());
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_authplane"))
        .args([
            "token", "mint", "--key", "auth/web", "--sub", "alice", "--aud", "payments",
        ])
        .args([
            "--ttl",
            "10m",
            "--claim",
            "roles=[\"admin\"]",
            "--claim",
            "email=alice@example.com",
        ])
        .arg("--state")
        .arg(dev.state())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8(output.stdout).unwrap().trim().to_owned();

    let jwks: JwkSet = dev
        .get("/auth/web/.well-known/jwks.json")
        .await
        .json()
        .await
        .unwrap();
    let claims = verify(&token, &jwks, &issuer, "payments").unwrap();
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["roles"], serde_json::json!(["admin"]));
    assert_eq!(claims["email"], "alice@example.com");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        600
    );
    assert_eq!(claims["nbf"], claims["iat"]);
    assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 16));
    assert!(verify(&token, &jwks, &issuer, "other-audience").is_err());

    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_authplane"))
        .args([
            "token",
            "mint",
            "--key",
            "auth/missing",
            "--sub",
            "alice",
            "--state",
        ])
        .arg(dev.state())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("no keys for SigningKey auth/missing")
    );
    dev.stop().await;
}

#[tokio::test]
async fn etag_and_conditional_requests() {
    let dev = Dev::start(&[("web.yaml", &web())]).await;
    let path = "/auth/web/.well-known/jwks.json";
    let first = dev.get(path).await;
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    let body = first.bytes().await.unwrap();
    assert_eq!(
        dev.get(path).await.headers()["etag"].to_str().unwrap(),
        etag,
        "stable between requests"
    );

    for tag in [
        etag.clone(),
        format!("W/{etag}"),
        format!("\"other\", {etag}"),
        "*".to_owned(),
    ] {
        let response = dev
            .http
            .get(dev.url(path))
            .header("if-none-match", &tag)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 304, "If-None-Match: {tag}");
        assert_eq!(response.headers()["etag"].to_str().unwrap(), etag);
        assert!(response.bytes().await.unwrap().is_empty());
    }
    let stale = dev
        .http
        .get(dev.url(path))
        .header("if-none-match", "\"stale\"")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 200);
    assert_eq!(stale.bytes().await.unwrap(), body);

    let head = dev.http.head(dev.url(path)).send().await.unwrap();
    assert_eq!(head.status(), 200);
    let post = dev.http.post(dev.url(path)).send().await.unwrap();
    assert_eq!(post.status(), 405);
    dev.stop().await;
}

#[tokio::test]
async fn manifest_changes_take_effect_without_a_restart() {
    let dev = Dev::start(&[("web.yaml", &web())]).await;
    let edge_jwks = EDGE_JWKS;
    assert!(dev.kids(edge_jwks).await.is_none());

    let started = Instant::now();
    dev.write("edge.yaml", &edge(&dev, "EdDSA"));
    eventually(
        "the new SigningKey to be served",
        CHANGE_DEADLINE,
        || async { dev.kids(edge_jwks).await },
    )
    .await;
    let created_after = started.elapsed();

    // Changing the algorithm pre-publishes a key of the new algorithm beside the old one.
    let before = dev.kids(edge_jwks).await.unwrap();
    dev.write("edge.yaml", &edge(&dev, "ES256"));
    let after = eventually("a key of the new algorithm", CHANGE_DEADLINE, || async {
        dev.kids(edge_jwks).await.filter(|kids| kids.len() == 2)
    })
    .await;
    assert_eq!(after[0], before[0]);
    let jwks = dev.json(edge_jwks).await;
    assert_eq!(jwks["keys"][1]["alg"], "ES256");

    std::fs::remove_file(dev.manifests().join("edge.yaml")).unwrap();
    eventually(
        "the deleted SigningKey to disappear",
        CHANGE_DEADLINE,
        || async { dev.kids(edge_jwks).await.is_none().then_some(()) },
    )
    .await;
    println!("a new manifest was served after {created_after:?}");
    dev.stop().await;
}

#[tokio::test]
async fn a_broken_manifest_is_reported_and_the_last_good_keys_keep_serving() {
    let dev = Dev::start(&[("web.yaml", &web())]).await;
    let jwks = "/auth/web/.well-known/jwks.json";
    let served = dev.get(jwks).await.bytes().await.unwrap();
    let errors = r#"authplane_reload_errors_total{source="manifest"}"#;
    let refused_before = dev.metric(errors).await;

    for broken in [
        "apiVersion: authplane.io/v1alpha1\nkind: SigningKey\nmetadata: {name: web, namespace: auth\n",
        &web().replace("RS256", "HS256"),
        &web().replace(
            "algorithm: RS256",
            "algorithm: RS256\n  rotation: {every: 1h, prePublish: 2h}",
        ),
    ] {
        let seen = dev.metric(errors).await;
        dev.write("web.yaml", broken);
        eventually("the refusal to be counted", CHANGE_DEADLINE, || async {
            (dev.metric(errors).await > seen).then_some(())
        })
        .await;
        assert_eq!(
            dev.get(jwks).await.bytes().await.unwrap(),
            served,
            "still serving the last good keys"
        );
    }
    assert!(dev.metric(errors).await >= refused_before + 3.0);
    dev.stop().await;
}

#[tokio::test]
async fn garbage_in_the_state_folder_is_reported_and_never_overwritten() {
    let dev = Dev::start(&[("web.yaml", &web())]).await;
    let jwks = "/auth/web/.well-known/jwks.json";
    let served = dev.get(jwks).await.bytes().await.unwrap();
    let state_file = dev.state().join("auth").join("web.json");
    std::fs::write(&state_file, "{\"keys.json\": \"garbage\"}").unwrap();

    let errors = r#"authplane_reload_errors_total{source="keystore"}"#;
    let seen = dev.metric(errors).await;
    dev.write("web.yaml", &web()); // any change triggers a reconcile
    eventually(
        "the unreadable state to be reported",
        CHANGE_DEADLINE,
        || async { (dev.metric(errors).await > seen).then_some(()) },
    )
    .await;
    assert_eq!(dev.get(jwks).await.bytes().await.unwrap(), served);
    assert_eq!(
        std::fs::read_to_string(&state_file).unwrap(),
        "{\"keys.json\": \"garbage\"}"
    );
    dev.stop().await;
}

#[tokio::test]
async fn a_restart_keeps_the_keys() {
    let mut dev = Dev::start(&[("web.yaml", &web())]).await;
    let jwks = "/auth/web/.well-known/jwks.json";
    let kids = dev.kids(jwks).await.unwrap();
    let stored = |dev: &Dev| -> BTreeMap<String, String> {
        serde_json::from_str(&read_state(&dev.state(), "auth", "web")).unwrap()
    };
    let before = stored(&dev);
    let mode = std::fs::metadata(dev.state().join("auth/web.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        std::fs::metadata(dev.state()).unwrap().permissions().mode() & 0o777,
        0o700
    );

    dev.restart().await;
    assert_eq!(dev.kids(jwks).await.unwrap(), kids);
    let after = stored(&dev);
    // Key material and lifecycle are untouched (the issuer follows the new port).
    for name in [
        store::LIFECYCLE.to_owned(),
        store::pem_file(&kids[0]),
        store::ACTIVE_KEY.to_owned(),
    ] {
        assert!(before[&name] == after[&name], "{name} was rewritten");
    }
    dev.stop().await;
}

/// A SigningKey on a schedule of seconds: keys rotate while the server runs; every token
/// signed by the Active key stays verifiable against every JWKS served during retainFor.
#[tokio::test]
async fn a_short_schedule_rotates_while_serving() {
    let spec =
        "  algorithm: ES256\n  rotation:\n    every: 2s\n    prePublish: 1s\n    retainFor: 2s\n";
    let dev = Dev::start(&[("fast.yaml", &signing_key("auth", "fast", spec))]).await;
    let jwks_path = "/auth/fast/.well-known/jwks.json";
    let issuer = format!("{}/auth/fast", dev.external_url());
    let store = StateStore::new(dev.state());
    let id = ObjectKey {
        namespace: "auth".into(),
        name: "fast".into(),
    };
    let retain = Duration::from_secs(2);

    let mut tokens: Vec<(Instant, String, String)> = Vec::new(); // (signed, kid, token)
    let mut served: Vec<(Instant, JwkSet)> = Vec::new(); // (request sent, JWKS)
    let mut signers: BTreeMap<String, Instant> = BTreeMap::new();
    let start = Instant::now();
    // Watch for 3 rotations, then long enough for the first key's retention to end.
    while signers.len() < 4 && start.elapsed() < Duration::from_secs(20) {
        let sent = Instant::now();
        let jwks: JwkSet = dev.get(jwks_path).await.json().await.unwrap();
        served.push((sent, jwks));
        let keys = store::from_data(&store.load(&id).unwrap().unwrap()).unwrap();
        let request = MintRequest {
            subject: "svc".into(),
            audiences: vec!["api".into()],
            ttl: jiff::SignedDuration::from_secs(2),
            ..MintRequest::default()
        };
        let signed = Instant::now();
        let now = jiff::Timestamp::now();
        let token = mint(&keys, &issuer, &request, now).unwrap();
        let kid = keys.active(now).unwrap().material.kid().to_owned();
        signers.entry(kid.clone()).or_insert(signed);
        tokens.push((signed, kid, token));
        tokio::time::sleep(Duration::from_millis(100)).await; // sampling rate, not synchronisation
    }
    assert!(
        signers.len() >= 4,
        "saw {} signing keys in {:?}",
        signers.len(),
        start.elapsed()
    );

    for (signed, kid, token) in &tokens {
        for (sent, jwks) in served
            .iter()
            .filter(|(sent, _)| *sent >= *signed && *sent <= *signed + retain)
        {
            assert!(
                jwks.find(kid).is_some(),
                "kid {kid} signed at {:?} missing from the JWKS served at {:?}",
                signed.duration_since(start),
                sent.duration_since(start)
            );
            // The token's exp is real time; only fresh JWKS samples can check the signature.
            if sent.elapsed() < Duration::from_secs(1) {
                verify(token, jwks, &issuer, "api").unwrap();
            }
        }
    }
    // The first key left the JWKS once its retention ended.
    let first_kid = &tokens[0].1;
    let latest = dev.kids(jwks_path).await.unwrap();
    assert!(
        !latest.contains(first_kid),
        "the first key is still published: {latest:?}"
    );
    assert!(
        dev.metric(r#"authplane_key_rotations_total{namespace="auth",name="fast"}"#)
            .await
            >= 3.0
    );
    dev.stop().await;
}

#[tokio::test]
async fn a_revoked_key_leaves_the_jwks_at_once_and_a_replacement_signs() {
    let dev = Dev::start(&[("web.yaml", &web())]).await;
    let jwks = "/auth/web/.well-known/jwks.json";
    let old = dev.kids(jwks).await.unwrap().remove(0);
    let annotated = web().replace(
        "  namespace: auth\n",
        &format!("  namespace: auth\n  annotations:\n    authplane.io/revoke-kids: {old}\n"),
    );
    dev.write("web.yaml", &annotated);
    let kids = eventually(
        "the revoked kid to leave the JWKS",
        CHANGE_DEADLINE,
        || async { dev.kids(jwks).await.filter(|kids| !kids.contains(&old)) },
    )
    .await;
    assert_eq!(kids.len(), 1);
    let keys = dev.keys("auth", "web");
    assert_eq!(
        keys.active(jiff::Timestamp::now()).unwrap().material.kid(),
        kids[0]
    );
    dev.stop().await;
}
