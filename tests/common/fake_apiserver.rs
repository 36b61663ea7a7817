//! An apiserver in memory, on kube-rs's mock service: lists, watches (held open until
//! something changes, then ended, so that the watcher resumes from the last version),
//! gets, creates, replaces with optimistic concurrency, server-side applies (of status
//! and of whole objects; an apply that changes nothing is not stored again, as the
//! apiserver does), deletes and Events. Every request is recorded, so that tests count
//! what an operator writes, and what it reads.
//!
//! It is a picture of the apiserver, not the apiserver: what it cannot tell (CEL, RBAC,
//! field ownership, pagination) is what the e2e test and `scripts/scale-cluster.sh`
//! against a real one are for.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::Response;
use kube::client::Body;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tower_test::mock::SendResponse;

/// One request, as received.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Which client sent it (see [`FakeApiserver::serve`]).
    pub client: &'static str,
    pub method: String,
    pub path: String,
    /// A watch (`?watch=true`).
    pub watch: bool,
}

impl Recorded {
    /// A write: what the apiserver counts as POST, PUT, PATCH (APPLY) or DELETE.
    pub fn is_write(&self) -> bool {
        matches!(self.method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE")
    }
}

/// Where an object lives: resource (plural), namespace, name.
type Key = (String, String, String);

/// A list held back: (resource, namespace, label selector, where to answer).
type ParkedList = (
    String,
    Option<String>,
    Vec<(String, String)>,
    SendResponse<Response<Body>>,
);

#[derive(Default)]
struct State {
    version: u64,
    objects: BTreeMap<Key, Value>,
    /// Every change, for watches: (version, resource, type, object).
    changes: Vec<(u64, String, &'static str, Value)>,
    watches: Vec<Watch>,
    requests: Vec<Recorded>,
    /// Resources whose lists are not answered yet ([`FakeApiserver::hold_lists`]), and
    /// the lists waiting.
    held: Vec<String>,
    parked: Vec<ParkedList>,
}

struct Watch {
    resource: String,
    since: u64,
    selector: Vec<(String, String)>,
    respond: SendResponse<Response<Body>>,
}

/// The fake, shared between the task answering requests and the test.
#[derive(Clone, Default)]
pub struct FakeApiserver {
    state: Arc<Mutex<State>>,
}

/// A request's path, taken apart.
struct Target {
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn parse(path: &str) -> Option<Target> {
    let rest = path.strip_prefix("/api/v1/").or_else(|| {
        path.strip_prefix("/apis/")
            .map(|p| p.splitn(3, '/').nth(2).unwrap_or(""))
    })?;
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    let (namespace, parts) = match parts.as_slice() {
        ["namespaces", namespace, rest @ ..] if !rest.is_empty() => {
            (Some((*namespace).to_owned()), rest.to_vec())
        }
        _ => (None, parts),
    };
    Some(Target {
        resource: parts.first()?.to_string(),
        namespace,
        name: parts.get(1).map(|n| n.to_string()),
        status: parts.get(2) == Some(&"status"),
    })
}

fn query_value(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| {
            url::form_urlencoded::parse(format!("v={v}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        })
    })
}

/// `a=b,c=d` (equality only: what the operator uses).
fn selector(query: &str) -> Vec<(String, String)> {
    query_value(query, "labelSelector")
        .unwrap_or_default()
        .split(',')
        .filter_map(|term| term.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn selected(object: &Value, selector: &[(String, String)]) -> bool {
    selector
        .iter()
        .all(|(k, v)| object["metadata"]["labels"][k].as_str() == Some(v.as_str()))
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
           "reason": reason, "code": code, "message": message})
}

fn respond(send: SendResponse<Response<Body>>, code: u16, body: &Value) {
    send.send_response(
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap(),
    );
}

/// Resources whose objects have a spec and a generation (ours).
fn has_generation(resource: &str) -> bool {
    matches!(resource, "signingkeys" | "authpolicies" | "revocations")
}

impl FakeApiserver {
    /// Answers the requests of `handle` until the handle's client is gone, recording
    /// them as `client`'s.
    pub fn serve(
        &self,
        client: &'static str,
        mut handle: super::mock_api::Handle,
    ) -> JoinHandle<()> {
        let fake = self.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let method = request.method().as_str().to_owned();
                let path = request.uri().path().to_owned();
                let query = request.uri().query().unwrap_or("").to_owned();
                let bytes = request.into_body().collect_bytes().await.unwrap();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                fake.answer(client, &method, &path, &query, body, send);
            }
        })
    }

    /// Stores `object` as if created by someone else (a user's `kubectl apply`).
    pub fn create(&self, object: Value) -> Value {
        let mut state = self.state.lock().unwrap();
        let resource = resource_of(&object);
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        state.insert(&resource, &namespace, object)
    }

    /// The object, if stored.
    pub fn get(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let state = self.state.lock().unwrap();
        let key = (resource.to_owned(), namespace.to_owned(), name.to_owned());
        state.objects.get(&key).cloned()
    }

    /// Every stored object of `resource`.
    pub fn all(&self, resource: &str) -> Vec<Value> {
        let state = self.state.lock().unwrap();
        state
            .objects
            .iter()
            .filter(|((r, _, _), _)| r == resource)
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Lists of `resource` wait, from now on, until [`FakeApiserver::release_lists`]: an
    /// apiserver slow to list one kind, so that a client's caches become ready one after
    /// the other.
    pub fn hold_lists(&self, resource: &str) {
        self.state.lock().unwrap().held.push(resource.to_owned());
    }

    /// Answers the lists of `resource` held so far, and those to come at once.
    pub fn release_lists(&self, resource: &str) {
        let mut state = self.state.lock().unwrap();
        state.held.retain(|r| r != resource);
        let (now, later) = std::mem::take(&mut state.parked)
            .into_iter()
            .partition(|(r, ..)| r == resource);
        state.parked = later;
        let now: Vec<_> = now;
        for (resource, namespace, selector, send) in now {
            let list = state.list(&resource, namespace.as_deref(), &selector);
            respond(send, 200, &list);
        }
    }

    /// Forgets the requests so far (a new phase of a test counts from here).
    pub fn clear_requests(&self) {
        self.state.lock().unwrap().requests.clear();
    }

    fn answer(
        &self,
        client: &'static str,
        method: &str,
        path: &str,
        query: &str,
        body: Value,
        send: SendResponse<Response<Body>>,
    ) {
        let mut state = self.state.lock().unwrap();
        let watch = query_value(query, "watch").as_deref() == Some("true");
        state.requests.push(Recorded {
            client,
            method: method.to_owned(),
            path: path.to_owned(),
            watch,
        });
        let Some(target) = parse(path) else {
            return respond(send, 404, &status(404, "NotFound", path));
        };
        let namespace = target.namespace.clone().unwrap_or_default();
        let key = |name: &str| (target.resource.clone(), namespace.clone(), name.to_owned());
        match (method, &target.name) {
            ("GET", None) if watch => {
                let since = query_value(query, "resourceVersion")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                state.watches.push(Watch {
                    resource: target.resource.clone(),
                    since,
                    selector: selector(query),
                    respond: send,
                });
                state.flush_watches();
            }
            ("GET", None) if state.held.contains(&target.resource) => {
                let parked = (target.resource, target.namespace, selector(query), send);
                state.parked.push(parked);
            }
            ("GET", None) => {
                let list = state.list(
                    &target.resource,
                    target.namespace.as_deref(),
                    &selector(query),
                );
                respond(send, 200, &list);
            }
            ("GET", Some(name)) => match state.objects.get(&key(name)) {
                Some(object) => respond(send, 200, object),
                None => respond(send, 404, &status(404, "NotFound", name)),
            },
            ("POST", None) => {
                let mut object = body;
                if object["metadata"]["name"].as_str().is_none() {
                    let generated = format!(
                        "{}{}",
                        object["metadata"]["generateName"].as_str().unwrap_or("x-"),
                        state.version + 1
                    );
                    object["metadata"]["name"] = json!(generated);
                }
                let name = object["metadata"]["name"].as_str().unwrap().to_owned();
                if state.objects.contains_key(&key(&name)) {
                    let message = format!("{} \"{name}\" already exists", target.resource);
                    return respond(send, 409, &status(409, "AlreadyExists", &message));
                }
                object["metadata"]["namespace"] = json!(namespace);
                let stored = state.insert(&target.resource, &namespace, object);
                respond(send, 201, &stored);
            }
            ("PUT", Some(name)) => {
                let Some(current) = state.objects.get(&key(name)).cloned() else {
                    return respond(send, 404, &status(404, "NotFound", name));
                };
                if body["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
                    let message = "the object has been modified; please apply your changes to the latest version and try again";
                    return respond(send, 409, &status(409, "Conflict", message));
                }
                let mut object = body;
                for kept in ["uid", "creationTimestamp", "generation"] {
                    object["metadata"][kept] = current["metadata"][kept].clone();
                }
                let stored = state.update(&key(name), object);
                respond(send, 200, &stored);
            }
            ("PATCH", Some(name)) => {
                let current = state.objects.get(&key(name)).cloned();
                let object = match (current, target.status) {
                    (None, true) => return respond(send, 404, &status(404, "NotFound", name)),
                    (Some(mut current), true) => {
                        current["status"] = body["status"].clone();
                        current
                    }
                    // An apply that creates.
                    (None, false) => {
                        let mut object = body;
                        object["metadata"]["namespace"] = json!(namespace);
                        let stored = state.insert(&target.resource, &namespace, object);
                        return respond(send, 201, &stored);
                    }
                    (Some(current), false) => merged(current, body),
                };
                let stored = state.update(&key(name), object);
                respond(send, 200, &stored);
            }
            ("DELETE", Some(name)) => match state.objects.remove(&key(name)) {
                Some(object) => {
                    state.version += 1;
                    let version = state.version;
                    let resource = target.resource.clone();
                    state
                        .changes
                        .push((version, resource, "DELETED", object.clone()));
                    state.flush_watches();
                    respond(send, 200, &object);
                }
                None => respond(send, 404, &status(404, "NotFound", name)),
            },
            _ => respond(send, 405, &status(405, "MethodNotAllowed", path)),
        }
    }
}

/// An object applied whole over `current`: labels merged, the rest of what it sets
/// replaced.
fn merged(mut current: Value, applied: Value) -> Value {
    for (field, value) in applied.as_object().into_iter().flatten() {
        match field.as_str() {
            "metadata" => {
                for (k, v) in value.as_object().into_iter().flatten() {
                    if k == "labels" || k == "annotations" {
                        for (label, text) in v.as_object().into_iter().flatten() {
                            current["metadata"][k][label] = text.clone();
                        }
                    } else if k != "resourceVersion" {
                        current["metadata"][k] = v.clone();
                    }
                }
            }
            "apiVersion" | "kind" => {}
            _ => current[field] = value.clone(),
        }
    }
    current
}

fn resource_of(object: &Value) -> String {
    let kind = object["kind"].as_str().unwrap_or_default().to_lowercase();
    let vowel_before_y = kind
        .chars()
        .rev()
        .nth(1)
        .is_some_and(|c| "aeiou".contains(c));
    match kind.strip_suffix('y') {
        Some(stem) if !vowel_before_y => format!("{stem}ies"),
        _ if kind.ends_with('s') => format!("{kind}es"),
        _ => format!("{kind}s"),
    }
}

impl State {
    /// A list of `resource` (in `namespace`, or all) as the apiserver answers it.
    fn list(&self, resource: &str, namespace: Option<&str>, wanted: &[(String, String)]) -> Value {
        let items: Vec<Value> = self
            .objects
            .iter()
            .filter(|((r, ns, _), o)| {
                r == resource && namespace.is_none_or(|n| ns == n) && selected(o, wanted)
            })
            .map(|(_, o)| o.clone())
            .collect();
        json!({"apiVersion": "v1", "kind": "List",
               "metadata": {"resourceVersion": self.version.to_string()},
               "items": items})
    }

    fn insert(&mut self, resource: &str, namespace: &str, mut object: Value) -> Value {
        self.version += 1;
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        object["metadata"]["resourceVersion"] = json!(self.version.to_string());
        object["metadata"]["uid"] = json!(format!("uid-{resource}-{namespace}-{name}"));
        object["metadata"]["creationTimestamp"] = json!("2026-03-01T00:00:00Z");
        if has_generation(resource) {
            object["metadata"]["generation"] = json!(1);
        }
        let key = (resource.to_owned(), namespace.to_owned(), name);
        self.objects.insert(key, object.clone());
        self.changes
            .push((self.version, resource.to_owned(), "ADDED", object.clone()));
        self.flush_watches();
        object
    }

    /// Stores `object` over what is at `key`, unless it is the same (no new version).
    fn update(&mut self, key: &Key, mut object: Value) -> Value {
        let current = &self.objects[key];
        object["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        if object == *current {
            return object;
        }
        if has_generation(&key.0) && object["spec"] != current["spec"] {
            let generation = current["metadata"]["generation"].as_i64().unwrap_or(0);
            object["metadata"]["generation"] = json!(generation + 1);
        }
        self.version += 1;
        object["metadata"]["resourceVersion"] = json!(self.version.to_string());
        self.objects.insert(key.clone(), object.clone());
        self.changes
            .push((self.version, key.0.clone(), "MODIFIED", object.clone()));
        self.flush_watches();
        object
    }

    /// Answers every watch that has changes to tell, and ends it.
    fn flush_watches(&mut self) {
        let watches = std::mem::take(&mut self.watches);
        for watch in watches {
            let lines: String = self
                .changes
                .iter()
                .filter(|(version, resource, _, object)| {
                    *version > watch.since
                        && *resource == watch.resource
                        && selected(object, &watch.selector)
                })
                .map(|(_, _, kind, object)| {
                    format!("{}\n", json!({"type": kind, "object": object}))
                })
                .collect();
            if lines.is_empty() {
                self.watches.push(watch);
            } else {
                watch.respond.send_response(
                    Response::builder()
                        .status(200)
                        .body(Body::from(lines.into_bytes()))
                        .unwrap(),
                );
            }
        }
    }
}
