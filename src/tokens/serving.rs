//! What dev mode and the operator both do to serve the embedded store: open its file (or,
//! when it cannot be opened, stand in a store that answers 503, so that everything else
//! serves on), put a deadline on every call, and forget expired families once before
//! serving (what expired while authplane was down goes now) and then every minute ([`PURGE_EVERY`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::embedded::{EmbeddedStore, SessionLimits};
use super::embedded_sessions::EmbeddedSessionLog;
use super::metrics::TokenMetrics;
use super::session_log::SessionLog;
use super::{FamilyStore, Metered, Timed, Unavailable};
use crate::clock::Clock;

/// A store call that takes longer is answered 503.
pub const STORE_DEADLINE: Duration = Duration::from_secs(2);
/// Expired families are forgotten this often. They count against the embedded store's
/// memory budgets until then, so a budget reached by sessions that have expired refuses
/// logins at most this long; a purge scans memory once (a few milliseconds at 150,000
/// sessions) and commits one small transaction.
const PURGE_EVERY: Duration = Duration::from_secs(60);

/// A store as served: its families, and its log of ended sessions (`None` when the
/// store cannot be used: then logouts are written as Revocations).
pub struct Opened {
    pub families: Arc<dyn FamilyStore>,
    pub sessions: Option<Arc<dyn SessionLog>>,
}

/// The embedded store at `path`, holding families within `limits`, timed and metered; a file that cannot be opened is logged and the store
/// answers 503.
pub async fn open_embedded(path: PathBuf, limits: SessionLimits, metrics: TokenMetrics) -> Opened {
    let shown = path.display().to_string();
    let opened = tokio::task::spawn_blocking(move || {
        EmbeddedStore::open(Path::new(&path)).map(|store| store.with_limits(limits))
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|opened| opened.map_err(|e| e.to_string()));
    let mut sessions: Option<Arc<dyn SessionLog>> = None;
    let store: Arc<dyn FamilyStore> = match opened {
        Ok(store) => {
            tracing::info!(
                store = shown.as_str(),
                "token endpoint served at <issuer>/token"
            );
            sessions = Some(Arc::new(EmbeddedSessionLog::new(&store)));
            Arc::new(Timed::new(store, STORE_DEADLINE))
        }
        Err(e) => {
            tracing::error!(
                store = shown.as_str(),
                error = %e,
                "the token store cannot be opened: the token endpoint answers 503 (everything else is served)"
            );
            Arc::new(Unavailable(format!(
                "the token store {shown} cannot be opened"
            )))
        }
    };
    Opened {
        families: Arc::new(Metered::new(store, metrics)),
        sessions,
    }
}

/// Purges `store` now (awaited: before serving), then every [`PURGE_EVERY`] until `shutdown`.
pub async fn keep_purged(
    store: Arc<dyn FamilyStore>,
    clock: Arc<dyn Clock>,
    mut shutdown: watch::Receiver<bool>,
) {
    purge_once(&*store, &*clock).await;
    tokio::spawn(async move {
        let mut every = tokio::time::interval(PURGE_EVERY);
        every.tick().await; // immediate: the purge before serving was this one
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = every.tick() => purge_once(&*store, &*clock).await,
            }
        }
    });
}

async fn purge_once(store: &dyn FamilyStore, clock: &dyn Clock) {
    match store.purge(clock.now()).await {
        Ok(0) => {}
        Ok(purged) => tracing::info!(purged, "expired token sessions forgotten"),
        Err(e) => tracing::warn!(error = %e, "expired token sessions could not be purged"),
    }
}
