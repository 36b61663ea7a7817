//! Watches the manifests folder, and keeps watching it when it is deleted and created
//! again (`rm -rf m1; mkdir m1; cp ... m1/`): the parent folder is watched too, so the
//! new folder's creation is seen, and the folder's watch is re-established after any
//! event about the folder itself, or when the folder on disk is not the one watched.
//! (The inode alone cannot tell: a folder created right after a deletion often gets the
//! inode number just freed.)

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

pub struct FolderWatch {
    watcher: RecommendedWatcher,
    dir: PathBuf,
    /// (device, inode) of the folder being watched; `None` when no watch holds.
    watched: Option<(u64, u64)>,
    /// Set by an event about the folder itself (deleted, moved, created): its watch may
    /// be gone.
    stale: Arc<AtomicBool>,
}

impl FolderWatch {
    /// Watches `dir` (and its parent, for the folder's own creation), sending `()` on
    /// `changes` for every change under `dir`.
    pub fn new(dir: &Path, changes: mpsc::Sender<()>) -> notify::Result<Self> {
        let dir = std::path::absolute(dir).map_err(notify::Error::io)?;
        let filter = dir.clone();
        let stale = Arc::new(AtomicBool::new(false));
        let flag = stale.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let relevant = match event {
                    // Our own reads show up as access events; only changes matter. The parent's
                    // other entries are none of our business, and neither are files in the
                    // folder that are never read (a log file written there would otherwise
                    // make every log line a reload that logs more lines).
                    Ok(e) if matches!(e.kind, EventKind::Access(_)) => false,
                    Ok(e) => {
                        if e.paths.iter().any(|p| p == &filter) {
                            flag.store(true, Ordering::Release);
                        }
                        e.paths.iter().any(|p| {
                            p == &filter
                                || (p.parent() == Some(filter.as_path())
                                    && super::manifests::is_manifest_name(p))
                        })
                    }
                    // A lost event (queue overflow): read again to be sure.
                    Err(_) => true,
                };
                if relevant {
                    let _ = changes.try_send(()); // a full channel already means "reload"
                }
            })?;
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        let watched = identity(&dir);
        // Best effort: without it, the periodic rescan still finds a recreated folder.
        if let Some(parent) = dir.parent()
            && let Err(e) = watcher.watch(parent, RecursiveMode::NonRecursive)
        {
            tracing::warn!(
                "cannot watch {} ({e}): if {} is deleted and created again, changes are seen at the next rescan",
                parent.display(),
                dir.display()
            );
        }
        Ok(Self {
            watcher,
            dir,
            watched,
            stale,
        })
    }

    /// Watches the folder again if it may have been replaced since it was watched.
    /// Returns `true` when it did.
    pub fn refresh(&mut self) -> bool {
        let now = identity(&self.dir);
        if !self.stale.swap(false, Ordering::AcqRel) && now == self.watched {
            return false;
        }
        // The old watch died with the old folder; removing it may fail, and that is fine.
        let _ = self.watcher.unwatch(&self.dir);
        self.watched = None;
        if now.is_some() {
            match self.watcher.watch(&self.dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    // Had the folder been replaced again between the two calls, `watched`
                    // would not match and the next refresh would watch again: harmless.
                    self.watched = now;
                    tracing::debug!("watching {} again", self.dir.display());
                    return true;
                }
                Err(e) => tracing::warn!("cannot watch {}: {e}", self.dir.display()),
            }
        }
        false
    }
}

/// notify logs every filesystem event it sees, at trace level. With `RUST_LOG=trace` and
/// the log file in the manifests folder or its parent (both watched), every log line is
/// an event that logs a line, without end (1 GB in 5 s). So notify is held at `warn`
/// unless `RUST_LOG` names it: asking for notify's trace by name is asking for that.
pub fn quiet_watcher_logs(
    filter: tracing_subscriber::EnvFilter,
    rust_log: &str,
) -> tracing_subscriber::EnvFilter {
    if rust_log.contains("notify") {
        return filter;
    }
    match "notify=warn".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    }
}

fn identity(dir: &Path) -> Option<(u64, u64)> {
    let meta = std::fs::metadata(dir).ok()?;
    meta.is_dir().then(|| (meta.dev(), meta.ino()))
}
