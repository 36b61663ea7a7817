//! The stored form of a key set: a flat map of names to text, the `data` of a Kubernetes
//! Secret or the content of a dev-mode state file. It is the source of truth for key
//! material and lifecycle instants; everything else (JWKS, status) is derived from it.
//!
//! ```text
//! keys.json    lifecycle: [{kid, alg, created, activatesAt}], ordered by activation
//! <kid>.pem    PKCS#8 PEM private key, one per kid
//! active.kid   \
//! active.alg    } the Active key under stable names, for workloads that mount the Secret
//! active.key   /
//! issuer       the issuer (`iss`) tokens signed with these keys must carry
//! retain-for   how long a retired key stays in the JWKS (`spec.rotation.retainFor`,
//!              in seconds): tools refuse to mint a token that would outlive its key
//! issuer-since since when these keys carry `issuer` (RFC 3339): of several SigningKeys
//!              claiming one issuer path, the earliest keeps it
//! ```
//!
//! Signers get less: [`signer_data`], the Active key alone, for the signer Secret.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use super::lifecycle::{KeyRecord, KeySet};
use super::{Algorithm, KeyMaterial};

/// The stored form: names to text, as in a Secret's `data`.
pub type Data = BTreeMap<String, String>;

pub const LIFECYCLE: &str = "keys.json";
pub const ACTIVE_KID: &str = "active.kid";
pub const ACTIVE_ALG: &str = "active.alg";
pub const ACTIVE_KEY: &str = "active.key";
pub const ISSUER: &str = "issuer";
pub const RETAIN_FOR: &str = "retain-for";
pub const ISSUER_SINCE: &str = "issuer-since";
/// The SigningKey's `maxTokenLifetime`, for tools that sign without the manifest.
pub const MAX_TOKEN_LIFETIME: &str = "max-token-lifetime";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum StoreError {
    /// A Secret entry that is not UTF-8 (key files are PEM and JSON).
    #[error("{0} is not text")]
    NotText(String),
    #[error("{LIFECYCLE} is missing")]
    MissingLifecycle,
    #[error("{LIFECYCLE} is not valid: {0}")]
    Lifecycle(String),
    #[error("key {kid}: {file} is missing")]
    MissingKey { kid: String, file: String },
    #[error("key {kid}: {file}: {reason}")]
    BadKey {
        kid: String,
        file: String,
        reason: String,
    },
    #[error("key {kid}: {file} holds a different key (its thumbprint is {actual})")]
    KidMismatch {
        kid: String,
        file: String,
        actual: String,
    },
    #[error("key {kid} is listed twice in {LIFECYCLE}")]
    Duplicate { kid: String },
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LifecycleEntry {
    kid: String,
    alg: Algorithm,
    created: Timestamp,
    activates_at: Timestamp,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Lifecycle {
    keys: Vec<LifecycleEntry>,
}

pub fn pem_file(kid: &str) -> String {
    format!("{kid}.pem")
}

/// Renders the stored form at `now` (which decides the `active.*` entries).
pub fn to_data(
    keys: &KeySet,
    issuer: &str,
    retain_for: SignedDuration,
    now: Timestamp,
) -> BTreeMap<String, String> {
    let lifecycle = Lifecycle {
        keys: keys
            .records()
            .iter()
            .map(|r| LifecycleEntry {
                kid: r.material.kid().to_owned(),
                alg: r.material.alg(),
                created: r.created,
                activates_at: r.activates_at,
            })
            .collect(),
    };
    let mut data = BTreeMap::new();
    let lifecycle = serde_json::to_string_pretty(&lifecycle).unwrap_or_default();
    data.insert(LIFECYCLE.to_owned(), lifecycle);
    for record in keys.records() {
        data.insert(pem_file(record.material.kid()), record.material.to_pem());
    }
    if let Some(active) = keys.active(now) {
        data.insert(ACTIVE_KID.to_owned(), active.material.kid().to_owned());
        data.insert(ACTIVE_ALG.to_owned(), active.material.alg().to_string());
        data.insert(ACTIVE_KEY.to_owned(), active.material.to_pem());
    }
    data.insert(ISSUER.to_owned(), issuer.to_owned());
    data.insert(RETAIN_FOR.to_owned(), format!("{}s", retain_for.as_secs()));
    data
}

/// Parses the stored form, checking every key against its kid. Names it does not know
/// are ignored, so that people may keep notes in the Secret.
pub fn from_data(data: &BTreeMap<String, String>) -> Result<KeySet, StoreError> {
    let lifecycle = data.get(LIFECYCLE).ok_or(StoreError::MissingLifecycle)?;
    let lifecycle: Lifecycle =
        serde_json::from_str(lifecycle).map_err(|e| StoreError::Lifecycle(e.to_string()))?;
    let mut records: Vec<KeyRecord> = Vec::with_capacity(lifecycle.keys.len());
    for entry in lifecycle.keys {
        if records.iter().any(|r| r.material.kid() == entry.kid) {
            return Err(StoreError::Duplicate { kid: entry.kid });
        }
        let file = pem_file(&entry.kid);
        let pem = data.get(&file).ok_or_else(|| StoreError::MissingKey {
            kid: entry.kid.clone(),
            file: file.clone(),
        })?;
        let material = KeyMaterial::from_pem(entry.alg, pem).map_err(|e| StoreError::BadKey {
            kid: entry.kid.clone(),
            file: file.clone(),
            reason: e.to_string(),
        })?;
        if material.kid() != entry.kid {
            return Err(StoreError::KidMismatch {
                kid: entry.kid,
                file,
                actual: material.kid().to_owned(),
            });
        }
        records.push(KeyRecord {
            material,
            created: entry.created,
            activates_at: entry.activates_at,
        });
    }
    Ok(KeySet::new(records))
}

/// The issuer recorded with the keys, for tools that sign without the manifest.
pub fn issuer(data: &BTreeMap<String, String>) -> Option<&str> {
    data.get(ISSUER).map(String::as_str)
}

/// Since when the keys carry their issuer (absent in data written before it was
/// recorded, or unreadable).
pub fn issuer_since(data: &BTreeMap<String, String>) -> Option<Timestamp> {
    data.get(ISSUER_SINCE)?.parse().ok()
}

/// The creation time of the oldest key listed, without reading the keys themselves.
pub fn first_created(data: &BTreeMap<String, String>) -> Option<Timestamp> {
    let lifecycle: Lifecycle = serde_json::from_str(data.get(LIFECYCLE)?).ok()?;
    lifecycle.keys.iter().map(|k| k.created).min()
}

/// What a workload that signs needs, and nothing more: the Active key under its stable
/// names, the issuer and the longest token lifetime. Neither the Next key nor the
/// retired ones, so that a leak of it ends with the next rotation. Empty when no key is
/// Active.
pub fn signer_data(data: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    if !data.contains_key(ACTIVE_KEY) {
        return BTreeMap::new();
    }
    [
        ACTIVE_KID,
        ACTIVE_ALG,
        ACTIVE_KEY,
        ISSUER,
        MAX_TOKEN_LIFETIME,
    ]
    .into_iter()
    .filter_map(|name| Some((name.to_owned(), data.get(name)?.clone())))
    .collect()
}

/// The longest token lifetime recorded with the keys (absent in data written before it
/// was recorded).
pub fn max_token_lifetime(data: &BTreeMap<String, String>) -> Option<SignedDuration> {
    data.get(MAX_TOKEN_LIFETIME)?
        .parse::<crate::api::Duration>()
        .ok()
        .map(|d| d.value())
}

/// The retention recorded with the keys (absent in data written before it was recorded).
pub fn retain_for(data: &BTreeMap<String, String>) -> Option<SignedDuration> {
    data.get(RETAIN_FOR)?
        .parse::<crate::api::Duration>()
        .ok()
        .map(|d| d.value())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (KeySet, Timestamp) {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let later: Timestamp = "2026-01-02T00:00:00Z".parse().unwrap();
        let keys = KeySet::new(vec![
            KeyRecord {
                material: KeyMaterial::generate(Algorithm::EdDSA, 0).unwrap(),
                created: t0,
                activates_at: t0,
            },
            KeyRecord {
                material: KeyMaterial::generate(Algorithm::ES256, 0).unwrap(),
                created: t0,
                activates_at: later,
            },
        ]);
        (keys, t0)
    }

    #[test]
    fn round_trip_keeps_keys_and_instants() {
        let (keys, now) = sample();
        let data = to_data(
            &keys,
            "https://issuer.example",
            SignedDuration::from_hours(24),
            now,
        );
        assert_eq!(from_data(&data).unwrap(), keys);
        assert_eq!(issuer(&data), Some("https://issuer.example"));
        assert_eq!(retain_for(&data), Some(SignedDuration::from_hours(24)));
        let active = keys.active(now).unwrap();
        assert_eq!(data[ACTIVE_KID], active.material.kid());
        assert_eq!(data[ACTIVE_KEY], active.material.to_pem());
        assert_eq!(first_created(&data), Some(now));
    }

    #[test]
    fn a_signer_gets_the_active_key_alone() {
        let (keys, now) = sample();
        let data = to_data(&keys, "https://issuer.example", SignedDuration::ZERO, now);
        let signer = signer_data(&data);
        assert_eq!(
            signer.keys().map(String::as_str).collect::<Vec<_>>(),
            [ACTIVE_ALG, ACTIVE_KEY, ACTIVE_KID, ISSUER]
        );
        assert_eq!(signer[ACTIVE_KEY], data[ACTIVE_KEY]);
        let next = keys.records()[1].material.kid();
        assert!(
            !signer.values().any(|v| *v == data[&pem_file(next)]),
            "not the Next key"
        );
        let none_active = to_data(
            &keys,
            "iss",
            SignedDuration::ZERO,
            now - SignedDuration::from_hours(1),
        );
        assert!(signer_data(&none_active).is_empty());
    }

    #[test]
    fn each_kind_of_damage_is_named() {
        let (keys, now) = sample();
        let good = to_data(&keys, "iss", SignedDuration::ZERO, now);
        let kid = keys.records()[0].material.kid().to_owned();
        let other = keys.records()[1].material.kid().to_owned();

        let mut data = good.clone();
        data.remove(LIFECYCLE);
        assert_eq!(from_data(&data), Err(StoreError::MissingLifecycle));

        let mut data = good.clone();
        data.insert(LIFECYCLE.into(), "{not json".into());
        assert!(matches!(from_data(&data), Err(StoreError::Lifecycle(_))));

        let mut data = good.clone();
        data.remove(&pem_file(&kid));
        assert!(matches!(
            from_data(&data),
            Err(StoreError::MissingKey { .. })
        ));

        let mut data = good.clone();
        data.insert(pem_file(&kid), "garbage".into());
        let err = from_data(&data).unwrap_err();
        assert!(err.to_string().contains(&pem_file(&kid)), "{err}");

        // A valid key of the right type under the wrong name.
        let mut data = good.clone();
        let swapped = KeyMaterial::generate(Algorithm::EdDSA, 0).unwrap().to_pem();
        data.insert(pem_file(&kid), swapped);
        assert!(matches!(
            from_data(&data),
            Err(StoreError::KidMismatch { .. })
        ));

        let mut data = good.clone();
        data.insert(pem_file(&kid), good[&pem_file(&other)].clone());
        assert!(matches!(from_data(&data), Err(StoreError::BadKey { .. })));
    }
}
