//! The certificate from PEM files (a mounted Secret: cert-manager's `tls.crt` and
//! `tls.key`), reloaded when they change.
//!
//! The kubelet updates a mounted Secret by swapping the `..data` symlink in its folder,
//! so the files' folders are watched, not the files (whose own inodes never change). A
//! pair that does not load (half-written, mismatched, garbage) is refused with an error
//! and `authplane_reload_errors_total{source="tls"}`, and the previous certificate keeps
//! serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use rustls::sign::CertifiedKey;

use super::{CertSlot, TlsError, certified_key, fingerprint};
use crate::metrics::Metrics;

/// Writers touch a pair in several steps; read once they are done.
const SETTLE: Duration = Duration::from_millis(50);
/// Read again this often even without an event: a missed inotify event (a full queue, a
/// network file system) delays a renewal by a minute, not until the next restart.
const RECHECK: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    fn describe(&self) -> String {
        format!("{} and {}", self.cert.display(), self.key.display())
    }
}

/// Loads the pair and keeps `slot` up to date with it until `shutdown`. Fails only if the
/// first load fails: a server must not start without its certificate.
pub async fn watch(
    files: TlsFiles,
    slot: Arc<CertSlot>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<JoinHandle<()>, TlsError> {
    // Watch before the first read, so that no change between the two is missed.
    let (changes_tx, mut changes) = mpsc::channel(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !matches!(e.kind, EventKind::Access(_))) {
            let _ = changes_tx.try_send(()); // a full channel already means "reload"
        }
    })
    .map_err(|e| TlsError::Watch {
        path: files.describe(),
        reason: e.to_string(),
    })?;
    let mut folders: Vec<&Path> = [&files.cert, &files.key]
        .into_iter()
        .map(|p| {
            p.parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
        })
        .collect();
    folders.dedup();
    for folder in folders {
        watcher
            .watch(folder, RecursiveMode::NonRecursive)
            .map_err(|e| TlsError::Watch {
                path: folder.display().to_string(),
                reason: e.to_string(),
            })?;
    }
    let mut reloader = Reloader {
        files,
        slot,
        metrics,
        current: None,
        refused: None,
    };
    reloader.reload().await?;
    Ok(tokio::spawn(async move {
        let _watcher = watcher; // dropping it stops the events
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(()) = changes.recv() => {
                    tokio::time::sleep(SETTLE).await;
                    while changes.try_recv().is_ok() {}
                }
                () = tokio::time::sleep(RECHECK) => {}
            }
            let _ = reloader.reload().await;
        }
    }))
}

struct Reloader {
    files: TlsFiles,
    slot: Arc<CertSlot>,
    metrics: Arc<Metrics>,
    /// Fingerprint of the pair being served.
    current: Option<[u8; 32]>,
    /// Fingerprint of the last refusal (a bad pair, or a read error), so that it is
    /// reported once.
    refused: Option<[u8; 32]>,
}

impl Reloader {
    /// Reads the pair; serves it if it is new and loads. Refusals are logged and counted
    /// here (once per bad pair); the caller only needs the result at start-up.
    async fn reload(&mut self) -> Result<(), TlsError> {
        // A read can land between two steps of a writer that replaces the files one by
        // one: a pair that fails is read once more before it is refused.
        let mut loaded = self.load().await;
        if loaded.is_err() {
            tokio::time::sleep(SETTLE).await;
            loaded = self.load().await;
        }
        match loaded {
            Ok(None) => Ok(()),
            Ok(Some((print, key))) => {
                self.slot.set(key);
                let first = self.current.is_none();
                self.current = Some(print);
                self.refused = None;
                if first {
                    tracing::info!("TLS certificate loaded from {}", self.files.describe());
                } else {
                    tracing::info!(
                        "TLS certificate reloaded from {}: new connections use it",
                        self.files.describe()
                    );
                }
                Ok(())
            }
            Err((print, error)) => Err(self.refuse(print, error)),
        }
    }

    /// The pair if it is new and loads; `None` if it is the one served or the one last
    /// refused. A failure carries a fingerprint of what failed (the pair, or the read
    /// error), so that the same failure is reported once.
    async fn load(&self) -> Result<Option<([u8; 32], CertifiedKey)>, ([u8; 32], TlsError)> {
        let read = |path: PathBuf| async move {
            tokio::fs::read(&path)
                .await
                .map_err(|source| TlsError::Read {
                    path: path.display().to_string(),
                    source,
                })
        };
        let (cert, key) = match (
            read(self.files.cert.clone()).await,
            read(self.files.key.clone()).await,
        ) {
            (Ok(cert), Ok(key)) => (cert, key),
            (Err(e), _) | (_, Err(e)) => {
                let print = fingerprint(b"unreadable", e.to_string().as_bytes());
                return match self.refused == Some(print) {
                    true => Ok(None),
                    false => Err((print, e)),
                };
            }
        };
        let print = fingerprint(&cert, &key);
        if self.current == Some(print) || self.refused == Some(print) {
            return Ok(None);
        }
        certified_key(&cert, &key, &self.files.describe())
            .map(|key| Some((print, key)))
            .map_err(|e| (print, e))
    }

    fn refuse(&mut self, print: [u8; 32], error: TlsError) -> TlsError {
        self.refused = Some(print);
        self.metrics.reload_error("tls");
        if self.current.is_some() {
            tracing::error!(
                "refused the new TLS certificate: {error}; the previous one keeps serving"
            );
        }
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[tokio::test]
    async fn a_bad_pair_is_refused_once_and_the_old_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
        };
        let (cert, key) = pair("a.example");
        std::fs::write(&files.cert, &cert).unwrap();
        std::fs::write(&files.key, &key).unwrap();
        let metrics = Arc::new(Metrics::default());
        let mut reloader = Reloader {
            files: files.clone(),
            slot: Arc::new(CertSlot::default()),
            metrics: metrics.clone(),
            current: None,
            refused: None,
        };
        reloader.reload().await.unwrap();
        let served = reloader.slot.current.load_full().unwrap();

        // Another certificate with the old key: they do not belong together.
        let (other, _) = pair("b.example");
        std::fs::write(&files.cert, &other).unwrap();
        let error = reloader.reload().await.unwrap_err();
        assert!(matches!(error, TlsError::Mismatch(_)), "{error}");
        assert!(reloader.reload().await.is_ok(), "reported once");
        assert!(Arc::ptr_eq(
            &served,
            &reloader.slot.current.load_full().unwrap()
        ));
        assert!(
            metrics
                .encode()
                .contains("authplane_reload_errors_total{source=\"tls\"} 1")
        );
        assert!(!error.to_string().contains("PRIVATE KEY"));

        // A file that disappears is reported once too; its return is served.
        std::fs::remove_file(&files.key).unwrap();
        assert!(matches!(
            reloader.reload().await.unwrap_err(),
            TlsError::Read { .. }
        ));
        assert!(reloader.reload().await.is_ok(), "reported once");
        assert!(
            metrics
                .encode()
                .contains("authplane_reload_errors_total{source=\"tls\"} 2")
        );
        let (cert, key) = pair("c.example");
        std::fs::write(&files.cert, &cert).unwrap();
        std::fs::write(&files.key, &key).unwrap();
        reloader.reload().await.unwrap();
        assert!(!Arc::ptr_eq(
            &served,
            &reloader.slot.current.load_full().unwrap()
        ));

        std::fs::write(
            &files.key,
            "-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        assert!(matches!(
            reloader.reload().await.unwrap_err(),
            TlsError::BadKey { .. } | TlsError::Mismatch(_)
        ));
    }
}
