//! The SigningKey reconcile against kube-rs's mock service: exact requests, in order.

mod common;

use std::sync::Arc;

use authplane::api::SigningKey;
use authplane::clock::Clock;
use authplane::keys::KeyMaterial;
use authplane::operator::signing_keys::{Context, Error, ErrorKind, OwnedCaches, error_policy};
use authplane::operator::writer::LeaderWriter;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use http::{Request, Response};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Client;
use kube::client::Body;
use kube::runtime::reflector::{self, Store, store::Writer};
use kube::runtime::watcher::Event;
use serde_json::{Value, json};

use common::mock_api::{self, Handle, within};

struct Fixed(Timestamp);

impl Clock for Fixed {
    fn now(&self) -> Timestamp {
        self.0
    }
}

fn t0() -> Timestamp {
    "2026-03-01T00:00:00Z".parse().unwrap()
}

fn signing_key(status: Value) -> SigningKey {
    serde_json::from_value(json!({
        "apiVersion": "authplane.io/v1alpha1", "kind": "SigningKey",
        "metadata": {"name": "web", "namespace": "auth", "uid": "u-1", "generation": 3, "resourceVersion": "1"},
        "spec": {"algorithm": "ES256", "rotation": {"every": "100s", "prePublish": "10s", "retainFor": "30s"}},
        "status": status,
    }))
    .unwrap()
}

/// A reconcile's world: the mock API, and the watch caches of Secrets and ConfigMaps it
/// reads (filled by the test, as the watches would).
struct World {
    ctx: Arc<Context>,
    api: Handle,
    _leader: tokio::sync::watch::Sender<bool>,
    secrets: Writer<Secret>,
}

fn cache<K>(objects: Vec<Value>) -> (Store<K>, Writer<K>)
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + 'static,
{
    let (store, mut writer) = reflector::store::<K>();
    writer.apply_watcher_event(&Event::Init);
    for object in objects {
        writer.apply_watcher_event(&Event::InitApply(serde_json::from_value(object).unwrap()));
    }
    writer.apply_watcher_event(&Event::InitDone);
    (store, writer)
}

/// The Secret and ConfigMap caches hold `secret` and `config_map`; a key Secret that
/// reads comes with the signer Secret an earlier reconcile wrote beside it.
fn world(now: Timestamp, leader: bool, secret: Option<Value>, config_map: Option<Value>) -> World {
    let signer = secret.as_ref().and_then(signer_of);
    world_with(
        now,
        leader,
        secret.into_iter().chain(signer).collect(),
        config_map,
    )
}

/// The Secret cache holds `secrets` (key and signer Secrets), the ConfigMap cache
/// `config_map`.
fn world_with(
    now: Timestamp,
    leader: bool,
    secrets: Vec<Value>,
    config_map: Option<Value>,
) -> World {
    world_reporting(now, leader, secrets, config_map, |ctx| ctx)
}

/// As [`world_with`], with the context made as `report` says (issuer claims).
fn world_reporting(
    now: Timestamp,
    leader: bool,
    secrets: Vec<Value>,
    config_map: Option<Value>,
    report: impl FnOnce(Context) -> Context,
) -> World {
    let (service, api) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let (tx, rx) = tokio::sync::watch::channel(leader);
    let (secrets, secrets_writer) = cache::<Secret>(secrets);
    let (config_maps, _) = cache::<ConfigMap>(config_map.into_iter().collect());
    let ctx = report(Context::new(
        Arc::new(authplane::metrics::Metrics::default()),
        "https://auth.example".into(),
        Arc::new(Fixed(now)),
        LeaderWriter::new(client, rx, None),
        OwnedCaches {
            secrets,
            config_maps,
        },
    ));
    World {
        ctx: Arc::new(ctx),
        api,
        _leader: tx,
        secrets: secrets_writer,
    }
}

/// Nothing cached: no Secret, no ConfigMap.
fn context(
    now: Timestamp,
    leader: bool,
) -> (Arc<Context>, Handle, tokio::sync::watch::Sender<bool>) {
    let World {
        ctx, api, _leader, ..
    } = world(now, leader, None, None);
    (ctx, api, _leader)
}

/// The reconcile under test, failing instead of hanging on an unexpected request.
async fn reconcile(
    key: Arc<SigningKey>,
    ctx: Arc<Context>,
) -> Result<kube::runtime::controller::Action, Error> {
    within(authplane::operator::signing_keys::reconcile(key, ctx)).await
}

/// Takes the next request, checks method and path, answers, returns the request body.
/// A null answer echoes the object, as the apiserver answers with it (apply patches
/// carry no metadata).
async fn expect(
    handle: &mut Handle,
    method: &str,
    path: &str,
    status: u16,
    answer: Value,
) -> Value {
    mock_api::expect_echoing(handle, method, path, status, answer, |body| {
        let mut echo = body.clone();
        if echo.get("metadata").is_none() {
            echo["metadata"] = json!({"name": "web", "namespace": "auth"});
            echo["spec"] = json!({});
        }
        echo
    })
    .await
}

const SECRET: &str = "/api/v1/namespaces/auth/secrets/web-keys";
const SIGNER: &str = "/api/v1/namespaces/auth/secrets/web-keys-active";
const SECRETS: &str = "/api/v1/namespaces/auth/secrets";
const CONFIG_MAP: &str = "/api/v1/namespaces/auth/configmaps/web-jwks";
const CONFIG_MAPS: &str = "/api/v1/namespaces/auth/configmaps";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/auth/events";
const STATUS: &str = "/apis/authplane.io/v1alpha1/namespaces/auth/signingkeys/web/status";

fn decoded(secret: &Value, name: &str) -> String {
    String::from_utf8(B64.decode(secret["data"][name].as_str().unwrap()).unwrap()).unwrap()
}

/// The Secret as the API server would return it, holding `data`.
fn stored_secret(data: &authplane::keys::store::Data, resource_version: &str) -> Value {
    let encoded: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| (k.clone(), json!(B64.encode(v))))
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "web-keys", "namespace": "auth", "resourceVersion": resource_version,
                     "labels": {"app.kubernetes.io/managed-by": "authplane", "authplane.io/signing-key": "web"}},
        "type": "authplane.io/signing-keys",
        "data": encoded,
    })
}

/// The signer Secret as the API server would return it: the Active key of `data` alone.
fn stored_signer(data: &authplane::keys::store::Data, resource_version: &str) -> Value {
    let mut secret = stored_secret(&authplane::keys::store::signer_data(data), resource_version);
    secret["metadata"]["name"] = json!("web-keys-active");
    secret["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "authplane.io/v1alpha1", "kind": "SigningKey", "name": "web", "uid": "u-1",
        "controller": true,
    }]);
    secret
}

/// The signer Secret beside a stored key Secret, if its data reads.
fn signer_of(secret: &Value) -> Option<Value> {
    let data: authplane::keys::store::Data = secret["data"]
        .as_object()?
        .iter()
        .map(|(k, v)| {
            let bytes = B64.decode(v.as_str()?).ok()?;
            Some((k.clone(), String::from_utf8(bytes).ok()?))
        })
        .collect::<Option<_>>()?;
    authplane::keys::store::from_data(&data).ok()?;
    Some(stored_signer(&data, "3"))
}

fn keys_at(now: Timestamp) -> authplane::keys::store::Data {
    let key = signing_key(json!({}));
    authplane::reconcile::signing_key(
        &key,
        None,
        "https://auth.example",
        now,
        &mut KeyMaterial::generate,
    )
    .unwrap()
    .data
}

#[tokio::test]
async fn the_first_reconcile_creates_the_secret_the_jwks_and_the_status() {
    let (ctx, mut api, _leader) = context(t0(), true);
    let server = tokio::spawn(async move {
        // The Secret cache has none: no request asks.
        let secret = expect(&mut api, "POST", SECRETS, 201, Value::Null).await;
        assert_eq!(
            secret["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "authplane"
        );
        assert_eq!(
            secret["metadata"]["labels"]["authplane.io/instance"], "default",
            "recorded as this installation's"
        );
        assert_eq!(
            secret["metadata"]["ownerReferences"][0]["kind"],
            "SigningKey"
        );
        assert_eq!(secret["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(secret["type"], "authplane.io/signing-keys");
        let kid = decoded(&secret, "active.kid");
        assert!(decoded(&secret, &format!("{kid}.pem")).starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_eq!(decoded(&secret, "active.alg"), "ES256");
        // Once stored, the key is told of (an Event naming it), then published.
        let event = expect(&mut api, "POST", EVENTS, 201, Value::Null).await;
        assert_eq!(event["reason"], "KeyGenerated");
        assert_eq!(
            event["related"]["fieldPath"],
            format!("data[{kid}.pem]").as_str()
        );
        // Then the signer Secret: the Active key alone, owned and labelled like the key
        // Secret (the cache holds none: no request asks).
        let signer = expect(&mut api, "POST", SECRETS, 201, Value::Null).await;
        assert_eq!(signer["metadata"]["name"], "web-keys-active");
        assert_eq!(signer["metadata"]["ownerReferences"][0]["uid"], "u-1");
        assert_eq!(
            signer["metadata"]["labels"]["authplane.io/instance"],
            "default"
        );
        let entries: Vec<&String> = signer["data"].as_object().unwrap().keys().collect();
        assert_eq!(
            entries,
            [
                "active.alg",
                "active.key",
                "active.kid",
                "issuer",
                "max-token-lifetime"
            ]
        );
        assert_eq!(
            decoded(&signer, "active.key"),
            decoded(&secret, "active.key")
        );
        let config_map = expect(&mut api, "POST", CONFIG_MAPS, 201, Value::Null).await;
        let jwks: Value =
            serde_json::from_str(config_map["data"]["jwks.json"].as_str().unwrap()).unwrap();
        assert_eq!(jwks["keys"][0]["kid"], kid.as_str());
        assert!(
            jwks["keys"][0].get("d").is_none(),
            "no private part in the ConfigMap"
        );
        let status = expect(&mut api, "PATCH", STATUS, 200, Value::Null).await;
        let status = &status["status"];
        assert_eq!(status["activeKid"], kid.as_str());
        assert_eq!(status["conditions"][0]["type"], "Ready");
        assert_eq!(status["conditions"][0]["status"], "True");
        assert_eq!(status["observedGeneration"], 3);
        assert_eq!(
            status["jwksUri"],
            "https://auth.example/auth/web/.well-known/jwks.json"
        );
        assert!(
            !status.to_string().contains("PRIVATE KEY"),
            "no key material in status"
        );
        api
    });
    let action = reconcile(Arc::new(signing_key(json!({}))), ctx.clone())
        .await
        .unwrap();
    // The next transition: the next key's pre-publication, 90 s from now.
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(std::time::Duration::from_secs(90))
    );
    drop(ctx);
    let mut api = server.await.unwrap();
    assert!(api.next_request().await.is_none(), "no further requests");
}

/// The condition's type and status, and its lastTransitionTime, from a status patch.
fn secret_recreated(status: &Value) -> Option<String> {
    status["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "SecretRecreated" && c["status"] == "True")
        .map(|c| {
            c["lastTransitionTime"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
}

#[tokio::test]
async fn a_secret_deleted_by_hand_is_reported_for_a_day_even_from_a_stale_cache() {
    // Keys existed (status names an active kid), and the Secret is gone.
    let (ctx, mut api, _leader) = context(t0(), true);
    let server = tokio::spawn(async move {
        let secret = expect(&mut api, "POST", SECRETS, 201, Value::Null).await;
        assert_eq!(
            secret["metadata"]["annotations"]["authplane.io/recreated-at"], "2026-03-01T00:00:00Z",
            "the Secret, the source of truth, remembers"
        );
        // Said once the new Secret is stored (one merely not ours looks gone too).
        let event = expect(&mut api, "POST", EVENTS, 201, Value::Null).await;
        assert_eq!(event["reason"], "SecretDeleted");
        let event = expect(&mut api, "POST", EVENTS, 201, Value::Null).await;
        assert_eq!(event["reason"], "KeyGenerated");
        let signer = expect(&mut api, "POST", SECRETS, 201, Value::Null).await;
        assert_eq!(signer["metadata"]["name"], "web-keys-active");
        expect(&mut api, "POST", CONFIG_MAPS, 201, Value::Null).await;
        let status = expect(&mut api, "PATCH", STATUS, 200, Value::Null).await;
        assert_eq!(
            secret_recreated(&status).as_deref(),
            Some("2026-03-01T00:00:00Z")
        );
        (api, secret)
    });
    let stale = signing_key(json!({"activeKid": "deleted-kid"}));
    reconcile(Arc::new(stale.clone()), ctx.clone())
        .await
        .unwrap();
    drop(ctx);
    let (api, mut secret) = server.await.unwrap();
    drop(api);

    // The next reconcile reads the SigningKey from a cache that has not seen the status
    // patch: the condition must stay all the same, with its first transition time.
    secret["metadata"]["resourceVersion"] = json!("2");
    for (seconds, expected) in [(60, Some("2026-03-01T00:00:00Z")), (24 * 3600 + 1, None)] {
        let later = t0() + SignedDuration::from_secs(seconds);
        let World {
            ctx,
            mut api,
            _leader,
            ..
        } = world(later, true, Some(secret.clone()), None);
        let server = tokio::spawn(async move {
            let mut status = Value::Null;
            while let Some((request, respond)) = api.next_request().await {
                let path = request.uri().path().to_owned();
                let bytes = request.into_body().collect_bytes().await.unwrap();
                let mut body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                if path == STATUS {
                    status = body.clone();
                }
                if body.get("metadata").is_none() {
                    body["metadata"] = json!({"name": "web", "namespace": "auth"});
                    body["spec"] = json!({});
                }
                respond.send_response(
                    Response::builder()
                        .status(200)
                        .body(Body::from(serde_json::to_vec(&body).unwrap()))
                        .unwrap(),
                );
            }
            status
        });
        reconcile(Arc::new(stale.clone()), ctx.clone())
            .await
            .unwrap();
        drop(ctx);
        let status = server.await.unwrap();
        assert_eq!(
            secret_recreated(&status).as_deref(),
            expected,
            "{seconds} s after the deletion: {status}"
        );
    }
}

#[tokio::test]
async fn a_due_rotation_replaces_the_secret_with_the_next_key_published() {
    let stored = keys_at(t0());
    let now = t0() + SignedDuration::from_secs(90);
    let cached = stored_secret(&stored, "7");
    let World {
        ctx,
        mut api,
        _leader,
        ..
    } = world(now, true, Some(cached), None);
    let server = tokio::spawn(async move {
        let secret = expect(&mut api, "PUT", SECRET, 200, Value::Null).await;
        assert_eq!(
            secret["metadata"]["resourceVersion"], "7",
            "optimistic concurrency"
        );
        let lifecycle: Value = serde_json::from_str(&decoded(&secret, "keys.json")).unwrap();
        let keys = lifecycle["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[1]["activatesAt"], "2026-03-01T00:01:40Z");
        assert_eq!(
            decoded(&secret, "active.kid"),
            decoded(&stored_secret(&stored, "7"), "active.kid")
        );
        let event = expect(&mut api, "POST", EVENTS, 201, Value::Null).await;
        assert_eq!(event["reason"], "KeyGenerated");
        expect(&mut api, "POST", CONFIG_MAPS, 201, Value::Null).await;
        let status = expect(&mut api, "PATCH", STATUS, 200, Value::Null).await;
        let states: Vec<&str> = status["status"]["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["state"].as_str().unwrap())
            .collect();
        assert_eq!(states, ["Active", "Next"]);
        api
    });
    reconcile(
        Arc::new(signing_key(json!({"activeKid": "x"}))),
        ctx.clone(),
    )
    .await
    .unwrap();
    drop(ctx);
    assert!(server.await.unwrap().next_request().await.is_none());
}

#[tokio::test]
async fn a_steady_state_reconcile_writes_nothing_that_would_trigger_it_again() {
    let stored = keys_at(t0());
    // A moment that is not a whole second: the apiserver keeps times to the second.
    let now = t0() + SignedDuration::from_millis(30_700);
    // The ConfigMap and status the last reconcile wrote, as the watches deliver them.
    let (config_map, status) = {
        let secret = stored_secret(&stored, "7");
        let World {
            ctx,
            mut api,
            _leader,
            ..
        } = world(now, true, Some(secret), None);
        let server = tokio::spawn(async move {
            let mut config_map = expect(&mut api, "POST", CONFIG_MAPS, 201, Value::Null).await;
            config_map["metadata"]["resourceVersion"] = json!("8");
            let status = expect(&mut api, "PATCH", STATUS, 200, Value::Null).await;
            (config_map, status["status"].clone())
        });
        reconcile(Arc::new(signing_key(json!({}))), ctx)
            .await
            .unwrap();
        server.await.unwrap()
    };
    let later = now + SignedDuration::from_millis(5_600);
    let World {
        ctx, api, _leader, ..
    } = world(
        later,
        true,
        Some(stored_secret(&stored, "7")),
        Some(config_map),
    );
    reconcile(Arc::new(signing_key(status)), ctx.clone())
        .await
        .unwrap();
    drop(ctx);
    let mut api = api;
    assert!(
        api.next_request().await.is_none(),
        "no Secret read, no ConfigMap apply, no status write, no event"
    );
}

#[tokio::test]
async fn a_conflict_retries_from_a_fresh_read_and_never_writes_twice() {
    let stored = keys_at(t0());
    let now = t0() + SignedDuration::from_secs(90);
    // What the other writer stored: the same plan, already including a next key.
    let key = signing_key(json!({}));
    let theirs = authplane::reconcile::signing_key(
        &key,
        Some(&stored),
        "https://auth.example",
        now,
        &mut KeyMaterial::generate,
    )
    .unwrap()
    .data;
    let World {
        ctx,
        mut api,
        _leader,
        mut secrets,
        ..
    } = world(now, true, Some(stored_secret(&stored, "7")), None);
    let server = tokio::spawn(async move {
        let conflict = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409,
            "message": "the object has been modified"});
        expect(&mut api, "PUT", SECRET, 409, conflict).await;
        // The retry reads the cache again and finds the other writer's next key:
        // nothing to write.
        expect(&mut api, "POST", CONFIG_MAPS, 201, Value::Null).await;
        let status = expect(&mut api, "PATCH", STATUS, 200, Value::Null).await;
        assert_eq!(status["status"]["keys"].as_array().unwrap().len(), 2);
        api
    });
    let key = Arc::new(key);
    let error = reconcile(key.clone(), ctx.clone()).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Conflict);
    // The watch delivers the other writer's Secret.
    let theirs: Secret = serde_json::from_value(stored_secret(&theirs, "8")).unwrap();
    secrets.apply_watcher_event(&Event::Apply(theirs));
    assert_eq!(
        error_policy(key.clone(), &error, ctx.clone()),
        kube::runtime::controller::Action::requeue(std::time::Duration::from_millis(200))
    );
    reconcile(key, ctx.clone()).await.unwrap();
    drop(ctx);
    assert!(
        server.await.unwrap().next_request().await.is_none(),
        "no second PUT"
    );
}

#[tokio::test]
async fn a_garbage_secret_is_reported_and_never_overwritten() {
    let mut garbage = authplane::keys::store::Data::new();
    garbage.insert("keys.json".into(), "{not json".into());
    let World {
        ctx,
        mut api,
        _leader,
        ..
    } = world(t0(), true, Some(stored_secret(&garbage, "7")), None);
    let server = tokio::spawn(async move {
        let event = expect(&mut api, "POST", EVENTS, 201, Value::Null).await;
        assert_eq!(event["type"], "Warning");
        assert_eq!(event["reason"], "SecretUnreadable");
        let status = expect(&mut api, "PATCH", STATUS, 200, Value::Null).await;
        let ready = &status["status"]["conditions"][0];
        assert_eq!(
            (ready["type"].as_str(), ready["status"].as_str()),
            (Some("Ready"), Some("False"))
        );
        let message = ready["message"].as_str().unwrap();
        assert!(
            message.contains("web-keys") && message.contains("keys.json"),
            "{message}"
        );
        api
    });
    reconcile(
        Arc::new(signing_key(json!({"activeKid": "x"}))),
        ctx.clone(),
    )
    .await
    .unwrap();
    // Not Ready, and a failure: what the SigningKeyNotReady and KeyRotationFailing
    // alerts read.
    let metrics = ctx.metrics.encode();
    for sample in [
        r#"authplane_signing_key_ready{namespace="auth",name="web"} 0"#,
        r#"authplane_signing_key_failures_total{namespace="auth",name="web"} 1"#,
    ] {
        assert!(metrics.contains(sample), "{sample} in\n{metrics}");
    }
    drop(ctx);
    assert!(
        server.await.unwrap().next_request().await.is_none(),
        "nothing written"
    );
}

#[tokio::test]
async fn an_api_failure_is_recorded_as_a_warning_event() {
    let (ctx, mut api, _leader) = context(t0(), true);
    let server = tokio::spawn(async move {
        let failure = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "InternalError", "code": 500,
            "message": "etcd is unhappy"});
        expect(&mut api, "POST", SECRETS, 500, failure).await;
        let event = expect(&mut api, "POST", EVENTS, 201, Value::Null).await;
        assert_eq!(
            (event["type"].as_str(), event["reason"].as_str()),
            (Some("Warning"), Some("ReconcileFailed"))
        );
        assert!(event["note"].as_str().unwrap().contains("etcd is unhappy"));
        api
    });
    let error = reconcile(Arc::new(signing_key(json!({}))), ctx.clone())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Api);
    drop(ctx);
    assert!(server.await.unwrap().next_request().await.is_none());
}

#[tokio::test]
async fn a_replica_without_the_lease_writes_nothing() {
    let (ctx, mut api, _leader) = context(t0(), false);
    let error = reconcile(Arc::new(signing_key(json!({}))), ctx.clone())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotLeader);
    drop(ctx);
    assert!(api.next_request().await.is_none(), "not even a read");
}

fn already_exists() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "AlreadyExists", "code": 409,
           "message": "secrets \"web-keys\" already exists"})
}

/// The Secret exists and the cache does not hold it: it has no managed-by label, or
/// another installation's instance label, and the cache holds only this instance's.
#[tokio::test]
async fn a_secret_this_instance_does_not_manage_is_left_alone_and_reported() {
    let (ctx, mut api, _leader) = context(t0(), true);
    let server = tokio::spawn(async move {
        // Once, it may be a Secret created a moment ago that the cache has not seen.
        expect(&mut api, "POST", SECRETS, 409, already_exists()).await;
        // Twice running, it is not ours: said, and nothing else is written.
        expect(&mut api, "POST", SECRETS, 409, already_exists()).await;
        let event = expect(&mut api, "POST", EVENTS, 201, Value::Null).await;
        assert_eq!(event["reason"], "SecretNotManaged");
        let status = expect(&mut api, "PATCH", STATUS, 200, Value::Null).await;
        let ready = &status["status"]["conditions"][0];
        assert_eq!(
            (ready["status"].as_str(), ready["reason"].as_str()),
            (Some("False"), Some("SecretNotManaged"))
        );
        assert!(
            ready["message"]
                .as_str()
                .unwrap()
                .contains("authplane.io/instance=default"),
            "{ready}"
        );
        api
    });
    let key = Arc::new(signing_key(json!({})));
    let error = reconcile(key.clone(), ctx.clone()).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Conflict, "retried at once");
    reconcile(key, ctx.clone()).await.unwrap();
    drop(ctx);
    assert!(server.await.unwrap().next_request().await.is_none());
}

/// Another installation's JWKS ConfigMap of the same name is never written over.
#[tokio::test]
async fn a_config_map_of_another_instance_is_not_written() {
    let stored = keys_at(t0());
    let theirs = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "web-jwks", "namespace": "auth", "resourceVersion": "3",
                     "labels": {"app.kubernetes.io/managed-by": "authplane",
                                "authplane.io/instance": "staging"}},
        "data": {"jwks.json": "{\"keys\": []}"},
    });
    let World {
        ctx,
        mut api,
        _leader,
        ..
    } = world(t0(), true, Some(stored_secret(&stored, "7")), Some(theirs));
    let server = tokio::spawn(async move {
        expect(&mut api, "PATCH", STATUS, 200, Value::Null).await;
        api
    });
    reconcile(Arc::new(signing_key(json!({}))), ctx.clone())
        .await
        .unwrap();
    drop(ctx);
    assert!(
        server.await.unwrap().next_request().await.is_none(),
        "only the status of its own SigningKey"
    );
}

/// A ConfigMap of the namespace that bears the JWKS ConfigMap's name (`web-jwks`) but
/// is not authplane's is never taken over: applying over it would put our JWKS, labels
/// and controlling owner on it, and the garbage collector would delete it with the
/// SigningKey. The watch holds only managed ConfigMaps, so it is found by a create.
#[tokio::test]
async fn a_config_map_that_is_not_the_signing_keys_is_not_taken_over() {
    let stored = keys_at(t0());
    let pinned = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "web-jwks", "namespace": "auth", "resourceVersion": "3"},
        "data": {"jwks.json": "{\"keys\": [{\"kid\": \"partner\"}]}", "other": "keep"},
    });
    let World {
        ctx,
        mut api,
        _leader,
        ..
    } = world(t0(), true, Some(stored_secret(&stored, "7")), None);
    let server = tokio::spawn(async move {
        expect(&mut api, "POST", CONFIG_MAPS, 409, already_exists()).await;
        expect(&mut api, "GET", CONFIG_MAP, 200, pinned).await;
        expect(&mut api, "PATCH", STATUS, 200, Value::Null).await;
        api
    });
    reconcile(Arc::new(signing_key(json!({}))), ctx.clone())
        .await
        .unwrap();
    drop(ctx);
    assert!(
        server.await.unwrap().next_request().await.is_none(),
        "nothing written over the ConfigMap"
    );

    // One of authplane's, but controlled by an earlier SigningKey of that name (deleted,
    // its ConfigMap about to be collected): not written over either.
    let earlier = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "web-jwks", "namespace": "auth", "resourceVersion": "3",
                     "labels": {"app.kubernetes.io/managed-by": "authplane",
                                "authplane.io/signing-key": "web"},
                     "ownerReferences": [{"apiVersion": "authplane.io/v1alpha1", "kind": "SigningKey",
                                          "name": "web", "uid": "u-0", "controller": true}]},
        "data": {"jwks.json": "{\"keys\": []}"},
    });
    let World {
        ctx,
        mut api,
        _leader,
        ..
    } = world(t0(), true, Some(stored_secret(&stored, "7")), Some(earlier));
    let server = tokio::spawn(async move {
        expect(&mut api, "PATCH", STATUS, 200, Value::Null).await;
        api
    });
    reconcile(Arc::new(signing_key(json!({}))), ctx.clone())
        .await
        .unwrap();
    drop(ctx);
    assert!(server.await.unwrap().next_request().await.is_none());
}

pub(crate) mod auth_policy_status {
    use super::*;
    use authplane::api::TargetKind;
    use authplane::api::{AuthPolicy, ObjectKey};
    use authplane::index::Index;
    use authplane::operator::attachments::{AttachConfig, Attachments};
    use authplane::operator::auth_policies::{PolicyContext, reconcile};
    use authplane::operator::targets::{KINDS, Targets};
    use authplane::registry::{PolicyRuntime, Registry, ServedKeys};
    use kube::runtime::watcher::Event;

    const POLICY_STATUS: &str =
        "/apis/authplane.io/v1alpha1/namespaces/shop/authpolicies/payments/status";

    pub fn policy(status: Value) -> AuthPolicy {
        policy_with(json!({"mode": "Enforce", "percentage": 10}), status)
    }

    fn policy_with(rollout: Value, status: Value) -> AuthPolicy {
        serde_json::from_value(json!({
            "apiVersion": "authplane.io/v1alpha1", "kind": "AuthPolicy",
            "metadata": {"name": "payments", "namespace": "shop", "generation": 2},
            "spec": {"issuers": [{"signingKeyRef": {"name": "web", "namespace": "auth"}}],
                     "targetRefs": [{"kind": "Ingress", "name": "payments"}, {"kind": "HTTPRoute", "name": "payments"}],
                     "rollout": rollout},
            "status": status,
        }))
        .unwrap()
    }

    fn context() -> (Arc<PolicyContext>, Handle, tokio::sync::watch::Sender<bool>) {
        context_for(policy(Value::Null))
    }

    pub fn context_for(
        current: AuthPolicy,
    ) -> (Arc<PolicyContext>, Handle, tokio::sync::watch::Sender<bool>) {
        context_with_keys(current, Vec::new())
    }

    /// `cached_keys`: the serving cache of SigningKeys (only `auth/web` is served).
    pub fn context_with_keys(
        current: AuthPolicy,
        cached_keys: Vec<Value>,
    ) -> (Arc<PolicyContext>, Handle, tokio::sync::watch::Sender<bool>) {
        context_attaching(current, cached_keys, AttachConfig::default())
    }

    /// As [`context_with_keys`], writing gateway objects as `attach` says.
    pub fn context_attaching(
        current: AuthPolicy,
        cached_keys: Vec<Value>,
        attach: AttachConfig,
    ) -> (Arc<PolicyContext>, Handle, tokio::sync::watch::Sender<bool>) {
        let cached_policy = serde_json::to_value(&current).unwrap();
        let key = signing_key(json!({}));
        let outcome = authplane::reconcile::signing_key(
            &key,
            None,
            "https://auth.example",
            t0(),
            &mut KeyMaterial::generate,
        )
        .unwrap();
        let registry = Arc::new(Registry::default());
        let runtime = Arc::new(PolicyRuntime::new(
            Arc::new(authplane::metrics::Metrics::default()),
            Arc::new(Fixed(t0())),
            0,
        ));
        let scope = authplane::issuer_claims::IssuerScope::anywhere("https://auth.example");
        let mut index = Index::new(runtime.clone(), Arc::new(scope));
        index.apply_key(
            &ObjectKey {
                namespace: "auth".into(),
                name: "web".into(),
            },
            ServedKeys {
                published: Arc::new(outcome.published("auth", "web")),
                keys: outcome.keys.clone(),
                max_token_lifetime: authplane::api::DEFAULT_MAX_TOKEN_LIFETIME,
            },
        );
        index.apply_policy(Arc::new(current));
        registry.publish(index.snapshot());
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let (tx, rx) = tokio::sync::watch::channel(true);
        let client = Client::new(service, "default");
        // As the target watches saw the cluster: the Ingress exists, the HTTPRoute not.
        let targets = Arc::new(Targets::default());
        for kind in KINDS {
            targets.observe(kind, Event::Init);
            targets.observe(kind, Event::InitDone);
        }
        targets.observe(
            TargetKind::Ingress,
            Event::Apply(("shop".into(), "payments".into())),
        );
        let ctx = PolicyContext {
            targets,
            attachments: Arc::new(Attachments::new(attach, &Default::default())),
            policies: cache(vec![cached_policy]).0,
            registry,
            external_url: "https://authplane.example".into(),
            clock: Arc::new(Fixed(t0())),
            writer: LeaderWriter::new(client, rx, None),
            runtime,
            rollouts: Default::default(),
            keys: cache(cached_keys).0,
            leading_since: Default::default(),
        };
        {
            // As the Gateway API watches saw the cluster: every list done (a test adds
            // its objects); until then the attachment is held.
            let mut topology = ctx.attachments.topology.lock().unwrap();
            topology.replace_classes(Default::default());
            topology.replace_gateways(Default::default());
            topology.replace_routes(TargetKind::HttpRoute, Default::default());
            topology.replace_routes(TargetKind::GrpcRoute, Default::default());
        }
        (Arc::new(ctx), handle, tx)
    }

    #[tokio::test]
    async fn status_reports_conditions_targets_and_urls_and_is_written_once() {
        let (ctx, mut api, _leader) = context();
        let server = tokio::spawn(async move {
            let answer = serde_json::to_value(policy(Value::Null)).unwrap();
            let mut body = expect(&mut api, "PATCH", POLICY_STATUS, 200, answer).await;
            let status = body["status"].take();
            assert_eq!(status["effectivePercentage"], 10.0);
            assert_eq!(
                status["forwardAuthUrl"],
                "https://authplane.example/authz/shop/payments"
            );
            assert_eq!(
                status["tokenReviewUrl"],
                "https://authplane.example/tokenreview/shop/payments"
            );
            assert_eq!(
                status["targets"],
                json!([
                    {"kind": "Ingress", "name": "payments", "found": true},
                    {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "payments", "found": false,
                     "conditions": [{"type": "Accepted", "status": "False", "reason": "TargetNotFound",
                                     "message": "HTTPRoute shop/payments not found", "observedGeneration": 2,
                                     "lastTransitionTime": t0().to_string()}]},
                ])
            );
            let conditions: Vec<(&str, &str)> = status["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| (c["type"].as_str().unwrap(), c["status"].as_str().unwrap()))
                .collect();
            assert_eq!(conditions, [("Accepted", "True"), ("Ready", "True")]);
            (api, status)
        });
        within(reconcile(Arc::new(policy(Value::Null)), ctx.clone()))
            .await
            .unwrap();
        let (mut api, status) = server.await.unwrap();

        // With that status in place, the next look asks and writes nothing.
        within(reconcile(Arc::new(policy(status)), ctx.clone()))
            .await
            .unwrap();
        drop(ctx);
        assert!(api.next_request().await.is_none());
    }

    /// The status patch; returns the status written.
    async fn status_written(api: &mut Handle) -> Value {
        let answer = serde_json::to_value(policy(Value::Null)).unwrap();
        let mut body = expect(api, "PATCH", POLICY_STATUS, 200, answer).await;
        body["status"].take()
    }

    #[tokio::test]
    async fn a_stepped_rollout_is_recorded_in_status_and_continues_from_the_record() {
        let stepped = json!({"mode": "Enforce", "steps": [10, 50, 100], "stepEvery": "1h"});
        let at = |minutes: i64| {
            t0().checked_add(jiff::SignedDuration::from_mins(minutes))
                .unwrap()
                .to_string()
        };

        // First sight: the first step, recorded from now.
        let fresh = policy_with(stepped.clone(), Value::Null);
        let (ctx, mut api, _leader) = context_for(fresh.clone());
        let server = tokio::spawn(async move { status_written(&mut api).await });
        within(reconcile(Arc::new(fresh), ctx)).await.unwrap();
        let status = server.await.unwrap();
        assert_eq!(status["effectivePercentage"], 10.0);
        assert_eq!(status["nextStepAt"], at(60));
        assert_eq!(status["paused"], false);
        assert_eq!(
            status["rollout"],
            json!({"steps": [10.0, 50.0, 100.0], "step": 0, "since": at(0)})
        );

        // A new leader 90 minutes into the rollout continues from the record.
        let recorded =
            json!({"rollout": {"steps": [10.0, 50.0, 100.0], "step": 0, "since": at(-90)}});
        let resumed = policy_with(stepped, recorded);
        let (ctx, mut api, _leader) = context_for(resumed.clone());
        let server = tokio::spawn(async move { status_written(&mut api).await });
        within(reconcile(Arc::new(resumed), ctx)).await.unwrap();
        let status = server.await.unwrap();
        assert_eq!(status["effectivePercentage"], 50.0);
        assert_eq!(status["nextStepAt"], at(30));
        assert_eq!(status["rollout"]["step"], 1);
        assert_eq!(status["rollout"]["since"], at(-30));
    }
}

mod auth_policy_not_compiled_yet {
    use super::auth_policy_status::*;
    use super::*;
    use authplane::operator::auth_policies::RECHECK;
    use kube::runtime::controller::Action;

    /// Before, the controller asked again every second until the serving view caught
    /// up; now the serving index announces the compile (`Recompiled`), and the
    /// controller only looks again at its usual recheck.
    #[tokio::test]
    async fn a_generation_not_yet_served_is_neither_reported_nor_polled() {
        let served = policy(Value::Null);
        let (ctx, api, _leader) = context_for(served.clone());
        let mut edited = served;
        edited.metadata.generation = Some(3);
        let action = within(authplane::operator::auth_policies::reconcile(
            Arc::new(edited),
            ctx.clone(),
        ))
        .await
        .unwrap();
        assert_eq!(action, Action::requeue(RECHECK));
        drop(ctx);
        let mut api = api;
        assert!(api.next_request().await.is_none(), "nothing was written");
    }
}

mod auth_policy_waiting_for_keys {
    use super::auth_policy_status::*;
    use super::*;
    use authplane::api::AuthPolicy;
    use authplane::operator::auth_policies::reconcile;
    use kube::runtime::controller::Action;

    const POLICY_STATUS: &str =
        "/apis/authplane.io/v1alpha1/namespaces/shop/authpolicies/payments/status";

    /// Names `auth/new`, which exists and is not served yet.
    fn waiting() -> AuthPolicy {
        let mut policy = policy(Value::Null);
        policy.spec.issuers[0] =
            serde_json::from_value(json!({"signingKeyRef": {"name": "new", "namespace": "auth"}}))
                .unwrap();
        policy
    }

    fn new_key(status: Value) -> Value {
        json!({
            "apiVersion": "authplane.io/v1alpha1", "kind": "SigningKey",
            "metadata": {"name": "new", "namespace": "auth", "generation": 1},
            "spec": {"algorithm": "ES256"},
            "status": status,
        })
    }

    /// A cold start: the leader is making the key's Secret. The policy's status waits
    /// for it (the serving loop announces the policy once the key is served) instead of
    /// saying "not found" first and "found" a moment later.
    #[tokio::test]
    async fn a_policy_waits_for_keys_being_made_and_not_for_keys_that_failed() {
        let (ctx, mut api, _leader) = context_with_keys(waiting(), vec![new_key(Value::Null)]);
        *ctx.leading_since.lock().unwrap() = Some(t0());
        let action = within(reconcile(Arc::new(waiting()), ctx.clone()))
            .await
            .unwrap();
        assert_eq!(
            action,
            Action::requeue(std::time::Duration::from_secs(300)),
            "until the end of the wait, at most"
        );
        drop(ctx);
        assert!(api.next_request().await.is_none(), "nothing written");

        // The key says its Secret is not ours: its keys are not coming. Said at once.
        let failed = json!({"conditions": [{"type": "Ready", "status": "False",
            "reason": "SecretNotManaged", "message": "x", "observedGeneration": 1,
            "lastTransitionTime": "2026-03-01T00:00:00Z"}]});
        let (ctx, mut api, _leader) = context_with_keys(waiting(), vec![new_key(failed)]);
        *ctx.leading_since.lock().unwrap() = Some(t0());
        let server = tokio::spawn(async move {
            let answer = serde_json::to_value(policy(Value::Null)).unwrap();
            let status = expect(&mut api, "PATCH", POLICY_STATUS, 200, answer).await;
            (api, status)
        });
        within(reconcile(Arc::new(waiting()), ctx.clone()))
            .await
            .unwrap();
        drop(ctx);
        let (mut api, status) = server.await.unwrap();
        assert!(
            status.to_string().contains("SigningKeyNotFound"),
            "{status}"
        );
        assert!(api.next_request().await.is_none());
    }
}

/// Another SigningKey of the namespace, naming web's Secret as its own.
fn intruder(annotations: Value) -> SigningKey {
    serde_json::from_value(json!({
        "apiVersion": "authplane.io/v1alpha1", "kind": "SigningKey",
        "metadata": {"name": "x", "namespace": "auth", "uid": "u-x", "generation": 1,
                     "annotations": annotations},
        "spec": {"algorithm": "ES256", "secretName": "web-keys",
                 "rotation": {"every": "100s", "prePublish": "10s", "retainFor": "30s"}},
    }))
    .unwrap()
}

#[tokio::test]
async fn another_signing_keys_secret_is_never_loaded_rewritten_or_owned() {
    // web's Secret, as authplane wrote it: its label and its controlling owner.
    let stored = keys_at(t0());
    let web_kid = stored["active.kid"].clone();
    let mut secret = stored_secret(&stored, "7");
    secret["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "authplane.io/v1alpha1", "kind": "SigningKey", "name": "web", "uid": "u-1",
        "controller": true,
    }]);
    let World {
        ctx,
        mut api,
        _leader,
        ..
    } = world(
        t0() + SignedDuration::from_secs(5),
        true,
        Some(secret),
        None,
    );
    let server = tokio::spawn(async move {
        // No PUT of web's keys, no owner reference of x's on them: a Warning and a status.
        let event = expect(&mut api, "POST", EVENTS, 201, Value::Null).await;
        assert_eq!(
            (event["type"].as_str(), event["reason"].as_str()),
            (Some("Warning"), Some("SecretInUse"))
        );
        assert_eq!(event["regarding"]["name"], "x");
        let status = expect(
            &mut api,
            "PATCH",
            "/apis/authplane.io/v1alpha1/namespaces/auth/signingkeys/x/status",
            200,
            Value::Null,
        )
        .await;
        let ready = &status["status"]["conditions"][0];
        assert_eq!(
            (ready["status"].as_str(), ready["reason"].as_str()),
            (Some("False"), Some("SecretInUse"))
        );
        assert!(
            ready["message"]
                .as_str()
                .unwrap()
                .contains("Secret web-keys belongs to SigningKey auth/web"),
            "{ready}"
        );
        assert!(!status.to_string().contains("PRIVATE KEY"));
        api
    });
    // Its revoke-kids annotation names web's Active key: nothing is revoked.
    let key = intruder(json!({"authplane.io/revoke-kids": web_kid}));
    reconcile(Arc::new(key), ctx.clone()).await.unwrap();
    drop(ctx);
    assert!(
        server.await.unwrap().next_request().await.is_none(),
        "web's Secret is never written"
    );
}

#[tokio::test]
async fn at_activation_the_signer_secret_gets_the_new_key_and_nothing_else() {
    // Stored at 90 s: the next key, published, activates at 100 s.
    let key = signing_key(json!({}));
    let published = authplane::reconcile::signing_key(
        &key,
        Some(&keys_at(t0())),
        "https://auth.example",
        t0() + SignedDuration::from_secs(90),
        &mut KeyMaterial::generate,
    )
    .unwrap()
    .data;
    // The caches hold the key Secret and the signer Secret of the key Active until now.
    let World {
        ctx,
        mut api,
        _leader,
        ..
    } = world(
        t0() + SignedDuration::from_secs(100),
        true,
        Some(stored_secret(&published, "7")),
        None,
    );
    let stored = published.clone();
    let server = tokio::spawn(async move {
        let secret = expect(&mut api, "PUT", SECRET, 200, Value::Null).await;
        let reasons = [
            expect(&mut api, "POST", EVENTS, 201, Value::Null).await,
            expect(&mut api, "POST", EVENTS, 201, Value::Null).await,
        ];
        assert_eq!(
            reasons.map(|e| e["reason"].clone()),
            ["KeyActivated", "KeyRetired"]
        );
        let signer = expect(&mut api, "PUT", SIGNER, 200, Value::Null).await;
        assert_eq!(signer["metadata"]["resourceVersion"], "3");
        let new_kid = decoded(&secret, "active.kid");
        assert_ne!(new_kid, stored["active.kid"]);
        assert_eq!(decoded(&signer, "active.kid"), new_kid);
        assert_eq!(
            decoded(&signer, "active.key"),
            decoded(&secret, &format!("{new_kid}.pem"))
        );
        // The retired key stays in the key Secret (the JWKS needs it), not here.
        let retired = stored["active.kid"].clone();
        assert!(secret["data"].get(format!("{retired}.pem")).is_some());
        assert_eq!(signer["data"].as_object().unwrap().len(), 5);
        assert!(!signer.to_string().contains(&format!("{retired}.pem")));
        expect(&mut api, "POST", CONFIG_MAPS, 201, Value::Null).await;
        expect(&mut api, "PATCH", STATUS, 200, Value::Null).await;
        api
    });
    reconcile(
        Arc::new(signing_key(json!({"activeKid": "x"}))),
        ctx.clone(),
    )
    .await
    .unwrap();
    drop(ctx);
    assert!(server.await.unwrap().next_request().await.is_none());
}

#[tokio::test]
async fn a_signing_key_whose_issuer_path_is_anothers_is_not_ready_and_both_are_told_once() {
    use authplane::issuer_claims::IssuerScope;
    use authplane::registry::{Registry, Snapshot};
    // The serving index: /auth/web is served for auth/old, which claimed it first.
    let owner = authplane::api::ObjectKey {
        namespace: "auth".into(),
        name: "old".into(),
    };
    let registry = Arc::new(Registry::default());
    registry.publish(Snapshot {
        path_owners: [("/auth/web".to_owned(), Some(owner))]
            .into_iter()
            .collect(),
        ..Snapshot::default()
    });
    let scope = Arc::new(IssuerScope::new("https://auth.example", []).unwrap());
    let stored = keys_at(t0());
    let secret = stored_secret(&stored, "7");
    let secrets = vec![secret.clone(), signer_of(&secret).unwrap()];
    let world = |config_map: Option<Value>| {
        world_reporting(
            t0() + SignedDuration::from_secs(5),
            true,
            secrets.clone(),
            config_map,
            |ctx| ctx.with_issuer_claims(scope.clone(), registry.clone()),
        )
    };
    let World {
        ctx,
        mut api,
        _leader,
        ..
    } = world(None);
    let server = tokio::spawn(async move {
        let mut config_map = expect(&mut api, "POST", CONFIG_MAPS, 201, Value::Null).await;
        config_map["metadata"]["resourceVersion"] = json!("8");
        let mine = expect(&mut api, "POST", EVENTS, 201, Value::Null).await;
        assert_eq!(
            (mine["reason"].as_str(), mine["regarding"]["name"].as_str()),
            (Some("IssuerPathConflict"), Some("web"))
        );
        let theirs = expect(&mut api, "POST", EVENTS, 201, Value::Null).await;
        assert_eq!(
            (
                theirs["reason"].as_str(),
                theirs["regarding"]["name"].as_str()
            ),
            (Some("IssuerPathConflict"), Some("old"))
        );
        assert!(
            theirs["note"]
                .as_str()
                .unwrap()
                .contains("it stays with this SigningKey")
        );
        let status = expect(&mut api, "PATCH", STATUS, 200, Value::Null).await;
        (api, config_map, status["status"].clone())
    });
    reconcile(Arc::new(signing_key(json!({}))), ctx.clone())
        .await
        .unwrap();
    drop(ctx);
    let (api, config_map, status) = server.await.unwrap();
    drop(api);
    let ready = &status["conditions"][0];
    assert_eq!(
        (
            ready["type"].as_str(),
            ready["status"].as_str(),
            ready["reason"].as_str()
        ),
        (Some("Ready"), Some("False"), Some("IssuerPathConflict"))
    );
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("served for SigningKey auth/old")
    );
    assert!(
        status.get("jwksUri").is_none(),
        "its JWKS is not served: {status}"
    );
    assert!(status["activeKid"].is_string(), "its keys still sign");

    // Reconciled again with that status, as the watches deliver it: no new Events, no
    // write at all.
    let World { ctx, api, .. } = world(Some(config_map));
    reconcile(Arc::new(signing_key(status)), ctx.clone())
        .await
        .unwrap();
    drop(ctx);
    let mut api = api;
    assert!(api.next_request().await.is_none());
}

mod legacy_session_end {
    use super::auth_policy_status::*;
    use super::*;
    use authplane::operator::auth_policies::reconcile;
    use kube::runtime::controller::Action;
    use std::time::Duration;

    /// A policy whose legacy sessions end at `until`.
    fn ending(until: Timestamp) -> authplane::api::AuthPolicy {
        let mut policy = policy(Value::Null);
        policy.spec.legacy_session = Some(
            serde_json::from_value(json!({"cookie": "session_id", "until": until.to_string()}))
                .unwrap(),
        );
        policy
    }

    /// Reconciles `policy` at t0: the condition written, and when the controller looks again.
    async fn reconciled(policy: authplane::api::AuthPolicy) -> ((String, String), Action) {
        let (ctx, mut api, _leader) = context_for(policy.clone());
        let server = tokio::spawn(async move {
            let answer =
                serde_json::to_value(super::auth_policy_status::policy(Value::Null)).unwrap();
            let mut body = expect(
                &mut api,
                "PATCH",
                "/apis/authplane.io/v1alpha1/namespaces/shop/authpolicies/payments/status",
                200,
                answer,
            )
            .await;
            body["status"].take()
        });
        let action = within(reconcile(Arc::new(policy), ctx)).await.unwrap();
        let status = server.await.unwrap();
        let condition = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "LegacySessionsAccepted")
            .unwrap_or_else(|| panic!("no LegacySessionsAccepted in {status}"))
            .clone();
        (
            (
                condition["status"].as_str().unwrap().to_owned(),
                condition["reason"].as_str().unwrap().to_owned(),
            ),
            action,
        )
    }

    /// The status changes a week before the end and at it, with nothing else changing:
    /// the controller looks again exactly then, not at its next routine recheck.
    #[tokio::test]
    async fn the_status_is_refreshed_a_week_before_the_end_and_at_it() {
        let week = SignedDuration::from_hours(7 * 24);
        let (condition, action) =
            reconciled(ending(t0() + week + SignedDuration::from_secs(60))).await;
        assert_eq!(condition, ("True".to_owned(), "SunsetScheduled".to_owned()));
        assert_eq!(action, Action::requeue(Duration::from_secs(60)));

        let (condition, action) = reconciled(ending(t0() + SignedDuration::from_secs(30))).await;
        assert_eq!(condition, ("True".to_owned(), "SunsetSoon".to_owned()));
        assert_eq!(action, Action::requeue(Duration::from_secs(30)));

        let (condition, _) = reconciled(ending(t0())).await;
        assert_eq!(condition, ("False".to_owned(), "SunsetPassed".to_owned()));
    }
}

/// Attachment: the leader writes Envoy Gateway's SecurityPolicy and the ReferenceGrant
/// for a policy targeting an HTTPRoute served by Envoy Gateway, writes nothing the
/// apiserver holds already, never touches an object it does not own, and deletes its
/// own when the target leaves.
mod attachment {
    use super::auth_policy_status::context_attaching;
    use super::*;
    use authplane::api::{AuthPolicy, TargetKind};
    use authplane::attach::{AuthzService, Implementation, Protocol};
    use authplane::operator::attachments::{AttachConfig, Watched};
    use authplane::operator::auth_policies::{PolicyContext, reconcile};
    use kube::api::DynamicObject;

    const POLICY_STATUS: &str =
        "/apis/authplane.io/v1alpha1/namespaces/shop/authpolicies/payments/status";
    const SECURITY_POLICIES: &str =
        "/apis/gateway.envoyproxy.io/v1alpha1/namespaces/shop/securitypolicies";
    const GRANTS: &str =
        "/apis/gateway.networking.k8s.io/v1beta1/namespaces/authplane-system/referencegrants";
    const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/shop/events";

    /// The Event recorded on the policy: its type and reason.
    async fn event(api: &mut Handle) -> (String, String) {
        let event = expect(api, "POST", EVENTS, 201, Value::Null).await;
        assert_eq!(event["regarding"]["name"], "payments");
        (
            event["type"].as_str().unwrap().to_owned(),
            event["reason"].as_str().unwrap().to_owned(),
        )
    }

    fn policy(targets: Value) -> AuthPolicy {
        serde_json::from_value(json!({
            "apiVersion": "authplane.io/v1alpha1", "kind": "AuthPolicy",
            "metadata": {"name": "payments", "namespace": "shop", "generation": 2, "uid": "uid-1",
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"issuers": [{"signingKeyRef": {"name": "web", "namespace": "auth"}}],
                     "targetRefs": targets, "forwardClaims": {"sub": "X-Auth-Subject"}},
        }))
        .unwrap()
    }

    fn config() -> AttachConfig {
        AttachConfig {
            enabled: vec![Implementation::EnvoyGateway],
            service: AuthzService {
                namespace: "authplane-system".into(),
                name: "authplane".into(),
                port: 8080,
                grpc_port: 9191,
                protocol: Protocol::Http,
            },
            istio_mesh_config: None,
        }
    }

    /// A cluster with Envoy Gateway serving `shop/web`, the route `shop/payments` under
    /// it, and `security_policies` and `grants` listed.
    fn cluster(
        current: &AuthPolicy,
        security_policies: Vec<Value>,
        grants: Vec<Value>,
    ) -> (Arc<PolicyContext>, Handle, tokio::sync::watch::Sender<bool>) {
        cluster_with(current, security_policies, grants, Vec::new())
    }

    /// [`cluster`], with Traefik serving `shop/edge` and the route `shop/ui` under it,
    /// whose rule names the Middleware `authplane-payments`; `middlewares` listed.
    fn cluster_with(
        current: &AuthPolicy,
        security_policies: Vec<Value>,
        grants: Vec<Value>,
        middlewares: Vec<Value>,
    ) -> (Arc<PolicyContext>, Handle, tokio::sync::watch::Sender<bool>) {
        let mut config = config();
        config.enabled.push(Implementation::Traefik);
        let (ctx, api, leader) = context_attaching(current.clone(), Vec::new(), config);
        {
            let mut topology = ctx.attachments.topology.lock().unwrap();
            topology.apply_class("traefik", "traefik.io/gateway-controller");
            topology.apply_gateway("shop", "edge", "traefik");
            let ui = authplane::attach::Route::from_object(
                "shop",
                &json!({"spec": {"parentRefs": [{"name": "edge"}], "rules": [{"filters": [{"type": "ExtensionRef",
                    "extensionRef": {"group": "traefik.io", "kind": "Middleware", "name": "authplane-payments"}}]}]}}),
            );
            topology.apply_route(TargetKind::HttpRoute, "shop", "ui", ui);
            topology.apply_class("eg", "gateway.envoyproxy.io/gatewayclass-controller");
            topology.apply_gateway("shop", "web", "eg");
            let route = authplane::attach::Route::from_object(
                "shop",
                &json!({"spec": {"parentRefs": [{"name": "web"}]}}),
            );
            topology.apply_route(TargetKind::HttpRoute, "shop", "payments", route);
        }
        ctx.targets.observe(
            TargetKind::HttpRoute,
            Event::Apply(("shop".into(), "payments".into())),
        );
        for (watched, objects) in [
            (Watched::SecurityPolicies, security_policies),
            (Watched::ReferenceGrants, grants),
            (Watched::Middlewares, middlewares),
        ] {
            ctx.attachments.observe(watched, Event::Init);
            for object in objects {
                let object: DynamicObject = serde_json::from_value(object).unwrap();
                ctx.attachments.observe(watched, Event::InitApply(object));
            }
            ctx.attachments.observe(watched, Event::InitDone);
        }
        (ctx, api, leader)
    }

    /// What the apiserver answers for a created object: it, with a uid and the defaults
    /// Envoy Gateway's CRD adds.
    fn stored(mut object: Value, uid: &str) -> Value {
        object["metadata"]["uid"] = json!(uid);
        object["metadata"]["creationTimestamp"] = json!("2026-01-02T00:00:00Z");
        if object["kind"] == "SecurityPolicy" {
            object["spec"]["extAuth"]["http"]["backendRefs"][0]["group"] = json!("");
            object["spec"]["extAuth"]["http"]["backendRefs"][0]["kind"] = json!("Service");
            object["spec"]["extAuth"]["http"]["backendRefs"][0]["weight"] = json!(1);
        }
        object
    }

    fn accepted(status: &Value) -> (String, String, String) {
        let condition = &status["targets"][0]["conditions"][0];
        (
            condition["status"].as_str().unwrap().to_owned(),
            condition["reason"].as_str().unwrap().to_owned(),
            condition["message"].as_str().unwrap().to_owned(),
        )
    }

    async fn status_written(api: &mut Handle) -> Value {
        let answer = serde_json::to_value(policy(json!([]))).unwrap();
        let mut body = expect(api, "PATCH", POLICY_STATUS, 200, answer).await;
        body["status"].take()
    }

    #[tokio::test]
    async fn the_leader_creates_its_objects_once_and_deletes_them_when_the_target_leaves() {
        let current = policy(
            json!([{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "payments"}]),
        );
        let (ctx, mut api, _leader) = cluster(&current, Vec::new(), Vec::new());
        let server = tokio::spawn(async move {
            let grant = expect(&mut api, "POST", GRANTS, 201, Value::Null).await;
            let security_policy =
                expect(&mut api, "POST", SECURITY_POLICIES, 201, Value::Null).await;
            assert_eq!(event(&mut api).await, ("Normal".into(), "Accepted".into()));
            let status = status_written(&mut api).await;
            (api, grant, security_policy, status)
        });
        within(reconcile(Arc::new(current.clone()), ctx))
            .await
            .unwrap();
        let (_api, grant, security_policy, status) = server.await.unwrap();
        assert_eq!(
            grant["metadata"]["labels"]["authplane.io/grant-namespace"],
            "shop"
        );
        assert_eq!(
            grant["spec"]["from"],
            json!([{"group": "gateway.envoyproxy.io", "kind": "SecurityPolicy", "namespace": "shop"}])
        );
        assert_eq!(security_policy["metadata"]["name"], "authplane-payments");
        assert_eq!(
            security_policy["metadata"]["ownerReferences"][0]["uid"],
            "uid-1"
        );
        assert_eq!(
            security_policy["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "authplane"
        );
        assert_eq!(
            security_policy["spec"]["extAuth"]["http"]["path"],
            "/authz/shop/payments"
        );
        assert_eq!(security_policy["spec"]["extAuth"]["failOpen"], false);
        let (state, reason, _) = accepted(&status);
        assert_eq!((state.as_str(), reason.as_str()), ("True", "Accepted"));
        let ancestors = &status["targets"][0]["ancestors"];
        assert_eq!(
            (
                &ancestors[0]["namespace"],
                &ancestors[0]["name"],
                &ancestors[0]["controllerName"]
            ),
            (
                &json!("shop"),
                &json!("web"),
                &json!("gateway.envoyproxy.io/gatewayclass-controller")
            )
        );
        assert_eq!(
            (
                &ancestors[0]["conditions"][0]["type"],
                &ancestors[0]["conditions"][0]["status"],
                &ancestors[0]["conditions"][0]["reason"]
            ),
            (&json!("Accepted"), &json!("True"), &json!("Accepted"))
        );

        // Once the watches hold them (with the apiserver's defaults) and the status is
        // written (a while ago), a reconcile writes nothing: no object, no Event, and
        // the conditions (the target's and its Gateway's) keep their time.
        let mut current = current;
        let mut status = status;
        status["targets"][0]["conditions"][0]["lastTransitionTime"] = json!("2026-02-01T00:00:00Z");
        status["targets"][0]["ancestors"][0]["conditions"][0]["lastTransitionTime"] =
            json!("2026-02-01T00:00:00Z");
        current.status = serde_json::from_value(status).unwrap();
        let held_policy = stored(security_policy, "sp-uid");
        let held_grant = stored(grant, "grant-uid");
        let (ctx, mut api, _leader) = cluster(
            &current,
            vec![held_policy.clone()],
            vec![held_grant.clone()],
        );
        within(reconcile(Arc::new(current.clone()), ctx.clone()))
            .await
            .unwrap();
        drop(ctx);
        assert!(api.next_request().await.is_none(), "nothing to write");

        // A new term lists the Gateway API objects afresh. Until the lists are complete
        // the plan would see no class and no Gateway, and would delete the SecurityPolicy
        // that guards the route (requests unchecked, then recreated younger than any
        // foreign policy): held instead, status included.
        let (ctx, mut api, _leader) = cluster(
            &current,
            vec![held_policy.clone()],
            vec![held_grant.clone()],
        );
        ctx.attachments.topology.lock().unwrap().clear();
        within(reconcile(Arc::new(current.clone()), ctx.clone()))
            .await
            .unwrap();
        drop(ctx);
        assert!(
            api.next_request().await.is_none(),
            "nothing deleted or written while the Gateway API is not listed"
        );

        // The target leaves targetRefs: the SecurityPolicy and, no other policy of the
        // namespace needing it, the ReferenceGrant go, each by its uid.
        let mut left = policy(json!([{"kind": "Ingress", "name": "payments"}]));
        left.status = current.status.clone();
        let (ctx, mut api, _leader) = cluster(&left, vec![held_policy], vec![held_grant]);
        let server = tokio::spawn(async move {
            let deleted = expect(
                &mut api,
                "DELETE",
                &format!("{SECURITY_POLICIES}/authplane-payments"),
                200,
                json!({}),
            )
            .await;
            assert_eq!(deleted["preconditions"]["uid"], "sp-uid");
            let deleted = expect(
                &mut api,
                "DELETE",
                &format!("{GRANTS}/authplane-securitypolicies-shop"),
                200,
                json!({}),
            )
            .await;
            assert_eq!(deleted["preconditions"]["uid"], "grant-uid");
            status_written(&mut api).await;
            api
        });
        within(reconcile(Arc::new(left), ctx.clone()))
            .await
            .unwrap();
        drop(ctx);
        assert!(server.await.unwrap().next_request().await.is_none());
    }

    /// GEP-713: a route whose parents are an Envoy Gateway and a Gateway of a controller
    /// authplane does not know is attached through the first: the SecurityPolicy is
    /// written, each Gateway has its own condition in the status, and the target's
    /// names the one it is not attached through. Reconciled again with that status held,
    /// nothing is written: no object, no status, no Event.
    #[tokio::test]
    async fn each_gateway_of_a_route_has_its_condition_written_once() {
        let current = policy(json!([{"kind": "HTTPRoute", "name": "mixed"}]));
        let cluster = |current: &AuthPolicy, held: Vec<Value>, grants: Vec<Value>| {
            let (ctx, api, leader) = cluster(current, held, grants);
            {
                let mut topology = ctx.attachments.topology.lock().unwrap();
                topology.apply_class("legacy", "example.com/legacy-controller");
                topology.apply_gateway("shop", "legacy", "legacy");
                let mixed = authplane::attach::Route::from_object(
                    "shop",
                    &json!({"spec": {"parentRefs": [{"name": "web"}, {"name": "legacy"}]}}),
                );
                topology.apply_route(TargetKind::HttpRoute, "shop", "mixed", mixed);
            }
            ctx.targets.observe(
                TargetKind::HttpRoute,
                Event::Apply(("shop".into(), "mixed".into())),
            );
            (ctx, api, leader)
        };
        let (ctx, mut api, _leader) = cluster(&current, Vec::new(), Vec::new());
        let server = tokio::spawn(async move {
            let grant = expect(&mut api, "POST", GRANTS, 201, Value::Null).await;
            let security_policy =
                expect(&mut api, "POST", SECURITY_POLICIES, 201, Value::Null).await;
            assert_eq!(event(&mut api).await, ("Warning".into(), "Invalid".into()));
            let status = status_written(&mut api).await;
            (api, grant, security_policy, status)
        });
        within(reconcile(Arc::new(current.clone()), ctx))
            .await
            .unwrap();
        let (_api, grant, security_policy, status) = server.await.unwrap();
        assert_eq!(
            security_policy["spec"]["targetRefs"],
            json!([{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "mixed"}])
        );
        let (state, reason, message) = accepted(&status);
        assert_eq!((state.as_str(), reason.as_str()), ("False", "Invalid"));
        assert!(
            message.starts_with(
                "Gateway shop/legacy: no implementation authplane writes for: controllerName example.com/legacy-controller"
            ) && message.ends_with("; attached through Gateway shop/web"),
            "{message}"
        );
        let ancestors: Vec<(&str, &str, &str, &str)> = status["targets"][0]["ancestors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                let condition = &a["conditions"][0];
                (
                    a["name"].as_str().unwrap(),
                    a["controllerName"].as_str().unwrap(),
                    condition["status"].as_str().unwrap(),
                    condition["reason"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            ancestors,
            [
                (
                    "legacy",
                    "example.com/legacy-controller",
                    "False",
                    "Invalid"
                ),
                (
                    "web",
                    "gateway.envoyproxy.io/gatewayclass-controller",
                    "True",
                    "Accepted"
                )
            ]
        );
        assert_eq!(
            status["targets"][0]["ancestors"][1]["conditions"][0]["message"],
            "SecurityPolicy shop/authplane-payments sends its requests to authplane"
        );

        // The same verdicts held (written a while ago): nothing more is written.
        let mut current = current;
        let mut status = status;
        for pointer in [
            "/targets/0/conditions/0",
            "/targets/0/ancestors/0/conditions/0",
            "/targets/0/ancestors/1/conditions/0",
        ] {
            status.pointer_mut(pointer).unwrap()["lastTransitionTime"] =
                json!("2026-02-01T00:00:00Z");
        }
        current.status = serde_json::from_value(status).unwrap();
        let (ctx, mut api, _leader) = cluster(
            &current,
            vec![stored(security_policy, "sp-uid")],
            vec![stored(grant, "grant-uid")],
        );
        within(reconcile(Arc::new(current.clone()), ctx.clone()))
            .await
            .unwrap();
        drop(ctx);
        assert!(api.next_request().await.is_none(), "nothing to write");
    }

    /// `--attach-protocol grpc` on a cluster whose SecurityPolicy (created by POST, over
    /// HTTP) exists: its `http` fields belong to an Update, which a server-side apply
    /// never removes, and the CRD refuses `http` beside `grpc`. A merge patch (uid as
    /// precondition) removes them and sets gRPC; then the usual apply.
    #[tokio::test]
    async fn switching_to_grpc_replaces_the_http_fields_of_a_held_security_policy() {
        let current = policy(
            json!([{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "payments"}]),
        );
        // The objects as written over HTTP, and the status they gave.
        let (ctx, mut api, _leader) = cluster(&current, Vec::new(), Vec::new());
        let server = tokio::spawn(async move {
            let grant = expect(&mut api, "POST", GRANTS, 201, Value::Null).await;
            let security_policy =
                expect(&mut api, "POST", SECURITY_POLICIES, 201, Value::Null).await;
            event(&mut api).await;
            (grant, security_policy, status_written(&mut api).await)
        });
        within(reconcile(Arc::new(current.clone()), ctx))
            .await
            .unwrap();
        let (grant, security_policy, mut status) = server.await.unwrap();
        assert!(security_policy["spec"]["extAuth"]["http"].is_object());
        let mut current = current;
        status["targets"][0]["conditions"][0]["lastTransitionTime"] = json!("2026-02-01T00:00:00Z");
        current.status = serde_json::from_value(status).unwrap();

        let mut config = config();
        config.service.protocol = Protocol::Grpc;
        let (ctx, mut api, _leader) = context_attaching(current.clone(), Vec::new(), config);
        {
            let mut topology = ctx.attachments.topology.lock().unwrap();
            topology.apply_class("eg", "gateway.envoyproxy.io/gatewayclass-controller");
            topology.apply_gateway("shop", "web", "eg");
            let route = authplane::attach::Route::from_object(
                "shop",
                &json!({"spec": {"parentRefs": [{"name": "web"}]}}),
            );
            topology.apply_route(TargetKind::HttpRoute, "shop", "payments", route);
        }
        ctx.targets.observe(
            TargetKind::HttpRoute,
            Event::Apply(("shop".into(), "payments".into())),
        );
        for (watched, object) in [
            (Watched::SecurityPolicies, stored(security_policy, "sp-uid")),
            (Watched::ReferenceGrants, stored(grant, "grant-uid")),
        ] {
            ctx.attachments.observe(watched, Event::Init);
            let object: DynamicObject = serde_json::from_value(object).unwrap();
            ctx.attachments.observe(watched, Event::InitApply(object));
            ctx.attachments.observe(watched, Event::InitDone);
        }
        ctx.attachments.observe(Watched::Middlewares, Event::Init);
        ctx.attachments
            .observe(Watched::Middlewares, Event::InitDone);
        let path = format!("{SECURITY_POLICIES}/authplane-payments");
        let server = tokio::spawn(async move {
            let merge = mock_api::take(&mut api, "PATCH", &path).await;
            assert_eq!(
                merge.content_type.as_deref(),
                Some("application/merge-patch+json")
            );
            let patch = merge.body.clone();
            merge.answer(200, &json!({}));
            let applied = expect(&mut api, "PATCH", &path, 200, json!({})).await;
            (api, patch, applied)
        });
        within(reconcile(Arc::new(current), ctx.clone()))
            .await
            .unwrap();
        drop(ctx);
        let (api, patch, applied) = server.await.unwrap();
        assert_eq!(patch["metadata"], json!({"uid": "sp-uid"}));
        let ext_auth = &patch["spec"]["extAuth"];
        assert_eq!(ext_auth["http"], Value::Null);
        assert!(
            ext_auth.as_object().unwrap().contains_key("http"),
            "{ext_auth}"
        );
        assert_eq!(
            ext_auth["contextExtensions"],
            json!([{"name": "authplane.io/policy", "type": "Value", "value": "shop/payments"}])
        );
        assert_eq!(ext_auth["grpc"]["backendRefs"][0]["port"], 9191);
        assert_eq!(applied["spec"]["extAuth"], {
            let mut grpc = ext_auth.clone();
            grpc.as_object_mut().unwrap().remove("http");
            grpc
        });
        let mut api = api;
        assert!(api.next_request().await.is_none(), "nothing more");
    }

    #[tokio::test]
    async fn an_object_of_that_name_that_is_not_ours_is_never_touched() {
        let current = policy(json!([{"kind": "HTTPRoute", "name": "payments"}]));
        // A hand-written SecurityPolicy of the same name, and a ReferenceGrant of ours.
        let theirs = json!({
            "apiVersion": "gateway.envoyproxy.io/v1alpha1", "kind": "SecurityPolicy",
            "metadata": {"name": "authplane-payments", "namespace": "shop", "uid": "theirs",
                         "creationTimestamp": "2026-01-02T00:00:00Z"},
            "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "other"}]},
        });
        let grant = json!({
            "apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
            "metadata": {"name": "authplane-securitypolicies-shop", "namespace": "authplane-system", "uid": "g",
                         "labels": {"app.kubernetes.io/managed-by": "authplane", "authplane.io/instance": "default",
                                    "authplane.io/grant-namespace": "shop"}},
            "spec": {"from": [{"group": "gateway.envoyproxy.io", "kind": "SecurityPolicy", "namespace": "shop"}],
                     "to": [{"group": "", "kind": "Service", "name": "authplane"}]},
        });
        let (ctx, mut api, _leader) = cluster(&current, vec![theirs.clone()], vec![grant.clone()]);
        let server = tokio::spawn(async move {
            assert_eq!(
                event(&mut api).await,
                ("Warning".into(), "Conflicted".into())
            );
            let status = status_written(&mut api).await;
            (api, status)
        });
        within(reconcile(Arc::new(current), ctx.clone()))
            .await
            .unwrap();
        drop(ctx);
        let (mut api, status) = server.await.unwrap();
        let (state, reason, message) = accepted(&status);
        assert_eq!((state.as_str(), reason.as_str()), ("False", "Conflicted"));
        assert!(message.contains("not this AuthPolicy's"), "{message}");
        assert!(api.next_request().await.is_none(), "nothing written to it");

        // Nor deleted when the policy no longer wants it.
        let left = policy(json!([]));
        let (ctx, mut api, _leader) = cluster(&left, vec![theirs], vec![]);
        let server = tokio::spawn(async move {
            status_written(&mut api).await;
            api
        });
        within(reconcile(Arc::new(left), ctx.clone()))
            .await
            .unwrap();
        drop(ctx);
        assert!(server.await.unwrap().next_request().await.is_none());
    }

    #[tokio::test]
    async fn an_older_foreign_security_policy_with_ext_auth_wins_the_target() {
        let current = policy(json!([{"kind": "HTTPRoute", "name": "payments"}]));
        let older = json!({
            "apiVersion": "gateway.envoyproxy.io/v1alpha1", "kind": "SecurityPolicy",
            "metadata": {"name": "hand-written", "namespace": "shop", "uid": "x",
                         "creationTimestamp": "2025-06-01T00:00:00Z"},
            "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "payments"}],
                     "extAuth": {"http": {"backendRefs": [{"name": "other", "port": 80}]}}},
        });
        let (ctx, mut api, _leader) = cluster(&current, vec![older], vec![]);
        let server = tokio::spawn(async move {
            event(&mut api).await;
            let status = status_written(&mut api).await;
            (api, status)
        });
        within(reconcile(Arc::new(current), ctx.clone()))
            .await
            .unwrap();
        drop(ctx);
        let (mut api, status) = server.await.unwrap();
        let (_, reason, message) = accepted(&status);
        assert_eq!(reason, "Conflicted");
        assert!(
            message.contains("SecurityPolicy shop/hand-written"),
            "{message}"
        );
        assert!(api.next_request().await.is_none());
    }

    /// A SecurityPolicy that a tenant labelled as authplane's, but that no AuthPolicy
    /// controls under its name, keeps no ReferenceGrant alive once no policy needs it.
    #[tokio::test]
    async fn a_forged_label_keeps_no_reference_grant() {
        let current = policy(json!([{"kind": "HTTPRoute", "name": "payments"}]));
        let writer = authplane::attach::Writer {
            instance: "default".into(),
            default_instance: true,
        };
        let service = config().service;
        let ours = stored(
            authplane::attach::security_policy(
                &current,
                &[&current.spec.target_refs[0]],
                &service,
                &writer,
            ),
            "sp-uid",
        );
        let grant = stored(
            authplane::attach::reference_grant("shop", &config().enabled, &service, &writer),
            "grant-uid",
        );
        let forged = json!({
            "apiVersion": "gateway.envoyproxy.io/v1alpha1", "kind": "SecurityPolicy",
            "metadata": {"name": "decoy", "namespace": "shop", "uid": "decoy",
                         "creationTimestamp": "2026-01-02T00:00:00Z",
                         "labels": {"app.kubernetes.io/managed-by": "authplane", "authplane.io/instance": "default"}},
            "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "other"}]},
        });
        let left = policy(json!([{"kind": "Ingress", "name": "payments"}]));
        let (ctx, mut api, _leader) = cluster(&left, vec![ours, forged], vec![grant]);
        let server = tokio::spawn(async move {
            expect(
                &mut api,
                "DELETE",
                &format!("{SECURITY_POLICIES}/authplane-payments"),
                200,
                json!({}),
            )
            .await;
            let deleted = expect(
                &mut api,
                "DELETE",
                &format!("{GRANTS}/authplane-securitypolicies-shop"),
                200,
                json!({}),
            )
            .await;
            assert_eq!(deleted["preconditions"]["uid"], "grant-uid");
            status_written(&mut api).await;
            api
        });
        within(reconcile(Arc::new(left), ctx.clone()))
            .await
            .unwrap();
        drop(ctx);
        assert!(server.await.unwrap().next_request().await.is_none());
    }

    /// Envoy Gateway applies one SecurityPolicy per target, the oldest by its own
    /// creationTimestamp, and refuses the others whole: an older one that configures only
    /// CORS (deprecated `targetRef`) would leave ours unapplied while reported Accepted.
    #[tokio::test]
    async fn an_older_foreign_security_policy_of_any_kind_wins_the_target() {
        let current = policy(json!([{"kind": "HTTPRoute", "name": "payments"}]));
        let older = json!({
            "apiVersion": "gateway.envoyproxy.io/v1alpha1", "kind": "SecurityPolicy",
            "metadata": {"name": "cors-only", "namespace": "shop", "uid": "x",
                         "creationTimestamp": "2025-06-01T00:00:00Z"},
            "spec": {"targetRef": {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "payments"},
                     "cors": {"allowOrigins": ["https://shop.example"]}},
        });
        let (ctx, mut api, _leader) = cluster(&current, vec![older], vec![]);
        let server = tokio::spawn(async move {
            event(&mut api).await;
            let status = status_written(&mut api).await;
            (api, status)
        });
        within(reconcile(Arc::new(current), ctx.clone()))
            .await
            .unwrap();
        drop(ctx);
        let (mut api, status) = server.await.unwrap();
        let (_, reason, message) = accepted(&status);
        assert_eq!(reason, "Conflicted");
        assert!(
            message.contains("SecurityPolicy shop/cors-only"),
            "{message}"
        );
        assert!(
            api.next_request().await.is_none(),
            "no SecurityPolicy written"
        );
    }

    /// The AuthPolicy is older than the foreign SecurityPolicy, but the SecurityPolicy
    /// authplane would write now is younger: Envoy Gateway would apply the foreign one.
    #[tokio::test]
    async fn a_foreign_security_policy_older_than_ours_wins_even_against_an_older_auth_policy() {
        let current = policy(json!([{"kind": "HTTPRoute", "name": "payments"}]));
        let theirs = json!({
            "apiVersion": "gateway.envoyproxy.io/v1alpha1", "kind": "SecurityPolicy",
            "metadata": {"name": "hand-written", "namespace": "shop", "uid": "x",
                         "creationTimestamp": "2026-03-01T00:00:00Z"},
            "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "payments"}],
                     "extAuth": {"failOpen": true, "http": {"backendRefs": [{"name": "other", "port": 80}]}}},
        });
        let (ctx, mut api, _leader) = cluster(&current, vec![theirs.clone()], vec![]);
        let server = tokio::spawn(async move {
            event(&mut api).await;
            let status = status_written(&mut api).await;
            (api, status)
        });
        within(reconcile(Arc::new(current.clone()), ctx.clone()))
            .await
            .unwrap();
        drop(ctx);
        let (mut api, status) = server.await.unwrap();
        let (_, reason, message) = accepted(&status);
        assert_eq!(reason, "Conflicted");
        assert!(
            message.contains("SecurityPolicy shop/hand-written"),
            "{message}"
        );
        assert!(
            api.next_request().await.is_none(),
            "no SecurityPolicy written"
        );

        // Ours, held since before theirs, keeps the target.
        let ours = stored(
            authplane::attach::security_policy(
                &current,
                &[&current.spec.target_refs[0]],
                &config().service,
                &authplane::attach::Writer {
                    instance: "default".into(),
                    default_instance: true,
                },
            ),
            "sp-uid",
        );
        let mut ours = ours;
        ours["metadata"]["creationTimestamp"] = json!("2026-02-01T00:00:00Z");
        let (ctx, mut api, _leader) = cluster(&current, vec![theirs, ours], vec![]);
        let server = tokio::spawn(async move {
            let _grant = expect(&mut api, "POST", GRANTS, 201, Value::Null).await;
            event(&mut api).await;
            let status = status_written(&mut api).await;
            (api, status)
        });
        within(reconcile(Arc::new(current), ctx.clone()))
            .await
            .unwrap();
        drop(ctx);
        let (_api, status) = server.await.unwrap();
        let (_, reason, message) = accepted(&status);
        assert_eq!(reason, "Accepted", "{message}");
    }

    /// Traefik: the Middleware the route names is created, with the apiserver's
    /// acceptance reported; when the route leaves targetRefs it is deleted by its uid.
    #[tokio::test]
    async fn traefik_gets_its_middleware_and_loses_it_with_the_target() {
        const MIDDLEWARES: &str = "/apis/traefik.io/v1alpha1/namespaces/shop/middlewares";
        let current = policy(json!([{"kind": "HTTPRoute", "name": "ui"}]));
        let (ctx, mut api, _leader) = cluster_with(&current, Vec::new(), Vec::new(), Vec::new());
        let server = tokio::spawn(async move {
            let middleware = expect(&mut api, "POST", MIDDLEWARES, 201, Value::Null).await;
            assert_eq!(event(&mut api).await, ("Normal".into(), "Accepted".into()));
            let status = status_written(&mut api).await;
            (api, middleware, status)
        });
        within(reconcile(Arc::new(current.clone()), ctx.clone()))
            .await
            .unwrap();
        drop(ctx);
        let (mut api, middleware, status) = server.await.unwrap();
        assert!(
            api.next_request().await.is_none(),
            "no SecurityPolicy, no ReferenceGrant"
        );
        assert_eq!(middleware["metadata"]["name"], "authplane-payments");
        assert_eq!(middleware["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        assert_eq!(
            middleware["spec"]["forwardAuth"]["address"],
            "http://authplane.authplane-system.svc:8080/authz/shop/payments"
        );
        let (state, reason, message) = accepted(&status);
        assert_eq!(
            (state.as_str(), reason.as_str()),
            ("True", "Accepted"),
            "{message}"
        );

        let mut left = policy(json!([]));
        left.status = serde_json::from_value(status).unwrap();
        let (ctx, mut api, _leader) = cluster_with(
            &left,
            Vec::new(),
            Vec::new(),
            vec![stored(middleware, "mw-uid")],
        );
        let server = tokio::spawn(async move {
            let deleted = expect(
                &mut api,
                "DELETE",
                &format!("{MIDDLEWARES}/authplane-payments"),
                200,
                json!({}),
            )
            .await;
            assert_eq!(deleted["preconditions"]["uid"], "mw-uid");
            status_written(&mut api).await;
            api
        });
        within(reconcile(Arc::new(left), ctx.clone()))
            .await
            .unwrap();
        drop(ctx);
        assert!(server.await.unwrap().next_request().await.is_none());
    }

    const AUTHORIZATION_POLICIES: &str =
        "/apis/security.istio.io/v1/namespaces/shop/authorizationpolicies";

    /// A cluster with Istio serving the Gateway `shop/mesh`, `authorization_policies`
    /// listed, and Istio's mesh config (`istio-system/istio`): not read (`None`), read and
    /// absent (`Some(None)`), or holding `mesh`.
    fn istio_cluster(
        current: &AuthPolicy,
        authorization_policies: Vec<Value>,
        mesh: Option<Option<&str>>,
    ) -> (Arc<PolicyContext>, Handle, tokio::sync::watch::Sender<bool>) {
        let mut config = config();
        config.enabled = vec![Implementation::Istio];
        config.istio_mesh_config = mesh.is_some().then(|| authplane::api::ObjectKey {
            namespace: "istio-system".into(),
            name: "istio".into(),
        });
        let (ctx, api, leader) = context_attaching(current.clone(), Vec::new(), config);
        {
            let mut topology = ctx.attachments.topology.lock().unwrap();
            topology.apply_class("istio", "istio.io/gateway-controller");
            topology.apply_gateway("shop", "mesh", "istio");
        }
        let mesh_config = mesh.flatten().map(|mesh| {
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "istio", "namespace": "istio-system", "uid": "cm"},
                   "data": {"mesh": mesh}})
        });
        for (watched, objects) in [
            (Watched::AuthorizationPolicies, authorization_policies),
            (Watched::MeshConfig, mesh_config.into_iter().collect()),
        ] {
            ctx.attachments.observe(watched, Event::Init);
            for object in objects {
                let object: DynamicObject = serde_json::from_value(object).unwrap();
                ctx.attachments.observe(watched, Event::InitApply(object));
            }
            ctx.attachments.observe(watched, Event::InitDone);
        }
        (ctx, api, leader)
    }

    const PROVIDER: &str = r#"
extensionProviders:
- name: authplane.shop.payments
  envoyExtAuthzHttp:
    service: authplane.authplane-system.svc.cluster.local
    port: 8080
    pathPrefix: /authz/shop/payments
    includeRequestHeadersInCheck: [authorization, x-forwarded-for, x-real-ip]
    headersToUpstreamOnAllow: [x-auth-subject, x-authplane-audit]
    headersToDownstreamOnDeny: [www-authenticate, x-authplane-reason]
"#;

    /// Istio: the CUSTOM AuthorizationPolicy on the Gateway is created; the target is
    /// accepted when the mesh config holds the policy's provider, and Invalid, saying
    /// what to add, when it does not.
    #[tokio::test]
    async fn istio_gets_its_authorization_policy_and_the_mesh_config_is_checked() {
        let current = policy(json!([{"kind": "Gateway", "name": "mesh"}]));
        for (mesh, state, reason, said) in [
            (
                PROVIDER,
                "True",
                "Accepted",
                "extension provider authplane.shop.payments",
            ),
            (
                "extensionProviders: []",
                "False",
                "Invalid",
                "no extension provider authplane.shop.payments",
            ),
            (
                &PROVIDER.replace("/authz/shop/payments", "/authz/shop/other") as &str,
                "False",
                "Invalid",
                "pathPrefix is",
            ),
        ]
        .map(|(mesh, state, reason, said)| (Some(mesh), state, reason, said))
        .into_iter()
        .chain([(
            None,
            "False",
            "Invalid",
            "ConfigMap istio-system/istio (Istio's mesh config) does not exist",
        )]) {
            let (ctx, mut api, _leader) = istio_cluster(&current, Vec::new(), Some(mesh));
            let server = tokio::spawn(async move {
                let created =
                    expect(&mut api, "POST", AUTHORIZATION_POLICIES, 201, Value::Null).await;
                event(&mut api).await;
                let status = status_written(&mut api).await;
                (api, created, status)
            });
            within(reconcile(Arc::new(current.clone()), ctx.clone()))
                .await
                .unwrap();
            drop(ctx);
            let (mut api, created, status) = server.await.unwrap();
            assert!(api.next_request().await.is_none());
            assert_eq!(created["metadata"]["name"], "authplane-payments");
            assert_eq!(created["metadata"]["ownerReferences"][0]["uid"], "uid-1");
            assert_eq!(
                created["spec"],
                json!({"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "mesh"}],
                       "action": "CUSTOM", "provider": {"name": "authplane.shop.payments"}, "rules": [{}]})
            );
            let (got_state, got_reason, message) = accepted(&status);
            assert_eq!(
                (got_state.as_str(), got_reason.as_str()),
                (state, reason),
                "{message}"
            );
            assert!(message.contains(said), "{message}");
        }
    }

    /// Without the mesh config read, the target is accepted and the message says the
    /// provider was not checked.
    #[tokio::test]
    async fn an_unread_mesh_config_is_said_not_checked() {
        let current = policy(json!([{"kind": "Gateway", "name": "mesh"}]));
        let (ctx, mut api, _leader) = istio_cluster(&current, Vec::new(), None);
        let server = tokio::spawn(async move {
            expect(&mut api, "POST", AUTHORIZATION_POLICIES, 201, Value::Null).await;
            event(&mut api).await;
            status_written(&mut api).await
        });
        within(reconcile(Arc::new(current), ctx.clone()))
            .await
            .unwrap();
        let (state, _, message) = accepted(&server.await.unwrap());
        assert_eq!(state, "True");
        assert!(message.contains("not checked"), "{message}");
    }

    #[tokio::test]
    async fn an_older_foreign_custom_authorization_policy_wins_the_gateway() {
        let current = policy(json!([{"kind": "Gateway", "name": "mesh"}]));
        let older = json!({
            "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "hand-written", "namespace": "shop", "uid": "x",
                         "creationTimestamp": "2025-06-01T00:00:00Z"},
            "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "mesh"}],
                     "action": "CUSTOM", "provider": {"name": "opa"}, "rules": [{}]},
        });
        let (ctx, mut api, _leader) = istio_cluster(&current, vec![older], Some(Some(PROVIDER)));
        let server = tokio::spawn(async move {
            event(&mut api).await;
            let status = status_written(&mut api).await;
            (api, status)
        });
        within(reconcile(Arc::new(current), ctx.clone()))
            .await
            .unwrap();
        drop(ctx);
        let (mut api, status) = server.await.unwrap();
        let (_, reason, message) = accepted(&status);
        assert_eq!(reason, "Conflicted");
        assert!(
            message.contains("AuthorizationPolicy shop/hand-written"),
            "{message}"
        );
        assert!(api.next_request().await.is_none(), "nothing written");
    }

    const GATEWAY_EXTENSIONS: &str =
        "/apis/gateway.kgateway.dev/v1alpha1/namespaces/shop/gatewayextensions";
    const TRAFFIC_POLICIES: &str =
        "/apis/gateway.kgateway.dev/v1alpha1/namespaces/shop/trafficpolicies";

    /// A cluster with kgateway serving `shop/kgw` and the route `shop/store` under it,
    /// asked over gRPC; `extensions`, `traffic_policies` and `grants` listed.
    fn kgateway_cluster(
        current: &AuthPolicy,
        extensions: Vec<Value>,
        traffic_policies: Vec<Value>,
        grants: Vec<Value>,
    ) -> (Arc<PolicyContext>, Handle, tokio::sync::watch::Sender<bool>) {
        kgateway_cluster_listing(
            current,
            vec![
                (Watched::GatewayExtensions, extensions),
                (Watched::TrafficPolicies, traffic_policies),
                (Watched::ReferenceGrants, grants),
            ],
        )
    }

    /// [`kgateway_cluster`], with only the watches of `listed` listed.
    fn kgateway_cluster_listing(
        current: &AuthPolicy,
        listed: Vec<(Watched, Vec<Value>)>,
    ) -> (Arc<PolicyContext>, Handle, tokio::sync::watch::Sender<bool>) {
        kgateway_cluster_with(current, vec![Implementation::Kgateway], listed)
    }

    /// [`kgateway_cluster_listing`], `enabled` written for, and Envoy Gateway serving
    /// `shop/web` and the route `shop/payments` under it.
    fn kgateway_cluster_with(
        current: &AuthPolicy,
        enabled: Vec<Implementation>,
        listed: Vec<(Watched, Vec<Value>)>,
    ) -> (Arc<PolicyContext>, Handle, tokio::sync::watch::Sender<bool>) {
        let mut config = config();
        config.enabled = enabled;
        config.service.protocol = Protocol::Grpc;
        let (ctx, api, leader) = context_attaching(current.clone(), Vec::new(), config);
        {
            let mut topology = ctx.attachments.topology.lock().unwrap();
            topology.apply_class("kgateway", "kgateway.dev/kgateway");
            topology.apply_gateway("shop", "kgw", "kgateway");
            let store = authplane::attach::Route::from_object(
                "shop",
                &json!({"spec": {"parentRefs": [{"name": "kgw"}]}}),
            );
            topology.apply_route(TargetKind::HttpRoute, "shop", "store", store);
            topology.apply_class("eg", "gateway.envoyproxy.io/gatewayclass-controller");
            topology.apply_gateway("shop", "web", "eg");
            let payments = authplane::attach::Route::from_object(
                "shop",
                &json!({"spec": {"parentRefs": [{"name": "web"}]}}),
            );
            topology.apply_route(TargetKind::HttpRoute, "shop", "payments", payments);
        }
        for route in ["store", "payments"] {
            ctx.targets.observe(
                TargetKind::HttpRoute,
                Event::Apply(("shop".into(), route.into())),
            );
        }
        for (watched, objects) in listed {
            ctx.attachments.observe(watched, Event::Init);
            for object in objects {
                let object: DynamicObject = serde_json::from_value(object).unwrap();
                ctx.attachments.observe(watched, Event::InitApply(object));
            }
            ctx.attachments.observe(watched, Event::InitDone);
        }
        (ctx, api, leader)
    }

    /// kgateway: the ReferenceGrant, then the GatewayExtension, then the TrafficPolicy
    /// that uses it are created; held, nothing is written; when the target leaves, the
    /// TrafficPolicy, the GatewayExtension and the ReferenceGrant go, each by its uid.
    #[tokio::test]
    async fn kgateway_gets_an_extension_and_a_traffic_policy_and_loses_them_with_the_target() {
        let current = policy(json!([{"kind": "HTTPRoute", "name": "store"}]));
        let (ctx, mut api, _leader) =
            kgateway_cluster(&current, Vec::new(), Vec::new(), Vec::new());
        let server = tokio::spawn(async move {
            let grant = expect(&mut api, "POST", GRANTS, 201, Value::Null).await;
            let extension = expect(&mut api, "POST", GATEWAY_EXTENSIONS, 201, Value::Null).await;
            let traffic_policy = expect(&mut api, "POST", TRAFFIC_POLICIES, 201, Value::Null).await;
            assert_eq!(event(&mut api).await, ("Normal".into(), "Accepted".into()));
            let status = status_written(&mut api).await;
            (api, grant, extension, traffic_policy, status)
        });
        within(reconcile(Arc::new(current.clone()), ctx.clone()))
            .await
            .unwrap();
        drop(ctx);
        let (mut api, grant, extension, traffic_policy, status) = server.await.unwrap();
        assert!(api.next_request().await.is_none());
        assert_eq!(
            grant["spec"]["from"],
            json!([{"group": "gateway.kgateway.dev", "kind": "GatewayExtension", "namespace": "shop"}])
        );
        assert_eq!(extension["metadata"]["name"], "authplane-payments");
        assert_eq!(extension["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        assert_eq!(
            extension["spec"]["extAuth"]["grpcService"]["backendRef"],
            json!({"name": "authplane", "namespace": "authplane-system", "port": 9191})
        );
        assert_eq!(extension["spec"]["extAuth"]["failOpen"], false);
        assert_eq!(traffic_policy["metadata"]["name"], "authplane-payments");
        assert_eq!(
            traffic_policy["spec"],
            json!({"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "store"}],
                   "extAuth": {"extensionRef": {"name": "authplane-payments"},
                               "contextExtensions": {"authplane.io/policy": "shop/payments"}}})
        );
        let (state, reason, message) = accepted(&status);
        assert_eq!(
            (state.as_str(), reason.as_str()),
            ("True", "Accepted"),
            "{message}"
        );
        assert!(
            message.contains("TrafficPolicy shop/authplane-payments"),
            "{message}"
        );

        // Held as written (with the apiserver's defaults), status written a while ago:
        // nothing to write.
        let mut current = current;
        let mut status = status;
        status["targets"][0]["conditions"][0]["lastTransitionTime"] = json!("2026-02-01T00:00:00Z");
        current.status = serde_json::from_value(status).unwrap();
        let mut held_extension = stored(extension, "ge-uid");
        held_extension["spec"]["extAuth"]["grpcService"]["backendRef"]["group"] = json!("");
        held_extension["spec"]["extAuth"]["grpcService"]["backendRef"]["kind"] = json!("Service");
        let held_traffic_policy = stored(traffic_policy, "tp-uid");
        let held_grant = stored(grant, "grant-uid");
        let (ctx, mut api, _leader) = kgateway_cluster(
            &current,
            vec![held_extension.clone()],
            vec![held_traffic_policy.clone()],
            vec![held_grant.clone()],
        );
        within(reconcile(Arc::new(current.clone()), ctx.clone()))
            .await
            .unwrap();
        drop(ctx);
        assert!(api.next_request().await.is_none(), "nothing to write");

        let mut left = policy(json!([{"kind": "Ingress", "name": "payments"}]));
        left.status = current.status.clone();
        let (ctx, mut api, _leader) = kgateway_cluster(
            &left,
            vec![held_extension],
            vec![held_traffic_policy],
            vec![held_grant],
        );
        let server = tokio::spawn(async move {
            for (path, uid) in [
                (format!("{TRAFFIC_POLICIES}/authplane-payments"), "tp-uid"),
                (format!("{GATEWAY_EXTENSIONS}/authplane-payments"), "ge-uid"),
                (
                    format!("{GRANTS}/authplane-securitypolicies-shop"),
                    "grant-uid",
                ),
            ] {
                let deleted = expect(&mut api, "DELETE", &path, 200, json!({})).await;
                assert_eq!(deleted["preconditions"]["uid"], uid);
            }
            status_written(&mut api).await;
            api
        });
        within(reconcile(Arc::new(left), ctx.clone()))
            .await
            .unwrap();
        drop(ctx);
        assert!(server.await.unwrap().next_request().await.is_none());
    }

    /// A TrafficPolicy not ours that attaches external auth to the route first (or
    /// disables it there) wins it: kgateway enforces the oldest `extAuth`. One with other
    /// settings only merges with ours and is no conflict.
    #[tokio::test]
    async fn an_older_foreign_traffic_policy_with_ext_auth_wins_the_route() {
        let current = policy(json!([{"kind": "HTTPRoute", "name": "store"}]));
        let foreign = |ext_auth: Option<Value>| {
            let mut object = json!({
                "apiVersion": "gateway.kgateway.dev/v1alpha1", "kind": "TrafficPolicy",
                "metadata": {"name": "hand-written", "namespace": "shop", "uid": "x",
                             "creationTimestamp": "2025-06-01T00:00:00Z"},
                "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "store"}],
                         "timeouts": {"request": "10s"}},
            });
            if let Some(ext_auth) = ext_auth {
                object["spec"]["extAuth"] = ext_auth;
            }
            object
        };
        for ext_auth in [
            json!({"disable": {}}),
            json!({"extensionRef": {"name": "opa"}}),
        ] {
            let (ctx, mut api, _leader) = kgateway_cluster(
                &current,
                Vec::new(),
                vec![foreign(Some(ext_auth))],
                Vec::new(),
            );
            let server = tokio::spawn(async move {
                event(&mut api).await;
                let status = status_written(&mut api).await;
                (api, status)
            });
            within(reconcile(Arc::new(current.clone()), ctx.clone()))
                .await
                .unwrap();
            drop(ctx);
            let (mut api, status) = server.await.unwrap();
            let (_, reason, message) = accepted(&status);
            assert_eq!(reason, "Conflicted");
            assert!(
                message.contains("TrafficPolicy shop/hand-written"),
                "{message}"
            );
            assert!(api.next_request().await.is_none(), "nothing written");
        }

        let (ctx, mut api, _leader) =
            kgateway_cluster(&current, Vec::new(), vec![foreign(None)], Vec::new());
        let server = tokio::spawn(async move {
            expect(&mut api, "POST", GRANTS, 201, Value::Null).await;
            expect(&mut api, "POST", GATEWAY_EXTENSIONS, 201, Value::Null).await;
            expect(&mut api, "POST", TRAFFIC_POLICIES, 201, Value::Null).await;
            event(&mut api).await;
            status_written(&mut api).await
        });
        within(reconcile(Arc::new(current), ctx.clone()))
            .await
            .unwrap();
        let (state, ..) = accepted(&server.await.unwrap());
        assert_eq!(state, "True");
    }

    /// Until kgateway's kinds are listed (their CRDs may not be installed), nothing is
    /// written and the target is not reported attached: fail closed, and look again.
    #[tokio::test]
    async fn kgateway_targets_wait_for_its_kinds_to_be_listed() {
        let current = policy(json!([{"kind": "HTTPRoute", "name": "store"}]));
        let (ctx, mut api, _leader) = kgateway_cluster_listing(
            &current,
            vec![
                (Watched::GatewayExtensions, Vec::new()),
                (Watched::ReferenceGrants, Vec::new()),
            ],
        );
        let server = tokio::spawn(async move {
            assert_eq!(event(&mut api).await, ("Warning".into(), "Invalid".into()));
            let status = status_written(&mut api).await;
            (api, status)
        });
        within(reconcile(Arc::new(current), ctx.clone()))
            .await
            .unwrap();
        drop(ctx);
        let (mut api, status) = server.await.unwrap();
        assert!(
            api.next_request().await.is_none(),
            "no kgateway object, no ReferenceGrant"
        );
        let (state, reason, message) = accepted(&status);
        assert_eq!((state.as_str(), reason.as_str()), ("False", "Invalid"));
        assert_eq!(
            message,
            "Gateway shop/kgw: the GatewayExtensions, TrafficPolicies and ReferenceGrants are not listed yet"
        );
    }

    /// Envoy Gateway and kgateway enabled, one policy on a route of each: the namespace's
    /// one ReferenceGrant is created once, admitting both kinds (a second create in the
    /// same reconcile would find the name taken and read it as not authplane's).
    #[tokio::test]
    async fn one_reference_grant_serves_envoy_gateway_and_kgateway() {
        let current = policy(json!([{"kind": "HTTPRoute", "name": "payments"},
                                    {"kind": "HTTPRoute", "name": "store"}]));
        let (ctx, mut api, _leader) = kgateway_cluster_with(
            &current,
            vec![Implementation::EnvoyGateway, Implementation::Kgateway],
            [
                Watched::SecurityPolicies,
                Watched::GatewayExtensions,
                Watched::TrafficPolicies,
                Watched::ReferenceGrants,
            ]
            .into_iter()
            .map(|watched| (watched, Vec::new()))
            .collect(),
        );
        let server = tokio::spawn(async move {
            let grant = expect(&mut api, "POST", GRANTS, 201, Value::Null).await;
            expect(&mut api, "POST", SECURITY_POLICIES, 201, Value::Null).await;
            expect(&mut api, "POST", GATEWAY_EXTENSIONS, 201, Value::Null).await;
            expect(&mut api, "POST", TRAFFIC_POLICIES, 201, Value::Null).await;
            // Two Accepted Events: the second joins the first's series (a PATCH).
            let first = expect(&mut api, "POST", EVENTS, 201, Value::Null).await;
            assert_eq!(first["reason"], "Accepted");
            let (request, respond) = within(api.next_request()).await.unwrap();
            assert_eq!(request.method().as_str(), "PATCH");
            assert!(
                request.uri().path().starts_with(EVENTS),
                "{}",
                request.uri()
            );
            respond.send_response(
                Response::builder()
                    .status(200)
                    .body(Body::from(serde_json::to_vec(&first).unwrap()))
                    .unwrap(),
            );
            let status = status_written(&mut api).await;
            (api, grant, status)
        });
        within(reconcile(Arc::new(current), ctx.clone()))
            .await
            .unwrap();
        drop(ctx);
        let (mut api, grant, status) = server.await.unwrap();
        assert!(api.next_request().await.is_none());
        assert_eq!(
            grant["spec"]["from"],
            json!([{"group": "gateway.envoyproxy.io", "kind": "SecurityPolicy", "namespace": "shop"},
                   {"group": "gateway.kgateway.dev", "kind": "GatewayExtension", "namespace": "shop"}])
        );
        for target in status["targets"].as_array().unwrap() {
            assert_eq!(target["conditions"][0]["reason"], "Accepted", "{target}");
        }
    }
}
