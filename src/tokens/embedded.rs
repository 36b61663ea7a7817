//! The embedded family store: one redb file (ACID transactions, copy-on-write B-trees, a
//! commit is durable when it returns), in the state folder or on a volume. For one
//! replica: a file cannot be shared.
//!
//! Tables: `families` (id → the family as JSON), `tokens` (SHA-256 of a refresh token →
//! family id and generation), `family_tokens` (id → its token hashes, to forget them with
//! it), `expiry` ((forget-after second, id) → (), the purge's index) and `sessions`
//! ((client, subject) → family ids, for support tools; written with the family and purged
//! with it, so it is never larger than `families`). A start reads `families` only: the
//! hashes of the families' current tokens are in them, and a token of an earlier
//! generation is looked up in `tokens` when it is presented. redb serialises write
//! transactions, so the compare-and-set is a read and a write in one transaction.
//!
//! Every family is also held in memory ([`super::embedded_memory`]): a lookup and the
//! compare-and-set are decided there, under a mutex, and never answer a state before the
//! writer has made it durable. The file is read only at start (and after a failed
//! commit), and for tokens of earlier generations than memory knows: the preceding one
//! after a start (a retry within the grace) and older ones (reuse).
//!
//! Writes are committed in groups: one writer thread takes every write waiting (up to
//! [`MAX_BATCH`]), applies them in order in one transaction, commits once (one fsync),
//! then answers each. A commit is durable before any of its writers hears back, so a
//! crash still loses nothing that was answered; under concurrent refreshes the cost of
//! the fsync is shared instead of paid per refresh (which capped one store at a few
//! hundred refreshes a second). Two rotations of one family decided concurrently are
//! one rotation and one lost race, decided in memory before either is queued. A failed
//! commit fails its group and every write queued behind it, and memory is reloaded from
//! the file before any of them hears back: memory is never left ahead of the disk. A
//! login or swap whose caller has gone by the time the writer takes it (the deadline
//! answered it 503) is not committed, and its family is put back in memory as the file
//! holds it, with whatever was decided on it since: a 503 means nothing changed. The
//! file is reopened for that reload (after an I/O error redb refuses every call on the
//! handle that met it), with a backoff while it does not open.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use jiff::Timestamp;
use redb::{
    Database, MultimapTableDefinition, ReadableDatabase, ReadableMultimapTable, ReadableTable,
    TableDefinition, WriteTransaction,
};

use super::embedded_memory::{Durability, Memory, footprint};
use super::{FamilyStore, Found, MAX_SESSIONS_LISTED, StoreError, namespace_of};
use crate::refresh::{Family, TokenHash};
use crate::revocation::SessionRevocation;

const FAMILIES: TableDefinition<&str, &[u8]> = TableDefinition::new("families");
const TOKENS: TableDefinition<&[u8], (&str, u64)> = TableDefinition::new("tokens");
const FAMILY_TOKENS: MultimapTableDefinition<&str, &[u8]> =
    MultimapTableDefinition::new("family_tokens");
const EXPIRY: TableDefinition<(i64, &str), ()> = TableDefinition::new("expiry");
const SESSIONS: MultimapTableDefinition<(&str, &str), &str> =
    MultimapTableDefinition::new("sessions");
/// Files of earlier versions: id → the hash of the preceding generation's token, written
/// with each rotation (a fifth of a rotation's cost) so that a start could find preceding
/// tokens without `tokens`. It is dropped at open: an entry left behind by this version's
/// rotations would name an older generation's token as the preceding one.
const PRECEDING: TableDefinition<&str, &[u8]> = TableDefinition::new("preceding");

/// redb's page cache is a ceiling, not an allocation; its default (1 GiB) is far more than
/// families need (about 1 KiB each).
const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// The most writes one transaction takes.
const MAX_BATCH: usize = 256;

/// The most writes waiting for the writer. A decision is taken only with a place in the
/// queue reserved: a writer that is behind (a stalled disk) refuses new decisions with
/// 503 and nothing changes, instead of queueing decisions (and their memory) without
/// bound and committing rotations long after their clients were told 503 (whose retries
/// would then be outside the grace: reuse, the session ended). Below that bound, a
/// decision whose caller stopped waiting (the store's deadline answered it 503) is not
/// committed either: see [`split_abandoned`].
const QUEUE: usize = 4096;

/// How much the store holds in memory: every family is held until its absolute expiry
/// (revoked or idle-dead ones too), and logins are a client's to make, so without
/// budgets one tenant's workload could fill the process's memory (and again at every
/// start, which reads them all). A login beyond a budget is refused (503); refreshes go
/// on. Sizes are [`footprint`](super::embedded_memory::footprint)s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    /// What all families may hold (`--session-memory-mib`).
    pub total_bytes: usize,
    /// What the families of one namespace's TokenClients may hold
    /// (`--session-memory-per-namespace-mib`), so that one tenant cannot take the whole
    /// budget: a tenant may create any number of TokenClients in its namespace, so a
    /// budget per client would bound nothing.
    pub bytes_per_namespace: usize,
    /// How many families one client may hold (`--max-sessions-per-client`; none by
    /// default: the byte budgets bound memory).
    pub sessions_per_client: Option<usize>,
}

/// The default budgets, sized for the chart's memory limit (512 MiB): half of it for
/// sessions (about 150,000 without custom claims, 10,000 with the largest), a quarter
/// (half of that) for one namespace.
pub const SESSION_MEMORY_MIB: usize = 256;
pub const SESSION_MEMORY_PER_NAMESPACE_MIB: usize = 128;

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            total_bytes: SESSION_MEMORY_MIB << 20,
            bytes_per_namespace: SESSION_MEMORY_PER_NAMESPACE_MIB << 20,
            sessions_per_client: None,
        }
    }
}

/// The first wait before the file is reopened again after a reopen or reload failed;
/// doubled at each failure, up to [`MAX_REOPEN_BACKOFF`].
const REOPEN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_REOPEN_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Handle>,
    shared: Arc<Shared>,
    writer: Arc<Writer>,
    /// Logins beyond these are refused.
    limits: SessionLimits,
}

/// The budget a login would exceed.
#[derive(Clone, Copy)]
enum Beyond {
    Sessions,
    NamespaceMemory,
    Memory,
}

/// How the file is opened.
type Opener = Box<dyn Fn() -> Result<Database, StoreError> + Send + Sync>;

/// The open file. Once a write has failed on a real I/O error, redb answers `PreviousIo`
/// to every later call on that handle, so a reload through it would never succeed: the
/// file is reopened instead (redb then recovers the last commit). redb locks the file,
/// so the old handle is closed before the new one is opened; calls in between answer
/// unavailable.
struct Handle {
    db: RwLock<Option<Database>>,
    open: Opener,
}

impl Handle {
    /// Runs `job` on the open file (holding it open meanwhile).
    fn with<T>(
        &self,
        job: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let db = self.db.read().unwrap_or_else(PoisonError::into_inner);
        let db = db.as_ref().ok_or_else(|| {
            StoreError::Unavailable(
                "the token store's file is closed after an I/O error and not yet reopened".into(),
            )
        })?;
        job(db)
    }

    /// Closes the file and opens it again. The file stays closed when opening fails.
    fn reopen(&self) -> Result<(), StoreError> {
        let mut db = self.db.write().unwrap_or_else(PoisonError::into_inner);
        drop(db.take());
        *db = Some((self.open)()?);
        Ok(())
    }
}

/// Whether reloading the file fails, and when to try again: reopening a file whose disk
/// is gone at every request would flood the disk and the logs.
struct Reopening {
    /// The first wait ([`REOPEN_BACKOFF`]; tests make it longer).
    first: Duration,
    /// The wait after the last failure (none: the last reload succeeded).
    backoff: Option<Duration>,
    not_before: Option<Instant>,
}

/// What the callers and the writer thread share: the families in memory and how far
/// the writer has made them durable.
struct Shared {
    memory: Mutex<Memory>,
    durability: Durability,
    /// A reload is queued for the writer (so that a flood of calls on poisoned memory
    /// queues one, not one each).
    reload_queued: AtomicBool,
    /// Fails the next commit, to test what a failing disk does.
    #[cfg(test)]
    fail_next_commit: AtomicBool,
    /// When the file may be reopened again (after failures).
    reopening: Mutex<Reopening>,
    /// The writer thread died (a panic): nothing will be written or reloaded any more.
    stopped: AtomicBool,
    /// The sequence number of the last entry committed to the log of ended sessions, for
    /// its followers in this process ([`super::embedded_sessions`]).
    ended_sessions: tokio::sync::watch::Sender<u64>,
    /// Clients whose logins are being refused for their cap (logged once per episode).
    capped: Mutex<std::collections::HashSet<String>>,
    /// Holds the writer (a stalled disk): when set, the writer takes one write, says so
    /// on the first channel, and waits on the second before writing anything.
    #[cfg(test)]
    hold: Mutex<Option<(std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>)>>,
}

/// One write for the writer thread. The compare-and-set is decided in memory before
/// the write is queued: on disk a write is a plain put.
enum Op {
    Create(Box<Family>),
    /// The family's new state; `rotated`: it has a new token (record its hash); `ended`:
    /// it ends the family, and this is its session's entry in the log of ended sessions,
    /// appended in the same transaction.
    Put {
        family: Box<Family>,
        rotated: bool,
        ended: Option<LogEntry>,
    },
    Purge(Timestamp),
    /// Appends an entry to the log of ended sessions; answers its sequence number.
    EndSession(LogEntry),
    /// Reload memory from the file if it is poisoned (a commit failed earlier and the
    /// reload then failed too).
    Reload,
}

impl Op {
    /// The family a login or a swap writes.
    fn family(&self) -> Option<&str> {
        match self {
            Op::Create(family) | Op::Put { family, .. } => Some(&family.id),
            Op::Purge(_) | Op::EndSession(_) | Op::Reload => None,
        }
    }

    /// Whether the write ends its family (a logout, a reuse detected). Such a write is
    /// committed even when its caller has gone: a session a client asked to end, or that
    /// a replayed token exposed, must end though the answer was lost (a retried logout
    /// finds it ended; a retried refresh is refused). Undoing it would leave a session
    /// alive that someone meant to kill, which is worse than a late commit.
    fn ends_family(&self) -> bool {
        matches!(self, Op::Put { family, .. } if family.revoked.is_some())
    }
}

/// An entry of the log of ended sessions ([`SessionRevocation::encode`]), and when it is
/// written (Unix seconds: the append forgets entries lapsed by then).
struct LogEntry {
    line: String,
    now: i64,
}

impl LogEntry {
    /// `ended`, written at `now`.
    fn at(ended: &SessionRevocation, now: i64) -> Self {
        Self {
            line: ended.encode(),
            now,
        }
    }
}

/// A queued write: the operation, the sequence number of the decision it makes durable
/// (0: none, e.g. the log of ended sessions), where its answer goes.
struct Queued {
    op: Op,
    sequence: u64,
    reply: Reply,
}

type Reply = tokio::sync::oneshot::Sender<Result<usize, StoreError>>;
/// A queued write's answer, once committed: the number of things written.
type Committed = BoxFuture<'static, Result<usize, StoreError>>;

/// The writer thread and its queue. Dropped with the last clone of the store: the queue
/// closes, the thread finishes what it holds and ends, and the file is closed when this
/// returns (so that it can be opened again at once).
struct Writer {
    queue: Option<tokio::sync::mpsc::Sender<Queued>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl EmbeddedStore {
    /// Opens the file, creating it (mode 0600: it holds no token, but who logged in
    /// when is nobody else's business) when missing, and reads its families into
    /// memory. Blocking.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let owned = path.to_owned();
        Self::open_with(path, Box::new(move || open_file(&owned)))
    }

    /// Opens the file through `open` (also used to reopen it after an I/O error).
    fn open_with(path: &Path, open: Opener) -> Result<Self, StoreError> {
        let db = open()?;
        // The tables exist from the start, so that reads never meet a missing table.
        write(&db, |txn| {
            txn.open_table(FAMILIES)?;
            txn.open_table(TOKENS)?;
            txn.open_multimap_table(FAMILY_TOKENS)?;
            txn.open_table(EXPIRY)?;
            txn.open_multimap_table(SESSIONS)?;
            txn.delete_table(PRECEDING)?;
            Ok(true)
        })
        .map_err(|e| in_file(path, e))?;
        let memory = decoding(|| load(&db)).map_err(|e| in_file(path, e))?;
        let db = Arc::new(Handle {
            db: RwLock::new(Some(db)),
            open,
        });
        let shared = Arc::new(Shared {
            memory: Mutex::new(memory),
            durability: Durability::new(),
            reload_queued: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            ended_sessions: tokio::sync::watch::Sender::new(0),
            #[cfg(test)]
            fail_next_commit: AtomicBool::new(false),
            reopening: Mutex::new(Reopening {
                first: REOPEN_BACKOFF,
                backoff: None,
                not_before: None,
            }),
            capped: Mutex::new(Default::default()),
            #[cfg(test)]
            hold: Mutex::new(None),
        });
        let (queue, receiver) = tokio::sync::mpsc::channel::<Queued>(QUEUE);
        let (writer_db, writer_shared) = (db.clone(), shared.clone());
        let thread = std::thread::Builder::new()
            .name("token-store-writer".into())
            .spawn(move || run_writer(&writer_db, &writer_shared, receiver))
            .map_err(|e| {
                StoreError::Unavailable(format!("cannot start the store's writer: {e}"))
            })?;
        Ok(Self {
            db,
            shared,
            writer: Arc::new(Writer {
                queue: Some(queue),
                thread: Some(thread),
            }),
            limits: SessionLimits::default(),
        })
    }

    /// Wakes on each commit that appends to the log of ended sessions: its value is the
    /// sequence number of the last entry committed.
    pub(super) fn ended_sessions(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.ended_sessions.subscribe()
    }

    /// Refuses logins beyond `limits` (see [`SessionLimits`]).
    pub fn with_limits(mut self, limits: SessionLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Appends `ended` (written at `now`, Unix seconds) to the log of ended sessions in the writer's next group (one
    /// commit with the families written beside it, not a transaction of its own: under a
    /// wave of logouts each would hold a blocking thread waiting for the file's one
    /// writer); answers its sequence number once committed.
    pub(super) fn end_session(
        &self,
        ended: &SessionRevocation,
        now: i64,
    ) -> BoxFuture<'static, Result<u64, StoreError>> {
        let entry = LogEntry::at(ended, now);
        // Not a decision on memory: it waits for a place in the queue (as before).
        let queue = self.writer.queue.clone();
        Box::pin(async move {
            let queue = queue.ok_or_else(writer_stopped)?;
            let (reply, answer) = tokio::sync::oneshot::channel();
            let op = Op::EndSession(entry);
            queue
                .send(Queued {
                    op,
                    sequence: 0,
                    reply,
                })
                .await
                .map_err(|_| writer_stopped())?;
            answer
                .await
                .map_err(|_| writer_stopped())?
                .map(|sequence| sequence as u64)
        })
    }

    /// A place in the writer's queue, or 503 when it is full (the writer is behind) or
    /// the writer has stopped. Taken with the memory's lock held, before deciding.
    fn reserve(&self) -> Result<tokio::sync::mpsc::Permit<'_, Queued>, StoreError> {
        use tokio::sync::mpsc::error::TrySendError;
        let queue = self.writer.queue.as_ref().ok_or_else(writer_stopped)?;
        queue.try_reserve().map_err(|e| match e {
            TrySendError::Full(()) => StoreError::Unavailable(
                "the token store's writer is behind (its disk is slow): nothing changed".into(),
            ),
            TrySendError::Closed(()) => writer_stopped(),
        })
    }

    /// Which budget a login of `client` costing `bytes` would exceed, if any.
    fn beyond(&self, memory: &Memory, client: &str, bytes: usize) -> Option<Beyond> {
        if self
            .limits
            .sessions_per_client
            .is_some_and(|max| memory.held_by(client).families >= max)
        {
            Some(Beyond::Sessions)
        } else if memory
            .held_in_namespace_of(client)
            .bytes
            .saturating_add(bytes)
            > self.limits.bytes_per_namespace
        {
            Some(Beyond::NamespaceMemory)
        } else if memory.total.bytes.saturating_add(bytes) > self.limits.total_bytes {
            Some(Beyond::Memory)
        } else {
            None
        }
    }

    /// The refusal of a login of `client` beyond a budget; logged when the client
    /// reaches it, not at every refusal.
    fn refuse_login(&self, client: &str, beyond: Beyond) -> StoreError {
        let why = match beyond {
            Beyond::Sessions => format!(
                "TokenClient {client} holds {} sessions, the most this server keeps for one client (--max-sessions-per-client)",
                self.limits.sessions_per_client.unwrap_or_default()
            ),
            Beyond::NamespaceMemory => format!(
                "the sessions of the TokenClients of namespace {} hold {} MiB of memory, the most this server gives one namespace (--session-memory-per-namespace-mib)",
                namespace_of(client),
                self.limits.bytes_per_namespace >> 20
            ),
            Beyond::Memory => format!(
                "the sessions of all TokenClients hold {} MiB of memory, the most this server gives them (--session-memory-mib)",
                self.limits.total_bytes >> 20
            ),
        };
        let newly = lock_set(&self.shared.capped).insert(client.to_owned());
        if newly {
            tracing::warn!(
                client,
                reason = %why,
                "a client's logins are refused until sessions expire"
            );
        }
        StoreError::Full(format!("{why}; a session is freed at its absolute expiry"))
    }

    /// A login of `client` was accepted: if it was at its cap, it no longer is.
    fn accepting(&self, client: &str) {
        let mut capped = lock_set(&self.shared.capped);
        if !capped.is_empty() && capped.remove(client) {
            tracing::info!(client, "a client's logins are accepted again");
        }
    }

    /// Memory, for a decision or a read; refused while a failed commit has it poisoned
    /// (and a reload is then queued, once).
    fn memory(&self) -> Result<MutexGuard<'_, Memory>, StoreError> {
        if self.shared.stopped.load(Ordering::SeqCst) {
            return Err(writer_stopped());
        }
        let memory = self
            .shared
            .memory
            .lock()
            .map_err(|_| StoreError::Unavailable("the store's memory is poisoned".into()))?;
        if memory.poisoned {
            if !self.shared.reload_queued.swap(true, Ordering::SeqCst) {
                let (reply, _) = tokio::sync::oneshot::channel();
                let reload = Queued {
                    op: Op::Reload,
                    sequence: 0,
                    reply,
                };
                if self
                    .writer
                    .queue
                    .as_ref()
                    .is_none_or(|q| q.try_send(reload).is_err())
                {
                    // Not queued: the next call tries again.
                    self.shared.reload_queued.store(false, Ordering::SeqCst);
                }
            }
            return Err(StoreError::Unavailable(
                "a write to the token store failed; it is being reloaded from its file".into(),
            ));
        }
        Ok(memory)
    }

    /// Runs `job` on the blocking pool: redb's calls do file I/O and wait for the writer.
    /// (The log of ended sessions beside the families reads through it too.)
    pub(super) fn blocking<T: Send + 'static>(
        &self,
        job: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        let db = self.db.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || db.with(job))
                .await
                .map_err(|e| {
                    if e.is_panic() {
                        // redb's decoder met a key or value that is not what its table's
                        // type says (see `decoding`).
                        StoreError::Corrupt(DOES_NOT_DECODE.into())
                    } else {
                        StoreError::Unavailable(format!("the store's task failed: {e}"))
                    }
                })?
        })
    }

    /// Decides a write in memory and queues it, in one critical section. `None`: the
    /// decision was to write nothing.
    fn decide(
        &self,
        decision: impl FnOnce(&mut Memory) -> Option<Op>,
    ) -> Result<Option<Committed>, StoreError> {
        let mut memory = self.memory()?;
        // The place first: a decision that could not be queued would leave memory ahead
        // of the disk.
        let place = self.reserve()?;
        let Some(op) = decision(&mut memory) else {
            return Ok(None);
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        place.send(Queued {
            op,
            sequence: memory.sequence,
            reply,
        });
        Ok(Some(Box::pin(async move {
            answer.await.map_err(|_| writer_stopped())?
        })))
    }
}

impl FamilyStore for EmbeddedStore {
    fn create<'a>(&'a self, family: &'a Family) -> BoxFuture<'a, Result<(), StoreError>> {
        // Outside the lock: the claims as memory will hold them.
        let claims = (!family.claims.is_empty())
            .then(|| serde_json::Value::Object(family.claims.clone()).to_string());
        let bytes = footprint(family, claims.as_deref());
        let mut full = None;
        let decided = self.decide(|memory| {
            full = self.beyond(memory, &family.client, bytes);
            if full.is_some() {
                return None;
            }
            let sequence = memory.next_sequence();
            memory.unreadable.remove(&family.id);
            memory.put(family.clone(), sequence);
            Some(Op::Create(Box::new(family.clone())))
        });
        if let Some(beyond) = full {
            return Box::pin(std::future::ready(Err(
                self.refuse_login(&family.client, beyond)
            )));
        }
        if matches!(decided, Ok(Some(_))) {
            self.accepting(&family.client);
        }
        Box::pin(async move {
            if let Some(answer) = decided? {
                answer.await?;
            }
            Ok(())
        })
    }

    fn find(
        &self,
        token: TokenHash,
        now: Timestamp,
    ) -> BoxFuture<'_, Result<Option<Found>, StoreError>> {
        Box::pin(async move {
            let recent = {
                let memory = self.memory()?;
                match memory.recent.get(&token) {
                    Some((id, generation)) => Some((memory.family(id)?, *generation)),
                    None => None,
                }
            };
            let (observed, generation) = match recent {
                Some(found) => found,
                None => {
                    // An earlier generation's token than memory knows (the preceding one
                    // after a start; older ones: reuse), or one never issued.
                    let Some((id, generation)) = self
                        .blocking(move |db| {
                            let txn = db.begin_read().map_err(|e| failed(e.into()))?;
                            let tokens = txn.open_table(TOKENS).map_err(|e| failed(e.into()))?;
                            Ok(tokens
                                .get(token.0.as_slice())
                                .map_err(|e| failed(e.into()))?
                                .map(|entry| {
                                    let (id, generation) = entry.value();
                                    (id.to_owned(), generation)
                                }))
                        })
                        .await?
                    else {
                        return Ok(None);
                    };
                    (self.memory()?.family(&id)?, generation)
                }
            };
            let Some(observed) = observed else {
                return Ok(None);
            };
            let family = self.shared.durability.wait(observed).await?.expand()?;
            Ok((now < family.forget_after()).then_some(Found { family, generation }))
        })
    }

    fn family<'a>(
        &'a self,
        id: &'a str,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<Option<Family>, StoreError>> {
        Box::pin(async move {
            let Some(observed) = self.memory()?.family(id)? else {
                return Ok(None);
            };
            let family = self.shared.durability.wait(observed).await?.expand()?;
            Ok((now < family.forget_after()).then_some(family))
        })
    }

    fn sessions<'a>(
        &'a self,
        client: &'a str,
        subject: &'a str,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<Vec<Family>, StoreError>> {
        let (owned_client, owned_subject) = (client.to_owned(), subject.to_owned());
        let ids = self.blocking(move |db| {
            let txn = db.begin_read().map_err(|e| failed(e.into()))?;
            let index = txn
                .open_multimap_table(SESSIONS)
                .map_err(|e| failed(e.into()))?;
            index
                .get((owned_client.as_str(), owned_subject.as_str()))
                .map_err(|e| failed(e.into()))?
                .map(|id| {
                    id.map(|id| id.value().to_owned())
                        .map_err(|e| failed(e.into()))
                })
                .collect::<Result<Vec<String>, StoreError>>()
        });
        Box::pin(async move {
            let ids = ids.await?;
            let mut observed = Vec::new();
            {
                let memory = self.memory()?;
                for id in &ids {
                    // Past forget_after but not yet purged: as if gone.
                    let Some(family) = memory
                        .family(id)?
                        .filter(|family| now < family.value.family.forget_after())
                    else {
                        continue;
                    };
                    if observed.len() == MAX_SESSIONS_LISTED {
                        return Err(StoreError::Unavailable(format!(
                            "more than {MAX_SESSIONS_LISTED} sessions of one subject of client {client}"
                        )));
                    }
                    observed.push(family);
                }
            }
            let mut found = Vec::with_capacity(observed.len());
            for family in observed {
                found.push(self.shared.durability.wait(family).await?.expand()?);
            }
            found.sort_by(|a, b| (a.started_at, &a.id).cmp(&(b.started_at, &b.id)));
            Ok(found)
        })
    }

    fn swap<'a>(
        &'a self,
        expected: &'a Family,
        next: &'a Family,
        ended: Option<&'a SessionRevocation>,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let decided = self.decide(|memory| {
            let stored = &memory.families.get(&next.id)?.family;
            if stored.generation != expected.generation
                || stored.revoked.is_some() != expected.revoked.is_some()
            {
                return None;
            }
            let rotated = next.generation != stored.generation;
            let sequence = memory.next_sequence();
            memory.put(next.clone(), sequence);
            Some(Op::Put {
                family: Box::new(next.clone()),
                rotated,
                // Written when the family ends.
                ended: ended.map(|ended| LogEntry::at(ended, ended.revoked_at)),
            })
        });
        Box::pin(async move {
            match decided? {
                Some(answer) => answer.await.map(|_| true),
                None => Ok(false),
            }
        })
    }

    fn purge(&self, now: Timestamp) -> BoxFuture<'_, Result<usize, StoreError>> {
        let decided = self.decide(|memory| {
            // The file's expiry index holds whole seconds: forget what it forgets.
            let due: Vec<String> = memory
                .families
                .values()
                .filter(|slot| slot.family.forget_after().as_second() < now.as_second())
                .map(|slot| slot.family.id.clone())
                .collect();
            for id in &due {
                memory.forget(id);
            }
            memory.next_sequence();
            Some(Op::Purge(now))
        });
        Box::pin(async move {
            match decided? {
                Some(answer) => answer.await,
                None => Ok(0),
            }
        })
    }
}

/// The writer thread: takes every write waiting (up to [`MAX_BATCH`]), applies them in
/// one transaction, commits once, then answers each. A failed commit poisons memory and
/// reloads it from the file before anyone hears of the failure. A decision whose caller
/// has gone is not committed, and memory forgets it (see [`split_abandoned`]).
fn run_writer(db: &Handle, shared: &Shared, mut receiver: tokio::sync::mpsc::Receiver<Queued>) {
    let _stopped = Stopped(shared);
    // Families whose abandoned decisions were undone, each with the last sequence number
    // handed out when memory was put back: a write on one of them numbered up to it was
    // decided on the undone state, and is not committed either.
    let mut undone: HashMap<String, u64> = HashMap::new();
    while let Some(first) = receiver.blocking_recv() {
        #[cfg(test)]
        if let Some((taken, release)) = shared.hold.lock().unwrap().take() {
            let _ = taken.send(());
            let _ = release.recv();
        }
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH
            && let Ok(next) = receiver.try_recv()
        {
            batch.push(next);
        }
        // Every sequence number of the group, committed or not: the states of those not
        // committed are refused (marked undone, see `undo`) before this is published.
        let sequence = batch.iter().map(|queued| queued.sequence).max();
        let (batch, abandoned, to_undo) = split_abandoned(batch, &mut undone);
        let reload = batch.iter().any(|queued| matches!(queued.op, Op::Reload));
        // A group of reloads only writes nothing (and, the file being closed, would fail).
        let writes = batch.iter().any(|queued| !matches!(queued.op, Op::Reload));
        let (ops, replies): (Vec<Op>, Vec<Reply>) = batch
            .into_iter()
            .map(|queued| (queued.op, queued.reply))
            .unzip();
        let abandoned: Vec<Reply> = abandoned.into_iter().map(|queued| queued.reply).collect();
        #[cfg(test)]
        let injected = shared.fail_next_commit.swap(false, Ordering::SeqCst);
        #[cfg(not(test))]
        let injected = false;
        let outcome = if injected {
            Err(StoreError::Unavailable("injected commit failure".into()))
        } else if writes {
            // A key that does not decode panics in redb (its `&str` keys are decoded, and
            // compared, with `from_utf8(..).unwrap()`), possibly in a table the start
            // does not read whole (`family_tokens`): as `Corrupt`, the group fails like
            // any failed commit and the writer goes on, instead of dying.
            db.with(|db| decoding(|| apply_batch(db, &ops)))
        } else {
            Ok(Applied {
                answers: vec![0; ops.len()],
                logged: 0,
            })
        };
        let Applied { answers, logged } = match outcome {
            Ok(applied) => applied,
            Err(e) => {
                // Logged when the store starts failing, not at every write refused since.
                if lock_reopening(shared).backoff.is_none() {
                    tracing::error!(error = %e, "a commit of the token store failed: reopening and reloading its file");
                } else {
                    tracing::debug!(error = %e, "a commit of the token store failed");
                }
                let mut failed = replies;
                failed.extend(abandoned);
                fail_and_reload(db, shared, &mut receiver, failed, &e);
                continue;
            }
        };
        // Only when a caller has gone in this group: the writes dropped as resting on a
        // family undone earlier need nothing more (memory was put back past them).
        if !to_undo.is_empty() {
            // Not a warning: a request cancelled by its client (it disconnected) lands here
            // too; the 503s of a stall are counted where they are answered.
            tracing::debug!(
                writes = abandoned.len(),
                "token store writes whose callers had gone were not committed: their decisions are undone"
            );
            // Memory is put back before anyone hears of this group.
            if let Err(e) = undo(db, shared, to_undo, &mut undone) {
                tracing::error!(error = %e, "the token store's file does not read back the families of writes not committed: reloading it");
                fail_and_reload(db, shared, &mut receiver, abandoned, &e);
                publish(shared, sequence.unwrap_or(0), logged);
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(Ok(answer));
                }
                continue;
            }
        }
        publish(shared, sequence.unwrap_or(0), logged);
        for (reply, answer) in replies.into_iter().zip(answers) {
            let _ = reply.send(Ok(answer));
        }
        for reply in abandoned {
            // The writes that depended on one whose caller had gone; the others' answers
            // go nowhere.
            let _ = reply.send(Err(StoreError::Unavailable(
                "a write this one depended on was abandoned by its caller (the store's deadline passed, or the request was cancelled) and undone: nothing changed".into(),
            )));
        }
        if reload {
            shared.reload_queued.store(false, Ordering::SeqCst);
            reload_if_poisoned(db, shared);
        }
    }
}

/// Says a group is committed: to the readers waiting for its decisions (up to
/// `sequence`), and, when it appended to the log of ended sessions (up to `logged`), to
/// that log's followers in this process.
fn publish(shared: &Shared, sequence: u64, logged: u64) {
    shared.durability.committed(sequence);
    if logged > 0 {
        shared
            .ended_sessions
            .send_modify(|last| *last = (*last).max(logged));
    }
}

/// After a failed commit: poisons memory (nothing is answered from it), fails `failed`
/// and every write still queued (they were decided on a state that is lost), and reloads
/// memory from the file before any of them hears back.
fn fail_and_reload(
    db: &Handle,
    shared: &Shared,
    receiver: &mut tokio::sync::mpsc::Receiver<Queued>,
    mut failed: Vec<Reply>,
    e: &StoreError,
) {
    let epoch = {
        let mut memory = lock(shared);
        memory.poisoned = true;
        memory.epoch += 1;
        // Every write still queued was decided on the state that is lost.
        while let Ok(queued) = receiver.try_recv() {
            failed.push(queued.reply);
        }
        memory.epoch
    };
    shared.durability.failed(epoch);
    // A reload queued earlier was drained with the rest: this one replaces it.
    shared.reload_queued.store(false, Ordering::SeqCst);
    reload_if_poisoned(db, shared);
    for reply in failed {
        let _ = reply.send(Err(same_error(e)));
    }
}

/// Splits a group into the writes to commit and those not to, and names the families
/// whose state in memory must be undone.
///
/// A login or a swap whose caller has gone (its answer's receiver is dropped: the store's
/// deadline, [`super::Timed`], answered it `503`, or its request was cancelled) is not
/// committed: a `503` means nothing changed. Were the rotation committed after its client
/// was told `503`, the client's retry with the token it kept would come after the grace:
/// reuse, the session ended. Whatever was decided on that family after it (a concurrent
/// refresh waiting for that rotation, a logout) rests on the undone state, and is not
/// committed either; other families' writes are. A purge and an entry of the log of
/// ended sessions are committed even when their caller has gone: a purge forgets only
/// what has expired (memory already forgot it), and an entry written again is the same.
///
/// The check is made when the writer takes the group, before its transaction: a caller
/// whose deadline passes during the transaction itself (the disk stalls on this group's
/// commit) is told `503` for a write that is committed. That window is one group's
/// transaction; what waited in the queue behind a stalled commit is covered.
fn split_abandoned(
    batch: Vec<Queued>,
    undone: &mut HashMap<String, u64>,
) -> (Vec<Queued>, Vec<Queued>, HashMap<String, u64>) {
    // The writer takes writes in the order of their sequence numbers: an undone family's
    // entry is needed while a write numbered up to it may still come.
    if let Some(lowest) = batch
        .iter()
        .map(|queued| queued.sequence)
        .filter(|sequence| *sequence > 0)
        .min()
    {
        undone.retain(|_, at| *at >= lowest);
    }
    // Per family to undo, the sequence number of its first write not committed.
    let (mut commit, mut abandoned, mut to_undo) = (Vec::new(), Vec::new(), HashMap::new());
    for queued in batch {
        let Some(id) = queued.op.family().map(str::to_owned) else {
            commit.push(queued);
            continue;
        };
        if to_undo.contains_key(&id) || undone.get(&id).is_some_and(|at| queued.sequence <= *at) {
            // Decided on a state that is (or is being) undone: memory already is, or will
            // be, put back past it.
            abandoned.push(queued);
        } else if queued.reply.is_closed() && !queued.op.ends_family() {
            to_undo.insert(id, queued.sequence);
            abandoned.push(queued);
        } else {
            commit.push(queued);
        }
    }
    (commit, abandoned, to_undo)
}

/// Puts the families `ids` back in memory as the file holds them (their decisions from
/// the sequence number given on were not committed), and refuses whoever observed the
/// undone states: those of these families only, marked in [`Durability`] (a failed
/// commit, which may have lost anything, moves the epoch instead). Were every reader in
/// flight refused, any client could make other tenants' concurrent refreshes answer
/// `503` by cancelling its own requests. Remembers, per family, the last sequence number
/// handed out: writes still queued numbered up to it rest on the undone state.
fn undo(
    db: &Handle,
    shared: &Shared,
    ids: HashMap<String, u64>,
    undone: &mut HashMap<String, u64>,
) -> Result<(), StoreError> {
    let on_disk = db.with(|db| decoding(|| read_back(db, ids.keys())))?;
    {
        let mut memory = lock(shared);
        for (id, state) in on_disk {
            memory.forget(&id);
            match state {
                OnDisk::Gone => {}
                OnDisk::Unreadable => {
                    memory.unreadable.insert(id);
                }
                OnDisk::Family(family) => memory.put(*family, 0),
            }
        }
        let at = memory.sequence;
        for (id, from) in ids {
            // Marked while memory is locked: a reader that observes the family after
            // this sees the state put back, never the undone one.
            shared.durability.undone(&id, from, at);
            undone.insert(id, at);
        }
    }
    Ok(())
}

/// A family as the file holds it.
enum OnDisk {
    Gone,
    /// Its record does not read.
    Unreadable,
    Family(Box<Family>),
}

/// The families `ids` as the file holds them.
fn read_back<'a>(
    db: &Database,
    ids: impl Iterator<Item = &'a String>,
) -> Result<Vec<(String, OnDisk)>, StoreError> {
    let txn = db.begin_read().map_err(|e| failed(e.into()))?;
    let families = txn.open_table(FAMILIES).map_err(|e| failed(e.into()))?;
    ids.map(|id| {
        let state = match read_family(&families, id) {
            Ok(None) => OnDisk::Gone,
            Ok(Some(family)) => OnDisk::Family(Box::new(family)),
            // As at start: a family that does not read answers an error for its tokens.
            Err(StoreError::Corrupt(_)) => OnDisk::Unreadable,
            Err(e) => return Err(e),
        };
        Ok((id.clone(), state))
    })
    .collect()
}

/// Ends every wait for durability when the writer stops (the store is dropped, or the
/// thread panicked): nothing will be committed any more, so no state not yet committed
/// may be answered.
struct Stopped<'a>(&'a Shared);

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Not expected (what the writer reads is decoded under `decoding`), but were it
            // to happen, every call would answer 503 from now on: say so, once, and make
            // the callers' error say so too instead of "being reloaded".
            self.0.stopped.store(true, Ordering::SeqCst);
            tracing::error!(
                "the token store's writer stopped after a panic: the token endpoint answers 503 until the process restarts"
            );
        }
        let epoch = {
            let mut memory = lock(self.0);
            memory.poisoned = true;
            memory.epoch += 1;
            memory.epoch
        };
        self.0.durability.failed(epoch);
    }
}

fn writer_stopped() -> StoreError {
    StoreError::Unavailable(
        "the token store's writer has stopped (see the log): restart the process".into(),
    )
}

fn lock_set(
    set: &Mutex<std::collections::HashSet<String>>,
) -> MutexGuard<'_, std::collections::HashSet<String>> {
    set.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn lock(shared: &Shared) -> MutexGuard<'_, Memory> {
    // A panic while holding the lock cannot leave half a decision (each is a few map
    // operations); go on with what is there.
    shared
        .memory
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Replaces poisoned memory with what the file holds, reopening it first (sequence and
/// epoch go on). After a failure, waits (doubling) before trying again; logs when the
/// store starts failing and when it recovers, not at every attempt.
fn reload_if_poisoned(db: &Handle, shared: &Shared) {
    if !lock(shared).poisoned {
        return;
    }
    let now = Instant::now();
    if lock_reopening(shared)
        .not_before
        .is_some_and(|not_before| now < not_before)
    {
        return;
    }
    match db
        .reopen()
        .and_then(|()| db.with(|db| decoding(|| load(db))))
    {
        Ok(loaded) => {
            {
                let mut memory = lock(shared);
                memory.families = loaded.families;
                memory.recent = loaded.recent;
                memory.unreadable = loaded.unreadable;
                memory.per_client = loaded.per_client;
                memory.per_namespace = loaded.per_namespace;
                memory.total = loaded.total;
                memory.poisoned = false;
            }
            let mut reopening = lock_reopening(shared);
            if reopening.backoff.take().is_some() {
                tracing::info!("the token store's file reads again: answering from it");
            }
            reopening.not_before = None;
        }
        Err(e) => {
            let mut reopening = lock_reopening(shared);
            let backoff = match reopening.backoff {
                None => {
                    tracing::error!(error = %e, "the token store's file does not read: answering unavailable until it does (retrying with backoff)");
                    reopening.first
                }
                Some(last) => {
                    tracing::debug!(error = %e, "the token store's file still does not read");
                    (last * 2).min(MAX_REOPEN_BACKOFF)
                }
            };
            reopening.backoff = Some(backoff);
            reopening.not_before = Some(now + backoff);
        }
    }
}

fn lock_reopening(shared: &Shared) -> MutexGuard<'_, Reopening> {
    shared
        .reopening
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// Runs `read` over the whole file, turning a panic into [`StoreError::Corrupt`]: redb's
/// decoders of keys and values panic on bytes that are not what the table's type says
/// (e.g. a key of a `&str` table that is not UTF-8, after a disk or a hand changed the
/// file), and a start must say which file to move aside, not crash the process.
fn decoding<T>(read: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(read))
        .unwrap_or_else(|_| Err(StoreError::Corrupt(DOES_NOT_DECODE.into())))
}

const DOES_NOT_DECODE: &str = "a record of the token store does not decode: move the file aside (every session in it is then lost: users log in again) or restore a backup";

/// Every family of the file (those that do not read: as unreadable).
fn load(db: &Database) -> Result<Memory, StoreError> {
    let mut memory = Memory::default();
    let txn = db.begin_read().map_err(|e| failed(e.into()))?;
    decode_indexes(&txn)?;
    let families = txn.open_table(FAMILIES).map_err(|e| failed(e.into()))?;
    for entry in families.iter().map_err(|e| failed(e.into()))? {
        let (id, bytes) = entry.map_err(|e| failed(e.into()))?;
        match serde_json::from_slice::<Family>(bytes.value()) {
            Ok(family) => memory.put(family, 0),
            Err(_) => {
                memory.unreadable.insert(id.value().to_owned());
            }
        }
    }
    Ok(memory)
}

/// Decodes every key of `expiry` and every key and value of `sessions` (one entry per
/// family each), so that one that does not decode stops the start (under [`decoding`]:
/// redb panics on it) with the file named, rather than later: the purge at start would
/// meet it in the writer. `tokens` and `family_tokens` hold an entry per rotation and are
/// not read whole at start; the writer turns what it meets there into `Corrupt`.
fn decode_indexes(txn: &redb::ReadTransaction) -> Result<(), StoreError> {
    let expiry = txn.open_table(EXPIRY).map_err(|e| failed(e.into()))?;
    for entry in expiry.iter().map_err(|e| failed(e.into()))? {
        let (key, _) = entry.map_err(|e| failed(e.into()))?;
        let _ = key.value();
    }
    let sessions = txn
        .open_multimap_table(SESSIONS)
        .map_err(|e| failed(e.into()))?;
    for entry in sessions.iter().map_err(|e| failed(e.into()))? {
        let (key, ids) = entry.map_err(|e| failed(e.into()))?;
        let _ = key.value();
        for id in ids {
            let _ = id.map_err(|e| failed(e.into()))?.value();
        }
    }
    Ok(())
}

/// A group's answers (each: the number of things written), and the sequence number of
/// the last entry it appended to the log of ended sessions (0: none).
struct Applied {
    answers: Vec<usize>,
    logged: u64,
}

/// Applies a group of writes in one transaction and commits once. Any failure fails the
/// whole group (memory, ahead of it, is then reloaded from the file).
fn apply_batch(db: &Database, ops: &[Op]) -> Result<Applied, StoreError> {
    let mut applied = Applied {
        answers: Vec::with_capacity(ops.len()),
        logged: 0,
    };
    write(db, |txn| {
        let mut tables = Tables::open(txn)?;
        for op in ops {
            let answer = apply(txn, &mut tables, op, &mut applied.logged)?;
            applied.answers.push(answer);
        }
        Ok(applied.answers.iter().any(|written| *written > 0))
    })?;
    Ok(applied)
}

/// The tables of families, opened once for a group of writes: opening a table costs about
/// as much as an insert into it.
struct Tables<'txn> {
    families: redb::Table<'txn, &'static str, &'static [u8]>,
    tokens: redb::Table<'txn, &'static [u8], (&'static str, u64)>,
    family_tokens: redb::MultimapTable<'txn, &'static str, &'static [u8]>,
    expiry: redb::Table<'txn, (i64, &'static str), ()>,
    sessions: redb::MultimapTable<'txn, (&'static str, &'static str), &'static str>,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> Result<Self, TxnError> {
        Ok(Tables {
            families: txn.open_table(FAMILIES)?,
            tokens: txn.open_table(TOKENS)?,
            family_tokens: txn.open_multimap_table(FAMILY_TOKENS)?,
            expiry: txn.open_table(EXPIRY)?,
            sessions: txn.open_multimap_table(SESSIONS)?,
        })
    }

    /// Indexes the family's current token: its hash to the family, and the family to it.
    fn record_token(&mut self, family: &Family) -> Result<(), TxnError> {
        let hash = family.current.0;
        self.tokens
            .insert(hash.as_slice(), (family.id.as_str(), family.generation))?;
        self.family_tokens
            .insert(family.id.as_str(), hash.as_slice())?;
        Ok(())
    }
}

fn same_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(why) => StoreError::Unavailable(why.clone()),
        StoreError::Corrupt(why) => StoreError::Corrupt(why.clone()),
        StoreError::Full(why) => StoreError::Full(why.clone()),
    }
}

/// Applies one write; `logged`: set to the sequence number of the entry it appends to
/// the log of ended sessions, if any.
fn apply(
    txn: &WriteTransaction,
    tables: &mut Tables<'_>,
    op: &Op,
    logged: &mut u64,
) -> Result<usize, TxnError> {
    match op {
        Op::Create(family) => {
            let json = encode(family)?;
            tables
                .families
                .insert(family.id.as_str(), json.as_slice())?;
            tables.record_token(family)?;
            tables
                .expiry
                .insert((family.forget_after().as_second(), family.id.as_str()), ())?;
            tables.sessions.insert(
                (family.client.as_str(), family.subject.as_str()),
                family.id.as_str(),
            )?;
            Ok(1)
        }
        Op::Put {
            family,
            rotated,
            ended,
        } => {
            let json = encode(family)?;
            tables
                .families
                .insert(family.id.as_str(), json.as_slice())?;
            if *rotated {
                tables.record_token(family)?;
            }
            if let Some(entry) = ended {
                *logged = super::embedded_sessions::append(txn, &entry.line, entry.now)?;
            }
            Ok(1)
        }
        Op::EndSession(entry) => {
            *logged = super::embedded_sessions::append(txn, &entry.line, entry.now)?;
            Ok(usize::try_from(*logged).unwrap_or(usize::MAX))
        }
        Op::Reload => Ok(0),
        Op::Purge(now) => {
            let due: Vec<(i64, String)> = tables
                .expiry
                .range(..(now.as_second(), ""))?
                .map(|entry| entry.map(|(key, _)| (key.value().0, key.value().1.to_owned())))
                .collect::<Result<_, _>>()?;
            for (second, id) in &due {
                tables.expiry.remove((*second, id.as_str()))?;
                // A family that does not read is forgotten all the same; its index entry
                // then outlives it, and listing skips it.
                if let Ok(Some(family)) = read_family(&tables.families, id) {
                    tables.sessions.remove(
                        (family.client.as_str(), family.subject.as_str()),
                        id.as_str(),
                    )?;
                }
                tables.families.remove(id.as_str())?;
                for hash in tables.family_tokens.remove_all(id.as_str())? {
                    tables.tokens.remove(hash?.value())?;
                }
            }
            Ok(due.len())
        }
    }
}

/// Errors inside a transaction: redb's, or a record that does not read.
pub(super) enum TxnError {
    Db(redb::Error),
    Store(StoreError),
}

macro_rules! from_redb {
    ($($error:ty),*) => {$(
        impl From<$error> for TxnError {
            fn from(e: $error) -> Self {
                TxnError::Db(e.into())
            }
        }
    )*};
}

from_redb!(
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError
);

/// One write transaction: committed when `body` returns `Ok(true)`, dropped (aborted)
/// when it returns `Ok(false)` or an error.
pub(super) fn write(
    db: &Database,
    body: impl FnOnce(&WriteTransaction) -> Result<bool, TxnError>,
) -> Result<bool, StoreError> {
    let run = || {
        let txn = db.begin_write()?;
        let commit = body(&txn)?;
        if commit {
            txn.commit()?;
        }
        Ok(commit)
    };
    run().map_err(|e: TxnError| match e {
        TxnError::Db(e) => failed(e),
        TxnError::Store(e) => e,
    })
}

fn read_family(
    families: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> Result<Option<Family>, StoreError> {
    let Some(bytes) = families.get(id).map_err(|e| failed(e.into()))? else {
        return Ok(None);
    };
    serde_json::from_slice(bytes.value())
        .map(Some)
        .map_err(|e| StoreError::Corrupt(format!("family {id}: {e}")))
}

impl From<StoreError> for TxnError {
    fn from(e: StoreError) -> Self {
        TxnError::Store(e)
    }
}

fn encode(family: &Family) -> Result<Vec<u8>, TxnError> {
    serde_json::to_vec(family)
        .map_err(|e| TxnError::Store(StoreError::Corrupt(format!("family {}: {e}", family.id))))
}

pub(super) fn failed(e: redb::Error) -> StoreError {
    match e {
        redb::Error::Corrupted(what) => StoreError::Corrupt(what),
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// Opens (creating it, mode 0600: it holds no token, but who logged in when is nobody
/// else's business) the file at `path`.
fn open_file(path: &Path) -> Result<Database, StoreError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| StoreError::Unavailable(format!("{}: {e}", path.display())))?;
    Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create_file(file)
        .map_err(|e| failed(redb::Error::from(e)))
        .map_err(|e| in_file(path, e))
}

fn in_file(path: &Path, e: StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(why) => {
            StoreError::Unavailable(format!("{}: {why}", path.display()))
        }
        StoreError::Corrupt(why) => StoreError::Corrupt(format!("{}: {why}", path.display())),
        full @ StoreError::Full(_) => full,
    }
}

#[cfg(test)]
mod tests {
    use jiff::SignedDuration;

    use super::*;
    use crate::refresh::{Lifetimes, Login, SystemEntropy, start};
    use crate::tokens::{Presenter, RefreshError, Refreshed, refresh};

    const CLIENT: &str = "shop/web";
    const ISSUER: &str = "https://auth.example/web";

    fn login() -> Login {
        Login {
            client: CLIENT.into(),
            issuer: ISSUER.into(),
            subject: "alice".into(),
            audiences: vec!["a".into()],
            claims: Default::default(),
            lifetimes: Lifetimes {
                absolute: SignedDuration::from_hours(1),
                idle: SignedDuration::from_mins(30),
                grace: SignedDuration::from_secs(5),
            },
        }
    }

    /// Stalls the store's writer (a disk that hangs) at the next write it takes: the
    /// receiver hears when it has taken it, and a send on the sender lets it go on.
    fn stall_writer(
        store: &EmbeddedStore,
    ) -> (std::sync::mpsc::Receiver<()>, std::sync::mpsc::Sender<()>) {
        let (taken, writer_took) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel();
        *store.shared.hold.lock().unwrap() = Some((taken, released));
        (writer_took, release)
    }

    /// A store on `path`, the same behind a 200 ms deadline (as the server's, shorter),
    /// and one login made through it.
    async fn deadlined_with_a_login(
        path: &Path,
    ) -> (
        EmbeddedStore,
        crate::tokens::Timed<EmbeddedStore>,
        crate::refresh::Started,
        Timestamp,
    ) {
        let inner = EmbeddedStore::open(path).unwrap();
        let store = crate::tokens::Timed::new(inner.clone(), std::time::Duration::from_millis(200));
        let now = Timestamp::now();
        let started = start(login(), now, &mut SystemEntropy).unwrap();
        store.create(&started.family).await.unwrap();
        (inner, store, started, now)
    }

    /// The SigningKey of [`ISSUER`], under which ended sessions are recorded.
    fn issuer_key() -> crate::api::ObjectKey {
        crate::api::ObjectKey {
            namespace: "shop".into(),
            name: "web".into(),
        }
    }

    /// An entry of the log of ended sessions.
    fn ended_session() -> SessionRevocation {
        SessionRevocation::new(
            issuer_key(),
            "a-session",
            crate::revocation::SessionEnd::Logout,
            Timestamp::now(),
        )
    }

    /// The entries of the log of ended sessions.
    async fn logged(store: &EmbeddedStore) -> Vec<SessionRevocation> {
        use crate::tokens::session_log::SessionLog;
        let log = crate::tokens::embedded_sessions::EmbeddedSessionLog::new(store);
        log.read((0, 0), None).await.unwrap().revocations
    }

    /// The client's retry with the token it kept, after a write that was not committed:
    /// an ordinary rotation to generation 1, the family alive. The family it rotated.
    async fn retry_rotates_afresh(
        store: &dyn FamilyStore,
        token: &crate::refresh::RefreshToken,
        by: Presenter<'_>,
        at: Timestamp,
    ) -> Family {
        let answer = refresh(store, token, by, at, &mut SystemEntropy).await;
        let Ok(Refreshed::Pair {
            family,
            rotated: true,
            ..
        }) = answer
        else {
            panic!("the token the client kept: {answer:?}");
        };
        assert_eq!(family.generation, 1);
        assert!(family.revoked.is_none());
        family
    }

    fn stored_on_disk(path: &Path, id: &str) -> Option<Family> {
        let db = Database::open(path).unwrap();
        let txn = db.begin_read().unwrap();
        read_family(&txn.open_table(FAMILIES).unwrap(), id).unwrap()
    }

    /// A read answers once its state is durable; a state that never will be (memory
    /// ahead of the file) would keep it waiting for ever: fail instead.
    async fn bounded<T>(read: BoxFuture<'_, Result<T, StoreError>>) -> T {
        tokio::time::timeout(std::time::Duration::from_secs(10), read)
            .await
            .expect("a read waits for a write that will never be durable")
            .unwrap()
    }

    #[tokio::test]
    async fn a_failed_commit_is_unavailable_and_leaves_memory_as_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        let store = EmbeddedStore::open(&path).unwrap();
        let now = Timestamp::now();
        let started = start(login(), now, &mut SystemEntropy).unwrap();
        store.create(&started.family).await.unwrap();
        let by = Presenter {
            client: CLIENT,
            issuer: ISSUER,
            sessions: None,
        };
        let later = now + SignedDuration::from_secs(1);

        store.shared.fail_next_commit.store(true, Ordering::SeqCst);
        let failed = refresh(&store, &started.token, by, later, &mut SystemEntropy).await;
        assert!(
            matches!(failed, Err(RefreshError::Store(StoreError::Unavailable(_)))),
            "{failed:?}"
        );
        // The rotation that failed is in neither memory nor the file...
        assert_eq!(
            bounded(store.family(&started.family.id, later)).await,
            Some(started.family.clone())
        );
        // ...so the client's retry rotates afresh (were memory ahead of the file, it
        // would replay a pair that was never durable).
        let family = retry_rotates_afresh(&store, &started.token, by, later).await;
        drop(store);
        assert_eq!(stored_on_disk(&path, &family.id), Some(family));
    }

    /// A disk whose next write fails when `fail` is set (once): a real I/O error, after
    /// which redb answers `PreviousIo` to every call on the handle that met it.
    #[derive(Debug)]
    struct FailingDisk {
        file: redb::backends::FileBackend,
        fail: Arc<AtomicBool>,
    }

    impl redb::StorageBackend for FailingDisk {
        fn len(&self) -> std::io::Result<u64> {
            self.file.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
            self.file.read(offset, out)
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.file.set_len(len)
        }
        fn sync_data(&self) -> std::io::Result<()> {
            self.file.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            if self.fail.swap(false, Ordering::SeqCst) {
                return Err(std::io::Error::other("the disk failed a write"));
            }
            self.file.write(offset, data)
        }
        fn close(&self) -> std::io::Result<()> {
            self.file.close()
        }
    }

    /// A store on a [`FailingDisk`]; `opens` counts the opens of its file and, while
    /// `unopenable` is set, they fail (the disk is gone).
    fn open_failing(
        path: &Path,
        fail: &Arc<AtomicBool>,
        unopenable: &Arc<AtomicBool>,
        opens: &Arc<std::sync::atomic::AtomicUsize>,
    ) -> EmbeddedStore {
        let (owned, fail) = (path.to_owned(), fail.clone());
        let (unopenable, opens) = (unopenable.clone(), opens.clone());
        EmbeddedStore::open_with(
            path,
            Box::new(move || {
                opens.fetch_add(1, Ordering::SeqCst);
                if unopenable.load(Ordering::SeqCst) {
                    return Err(StoreError::Unavailable("the disk is gone".into()));
                }
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&owned)
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                let file = redb::backends::FileBackend::new(file)
                    .map_err(|e| failed(redb::Error::from(e)))?;
                Database::builder()
                    .create_with_backend(FailingDisk {
                        file,
                        fail: fail.clone(),
                    })
                    .map_err(|e| failed(redb::Error::from(e)))
            }),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn after_a_disk_error_the_file_is_reopened_and_the_retry_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        let fail = Arc::new(AtomicBool::new(false));
        let store = open_failing(&path, &fail, &Default::default(), &Default::default());
        let now = Timestamp::now();
        let started = start(login(), now, &mut SystemEntropy).unwrap();
        store.create(&started.family).await.unwrap();
        let by = Presenter {
            client: CLIENT,
            issuer: ISSUER,
            sessions: None,
        };
        let later = now + SignedDuration::from_secs(1);

        fail.store(true, Ordering::SeqCst);
        let failed = refresh(&store, &started.token, by, later, &mut SystemEntropy).await;
        assert!(
            matches!(failed, Err(RefreshError::Store(StoreError::Unavailable(_)))),
            "{failed:?}"
        );
        assert!(!fail.load(Ordering::SeqCst), "the failure was not met");
        // The handle that met the error answers `PreviousIo` for ever; the reopened file
        // reads, holds the state before the failed rotation, and takes the retry.
        assert_eq!(
            bounded(store.family(&started.family.id, later)).await,
            Some(started.family.clone())
        );
        let family = retry_rotates_afresh(&store, &started.token, by, later).await;
        // A login that fails on the disk is not counted against the budgets after the
        // reload (answered after it).
        fail.store(true, Ordering::SeqCst);
        let lost = start(login(), later, &mut SystemEntropy).unwrap();
        assert!(store.create(&lost.family).await.is_err());
        {
            let memory = lock(&store.shared);
            assert_eq!(memory.total.families, 1);
            assert_eq!(memory.total, memory.held_by(CLIENT));
        }
        drop(store);
        assert_eq!(stored_on_disk(&path, &family.id), Some(family));
    }

    #[tokio::test]
    async fn a_file_that_does_not_reopen_is_retried_after_a_backoff_not_at_every_call() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        let (fail, unopenable) = (Arc::default(), Arc::<AtomicBool>::default());
        let opens = Arc::default();
        let store = open_failing(&path, &fail, &unopenable, &opens);
        lock_reopening(&store.shared).first = Duration::from_secs(3600);
        let now = Timestamp::now();
        let started = start(login(), now, &mut SystemEntropy).unwrap();
        store.create(&started.family).await.unwrap();

        fail.store(true, Ordering::SeqCst);
        unopenable.store(true, Ordering::SeqCst);
        let next = start(login(), now, &mut SystemEntropy).unwrap();
        assert!(store.create(&next.family).await.is_err());
        for _ in 0..50 {
            let read = store.family(&started.family.id, now).await;
            assert!(matches!(read, Err(StoreError::Unavailable(_))), "{read:?}");
            // Queued behind the reloads those reads asked for: answered once they were
            // handled (and it fails too: the file is closed).
            assert!(store.end_session(&ended_session(), 0).await.is_err());
        }
        // The one failed reopen after the failed commit, then none within the backoff.
        assert_eq!(opens.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failed_commit_fails_every_decision_queued_behind_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        let store = EmbeddedStore::open(&path).unwrap();
        let now = Timestamp::now();
        let families: Vec<Family> = (0..20)
            .map(|_| start(login(), now, &mut SystemEntropy).unwrap().family)
            .collect();
        store.shared.fail_next_commit.store(true, Ordering::SeqCst);
        let answers =
            futures::future::join_all(families.iter().map(|family| store.create(family))).await;
        // The first group failed; whatever was decided while it was committing failed
        // with it; what came later may have succeeded. Memory says exactly what the file
        // says, family by family.
        assert!(answers[0].is_err());
        let mut in_memory = Vec::new();
        for family in &families {
            in_memory.push(bounded(store.family(&family.id, now)).await);
        }
        drop(store);
        for ((family, answer), in_memory) in families.iter().zip(&answers).zip(in_memory) {
            let on_disk = stored_on_disk(&path, &family.id);
            assert_eq!(on_disk.is_some(), answer.is_ok(), "{answer:?}");
            assert_eq!(in_memory, on_disk);
        }
    }

    /// `count` rotations of a new family, `step` seconds apart from `now`: its tokens,
    /// oldest first, and the pair of the last rotation.
    async fn rotated(
        store: &EmbeddedStore,
        now: Timestamp,
        count: i64,
    ) -> (Vec<crate::refresh::RefreshToken>, Family) {
        let started = start(login(), now, &mut SystemEntropy).unwrap();
        store.create(&started.family).await.unwrap();
        let mut tokens = vec![started.token];
        let mut family = started.family;
        for i in 1..=count {
            let at = now + SignedDuration::from_secs(10 * i);
            let answer = refresh(store, tokens.last().unwrap(), BY, at, &mut SystemEntropy).await;
            let Ok(Refreshed::Pair {
                family: next,
                token,
                rotated: true,
                ..
            }) = answer
            else {
                panic!("{answer:?}");
            };
            tokens.push(token);
            family = next;
        }
        (tokens, family)
    }

    const BY: Presenter<'static> = Presenter {
        client: CLIENT,
        issuer: ISSUER,
        sessions: None,
    };

    #[tokio::test]
    async fn a_token_older_than_the_preceding_one_is_found_in_the_file_and_is_reuse() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("t.redb")).unwrap();
        let now = Timestamp::now();
        let (tokens, family) = rotated(&store, now, 3).await;
        // Memory holds generations 3 and 2; generation 1's token is in the file only.
        let answer = refresh(
            &store,
            &tokens[1],
            BY,
            now + SignedDuration::from_secs(31),
            &mut SystemEntropy,
        )
        .await;
        let Ok(Refreshed::Reuse { family: revoked }) = answer else {
            panic!("{answer:?}");
        };
        assert_eq!(revoked.id, family.id);
        assert!(
            store
                .family(&family.id, now)
                .await
                .unwrap()
                .unwrap()
                .revoked
                .is_some()
        );
    }

    #[tokio::test]
    async fn after_a_restart_the_preceding_token_replays_and_an_older_one_is_reuse() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        let now = Timestamp::now();
        let (tokens, family) = {
            let store = EmbeddedStore::open(&path).unwrap();
            rotated(&store, now, 2).await
        };
        let store = EmbeddedStore::open(&path).unwrap();
        // Within the grace of the last rotation (at +20 s): the same pair again.
        let within = now + SignedDuration::from_secs(22);
        let answer = refresh(&store, &tokens[1], BY, within, &mut SystemEntropy).await;
        let Ok(Refreshed::Pair {
            token,
            rotated: false,
            ..
        }) = answer
        else {
            panic!("{answer:?}");
        };
        assert_eq!(token, tokens[2]);
        let answer = refresh(&store, &tokens[0], BY, within, &mut SystemEntropy).await;
        assert!(matches!(answer, Ok(Refreshed::Reuse { .. })), "{answer:?}");
        assert!(
            store
                .family(&family.id, now)
                .await
                .unwrap()
                .unwrap()
                .revoked
                .is_some()
        );
    }

    #[tokio::test]
    async fn a_write_beyond_a_full_queue_is_unavailable_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("t.redb")).unwrap();
        let now = Timestamp::now();
        let (writer_took, release) = stall_writer(&store);
        let families: Vec<Family> = (0..=QUEUE + 1)
            .map(|_| start(login(), now, &mut SystemEntropy).unwrap().family)
            .collect();
        // The writer takes the first write and stalls on it...
        let mut pending = vec![store.create(&families[0])];
        writer_took.recv().unwrap();
        // ...the queue behind it fills...
        for family in &families[1..=QUEUE] {
            pending.push(store.create(family));
        }
        // ...and the next decision is refused before it is taken.
        let refused = &families[QUEUE + 1];
        let answer = store.create(refused).await;
        assert!(
            matches!(answer, Err(StoreError::Unavailable(_))),
            "{answer:?}"
        );
        release.send(()).unwrap();
        for answer in futures::future::join_all(pending).await {
            answer.unwrap();
        }
        assert_eq!(bounded(store.family(&refused.id, now)).await, None);
        assert_eq!(
            bounded(store.family(&families[QUEUE].id, now)).await,
            Some(families[QUEUE].clone())
        );
    }

    #[tokio::test]
    async fn a_login_beyond_the_clients_cap_is_refused_and_a_forgotten_session_frees_a_slot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        let now = Timestamp::now();
        let family = |at| start(login(), at, &mut SystemEntropy).unwrap().family;
        let (first, second) = (family(now), family(now));
        {
            let store = EmbeddedStore::open(&path)
                .unwrap()
                .with_limits(SessionLimits {
                    sessions_per_client: Some(2),
                    ..SessionLimits::default()
                });
            store.create(&first).await.unwrap();
            store.create(&second).await.unwrap();
        }
        // Reopened: the count is rebuilt from the file.
        let store = EmbeddedStore::open(&path)
            .unwrap()
            .with_limits(SessionLimits {
                sessions_per_client: Some(2),
                ..SessionLimits::default()
            });
        let third = family(now);
        let answer = store.create(&third).await;
        let Err(StoreError::Full(why)) = answer else {
            panic!("{answer:?}");
        };
        assert!(why.contains(CLIENT), "{why}");
        assert_eq!(bounded(store.family(&third.id, now)).await, None);
        // Another client's logins are its own.
        let mut other = family(now);
        other.client = "shop/other".into();
        store.create(&other).await.unwrap();
        // Revoking a session does not free its slot (it is held until its expiry)...
        let mut revoked = first.clone();
        revoked.revoked = Some(crate::refresh::Revoked {
            at: now,
            because: crate::refresh::RevokedBecause::Logout,
        });
        assert!(store.swap(&first, &revoked, None).await.unwrap());
        assert!(matches!(
            store.create(&third).await,
            Err(StoreError::Full(_))
        ));
        // ...forgetting it at its expiry does.
        let later = now + SignedDuration::from_hours(2);
        store.purge(later).await.unwrap();
        let fourth = family(later);
        store.create(&fourth).await.unwrap();
        assert_eq!(
            bounded(store.family(&fourth.id, later)).await,
            Some(fourth.clone())
        );
    }

    #[tokio::test]
    async fn a_login_beyond_a_memory_budget_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        let now = Timestamp::now();
        // Logins of clients named alike (so that each costs the same) with 4 KB of claims.
        let login_of = |client: &str, claims: bool| {
            let mut login = login();
            login.client = client.into();
            if claims {
                let serde_json::Value::Object(claims) =
                    serde_json::json!({ "pad": "x".repeat(4000) })
                else {
                    unreachable!()
                };
                login.claims = claims;
            }
            start(login, now, &mut SystemEntropy).unwrap().family
        };
        let cost = |family: &Family| {
            footprint(
                family,
                Some(&serde_json::Value::Object(family.claims.clone()).to_string()),
            )
        };
        let first = login_of("shop/aaa", true);
        let each = cost(&first);
        assert!(each > 12_000, "{each}");
        // Room for two such logins per namespace, three in all.
        let limits = SessionLimits {
            bytes_per_namespace: 2 * each + each / 2,
            total_bytes: 3 * each + each / 2,
            sessions_per_client: None,
        };
        {
            let store = EmbeddedStore::open(&path).unwrap().with_limits(limits);
            store.create(&first).await.unwrap();
            store.create(&login_of("shop/aaa", true)).await.unwrap();
            let third = login_of("shop/aaa", true);
            let answer = store.create(&third).await;
            let Err(StoreError::Full(why)) = answer else {
                panic!("{answer:?}");
            };
            assert!(
                why.contains("namespace shop ")
                    && why.contains("--session-memory-per-namespace-mib"),
                "{why}"
            );
            assert_eq!(bounded(store.family(&third.id, now)).await, None);
            // Another TokenClient of the same namespace shares its budget...
            let sibling = store.create(&login_of("shop/bbb", true)).await;
            assert!(matches!(sibling, Err(StoreError::Full(_))), "{sibling:?}");
            // ...and another namespace has its own.
            store.create(&login_of("team/bbb", true)).await.unwrap();
        }
        // Reopened: what is held is rebuilt from the file.
        let store = EmbeddedStore::open(&path).unwrap().with_limits(limits);
        let sibling = store.create(&login_of("shop/ccc", true)).await;
        assert!(
            matches!(sibling, Err(StoreError::Full(ref why)) if why.contains("namespace shop ")),
            "{sibling:?}"
        );
        let beyond = login_of("other/ccc", true);
        let answer = store.create(&beyond).await;
        let Err(StoreError::Full(why)) = answer else {
            panic!("{answer:?}");
        };
        assert!(why.contains("--session-memory-mib"), "{why}");
        assert_eq!(bounded(store.family(&beyond.id, now)).await, None);
        // The budget is bytes, not sessions: a login without claims still fits.
        store.create(&login_of("other/ccc", false)).await.unwrap();
        // Forgetting sessions at their expiry frees their bytes.
        let later = now + SignedDuration::from_hours(2);
        store.purge(later).await.unwrap();
        store.create(&beyond).await.unwrap();
    }

    /// A tenant may create as many TokenClients in its namespace as it likes (each
    /// session held until its absolute expiry, up to 8760h): were the budget per client,
    /// two of them would take the whole total and every other tenant's logins would
    /// answer 503 until those sessions expire.
    #[tokio::test]
    async fn one_namespace_cannot_take_the_whole_memory_budget() {
        let dir = tempfile::tempdir().unwrap();
        let now = Timestamp::now();
        let login_of = |client: &str| {
            let mut login = login();
            login.client = client.into();
            start(login, now, &mut SystemEntropy).unwrap().family
        };
        let each = footprint(&login_of("evil/aaa"), None);
        // The defaults' ratio: one namespace may hold half of the total.
        let limits = SessionLimits {
            bytes_per_namespace: 10 * each,
            total_bytes: 20 * each,
            sessions_per_client: None,
        };
        let store = EmbeddedStore::open(&dir.path().join("t.redb"))
            .unwrap()
            .with_limits(limits);
        // One tenant logs in through two (or more) of its TokenClients...
        for client in ["evil/aaa", "evil/bbb", "evil/ccc"] {
            while store.create(&login_of(client)).await.is_ok() {}
        }
        // ...and another tenant's first login is refused.
        let answer = store.create(&login_of("shop/web")).await;
        assert!(answer.is_ok(), "{answer:?}");
    }

    /// ATTACK10 finding 3: a disk that stalls for longer than the deadline on store calls
    /// (2 s, [`super::super::Timed`]) with fewer than 4,096 writes waiting. The rotation was
    /// decided and queued, the client told 503, and the rotation committed when the disk
    /// recovered: the client's retry with the same token after the grace (5 s by default)
    /// was reuse, its session ended and logged as compromised. The writer now leaves a
    /// write whose caller has gone uncommitted and undoes its decision in memory.
    #[tokio::test]
    async fn a_rotation_answered_503_by_the_deadline_is_not_committed_behind_the_clients_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        let (inner, store, started, now) = deadlined_with_a_login(&path).await;
        let (writer_took, release) = stall_writer(&inner);
        // The disk stalls on the rotation: the deadline answers 503.
        let at = now + SignedDuration::from_secs(1);
        let answer = refresh(&store, &started.token, BY, at, &mut SystemEntropy).await;
        assert!(
            matches!(answer, Err(RefreshError::Store(StoreError::Unavailable(_)))),
            "{answer:?}"
        );
        writer_took.recv().unwrap();
        // The disk recovers after the grace. A write queued behind the rotation is
        // answered once the writer is past it (committed or undone).
        release.send(()).unwrap();
        let retry = now + SignedDuration::from_secs(10);
        inner.purge(now).await.unwrap();
        assert_eq!(
            bounded(inner.family(&started.family.id, retry)).await,
            Some(started.family.clone()),
            "memory holds the state the client was left with"
        );
        // The client retries with the token it was told to keep: an ordinary rotation.
        let family = retry_rotates_afresh(&store, &started.token, BY, retry).await;
        drop((store, inner));
        assert_eq!(stored_on_disk(&path, &family.id), Some(family));
    }

    /// What was decided on a rotation that is not committed (its caller gone) rests on a
    /// state that never was: a logout of the rotated family is not committed either, and
    /// a read waiting for the rotation is refused, not answered it. Another family's write
    /// in the same group is committed.
    #[tokio::test]
    async fn what_was_decided_on_an_abandoned_rotation_is_neither_committed_nor_answered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        let (inner, store, started, now) = deadlined_with_a_login(&path).await;
        let id = started.family.id.clone();
        let (writer_took, release) = stall_writer(&inner);
        let at = now + SignedDuration::from_secs(1);
        let answer = refresh(&store, &started.token, BY, at, &mut SystemEntropy).await;
        assert!(
            matches!(answer, Err(RefreshError::Store(StoreError::Unavailable(_)))),
            "{answer:?}"
        );
        writer_took.recv().unwrap();
        // While the writer holds the rotation, memory holds its state (not durable)...
        let rotated = lock(&inner.shared).families[&id].family.clone();
        assert_eq!(rotated.generation, 1);
        // ...a read observes it and waits for it to be durable...
        let mut read = inner.family(&id, at);
        assert!(futures::poll!(&mut read).is_pending());
        // ...a logout is decided on it, and another client logs in.
        let mut logged_out = rotated.clone();
        logged_out.revoked = Some(crate::refresh::Revoked {
            at,
            because: crate::refresh::RevokedBecause::Logout,
        });
        let logout = inner.swap(&rotated, &logged_out, None);
        let other = start(login(), at, &mut SystemEntropy).unwrap().family;
        let login = inner.create(&other);
        // A reader of the other family waits for its login's commit, in the same group:
        // the undone family's readers are refused, not everyone's.
        let mut other_read = inner.family(&other.id, at);
        assert!(futures::poll!(&mut other_read).is_pending());
        release.send(()).unwrap();
        let (read, logout, login, other_read) = futures::join!(read, logout, login, other_read);
        assert!(matches!(read, Err(StoreError::Unavailable(_))), "{read:?}");
        assert_eq!(other_read.unwrap(), Some(other.clone()));
        assert!(
            matches!(logout, Err(StoreError::Unavailable(_))),
            "{logout:?}"
        );
        login.unwrap();
        assert_eq!(
            bounded(inner.family(&id, at)).await,
            Some(started.family.clone())
        );
        assert_eq!(
            bounded(inner.family(&other.id, at)).await,
            Some(other.clone())
        );
        // The client's retry after the grace rotates; the family was never revoked.
        let retry = now + SignedDuration::from_secs(10);
        retry_rotates_afresh(&store, &started.token, BY, retry).await;
        drop((store, inner));
        let on_disk = stored_on_disk(&path, &id).unwrap();
        assert_eq!((on_disk.generation, on_disk.revoked), (1, None));
        assert_eq!(stored_on_disk(&path, &other.id), Some(other));
    }

    /// A reuse whose caller has gone (the deadline passed while the disk stalled) ends
    /// the family and records its session's end all the same, in the same commit: a
    /// replayed token whose presenter disconnects leaves no session alive.
    #[tokio::test]
    async fn a_reuse_whose_caller_has_gone_ends_the_session_all_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        let (inner, store, started, now) = deadlined_with_a_login(&path).await;
        let key = issuer_key();
        let by = Presenter {
            sessions: Some(&key),
            ..BY
        };
        let rotated = now + SignedDuration::from_secs(1);
        let answer = refresh(&store, &started.token, by, rotated, &mut SystemEntropy).await;
        assert!(matches!(answer, Ok(Refreshed::Pair { rotated: true, .. })));
        let (writer_took, release) = stall_writer(&inner);
        let replayed = rotated + SignedDuration::from_secs(60);
        let answer = refresh(&store, &started.token, by, replayed, &mut SystemEntropy).await;
        assert!(
            matches!(answer, Err(RefreshError::Store(StoreError::Unavailable(_)))),
            "{answer:?}"
        );
        writer_took.recv().unwrap();
        release.send(()).unwrap();
        inner.purge(now).await.unwrap();
        let family = bounded(inner.family(&started.family.id, replayed))
            .await
            .unwrap();
        assert_eq!(
            family.revoked.map(|r| r.because),
            Some(crate::refresh::RevokedBecause::Reuse)
        );
        let ended = SessionRevocation::new(
            key,
            &started.family.id,
            crate::revocation::SessionEnd::Reuse,
            replayed,
        );
        assert_eq!(logged(&inner).await, [ended]);
    }

    /// A logout answered 503 by the deadline (the disk stalled) is committed once the disk
    /// recovers, with its session's end: the session its client meant to end ends at
    /// every gateway, though the answer was lost.
    #[tokio::test]
    async fn a_logout_whose_caller_has_gone_is_committed_all_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        let (inner, store, started, now) = deadlined_with_a_login(&path).await;
        let (writer_took, release) = stall_writer(&inner);
        let at = now + SignedDuration::from_secs(1);
        let key = issuer_key();
        let answer =
            crate::tokens::logout(&store, &started.token, CLIENT, &|_| Some(issuer_key()), at)
                .await;
        assert!(
            matches!(answer, Err(RefreshError::Store(StoreError::Unavailable(_)))),
            "{answer:?}"
        );
        writer_took.recv().unwrap();
        let woken = inner.ended_sessions();
        release.send(()).unwrap();
        // A write queued behind the logout is answered once the writer is past it.
        inner.purge(now).await.unwrap();
        let logged_out = crate::refresh::logout(&started.family, at).unwrap();
        assert_eq!(
            bounded(inner.family(&started.family.id, at)).await,
            Some(logged_out.clone())
        );
        // Its followers were woken for the entry, which names the session.
        assert!(woken.has_changed().unwrap());
        let ended = SessionRevocation::new(
            key,
            &started.family.id,
            crate::revocation::SessionEnd::Logout,
            at,
        );
        assert_eq!(logged(&inner).await, [ended]);
        let answer = refresh(&store, &started.token, BY, at, &mut SystemEntropy).await;
        assert!(
            matches!(answer, Err(RefreshError::Refused(_))),
            "{answer:?}"
        );
        drop((store, inner));
        assert_eq!(stored_on_disk(&path, &started.family.id), Some(logged_out));
    }

    #[tokio::test]
    async fn a_record_that_does_not_decode_is_a_corrupt_file_at_start_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        let now = Timestamp::now();
        let mut family = start(login(), now, &mut SystemEntropy).unwrap().family;
        family.id = "a-family-damaged-on-disk".into();
        {
            let store = EmbeddedStore::open(&path).unwrap();
            store.create(&family).await.unwrap();
        }
        // The id's bytes, wherever they are, made invalid UTF-8 (a key of a `&str` table).
        let mut bytes = std::fs::read(&path).unwrap();
        let mut damaged = 0;
        for at in 0..bytes.len() - 7 {
            if &bytes[at..at + 7] == b"damaged" {
                bytes[at + 3] = 0xff;
                damaged += 1;
            }
        }
        assert!(damaged > 0);
        std::fs::write(&path, bytes).unwrap();

        let opened = EmbeddedStore::open(&path);
        let Err(StoreError::Corrupt(why)) = opened else {
            panic!("{:?}", opened.err());
        };
        assert!(
            why.contains(&path.display().to_string()) && why.contains("move the file aside"),
            "{why}"
        );
    }

    /// Writes an entry through `insert` into a closed store's file, then makes the
    /// entry's `marker` (a key of a `&str` table) invalid UTF-8 wherever it is.
    fn damage_a_key(path: &Path, marker: &[u8], insert: impl FnOnce(&WriteTransaction)) {
        {
            let db = Database::open(path).unwrap();
            let txn = db.begin_write().unwrap();
            insert(&txn);
            txn.commit().unwrap();
        }
        let mut bytes = std::fs::read(path).unwrap();
        let mut damaged = 0;
        for at in 0..bytes.len() - marker.len() {
            if &bytes[at..at + marker.len()] == marker {
                bytes[at + 3] = 0xff;
                damaged += 1;
            }
        }
        assert!(damaged > 0);
        std::fs::write(path, bytes).unwrap();
    }

    /// ATTACK10 finding 4: the start read only `families` and `preceding`; a key of
    /// `expiry` that does not decode panicked the writer at the first purge, and the
    /// endpoint answered 503 for ever without saying the file is corrupt.
    #[tokio::test]
    async fn an_index_key_that_does_not_decode_is_a_corrupt_file_at_start_not_a_panic() {
        let expiry = |txn: &WriteTransaction| {
            txn.open_table(EXPIRY)
                .unwrap()
                .insert((0, "expiry-key-marker"), ())
                .unwrap();
        };
        let sessions = |txn: &WriteTransaction| {
            txn.open_multimap_table(SESSIONS)
                .unwrap()
                .insert((CLIENT, "session-key-marker"), "id")
                .unwrap();
        };
        type Insert<'a> = &'a dyn Fn(&WriteTransaction);
        let damages: [(&[u8], Insert); 2] = [
            (b"expiry-key-marker", &expiry),
            (b"session-key-marker", &sessions),
        ];
        for (marker, insert) in damages {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("t.redb");
            let now = Timestamp::now();
            let family = start(login(), now, &mut SystemEntropy).unwrap().family;
            {
                let store = EmbeddedStore::open(&path).unwrap();
                store.create(&family).await.unwrap();
            }
            damage_a_key(&path, marker, insert);
            let opened = EmbeddedStore::open(&path);
            let Err(StoreError::Corrupt(why)) = opened else {
                panic!("{:?}", opened.err());
            };
            assert!(
                why.contains(&path.display().to_string()) && why.contains("move the file aside"),
                "{why}"
            );
        }
    }

    /// A key the start does not read (`family_tokens` holds one entry per rotation) that
    /// does not decode, met by the writer: the group fails as `Corrupt` (saying to move
    /// the file aside), and the writer goes on instead of dying.
    #[tokio::test]
    async fn a_key_that_does_not_decode_fails_its_write_as_corrupt_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        drop(EmbeddedStore::open(&path).unwrap());
        damage_a_key(&path, b"family-tokens-marker", |txn| {
            txn.open_multimap_table(FAMILY_TOKENS)
                .unwrap()
                .insert("family-tokens-marker", [0u8; 32].as_slice())
                .unwrap();
        });
        let store = EmbeddedStore::open(&path).unwrap();
        let now = Timestamp::now();
        let family = start(login(), now, &mut SystemEntropy).unwrap().family;
        // The login's token is recorded in `family_tokens`, whose one key does not decode.
        let answer = store.create(&family).await;
        let Err(StoreError::Corrupt(why)) = answer else {
            panic!("{answer:?}");
        };
        assert!(why.contains("move the file aside"), "{why}");
        assert!(!store.shared.stopped.load(Ordering::SeqCst));
        // The writer still writes what does not meet that key, from memory as the file.
        assert_eq!(bounded(store.family(&family.id, now)).await, None);
        assert_eq!(store.purge(now).await.unwrap(), 0);
        store.end_session(&ended_session(), 0).await.unwrap();
    }

    /// The hashes of `tokens`, read through the store's handle.
    fn token_entries(store: &EmbeddedStore) -> Vec<Vec<u8>> {
        store
            .db
            .with(|db| {
                let txn = db.begin_read().map_err(|e| failed(e.into()))?;
                let tokens = txn.open_table(TOKENS).map_err(|e| failed(e.into()))?;
                let hashes = tokens
                    .iter()
                    .map_err(|e| failed(e.into()))?
                    .map(|entry| entry.map(|(hash, _)| hash.value().to_vec()))
                    .collect::<Result<_, _>>()
                    .map_err(|e| failed(e.into()))?;
                Ok(hashes)
            })
            .unwrap()
    }

    /// A purge forgets a family's token entries, every generation's, and only those.
    #[tokio::test]
    async fn a_purged_familys_tokens_are_forgotten_and_no_others() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("t.redb")).unwrap();
        let now = Timestamp::now();
        let (gone, family) = rotated(&store, now, 3).await;
        let later = now + SignedDuration::from_mins(30);
        let (kept, _) = rotated(&store, later, 2).await;
        assert_eq!(token_entries(&store).len(), gone.len() + kept.len());
        let purged = store
            .purge(family.forget_after() + SignedDuration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(purged, 1);
        let mut left = token_entries(&store);
        left.sort();
        let mut expected: Vec<Vec<u8>> = kept.iter().map(|t| t.hash().0.to_vec()).collect();
        expected.sort();
        assert_eq!(left, expected);
    }

    #[tokio::test]
    async fn custom_claims_read_back_as_written_from_memory_and_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        let now = Timestamp::now();
        let serde_json::Value::Object(claims) = serde_json::json!({
            "roles": ["payments", "ops"],
            "ratio": 0.1,
            "big": u64::MAX,
            "negative": -7,
            "name": "Zoë \"quoted\"",
            "nested": {"a": [null, true, {"b": 1e300}]},
        }) else {
            unreachable!()
        };
        let mut with_claims = login();
        with_claims.claims = claims;
        let family = start(with_claims, now, &mut SystemEntropy).unwrap().family;
        {
            let store = EmbeddedStore::open(&path).unwrap();
            store.create(&family).await.unwrap();
            assert_eq!(
                bounded(store.family(&family.id, now)).await,
                Some(family.clone())
            );
        }
        let store = EmbeddedStore::open(&path).unwrap();
        assert_eq!(
            bounded(store.family(&family.id, now)).await,
            Some(family.clone())
        );
    }

    /// A file of an earlier version holds the `preceding` table. Left there, an entry of
    /// it would go stale with this version's rotations and name an older generation's token
    /// as the preceding one, which would then replay instead of being reuse: the table is
    /// dropped at open, and the preceding token is found in `tokens`.
    #[tokio::test]
    async fn the_preceding_table_of_an_earlier_version_is_dropped_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        let now = Timestamp::now();
        let (tokens, family) = {
            let store = EmbeddedStore::open(&path).unwrap();
            rotated(&store, now, 3).await
        };
        {
            // As an earlier version left it before this one rotated the family twice more.
            let db = Database::open(&path).unwrap();
            write(&db, |txn| {
                txn.open_table(PRECEDING)?
                    .insert(family.id.as_str(), tokens[1].hash().0.as_slice())?;
                Ok(true)
            })
            .unwrap();
        }
        let store = EmbeddedStore::open(&path).unwrap();
        let gone = store
            .db
            .with(|db| {
                let txn = db.begin_read().map_err(|e| failed(e.into()))?;
                Ok(matches!(
                    txn.open_table(PRECEDING),
                    Err(redb::TableError::TableDoesNotExist(_))
                ))
            })
            .unwrap();
        assert!(gone, "the table is dropped");
        // Within the grace of the last rotation (at +30 s): the preceding token replays...
        let within = now + SignedDuration::from_secs(32);
        let answer = refresh(&store, &tokens[2], BY, within, &mut SystemEntropy).await;
        let Ok(Refreshed::Pair {
            token,
            rotated: false,
            ..
        }) = answer
        else {
            panic!("{answer:?}");
        };
        assert_eq!(token, tokens[3]);
        // ...and the one the stale entry named is reuse.
        let answer = refresh(&store, &tokens[1], BY, within, &mut SystemEntropy).await;
        assert!(matches!(answer, Ok(Refreshed::Reuse { .. })), "{answer:?}");
    }
}
