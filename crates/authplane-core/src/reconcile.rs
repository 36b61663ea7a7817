//! One SigningKey brought up to date: the steps every driver takes, whether the keys live
//! in a state file or in a Secret. Pure: the stored data and the time go in; the new
//! data, whether to write it, what happened, and what to publish come out.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::{KeyStatus, SigningKey, SigningKeyStatus, condition, conditions};
use crate::keys::lifecycle::{KeyEvent, KeyPolicy, KeySet, plan};
use crate::keys::store::{self, Data, StoreError};
use crate::keys::{Algorithm, KeyError, KeyMaterial};
use crate::snapshot::PublishedIssuer;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The stored keys cannot be read: nothing may be written over them.
    #[error("the stored keys are unreadable: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// The result of one reconcile of one SigningKey.
pub struct KeyOutcome {
    pub keys: KeySet,
    /// The stored form, as it must be after this reconcile.
    pub data: Data,
    /// `data` differs from what is stored: write it before publishing anything.
    pub write: bool,
    pub events: Vec<KeyEvent>,
    /// Another key signs than at the last write: on schedule, or early because the
    /// Active key was revoked (promoted, or made at once). Not the first key of a new
    /// SigningKey. What `authplane_key_rotations_total` counts.
    pub signing_key_changed: bool,
    pub next_wakeup: Option<Timestamp>,
    pub issuer: String,
    pub policy: KeyPolicy,
}

/// Plans a validated SigningKey against what is stored for it (`None`: nothing yet).
pub fn signing_key(
    key: &SigningKey,
    stored: Option<&Data>,
    external_url: &str,
    now: Timestamp,
    generate: &mut dyn FnMut(Algorithm, u32) -> Result<KeyMaterial, KeyError>,
) -> Result<KeyOutcome, ReconcileError> {
    let policy = key.key_policy();
    let issuer = key.issuer(external_url);
    let current = match stored {
        Some(data) => store::from_data(data)?,
        None => KeySet::default(),
    };
    let requests = key.requests().unwrap_or_default();
    let plan = plan(&current, &policy, &requests, now, generate)?;
    let mut data = store::to_data(&plan.keys, &issuer, policy.retain_for, now);
    // `token mint` refuses a longer TTL; it reads the keys, not the manifest.
    data.insert(
        store::MAX_TOKEN_LIFETIME.to_owned(),
        format!("{}s", key.spec.max_token_lifetime().as_secs()),
    );
    data.insert(
        store::ISSUER_SINCE.to_owned(),
        issuer_since(key, stored, &issuer, now).to_string(),
    );
    let mut events = plan.events;
    // Activation follows from time alone; the stored Active key tells whether it happened
    // since the last write (even while no driver ran). A revoked key is not "retired".
    let was = stored.and_then(|d| d.get(store::ACTIVE_KID));
    let is = data.get(store::ACTIVE_KID);
    if let (Some(was), Some(is)) = (was, is)
        && was != is
        && plan.keys.get(was).is_some()
    {
        events.push(KeyEvent::Activated { kid: is.clone() });
        events.push(KeyEvent::Retired { kid: was.clone() });
    }
    let signing_key_changed = was.is_some_and(|was| Some(was) != is);
    Ok(KeyOutcome {
        signing_key_changed,
        write: stored != Some(&data),
        keys: plan.keys,
        data,
        events,
        next_wakeup: plan.next_wakeup,
        issuer,
        policy,
    })
}

/// Since when the keys carry `issuer`, which decides who keeps an issuer path several
/// SigningKeys claim ([`crate::issuer_claims::ClaimRank`]): kept while the issuer stays;
/// now when it changes (a new claim); the object's creation for keys stored afresh (a
/// Secret deleted by hand gives up no claim). Data written before it was recorded counts
/// from its oldest key.
fn issuer_since(
    key: &SigningKey,
    stored: Option<&Data>,
    issuer: &str,
    now: Timestamp,
) -> Timestamp {
    match stored {
        Some(data) if store::issuer(data).is_none_or(|recorded| recorded == issuer) => {
            store::issuer_since(data)
                .or_else(|| store::first_created(data))
                .unwrap_or(now)
        }
        Some(_) => now,
        None => key
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(now, |created| created.0.min(now)),
    }
}

impl KeyOutcome {
    pub fn published(&self, namespace: &str, name: &str) -> PublishedIssuer {
        PublishedIssuer::render(
            namespace,
            name,
            &self.issuer,
            &self.keys,
            (&self.policy).into(),
        )
    }

    pub fn status(&self, generation: Option<i64>, now: Timestamp) -> SigningKeyStatus {
        let views = self.keys.view(now, self.policy.retain_for);
        let active = self.keys.active(now).map(|k| k.material.kid().to_owned());
        let ready = condition(
            conditions::READY,
            active.is_some(),
            conditions::reason::KEYS_READY,
            format!(
                "{} signs; {} keys published",
                active.as_deref().unwrap_or("no key"),
                views.len()
            ),
            generation,
            now,
        );
        SigningKeyStatus {
            observed_generation: generation,
            conditions: vec![ready],
            active_kid: active,
            keys: views
                .iter()
                .map(|v| KeyStatus {
                    kid: v.record.material.kid().to_owned(),
                    algorithm: v.record.material.alg().to_string(),
                    state: v.state.as_str().to_owned(),
                    created: Time(v.record.created),
                    activates_at: Time(v.record.activates_at),
                    retires_at: v.retires_at.map(Time),
                    removed_at: v.removed_at.map(Time),
                })
                .collect(),
            next_transition: self.next_wakeup.map(Time),
            jwks_uri: Some(format!(
                "{}/.well-known/jwks.json",
                self.issuer.trim_end_matches('/')
            )),
            issuer: Some(self.issuer.clone()),
        }
    }
}

/// How an event reads in logs and Kubernetes Events: reason, message, and whether it is
/// a warning.
pub fn describe(event: &KeyEvent, algorithm: Algorithm) -> (&'static str, String, bool) {
    match event {
        KeyEvent::Generated { kid, activates_at } => (
            "KeyGenerated",
            format!("generated {algorithm} key {kid}, signing from {activates_at}"),
            false,
        ),
        KeyEvent::Removed { kid } => (
            "KeyRemoved",
            format!("retired key {kid} removed from the JWKS"),
            false,
        ),
        KeyEvent::Discarded { kid } => (
            "KeyReplaced",
            format!("next key {kid} replaced before it signed"),
            false,
        ),
        KeyEvent::Revoked { kid } => (
            "KeyRevoked",
            format!("key {kid} revoked: removed from the JWKS, its tokens no longer verify"),
            true,
        ),
        KeyEvent::Promoted { kid } => (
            "KeyPromoted",
            format!("next key {kid} signs early, replacing a revoked key"),
            true,
        ),
        KeyEvent::Activated { kid } => ("KeyActivated", format!("key {kid} now signs"), false),
        KeyEvent::Retired { kid } => (
            "KeyRetired",
            format!("key {kid} retired: it no longer signs and stays in the JWKS for retainFor"),
            false,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::SignedDuration;

    /// `revoke-key` of the Active key makes another key sign at once: a rotation too,
    /// though no `Activated` event says so (it says `Promoted`, or a key is made).
    #[test]
    fn a_key_that_signs_early_after_a_revocation_is_a_change_of_signing_key() {
        let spec = serde_json::json!({"algorithm": "EdDSA", "rotation": {"every": "100s", "prePublish": "10s", "retainFor": "30s"}});
        let mut key: SigningKey = serde_json::from_value(serde_json::json!({
            "apiVersion": "authplane.io/v1alpha1", "kind": "SigningKey",
            "metadata": {"name": "web", "namespace": "auth"}, "spec": spec,
        }))
        .unwrap();
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let at = |s| t0 + SignedDuration::from_secs(s);
        let first = signing_key(&key, None, "https://x", t0, &mut KeyMaterial::generate).unwrap();
        // With a Next key published (promoted), and without one (a key made at once).
        let published = signing_key(
            &key,
            Some(&first.data),
            "https://x",
            at(95),
            &mut KeyMaterial::generate,
        )
        .unwrap();
        for (stored, when) in [(&first.data, at(5)), (&published.data, at(96))] {
            let active = stored[crate::keys::store::ACTIVE_KID].clone();
            key.metadata.annotations =
                Some([(crate::api::REVOKE_KIDS_ANNOTATION.to_owned(), active)].into());
            let revoked = signing_key(
                &key,
                Some(stored),
                "https://x",
                when,
                &mut KeyMaterial::generate,
            )
            .unwrap();
            assert!(revoked.signing_key_changed, "{:?}", revoked.events);
            assert!(
                !revoked
                    .events
                    .iter()
                    .any(|e| matches!(e, KeyEvent::Activated { .. })),
                "{:?}",
                revoked.events
            );
        }
    }

    #[test]
    fn an_activation_since_the_last_write_is_reported_once() {
        let key: SigningKey = serde_json::from_value(serde_json::json!({
            "apiVersion": "authplane.io/v1alpha1", "kind": "SigningKey",
            "metadata": {"name": "web", "namespace": "auth"},
            "spec": {"algorithm": "EdDSA", "rotation": {"every": "100s", "prePublish": "10s", "retainFor": "30s"}},
        }))
        .unwrap();
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let at = |s| t0 + SignedDuration::from_secs(s);
        let run = |stored: Option<&Data>, now| {
            signing_key(&key, stored, "https://x", now, &mut KeyMaterial::generate).unwrap()
        };
        let first = run(None, t0);
        let published = run(Some(&first.data), at(90));
        // Written at 90 s; the next key activated at 100 s, noticed at 120 s.
        let noticed = run(Some(&published.data), at(120));
        let next = published.keys.records()[1].material.kid().to_owned();
        let old = published.keys.records()[0].material.kid().to_owned();
        assert_eq!(
            noticed.events,
            [
                KeyEvent::Activated { kid: next },
                KeyEvent::Retired { kid: old }
            ]
        );
        assert!(noticed.write, "active.* follow the new key");
        assert!(noticed.signing_key_changed);
        assert!(!first.signing_key_changed, "the first key is no rotation");
        assert!(!published.signing_key_changed, "published is not signing");
        assert!(run(Some(&noticed.data), at(121)).events.is_empty());
    }

    #[test]
    fn the_issuer_claim_is_kept_until_the_issuer_changes() {
        let key = |issuer: Option<&str>| -> SigningKey {
            let mut spec = serde_json::json!({"algorithm": "EdDSA"});
            if let Some(issuer) = issuer {
                spec["issuer"] = issuer.into();
            }
            serde_json::from_value(serde_json::json!({
                "apiVersion": "authplane.io/v1alpha1", "kind": "SigningKey",
                "metadata": {"name": "web", "namespace": "auth"}, "spec": spec,
            }))
            .unwrap()
        };
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let at = |s| t0 + SignedDuration::from_secs(s);
        let run = |key: &SigningKey, stored: Option<&Data>, now| {
            signing_key(key, stored, "https://x", now, &mut KeyMaterial::generate).unwrap()
        };
        let since = |outcome: &KeyOutcome| store::issuer_since(&outcome.data);
        let first = run(&key(None), None, t0);
        assert_eq!(since(&first), Some(t0));
        let later = run(&key(None), Some(&first.data), at(500));
        assert_eq!(since(&later), Some(t0), "kept");
        let moved = run(
            &key(Some("https://x/auth/other")),
            Some(&later.data),
            at(600),
        );
        assert_eq!(since(&moved), Some(at(600)), "a new issuer is a new claim");
        // Data from before the entry existed counts from its oldest key.
        let mut old = first.data.clone();
        old.remove(store::ISSUER_SINCE);
        assert_eq!(since(&run(&key(None), Some(&old), at(700))), Some(t0));
    }
}
