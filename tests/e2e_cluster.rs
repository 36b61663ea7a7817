//! End to end against a real cluster, when `AUTHPLANE_E2E_KUBECONFIG` names a kubeconfig
//! (skipped, saying so, otherwise). Installs the CRDs, runs the operator in this process,
//! creates a namespace and a SigningKey, checks the Secret, `Ready=True` and the served
//! JWKS, rotates with `authplane rotate` and sees the old kid stay published, then deletes
//! everything itself: minimal test clusters often run without a garbage collector.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use authplane::api::SigningKey;
use authplane::operator::{self, OperatorConfig};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(60);

async fn eventually<T, Fut: Future<Output = Option<T>>>(
    what: &str,
    check: impl FnMut() -> Fut,
) -> T {
    common::eventually(what, DEADLINE, check).await
}

fn kubeconfig() -> Option<PathBuf> {
    match std::env::var_os("AUTHPLANE_E2E_KUBECONFIG") {
        Some(path) if !path.is_empty() => Some(PathBuf::from(path)),
        _ => {
            println!(
                "skipped: AUTHPLANE_E2E_KUBECONFIG is not set (point it at a test cluster's kubeconfig to run)"
            );
            None
        }
    }
}

async fn install_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (_, yaml) in authplane::api::crds::crds() {
        let crd: CustomResourceDefinition = serde_yaml::from_str(&yaml).unwrap();
        let name = crd.metadata.name.clone().unwrap();
        crds.patch(
            &name,
            &PatchParams::apply("authplane-e2e").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap();
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

#[tokio::test]
async fn signing_key_lifecycle_on_a_real_cluster() {
    let Some(path) = kubeconfig() else { return };
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

    let port = free_port();
    let external = format!("http://127.0.0.1:{port}");
    let config = OperatorConfig {
        kubeconfig: Some(path.clone()),
        namespace: namespace.clone(),
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
        external_url: external.clone(),
        identity: "e2e".into(),
        decision_cache_size: 1000,
        tls: None,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let operator = tokio::spawn(operator::run(config, async move {
        let _ = stopped.await;
    }));

    let keys: Api<SigningKey> = Api::namespaced(client.clone(), &namespace);
    let key: SigningKey = serde_json::from_value(json!({
        "apiVersion": "authplane.io/v1alpha1", "kind": "SigningKey",
        "metadata": {"name": "web"},
        "spec": {"algorithm": "ES256", "rotation": {"every": "1h", "prePublish": "5s", "retainFor": "1h"}},
    }))
    .unwrap();
    keys.create(&PostParams::default(), &key).await.unwrap();

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

    let http = {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        reqwest::Client::new()
    };
    let jwks_url = format!("{external}/{namespace}/web/.well-known/jwks.json");
    eventually("the JWKS to be served", || async {
        jwks_kids(&http, &jwks_url)
            .await
            .filter(|kids| kids.contains(&first_kid))
    })
    .await;

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
