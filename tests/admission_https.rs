//! The admission webhook end to end: AdmissionReviews POSTed over HTTPS to a dev server
//! on loopback, with a client that trusts only the test CA.

mod common;

use std::sync::Arc;

use authplane::clock::SystemClock;
use authplane::dev::{self, DevConfig, DevServer};
use authplane::tls::files::TlsFiles;
use common::https::{self, Conn, Pki};
use serde_json::{Value, json};
use tempfile::TempDir;

const KEYS: &str = "apiVersion: authplane.io/v1alpha1\nkind: SigningKey\nmetadata: {name: web, namespace: auth}\nspec: {algorithm: ES256}\n";

struct Secure {
    server: Option<DevServer>,
    pki: Pki,
    _dir: TempDir,
}

impl Secure {
    async fn start() -> Secure {
        let dir = tempfile::tempdir().unwrap();
        let manifests = dir.path().join("manifests");
        std::fs::create_dir(&manifests).unwrap();
        std::fs::write(manifests.join("keys.yaml"), KEYS).unwrap();
        let pki = Pki::new("admission test CA");
        let (cert, key) = pki.leaf();
        let files = TlsFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
        };
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
        let config = DevConfig {
            manifests,
            state: dir.path().join("state"),
            listen: "127.0.0.1:0".parse().unwrap(),
            external_url: None,
            decision_cache_size: 100,
            tls: Some(files),
            revoke_rate_per_minute: authplane::server::revoke::DEFAULT_REVOKE_RATE,
            unconfined_issuer_namespaces: Vec::new(),
            serving: Default::default(),
            tokens: Default::default(),
        };
        let server = dev::start(config, Arc::new(SystemClock)).await.unwrap();
        assert!(server.base_url().starts_with("https://"));
        Secure {
            server: Some(server),
            pki,
            _dir: dir,
        }
    }

    async fn connect(&self) -> Conn {
        https::connect(self.server.as_ref().unwrap().addr(), &self.pki.ca_pem)
            .await
            .unwrap()
    }

    async fn stop(mut self) {
        self.server.take().unwrap().shutdown().await.unwrap();
    }
}

fn signing_key(spec: Value) -> Value {
    json!({"apiVersion": "authplane.io/v1alpha1", "kind": "SigningKey",
           "metadata": {"name": "web", "namespace": "auth"}, "spec": spec})
}

fn auth_policy(spec: Value) -> Value {
    let mut spec = spec;
    let fields = spec.as_object_mut().unwrap();
    fields
        .entry("issuers")
        .or_insert(json!([{"signingKeyRef": {"name": "web", "namespace": "auth"}}]));
    fields.entry("audiences").or_insert(json!(["payments"]));
    json!({"apiVersion": "authplane.io/v1alpha1", "kind": "AuthPolicy",
           "metadata": {"name": "payments", "namespace": "shop"}, "spec": spec})
}

/// An AdmissionReview as the apiserver sends it.
fn review(uid: &str, operation: &str, object: &Value, old: Option<&Value>) -> Value {
    let kind = object["kind"].as_str().unwrap();
    let resource = match kind {
        "SigningKey" => "signingkeys",
        _ => "authpolicies",
    };
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "authplane.io", "version": "v1alpha1", "kind": kind},
            "resource": {"group": "authplane.io", "version": "v1alpha1", "resource": resource},
            "name": object["metadata"]["name"],
            "namespace": object["metadata"]["namespace"],
            "operation": operation,
            "userInfo": {"username": "alice", "groups": ["system:authenticated"]},
            "object": object,
            "oldObject": old,
            "dryRun": false,
        }
    })
}

/// POSTs a review, checks the envelope (apiVersion, kind, uid echoed), returns the
/// response part.
async fn ask(
    conn: &mut Conn,
    uid: &str,
    operation: &str,
    object: &Value,
    old: Option<&Value>,
) -> Value {
    let answer = conn
        .post_json("/validate", &review(uid, operation, object, old))
        .await;
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1", "{answer}");
    assert_eq!(answer["kind"], "AdmissionReview", "{answer}");
    assert_eq!(answer["response"]["uid"], uid, "{answer}");
    answer["response"].clone()
}

fn warnings(response: &Value) -> Vec<String> {
    response["warnings"]
        .as_array()
        .map(|w| w.iter().map(|w| w.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn valid_objects_are_allowed_without_warnings() {
    let server = Secure::start().await;
    let mut conn = server.connect().await;
    for object in [
        signing_key(json!({})),
        // (An issuer on another host than the server's is valid too, with a warning that
        // nothing is served for it: see tests/tenancy.rs.)
        signing_key(json!({"algorithm": "RS256", "rsaBits": 3072})),
        auth_policy(json!({"rollout": {"mode": "Audit"}})),
        auth_policy(
            json!({"rollout": {"mode": "Enforce", "percentage": 10}, "forwardClaims": {"sub": "X-Auth-Subject"}}),
        ),
    ] {
        let response = ask(&mut conn, "uid-ok", "CREATE", &object, None).await;
        assert_eq!(response["allowed"], true, "{object}: {response}");
        assert!(warnings(&response).is_empty(), "{object}: {response}");
    }
    server.stop().await;
}

#[tokio::test]
async fn each_class_of_invalid_object_is_refused_with_its_field() {
    let server = Secure::start().await;
    let mut conn = server.connect().await;
    let mut bad_name = signing_key(json!({}));
    bad_name["metadata"]["name"] = json!("Web_Keys");
    let mut bad_annotation = signing_key(json!({}));
    bad_annotation["metadata"]["annotations"] = json!({"authplane.io/rotate-at": "tomorrow"});
    let cases = [
        // Types the schema refuses, read through the same parser as dev mode.
        (signing_key(json!({"algorithm": "HS256"})), "spec.algorithm"),
        (
            signing_key(json!({"rotation": {"every": "1y"}})),
            "spec.rotation.every",
        ),
        // CEL rules of the CRD, evaluated in process.
        (signing_key(json!({"rsaBits": 1024})), "spec.rsaBits"),
        (
            signing_key(json!({"algorithm": "EdDSA", "rsaBits": 2048})),
            "spec.rsaBits",
        ),
        (
            signing_key(json!({"issuer": "ftp://auth.example.com"})),
            "spec.issuer",
        ),
        (
            signing_key(
                json!({"rotation": {"every": "1h", "prePublish": "2h", "retainFor": "3h"}}),
            ),
            "spec.rotation.prePublish",
        ),
        (
            signing_key(
                json!({"rotation": {"every": "10h", "prePublish": "2h", "retainFor": "1h"}}),
            ),
            "spec.rotation.retainFor",
        ),
        // Checks beyond CEL.
        (bad_name, "metadata.name"),
        (
            bad_annotation,
            "metadata.annotations[authplane.io/rotate-at]",
        ),
        (auth_policy(json!({"issuers": []})), "spec.issuers"),
        (auth_policy(json!({"leeway": "10m"})), "spec.leeway"),
        (
            auth_policy(json!({"rollout": {"percentage": 150}})),
            "spec.rollout.percentage",
        ),
        (
            auth_policy(json!({"rollout": {"percentage": 12.3456}})),
            "spec.rollout.percentage",
        ),
        (
            auth_policy(json!({"rollout": {"mode": "Sometimes"}})),
            "spec.rollout.mode",
        ),
        (
            auth_policy(json!({"forwardClaims": {"sub": "Set-Cookie"}})),
            "spec.forwardClaims[sub]",
        ),
        (
            auth_policy(json!({"tokenSources": {"cookies": ["bad cookie"]}})),
            "spec.tokenSources.cookies[0]",
        ),
        // Stepped rollouts: strictly increasing steps within 0-100, with an interval.
        (
            auth_policy(
                json!({"rollout": {"mode": "Enforce", "steps": [10, 50, 50], "stepEvery": "1h"}}),
            ),
            "spec.rollout.steps[2]",
        ),
        (
            auth_policy(
                json!({"rollout": {"mode": "Enforce", "steps": [10, 150], "stepEvery": "1h"}}),
            ),
            "spec.rollout.steps",
        ),
        (
            auth_policy(json!({"rollout": {"mode": "Enforce", "steps": [10, 50]}})),
            "spec.rollout",
        ),
        // External issuers: https only, and one kind of issuer per entry.
        (
            auth_policy(json!({"issuers": [{"issuer": "http://login.example.com/t/v2.0"}]})),
            "spec.issuers[0].issuer",
        ),
        (
            auth_policy(
                json!({"issuers": [{"issuer": "https://login.example.com", "signingKeyRef": {"name": "web"}}]}),
            ),
            "spec.issuers[0]",
        ),
    ];
    for (i, (object, field)) in cases.iter().enumerate() {
        let uid = format!("uid-{i}");
        let response = ask(&mut conn, &uid, "CREATE", object, None).await;
        assert_eq!(response["allowed"], false, "{object}: {response}");
        let status = &response["status"];
        assert_eq!(status["code"], 422, "{status}");
        assert_eq!(status["reason"], "Invalid", "{status}");
        assert_eq!(status["details"]["group"], "authplane.io");
        assert_eq!(status["details"]["kind"], object["kind"]);
        let message = status["message"].as_str().unwrap();
        assert!(message.contains(field), "{field} not in {message:?}");
        let causes: Vec<&str> = status["details"]["causes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["field"].as_str().unwrap())
            .collect();
        assert!(
            causes.contains(field),
            "{field} not in {causes:?} ({message})"
        );
    }
    // What would be accepted is said, not only what is wrong.
    let response = ask(
        &mut conn,
        "uid-bits",
        "CREATE",
        &signing_key(json!({"rsaBits": 1024})),
        None,
    )
    .await;
    assert!(
        response["status"]["message"]
            .as_str()
            .unwrap()
            .contains("2048, 3072 or 4096")
    );
    server.stop().await;
}

#[tokio::test]
async fn risky_but_legal_settings_are_allowed_with_warnings() {
    let server = Secure::start().await;
    let mut conn = server.connect().await;
    let cases = [
        (
            signing_key(
                json!({"rotation": {"every": "24h", "prePublish": "10m", "retainFor": "30m"}}),
            ),
            "spec.rotation.retainFor",
        ),
        (
            signing_key(
                json!({"rotation": {"every": "10m", "prePublish": "2m", "retainFor": "24h"}}),
            ),
            "spec.rotation",
        ),
        (
            auth_policy(
                json!({"issuers": [{"signingKeyRef": {"name": "not-yet", "namespace": "auth"}}]}),
            ),
            "spec.issuers[0].signingKeyRef: SigningKey auth/not-yet does not exist",
        ),
        (auth_policy(json!({"audiences": []})), "spec.audiences"),
        (
            auth_policy(json!({"rollout": {"mode": "Enforce", "percentage": 100}})),
            "spec.rollout.percentage: enforces for 100% of users on creation, with no Audit phase",
        ),
    ];
    for (object, warning) in cases {
        let response = ask(&mut conn, "uid-warn", "CREATE", &object, None).await;
        assert_eq!(response["allowed"], true, "{object}: {response}");
        let warnings = warnings(&response);
        assert!(
            warnings.iter().any(|w| w.starts_with(warning)),
            "{warning:?} not in {warnings:?}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn updates_algorithm_changes_secret_renames_and_percentage_steps() {
    let server = Secure::start().await;
    let mut conn = server.connect().await;

    // An algorithm change rotates into the new algorithm: allowed, with what to check.
    let old = signing_key(json!({"algorithm": "RS256"}));
    let response = ask(
        &mut conn,
        "u1",
        "UPDATE",
        &signing_key(json!({"algorithm": "ES256"})),
        Some(&old),
    )
    .await;
    assert_eq!(response["allowed"], true, "{response}");
    let warned = warnings(&response);
    assert!(
        warned[0].starts_with("spec.algorithm: changes from RS256/2048 to ES256: a new key is published now and signs in 1h"),
        "{warned:?}"
    );
    // So is an RSA size change.
    let response = ask(
        &mut conn,
        "u2",
        "UPDATE",
        &signing_key(json!({"rsaBits": 4096})),
        Some(&old),
    )
    .await;
    assert_eq!(response["allowed"], true);
    assert!(warnings(&response)[0].contains("RS256/2048 to RS256/4096"));
    // Nothing changed: nothing to say.
    let response = ask(&mut conn, "u3", "UPDATE", &old, Some(&old)).await;
    assert_eq!(
        (response["allowed"].as_bool(), warnings(&response).len()),
        (Some(true), 0)
    );
    // A new Secret name would start over with new keys: refused, saying what is accepted.
    let response = ask(
        &mut conn,
        "u4",
        "UPDATE",
        &signing_key(json!({"secretName": "web-keys-2"})),
        Some(&old),
    )
    .await;
    assert_eq!(response["allowed"], false);
    assert_eq!(
        response["status"]["details"]["causes"][0]["field"],
        "spec.secretName"
    );
    assert!(
        response["status"]["message"]
            .as_str()
            .unwrap()
            .contains("Keep \"web-keys\" (accepted)")
    );

    // Percentage steps.
    let at = |mode: &str, percentage: f64| {
        auth_policy(json!({"rollout": {"mode": mode, "percentage": percentage}}))
    };
    let steps = [
        (
            at("Enforce", 10.0),
            at("Enforce", 100.0),
            Some("from 10% in one step"),
        ),
        (
            at("Audit", 100.0),
            at("Enforce", 100.0),
            Some("straight from Audit"),
        ),
        (
            at("Disabled", 100.0),
            at("Enforce", 75.0),
            Some("from mode Disabled, with no Audit phase"),
        ),
        (at("Enforce", 10.0), at("Enforce", 50.0), None),
        (at("Enforce", 50.0), at("Enforce", 100.0), None),
        (at("Enforce", 100.0), at("Enforce", 0.0), None), // a rollback never warns
        (at("Enforce", 100.0), at("Audit", 100.0), None),
    ];
    for (before, after, expected) in steps {
        let response = ask(&mut conn, "u5", "UPDATE", &after, Some(&before)).await;
        assert_eq!(response["allowed"], true, "{response}");
        let warned = warnings(&response);
        match expected {
            Some(text) => assert!(
                warned.len() == 1
                    && warned[0].starts_with("spec.rollout.percentage")
                    && warned[0].contains(text),
                "{before} -> {after}: {warned:?}"
            ),
            None => assert!(warned.is_empty(), "{before} -> {after}: {warned:?}"),
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn malformed_reviews_get_a_clear_400_and_others_pass_unjudged() {
    let server = Secure::start().await;
    let mut conn = server.connect().await;
    let good = review("u", "CREATE", &signing_key(json!({})), None);
    let mut v1beta1 = good.clone();
    v1beta1["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let mut no_uid = good.clone();
    no_uid["request"]["uid"] = json!("");
    let mut no_object = good.clone();
    no_object["request"]["object"] = Value::Null;
    let mut bad_operation = good.clone();
    bad_operation["request"]["operation"] = json!("PATCH");
    let cases: [(Vec<u8>, &str); 8] = [
        (b"".to_vec(), "not an AdmissionReview"),
        (b"{not json".to_vec(), "not an AdmissionReview"),
        (b"[1, 2]".to_vec(), "not an AdmissionReview"),
        (
            serde_json::to_vec(
                &json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}),
            )
            .unwrap(),
            "has no request",
        ),
        (
            serde_json::to_vec(&v1beta1).unwrap(),
            "admissionReviewVersions: [v1]",
        ),
        (serde_json::to_vec(&no_uid).unwrap(), "request.uid is empty"),
        (
            serde_json::to_vec(&no_object).unwrap(),
            "request.object is missing",
        ),
        (
            serde_json::to_vec(&bad_operation).unwrap(),
            "unknown variant `PATCH`",
        ),
    ];
    for (body, expected) in cases {
        let (status, answer) = conn.request("POST", "/validate", &body).await;
        let answer = String::from_utf8_lossy(&answer);
        assert_eq!(status, 400, "{}: {answer}", String::from_utf8_lossy(&body));
        assert!(answer.contains(expected), "{expected:?} not in {answer:?}");
    }
    // A kind that is not ours, a deletion: allowed without judgement, so a webhook
    // configured too widely never blocks a cluster.
    let mut pod = good.clone();
    pod["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "Pod"});
    let mut delete = good.clone();
    delete["request"]["operation"] = json!("DELETE");
    delete["request"]["object"] = Value::Null;
    for other in [pod, delete] {
        let answer = conn.post_json("/validate", &other).await;
        assert_eq!(answer["response"]["allowed"], true, "{answer}");
    }
    let (_, metrics) = conn.get("/metrics").await;
    assert!(
        metrics.contains(
            "authplane_admission_reviews_total{kind=\"\",operation=\"\",result=\"malformed\"} 7"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("authplane_admission_reviews_total{kind=\"SigningKey\",operation=\"CREATE\",result=\"malformed\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("result=\"skipped\"} "), "{metrics}");
    assert!(!conn.is_closed(), "one connection served it all");
    server.stop().await;
}

#[tokio::test]
async fn dev_mode_answers_reviews_over_plain_http_too() {
    let dev = common::Dev::start(&[("keys.yaml", KEYS)]).await;
    let object = auth_policy(json!({}));
    let answer: Value = dev
        .http
        .post(dev.url("/validate"))
        .json(&review("plain", "CREATE", &object, None))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["response"]["uid"], "plain");
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    dev.stop().await;
}

#[tokio::test]
async fn the_plain_listener_of_run_does_not_serve_the_webhook() {
    common::install_crypto();
    use authplane::server::{self, AppState, Endpoints};
    let state = AppState {
        registry: Arc::new(authplane::registry::Registry::default()),
        metrics: Arc::new(authplane::metrics::Metrics::default()),
        clock: Arc::new(SystemClock),
        base_url: Arc::from("http://127.0.0.1"),
        signing_keys: Arc::new(authplane::admission::NoSigningKeys),
        tls: None,
        revoke: None,
        token: None,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server::serve(
        listener,
        server::router(state, Endpoints::Public),
        async move {
            let _ = stopped.await;
        },
    ));
    let http = reqwest::Client::new();
    let body = review("u", "CREATE", &signing_key(json!({})), None);
    let response = http
        .post(format!("http://{addr}/validate"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let health = http
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    stop.send(()).unwrap();
    serving.await.unwrap().unwrap();
}

/// The README's `/validate` example, sent as written there (the namespace only in the
/// object), gets the message the README shows: every problem, the object named with its
/// namespace.
#[tokio::test]
async fn the_readme_example_lists_every_problem_as_shown() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let example = readme
        .split("curl -s http://127.0.0.1:8080/validate -H 'Content-Type: application/json' -d '")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .expect("the README has the example");
    let shown = readme
        .split("which lists every problem, not only the first:\n\n```text\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("the README shows its answer");
    let review: Value = serde_json::from_str(example).unwrap();
    let dev = common::Dev::start(&[("keys.yaml", KEYS)]).await;
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
    assert_eq!(answer["response"]["allowed"], false, "{answer}");
    assert_eq!(answer["response"]["status"]["message"], shown);
    assert_eq!(
        answer["response"]["status"]["details"]["causes"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    dev.stop().await;
}
