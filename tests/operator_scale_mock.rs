//! The whole operator (`operator::start`, serving and leading) against an apiserver in
//! memory (`common::fake_apiserver`), counting what it writes:
//! - a cold start writes each object that needs it once (Secret, Event, ConfigMap and
//!   status per SigningKey, status per AuthPolicy) and reads no Secret by name;
//! - a warm restart against what the first run wrote writes nothing at all;
//! - two installations in one cluster write only their own instance's objects.

mod common;

use std::time::Duration;

use authplane::operator::{self, Operator, OperatorConfig};
use common::fake_apiserver::{FakeApiserver, Recorded};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(60);
const NAMESPACES: usize = 4;

fn signing_key(i: usize, instance: Option<&str>) -> Value {
    let labels = match instance {
        Some(instance) => json!({"authplane.io/instance": instance}),
        None => json!({}),
    };
    json!({
        "apiVersion": "authplane.io/v1alpha1", "kind": "SigningKey",
        "metadata": {"name": format!("k{i}"), "namespace": format!("ns{}", i % NAMESPACES),
                     "labels": labels},
        "spec": {"algorithm": "ES256"},
    })
}

/// Policy `j`, naming key `j % keys` (in its namespace).
fn policy(j: usize, keys: usize) -> Value {
    let key = j % keys;
    json!({
        "apiVersion": "authplane.io/v1alpha1", "kind": "AuthPolicy",
        "metadata": {"name": format!("p{j}"), "namespace": format!("ns{}", key % NAMESPACES)},
        "spec": {"issuers": [{"signingKeyRef": {"name": format!("k{key}")}}],
                 "audiences": [format!("aud-{j}")],
                 "rollout": {"mode": "Enforce", "percentage": 100}},
    })
}

fn config(instance: &str, namespace: &str) -> OperatorConfig {
    OperatorConfig {
        kubeconfig: None,
        namespace: namespace.into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        external_url: "http://127.0.0.1:9".into(),
        identity: format!("{instance}-0"),
        decision_cache_size: 0,
        tls: None,
        revoke_rate_per_minute: authplane::server::revoke::DEFAULT_REVOKE_RATE,
        unconfined_issuer_namespaces: Vec::new(),
        admin_listen: None,
        tls_client_ca_file: None,
        serving: Default::default(),
        instance: instance.parse().unwrap(),
        write_pace: None,
        attach: Default::default(),
        token_store: None,
    }
}

async fn start(fake: &FakeApiserver, client: &'static str, config: OperatorConfig) -> Operator {
    let (kube, handle) = common::mock_api::client();
    fake.serve(client, handle);
    operator::start(kube, config).await.unwrap()
}

/// A sample of the operator's `/metrics`.
async fn metric(operator: &Operator, name: &str) -> f64 {
    let url = format!("http://{}/metrics", operator.local_addr());
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn ready(operator: &Operator) -> bool {
    let url = format!("http://{}/readyz", operator.local_addr());
    reqwest::get(url)
        .await
        .is_ok_and(|r| r.status().as_u16() == 200)
}

fn condition(object: &Value, type_: &str) -> Option<String> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .and_then(|c| c["status"].as_str().map(str::to_owned))
}

fn all_ready(fake: &FakeApiserver, resource: &str, expected: usize) -> bool {
    let objects = fake.all(resource);
    objects.len() == expected
        && objects
            .iter()
            .all(|o| condition(o, "Ready").as_deref() == Some("True"))
}

/// The writes `client` sent, but for its Lease.
fn writes(fake: &FakeApiserver, client: &str) -> Vec<Recorded> {
    fake.requests()
        .into_iter()
        .filter(|r| r.client == client && r.is_write() && !r.path.contains("/leases"))
        .collect()
}

fn count(writes: &[Recorded], method: &str, path: &str) -> usize {
    writes
        .iter()
        .filter(|r| r.method == method && r.path == path)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_start_writes_each_object_once_and_a_warm_restart_writes_nothing() {
    const KEYS: usize = 12;
    const POLICIES: usize = 120;
    let fake = FakeApiserver::default();
    for i in 0..KEYS {
        fake.create(signing_key(i, None));
    }
    for j in 0..POLICIES {
        fake.create(policy(j, KEYS));
    }

    let first = start(&fake, "first", config("default", "authplane")).await;
    common::eventually("every object Ready", DEADLINE, || async {
        (all_ready(&fake, "signingkeys", KEYS) && all_ready(&fake, "authpolicies", POLICIES))
            .then_some(())
    })
    .await;
    first.stop().await.unwrap();

    let written = writes(&fake, "first");
    let reads_of_secrets: Vec<Recorded> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && !r.watch && r.path.contains("/secrets/"))
        .collect();
    assert!(
        reads_of_secrets.is_empty(),
        "Secrets come from the watch cache: {reads_of_secrets:?}"
    );
    for i in 0..KEYS {
        let ns = format!("ns{}", i % NAMESPACES);
        let key = format!("/apis/authplane.io/v1alpha1/namespaces/{ns}/signingkeys/k{i}/status");
        assert_eq!(count(&written, "PATCH", &key), 1, "{key}: {written:#?}");
        assert!(
            fake.get("configmaps", &ns, &format!("k{i}-jwks")).is_some(),
            "k{i}-jwks"
        );
    }
    for j in 0..POLICIES {
        let ns = format!("ns{}", (j % KEYS) % NAMESPACES);
        let path = format!("/apis/authplane.io/v1alpha1/namespaces/{ns}/authpolicies/p{j}/status");
        assert_eq!(
            count(&written, "PATCH", &path),
            1,
            "{path}: once, Ready (its key's keys are waited for, not reported missing first)"
        );
    }
    let secrets = written
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/secrets"))
        .count();
    let events = written
        .iter()
        .filter(|r| r.path.contains("/events"))
        .count();
    // A JWKS ConfigMap the watch does not hold is created, never applied over.
    let config_maps = written
        .iter()
        .filter(|r| r.path.contains("/configmaps"))
        .count();
    assert_eq!(
        (secrets, events, config_maps),
        (2 * KEYS, KEYS, KEYS),
        "a key Secret, a signer Secret, a KeyGenerated and a JWKS ConfigMap each"
    );
    assert_eq!(
        written.len(),
        5 * KEYS + POLICIES,
        "nothing else: {written:#?}"
    );

    // A warm restart: every status, Secret and ConfigMap is what the apiserver holds.
    // The ConfigMaps are listed last, after the keys are served (which announces them
    // to the leader's SigningKey controller): nothing is written while they are not.
    fake.hold_lists("configmaps");
    let second = start(&fake, "second", config("default", "authplane")).await;
    common::eventually("the keys served", DEADLINE, || async {
        let leads = metric(&second, "authplane_leader").await == 1.0;
        (ready(&second).await && leads).then_some(())
    })
    .await;
    fake.release_lists("configmaps");
    common::eventually("every object looked at again", DEADLINE, || async {
        let leads = metric(&second, "authplane_leader").await == 1.0;
        let keys = metric(&second, "authplane_reconciles_total").await;
        let policies = metric(&second, "authplane_policy_status_reconciles_total").await;
        (ready(&second).await && leads && keys >= KEYS as f64 && policies >= POLICIES as f64)
            .then_some(())
    })
    .await;
    second.stop().await.unwrap();
    let rewritten = writes(&fake, "second");
    assert!(rewritten.is_empty(), "a warm restart wrote {rewritten:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_installations_write_only_their_own_instances_objects() {
    let fake = FakeApiserver::default();
    fake.create(signing_key(0, Some("blue")));
    fake.create(signing_key(1, Some("green")));
    // The staging copy's Lease lives elsewhere: both lead at once.
    let blue = start(&fake, "blue", config("blue", "authplane")).await;
    let green = start(&fake, "green", config("green", "authplane-staging")).await;
    common::eventually("both keys Ready", DEADLINE, || async {
        let keys = fake.all("signingkeys");
        let done = keys
            .iter()
            .all(|k| condition(k, "Ready").as_deref() == Some("True"));
        let looked = metric(&blue, "authplane_reconciles_total").await >= 1.0
            && metric(&green, "authplane_reconciles_total").await >= 1.0;
        (keys.len() == 2 && done && looked).then_some(())
    })
    .await;
    // Each serves its own key only.
    let jwks = |operator: &Operator, key: &str| {
        format!(
            "http://{}/{key}/.well-known/jwks.json",
            operator.local_addr()
        )
    };
    let status = |url: String| async move { reqwest::get(url).await.unwrap().status().as_u16() };
    assert_eq!(status(jwks(&blue, "ns0/k0")).await, 200);
    assert_eq!(status(jwks(&blue, "ns1/k1")).await, 404);
    assert_eq!(status(jwks(&green, "ns1/k1")).await, 200);
    assert_eq!(status(jwks(&green, "ns0/k0")).await, 404);
    blue.stop().await.unwrap();
    green.stop().await.unwrap();

    for (client, mine, theirs) in [("blue", "k0", "k1"), ("green", "k1", "k0")] {
        let written = writes(&fake, client);
        assert!(
            written.iter().any(|r| r.path.contains(&format!("/{mine}"))),
            "{client} manages {mine}: {written:#?}"
        );
        assert!(
            !written
                .iter()
                .any(|r| r.path.contains(&format!("/{theirs}"))),
            "{client} never writes {theirs}: {written:#?}"
        );
    }
    // What each wrote records its installation.
    for (key, instance) in [("k0", "blue"), ("k1", "green")] {
        let ns = if key == "k0" { "ns0" } else { "ns1" };
        let secret = fake.get("secrets", ns, &format!("{key}-keys")).unwrap();
        let config_map = fake.get("configmaps", ns, &format!("{key}-jwks")).unwrap();
        for object in [secret, config_map] {
            assert_eq!(
                object["metadata"]["labels"]["authplane.io/instance"], instance,
                "{object}"
            );
        }
    }
}
