//! The token service's cluster side against kube-rs's mock service: the TokenClient
//! watch (what every replica publishes for the token endpoint, how a SigningKey change
//! reaches its clients), the leader's TokenClient status (only what the apiserver does
//! not hold), and the embedded store's one-replica rule.

mod common;

use std::sync::Arc;

use authplane::api::{SigningKey, TokenClient};
use authplane::clock::Clock;
use authplane::operator::feed::Feed;
use authplane::operator::token_clients::{self, Follow, Report, Served};
use authplane::operator::token_store::{self, TokenStoreConfig, TokenStoreError};
use authplane::operator::writer::LeaderWriter;
use authplane::registry::Registry;
use authplane::tokens::location::StoreLocation;
use futures::StreamExt;
use jiff::Timestamp;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher::Event;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use common::mock_api::{self, take, within};

const PATH: &str = "/apis/authplane.io/v1alpha1/tokenclients";

struct Fixed(Timestamp);

impl Clock for Fixed {
    fn now(&self) -> Timestamp {
        self.0
    }
}

fn key(name: &str) -> DeserializeGuard<SigningKey> {
    key_living(name, "1h")
}

fn key_living(name: &str, max_token_lifetime: &str) -> DeserializeGuard<SigningKey> {
    serde_json::from_value(json!({
        "apiVersion": "authplane.io/v1alpha1", "kind": "SigningKey",
        "metadata": {"name": name, "namespace": "auth"},
        "spec": {"algorithm": "ES256", "maxTokenLifetime": max_token_lifetime},
    }))
    .unwrap()
}

fn client(name: &str, key: &str, status: Value) -> Value {
    json!({
        "apiVersion": "authplane.io/v1alpha1", "kind": "TokenClient",
        "metadata": {"name": name, "namespace": "auth", "uid": format!("u-{name}"),
                     "generation": 3, "resourceVersion": "7"},
        "spec": {"signingKeyRef": {"name": key}, "audiences": ["api"],
                 "serviceAccounts": [{"name": "login"}]},
        "status": status,
    })
}

#[tokio::test]
async fn every_replica_publishes_its_clients_and_follows_their_signing_keys() {
    let (kube, mut apiserver) = mock_api::client();
    let registry = Arc::new(Registry::default());
    // The serving loop's SigningKeys: web exists, gone does not.
    let (keys, mut keys_writer) = reflector::store();
    keys_writer.apply_watcher_event(&Event::Init);
    keys_writer.apply_watcher_event(&Event::InitApply(key("web")));
    keys_writer.apply_watcher_event(&Event::InitDone);
    let served = Arc::new(Served::default());
    let changed = Arc::new(Feed::default());
    let mut announced = Box::pin(changed.clone().triggers::<TokenClient>());
    let (key_changes, key_changes_rx) = mpsc::unbounded_channel::<ObjectRef<SigningKey>>();
    let (cache, cache_writer) = reflector::store::<DeserializeGuard<TokenClient>>();
    let (_stop, stopped) = watch::channel(false);
    let following = tokio::spawn(token_clients::run(
        kube,
        Follow {
            registry: registry.clone(),
            instance: Default::default(),
            external_url: "https://auth.example".into(),
            keys: keys.clone(),
            served: served.clone(),
            changed: changed.clone(),
        },
        cache_writer,
        tokio_stream_of(key_changes_rx),
        stopped,
    ));

    // The list, then a watch held open.
    take(&mut apiserver, "GET", PATH).await.answer(
        200,
        &json!({"apiVersion": "authplane.io/v1alpha1", "kind": "TokenClientList",
                "metadata": {"resourceVersion": "7"},
                "items": [client("web", "web", Value::Null), client("orphan", "gone", Value::Null)]}),
    );
    let _open_watch = take(&mut apiserver, "GET", PATH).await;
    within(token_clients::synced(served.clone())).await;
    // The list is announced to the leader, each client once.
    for name in ["orphan", "web"] {
        assert_eq!(within(announced.next()).await.unwrap().name, name);
    }

    let published = registry.token_clients();
    assert_eq!(
        published.keys().collect::<Vec<_>>(),
        ["auth/web"],
        "only the client whose key exists is served"
    );
    assert_eq!(
        published["auth/web"].rules.issuer,
        "https://auth.example/auth/web"
    );
    assert!(
        registry
            .unsynced_sources()
            .iter()
            .all(|(name, _)| *name != token_clients::WATCH),
        "counted in /readyz, and synced"
    );
    let now: Timestamp = "2026-12-06T20:00:00Z".parse().unwrap();
    let web: TokenClient = serde_json::from_value(client("web", "web", Value::Null)).unwrap();
    let status = served.status(&web, now).expect("applied");
    assert_eq!(status.observed_generation, Some(3));
    assert_eq!(
        status.token_endpoint.as_deref(),
        Some("https://auth.example/auth/web/token")
    );
    let ready = &status.conditions[0];
    assert_eq!(
        (
            ready.type_.as_str(),
            ready.status.as_str(),
            ready.reason.as_str()
        ),
        ("Ready", "True", "Serving")
    );
    let orphan: TokenClient =
        serde_json::from_value(client("orphan", "gone", Value::Null)).unwrap();
    let status = served.status(&orphan, now).expect("applied");
    assert_eq!(
        (
            status.conditions[0].status.as_str(),
            status.conditions[0].reason.as_str()
        ),
        ("False", "SigningKeyNotFound")
    );
    assert_eq!(status.token_endpoint, None);
    // A generation the watch has not applied yet is not reported.
    let mut newer = web.clone();
    newer.metadata.generation = Some(4);
    assert!(served.status(&newer, now).is_none());

    // The serving loop applies web's deletion: its client stops being served, and is
    // announced to the leader.
    keys_writer.apply_watcher_event(&Event::Delete(key("web")));
    key_changes
        .send(ObjectRef::new("web").within("auth"))
        .unwrap();
    let next = within(announced.next()).await.unwrap();
    assert_eq!(
        (next.namespace.as_deref(), next.name.as_str()),
        (Some("auth"), "web")
    );
    assert!(registry.token_clients().is_empty());
    let status = served.status(&web, now).unwrap();
    assert_eq!(status.conditions[0].reason, "SigningKeyNotFound");

    // The key comes back with a shorter limit than the client's lifetime: served with
    // the key's limit, and said.
    keys_writer.apply_watcher_event(&Event::Apply(key_living("web", "5m")));
    key_changes
        .send(ObjectRef::new("web").within("auth"))
        .unwrap();
    let next = within(announced.next()).await.unwrap();
    assert_eq!(next.name, "web");
    assert_eq!(
        registry.token_clients()["auth/web"].rules.access_lifetime,
        jiff::SignedDuration::from_mins(5)
    );
    assert_eq!(
        served.status(&web, now).unwrap().conditions[0].reason,
        "LifetimeAboveKeyLimit"
    );
    // A key announced without a change announces no client; the key an orphan waited
    // for announces the orphan, and only it.
    key_changes
        .send(ObjectRef::new("web").within("auth"))
        .unwrap();
    keys_writer.apply_watcher_event(&Event::Apply(key("gone")));
    key_changes
        .send(ObjectRef::new("gone").within("auth"))
        .unwrap();
    assert_eq!(within(announced.next()).await.unwrap().name, "orphan");
    assert!(
        futures::FutureExt::now_or_never(announced.next()).is_none(),
        "web did not change"
    );
    assert!(registry.token_clients().contains_key("auth/orphan"));
    drop(cache);
    following.abort();
}

/// An unbounded receiver as a stream.
fn tokio_stream_of<T: Send + 'static>(
    mut rx: mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn the_leader_writes_a_status_only_when_the_apiserver_does_not_hold_it() {
    // A replica's index, synced with web served.
    let (kube, mut apiserver) = mock_api::client();
    let registry = Arc::new(Registry::default());
    let (keys, mut keys_writer) = reflector::store();
    keys_writer.apply_watcher_event(&Event::Init);
    keys_writer.apply_watcher_event(&Event::InitApply(key("web")));
    keys_writer.apply_watcher_event(&Event::InitDone);
    let served = Arc::new(Served::default());
    let (cache, cache_writer) = reflector::store::<DeserializeGuard<TokenClient>>();
    let (_stop, stopped) = watch::channel(false);
    let following = tokio::spawn(token_clients::run(
        kube,
        Follow {
            registry: registry.clone(),
            instance: Default::default(),
            external_url: "https://auth.example".into(),
            keys,
            served: served.clone(),
            changed: Arc::new(Feed::default()),
        },
        cache_writer,
        futures::stream::pending(),
        stopped,
    ));
    take(&mut apiserver, "GET", PATH).await.answer(
        200,
        &json!({"apiVersion": "authplane.io/v1alpha1", "kind": "TokenClientList",
                "metadata": {"resourceVersion": "7"}, "items": [client("web", "web", Value::Null)]}),
    );
    let _open_watch = take(&mut apiserver, "GET", PATH).await;
    within(token_clients::synced(served.clone())).await;
    assert_eq!(
        registry.unsynced_sources().len(),
        0,
        "{:?}",
        registry.unsynced_sources()
    );

    let (kube, mut apiserver) = mock_api::client();
    let (_leads, leader) = watch::channel(true);
    let now: Timestamp = "2026-12-06T20:00:00Z".parse().unwrap();
    let report = Arc::new(Report {
        served,
        writer: LeaderWriter::new(kube, leader, None),
        clock: Arc::new(Fixed(now)),
    });
    let guard: DeserializeGuard<TokenClient> =
        serde_json::from_value(client("web", "web", Value::Null)).unwrap();
    let reconciling = tokio::spawn(token_clients::reconcile(Arc::new(guard), report.clone()));
    let taken = take(
        &mut apiserver,
        "PATCH",
        "/apis/authplane.io/v1alpha1/namespaces/auth/tokenclients/web/status",
    )
    .await;
    let status = taken.body["status"].clone();
    assert_eq!(status["observedGeneration"], 3);
    assert_eq!(
        status["tokenEndpoint"],
        "https://auth.example/auth/web/token"
    );
    assert_eq!(status["conditions"][0]["type"], "Ready");
    assert_eq!(status["conditions"][0]["status"], "True");
    assert_eq!(status["conditions"][0]["reason"], "Serving");
    assert_eq!(status["conditions"][0]["observedGeneration"], 3);
    let mut stored = client("web", "web", status.clone());
    stored["metadata"]["resourceVersion"] = json!("8");
    taken.answer(200, &stored);
    within(reconciling).await.unwrap().unwrap();

    // The cache catches up with the written status: reconciling again writes nothing.
    let guard: DeserializeGuard<TokenClient> = serde_json::from_value(stored).unwrap();
    within(token_clients::reconcile(Arc::new(guard), report.clone()))
        .await
        .unwrap();
    // A status another writer left (or an older authplane) is corrected.
    let stale = client(
        "web",
        "web",
        json!({"observedGeneration": 2, "conditions": [{"type": "Ready", "status": "False",
               "reason": "SigningKeyNotFound", "message": "old", "observedGeneration": 2,
               "lastTransitionTime": "2026-12-01T00:00:00Z"}]}),
    );
    let mut stale = stale;
    stale["metadata"]["resourceVersion"] = json!("9");
    let guard: DeserializeGuard<TokenClient> = serde_json::from_value(stale).unwrap();
    let reconciling = tokio::spawn(token_clients::reconcile(Arc::new(guard), report.clone()));
    let taken = take(
        &mut apiserver,
        "PATCH",
        "/apis/authplane.io/v1alpha1/namespaces/auth/tokenclients/web/status",
    )
    .await;
    assert_eq!(taken.body["status"]["conditions"][0]["reason"], "Serving");
    let mut stored = client("web", "web", taken.body["status"].clone());
    stored["metadata"]["resourceVersion"] = json!("10");
    taken.answer(200, &stored);
    within(reconciling).await.unwrap().unwrap();
    drop(report);
    assert!(
        within(apiserver.next_request()).await.is_none(),
        "no other write"
    );
    drop(cache);
    following.abort();
}

#[tokio::test]
async fn the_leader_reports_an_id_token_issuer_without_keys_and_looks_again() {
    // A replica's index fed by the operator's own runtime: on a cluster a loopback
    // issuer is refused (the SSRF rules of AuthPolicies' external issuers).
    let (kube, mut apiserver) = mock_api::client();
    let registry = Arc::new(Registry::default());
    let (keys, mut keys_writer) = reflector::store();
    keys_writer.apply_watcher_event(&Event::Init);
    keys_writer.apply_watcher_event(&Event::InitApply(key("web")));
    keys_writer.apply_watcher_event(&Event::InitDone);
    let runtime = Arc::new(authplane::registry::PolicyRuntime::new(
        Arc::new(authplane::metrics::Metrics::default()),
        Arc::new(authplane::clock::SystemClock),
        0,
    ));
    let served = Arc::new(Served::new(runtime.token_client_index()));
    let (cache, cache_writer) = reflector::store::<DeserializeGuard<TokenClient>>();
    let (_stop, stopped) = watch::channel(false);
    let following = tokio::spawn(token_clients::run(
        kube,
        Follow {
            registry: registry.clone(),
            instance: Default::default(),
            external_url: "https://auth.example".into(),
            keys,
            served: served.clone(),
            changed: Arc::new(Feed::default()),
        },
        cache_writer,
        futures::stream::pending(),
        stopped,
    ));
    let mut web = client("web", "web", Value::Null);
    web["spec"]["idTokenIssuers"] =
        json!([{"issuer": "http://127.0.0.1:9/tenant/v2.0", "audiences": ["app"]}]);
    take(&mut apiserver, "GET", PATH).await.answer(
        200,
        &json!({"apiVersion": "authplane.io/v1alpha1", "kind": "TokenClientList",
                "metadata": {"resourceVersion": "7"}, "items": [web.clone()]}),
    );
    let _open_watch = take(&mut apiserver, "GET", PATH).await;
    within(token_clients::synced(served.clone())).await;
    let typed: TokenClient = serde_json::from_value(web.clone()).unwrap();
    common::eventually(
        "the first fetch refused",
        common::CHANGE_DEADLINE,
        || async {
            let status = served.status(&typed, Timestamp::now())?;
            (status.conditions[0].reason == "IdTokenIssuerUnavailable").then_some(())
        },
    )
    .await;

    let (kube, mut apiserver) = mock_api::client();
    let (_leads, leader) = watch::channel(true);
    let report = Arc::new(Report {
        served,
        writer: LeaderWriter::new(kube, leader, None),
        clock: Arc::new(authplane::clock::SystemClock),
    });
    let guard: DeserializeGuard<TokenClient> = serde_json::from_value(web.clone()).unwrap();
    let reconciling = tokio::spawn(token_clients::reconcile(Arc::new(guard), report.clone()));
    let taken = take(
        &mut apiserver,
        "PATCH",
        "/apis/authplane.io/v1alpha1/namespaces/auth/tokenclients/web/status",
    )
    .await;
    let condition = taken.body["status"]["conditions"][0].clone();
    assert_eq!(condition["status"], "False");
    assert_eq!(condition["reason"], "IdTokenIssuerUnavailable");
    let message = condition["message"].as_str().unwrap();
    assert!(
        message.starts_with("no usable keys for http://127.0.0.1:9/tenant/v2.0: refused: ")
            && message.ends_with("its ID tokens are refused (other logins are served)"),
        "{message}"
    );
    // The endpoint still serves the client (its other logins).
    assert_eq!(
        taken.body["status"]["tokenEndpoint"],
        "https://auth.example/auth/web/token"
    );
    let mut stored = web;
    stored["status"] = taken.body["status"].clone();
    taken.answer(200, &stored);
    // Keys come and go with no event: the leader looks again.
    assert_eq!(
        within(reconciling).await.unwrap().unwrap(),
        kube::runtime::controller::Action::requeue(std::time::Duration::from_secs(60))
    );
    assert!(registry.token_clients().contains_key("auth/web"));
    drop(cache);
    following.abort();
}

fn deployment(replicas: Option<i32>) -> Value {
    let mut spec = json!({"selector": {"matchLabels": {"app": "authplane"}},
                          "template": {"metadata": {"labels": {"app": "authplane"}}}});
    if let Some(replicas) = replicas {
        spec["replicas"] = json!(replicas);
    }
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": "authplane", "namespace": "authplane"}, "spec": spec})
}

/// The replica check with the Deployment list answered by `items` (or `status` alone).
async fn check_with(status: u16, answer: Value) -> Result<(), TokenStoreError> {
    let (kube, mut apiserver) = mock_api::client();
    let config = TokenStoreConfig {
        location: StoreLocation::File("/var/lib/authplane/tokens/tokens.redb".into()),
        password: None,
        ca: None,
        deployment: Some("authplane".into()),
        rate_per_minute: authplane::server::token::DEFAULT_TOKEN_RATE,
        session_limits: Default::default(),
    };
    let apiserver = tokio::spawn(async move {
        let taken = take(
            &mut apiserver,
            "GET",
            "/apis/apps/v1/namespaces/authplane/deployments",
        )
        .await;
        taken.answer(status, &answer);
    });
    let result = within(token_store::check_replicas(&kube, "authplane", &config)).await;
    apiserver.await.unwrap();
    result
}

fn deployments(items: Vec<Value>) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "DeploymentList",
           "metadata": {"resourceVersion": "1"}, "items": items})
}

#[tokio::test]
async fn an_embedded_token_store_refuses_several_replicas_and_says_why() {
    let refused = check_with(200, deployments(vec![deployment(Some(3))]))
        .await
        .unwrap_err();
    let message = refused.to_string();
    assert!(matches!(
        refused,
        TokenStoreError::SeveralReplicas { replicas: 3, .. }
    ));
    for said in [
        "/var/lib/authplane/tokens/tokens.redb",
        "authplane/authplane",
        "3 replicas",
        "split",
        "replicaCount: 1",
    ] {
        assert!(message.contains(said), "{said}: {message}");
    }
    // One replica, or none said (Kubernetes' default is one): the start goes on.
    check_with(200, deployments(vec![deployment(Some(1))]))
        .await
        .unwrap();
    check_with(200, deployments(vec![deployment(None)]))
        .await
        .unwrap();
    // Not run as that Deployment (a development run): not checked, with a warning.
    check_with(200, deployments(Vec::new())).await.unwrap();
    // Cannot be read: the start fails, saying which.
    let forbidden = json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                           "code": 403, "reason": "Forbidden", "message": "forbidden"});
    let failed = check_with(403, forbidden).await.unwrap_err();
    assert!(matches!(failed, TokenStoreError::Read { .. }), "{failed}");
}

#[tokio::test]
async fn a_shared_token_store_takes_any_number_of_replicas_without_asking() {
    let (kube, mut apiserver) = mock_api::client();
    let config = TokenStoreConfig {
        location: StoreLocation::parse("redis://redis.authplane.svc:6379/0").unwrap(),
        password: None,
        ca: None,
        deployment: Some("authplane".into()),
        rate_per_minute: authplane::server::token::DEFAULT_TOKEN_RATE,
        session_limits: Default::default(),
    };
    // The Deployment would say 3 replicas; a Redis every replica shares makes that
    // sound, so the start goes on without reading it.
    within(token_store::check_replicas(&kube, "authplane", &config))
        .await
        .unwrap();
    drop(kube);
    assert!(
        within(apiserver.next_request()).await.is_none(),
        "the Deployment is not read"
    );
}
