//! What the server reads, as the core publishes it: each issuer's documents rendered
//! once per change, and the compiled policies. Immutable once published.

use std::sync::Arc;

use aws_lc_rs::digest::{SHA256, digest};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use bytes::Bytes;
use jiff::SignedDuration;
use serde_json::json;

use crate::api::ObjectKey;
use crate::keys::Algorithm;
use crate::keys::lifecycle::KeySet;
use crate::policy::CompiledPolicy;

/// Upper bound of the JWKS `max-age`: verifiers should notice a new key within minutes.
const MAX_JWKS_MAX_AGE_SECS: i64 = 300;

/// One issuer's discovery document and JWKS, serialized.
#[derive(Debug, PartialEq)]
pub struct PublishedIssuer {
    pub namespace: String,
    pub name: String,
    pub issuer: String,
    pub jwks_uri: String,
    pub jwks: Bytes,
    pub discovery: Bytes,
    /// Strong ETag of `jwks` (quoted).
    pub etag: String,
    /// `Cache-Control: max-age` for both documents.
    pub max_age_secs: i64,
}

impl PublishedIssuer {
    /// Renders the public documents of a key set. `path` is the issuer's URL path.
    pub fn render(
        namespace: &str,
        name: &str,
        issuer: &str,
        keys: &KeySet,
        pre_publish: SignedDuration,
    ) -> Self {
        let jwks_uri = format!("{}/.well-known/jwks.json", issuer.trim_end_matches('/'));
        let jwks: Vec<_> = keys
            .records()
            .iter()
            .map(|r| {
                r.material
                    .public_jwk()
                    .to_json(r.material.kid(), r.material.alg())
            })
            .collect();
        let jwks = Bytes::from(serde_json::to_vec(&json!({ "keys": jwks })).unwrap_or_default());
        let mut algorithms: Vec<Algorithm> =
            keys.records().iter().map(|r| r.material.alg()).collect();
        algorithms.sort_by_key(|a| a.as_str());
        algorithms.dedup();
        let algorithms: Vec<&str> = algorithms.iter().map(|a| a.as_str()).collect();
        // The shape of the Kubernetes service-account issuer's discovery document.
        let discovery = json!({
            "issuer": issuer,
            "jwks_uri": jwks_uri,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": algorithms,
        });
        let discovery = Bytes::from(serde_json::to_vec(&discovery).unwrap_or_default());
        let etag = format!(
            "\"{}\"",
            B64URL.encode(&digest(&SHA256, &jwks).as_ref()[..18])
        );
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            issuer: issuer.to_owned(),
            jwks_uri,
            jwks,
            discovery,
            etag,
            // A verifier that honours max-age refreshes well within prePublish, so it
            // knows the next key before that key signs.
            max_age_secs: (pre_publish.as_secs() / 2).clamp(0, MAX_JWKS_MAX_AGE_SECS),
        }
    }
}

/// One SigningKey as served: its public documents, and the keys policies verify with.
#[derive(Clone)]
pub struct ServedKeys {
    pub published: Arc<PublishedIssuer>,
    pub keys: KeySet,
    /// The SigningKey's `maxTokenLifetime`: policies refuse its longer tokens.
    pub max_token_lifetime: jiff::SignedDuration,
}

/// What the server reads. The maps are persistent: a new snapshot shares what did not
/// change with the last one (see [`crate::index`]).
#[derive(Default)]
pub struct Snapshot {
    /// By issuer URL path (`""` for an issuer at the root of its host).
    pub issuers: imbl::HashMap<String, Arc<PublishedIssuer>>,
    /// Compiled AuthPolicies by namespace/name.
    pub policies: imbl::HashMap<ObjectKey, Arc<CompiledPolicy>>,
    /// False while the AuthPolicies are not known (their watch has not listed them, for
    /// example because their CRD is missing): a policy that is not found may exist, so
    /// the answer is 503, not 404. Keys are served meanwhile.
    pub policies_known: bool,
    /// Every issuer path a SigningKey claims on this server, with the one serving it
    /// (`None`: several claimed it at the same instant, and none is served). For the
    /// admission webhook and SigningKey status.
    pub path_owners: imbl::HashMap<String, Option<ObjectKey>>,
    /// Every Secret (namespace/name) a SigningKey keeps keys in, with a SigningKey
    /// naming it. For the admission webhook.
    pub secrets: imbl::HashMap<ObjectKey, ObjectKey>,
}
