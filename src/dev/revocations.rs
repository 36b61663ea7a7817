//! Revocations in dev mode: manifests in the folder like the other kinds. The loaded
//! ones feed the [`RevocationIndex`], whose set is published on its own (no policy is
//! compiled for it); `/revoke` and `authplane revoke` write new ones as files, which the
//! folder watch picks up as any edit.
//!
//! Dev mode deletes nothing: a lapsed Revocation stops counting and is reported once,
//! and its file stays until someone removes it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use jiff::Timestamp;

use crate::api::{AuthPolicy, ObjectKey, Revocation, TokenClient};
use crate::dev::manifests::Desired;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::revocation::RevocationIndex;
use crate::server::revoke::{RevocationWriter, WriteError, WriteFuture};

/// The index and what has been reported of it.
#[derive(Default)]
pub struct DevRevocations {
    index: RevocationIndex,
    /// Lapsed Revocations already reported.
    reported_expired: BTreeSet<ObjectKey>,
    /// Refusals already reported, by object, with their message.
    reported_refused: BTreeMap<ObjectKey, String>,
    /// The objects last applied: an unchanged one is not read again at every reload.
    applied: BTreeMap<ObjectKey, Arc<Revocation>>,
    /// Whether the folder's Revocations were applied once. Those found at start-up were
    /// created before it (across a restart, long before): their propagation is not
    /// observed, or every restart would fill the histogram's top bucket.
    started: bool,
    /// Likewise the AuthPolicies, whose token lifetimes decide when Revocations lapse.
    applied_policies: BTreeMap<ObjectKey, Arc<AuthPolicy>>,
    /// Likewise the TokenClients, whose refresh families a key's Revocations must outlive.
    applied_clients: BTreeMap<ObjectKey, Arc<TokenClient>>,
}

impl DevRevocations {
    /// Brings the index to the manifests' Revocations and the token lifetimes of their
    /// SigningKeys, AuthPolicies and TokenClients, and publishes the set.
    pub fn update(
        &mut self,
        desired: &Desired,
        now: Timestamp,
        registry: &Registry,
        metrics: &Metrics,
    ) {
        let Desired {
            signing_keys,
            auth_policies: policies,
            revocations,
            token_clients: clients,
        } = desired;
        let known: Vec<ObjectKey> = self.index.entries().map(|e| e.id.clone()).collect();
        for id in known {
            if !revocations.contains_key(&id) {
                self.index.delete(&id.namespace, &id.name);
                self.applied.remove(&id);
                self.reported_expired.remove(&id);
                tracing::info!("Revocation {id} removed");
            }
        }
        for id in signing_keys.keys() {
            self.index
                .set_key_lifetime(id.clone(), Some(signing_keys[id].spec.max_token_lifetime()));
        }
        let gone: Vec<ObjectKey> = self
            .index
            .entries()
            .filter_map(|e| match &e.issuer {
                crate::revocation::RevokedIssuer::Key(key) if !signing_keys.contains_key(key) => {
                    Some(key.clone())
                }
                _ => None,
            })
            .collect();
        for key in gone {
            self.index.set_key_lifetime(key, None);
        }
        self.applied_policies.retain(|id, _| {
            let kept = policies.contains_key(id);
            if !kept {
                self.index.delete_policy(id);
            }
            kept
        });
        for (id, policy) in policies {
            if self
                .applied_policies
                .get(id)
                .is_none_or(|applied| !Arc::ptr_eq(applied, policy))
            {
                self.index.apply_policy(policy);
                self.applied_policies.insert(id.clone(), policy.clone());
            }
        }
        self.applied_clients.retain(|id, _| {
            let kept = clients.contains_key(id);
            if !kept {
                self.index.delete_client(id);
            }
            kept
        });
        for (id, client) in clients {
            if self
                .applied_clients
                .get(id)
                .is_none_or(|applied| !Arc::ptr_eq(applied, client))
            {
                self.index.apply_client(client);
                self.applied_clients.insert(id.clone(), client.clone());
            }
        }
        self.reported_refused
            .retain(|id, _| revocations.contains_key(id));
        for (id, revocation) in revocations {
            if self.applied.get(id) == Some(revocation) {
                continue;
            }
            match self.index.apply(revocation, now) {
                Ok(false) => {
                    self.applied.insert(id.clone(), revocation.clone());
                }
                Ok(true) => {
                    self.applied.insert(id.clone(), revocation.clone());
                    self.reported_refused.remove(id);
                    if let Some(entry) = self.index.get(id) {
                        let lag = (now.as_millisecond() - entry.created.saturating_mul(1000))
                            as f64
                            / 1000.0;
                        // As fields: they come from the object (text fields are escaped).
                        let issuer = entry.issuer.to_string();
                        tracing::info!(
                            revocation = %id,
                            issuer = issuer.as_str(),
                            matcher = entry.matcher.to_string().as_str(),
                            reason = entry.reason.as_deref().unwrap_or(""),
                            "Revocation applied"
                        );
                        let fresh =
                            self.started && revocation.metadata.creation_timestamp.is_some();
                        metrics.revocation_applied(entry.reason_label, fresh.then_some(lag));
                    }
                }
                Err(refused) => {
                    let message = refused.to_string();
                    if self.reported_refused.get(id) != Some(&message) {
                        tracing::error!("refused: {message} (nothing of it is applied)");
                        metrics.reload_error("manifest");
                        self.reported_refused.insert(id.clone(), message);
                    }
                }
            }
        }
        for entry in self.index.expired(now) {
            if self.reported_expired.insert(entry.id.clone()) {
                tracing::warn!(
                    "Revocation {}: lapsed at {} (no token it matches can still pass); it no longer counts. Dev mode deletes nothing: remove its file",
                    entry.id,
                    self.index
                        .lapse(entry)
                        .at()
                        .and_then(|s| Timestamp::from_second(s).ok())
                        .map(|t| t.to_string())
                        .unwrap_or_default()
                );
            }
        }
        let (set, counts) = self.index.publish(now);
        metrics.observe_revocations(&counts);
        registry.publish_revocations(set);
        self.started = true;
    }
}

/// Writes Revocations as manifests into the folder, one file each.
pub struct ManifestWriter {
    pub dir: PathBuf,
}

impl ManifestWriter {
    /// The file of a Revocation.
    pub fn path(dir: &Path, id: &ObjectKey) -> PathBuf {
        dir.join(format!("revocation-{}-{}.yaml", id.namespace, id.name))
    }

    /// Writes the manifest unless the file exists (the same revocation again).
    pub fn write(dir: &Path, revocation: &Revocation) -> Result<PathBuf, WriteError> {
        let id = ObjectKey::of(&revocation.metadata);
        let path = Self::path(dir, &id);
        if path.exists() {
            return Ok(path);
        }
        let mut value =
            serde_json::to_value(revocation).map_err(|e| WriteError::Failed(e.to_string()))?;
        if let Some(members) = value.as_object_mut() {
            members.insert("apiVersion".into(), crate::api::API_VERSION.into());
            members.insert("kind".into(), "Revocation".into());
            members.remove("status");
        }
        // JSON is YAML whose strings are all double-quoted: YAML 1.1 readers (kubectl,
        // dev mode) cannot take a subject such as `no` for a boolean.
        let mut yaml =
            serde_json::to_string_pretty(&value).map_err(|e| WriteError::Failed(e.to_string()))?;
        yaml.push('\n');
        // A dot file is not read: the watch sees the finished file appear at once.
        let tmp = dir.join(format!(".{}.tmp", id.name));
        std::fs::write(&tmp, yaml)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| WriteError::Failed(format!("{}: {e}", path.display())))?;
        Ok(path)
    }
}

impl RevocationWriter for ManifestWriter {
    fn create(&self, revocation: Revocation) -> WriteFuture {
        let dir = self.dir.clone();
        Box::pin(async move {
            let written =
                tokio::task::spawn_blocking(move || ManifestWriter::write(&dir, &revocation))
                    .await
                    .map_err(|e| WriteError::Failed(e.to_string()))??;
            tracing::info!("revocation written to {}", written.display());
            Ok(())
        })
    }
}
