//! The operator's serving watches against kube-rs's mock API: with the AuthPolicy CRD
//! missing, the keys are served as soon as SigningKeys and Secrets are listed, `/readyz`
//! says which watch is failing, and a decision fails closed with 503 instead of 404; and
//! with a long list of policies, `/readyz` says ready only once every one is served.

mod common;

use std::sync::Arc;
use std::time::Duration;

use authplane::api::{AuthPolicy, SigningKey};
use authplane::issuer_claims::IssuerScope;
use authplane::keys::KeyMaterial;
use authplane::operator::instance::Instance;
use authplane::operator::serve;
use authplane::registry::{PolicyRuntime, Registry, SourceState};
use authplane::server::{self, AppState, Endpoints};
use futures::StreamExt;
use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const KEYS: &str = "/apis/authplane.io/v1alpha1/signingkeys";
const POLICIES: &str = "/apis/authplane.io/v1alpha1/authpolicies";
const SECRETS: &str = "/api/v1/secrets";

fn signing_key() -> Value {
    json!({
        "apiVersion": "authplane.io/v1alpha1", "kind": "SigningKey",
        "metadata": {"name": "web", "namespace": "auth", "resourceVersion": "1"},
        "spec": {"algorithm": "ES256"},
    })
}

fn secret(data: &authplane::keys::store::Data) -> Value {
    let encoded: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| {
            use base64::Engine as _;
            (
                k.clone(),
                Value::String(base64::engine::general_purpose::STANDARD.encode(v)),
            )
        })
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "web-keys", "namespace": "auth", "resourceVersion": "1",
                     "labels": {"app.kubernetes.io/managed-by": "authplane",
                                "authplane.io/signing-key": "web"}},
        "data": encoded,
    })
}

/// Enforced for everyone, tokens from an external issuer (never reached here).
fn external_policy() -> Value {
    json!({
        "apiVersion": "authplane.io/v1alpha1", "kind": "AuthPolicy",
        "metadata": {"name": "partners", "namespace": "shop", "resourceVersion": "1"},
        "spec": {"issuers": [{"issuer": "https://127.0.0.1:9/partners", "jwksUri": "https://127.0.0.1:9/keys"}],
                 "rollout": {"mode": "Enforce", "percentage": 100}},
    })
}

fn list(items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items})
}

/// Policy `i` of a long list: enforced for everyone, tokens from our key.
fn own_policy(i: usize) -> Value {
    json!({
        "apiVersion": "authplane.io/v1alpha1", "kind": "AuthPolicy",
        "metadata": {"name": format!("p{i}"), "namespace": "shop", "resourceVersion": "1", "generation": 1},
        "spec": {"issuers": [{"signingKeyRef": {"name": "web", "namespace": "auth"}}],
                 "audiences": [format!("aud-{i}")],
                 "rollout": {"mode": "Enforce", "percentage": 100}},
    })
}

/// How the mock API answers about AuthPolicies.
#[derive(Clone, Copy, PartialEq)]
enum Policies {
    /// Listed: this many policies of our key.
    Many(usize),
    /// The 404 of a missing CRD.
    CrdMissing,
    /// No answer yet: a long list (10,000 policies) still under way.
    StillListing,
    /// Listed, one policy of an external issuer; the SigningKey watch is forbidden.
    ListedWithoutKeys,
}

/// Answers lists by path and keeps watches open (nothing changes).
async fn api_server(
    mut handle: Handle,
    secret: Value,
    policies: Policies,
    release: Arc<tokio::sync::Notify>,
) {
    let many = match policies {
        Policies::Many(n) => Some(n),
        _ => None,
    };
    let mut open_watches = Vec::new();
    while let Some((request, respond)) = handle.next_request().await {
        // A long list arrives when the test says (the keys are served by then).
        if many.is_some()
            && request.uri().path() == POLICIES
            && !request.uri().query().unwrap_or("").contains("watch=true")
        {
            release.notified().await;
        }
        let path = request.uri().path().to_owned();
        let watch = request.uri().query().unwrap_or("").contains("watch=true");
        let (status, body) = match path.as_str() {
            POLICIES if policies == Policies::StillListing => {
                open_watches.push(respond);
                continue;
            }
            POLICIES if policies == Policies::ListedWithoutKeys && watch => {
                open_watches.push(respond);
                continue;
            }
            POLICIES if policies == Policies::ListedWithoutKeys => {
                (200, list(vec![external_policy()]))
            }
            POLICIES if watch => {
                open_watches.push(respond);
                continue;
            }
            POLICIES if many.is_some() => {
                (200, list((0..many.unwrap_or(0)).map(own_policy).collect()))
            }
            KEYS if policies == Policies::ListedWithoutKeys => (
                403,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                       "reason": "Forbidden", "code": 403,
                       "message": "signingkeys.authplane.io is forbidden"}),
            ),
            POLICIES => (
                404,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                       "reason": "NotFound", "code": 404,
                       "message": "the server could not find the requested resource"}),
            ),
            _ if watch => {
                open_watches.push(respond);
                continue;
            }
            KEYS => (200, list(vec![signing_key()])),
            SECRETS => (200, list(vec![secret.clone()])),
            other => panic!("unexpected request {other}"),
        };
        respond.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap(),
        );
    }
}

/// The serving watches against the mock API, and the HTTP server in front of them.
struct Serving {
    base: String,
    kid: String,
    registry: Arc<Registry>,
    /// What the serving index tells the status controller it compiled.
    recompiled: futures::stream::BoxStream<
        'static,
        kube::runtime::reflector::ObjectRef<kube::core::DeserializeGuard<AuthPolicy>>,
    >,
    /// What the caches hold.
    caches: serve::Caches,
    /// Answers the long list of policies (`Policies::Many`).
    release: Arc<tokio::sync::Notify>,
    stop: tokio::sync::watch::Sender<bool>,
    /// The serving watches and the HTTP server: they end when told to stop.
    tasks: Vec<tokio::task::JoinHandle<()>>,
    api: tokio::task::JoinHandle<()>,
}

impl Serving {
    async fn stop(self) {
        self.stop.send(true).unwrap();
        for task in self.tasks {
            task.await.unwrap();
        }
        self.api.abort();
    }
}

async fn start(policies: Policies) -> Serving {
    let key: SigningKey = serde_json::from_value(signing_key()).unwrap();
    let outcome = authplane::reconcile::signing_key(
        &key,
        None,
        "http://127.0.0.1",
        jiff::Timestamp::now(),
        &mut KeyMaterial::generate,
    )
    .unwrap();
    let kid = outcome.keys.records()[0].material.kid().to_owned();

    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let release = Arc::new(tokio::sync::Notify::new());
    let api = tokio::spawn(api_server(
        handle,
        secret(&outcome.data),
        policies,
        release.clone(),
    ));
    let client = Client::new(service, "default");

    let registry = Arc::new(Registry::default());
    let metrics = Arc::new(authplane::metrics::Metrics::default());
    let clock = Arc::new(authplane::clock::SystemClock);
    let runtime = Arc::new(PolicyRuntime::new(metrics.clone(), clock.clone(), 0));
    let (caches, writers) = serve::caches();
    let scope = Arc::new(IssuerScope::new("http://127.0.0.1", []).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = AppState {
        registry: registry.clone(),
        metrics,
        clock,
        base_url: Arc::from(base.as_str()),
        signing_keys: Arc::new(serve::KeyIndex {
            keys: caches.keys.clone(),
            registry: registry.clone(),
            scope: scope.clone(),
        }),
        tls: None,
        revoke: None,
        token: None,
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let http = tokio::spawn(server::serve(
        listener,
        server::router(state, Endpoints::Public),
        {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            }
        },
    ));
    let feeds = serve::Feeds::default();
    let recompiled = feeds.policies.clone().triggers().boxed();
    let serving = tokio::spawn(serve::run(
        client,
        serve::Settings {
            scope,
            instance: Instance::default(),
        },
        registry.clone(),
        runtime,
        (caches.clone(), writers),
        feeds,
        stopped,
    ));
    let http = tokio::spawn(async move {
        http.await.unwrap().unwrap();
    });
    Serving {
        base,
        kid,
        registry,
        recompiled,
        caches,
        release,
        stop,
        tasks: vec![serving, http],
        api,
    }
}

async fn jwks_served(client: &reqwest::Client, serving: &Serving) {
    let jwks_url = format!("{}/auth/web/.well-known/jwks.json", serving.base);
    common::eventually(
        "the JWKS served without the AuthPolicies",
        DEADLINE,
        || async {
            let jwks: Value = client.get(&jwks_url).send().await.ok()?.json().await.ok()?;
            (jwks["keys"][0]["kid"] == serving.kid.as_str()).then_some(())
        },
    )
    .await;
}

const DEADLINE: Duration = Duration::from_secs(20);

#[tokio::test]
async fn keys_are_served_while_the_auth_policy_crd_is_missing() {
    let serving = start(Policies::CrdMissing).await;
    let client = reqwest::Client::new();
    jwks_served(&client, &serving).await;
    common::eventually("the failing watch named", DEADLINE, || async {
        serving
            .registry
            .unsynced_sources()
            .iter()
            .any(|(name, state)| {
                *name == "AuthPolicy watch"
                    && matches!(state, SourceState::Failing(why) if why.contains("CRD installed"))
            })
            .then_some(())
    })
    .await;

    let base = &serving.base;
    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "keys are served: the replica is ready");
    let body = ready.text().await.unwrap();
    assert!(
        body.starts_with("ready, degraded (AuthPolicy watch: failing:"),
        "{body}"
    );
    assert!(!body.contains("SigningKey watch"), "{body}");

    let decision = client
        .get(format!("{base}/authz/shop/payments"))
        .send()
        .await
        .unwrap();
    assert_eq!(decision.status(), 503, "fail closed, and not a 404");
    assert_eq!(
        decision.headers()["x-authplane-reason"],
        "policies_unavailable"
    );
    serving.stop().await;
}

#[tokio::test]
async fn a_replica_still_listing_its_auth_policies_takes_no_traffic_yet() {
    let serving = start(Policies::StillListing).await;
    let client = reqwest::Client::new();
    jwks_served(&client, &serving).await;
    let ready = client
        .get(format!("{}/readyz", serving.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let body = ready.text().await.unwrap();
    assert_eq!(
        body,
        "not ready: still listing (AuthPolicy watch: not listed yet)\n"
    );
    serving.stop().await;
}

#[tokio::test]
async fn policies_of_external_issuers_are_served_while_the_key_watch_fails() {
    let mut serving = start(Policies::ListedWithoutKeys).await;
    let client = reqwest::Client::new();
    let authz = format!("{}/authz/shop/partners", serving.base);
    common::eventually("the policy decides without our keys", DEADLINE, || async {
        let r = client.get(&authz).send().await.ok()?;
        (r.status() == 401).then_some(())
    })
    .await;
    let body = client
        .get(format!("{}/readyz", serving.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("SigningKey watch: failing"), "{body}");
    // The status controller is told, with no polling on its side.
    let announced = tokio::time::timeout(DEADLINE, serving.recompiled.next())
        .await
        .expect("the compiled policy is announced")
        .unwrap();
    assert_eq!(
        (announced.namespace.as_deref(), announced.name.as_str()),
        (Some("shop"), "partners")
    );
    serving.stop().await;
}

/// Ready means every listed policy is served. Before, the AuthPolicy watch counted as
/// synced once listed, and `/readyz` said ready while the listed policies were still
/// being compiled: every decision meanwhile was a 503 `policies_unavailable` (1-2 s at
/// 10,000 policies on a real cluster). Two workers: the HTTP server answers while the
/// serving loop compiles, as on a real replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_only_once_every_listed_policy_is_served() {
    const POLICIES: usize = 2_000;
    let serving = start(Policies::Many(POLICIES)).await;
    let client = reqwest::Client::new();
    // The keys are served first (the replica has published), then the policies come:
    // the order of a real cold start, where the short lists arrive first.
    jwks_served(&client, &serving).await;
    serving.release.notify_one();
    let readyz = format!("{}/readyz", serving.base);
    let last = format!("{}/authz/shop/p{}", serving.base, POLICIES - 1);
    let mut polls = 0;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        polls += 1;
        let ready = client.get(&readyz).send().await.unwrap().status() == 200;
        // Asked after `/readyz` answered: a replica that said ready must decide.
        let decision = client.get(&last).send().await.unwrap();
        let status = decision.status();
        let reason = decision.headers().get("x-authplane-reason").cloned();
        if ready {
            assert_ne!(
                status, 503,
                "ready, yet no decision ({reason:?}) after {polls} polls"
            );
            assert_eq!(status, 401, "enforced, and no token");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never ready");
    }
    assert!(
        serving.caches.policies.state().len() == POLICIES,
        "every policy listed"
    );
    serving.stop().await;
}
