//! Revocations against kube-rs's mock API server: the Revocation `/revoke` writes, and
//! the leader's delete of lapsed ones. Exact requests, in order, then no more.

mod common;

use std::sync::Arc;

use authplane::admission::NoSigningKeys;
use authplane::clock::SystemClock;
use authplane::keys::lifecycle::{KeyRecord, KeySet};
use authplane::keys::{Algorithm, KeyMaterial};
use authplane::metrics::Metrics;
use authplane::operator::instance::Instance;
use authplane::operator::revocations::{KubeWriter, expire_once};
use authplane::operator::writer::LeaderWriter;
use authplane::registry::{PublishedIssuer, Registry, Snapshot};
use authplane::server::revoke::RevokeEndpoint;
use authplane::server::{self, AppState, Endpoints};
use axum::body::Body as AxumBody;
use http::{Request, Response};
use jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tower::ServiceExt as _;

use common::mock_api::{self, Handle, within};

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
            echo["metadata"] = json!({"name": "echo", "namespace": "auth"});
            echo["spec"] = json!({"issuer": "https://echo", "tokenId": "echo"});
        }
        echo
    })
    .await
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": "authplane.io/v1alpha1", "kind": format!("{kind}List"), "metadata": {"resourceVersion": "10"}, "items": items})
}

fn revocation(name: &str, created: Timestamp, spec: Value) -> Value {
    json!({
        "apiVersion": "authplane.io/v1alpha1", "kind": "Revocation",
        "metadata": {"name": name, "namespace": "auth", "uid": format!("uid-{name}"),
            "resourceVersion": "7", "creationTimestamp": created.to_string()},
        "spec": spec,
    })
}

/// One pass of the leader's expiry against the mock API, by a replica that holds the
/// lease until the returned sender says otherwise.
fn expiry_pass(
    now: Timestamp,
) -> (
    tokio::task::JoinHandle<Result<usize, authplane::operator::error::Error>>,
    Handle,
    tokio::sync::watch::Sender<bool>,
) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let (lease, leader) = tokio::sync::watch::channel(true);
    let writer = LeaderWriter::new(client.clone(), leader, None);
    let task = tokio::spawn(async move { expire_once(&client, &writer, now).await });
    (task, handle, lease)
}

/// The lease was lost between the lists and the delete: the writer refuses, and
/// nothing is deleted or written.
/// The SigningKey `auth/web`, whose tokens live at most 15 minutes.
fn web_key() -> Value {
    json!({
        "apiVersion": "authplane.io/v1alpha1", "kind": "SigningKey",
        "metadata": {"name": "web", "namespace": "auth"},
        "spec": {"maxTokenLifetime": "15m"},
    })
}

/// A Revocation of one token of the external issuer [`external_issuer_policy`] accepts.
fn external_issuer_revocation(name: &str, created: Timestamp) -> Value {
    revocation(
        name,
        created,
        json!({"issuer": "https://login.example/t/v2.0", "tokenId": "e"}),
    )
}

/// Takes the status written to the Revocation `entra`, which does not lapse (the external
/// issuer's tokens are accepted of any lifetime), checks that it says so, and returns it.
async fn expect_entra_status(handle: &mut Handle) -> Value {
    let status = expect(
        handle,
        "PATCH",
        "/apis/authplane.io/v1alpha1/namespaces/auth/revocations/entra/status",
        200,
        Value::Null,
    )
    .await;
    assert_eq!(
        status["status"]["conditions"][0]["reason"],
        "NoLifetimeLimit"
    );
    status
}

/// An AuthPolicy that takes an external issuer's tokens of any lifetime.
fn external_issuer_policy() -> serde_json::Value {
    json!({
        "apiVersion": "authplane.io/v1alpha1", "kind": "AuthPolicy",
        "metadata": {"name": "api", "namespace": "auth"},
        "spec": {"issuers": [{"issuer": "https://login.example/t/v2.0"}]},
    })
}

#[tokio::test]
async fn a_replica_that_lost_the_lease_deletes_nothing() {
    let now: Timestamp = "2026-03-01T12:00:00Z".parse().unwrap();
    let (task, mut handle, lease) = expiry_pass(now);
    expect(
        &mut handle,
        "GET",
        "/apis/authplane.io/v1alpha1/signingkeys",
        200,
        list("SigningKey", vec![]),
    )
    .await;
    lease.send(false).unwrap();
    expect(
        &mut handle,
        "GET",
        "/apis/authplane.io/v1alpha1/authpolicies",
        200,
        list("AuthPolicy", vec![]),
    )
    .await;
    expect(
        &mut handle,
        "GET",
        "/apis/authplane.io/v1alpha1/tokenclients",
        200,
        list("TokenClient", vec![]),
    )
    .await;
    let lapsed = external_issuer_revocation("old", now - SignedDuration::from_hours(48));
    expect(
        &mut handle,
        "GET",
        "/apis/authplane.io/v1alpha1/revocations",
        200,
        list("Revocation", vec![lapsed]),
    )
    .await;
    let refused = within(task).await.unwrap().unwrap_err();
    assert_eq!(
        refused.kind(),
        authplane::operator::error::ErrorKind::NotLeader
    );
    assert!(
        handle.next_request().await.is_none(),
        "no DELETE, no status"
    );
}

#[tokio::test]
async fn the_leader_deletes_lapsed_revocations_and_only_those() {
    let now: Timestamp = "2026-03-01T12:00:00Z".parse().unwrap();
    let ago = |minutes: i64| now - SignedDuration::from_mins(minutes);
    let (task, mut handle, _lease) = expiry_pass(now);
    expect(
        &mut handle,
        "GET",
        "/apis/authplane.io/v1alpha1/signingkeys",
        200,
        list("SigningKey", vec![web_key()]),
    )
    .await;
    // The policies say how long tokens are accepted: this one takes the external
    // issuer's tokens of any lifetime.
    expect(
        &mut handle,
        "GET",
        "/apis/authplane.io/v1alpha1/authpolicies",
        200,
        list("AuthPolicy", vec![external_issuer_policy()]),
    )
    .await;
    // No TokenClient of the key: its Revocations live as long as its tokens.
    expect(
        &mut handle,
        "GET",
        "/apis/authplane.io/v1alpha1/tokenclients",
        200,
        list("TokenClient", vec![]),
    )
    .await;
    expect(
        &mut handle,
        "GET",
        "/apis/authplane.io/v1alpha1/revocations",
        200,
        list(
            "Revocation",
            vec![
                // Created 21 minutes ago with 15-minute tokens (and up to 5 minutes of
                // leeway): lapsed.
                revocation(
                    "old",
                    ago(21),
                    json!({"signingKeyRef": {"name": "web"}, "subject": "a"}),
                ),
                // 5 minutes ago: some of its tokens may still be valid.
                revocation(
                    "recent",
                    ago(5),
                    json!({"signingKeyRef": {"name": "web"}, "subject": "b"}),
                ),
                // Lapsed by its own expiresAt.
                revocation(
                    "until",
                    ago(3),
                    json!({"signingKeyRef": {"name": "web"}, "tokenId": "j",
                    "expiresAt": ago(1).to_string()}),
                ),
                // An external issuer whose tokens a policy accepts of any lifetime: it
                // does not lapse.
                external_issuer_revocation("entra", ago(120)),
            ],
        ),
    )
    .await;
    let body = expect(
        &mut handle,
        "DELETE",
        "/apis/authplane.io/v1alpha1/namespaces/auth/revocations/old",
        200,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
    )
    .await;
    // Only the object judged: same uid and resourceVersion.
    assert_eq!(
        body["preconditions"],
        json!({"uid": "uid-old", "resourceVersion": "7"})
    );
    expect(
        &mut handle,
        "DELETE",
        "/apis/authplane.io/v1alpha1/namespaces/auth/revocations/until",
        404,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
    )
    .await;
    // The others report when they lapse.
    let status = expect(
        &mut handle,
        "PATCH",
        "/apis/authplane.io/v1alpha1/namespaces/auth/revocations/recent/status",
        200,
        Value::Null,
    )
    .await;
    assert_eq!(
        status["status"]["expiresAt"],
        (ago(5) + SignedDuration::from_mins(20)).to_string()
    );
    assert_eq!(status["status"]["conditions"][0]["type"], "Active");
    assert_eq!(status["status"]["conditions"][0]["reason"], "Applied");
    let status = expect_entra_status(&mut handle).await;
    assert!(status["status"].get("expiresAt").is_none(), "{status}");
    assert!(
        status["status"]["conditions"][0]["message"]
            .as_str()
            .unwrap()
            .contains(
                "AuthPolicy auth/api accepts tokens of https://login.example/t/v2.0 of any lifetime"
            ),
        "{status}"
    );
    assert_eq!(within(task).await.unwrap().unwrap(), 1);
    // The client is gone with the task: every request it made was answered above.
    assert!(handle.next_request().await.is_none(), "no further requests");
}

/// Takes the next request, which must be a GET of `path` with the query `query`, and
/// answers it with `answer`.
async fn expect_list(handle: &mut Handle, path: &str, query: &str, answer: Value) {
    let (request, respond) = within(handle.next_request())
        .await
        .unwrap_or_else(|| panic!("expected GET {path}?{query}"));
    assert_eq!(
        (
            request.method().as_str(),
            request.uri().path(),
            request.uri().query()
        ),
        ("GET", path, Some(query))
    );
    respond.send_response(
        Response::builder()
            .status(200)
            .body(Body::from(serde_json::to_vec(&answer).unwrap()))
            .unwrap(),
    );
}

/// The lifetimes and the Revocations are read a page at a time, every page of them:
/// listed whole, 10,000 AuthPolicies with their status held 130-140 MiB more in the leader
/// for a few seconds every minute. A page of Revocations is acted on before the next is
/// listed.
#[tokio::test]
async fn the_leader_reads_lifetimes_and_revocations_a_page_at_a_time() {
    let now: Timestamp = "2026-03-01T12:00:00Z".parse().unwrap();
    let (task, mut handle, _lease) = expiry_pass(now);
    let policies = "/apis/authplane.io/v1alpha1/authpolicies";
    let revocations = "/apis/authplane.io/v1alpha1/revocations";
    expect_list(
        &mut handle,
        "/apis/authplane.io/v1alpha1/signingkeys",
        "&limit=500",
        list("SigningKey", vec![web_key()]),
    )
    .await;
    let mut first = list("AuthPolicy", vec![]);
    first["metadata"]["continue"] = json!("page-2");
    expect_list(&mut handle, policies, "&limit=500", first).await;
    // The policy that keeps the Revocation in force is on the second page.
    expect_list(
        &mut handle,
        policies,
        "&limit=500&continue=page-2",
        list("AuthPolicy", vec![external_issuer_policy()]),
    )
    .await;
    expect_list(
        &mut handle,
        "/apis/authplane.io/v1alpha1/tokenclients",
        "&limit=500",
        list("TokenClient", vec![]),
    )
    .await;
    let mut first = list(
        "Revocation",
        vec![revocation(
            "old",
            now - SignedDuration::from_mins(21),
            json!({"signingKeyRef": {"name": "web"}, "subject": "a"}),
        )],
    );
    first["metadata"]["continue"] = json!("revocations-2");
    expect_list(&mut handle, revocations, "&limit=500", first).await;
    // The first page's lapsed Revocation is deleted before the second page is listed.
    expect(
        &mut handle,
        "DELETE",
        "/apis/authplane.io/v1alpha1/namespaces/auth/revocations/old",
        200,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
    )
    .await;
    expect_list(
        &mut handle,
        revocations,
        "&limit=500&continue=revocations-2",
        list(
            "Revocation",
            vec![external_issuer_revocation(
                "entra",
                now - SignedDuration::from_hours(2),
            )],
        ),
    )
    .await;
    expect_entra_status(&mut handle).await;
    assert_eq!(within(task).await.unwrap().unwrap(), 1);
    assert!(handle.next_request().await.is_none(), "no further requests");
}

const ISSUER: &str = "https://auth.example/auth/web";

/// The router of a replica serving auth/web, writing Revocations to the mock API, and
/// its registry (where its Revocation watch would publish).
fn replica(client: Client) -> (axum::Router, KeySet, Arc<Registry>) {
    replica_of(client, Instance::default())
}

/// [`replica`] of an installation `instance`.
fn replica_of(client: Client, instance: Instance) -> (axum::Router, KeySet, Arc<Registry>) {
    let now = Timestamp::now();
    let keys = KeySet::new(vec![KeyRecord {
        material: KeyMaterial::generate(Algorithm::ES256, 2048).unwrap(),
        created: now,
        activates_at: now,
    }]);
    let published = PublishedIssuer::render(
        "auth",
        "web",
        ISSUER,
        &keys,
        authplane::snapshot::Rotation {
            every: SignedDuration::from_hours(720),
            pre_publish: SignedDuration::from_hours(1),
            retain_for: SignedDuration::from_hours(24),
        },
    );
    let registry = Arc::new(Registry::default());
    registry.publish(Snapshot {
        issuers: imbl::HashMap::unit("/auth/web".to_owned(), Arc::new(published)),
        policies_known: true,
        ..Snapshot::default()
    });
    let state = AppState {
        registry: registry.clone(),
        metrics: Arc::new(Metrics::default()),
        clock: Arc::new(SystemClock),
        base_url: Arc::from("https://auth.example"),
        signing_keys: Arc::new(NoSigningKeys),
        tls: None,
        revoke: Some(Arc::new(RevokeEndpoint::new(
            Arc::new(KubeWriter { client, instance }),
            10,
        ))),
        token: None,
    };
    (server::router(state, Endpoints::Public), keys, registry)
}

/// What the replica's Revocation watch does when the apiserver tells it of `created`.
fn watch_sees(registry: &Registry, created: &Value) {
    let seen: authplane::api::Revocation = serde_json::from_value(created.clone()).unwrap();
    let mut index = authplane::revocation::RevocationIndex::default();
    index.apply(&seen, Timestamp::now()).unwrap();
    registry.publish_revocations(index.publish(Timestamp::now()).0);
}

fn token(keys: &KeySet, jti: &str) -> String {
    let now = Timestamp::now().as_second();
    let active = keys.active(Timestamp::now()).unwrap();
    let mut header = jsonwebtoken::Header::new(active.material.alg().to_jwt());
    header.kid = Some(active.material.kid().to_owned());
    let claims = json!({"iss": ISSUER, "sub": "alice", "aud": "x", "iat": now, "exp": now + 300, "jti": jti});
    jsonwebtoken::encode(&header, &claims, &active.material.encoding_key().unwrap()).unwrap()
}

fn revoke_request(token: &str) -> Request<AxumBody> {
    Request::post("/auth/web/revoke")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(AxumBody::from(format!("token={token}")))
        .unwrap()
}

#[tokio::test]
async fn the_revoke_endpoint_writes_the_revocation_through_the_api() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (router, keys, registry) = replica(Client::new(service, "default"));
    let token = token(&keys, "tok-1");

    let call = tokio::spawn(router.clone().oneshot(revoke_request(&token)));
    let created = expect(
        &mut handle,
        "POST",
        "/apis/authplane.io/v1alpha1/namespaces/auth/revocations",
        201,
        Value::Null,
    )
    .await;
    // Answered once the revocation is in force on this replica: when its watch has it.
    watch_sees(&registry, &created);
    assert_eq!(within(call).await.unwrap().unwrap().status(), 200);
    assert_eq!(created["kind"], "Revocation");
    assert_eq!(created["spec"]["tokenId"], "tok-1");
    assert_eq!(
        created["spec"]["signingKeyRef"],
        json!({"name": "web", "namespace": "auth"})
    );
    assert_eq!(created["spec"]["reason"], "logout");
    assert!(created["spec"]["expiresAt"].is_string(), "{created}");
    assert!(created["metadata"].get("creationTimestamp").is_none());
    let name = created["metadata"]["name"].as_str().unwrap().to_owned();

    assert!(name.starts_with("logout-"), "{name}");

    // The same token again: in force here already, so a success that writes nothing (a
    // client repeating its logout must not make authplane write to the API in a loop;
    // the end of this test checks that nothing else was asked).
    let response = within(router.clone().oneshot(revoke_request(&token)))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // An invalid token writes nothing, and gets the same answer.
    let forged = format!("{}x", &token[..token.len() - 1]);
    let response = router.oneshot(revoke_request(&forged)).await.unwrap();
    assert_eq!(response.status(), 200);
    // The router (and with it the client) is gone: nothing else was asked of the API.
    assert!(handle.next_request().await.is_none(), "no further requests");
}

/// A logout on an installation other than the default one is that installation's
/// Revocation: its leader (and no other) writes its status and deletes it once lapsed.
/// Unlabelled, it was the default instance's, which may not know its SigningKey (so never
/// deletes it), while its own installation left it alone.
#[tokio::test]
async fn a_revocation_written_by_a_logout_belongs_to_the_installation_that_wrote_it() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (router, keys, registry) =
        replica_of(Client::new(service, "default"), "staging".parse().unwrap());
    let call = tokio::spawn(router.oneshot(revoke_request(&token(&keys, "tok-2"))));
    let created = expect(
        &mut handle,
        "POST",
        "/apis/authplane.io/v1alpha1/namespaces/auth/revocations",
        201,
        Value::Null,
    )
    .await;
    watch_sees(&registry, &created);
    assert_eq!(within(call).await.unwrap().unwrap().status(), 200);
    assert_eq!(
        created["metadata"]["labels"]["authplane.io/instance"], "staging",
        "{created}"
    );
}

/// A Revocation stored but not seen by this replica's watch within the bound is not
/// acknowledged: the client is told to retry, and nothing is said to be in force.
#[tokio::test(start_paused = true)]
async fn a_revocation_not_in_force_in_time_is_a_503_to_retry() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (router, keys, _registry) = replica(Client::new(service, "default"));
    let call = tokio::spawn(router.oneshot(revoke_request(&token(&keys, "tok-9"))));
    expect(
        &mut handle,
        "POST",
        "/apis/authplane.io/v1alpha1/namespaces/auth/revocations",
        201,
        Value::Null,
    )
    .await;
    // The watch never delivers it (the paused clock runs the bound out at once).
    let response = within(call).await.unwrap().unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
}

/// Every replica's Revocation watch: what it lists is published (and `/readyz` waits
/// for it), what the watch then delivers is published at once, and a delete lifts it.
#[tokio::test]
async fn the_watch_publishes_what_it_lists_and_what_it_is_told() {
    use authplane::api::ObjectKey;
    use authplane::registry::SourceState;
    use authplane::revocation::TokenFacts;

    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let registry = Arc::new(Registry::default());
    let metrics = Arc::new(Metrics::default());
    let (keys, _keys_writer) = kube::runtime::reflector::store();
    let (policies, _policies_writer) = kube::runtime::reflector::store();
    let (clients, _clients_writer) = kube::runtime::reflector::store();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(authplane::operator::revocations::run(
        Client::new(service, "default"),
        registry.clone(),
        metrics.clone(),
        Arc::new(SystemClock),
        authplane::operator::revocations::LifetimeCaches {
            keys,
            policies,
            clients,
        },
        stopped,
    ));
    let now = Timestamp::now();
    let web = ObjectKey {
        namespace: "auth".into(),
        name: "web".into(),
    };
    let claims = |jti: &str| -> serde_json::Map<String, Value> {
        json!({"iss": ISSUER, "sub": "s", "jti": jti, "iat": now.as_second()})
            .as_object()
            .unwrap()
            .clone()
    };
    let revoked = |jti: &str| {
        let claims = claims(jti);
        registry.revocations().is_revoked(
            "shop",
            &TokenFacts::of(&claims, Some(&web)),
            now.as_second(),
        )
    };

    // The list.
    let (request, respond) = within(handle.next_request()).await.unwrap();
    assert_eq!(
        request.uri().path(),
        "/apis/authplane.io/v1alpha1/revocations"
    );
    assert!(!request.uri().query().unwrap_or("").contains("watch=true"));
    assert_eq!(
        registry.unsynced_sources(),
        [("Revocation watch", SourceState::Syncing)],
        "not ready before the Revocations are listed"
    );
    let listed = revocation(
        "listed",
        now,
        json!({"signingKeyRef": {"name": "web"}, "tokenId": "t-1"}),
    );
    respond.send_response(
        Response::builder()
            .body(Body::from(
                serde_json::to_vec(&list("Revocation", vec![listed])).unwrap(),
            ))
            .unwrap(),
    );
    // The watch: one Revocation added, then one deleted.
    let (request, respond) = within(handle.next_request()).await.unwrap();
    assert!(request.uri().query().unwrap_or("").contains("watch=true"));
    common::eventually(
        "the listed Revocation published",
        std::time::Duration::from_secs(5),
        || async { revoked("t-1").then_some(()) },
    )
    .await;
    assert!(registry.unsynced_sources().is_empty());
    assert!(!revoked("t-2"));
    let added = revocation(
        "added",
        now,
        json!({"signingKeyRef": {"name": "web"}, "tokenId": "t-2", "reason": "compromised"}),
    );
    let deleted = revocation(
        "listed",
        now,
        json!({"signingKeyRef": {"name": "web"}, "tokenId": "t-1"}),
    );
    let events = [
        json!({"type": "ADDED", "object": added}),
        json!({"type": "DELETED", "object": deleted}),
    ];
    let mut body = Vec::new();
    for event in events {
        body.extend(serde_json::to_vec(&event).unwrap());
        body.push(b'\n');
    }
    respond.send_response(Response::builder().body(Body::from(body)).unwrap());
    common::eventually(
        "the watched changes published",
        std::time::Duration::from_secs(5),
        || async { (revoked("t-2") && !revoked("t-1")).then_some(()) },
    )
    .await;
    let text = metrics.encode();
    assert!(
        text.contains("authplane_revocations_applied_total{reason=\"compromised\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("authplane_revocations{namespace=\"auth\",issuer=\"auth/web\"} 1"),
        "{text}"
    );
    stop.send(true).unwrap();
    within(task).await.unwrap();
}

/// A reviewer that is never asked (no login in these tests).
struct NoAssertions;

impl authplane::tokens::client_auth::AssertionReviewer for NoAssertions {
    fn review<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
    ) -> futures::future::BoxFuture<
        'a,
        Result<authplane::api::ObjectKey, authplane::tokens::client_auth::AssertionError>,
    > {
        unreachable!("no client assertion in this test")
    }
}

/// A replica of auth/web with the operator's token endpoint on an embedded store in
/// `dir`, writing Revocations to the mock API; a family of the token service, whose id
/// is the `sid` of its access tokens.
async fn replica_with_store(
    client: Client,
    dir: &std::path::Path,
) -> (axum::Router, KeySet, Arc<Registry>, String) {
    let (_, keys, registry) = replica(client.clone());
    let metrics = Arc::new(Metrics::default());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // Never stopped: the store's follower lives as long as the test.
    std::mem::forget(stop);
    let writer = Arc::new(KubeWriter {
        client,
        instance: Instance::default(),
    });
    let endpoint = authplane::operator::token_store::endpoint(
        &authplane::operator::token_store::TokenStoreConfig {
            location: authplane::tokens::location::StoreLocation::File(dir.join("tokens.redb")),
            password: None,
            ca: None,
            deployment: None,
            rate_per_minute: 10,
            session_limits: Default::default(),
        },
        "authplane/default".into(),
        Arc::new(NoAssertions),
        writer.clone(),
        authplane::server::client_address::TrustedProxies::None,
        Arc::new(SystemClock),
        registry.clone(),
        &metrics,
        stopped,
    )
    .await;
    let started = authplane::refresh::start(
        authplane::refresh::Login {
            client: "auth/web".into(),
            issuer: ISSUER.into(),
            subject: "alice".into(),
            audiences: vec!["x".into()],
            claims: serde_json::Map::new(),
            lifetimes: authplane::refresh::Lifetimes {
                absolute: SignedDuration::from_hours(2),
                idle: SignedDuration::from_hours(1),
                grace: SignedDuration::from_secs(5),
            },
        },
        Timestamp::now(),
        &mut authplane::refresh::SystemEntropy,
    )
    .unwrap();
    endpoint.store.create(&started.family).await.unwrap();
    let state = AppState {
        registry: registry.clone(),
        metrics,
        clock: Arc::new(SystemClock),
        base_url: Arc::from("https://auth.example"),
        signing_keys: Arc::new(NoSigningKeys),
        tls: None,
        revoke: Some(Arc::new(RevokeEndpoint::new(writer, 10))),
        token: Some(endpoint),
    };
    (
        server::router(state, Endpoints::Public),
        keys,
        registry,
        started.family.id,
    )
}

fn session_token(keys: &KeySet, sid: &str) -> String {
    let now = Timestamp::now().as_second();
    let active = keys.active(Timestamp::now()).unwrap();
    let mut header = jsonwebtoken::Header::new(active.material.alg().to_jwt());
    header.kid = Some(active.material.kid().to_owned());
    let claims = json!({"iss": ISSUER, "sub": "alice", "aud": "x", "iat": now, "exp": now + 300, "jti": format!("j-{sid}"), "sid": sid});
    jsonwebtoken::encode(&header, &claims, &active.material.encoding_key().unwrap()).unwrap()
}

fn session_logout(token: &str) -> Request<AxumBody> {
    Request::post("/auth/web/revoke")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(AxumBody::from(format!(
            "token={token}&token_type_hint=session"
        )))
        .unwrap()
}

fn revoked(registry: &Registry, sid: &str) -> bool {
    let claims = json!({"iss": ISSUER, "sub": "alice", "sid": sid, "iat": 0});
    let key = authplane::api::ObjectKey {
        namespace: "auth".into(),
        name: "web".into(),
    };
    let facts = authplane::revocation::TokenFacts::of(claims.as_object().unwrap(), Some(&key));
    registry
        .revocations()
        .is_revoked("shop", &facts, Timestamp::now().as_second())
}

/// With a token store, a logout of a token-service session is kept in the store: no
/// Revocation is written to the API, and it is in force when answered. A session the
/// store does not know (tokens minted elsewhere) is a Revocation object as before, and a
/// Revocation object published later (an admin's) leaves the store's sessions in force.
#[tokio::test]
async fn a_logout_of_a_token_service_session_writes_nothing_to_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (router, keys, registry, sid) =
        replica_with_store(Client::new(service, "default"), dir.path()).await;

    let response = within(
        router
            .clone()
            .oneshot(session_logout(&session_token(&keys, &sid))),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    assert!(revoked(&registry, &sid));
    assert_eq!(registry.revocations().len(), 0, "no Revocation object");

    // A session minted elsewhere: its Revocation object, through the API.
    let call = tokio::spawn(router.oneshot(session_logout(&session_token(&keys, "minted"))));
    let created = expect(
        &mut handle,
        "POST",
        "/apis/authplane.io/v1alpha1/namespaces/auth/revocations",
        201,
        Value::Null,
    )
    .await;
    assert_eq!(created["spec"]["sessionId"], "minted");
    watch_sees(&registry, &created);
    assert_eq!(within(call).await.unwrap().unwrap().status(), 200);
    // Both in force: publishing the objects kept the store's sessions.
    assert!(revoked(&registry, "minted"));
    assert!(revoked(&registry, &sid));
    assert!(handle.next_request().await.is_none(), "no further requests");
}
