//! What the command-line tools read from a cluster: a SigningKey's keys from its Secret
//! (as the operator stores them), and an AuthPolicy with its recorded rollout.

use std::path::Path;

use jiff::SignedDuration;
use k8s_openapi::api::core::v1::Secret;
use kube::config::Kubeconfig;
use kube::{Api, Client};

use crate::api::{AuthPolicy, ObjectKey, SigningKey};
use crate::keys::lifecycle::KeySet;
use crate::keys::store;
use crate::operator::secret_store::check_owner;
use crate::operator::signing_keys::secret_data;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("reading {what}: {source}")]
    Api { what: String, source: kube::Error },
    #[error(
        "Secret {namespace}/{name} of SigningKey {id} does not exist (yet): is the operator running?"
    )]
    NoSecret {
        id: ObjectKey,
        namespace: String,
        name: String,
    },
    #[error("Secret {namespace}/{name} of SigningKey {id} is unreadable: {reason}")]
    Unreadable {
        id: ObjectKey,
        namespace: String,
        name: String,
        reason: String,
    },
}

/// The keys of one SigningKey, with what a token minted with them must respect.
#[derive(Debug)]
pub struct StoredKeys {
    pub keys: KeySet,
    /// The issuer recorded with the keys.
    pub issuer: Option<String>,
    /// How long a retired key stays in the JWKS: a token must not outlive it.
    pub retain_for: Option<SignedDuration>,
    /// The SigningKey's `maxTokenLifetime` (absent in dev-mode state written before it
    /// was recorded).
    pub max_token_lifetime: Option<SignedDuration>,
}

fn api_error(what: String) -> impl FnOnce(kube::Error) -> ClusterError {
    move |source| ClusterError::Api { what, source }
}

/// Reads a SigningKey and its Secret, as the operator stores it.
pub async fn signing_keys(client: Client, id: &ObjectKey) -> Result<StoredKeys, ClusterError> {
    let key = Api::<SigningKey>::namespaced(client.clone(), &id.namespace)
        .get(&id.name)
        .await
        .map_err(api_error(format!("SigningKey {id}")))?;
    let name = key.secret_name();
    let secret = Api::<Secret>::namespaced(client, &id.namespace)
        .get_opt(&name)
        .await
        .map_err(api_error(format!("Secret {}/{name}", id.namespace)))?
        .ok_or_else(|| ClusterError::NoSecret {
            id: id.clone(),
            namespace: id.namespace.clone(),
            name: name.clone(),
        })?;
    let unreadable = |reason: String| ClusterError::Unreadable {
        id: id.clone(),
        namespace: id.namespace.clone(),
        name: name.clone(),
        reason,
    };
    // The operator's own rule: a Secret that another SigningKey owns (a second one naming
    // the same secretName) holds that one's keys, not these.
    check_owner(&secret, &key).map_err(|e| unreadable(e.to_string()))?;
    let data = secret_data(&secret).map_err(|e| unreadable(e.to_string()))?;
    let keys = store::from_data(&data).map_err(|e| unreadable(e.to_string()))?;
    Ok(StoredKeys {
        keys,
        issuer: store::issuer(&data).map(str::to_owned),
        retain_for: Some(key.spec.rotation.retain_for.value()),
        max_token_lifetime: Some(key.spec.max_token_lifetime()),
    })
}

/// Reads an AuthPolicy, status (and so the recorded rollout progress) included.
pub async fn auth_policy(client: Client, id: &ObjectKey) -> Result<AuthPolicy, ClusterError> {
    Api::<AuthPolicy>::namespaced(client, &id.namespace)
        .get(&id.name)
        .await
        .map_err(api_error(format!("AuthPolicy {id}")))
}

/// Names the cluster a command talks to, for its report: the kubeconfig context, or
/// "in-cluster".
pub fn describe(kubeconfig: Option<&Path>) -> String {
    let config = match kubeconfig {
        Some(path) => Kubeconfig::read_from(path).ok(),
        None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
            && std::env::var_os("KUBECONFIG").is_none() =>
        {
            return "in-cluster configuration".to_owned();
        }
        None => Kubeconfig::read().ok(),
    };
    match config.and_then(|c| c.current_context) {
        Some(context) => format!("context {context:?}"),
        None => "the default kubeconfig".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::json;

    /// Answers each expected GET with its object, in order.
    async fn serve(
        mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
        answers: Vec<(&'static str, u16, serde_json::Value)>,
    ) {
        for (path, status, body) in answers {
            let (request, respond) = handle.next_request().await.expect(path);
            assert_eq!(
                (request.method().as_str(), request.uri().path()),
                ("GET", path)
            );
            respond.send_response(
                Response::builder()
                    .status(status)
                    .body(Body::from(serde_json::to_vec(&body).unwrap()))
                    .unwrap(),
            );
        }
    }

    fn web() -> ObjectKey {
        ObjectKey {
            namespace: "auth".into(),
            name: "web".into(),
        }
    }

    fn signing_key() -> serde_json::Value {
        json!({
            "apiVersion": "authplane.io/v1alpha1", "kind": "SigningKey",
            "metadata": {"name": "web", "namespace": "auth"},
            "spec": {"algorithm": "EdDSA", "secretName": "web-secret",
                     "rotation": {"retainFor": "2h"}},
        })
    }

    /// The Secret `web-secret` as the operator writes it for SigningKey `owner`, and the kid
    /// of its active key.
    fn stored_secret(owner: &str, now: jiff::Timestamp) -> (serde_json::Value, String) {
        use base64::Engine as _;
        let material =
            crate::keys::KeyMaterial::generate(crate::keys::Algorithm::EdDSA, 0).unwrap();
        let kid = material.kid().to_owned();
        let keys = KeySet::new(vec![crate::keys::lifecycle::KeyRecord {
            material,
            created: now,
            activates_at: now,
        }]);
        let data: serde_json::Map<String, serde_json::Value> = store::to_data(
            &keys,
            "https://auth.example/auth/web",
            SignedDuration::from_hours(2),
            now,
        )
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                base64::engine::general_purpose::STANDARD.encode(v).into(),
            )
        })
        .collect();
        let secret = json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "web-secret", "namespace": "auth", "labels": {
                "app.kubernetes.io/managed-by": "authplane", "authplane.io/signing-key": owner}},
            "data": data});
        (secret, kid)
    }

    /// `signing_keys` of auth/web, with `secret` as its Secret `web-secret`.
    async fn keys_beside(secret: serde_json::Value) -> Result<StoredKeys, ClusterError> {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(serve(
            handle,
            vec![
                (
                    "/apis/authplane.io/v1alpha1/namespaces/auth/signingkeys/web",
                    200,
                    signing_key(),
                ),
                ("/api/v1/namespaces/auth/secrets/web-secret", 200, secret),
            ],
        ));
        let stored = signing_keys(Client::new(service, "default"), &web()).await;
        server.await.unwrap();
        stored
    }

    #[tokio::test]
    async fn keys_are_read_from_the_secret_the_spec_names() {
        let now = jiff::Timestamp::now();
        let (secret, kid) = stored_secret("web", now);
        let stored = keys_beside(secret).await.unwrap();
        assert_eq!(stored.keys.active(now).unwrap().material.kid(), kid);
        assert_eq!(
            stored.issuer.as_deref(),
            Some("https://auth.example/auth/web")
        );
        assert_eq!(stored.retain_for, Some(SignedDuration::from_hours(2)));
    }

    /// `token mint --cluster` signs only with the keys of the SigningKey it names: a
    /// Secret that another SigningKey of the namespace owns is refused, as the operator
    /// refuses it.
    #[tokio::test]
    async fn another_signing_keys_secret_is_refused() {
        let (secret, _) = stored_secret("thief", jiff::Timestamp::now());
        let refused = keys_beside(secret)
            .await
            .expect_err("another SigningKey's Secret");
        assert_eq!(
            refused.to_string(),
            "Secret auth/web-secret of SigningKey auth/web is unreadable: the Secret belongs to SigningKey auth/thief"
        );
    }

    #[tokio::test]
    async fn a_missing_secret_is_named() {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let not_found = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "NotFound", "code": 404, "message": "secrets \"web-secret\" not found"});
        let server = tokio::spawn(serve(
            handle,
            vec![
                (
                    "/apis/authplane.io/v1alpha1/namespaces/auth/signingkeys/web",
                    200,
                    signing_key(),
                ),
                ("/api/v1/namespaces/auth/secrets/web-secret", 404, not_found),
            ],
        ));
        let error = signing_keys(Client::new(service, "default"), &web())
            .await
            .unwrap_err();
        server.await.unwrap();
        assert!(
            error.to_string().contains("Secret auth/web-secret"),
            "{error}"
        );
    }
}
