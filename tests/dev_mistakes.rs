//! Dev mode against the mistakes people make with folders and files: none of them may
//! change or lose a key, or stop the server from seeing the next edit.

mod common;

use std::sync::Arc;
use std::time::Duration;

use authplane::clock::{ManualClock, SystemClock};
use authplane::dev::Tuning;
use common::{CHANGE_DEADLINE, Dev, eventually, signing_key};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::Value;

const JWKS: &str = "/auth/web/.well-known/jwks.json";
const EDGE_JWKS: &str = "/auth/tenants/edge/.well-known/jwks.json";
const MANIFEST_ERRORS: &str = r#"authplane_reload_errors_total{source="manifest"}"#;
const KEYSTORE_ERRORS: &str = r#"authplane_reload_errors_total{source="keystore"}"#;

fn web() -> String {
    signing_key("auth", "web", "  algorithm: RS256\n")
}

/// A SigningKey with an explicit issuer, on the server's URL under its namespace.
fn edge(dev: &Dev) -> String {
    let spec = format!(
        "  algorithm: EdDSA\n  issuer: {}/auth/tenants/edge\n",
        dev.external_url()
    );
    signing_key("auth", "edge", &spec)
}

/// Verifies `token` against the JWKS served now, as an independent verifier would.
async fn verifies(dev: &Dev, token: &str) -> Result<(), String> {
    let jwks: JwkSet = dev.get(JWKS).await.json().await.unwrap();
    let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
    let kid = header.kid.ok_or("no kid")?;
    let jwk = jwks.find(&kid).ok_or(format!("kid {kid} is not served"))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut validation = Validation::new(header.alg);
    validation.set_audience(&["api"]);
    validation.set_issuer(&[format!("{}/auth/web", dev.external_url())]);
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Waits until `edge.yaml`, written now, is served: every change made before it has
/// been read by then.
async fn barrier(dev: &Dev) {
    dev.write("edge.yaml", &edge(dev));
    eventually("edge.yaml to be served", CHANGE_DEADLINE, || async {
        dev.kids(EDGE_JWKS).await
    })
    .await;
}

/// Item 2: `mv state state.saved` while serving must not replace the keys.
#[tokio::test]
async fn a_vanished_state_folder_gets_the_keys_in_memory_back() {
    let dev = Dev::start(&[("web.yaml", &web())]).await;
    let token = dev.mint(("auth", "web"), "alice", &["api"], serde_json::json!({}));
    let kids = dev.kids(JWKS).await.unwrap();
    let seen = dev.metric(KEYSTORE_ERRORS).await;

    std::fs::rename(dev.state(), dev.dir.path().join("state.saved")).unwrap();
    dev.write("web.yaml", &web()); // any change makes a reconcile
    let state_file = dev.state().join("auth/web.json");
    eventually("the keys to be written back", CHANGE_DEADLINE, || async {
        state_file.exists().then_some(())
    })
    .await;

    assert_eq!(
        dev.kids(JWKS).await.unwrap(),
        kids,
        "the same keys are served"
    );
    verifies(&dev, &token).await.unwrap();
    let written: Vec<String> = dev
        .keys("auth", "web")
        .records()
        .iter()
        .map(|r| r.material.kid().to_owned())
        .collect();
    assert_eq!(
        written, kids,
        "the state folder holds the served keys again"
    );
    assert!(dev.metric(KEYSTORE_ERRORS).await > seen, "counted");
    dev.stop().await;
}

/// Item 3: a second definition in a new file is refused; the served one keeps serving,
/// and removing the newcomer leaves no trace.
#[tokio::test]
async fn a_duplicate_in_a_new_file_is_refused_and_leaves_no_trace() {
    let dev = Dev::start(&[("signing-keys.yaml", &web())]).await;
    let kids = dev.kids(JWKS).await.unwrap();
    let seen = dev.metric(MANIFEST_ERRORS).await;

    // `dup.yaml` sorts before `signing-keys.yaml`: being first by name wins nothing.
    dev.write("dup.yaml", &web().replace("RS256", "ES256"));
    eventually("the newcomer to be refused", CHANGE_DEADLINE, || async {
        (dev.metric(MANIFEST_ERRORS).await > seen).then_some(())
    })
    .await;
    assert_eq!(dev.kids(JWKS).await.unwrap(), kids);

    std::fs::remove_file(dev.manifests().join("dup.yaml")).unwrap();
    barrier(&dev).await;
    assert_eq!(
        dev.kids(JWKS).await.unwrap(),
        kids,
        "no key of the newcomer"
    );
    assert_eq!(dev.keys("auth", "web").records().len(), 1);
    dev.stop().await;
}

/// Item 4: `rm -rf m1; mkdir m1; cp ... m1/` must not stop the watcher.
#[tokio::test]
async fn the_watch_survives_a_recreated_folder() {
    let dev = Dev::start(&[("web.yaml", &web())]).await;
    let kids = dev.kids(JWKS).await.unwrap();

    std::fs::remove_dir_all(dev.manifests()).unwrap();
    std::fs::create_dir(dev.manifests()).unwrap();
    std::fs::write(dev.manifests().join("web.yaml"), web()).unwrap();
    // Served within the deadline: the rescan (15 s) is not what saw it.
    barrier(&dev).await;
    assert_eq!(dev.kids(JWKS).await.unwrap(), kids);

    // And the new folder is watched: a later deletion is seen too.
    std::fs::remove_file(dev.manifests().join("edge.yaml")).unwrap();
    eventually(
        "edge.yaml's removal to be seen",
        CHANGE_DEADLINE,
        || async { dev.kids(EDGE_JWKS).await.is_none().then_some(()) },
    )
    .await;
    dev.stop().await;
}

/// Item 4: the periodic rescan finds changes on its own.
#[tokio::test]
async fn a_rescan_finds_changes_without_the_watcher() {
    let tuning = Tuning {
        rescan_every: Duration::from_millis(200),
        watch: false,
    };
    let dev = Dev::start_tuned(&[("web.yaml", &web())], Arc::new(SystemClock), 0, tuning).await;
    barrier(&dev).await;
    dev.stop().await;
}

/// Item 5: `: > web.yaml` is a mistake, not a deletion; deleting the file is.
#[tokio::test]
async fn an_emptied_file_keeps_serving_and_a_deleted_one_does_not() {
    let dev = Dev::start(&[("web.yaml", &web())]).await;
    let served = dev.get(JWKS).await.bytes().await.unwrap();
    let seen = dev.metric(MANIFEST_ERRORS).await;

    std::fs::write(dev.manifests().join("web.yaml"), "").unwrap(); // truncated in place
    eventually("the empty file to be refused", CHANGE_DEADLINE, || async {
        (dev.metric(MANIFEST_ERRORS).await > seen).then_some(())
    })
    .await;
    assert_eq!(dev.get(JWKS).await.bytes().await.unwrap(), served);

    std::fs::remove_file(dev.manifests().join("web.yaml")).unwrap();
    eventually("the deleted file's key to go", CHANGE_DEADLINE, || async {
        dev.kids(JWKS).await.is_none().then_some(())
    })
    .await;
    dev.stop().await;
}

/// Item 6: a broken file that did not change is not counted again at every reload.
#[tokio::test]
async fn an_unchanged_broken_file_is_reported_once() {
    let broken = signing_key("auth", "other", "  algorithm: HS256\n");
    let dev = Dev::start(&[("web.yaml", &web()), ("broken.yaml", &broken)]).await;
    assert_eq!(dev.metric(MANIFEST_ERRORS).await, 1.0);
    barrier(&dev).await;
    dev.write("web.yaml", &web().replace("RS256", "RS384"));
    eventually("the edit to be served", CHANGE_DEADLINE, || async {
        dev.kids(JWKS).await.filter(|kids| kids.len() == 2)
    })
    .await;
    assert_eq!(dev.metric(MANIFEST_ERRORS).await, 1.0);
    dev.stop().await;
}

/// Item 8: `lastTransitionTime` moves only when the condition does.
#[tokio::test]
async fn status_transition_times_move_only_on_a_transition() {
    let t0: jiff::Timestamp = "2026-03-01T10:00:00Z".parse().unwrap();
    let clock = Arc::new(ManualClock::new(t0));
    let policy = "apiVersion: authplane.io/v1alpha1\nkind: AuthPolicy\nmetadata: {name: payments, namespace: shop}\nspec:\n  issuers: [{signingKeyRef: {name: web, namespace: auth}}]\n  audiences: [payments]\n  rollout: {mode: Audit}\n";
    let dev = Dev::start_with(
        &[("web.yaml", &web()), ("policy.yaml", policy)],
        clock.clone(),
        0,
    )
    .await;
    let ready = |status: &Value| -> (String, String) {
        let ready = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        (
            ready["status"].as_str().unwrap().to_owned(),
            ready["lastTransitionTime"].as_str().unwrap().to_owned(),
        )
    };
    let first = dev.json("/status/shop/payments").await;
    assert_eq!(
        ready(&first),
        ("True".into(), "2026-03-01T10:00:00Z".into())
    );

    clock.advance(jiff::SignedDuration::from_hours(1));
    let again = dev.json("/status/shop/payments").await;
    assert_eq!(ready(&again), ready(&first), "unchanged: the time stays");
    assert_eq!(again["conditions"], first["conditions"]);

    // A transition: the SigningKey goes, Ready turns False at the time of the request.
    std::fs::remove_file(dev.manifests().join("web.yaml")).unwrap();
    let changed = eventually("Ready to turn False", CHANGE_DEADLINE, || async {
        let status = dev.json("/status/shop/payments").await;
        (ready(&status).0 == "False").then_some(status)
    })
    .await;
    assert_eq!(ready(&changed).1, "2026-03-01T11:00:00Z");
    dev.stop().await;
}

/// Item 2, for rollouts: a vanished record is written back; the rollout does not start
/// over at its first step.
#[tokio::test]
async fn a_vanished_rollout_record_is_written_back() {
    let t0 = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).unwrap();
    let clock = Arc::new(ManualClock::new(t0));
    let policy = "apiVersion: authplane.io/v1alpha1\nkind: AuthPolicy\nmetadata: {name: payments, namespace: shop}\nspec:\n  issuers: [{signingKeyRef: {name: web, namespace: auth}}]\n  audiences: [payments]\n  rollout: {mode: Enforce, steps: [10, 50, 100], stepEvery: 1h}\n";
    let dev = Dev::start_with(
        &[("web.yaml", &web()), ("policy.yaml", policy)],
        clock.clone(),
        0,
    )
    .await;
    clock.advance(jiff::SignedDuration::from_mins(61));
    dev.write("policy.yaml", policy); // a reconcile records the second step
    let before = eventually(
        "the second step to be recorded",
        CHANGE_DEADLINE,
        || async {
            let status = dev.json("/status/shop/payments").await;
            (status["rollout"]["step"] == 1).then(|| status["rollout"].clone())
        },
    )
    .await;

    std::fs::rename(dev.state(), dev.dir.path().join("state.saved")).unwrap();
    dev.write("policy.yaml", policy);
    let record = dev.state().join(".rollouts/shop/payments.json");
    eventually("the record to be written back", CHANGE_DEADLINE, || async {
        record.exists().then_some(())
    })
    .await;
    assert_eq!(dev.json("/status/shop/payments").await["rollout"], before);
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&record).unwrap()).unwrap();
    assert_eq!(written, before);
    dev.stop().await;
}

/// Issue 18, item 6: a policy with mistakes the schema catches and mistakes only the
/// checks beyond it catch got the first kind in one review, the rest after they were
/// fixed. `/validate` now answers all of them at once, as dev mode refuses the file.
#[tokio::test]
async fn every_mistake_of_a_policy_is_reported_in_one_review() {
    let dev = Dev::start(&[("web.yaml", &web())]).await;
    let policy = serde_json::json!({
        "apiVersion": "authplane.io/v1alpha1", "kind": "AuthPolicy",
        "metadata": {"name": "Payments", "namespace": "shop"},
        "spec": {
            "issuers": [{"signingKeyRef": {"name": "web", "namespace": "auth"}}],
            "audiences": "payments",
            "leeway": 30,
            "tokenSourcez": {},
            "forwardClaims": {"sub": "Set-Cookie"},
            "legacySession": {"cookie": "session id"},
            "rollout": {"mode": "Enforced", "steps": [50, 10], "stepEvery": "1h"},
        },
    });
    let review = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "8", "operation": "CREATE", "userInfo": {},
            "kind": {"group": "authplane.io", "version": "v1alpha1", "kind": "AuthPolicy"},
            "resource": {"group": "authplane.io", "version": "v1alpha1", "resource": "authpolicies"},
            "object": policy},
    });
    let answer: Value = dev
        .http
        .post(dev.url("/validate"))
        .json(&review)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut fields: Vec<&str> = answer["response"]["status"]["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|cause| cause["field"].as_str().unwrap())
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "metadata.name",
            "spec.audiences",
            "spec.forwardClaims[sub]",
            "spec.leeway",
            "spec.legacySession.cookie",
            "spec.rollout.mode",
            "spec.rollout.steps[1]",
            "spec.tokenSourcez",
        ],
        "{answer}"
    );
    let message = answer["response"]["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("spec.tokenSourcez: unknown field; did you mean `tokenSources`?"),
        "{message}"
    );
    dev.stop().await;
}
