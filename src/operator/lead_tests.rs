//! The leader's wiring, against a fake apiserver on kube-rs's mock service: the
//! AuthPolicy status controller starts once the targets are listed, reads the serving
//! cache, and reconciles a policy when one of its targets goes away and when the serving
//! loop announces it. Each part has its own tests; this one checks that `lead` connects
//! them. The writer remembers every status it wrote, so a reconcile that changes nothing
//! writes nothing here either, and forgets it once the cache has seen it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use jiff::Timestamp;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tower_test::mock::SendResponse;

use super::auth_policies::PolicyContext;
use super::serve::{self, Feeds};
use super::writer::LeaderWriter;
use super::{Controllers, lead};
use crate::api::{AuthPolicy, ObjectKey, SigningKey, conditions};
use crate::clock::Clock;
use crate::index::Index;
use crate::keys::KeyMaterial;
use crate::metrics::Metrics;
use crate::registry::{PolicyRuntime, Registry, ServedKeys};

struct Fixed(Timestamp);

impl Clock for Fixed {
    fn now(&self) -> Timestamp {
        self.0
    }
}

fn policy() -> Value {
    json!({
        "apiVersion": "authplane.io/v1alpha1", "kind": "AuthPolicy",
        "metadata": {"name": "payments", "namespace": "shop", "uid": "p-1",
                     "generation": 2, "resourceVersion": "5"},
        "spec": {"issuers": [{"signingKeyRef": {"name": "web", "namespace": "auth"}}],
                 "targetRefs": [{"kind": "Deployment", "name": "web"}]},
    })
}

fn target(name: &str) -> Value {
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
           "metadata": {"name": name, "namespace": "shop", "resourceVersion": "7"}})
}

fn list(items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"},
           "items": items})
}

fn respond(send: SendResponse<Response<Body>>, status: u16, body: String) {
    let response = Response::builder()
        .status(status)
        .body(Body::from(body.into_bytes()));
    send.send_response(response.unwrap());
}

/// The watches the fake holds open, and the events waiting for the next one.
#[derive(Default)]
struct Watches {
    open: HashMap<String, SendResponse<Response<Body>>>,
    queued: HashMap<String, Vec<Value>>,
}

impl Watches {
    /// Sends `event` on the watch of `resource`, or keeps it for the next one. The
    /// watch ends after its events; the watcher opens the next one.
    fn send(&mut self, resource: &str, event: Value) {
        self.queued
            .entry(resource.to_owned())
            .or_default()
            .push(event);
        if let Some(watch) = self.open.remove(resource) {
            self.opened(resource.to_owned(), watch);
        }
    }

    fn opened(&mut self, resource: String, watch: SendResponse<Response<Body>>) {
        match self.queued.remove(&resource) {
            Some(events) => {
                let lines: String = events.iter().map(|e| format!("{e}\n")).collect();
                respond(watch, 200, lines);
            }
            None => {
                self.open.insert(resource, watch);
            }
        }
    }
}

/// Answers every list from `lists` (a resource it does not know is a 404, as the
/// Gateway API's is without its CRDs), keeps watches open until there is an event for
/// them (from the test, or a status written), and hands each status patch to the test.
/// The Deployments' list is slow: it is answered 15 s (of the paused clock) after it
/// is asked for, so a status controller that did not wait for it would report the
/// target as unknown first.
async fn fake_apiserver(
    mut api: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    lists: HashMap<&'static str, Value>,
    mut events: mpsc::UnboundedReceiver<(&'static str, Value)>,
    patches: mpsc::UnboundedSender<Value>,
) {
    let mut watches = Watches::default();
    let mut resource_version = 5;
    let mut slow = None;
    let slow_list = tokio::time::sleep(Duration::MAX);
    tokio::pin!(slow_list);
    loop {
        tokio::select! {
            () = &mut slow_list, if slow.is_some() => {
                respond(slow.take().unwrap(), 200, lists["deployments"].to_string());
            }
            request = api.next_request() => {
                let Some((request, send)) = request else { return };
                let path = request.uri().path().to_owned();
                let query = request.uri().query().unwrap_or("").to_owned();
                let resource = path.rsplit('/').next().unwrap_or("").to_owned();
                if request.method() == "PATCH" && path.ends_with("/status") {
                    let body = request.into_body().collect_bytes().await.unwrap();
                    let patch: Value = serde_json::from_slice(&body).unwrap();
                    let mut written = policy();
                    written["status"] = patch["status"].clone();
                    resource_version += 1;
                    written["metadata"]["resourceVersion"] = json!(resource_version.to_string());
                    respond(send, 200, written.to_string());
                    let _ = patches.send(patch);
                } else if query.contains("watch=true") {
                    watches.opened(resource, send);
                } else if resource == "deployments" {
                    slow = Some(send);
                    slow_list.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(15));
                } else if let Some(items) = lists.get(resource.as_str()) {
                    respond(send, 200, items.to_string());
                } else {
                    let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                        "reason": "NotFound", "code": 404});
                    respond(send, 404, status.to_string());
                }
            }
            event = events.recv() => {
                let Some((resource, event)) = event else { return };
                watches.send(resource, event);
            }
        }
    }
}

// The clock is paused: it moves only when every task waits, so the slow list is
// answered exactly when nothing else can happen first.
#[tokio::test(start_paused = true)]
async fn the_leader_reports_targets_and_reconciles_on_their_changes_and_on_announcements() {
    let now: Timestamp = "2026-03-01T00:00:00Z".parse().unwrap();
    let clock = Arc::new(Fixed(now));
    // The serving view has compiled the policy, as the serving loop would have.
    let key: SigningKey = serde_json::from_value(json!({
        "apiVersion": "authplane.io/v1alpha1", "kind": "SigningKey",
        "metadata": {"name": "web", "namespace": "auth"}, "spec": {"algorithm": "ES256"},
    }))
    .unwrap();
    let outcome = crate::reconcile::signing_key(
        &key,
        None,
        "https://a.example",
        now,
        &mut KeyMaterial::generate,
    )
    .unwrap();
    let metrics = Arc::new(Metrics::default());
    let runtime = Arc::new(PolicyRuntime::new(metrics.clone(), clock.clone(), 0));
    let scope = crate::issuer_claims::IssuerScope::anywhere("https://a.example");
    let mut index = Index::new(runtime.clone(), Arc::new(scope));
    let key_id = ObjectKey {
        namespace: "auth".into(),
        name: "web".into(),
    };
    let served = ServedKeys {
        published: Arc::new(outcome.published("auth", "web")),
        keys: outcome.keys.clone(),
        max_token_lifetime: key.spec.max_token_lifetime(),
    };
    index.apply_key(&key_id, served);
    index.apply_policy(Arc::new(
        serde_json::from_value::<AuthPolicy>(policy()).unwrap(),
    ));
    let registry = Arc::new(Registry::default());
    registry.publish(index.snapshot());
    let serving = registry.clone();

    let (service, api) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let (leader_tx, leader) = watch::channel(true);
    let (stop, stopped) = watch::channel(false);
    let writer = LeaderWriter::new(client.clone(), leader.clone(), None);
    let writes = writer.clone();
    // The serving caches, as the serving loop fills them: the policy, no keys.
    let (caches, mut writers) = serve::caches();
    let guard: kube::core::DeserializeGuard<AuthPolicy> = serde_json::from_value(policy()).unwrap();
    writers.fill(Vec::new(), Vec::new(), vec![guard]);
    let feeds = Feeds::default();
    let controllers = Controllers {
        client: client.clone(),
        writer: writer.clone(),
        caches: caches.clone(),
        feeds: feeds.clone(),
        metrics: metrics.clone(),
        external_url: "https://a.example".into(),
        clock: clock.clone(),
        policies: Arc::new(PolicyContext {
            targets: Default::default(),
            attachments: Arc::new(super::attachments::Attachments::new(
                Default::default(),
                &Default::default(),
            )),
            policies: caches.policies.clone(),
            registry,
            external_url: "https://a.example".into(),
            clock,
            writer,
            runtime,
            rollouts: Default::default(),
            keys: caches.keys.clone(),
            leading_since: Default::default(),
        }),
        issuer_claims: (
            Arc::new(crate::issuer_claims::IssuerScope::anywhere(
                "https://a.example",
            )),
            serving.clone(),
        ),
        // No TokenClient watch runs here: never synced, no TokenClient status is written.
        token_clients: super::TokenClients {
            cache: kube::runtime::reflector::store().0,
            served: Default::default(),
            changed: Default::default(),
        },
    };
    let lists = HashMap::from([
        ("signingkeys", list(Vec::new())),
        ("configmaps", list(Vec::new())),
        ("revocations", list(Vec::new())),
        ("deployments", list(vec![target("web")])),
        ("statefulsets", list(Vec::new())),
        ("services", list(Vec::new())),
        ("ingresses", list(Vec::new())),
    ]);
    let (events, events_rx) = mpsc::unbounded_channel();
    let (patches_tx, mut patches) = mpsc::unbounded_channel();
    let apiserver = tokio::spawn(fake_apiserver(api, lists, events_rx, patches_tx));
    let leading = tokio::spawn(lead(controllers, leader, stopped));
    let mut next_status = async || {
        let patch = tokio::time::timeout(Duration::from_secs(60), patches.recv()).await;
        patch.expect("a status write").expect("the apiserver")["status"].take()
    };

    // Reported once the targets are listed: never "unknown" first.
    assert_eq!(
        next_status().await["targets"],
        json!([{"kind": "Deployment", "name": "web", "found": true}])
    );
    // The Deployment goes away: the policy naming it is reconciled at once.
    let deleted = json!({"type": "DELETED", "object": target("web")});
    events.send(("deployments", deleted)).unwrap();
    assert_eq!(
        next_status().await["targets"],
        json!([{"kind": "Deployment", "name": "web", "found": false}])
    );
    // The SigningKey it names goes away: the serving index compiles the policy again
    // and announces it, as the serving loop does.
    index.delete_key(&key_id);
    serving.publish(index.snapshot());
    feeds.policies.announce(BTreeSet::from([ObjectKey {
        namespace: "shop".into(),
        name: "payments".into(),
    }]));
    let status = next_status().await;
    let ready = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == conditions::READY)
        .unwrap();
    assert_eq!(
        (&ready["status"], &ready["reason"]),
        (
            &json!("False"),
            &json!(conditions::reason::SIGNING_KEY_NOT_FOUND)
        )
    );

    // The cache catches up with the last status written: the leader forgets its own
    // copy of it, though nothing reconciles the policy again.
    assert_eq!(writes.writes_ahead_of_caches(), 1);
    let mut seen = policy();
    seen["metadata"]["resourceVersion"] = json!("100");
    seen["status"] = status;
    writers.fill(
        Vec::new(),
        Vec::new(),
        vec![serde_json::from_value(seen).unwrap()],
    );
    tokio::time::timeout(Duration::from_secs(60), async {
        while writes.writes_ahead_of_caches() > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
    .await
    .expect("the write is forgotten once the cache has seen it");

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), leading)
        .await
        .expect("lead returns when told to stop")
        .unwrap();
    drop(leader_tx);
    apiserver.abort();
}
