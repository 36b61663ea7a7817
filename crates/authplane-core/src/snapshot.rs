//! What the server reads, as the core publishes it: each issuer's documents rendered
//! once per change, and the compiled policies. Immutable once published.

use std::sync::Arc;

use aws_lc_rs::digest::{SHA256, digest};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use bytes::Bytes;
use jiff::{SignedDuration, Timestamp};
use serde_json::json;

use crate::api::ObjectKey;
use crate::keys::Algorithm;
use crate::keys::lifecycle::{KeyPolicy, KeySet, KeyState, add};
use crate::policy::CompiledPolicy;

/// Upper bound of the JWKS `max-age`: verifiers should notice a new key within minutes.
const MAX_JWKS_MAX_AGE_SECS: i64 = 300;

/// A published key's public facts and the instants of its lifecycle, for the status page:
/// the kid and algorithm are in the JWKS already; no key material.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyTimes {
    pub kid: String,
    pub alg: Algorithm,
    pub created: Timestamp,
    /// When it signs (Next until then).
    pub activates_at: Timestamp,
    /// When its successor signs, once that key exists.
    pub retires_at: Option<Timestamp>,
    /// When it leaves the JWKS (`retainFor` after it retired).
    pub removed_at: Option<Timestamp>,
}

impl KeyTimes {
    /// Its state at `now`, as [`KeySet::view`] derives it.
    pub fn state(&self, now: Timestamp) -> KeyState {
        match self.retires_at {
            _ if self.activates_at > now => KeyState::Next,
            Some(retired) if retired <= now => KeyState::Retired,
            _ => KeyState::Active,
        }
    }
}

/// A SigningKey's rotation schedule, as published with its keys.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rotation {
    /// A new key signs this often.
    pub every: SignedDuration,
    /// The next key is in the JWKS this long before it signs.
    pub pre_publish: SignedDuration,
    /// A retired key stays in the JWKS this long.
    pub retain_for: SignedDuration,
}

impl From<&KeyPolicy> for Rotation {
    fn from(policy: &KeyPolicy) -> Self {
        Self {
            every: policy.every,
            pre_publish: policy.pre_publish,
            retain_for: policy.retain_for,
        }
    }
}

impl Rotation {
    /// When the key after the newest one signs, on schedule (a manual rotation or a
    /// revocation comes earlier): `every` after the newest key's activation.
    pub fn next_activation(&self, keys: &[KeyTimes]) -> Option<Timestamp> {
        keys.last()
            .map(|newest| add(newest.activates_at, self.every))
    }
}

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
    /// The published keys in order of activation, with their lifecycle instants.
    pub keys: Vec<KeyTimes>,
    pub rotation: Rotation,
}

impl PublishedIssuer {
    /// Renders the public documents of a key set. `path` is the issuer's URL path.
    pub fn render(
        namespace: &str,
        name: &str,
        issuer: &str,
        keys: &KeySet,
        rotation: Rotation,
    ) -> Self {
        let Rotation {
            pre_publish,
            retain_for,
            ..
        } = rotation;
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
        let records = keys.records();
        let times = records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                // Records are ordered by activation: a key retires when the next signs.
                let retires_at = records.get(i + 1).map(|next| next.activates_at);
                KeyTimes {
                    kid: r.material.kid().to_owned(),
                    alg: r.material.alg(),
                    created: r.created,
                    activates_at: r.activates_at,
                    retires_at,
                    removed_at: retires_at.map(|t| add(t, retain_for)),
                }
            })
            .collect();
        Self {
            keys: times,
            rotation,
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

impl Snapshot {
    /// The published issuer `url` of one of `namespace`'s SigningKeys: where a session a
    /// TokenClient of `namespace` started is ended. A TokenClient signs with its own
    /// namespace's keys only, so an issuer of another namespace is never its session's,
    /// even at the same URL (a namespace free to claim any path may since serve it).
    pub fn issuer_of_namespace(&self, namespace: &str, url: &str) -> Option<&Arc<PublishedIssuer>> {
        self.issuers
            .values()
            .find(|published| published.namespace == namespace && published.issuer == url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyMaterial;
    use crate::keys::lifecycle::KeyRecord;

    fn at(hours: i64) -> Timestamp {
        add(Timestamp::UNIX_EPOCH, SignedDuration::from_hours(hours))
    }

    /// The status page shows each key's state from the published instants: the same
    /// state the lifecycle derives, at every instant, and the instants of each change.
    #[test]
    fn published_key_times_tell_the_lifecycle_without_the_keys() {
        let key = |created, activates| KeyRecord {
            material: KeyMaterial::generate(Algorithm::EdDSA, 0).unwrap(),
            created: at(created),
            activates_at: at(activates),
        };
        let keys = KeySet::new(vec![key(0, 0), key(23, 24), key(47, 48)]);
        let rotation = Rotation {
            every: SignedDuration::from_hours(24),
            pre_publish: SignedDuration::from_hours(1),
            retain_for: SignedDuration::from_hours(2),
        };
        let published = PublishedIssuer::render("auth", "web", "https://i", &keys, rotation);
        let times = &published.keys;
        assert_eq!(times[0].retires_at, Some(at(24)));
        assert_eq!(times[0].removed_at, Some(at(26)));
        assert_eq!((times[2].retires_at, times[2].removed_at), (None, None));
        // The key after the newest signs `every` after it.
        assert_eq!(rotation.next_activation(times), Some(at(72)));
        for hour in [0, 12, 23, 24, 25, 47, 48, 60] {
            let states: Vec<KeyState> = times.iter().map(|t| t.state(at(hour))).collect();
            let derived: Vec<KeyState> = keys
                .view(at(hour), rotation.retain_for)
                .iter()
                .map(|v| v.state)
                .collect();
            assert_eq!(states, derived, "at hour {hour}");
        }
        for (time, record) in times.iter().zip(keys.records()) {
            assert_eq!(time.kid, record.material.kid());
            assert_eq!(time.alg, Algorithm::EdDSA);
        }
    }
}
