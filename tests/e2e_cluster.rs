//! End to end against a real cluster, when `AUTHPLANE_E2E_KUBECONFIG` names a kubeconfig.
//! Marked `#[ignore]`, so that `cargo test` reports it as skipped rather than passed;
//! run it with `AUTHPLANE_E2E_KUBECONFIG=... cargo test --test e2e_cluster -- --ignored`.
//!
//! It does what a platform engineer does on day one, through the same API calls kubectl
//! makes: installs the CRDs server-side from `crds/` (the apiserver estimates the cost
//! of every CEL rule and refuses an unbounded CRD), runs the operator in this process,
//! applies a SigningKey and an AuthPolicy from YAML text read as kubectl reads it (YAML
//! 1.1, every enum value), checks status, Secrets and decisions, patches the percentage,
//! rotates and reads the Events of each kid, and finally serves keys while the
//! AuthPolicy CRD is missing. It deletes what it made itself: minimal test clusters
//! often run without a garbage collector.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use authplane::api::{AuthPolicy, SigningKey};
use authplane::operator::{self, OperatorConfig};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(60);
const MANAGER: &str = "authplane-e2e";
const SKIP: &str = "needs a cluster: set AUTHPLANE_E2E_KUBECONFIG and run with --ignored";

async fn eventually<T, Fut: Future<Output = Option<T>>>(
    what: &str,
    check: impl FnMut() -> Fut,
) -> T {
    common::eventually(what, DEADLINE, check).await
}

fn kubeconfig() -> PathBuf {
    match std::env::var_os("AUTHPLANE_E2E_KUBECONFIG") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => panic!("{SKIP}"),
    }
}

/// The objects of a YAML text, read as kubectl reads it.
fn manifest(text: &str) -> Vec<Value> {
    authplane::dev::manifests::yaml_documents(text).expect("valid YAML")
}

/// `kubectl apply --server-side` of one object.
async fn apply<K>(api: &Api<K>, object: &Value, dry_run: bool) -> Result<K, kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = object["metadata"]["name"].as_str().unwrap().to_owned();
    let mut params = PatchParams::apply(MANAGER).force();
    params.dry_run = dry_run;
    api.patch(&name, &params, &Patch::Apply(object)).await
}

/// The committed CRD files, applied server-side as `kubectl apply --server-side -f crds/`.
async fn install_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 3, "every CRD");
    for file in files {
        for crd in manifest(&std::fs::read_to_string(&file).unwrap()) {
            let name = crd["metadata"]["name"].as_str().unwrap().to_owned();
            apply(&crds, &crd, false)
                .await
                .unwrap_or_else(|e| panic!("the apiserver refused {}: {e}", file.display()));
            eventually("the CRD to be established", || async {
                let crd = crds.get(&name).await.ok()?;
                let established = crd
                    .status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                established.then_some(())
            })
            .await;
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn jwks_kids(http: &reqwest::Client, url: &str) -> Option<Vec<String>> {
    let jwks: Value = http.get(url).send().await.ok()?.json().await.ok()?;
    Some(
        jwks["keys"]
            .as_array()?
            .iter()
            .filter_map(|k| k["kid"].as_str().map(str::to_owned))
            .collect(),
    )
}

/// An operator replica on a free port; its external URL is its own address unless
/// `external` names the Service URL several replicas share.
fn start_operator(
    path: &Path,
    namespace: &str,
    identity: &str,
    external: Option<&str>,
) -> (
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), operator::OperatorError>>,
) {
    let port = free_port();
    let address = format!("http://127.0.0.1:{port}");
    let config = OperatorConfig {
        kubeconfig: Some(path.to_owned()),
        namespace: namespace.to_owned(),
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
        external_url: external.unwrap_or(&address).to_owned(),
        identity: identity.into(),
        decision_cache_size: 1000,
        tls: None,
        revoke_rate_per_minute: authplane::server::revoke::DEFAULT_REVOKE_RATE,
        unconfined_issuer_namespaces: Vec::new(),
        admin_listen: None,
        tls_client_ca_file: None,
        serving: Default::default(),
        instance: Default::default(),
        write_pace: None,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let operator = tokio::spawn(operator::run(config, async move {
        let _ = stopped.await;
    }));
    (address, stop, operator)
}

/// A token of `auth`'s Active key, read from its Secret as `token mint` does.
async fn mint(secrets: &Api<Secret>, issuer: &str, subject: &str) -> String {
    let secret = secrets.get("web-keys").await.unwrap();
    let data = authplane::operator::signing_keys::secret_data(&secret).unwrap();
    let keys = authplane::keys::store::from_data(&data).unwrap();
    let request = authplane::token::MintRequest {
        subject: subject.into(),
        audiences: vec!["payments".into()],
        ttl: jiff::SignedDuration::from_mins(5),
        claims: Default::default(),
        session: None,
    };
    authplane::token::mint(&keys, issuer, &request, jiff::Timestamp::now()).unwrap()
}

const KEY: &str = r#"
apiVersion: authplane.io/v1alpha1
kind: SigningKey
metadata: {name: web, namespace: NS}
spec:
  algorithm: ES256
  rotation: {every: 1h, prePublish: 5s, retainFor: 1h}
"#;

/// Unquoted enum values, as people write them: `Disabled` must survive YAML 1.1.
const POLICY: &str = r#"
apiVersion: authplane.io/v1alpha1
kind: AuthPolicy
metadata: {name: payments, namespace: NS}
spec:
  targetRefs:
  - {kind: Deployment, name: payments}
  - {kind: StatefulSet, name: payments}
  - {kind: Service, name: payments}
  - {kind: Ingress, name: payments}
  - {kind: HTTPRoute, name: payments}
  issuers:
  - signingKeyRef: {name: web}
  audiences: [payments]
  rollout: {mode: MODE, percentage: 100}
"#;

fn policy_text(namespace: &str, mode: &str) -> String {
    POLICY.replace("NS", namespace).replace("MODE", mode)
}

#[tokio::test]
#[ignore = "needs a cluster: set AUTHPLANE_E2E_KUBECONFIG and run with --ignored"]
async fn day_one_on_a_real_cluster() {
    let path = kubeconfig();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let client = operator::client(Some(&path)).await.unwrap();
    install_crds(&client).await;

    let namespace = format!("authplane-e2e-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": namespace}})).unwrap();
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let (external, stop, operator) = start_operator(&path, &namespace, "e2e", None);
    let http = reqwest::Client::new();

    // The SigningKey, from YAML text.
    let keys: Api<SigningKey> = Api::namespaced(client.clone(), &namespace);
    let key = &manifest(&KEY.replace("NS", &namespace))[0];
    apply(&keys, key, false).await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let first_kid = eventually("Ready=True with an active kid", || async {
        let status = keys.get("web").await.ok()?.status?;
        let ready = status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        if ready { status.active_kid } else { None }
    })
    .await;
    let secret = secrets.get("web-keys").await.unwrap();
    assert!(
        secret
            .data
            .unwrap()
            .contains_key(&format!("{first_kid}.pem"))
    );
    let jwks_url = format!("{external}/{namespace}/web/.well-known/jwks.json");
    eventually("the JWKS to be served", || async {
        jwks_kids(&http, &jwks_url)
            .await
            .filter(|kids| kids.contains(&first_kid))
    })
    .await;

    // The AuthPolicy, from YAML text: every mode is accepted by the apiserver as written.
    let policies: Api<AuthPolicy> = Api::namespaced(client.clone(), &namespace);
    for mode in ["Disabled", "Audit", "Enforce"] {
        let object = &manifest(&policy_text(&namespace, mode))[0];
        apply(&policies, object, true)
            .await
            .unwrap_or_else(|e| panic!("mode {mode} refused: {e}"));
    }
    let refused = apply(
        &policies,
        &manifest(&policy_text(&namespace, "Off"))[0],
        true,
    )
    .await;
    assert!(
        refused.is_err(),
        "unquoted Off is the boolean false in YAML 1.1"
    );
    apply(
        &policies,
        &manifest(&policy_text(&namespace, "Enforce"))[0],
        false,
    )
    .await
    .unwrap();
    eventually(
        "the policy's status: Accepted, Ready, 100% enforced",
        || async {
            let status = policies.get("payments").await.ok()?.status?;
            let is_true = |kind: &str| {
                status
                    .conditions
                    .iter()
                    .any(|c| c.type_ == kind && c.status == "True")
            };
            (is_true("Accepted") && is_true("Ready") && status.effective_percentage == Some(100.0))
                .then_some(())
        },
    )
    .await;

    // Decisions.
    let authz = format!("{external}/authz/{namespace}/payments");
    let issuer = format!("{external}/{namespace}/web");
    let token = mint(&secrets, &issuer, "alice").await;
    eventually("a valid token passes", || async {
        let r = http.get(&authz).bearer_auth(&token).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    let r = http.get(&authz).send().await.unwrap();
    assert_eq!(r.status(), 401, "no token, enforced");

    // A percentage patch reaches the decision (the rollback of the playbook).
    let patched = Instant::now();
    policies
        .patch(
            "payments",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"rollout": {"percentage": 0}}})),
        )
        .await
        .unwrap();
    eventually("percentage 0: audited, not refused", || async {
        let r = http.get(&authz).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    println!(
        "percentage patch to decision: {} ms",
        patched.elapsed().as_millis()
    );

    // Rotation, and one Event per key that names it.
    let rotated = std::process::Command::new(env!("CARGO_BIN_EXE_authplane"))
        .args(["rotate", &format!("{namespace}/web"), "--kubeconfig"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        rotated.status.success(),
        "{}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    let both = eventually("a new key beside the old one in the JWKS", || async {
        jwks_kids(&http, &jwks_url)
            .await
            .filter(|kids| kids.len() == 2 && kids.contains(&first_kid))
    })
    .await;
    let new_kid = both.iter().find(|k| **k != first_kid).unwrap().clone();
    eventually("the new key to sign after its pre-publication", || async {
        let status = keys.get("web").await.ok()?.status?;
        (status.active_kid.as_deref() == Some(new_kid.as_str())).then_some(())
    })
    .await;
    assert!(
        jwks_kids(&http, &jwks_url)
            .await
            .unwrap()
            .contains(&first_kid),
        "the old kid stays published"
    );
    let events: Api<Event> = Api::namespaced(client.clone(), &namespace);
    eventually(
        "a KeyGenerated and a KeyActivated Event naming each kid",
        || async {
            let events = events.list(&ListParams::default()).await.ok()?;
            let notes = |reason: &str| -> Vec<String> {
                events
                    .items
                    .iter()
                    .filter(|e| e.reason.as_deref() == Some(reason))
                    .filter_map(|e| e.note.clone())
                    .collect()
            };
            let names = |reason: &str, kid: &str| notes(reason).iter().any(|n| n.contains(kid));
            (names("KeyGenerated", &first_kid)
                && names("KeyGenerated", &new_kid)
                && names("KeyActivated", &new_kid))
            .then_some(())
        },
    )
    .await;

    // Serving while the AuthPolicy CRD is missing. Deleting a CRD deletes every object of
    // its kind, so only when asked to (a throwaway cluster), and not on a cluster with
    // AuthPolicies of its own.
    policies
        .delete("payments", &DeleteParams::default())
        .await
        .unwrap();
    let others = Api::<AuthPolicy>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    let destructive = std::env::var_os("AUTHPLANE_E2E_DELETE_CRDS").is_some_and(|v| v == "1");
    if destructive && others.items.is_empty() {
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        crds.delete("authpolicies.authplane.io", &DeleteParams::default())
            .await
            .unwrap();
        eventually("the AuthPolicy CRD to be gone", || async {
            crds.get("authpolicies.authplane.io")
                .await
                .is_err()
                .then_some(())
        })
        .await;
        let (degraded, stop_degraded, degraded_operator) =
            start_operator(&path, &namespace, "e2e-degraded", None);
        let url = format!("{degraded}/{namespace}/web/.well-known/jwks.json");
        eventually("keys served without the AuthPolicy CRD", || async {
            jwks_kids(&http, &url)
                .await
                .filter(|kids| kids.contains(&new_kid))
        })
        .await;
        let ready = http.get(format!("{degraded}/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), 200);
        let body = ready.text().await.unwrap();
        assert!(body.contains("AuthPolicy watch: failing"), "{body}");
        let _ = stop_degraded.send(());
        degraded_operator.await.unwrap().unwrap();
        install_crds(&client).await;
    } else {
        println!(
            "skipped the missing-CRD step: set AUTHPLANE_E2E_DELETE_CRDS=1 on a throwaway cluster with no AuthPolicies of its own"
        );
    }

    keys.delete("web", &DeleteParams::default()).await.unwrap();
    secrets
        .delete("web-keys", &DeleteParams::default())
        .await
        .ok();
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    config_maps
        .delete("web-jwks", &DeleteParams::default())
        .await
        .ok();
    let _ = stop.send(());
    operator.await.unwrap().unwrap();
    namespaces
        .delete(&namespace, &DeleteParams::default())
        .await
        .unwrap();
}

/// Polls until `/authz` on `external` refuses `token` as revoked; returns how long it took
/// from `since`. Polls every 10 ms, so the measure is good to about that.
async fn refused_as_revoked(
    http: &reqwest::Client,
    authz: &str,
    token: &str,
    since: Instant,
) -> Duration {
    common::eventually("the token refused as revoked", DEADLINE, || async {
        let r = http.get(authz).bearer_auth(token).send().await.ok()?;
        let reason = r
            .headers()
            .get("x-authplane-reason")?
            .to_str()
            .ok()?
            .to_owned();
        (r.status() == 401 && reason == "token_revoked").then_some(())
    })
    .await;
    since.elapsed()
}

/// A Revocation created through the API (as `kubectl create` does) is enforced by two
/// replicas within a second; a logout through `/revoke` on one replica is enforced by the
/// other; the leader deletes lapsed Revocations.
#[tokio::test]
#[ignore = "needs a cluster: set AUTHPLANE_E2E_KUBECONFIG and run with --ignored"]
async fn a_revocation_reaches_two_replicas_within_a_second() {
    let path = kubeconfig();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let client = operator::client(Some(&path)).await.unwrap();
    install_crds(&client).await;
    let namespace = format!("authplane-e2e-rev-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": namespace}})).unwrap();
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    // Two replicas behind one Service: one external URL, so one issuer for both.
    let service = "https://auth.e2e.example";
    let (a, stop_a, operator_a) = start_operator(&path, &namespace, "e2e-a", Some(service));
    let (b, stop_b, operator_b) = start_operator(&path, &namespace, "e2e-b", Some(service));

    let keys: Api<SigningKey> = Api::namespaced(client.clone(), &namespace);
    let policies: Api<AuthPolicy> = Api::namespaced(client.clone(), &namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let revocations: Api<authplane::api::Revocation> = Api::namespaced(client.clone(), &namespace);
    apply(&keys, &manifest(&KEY.replace("NS", &namespace))[0], false)
        .await
        .unwrap();
    apply(
        &policies,
        &manifest(&policy_text(&namespace, "Enforce"))[0],
        false,
    )
    .await
    .unwrap();
    let http = reqwest::Client::new();
    eventually("the keys' Secret", || async {
        secrets.get("web-keys").await.ok()
    })
    .await;
    // Tokens of at most 15 minutes, so that Revocations are short-lived.
    let short = KEY.replace("NS", &namespace).replace(
        "  algorithm: ES256\n",
        "  algorithm: ES256\n  maxTokenLifetime: 15m\n",
    );
    apply(&keys, &manifest(&short)[0], false).await.unwrap();
    // The default issuer, under the Service's URL, served by both replicas.
    let issuer = format!("{service}/{namespace}/web");
    let issuer = issuer.as_str();
    let authz_a = format!("{a}/authz/{namespace}/payments");
    let authz_b = format!("{b}/authz/{namespace}/payments");
    let token = mint(&secrets, issuer, "alice").await;
    for authz in [&authz_a, &authz_b] {
        eventually("the token passes on both replicas", || async {
            let r = http.get(authz).bearer_auth(&token).send().await.ok()?;
            (r.status() == 200).then_some(())
        })
        .await;
    }

    // kubectl create -f revocation.yaml
    let revocation: authplane::api::Revocation = serde_json::from_value(json!({
        "apiVersion": "authplane.io/v1alpha1", "kind": "Revocation",
        "metadata": {"generateName": "payment-failed-", "namespace": namespace},
        "spec": {"signingKeyRef": {"name": "web"}, "subject": "alice", "reason": "payment_failed"},
    }))
    .unwrap();
    let created = Instant::now();
    revocations
        .create(&PostParams::default(), &revocation)
        .await
        .unwrap();
    let (on_a, on_b) = tokio::join!(
        refused_as_revoked(&http, &authz_a, &token, created),
        refused_as_revoked(&http, &authz_b, &token, created)
    );
    println!(
        "a Revocation created through the API was enforced after {on_a:?} (replica a) and {on_b:?} (replica b)"
    );
    assert!(
        on_a <= Duration::from_secs(1) && on_b <= Duration::from_secs(1),
        "the promise is one second: {on_a:?}, {on_b:?}"
    );
    // A token minted after the revocation passes (its iat is after issuedBefore).
    tokio::time::sleep(Duration::from_millis(1100)).await; // iat has whole seconds
    let fresh = mint(&secrets, issuer, "alice").await;
    let r = http.get(&authz_a).bearer_auth(&fresh).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // A logout through replica a's /revoke reaches replica b.
    let bob = mint(&secrets, issuer, "bob").await;
    let started = Instant::now();
    let r = http
        .post(format!("{a}/{namespace}/web/revoke"))
        .form(&[("token", bob.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let on_b = refused_as_revoked(&http, &authz_b, &bob, started).await;
    println!("a logout on replica a was enforced by replica b after {on_b:?}");

    // The leader deletes lapsed Revocations: one whose expiresAt has passed.
    let lapsed: authplane::api::Revocation = serde_json::from_value(json!({
        "apiVersion": "authplane.io/v1alpha1", "kind": "Revocation",
        "metadata": {"name": "lapsed", "namespace": namespace},
        "spec": {"signingKeyRef": {"name": "web"}, "tokenId": "gone",
            "expiresAt": (jiff::Timestamp::now() - jiff::SignedDuration::from_mins(1)).to_string()},
    }))
    .unwrap();
    revocations
        .create(&PostParams::default(), &lapsed)
        .await
        .unwrap();
    common::eventually(
        "the leader deletes the lapsed Revocation",
        authplane::operator::revocations::EXPIRE_EVERY + DEADLINE,
        || async {
            revocations
                .get_opt("lapsed")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;

    for r in revocations.list(&ListParams::default()).await.unwrap() {
        let name = r.metadata.name.unwrap();
        revocations
            .delete(&name, &DeleteParams::default())
            .await
            .ok();
    }
    keys.delete("web", &DeleteParams::default()).await.unwrap();
    secrets
        .delete("web-keys", &DeleteParams::default())
        .await
        .ok();
    let _ = stop_a.send(());
    let _ = stop_b.send(());
    operator_a.await.unwrap().unwrap();
    operator_b.await.unwrap().unwrap();
    namespaces
        .delete(&namespace, &DeleteParams::default())
        .await
        .unwrap();
}
