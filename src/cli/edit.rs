//! Changes one object as `kubectl patch --type merge` would, in dev mode's manifests
//! folder or on a cluster: what `rotate`, `revoke-key` and `rollout` do. The change is
//! reviewed first as the apiserver and the admission webhook review it (one
//! implementation, the one dev mode applies too): a refusal writes nothing, a warning is
//! printed as kubectl prints the webhook's.

use std::path::PathBuf;
use std::sync::Arc;

use kube::Api;
use serde_json::Value;

use crate::admission::{self, Kind, SigningKeyIndex};
use crate::api::{AuthPolicy, ObjectKey, SigningKey};
use crate::cli::error::{self, CliError};
use crate::cli::manifest_edit;
use crate::cli::target::{TargetArgs, cluster_client};
use crate::clock::{Clock, SystemClock};
use crate::dev::manifests::Object;

/// The kinds the commands change.
pub(crate) trait Editable:
    kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
    + serde::Serialize
    + serde::de::DeserializeOwned
    + Clone
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    const KIND: Kind;
    fn from_object(object: Object) -> Option<Arc<Self>>;
}

impl Editable for SigningKey {
    const KIND: Kind = Kind::SigningKey;
    fn from_object(object: Object) -> Option<Arc<Self>> {
        match object {
            Object::SigningKey(key) => Some(key),
            _ => None,
        }
    }
}

impl Editable for AuthPolicy {
    const KIND: Kind = Kind::AuthPolicy;
    fn from_object(object: Object) -> Option<Arc<Self>> {
        match object {
            Object::AuthPolicy(policy) => Some(policy),
            _ => None,
        }
    }
}

/// What an edit did.
pub(crate) struct Edited<K> {
    /// The object after the edit (as it was, when nothing needed to change).
    pub object: K,
    /// Whether anything was written.
    pub changed: bool,
    /// Dev mode: the file written, and whether its other text (comments, formatting)
    /// was kept.
    pub file: Option<(PathBuf, bool)>,
}

/// Applies the merge patch `patch_of` computes from the object as it is now (`None`:
/// nothing to change) to `kind` `id`, where `target` says.
pub(crate) fn edit<K: Editable>(
    id: &ObjectKey,
    target: &TargetArgs,
    patch_of: impl FnOnce(&K) -> Result<Option<Value>, CliError>,
) -> Result<Edited<K>, CliError> {
    let kind = K::KIND.as_str();
    if let Some(dir) = &target.manifests {
        let mut document = manifest_edit::locate(dir, kind, id)?;
        let current = K::from_object(document.parsed()?).ok_or_else(|| {
            CliError::Refused(format!(
                "{} does not hold {kind} {id}",
                document.file.display()
            ))
        })?;
        let Some(patch) = patch_of(&current)? else {
            return Ok(Edited {
                object: K::clone(&current),
                changed: false,
                file: None,
            });
        };
        print_warnings(review(&*current, &patch)?);
        document.merge_patch(&patch)?;
        let saved = document.save()?;
        let object = K::from_object(saved.object)
            .map(|o| K::clone(&o))
            .unwrap_or_else(|| K::clone(&current));
        return Ok(Edited {
            object,
            changed: true,
            file: Some((saved.file, saved.in_place)),
        });
    }
    let runtime = error::runtime()?;
    runtime.block_on(async {
        let client = cluster_client(target.kubeconfig.as_ref()).await?;
        edit_on_cluster(client, id, patch_of).await
    })
}

/// The cluster's half of [`edit`]: reads the object, reviews the change, patches.
async fn edit_on_cluster<K: Editable>(
    client: kube::Client,
    id: &ObjectKey,
    patch_of: impl FnOnce(&K) -> Result<Option<Value>, CliError>,
) -> Result<Edited<K>, CliError> {
    let kind = K::KIND.as_str();
    let api: Api<K> = Api::namespaced(client, &id.namespace);
    let current = api
        .get(&id.name)
        .await
        .map_err(error::api(format!("reading {kind} {id}")))?;
    let Some(patch) = patch_of(&current)? else {
        return Ok(Edited {
            object: current,
            changed: false,
            file: None,
        });
    };
    print_warnings(review(&current, &patch)?);
    let object = api
        .patch(
            &id.name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(patch),
        )
        .await
        .map_err(error::api(format!("patching {kind} {id}")))?;
    Ok(Edited {
        object,
        changed: true,
        file: None,
    })
}

/// Warnings as `kubectl` prints the admission webhook's.
pub(crate) fn print_warnings(warnings: Vec<String>) {
    for warning in warnings {
        eprintln!("Warning: {warning}");
    }
}

/// An edit does not change which SigningKeys an object names: whether they exist is not
/// this command's news, so the review takes them as existing.
struct NamedKeysExist;

impl SigningKeyIndex for NamedKeysExist {
    fn contains(&self, _: &ObjectKey) -> bool {
        true
    }
}

/// The admission review of the change `patch` makes to `current` (an UPDATE): its
/// refusals refuse the edit, its warnings are returned.
pub(crate) fn review<K: Editable>(current: &K, patch: &Value) -> Result<Vec<String>, CliError> {
    let refused =
        |why: String| CliError::Refused(format!("the edit is refused, nothing was written: {why}"));
    let old = serde_json::to_value(current).map_err(|e| refused(e.to_string()))?;
    let mut new = old.clone();
    // RFC 7386: `null` removes, an object merges, anything else replaces.
    json_patch::merge(&mut new, patch);
    let verdict = admission::review(
        K::KIND,
        &new,
        Some(&old),
        None,
        &NamedKeysExist,
        SystemClock.now(),
    );
    if !verdict.allowed() {
        let problems: Vec<String> = verdict.refusals.iter().map(ToString::to_string).collect();
        return Err(refused(problems.join("; ")));
    }
    Ok(verdict.warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::json;

    fn policy(percentage: f64) -> Value {
        json!({
            "apiVersion": "authplane.io/v1alpha1", "kind": "AuthPolicy",
            "metadata": {"name": "payments", "namespace": "shop", "resourceVersion": "7"},
            "spec": {"issuers": [{"signingKeyRef": {"name": "web", "namespace": "auth"}}],
                     "audiences": ["payments"],
                     "rollout": {"mode": "Enforce", "percentage": percentage}},
        })
    }

    fn id() -> ObjectKey {
        ObjectKey {
            namespace: "shop".into(),
            name: "payments".into(),
        }
    }

    const PATH: &str = "/apis/authplane.io/v1alpha1/namespaces/shop/authpolicies/payments";

    /// On a cluster an edit is reviewed as on dev mode's folder: the object is read, the
    /// change reviewed as an UPDATE (a refusal sends nothing), then patched.
    #[tokio::test]
    async fn a_cluster_edit_reads_reviews_and_patches() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(
                (request.method().as_str(), request.uri().path()),
                ("GET", PATH)
            );
            send.send_response(Response::new(Body::from(
                policy(10.0).to_string().into_bytes(),
            )));
            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(
                (request.method().as_str(), request.uri().path()),
                ("PATCH", PATH)
            );
            send.send_response(Response::new(Body::from(
                policy(100.0).to_string().into_bytes(),
            )));
            assert!(handle.next_request().await.is_none(), "one GET, one PATCH");
        });
        let patch = json!({"spec": {"rollout": {"percentage": 100}}});
        let mut reviewed = None;
        let edited = edit_on_cluster::<AuthPolicy>(
            kube::Client::new(service, "default"),
            &id(),
            |current| {
                reviewed = Some(review(current, &patch)?);
                Ok(Some(patch.clone()))
            },
        )
        .await
        .unwrap();
        server.await.unwrap();
        assert!(edited.changed);
        assert_eq!(edited.object.spec.rollout.percentage, 100.0);
        let warnings = reviewed.unwrap();
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("enforces for 100% of users from 10% in one step")),
            "{warnings:?}"
        );
    }

    #[test]
    fn a_change_the_apiserver_would_refuse_is_refused_with_its_words() {
        let current: AuthPolicy = serde_json::from_value(policy(10.0)).unwrap();
        let refused =
            review(&current, &json!({"spec": {"rollout": {"percentage": 150}}})).unwrap_err();
        assert!(
            refused
                .to_string()
                .starts_with("the edit is refused, nothing was written: spec.rollout.percentage"),
            "{refused}"
        );
    }
}
