//! Sessions authplane ends itself (a logout, a reused refresh token), kept in the token
//! store beside the families instead of as Revocation objects: one short record each,
//! appended to a log that every replica follows, expiring by itself.
//!
//! Why not Revocation objects: 10,000 users logging out within minutes were 10,000
//! objects, a write to the apiserver each (0.35–1.1 s), watched and indexed by every
//! replica (authplane's memory ×4). Revocation objects stay for the rare, audited acts
//! (an admin's `authplane revoke`, `kubectl apply`: a stolen token, a payment failed, a
//! subject, a key) and for installations without a token store.
//!
//! Every replica follows the log ([`follow`]): it loads every live entry before it counts
//! as ready, then reads what is appended after the last entry it read, waiting for it
//! (Redis: `XREAD BLOCK` on a stream; the embedded file: a notification in the process),
//! so an entry is in force everywhere within a second, and a read that failed or a
//! reconnection resumes from the same place (nothing can be missed, unlike a pub/sub
//! message). Entries reach the decision path as the Revocation objects do: through the
//! registry's [`crate::revocation::RevocationSet`], so `/authz`, gRPC `Check`,
//! TokenReview, the token endpoint's "a revocation ends the family" and `/revoke`'s
//! "in force here" see them unchanged.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use jiff::Timestamp;
use tokio::sync::watch;

use super::StoreError;
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::registry::{Registry, SourceState};
use crate::revocation::SessionSet;
use crate::revocation::sessions::{Inserted, SessionRevocation};

/// The input's name in `/readyz` and the logs.
pub const SOURCE: &str = "token store logouts";
/// The most entries one read returns.
pub const READ_BATCH: usize = 1000;
/// How long a read waits for a new entry before it returns empty (then the follower
/// reads again: a dead connection is noticed within this and the store's deadline).
pub const WAIT: Duration = Duration::from_secs(1);
/// Lapsed entries are dropped from memory this often.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// After a failed read, the next one waits this long.
const RETRY: Duration = Duration::from_millis(500);

/// Where in the log a follower is: the last entry it read (`(0, 0)`: none yet). In Redis,
/// a stream entry id (`milliseconds-sequence`); in the embedded file, a sequence number.
pub type Cursor = (u64, u64);

/// What one read found.
#[derive(Debug, Default)]
pub struct Read {
    pub revocations: Vec<SessionRevocation>,
    /// Entries that do not read (skipped).
    pub malformed: usize,
    /// Where the next read starts.
    pub next: Cursor,
}

/// The log of sessions ended in the token store.
pub trait SessionLog: Send + Sync + 'static {
    /// Appends one entry (idempotent for readers: the same session ended again is the
    /// same entry to them). Forgets entries that lapsed before `now` as it goes.
    fn record<'a>(
        &'a self,
        revocation: &'a SessionRevocation,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Up to [`READ_BATCH`] entries after `after`; with `wait`, waits that long for one
    /// when there is none yet.
    fn read(
        &self,
        after: Cursor,
        wait: Option<Duration>,
    ) -> BoxFuture<'_, Result<Read, StoreError>>;

    /// Forgets the entries that lapsed before `now`; how many. A store whose entries
    /// expire by themselves (Redis) has nothing to do.
    fn forget(&self, _now: Timestamp) -> BoxFuture<'_, Result<usize, StoreError>> {
        Box::pin(async { Ok(0) })
    }
}

/// Follows `log` into `registry` until `shutdown`: loads every entry first (awaited, so
/// that a process that can reach its store serves nothing before its logouts are in
/// force), then follows in a task.
///
/// `/readyz`: the input is "not listed yet" (not ready) until one load has succeeded,
/// because a replica that never read the logouts would accept logged-out tokens; a
/// store that is down at start keeps the replica out of service (the ones already
/// serving keep serving). Once loaded, a store that fails makes the input "failing"
/// (ready, degraded): decisions flow on with the entries already known, and
/// `authplane_session_revocations_last_sync_timestamp_seconds` says how old they are.
pub async fn follow(
    log: Arc<dyn SessionLog>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    mut shutdown: watch::Receiver<bool>,
) {
    registry.set_source(SOURCE, SourceState::Syncing);
    let mut follower = Follower {
        log,
        registry,
        metrics,
        clock,
        set: SessionSet::default(),
        cursor: (0, 0),
        loaded: false,
        warned_malformed: false,
        warned_full: false,
        failing: false,
    };
    // The first load, awaited briefly: a store that answers is in force before serving.
    let first = tokio::time::timeout(Duration::from_secs(5), follower.catch_up()).await;
    if !matches!(first, Ok(true)) {
        tracing::warn!(
            source = SOURCE,
            "the sessions ended in the token store could not be loaded yet: this replica is not ready until they are"
        );
    }
    tokio::spawn(async move {
        let mut prune = tokio::time::interval(PRUNE_EVERY);
        prune.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = prune.tick() => follower.prune().await,
                ok = follower.step() => if !ok {
                    tokio::select! {
                        _ = shutdown.changed() => return,
                        _ = tokio::time::sleep(RETRY) => {}
                    }
                },
            }
        }
    });
}

struct Follower {
    log: Arc<dyn SessionLog>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    set: SessionSet,
    cursor: Cursor,
    loaded: bool,
    warned_malformed: bool,
    warned_full: bool,
    failing: bool,
}

impl Follower {
    /// Counts an entry not held (refused, or displaced by another namespace's: `what`
    /// names `namespace`'s part), and says so once, with `why`.
    fn dropped(&mut self, what: &'static str, namespace: &str, why: &str) {
        self.metrics.tokens.session_revocations_dropped.inc();
        if !self.warned_full {
            self.warned_full = true;
            tracing::error!(
                source = SOURCE,
                held = self.set.len(),
                what,
                namespace,
                "{why}; counted in authplane_session_revocations_dropped_total"
            );
        }
    }

    /// Reads until nothing is left (the first load). True when it got to the end.
    async fn catch_up(&mut self) -> bool {
        loop {
            match self.read(None).await {
                Some(true) => continue,
                Some(false) => return true,
                None => return false,
            }
        }
    }

    /// One read that waits for new entries. False when it failed.
    async fn step(&mut self) -> bool {
        if !self.loaded {
            return self.catch_up().await;
        }
        self.read(Some(WAIT)).await.is_some()
    }

    /// One read, published. `Some(more)`: it succeeded, and a full batch was read (more
    /// may follow at once); `None`: it failed.
    async fn read(&mut self, wait: Option<Duration>) -> Option<bool> {
        let read = match self.log.read(self.cursor, wait).await {
            Ok(read) => read,
            Err(e) => {
                if !self.failing {
                    tracing::warn!(source = SOURCE, error = %e, "the sessions ended in the token store cannot be read (retrying; those known keep counting)");
                }
                self.failing = true;
                // Before the first load the replica stays out of service.
                let state = if self.loaded {
                    SourceState::Failing(e.to_string())
                } else {
                    SourceState::Syncing
                };
                self.registry.set_source(SOURCE, state);
                return None;
            }
        };
        let now = self.clock.now();
        let more = read.revocations.len() + read.malformed >= READ_BATCH;
        if read.malformed > 0 {
            self.metrics
                .tokens
                .session_revocations_malformed
                .inc_by(read.malformed as u64);
            if !self.warned_malformed {
                self.warned_malformed = true;
                tracing::warn!(
                    source = SOURCE,
                    skipped = read.malformed,
                    "entries of the token store's ended sessions do not read: skipped (counted in authplane_session_revocations_malformed_total; logged once)"
                );
            }
        }
        let mut changed = false;
        for revocation in &read.revocations {
            match self.set.insert(revocation, now) {
                Inserted::New => {
                    changed = true;
                    if self.loaded {
                        // Propagation: from the writer's clock to this replica.
                        let lag = now.as_second().saturating_sub(revocation.revoked_at) as f64;
                        self.metrics
                            .revocation_applied(revocation.reason.label(), Some(lag));
                    }
                }
                Inserted::Displaced { namespace } => {
                    changed = true;
                    self.dropped(
                        "displaced",
                        &namespace,
                        "too many sessions ended in the token store to hold in memory: the namespace holding the most gives up its entries to the others' (those are not enforced here any more: their families are revoked, their access tokens live out their lifetime)",
                    );
                }
                Inserted::Known => {}
                Inserted::Full => self.dropped(
                    "namespace",
                    &revocation.key.namespace,
                    "too many sessions ended in the token store to hold in memory, and this namespace holds as many as any other: its new ones are not enforced here (their families are revoked, their access tokens live out their lifetime)",
                ),
            }
        }
        self.cursor = read.next;
        self.metrics
            .tokens
            .session_revocations_synced(self.set.len(), now.as_second());
        if changed || !self.loaded {
            self.registry.publish_session_revocations(self.set.clone());
        }
        if !more && !self.loaded {
            self.loaded = true;
            tracing::info!(
                source = SOURCE,
                held = self.set.len(),
                "sessions ended in the token store loaded"
            );
        }
        if self.loaded
            && self.registry.set_source(SOURCE, SourceState::Synced) != Some(SourceState::Synced)
            && self.failing
        {
            tracing::info!(
                source = SOURCE,
                "the sessions ended in the token store are read again"
            );
        }
        if self.loaded {
            self.failing = false;
        }
        Some(more)
    }

    /// Drops the lapsed entries from memory, and has the store forget them (the
    /// embedded file; Redis forgets by itself).
    async fn prune(&mut self) {
        let now = self.clock.now();
        if self.set.prune(now) > 0 {
            self.registry.publish_session_revocations(self.set.clone());
        }
        if let Err(e) = self.log.forget(now).await {
            tracing::warn!(source = SOURCE, error = %e, "lapsed ended sessions could not be forgotten in the token store (retried)");
        }
    }
}
