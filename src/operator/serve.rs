//! Serving on every replica: watches SigningKeys, the Secrets authplane manages and
//! AuthPolicies, and keeps the registry as dev mode does (same core, same server). The
//! request path never calls the API server.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::watch;

use super::signing_keys::{MANAGED_BY, secret_data};
use crate::admission::SigningKeyIndex;
use crate::api::{AuthPolicy, ObjectKey, SigningKey, Validate};
use crate::keys::store;
use crate::registry::{
    PolicyRuntime, PublishedIssuer, Registry, ServedKeys, SourceState, build_snapshot,
};

/// Changes arriving in a burst (a list, a rotation touching Secret and status) are applied
/// together.
const SETTLE: Duration = Duration::from_millis(50);

pub fn managed_selector() -> String {
    format!("{}={}", MANAGED_BY.0, MANAGED_BY.1)
}

/// The SigningKeys of the watch cache, for the admission webhook: one that does not
/// parse still exists (its own review refuses it, not the policies naming it).
pub struct KeyIndex(pub Store<DeserializeGuard<SigningKey>>);

impl SigningKeyIndex for KeyIndex {
    fn contains(&self, id: &ObjectKey) -> bool {
        self.0
            .get(&ObjectRef::new(&id.name).within(&id.namespace))
            .is_some()
    }
}

/// Runs the serving watches. `keys` is the SigningKey cache, made by the caller so that
/// the admission webhook can read it too.
pub async fn run(
    client: Client,
    external_url: String,
    registry: Arc<Registry>,
    runtime: Arc<PolicyRuntime>,
    keys: (
        Store<DeserializeGuard<SigningKey>>,
        reflector::store::Writer<DeserializeGuard<SigningKey>>,
    ),
    mut shutdown: watch::Receiver<bool>,
) {
    let (keys, keys_writer) = keys;
    let (secrets, secrets_writer) = reflector::store::<Secret>();
    let (policies, policies_writer) = reflector::store::<DeserializeGuard<AuthPolicy>>();
    let managed = watcher::Config::default().labels(&managed_selector());
    // Each watch is tagged with its index in WATCHES, so that a failing one is named.
    let tag = |index: usize| move |e: Result<(), watcher::Error>| (index, e);
    let streams = vec![
        reflector::reflector(
            keys_writer,
            watcher(Api::all(client.clone()), watcher::Config::default()),
        )
        .default_backoff()
        .map(|e| e.map(drop))
        .map(tag(0))
        .boxed(),
        reflector::reflector(secrets_writer, watcher(Api::all(client.clone()), managed))
            .default_backoff()
            .map(|e| e.map(drop))
            .map(tag(1))
            .boxed(),
        reflector::reflector(
            policies_writer,
            watcher(Api::all(client), watcher::Config::default()),
        )
        .default_backoff()
        .map(|e| e.map(drop))
        .map(tag(2))
        .boxed(),
    ];
    for name in WATCHES {
        registry.set_source(name, SourceState::Syncing);
    }
    let mut changes = futures::stream::select_all(streams);
    let mut view = View::default();
    loop {
        let mut batch = Vec::new();
        tokio::select! {
            _ = shutdown.changed() => return,
            change = changes.next() => match change {
                None => return,
                Some(change) => batch.push(change),
            },
        }
        tokio::time::sleep(SETTLE).await;
        while let Some(Some(change)) = changes.next().now_or_never() {
            batch.push(change);
        }
        let synced = [
            keys.wait_until_ready().now_or_never(),
            secrets.wait_until_ready().now_or_never(),
            policies.wait_until_ready().now_or_never(),
        ]
        .map(|r| matches!(r, Some(Ok(()))));
        // The last item of each watch in this batch says how it is doing now.
        let mut latest: [Option<Result<(), watcher::Error>>; 3] = Default::default();
        for (index, result) in batch {
            latest[index] = Some(result);
        }
        for (index, result) in latest.into_iter().enumerate() {
            match result {
                Some(Err(e)) => report(
                    &registry,
                    WATCHES[index],
                    SourceState::Failing(describe_watch_error(&e)),
                ),
                Some(Ok(())) if synced[index] => {
                    report(&registry, WATCHES[index], SourceState::Synced)
                }
                _ => {}
            }
        }
        // Serve per resource: the keys as soon as SigningKeys and Secrets are listed,
        // whatever the AuthPolicy watch does; the policies once listed, even while a key
        // watch fails (those of external issuers work, those of our keys fail closed).
        // Not while the key watches are merely still listing: policies would be served
        // for a moment without the keys they name.
        let key_watch_failing = registry.unsynced_sources().iter().any(|(name, state)| {
            WATCHES[..2].contains(name) && matches!(state, SourceState::Failing(_))
        });
        if (synced[0] && synced[1]) || (synced[2] && key_watch_failing) {
            let mut snapshot = view.rebuild(&keys, &secrets, &policies, &external_url, &runtime);
            snapshot.policies_known = synced[2];
            registry.publish(snapshot);
        }
    }
}

/// The serving watches, in the order of their streams.
const WATCHES: [&str; 3] = ["SigningKey watch", "Secret watch", "AuthPolicy watch"];

/// Records a watch's state, logging only when it changes. A failing watch is retried
/// with backoff; a watch that recovers and lists again reports `Synced`.
fn report(registry: &Registry, name: &'static str, state: SourceState) {
    let previous = registry.set_source(name, state.clone());
    if previous.as_ref() == Some(&state) {
        return;
    }
    match (&state, previous) {
        (SourceState::Failing(why), _) => tracing::warn!(
            "{name} failing: {why} (retrying with backoff; what was listed before keeps serving)"
        ),
        (SourceState::Synced, Some(SourceState::Failing(_))) => {
            tracing::info!("{name} recovered")
        }
        _ => {}
    }
}

/// A watch error in words, with the likely fix for a missing CRD.
fn describe_watch_error(error: &watcher::Error) -> String {
    let text = error.to_string();
    let missing = matches!(
        error,
        watcher::Error::InitialListFailed(kube::Error::Api(status))
            | watcher::Error::WatchStartFailed(kube::Error::Api(status))
            | watcher::Error::WatchFailed(kube::Error::Api(status))
            if status.code == 404
    );
    if missing {
        format!("{text}: is its CRD installed? (kubectl apply --server-side -f crds/)")
    } else {
        text
    }
}

/// The last good state, and what was already warned about (so a bad object is reported
/// once, not at every change).
#[derive(Default)]
struct View {
    served: HashMap<ObjectKey, ServedKeys>,
    warned: HashSet<String>,
}

impl View {
    fn warn_once(&mut self, message: String) {
        if self.warned.insert(message.clone()) {
            tracing::warn!("{message}");
        }
    }

    fn rebuild(
        &mut self,
        keys: &Store<DeserializeGuard<SigningKey>>,
        secrets: &Store<Secret>,
        policies: &Store<DeserializeGuard<AuthPolicy>>,
        external_url: &str,
        runtime: &PolicyRuntime,
    ) -> crate::registry::Snapshot {
        let mut served = HashMap::new();
        for guard in keys.state() {
            let key = match &guard.0 {
                Ok(key) => key,
                Err(invalid) => {
                    let id = ObjectKey::of(&invalid.metadata);
                    self.warn_once(format!(
                        "SigningKey {id} skipped, it does not parse: {}",
                        invalid.error
                    ));
                    continue;
                }
            };
            let id = ObjectKey::of(&key.metadata);
            if !key.validate().is_empty() {
                self.warn_once(format!("SigningKey {id} skipped: invalid spec"));
                continue;
            }
            let secret_ref = ObjectRef::<Secret>::new(&key.secret_name()).within(&id.namespace);
            let keyset = secrets
                .get(&secret_ref)
                .ok_or_else(|| "its Secret does not exist yet".to_owned())
                .and_then(|secret| secret_data(&secret).map_err(|e| e.to_string()))
                .and_then(|data| store::from_data(&data).map_err(|e| e.to_string()));
            match keyset {
                Ok(keyset) => {
                    let published = PublishedIssuer::render(
                        &id.namespace,
                        &id.name,
                        &key.issuer(external_url),
                        &keyset,
                        key.key_policy().pre_publish,
                    );
                    served.insert(
                        id,
                        ServedKeys {
                            published: Arc::new(published),
                            keys: keyset,
                        },
                    );
                }
                Err(reason) => match self.served.remove(&id) {
                    Some(last_good) => {
                        self.warn_once(format!(
                            "SigningKey {id}: {reason}; serving its last good keys"
                        ));
                        served.insert(id, last_good);
                    }
                    None => self.warn_once(format!("SigningKey {id} not served yet: {reason}")),
                },
            }
        }
        self.served = served;
        let mut valid = Vec::new();
        for guard in policies.state() {
            match &guard.0 {
                Ok(policy) if policy.validate().is_empty() => {
                    valid.push((ObjectKey::of(&policy.metadata), policy.clone()));
                }
                Ok(policy) => self.warn_once(format!(
                    "AuthPolicy {} skipped: invalid spec",
                    ObjectKey::of(&policy.metadata)
                )),
                Err(invalid) => self.warn_once(format!(
                    "AuthPolicy {} skipped, it does not parse: {}",
                    ObjectKey::of(&invalid.metadata),
                    invalid.error
                )),
            }
        }
        build_snapshot(&self.served, valid.iter().map(|(id, p)| (id, p)), runtime)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyMaterial;
    use k8s_openapi::ByteString;
    use kube::runtime::watcher::Event;
    use serde_json::json;

    fn runtime() -> PolicyRuntime {
        PolicyRuntime::new(
            Arc::new(crate::metrics::Metrics::default()),
            Arc::new(crate::clock::SystemClock),
            0,
        )
    }

    fn key(name: &str, spec: serde_json::Value) -> DeserializeGuard<SigningKey> {
        serde_json::from_value(json!({
            "apiVersion": "authplane.io/v1alpha1", "kind": "SigningKey",
            "metadata": {"name": name, "namespace": "auth"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn secret(name: &str, data: &crate::keys::store::Data) -> Secret {
        let mut secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "auth", "labels": {"app.kubernetes.io/managed-by": "authplane"}},
        }))
        .unwrap();
        secret.data = Some(
            data.iter()
                .map(|(k, v)| (k.clone(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        );
        secret
    }

    #[test]
    fn rebuild_serves_from_secrets_keeps_the_last_good_and_skips_the_malformed() {
        let (keys, mut keys_writer) = reflector::store::<DeserializeGuard<SigningKey>>();
        let (secrets, mut secrets_writer) = reflector::store::<Secret>();
        let (policies, _policies_writer) = reflector::store::<DeserializeGuard<AuthPolicy>>();

        let web = key("web", json!({"algorithm": "EdDSA"}));
        let Ok(web_key) = &web.0 else {
            panic!("web parses")
        };
        let now = jiff::Timestamp::now();
        let outcome = crate::reconcile::signing_key(
            web_key,
            None,
            "https://auth.example",
            now,
            &mut KeyMaterial::generate,
        )
        .unwrap();
        keys_writer.apply_watcher_event(&Event::Apply(web.clone()));
        keys_writer
            .apply_watcher_event(&Event::Apply(key("broken", json!({"algorithm": "HS256"}))));
        secrets_writer.apply_watcher_event(&Event::Apply(secret("web-keys", &outcome.data)));

        let mut view = View::default();
        let snapshot = view.rebuild(
            &keys,
            &secrets,
            &policies,
            "https://auth.example",
            &runtime(),
        );
        let served = &snapshot.issuers["/auth/web"];
        let jwks: serde_json::Value = serde_json::from_slice(&served.jwks).unwrap();
        assert_eq!(
            jwks["keys"][0]["kid"],
            outcome.keys.records()[0].material.kid()
        );
        assert_eq!(
            snapshot.issuers.len(),
            1,
            "the malformed SigningKey is skipped, the rest served"
        );

        // The Secret edited into garbage: the last good keys keep serving.
        let mut garbage = outcome.data.clone();
        garbage.insert("keys.json".into(), "{".into());
        secrets_writer.apply_watcher_event(&Event::Apply(secret("web-keys", &garbage)));
        let snapshot = view.rebuild(
            &keys,
            &secrets,
            &policies,
            "https://auth.example",
            &runtime(),
        );
        assert_eq!(snapshot.issuers["/auth/web"].jwks, served.jwks);
    }
}
