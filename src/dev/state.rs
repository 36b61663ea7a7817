//! The state folder: dev mode's stand-in for Secrets. One JSON file per SigningKey,
//! `<state>/<namespace>/<name>.json`, holding the same map a Secret's `data` would.
//! Files are mode 0600 in folders of mode 0700, written atomically (temporary file,
//! fsync, rename), so a crash at any point leaves either the old or the new content.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::dev::manifests::ObjectKey;

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

    pub fn load_rollout(
        &self,
        key: &ObjectKey,
    ) -> Result<Option<crate::api::RolloutProgress>, StateError> {
        read_json(self.rollout_path(key))
    }

    pub fn save_rollout(
        &self,
        key: &ObjectKey,
        progress: &crate::api::RolloutProgress,
    ) -> Result<(), StateError> {
        self.write_json(&self.rollout_path(key), progress)
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
