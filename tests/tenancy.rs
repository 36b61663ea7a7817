//! One team cannot take another's issuer: two tenants' SigningKeys through dev mode
//! (files, restarts) and through its admission webhook, over HTTP on loopback.

mod common;

use common::{CHANGE_DEADLINE, Dev, eventually, signing_key};
use serde_json::{Value, json};

const JWKS: &str = "/auth/web/.well-known/jwks.json";

fn policy_naming(namespace: &str, name: &str, key: (&str, &str)) -> String {
    format!(
        "apiVersion: authplane.io/v1alpha1\nkind: AuthPolicy\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  issuers: [{{signingKeyRef: {{name: {}, namespace: {}}}}}]\n  audiences: [a]\n",
        key.1, key.0
    )
}

/// Waits until the policy `namespace/name` resolves its SigningKey: that key is indexed
/// (its claim applied) and served to policies.
async fn wait_resolved(dev: &Dev, namespace: &str, name: &str) {
    let path = format!("/status/{namespace}/{name}");
    eventually(&format!("{path} Ready"), CHANGE_DEADLINE, || async {
        let response = dev.get(&path).await;
        if response.status() != 200 {
            return None;
        }
        let status: Value = response.json().await.ok()?;
        status["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
            .then_some(())
    })
    .await
}

/// The kids in a SigningKey's state file.
fn stored_kids(dev: &Dev, namespace: &str, name: &str) -> Vec<String> {
    let mut kids: Vec<String> = dev
        .keys(namespace, name)
        .records()
        .iter()
        .map(|r| r.material.kid().to_owned())
        .collect();
    kids.sort();
    kids
}

async fn served_kids(dev: &Dev, path: &str) -> Option<Vec<String>> {
    let mut kids = dev.kids(path).await?;
    kids.sort();
    Some(kids)
}

/// Issuers are matched against the external URL: a fixed one, so that it survives
/// restarts (the listener's port does not).
const EXTERNAL: &str = "https://auth.test";

async fn start_with_web() -> Dev {
    let mut dev = Dev::start(&[]).await;
    dev.fixed_external_url = Some(EXTERNAL.into());
    dev.restart().await;
    dev.write(
        "web.yaml",
        &signing_key("auth", "web", "  algorithm: EdDSA\n"),
    );
    eventually("web served", CHANGE_DEADLINE, || async {
        served_kids(&dev, JWKS).await
    })
    .await;
    assert_eq!(
        served_kids(&dev, JWKS).await,
        Some(stored_kids(&dev, "auth", "web"))
    );
    dev
}

#[tokio::test]
async fn a_newcomer_sorting_first_does_not_take_an_issuer_path_in_service_even_after_a_restart() {
    let mut dev = start_with_web().await;
    let web = stored_kids(&dev, "auth", "web");
    let web_issuer = format!("{}/auth/web", dev.external_url());
    // Same namespace, a name that sorts first, web's issuer.
    let newcomer = format!(
        "{}---\n{}",
        signing_key(
            "auth",
            "aaa",
            &format!("  algorithm: EdDSA\n  issuer: {web_issuer}\n")
        ),
        policy_naming("shop", "uses-aaa", ("auth", "aaa"))
    );
    dev.write("aaa.yaml", &newcomer);
    wait_resolved(&dev, "shop", "uses-aaa").await;
    assert_ne!(
        stored_kids(&dev, "auth", "aaa"),
        web,
        "aaa has keys of its own"
    );
    assert_eq!(
        served_kids(&dev, JWKS).await,
        Some(web.clone()),
        "web keeps its path"
    );
    let discovery = dev.json("/auth/web/.well-known/openid-configuration").await;
    assert_eq!(discovery["issuer"], web_issuer.as_str());

    // A restart reads both again, in any order: the first claim (in the state folder)
    // still wins.
    dev.restart().await;
    wait_resolved(&dev, "shop", "uses-aaa").await;
    assert_eq!(served_kids(&dev, JWKS).await, Some(web.clone()));

    // Once web is gone, the next claim serves the path.
    std::fs::remove_file(dev.manifests().join("web.yaml")).unwrap();
    let aaa = stored_kids(&dev, "auth", "aaa");
    eventually("aaa serves /auth/web", CHANGE_DEADLINE, || async {
        (served_kids(&dev, JWKS).await == Some(aaa.clone())).then_some(())
    })
    .await;
    dev.stop().await;
}

#[tokio::test]
async fn a_tenant_publishes_nothing_outside_its_namespace_nor_for_another_host() {
    let mut dev = start_with_web().await;
    let web = stored_kids(&dev, "auth", "web");
    let external = dev.external_url();
    let tenant = [
        signing_key(
            "aaa",
            "x",
            &format!("  algorithm: EdDSA\n  issuer: {external}/auth/web\n"),
        ),
        signing_key(
            "aaa",
            "evil",
            "  algorithm: EdDSA\n  issuer: https://evil.example/auth/web\n",
        ),
        signing_key(
            "aaa",
            "root",
            &format!("  algorithm: EdDSA\n  issuer: {external}\n"),
        ),
        policy_naming("aaa", "uses-x", ("aaa", "x")),
        policy_naming("aaa", "uses-evil", ("aaa", "evil")),
        policy_naming("aaa", "uses-root", ("aaa", "root")),
    ]
    .join("---\n");
    dev.write("tenant.yaml", &tenant);
    for policy in ["uses-x", "uses-evil", "uses-root"] {
        wait_resolved(&dev, "aaa", policy).await;
    }
    // Their keys sign for the policies naming them, and nothing is served for them here.
    assert_eq!(served_kids(&dev, JWKS).await, Some(web.clone()));
    let discovery = dev.json("/auth/web/.well-known/openid-configuration").await;
    assert_eq!(
        discovery["jwks_uri"],
        format!("{external}/auth/web/.well-known/jwks.json").as_str(),
        "never a jwks_uri on another host"
    );
    assert_eq!(served_kids(&dev, "/.well-known/jwks.json").await, None);
    assert_eq!(
        served_kids(&dev, "/aaa/x/.well-known/jwks.json").await,
        None
    );

    // The platform lets aaa claim any path: the root is now its, /auth/web still web's.
    dev.unconfined_issuer_namespaces = vec!["aaa".into()];
    dev.restart().await;
    wait_resolved(&dev, "aaa", "uses-root").await;
    assert_eq!(
        served_kids(&dev, "/.well-known/jwks.json").await,
        Some(stored_kids(&dev, "aaa", "root"))
    );
    assert_eq!(served_kids(&dev, JWKS).await, Some(web));
    dev.stop().await;
}

/// POSTs an AdmissionReview of a CREATE to dev mode's `/validate`; returns its response.
async fn create(dev: &Dev, object: Value) -> Value {
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "kind": {"group": "authplane.io", "version": "v1alpha1", "kind": "SigningKey"},
            "resource": {"group": "authplane.io", "version": "v1alpha1", "resource": "signingkeys"},
            "name": object["metadata"]["name"], "namespace": object["metadata"]["namespace"],
            "operation": "CREATE", "userInfo": {"username": "tenant"},
            "object": object,
        }
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
    answer["response"].clone()
}

fn key(namespace: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "authplane.io/v1alpha1", "kind": "SigningKey",
           "metadata": {"name": name, "namespace": namespace}, "spec": spec})
}

fn refused_fields(response: &Value) -> Vec<&str> {
    assert_eq!(response["allowed"], false, "{response}");
    response["status"]["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn the_webhook_refuses_another_teams_issuer_path_and_secret() {
    let dev = start_with_web().await;
    let web_issuer = format!("{}/auth/web", dev.external_url());

    // Another namespace: outside its own path.
    let answer = create(&dev, key("aaa", "x", json!({"issuer": web_issuer}))).await;
    assert_eq!(refused_fields(&answer), ["spec.issuer"]);
    assert!(
        answer["status"]["message"]
            .as_str()
            .unwrap()
            .contains("is outside \"/aaa\""),
        "{answer}"
    );
    // The same namespace: the path is in service.
    let answer = create(&dev, key("auth", "aaa", json!({"issuer": web_issuer}))).await;
    assert_eq!(refused_fields(&answer), ["spec.issuer"]);
    assert!(
        answer["status"]["message"]
            .as_str()
            .unwrap()
            .contains("already claimed by SigningKey auth/web"),
        "{answer}"
    );
    // web's Secret, or its signer Secret.
    for secret in ["web-keys", "web-keys-active"] {
        let answer = create(&dev, key("auth", "x", json!({"secretName": secret}))).await;
        assert_eq!(refused_fields(&answer), ["spec.secretName"], "{secret}");
    }
    // A forged log line.
    let answer = create(
        &dev,
        key(
            "aaa",
            "x",
            json!({"issuer": "https://idp.example/x\nINFO forged"}),
        ),
    )
    .await;
    assert!(refused_fields(&answer).contains(&"spec.issuer"));
    // Another host: allowed, with a warning that nothing is served for it.
    let answer = create(
        &dev,
        key(
            "aaa",
            "evil",
            json!({"issuer": "https://evil.example/auth/web"}),
        ),
    )
    .await;
    assert_eq!(answer["allowed"], true, "{answer}");
    assert!(
        answer["warnings"][0]
            .as_str()
            .unwrap()
            .contains("no discovery, JWKS or revocation endpoint"),
        "{answer}"
    );
    // Its own namespace, its own path: nothing to say.
    let answer = create(&dev, key("aaa", "x", json!({}))).await;
    assert_eq!(answer["allowed"], true);
    assert!(
        answer.get("warnings").is_none_or(Value::is_null),
        "{answer}"
    );
    dev.stop().await;
}
