//! The state folder: dev mode's stand-in for Secrets. One JSON file per SigningKey,
//! `<state>/<namespace>/<name>.json`, holding the same map a Secret's `data` would.
//! Dev mode's key store and rollout store ([`FolderKeys`], [`FolderRollouts`]). Files
//! are mode 0600 in folders of mode 0700, written atomically (temporary file, fsync,
//! rename), so a crash at any point leaves either the old or the new content.

use std::collections::HashMap;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use jiff::Timestamp;

use crate::api::{AuthPolicy, RolloutProgress, SigningKey};
use crate::dev::manifests::ObjectKey;
use crate::driver::keys::{KeyStore, Stored};
use crate::driver::rollouts::{Recorded, RolloutStore};
use crate::metrics::Metrics;
use crate::registry::ServedKeys;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a key file: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

pub use crate::keys::store::Data;

#[derive(Clone, Debug)]
pub struct StateStore {
    root: PathBuf,
}

impl StateStore {
    /// A store at `root`, without touching the disk (for readers).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Opens (creating if needed) the state folder and restricts it to its owner.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StateError> {
        let store = Self::new(root);
        private_dir(&store.root)?;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, key: &ObjectKey) -> PathBuf {
        self.root
            .join(&key.namespace)
            .join(format!("{}.json", key.name))
    }

    /// The stored data of one SigningKey; `None` if it has none yet.
    pub fn load(&self, key: &ObjectKey) -> Result<Option<Data>, StateError> {
        read_json(self.path(key))
    }

    pub fn save(&self, key: &ObjectKey, data: &Data) -> Result<(), StateError> {
        self.write_json(&self.path(key), data)
    }

    /// Where an AuthPolicy's stepped-rollout progress is recorded. Namespaces cannot start
    /// with a dot, so this never meets a SigningKey's file.
    pub fn rollout_path(&self, key: &ObjectKey) -> PathBuf {
        self.root
            .join(".rollouts")
            .join(&key.namespace)
            .join(format!("{}.json", key.name))
    }

    pub fn load_rollout(&self, key: &ObjectKey) -> Result<Option<RolloutProgress>, StateError> {
        read_json(self.rollout_path(key))
    }

    pub fn save_rollout(
        &self,
        key: &ObjectKey,
        progress: &RolloutProgress,
    ) -> Result<(), StateError> {
        self.write_json(&self.rollout_path(key), progress)
    }

    /// Where the hash of a TokenClient's client secret is kept (dev mode's stand-in for
    /// ServiceAccount authentication). A dot folder, like the rollouts'.
    pub fn client_secret_path(&self, client: &ObjectKey) -> PathBuf {
        self.root
            .join(".token-clients")
            .join(&client.namespace)
            .join(format!("{}.json", client.name))
    }

    pub fn load_client_secret(
        &self,
        client: &ObjectKey,
    ) -> Result<Option<crate::token_endpoint::secret::StoredSecret>, StateError> {
        read_json(self.client_secret_path(client))
    }

    /// Replaces the client's secret (the old one stops working at once).
    pub fn save_client_secret(
        &self,
        client: &ObjectKey,
        secret: &crate::token_endpoint::secret::StoredSecret,
    ) -> Result<(), StateError> {
        self.write_json(&self.client_secret_path(client), secret)
    }

    /// Forgets an AuthPolicy's rollout progress (it left Enforce or lost its steps).
    pub fn remove_rollout(&self, key: &ObjectKey) -> Result<(), StateError> {
        let path = self.rollout_path(key);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(StateError::Io { path, source: e })
            }
            _ => Ok(()),
        }
    }

    fn write_json(&self, path: &Path, value: &impl serde::Serialize) -> Result<(), StateError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| StateError::Io { path, source }
        };
        let dir = path.parent().unwrap_or(&self.root);
        private_dir(dir)?;
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let tmp = dir.join(format!(".{name}.tmp"));
        let body = serde_json::to_vec_pretty(value).unwrap_or_default();
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        file.write_all(&body).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        fs::rename(&tmp, path).map_err(io(path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
        Ok(())
    }
}

/// The state folder as a key store. A file that vanished under a running server (the
/// folder was moved or deleted) is written back from the keys still served: those are
/// the truth, and new ones would break every token they signed.
pub(super) struct FolderKeys<'a> {
    pub(super) store: &'a StateStore,
    pub(super) served: Option<&'a ServedKeys>,
    pub(super) metrics: &'a Metrics,
    pub(super) now: Timestamp,
}

impl KeyStore for FolderKeys<'_> {
    type Error = StateError;
    type Version = ();

    async fn load(&self, id: &ObjectKey, key: &SigningKey) -> Result<Stored<()>, Self::Error> {
        let stored = self.store.load(id)?;
        let (Some(served), None) = (self.served, &stored) else {
            return Ok(Stored {
                data: stored,
                restore: false,
                version: (),
            });
        };
        let root = self.store.root();
        let gone = if root.exists() {
            format!("its state file {} is gone", self.store.path(id).display())
        } else {
            format!("the state folder {} is gone", root.display())
        };
        let kids: Vec<&str> = served
            .keys
            .records()
            .iter()
            .map(|r| r.material.kid())
            .collect();
        tracing::warn!(
            "SigningKey {id}: {gone}; writing back the {} keys still served ({}), no new key is made",
            kids.len(),
            kids.join(", ")
        );
        self.metrics.reload_error("keystore");
        Ok(Stored {
            data: Some(crate::keys::store::to_data(
                &served.keys,
                &served.published.issuer,
                key.key_policy().retain_for,
                self.now,
            )),
            restore: true,
            version: (),
        })
    }

    async fn save(
        &self,
        id: &ObjectKey,
        _: &SigningKey,
        data: &Data,
        _: &Stored<()>,
    ) -> Result<(), Self::Error> {
        self.store.save(id, data)
    }
}

/// The state folder as a rollout store. A record that vanished under a running server
/// (the state folder was moved or deleted), or no longer reads, is written back from
/// memory: the rollout must not start over.
pub(super) struct FolderRollouts<'a> {
    pub(super) store: &'a StateStore,
    /// The progress last recorded per policy.
    pub(super) remembered: &'a HashMap<ObjectKey, RolloutProgress>,
    pub(super) metrics: &'a Metrics,
}

impl RolloutStore for FolderRollouts<'_> {
    type Error = StateError;

    fn load(&self, id: &ObjectKey, _: &AuthPolicy) -> Result<Recorded, StateError> {
        let loaded = self.store.load_rollout(id);
        let remembered = self.remembered.get(id);
        let problem = match (&loaded, remembered) {
            (Ok(Some(_)), _) | (_, None) => {
                return loaded.map(|progress| Recorded {
                    progress,
                    restore: false,
                });
            }
            (Ok(None), Some(_)) => "is gone".to_owned(),
            (Err(e), Some(_)) => format!("is unreadable ({e})"),
        };
        tracing::warn!(
            "AuthPolicy {id}: its rollout record {} {problem}; writing back the progress still held",
            self.store.rollout_path(id).display()
        );
        self.metrics.reload_error("keystore");
        Ok(Recorded {
            progress: remembered.cloned(),
            restore: true,
        })
    }

    fn save(&self, id: &ObjectKey, progress: &RolloutProgress) -> Result<(), StateError> {
        self.store.save_rollout(id, progress)
    }

    fn remove(&self, id: &ObjectKey) -> Result<(), StateError> {
        self.store.remove_rollout(id)
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: PathBuf) -> Result<Option<T>, StateError> {
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StateError::Io { path, source }),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| StateError::Corrupt {
            path,
            reason: e.to_string(),
        })
}

fn private_dir(path: &Path) -> Result<(), StateError> {
    let io = |source| StateError::Io {
        path: path.to_owned(),
        source,
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(io)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_private_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path().join("state")).unwrap();
        let key = ObjectKey {
            namespace: "auth".into(),
            name: "web".into(),
        };
        assert!(store.load(&key).unwrap().is_none());
        let data: Data = [("a".to_owned(), "b".to_owned())].into();
        store.save(&key, &data).unwrap();
        assert_eq!(store.load(&key).unwrap(), Some(data));
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&store.path(&key)), 0o600);
        assert_eq!(mode(store.root()), 0o700);
        assert_eq!(mode(&store.root().join("auth")), 0o700);
        fs::write(store.path(&key), "garbage").unwrap();
        assert!(matches!(store.load(&key), Err(StateError::Corrupt { .. })));
    }
}
