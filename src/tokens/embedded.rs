//! The embedded family store: one redb file (ACID transactions, copy-on-write B-trees, a
//! commit is durable when it returns), in the state folder or on a volume. For one
//! replica: a file cannot be shared.
//!
//! Tables: `families` (id → the family as JSON), `tokens` (SHA-256 of a refresh token →
//! family id and generation), `family_tokens` (id → its token hashes, to forget them with
//! it), `expiry` ((forget-after second, id) → (), the purge's index) and `sessions`
//! ((client, subject) → family ids, for support tools; written with the family and purged
//! with it, so it is never larger than `families`). redb serialises
//! write transactions, so the compare-and-set is a read and a write in one transaction.
//!
//! Writes are committed in groups: one writer thread takes every write waiting (up to
//! [`MAX_BATCH`]), applies them in order in one transaction, commits once (one fsync),
//! then answers each. A commit is durable before any of its writers hears back, so a
//! crash still loses nothing that was answered; under concurrent refreshes the cost of
//! the fsync is shared instead of paid per refresh (which capped one store at a few
//! hundred refreshes a second). Each write's compare-and-set sees the writes before it
//! in its group, so two rotations of one family in one group are one rotation and one
//! lost race, as in separate transactions.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use futures::future::BoxFuture;
use jiff::Timestamp;
use redb::{
    Database, MultimapTableDefinition, ReadableDatabase, ReadableTable, TableDefinition,
    WriteTransaction,
};

use super::{FamilyStore, Found, MAX_SESSIONS_LISTED, StoreError};
use crate::refresh::{Family, TokenHash};

const FAMILIES: TableDefinition<&str, &[u8]> = TableDefinition::new("families");
const TOKENS: TableDefinition<&[u8], (&str, u64)> = TableDefinition::new("tokens");
const FAMILY_TOKENS: MultimapTableDefinition<&str, &[u8]> =
    MultimapTableDefinition::new("family_tokens");
const EXPIRY: TableDefinition<(i64, &str), ()> = TableDefinition::new("expiry");
const SESSIONS: MultimapTableDefinition<(&str, &str), &str> =
    MultimapTableDefinition::new("sessions");

/// redb's page cache is a ceiling, not an allocation; its default (1 GiB) is far more than
/// families need (about 1 KiB each).
const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// The most writes one transaction takes.
const MAX_BATCH: usize = 256;
/// Writes waiting for the writer beyond this wait in their callers (backpressure).
const QUEUE: usize = 4096;

#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    writer: Arc<Writer>,
}

/// One write for the writer thread, with where its answer goes.
enum Op {
    Create(Box<Family>),
    Swap {
        expected: Box<Family>,
        next: Box<Family>,
    },
    Purge(Timestamp),
    /// Appends an entry to the log of ended sessions (`now`: Unix seconds, for
    /// forgetting lapsed ones); answers its sequence number.
    EndSession {
        line: String,
        now: i64,
    },
}

type Reply = tokio::sync::oneshot::Sender<Result<usize, StoreError>>;

/// The writer thread and its queue. Dropped with the last clone of the store: the queue
/// closes, the thread finishes what it holds and ends, and the file is closed when this
/// returns (so that it can be opened again at once).
struct Writer {
    queue: Option<tokio::sync::mpsc::Sender<(Op, Reply)>>,
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
    /// when is nobody else's business) when missing. Blocking.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| StoreError::Unavailable(format!("{}: {e}", path.display())))?;
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create_file(file)
            .map_err(|e| failed(redb::Error::from(e)))
            .map_err(|e| in_file(path, e))?;
        // The tables exist from the start, so that reads never meet a missing table.
        write(&db, |txn| {
            txn.open_table(FAMILIES)?;
            txn.open_table(TOKENS)?;
            txn.open_multimap_table(FAMILY_TOKENS)?;
            txn.open_table(EXPIRY)?;
            txn.open_multimap_table(SESSIONS)?;
            Ok(true)
        })
        .map_err(|e| in_file(path, e))?;
        let db = Arc::new(db);
        let (queue, mut receiver) = tokio::sync::mpsc::channel::<(Op, Reply)>(QUEUE);
        let writer_db = db.clone();
        let thread = std::thread::Builder::new()
            .name("token-store-writer".into())
            .spawn(move || {
                while let Some(first) = receiver.blocking_recv() {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH
                        && let Ok(next) = receiver.try_recv()
                    {
                        batch.push(next);
                    }
                    let (ops, replies): (Vec<Op>, Vec<Reply>) = batch.into_iter().unzip();
                    for (reply, answer) in replies.into_iter().zip(apply_batch(&writer_db, &ops)) {
                        let _ = reply.send(answer);
                    }
                }
            })
            .map_err(|e| {
                StoreError::Unavailable(format!("cannot start the store's writer: {e}"))
            })?;
        Ok(Self {
            db,
            writer: Arc::new(Writer {
                queue: Some(queue),
                thread: Some(thread),
            }),
        })
    }

    /// Appends `line` to the log of ended sessions in the writer's next group (one
    /// commit with the families written beside it, not a transaction of its own: under a
    /// wave of logouts each would hold a blocking thread waiting for the file's one
    /// writer); answers its sequence number once committed.
    pub(super) fn end_session(
        &self,
        line: String,
        now: i64,
    ) -> BoxFuture<'static, Result<u64, StoreError>> {
        let write = self.write(Op::EndSession { line, now });
        Box::pin(async move { write.await.map(|sequence| sequence as u64) })
    }

    /// Queues a write for the writer thread and waits for its answer (after the commit).
    fn write(&self, op: Op) -> BoxFuture<'static, Result<usize, StoreError>> {
        let queue = self.writer.queue.clone();
        Box::pin(async move {
            let closed = || StoreError::Unavailable("the store's writer has stopped".into());
            let queue = queue.ok_or_else(closed)?;
            let (reply, answer) = tokio::sync::oneshot::channel();
            queue.send((op, reply)).await.map_err(|_| closed())?;
            answer.await.map_err(|_| closed())?
        })
    }

    /// Runs `job` on the blocking pool: redb's calls do file I/O and wait for the writer.
    /// (The log of ended sessions beside the families reads through it too.)
    pub(super) fn blocking<T: Send + 'static>(
        &self,
        job: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        let db = self.db.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || job(&db))
                .await
                .map_err(|e| StoreError::Unavailable(format!("the store's task failed: {e}")))?
        })
    }
}

impl FamilyStore for EmbeddedStore {
    fn create<'a>(&'a self, family: &'a Family) -> BoxFuture<'a, Result<(), StoreError>> {
        let write = self.write(Op::Create(Box::new(family.clone())));
        Box::pin(async move { write.await.map(drop) })
    }

    fn find(
        &self,
        token: TokenHash,
        now: Timestamp,
    ) -> BoxFuture<'_, Result<Option<Found>, StoreError>> {
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(|e| failed(e.into()))?;
            let tokens = txn.open_table(TOKENS).map_err(|e| failed(e.into()))?;
            let Some(entry) = tokens
                .get(token.0.as_slice())
                .map_err(|e| failed(e.into()))?
            else {
                return Ok(None);
            };
            let (id, generation) = entry.value();
            let families = txn.open_table(FAMILIES).map_err(|e| failed(e.into()))?;
            let Some(family) = read_family(&families, id)? else {
                return Err(StoreError::Corrupt(format!(
                    "a token of family {id} outlived its family"
                )));
            };
            Ok((now < family.forget_after()).then_some(Found { family, generation }))
        })
    }

    fn family<'a>(
        &'a self,
        id: &'a str,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<Option<Family>, StoreError>> {
        let id = id.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(|e| failed(e.into()))?;
            let families = txn.open_table(FAMILIES).map_err(|e| failed(e.into()))?;
            Ok(read_family(&families, &id)?.filter(|family| now < family.forget_after()))
        })
    }

    fn sessions<'a>(
        &'a self,
        client: &'a str,
        subject: &'a str,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<Vec<Family>, StoreError>> {
        let (client, subject) = (client.to_owned(), subject.to_owned());
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(|e| failed(e.into()))?;
            let index = txn
                .open_multimap_table(SESSIONS)
                .map_err(|e| failed(e.into()))?;
            let families = txn.open_table(FAMILIES).map_err(|e| failed(e.into()))?;
            let mut found = Vec::new();
            for id in index
                .get((client.as_str(), subject.as_str()))
                .map_err(|e| failed(e.into()))?
            {
                let id = id.map_err(|e| failed(e.into()))?;
                // Past forget_after but not yet purged: as if gone.
                let Some(family) = read_family(&families, id.value())?
                    .filter(|family| now < family.forget_after())
                else {
                    continue;
                };
                if found.len() == MAX_SESSIONS_LISTED {
                    return Err(StoreError::Unavailable(format!(
                        "more than {MAX_SESSIONS_LISTED} sessions of one subject of client {client}"
                    )));
                }
                found.push(family);
            }
            found.sort_by(|a, b| (a.started_at, &a.id).cmp(&(b.started_at, &b.id)));
            Ok(found)
        })
    }

    fn swap<'a>(
        &'a self,
        expected: &'a Family,
        next: &'a Family,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let write = self.write(Op::Swap {
            expected: Box::new(expected.clone()),
            next: Box::new(next.clone()),
        });
        Box::pin(async move { write.await.map(|written| written > 0) })
    }

    fn purge(&self, now: Timestamp) -> BoxFuture<'_, Result<usize, StoreError>> {
        self.write(Op::Purge(now))
    }
}

/// Applies a group of writes in one transaction and commits once. Each answer: the
/// number of things written (0: a lost compare-and-set, or nothing to purge). A write
/// that fails on its own (a record that does not read) fails alone and writes nothing;
/// a failing transaction or commit fails every write of the group.
fn apply_batch(db: &Database, ops: &[Op]) -> Vec<Result<usize, StoreError>> {
    let mut answers: Vec<Result<usize, StoreError>> = Vec::with_capacity(ops.len());
    let outcome = write(db, |txn| {
        for op in ops {
            answers.push(match apply(txn, op) {
                Ok(written) => Ok(written),
                Err(TxnError::Store(e)) => Err(e),
                Err(db_error) => return Err(db_error),
            });
        }
        Ok(answers.iter().any(|a| matches!(a, Ok(n) if *n > 0)))
    });
    match outcome {
        Ok(_) => answers,
        Err(e) => ops.iter().map(|_| Err(same_error(&e))).collect(),
    }
}

fn same_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(why) => StoreError::Unavailable(why.clone()),
        StoreError::Corrupt(why) => StoreError::Corrupt(why.clone()),
    }
}

fn apply(txn: &WriteTransaction, op: &Op) -> Result<usize, TxnError> {
    match op {
        Op::Create(family) => {
            let json = encode(family)?;
            txn.open_table(FAMILIES)?
                .insert(family.id.as_str(), json.as_slice())?;
            record_token(txn, family)?;
            txn.open_table(EXPIRY)?
                .insert((family.forget_after().as_second(), family.id.as_str()), ())?;
            txn.open_multimap_table(SESSIONS)?.insert(
                (family.client.as_str(), family.subject.as_str()),
                family.id.as_str(),
            )?;
            Ok(1)
        }
        Op::Swap { expected, next } => {
            let mut families = txn.open_table(FAMILIES)?;
            let Some(stored) = read_family(&families, &next.id)? else {
                return Ok(0);
            };
            if stored.generation != expected.generation
                || stored.revoked.is_some() != expected.revoked.is_some()
            {
                return Ok(0);
            }
            let json = encode(next)?;
            families.insert(next.id.as_str(), json.as_slice())?;
            drop(families);
            if next.generation != stored.generation {
                record_token(txn, next)?;
            }
            Ok(1)
        }
        Op::EndSession { line, now } => {
            let sequence = super::embedded_sessions::append(txn, line, *now)?;
            Ok(usize::try_from(sequence).unwrap_or(usize::MAX))
        }
        Op::Purge(now) => {
            let mut expiry = txn.open_table(EXPIRY)?;
            let due: Vec<(i64, String)> = expiry
                .range(..(now.as_second(), ""))?
                .map(|entry| entry.map(|(key, _)| (key.value().0, key.value().1.to_owned())))
                .collect::<Result<_, _>>()?;
            let mut families = txn.open_table(FAMILIES)?;
            let mut tokens = txn.open_table(TOKENS)?;
            let mut family_tokens = txn.open_multimap_table(FAMILY_TOKENS)?;
            let mut sessions = txn.open_multimap_table(SESSIONS)?;
            for (second, id) in &due {
                expiry.remove((*second, id.as_str()))?;
                // A family that does not read is forgotten all the same; its index entry
                // then outlives it, and listing skips it.
                if let Ok(Some(family)) = read_family(&families, id) {
                    sessions.remove(
                        (family.client.as_str(), family.subject.as_str()),
                        id.as_str(),
                    )?;
                }
                families.remove(id.as_str())?;
                for hash in family_tokens.remove_all(id.as_str())? {
                    tokens.remove(hash?.value())?;
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

fn record_token(txn: &WriteTransaction, family: &Family) -> Result<(), TxnError> {
    let hash = family.current.0;
    txn.open_table(TOKENS)?
        .insert(hash.as_slice(), (family.id.as_str(), family.generation))?;
    txn.open_multimap_table(FAMILY_TOKENS)?
        .insert(family.id.as_str(), hash.as_slice())?;
    Ok(())
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

fn in_file(path: &Path, e: StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(why) => {
            StoreError::Unavailable(format!("{}: {why}", path.display()))
        }
        StoreError::Corrupt(why) => StoreError::Corrupt(format!("{}: {why}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use jiff::SignedDuration;

    use super::*;
    use crate::refresh::{Lifetimes, Login, SystemEntropy, logout, start};

    fn family() -> Family {
        let login = Login {
            client: "shop/web".into(),
            issuer: "https://auth.example/web".into(),
            subject: "alice".into(),
            audiences: vec!["a".into()],
            claims: Default::default(),
            lifetimes: Lifetimes {
                absolute: SignedDuration::from_hours(1),
                idle: SignedDuration::from_mins(30),
                grace: SignedDuration::from_secs(5),
            },
        };
        start(login, Timestamp::now(), &mut SystemEntropy)
            .unwrap()
            .family
    }

    #[test]
    fn in_one_group_the_second_compare_and_set_of_a_family_loses() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("t.redb")).unwrap();
        let family = family();
        let other = self::family();
        let rotated = Family {
            generation: 1,
            ..family.clone()
        };
        let revoked = logout(&family, Timestamp::now()).unwrap();
        let answers = apply_batch(
            &store.db,
            &[
                Op::Create(Box::new(family.clone())),
                Op::Create(Box::new(other.clone())),
                Op::Swap {
                    expected: Box::new(family.clone()),
                    next: Box::new(rotated.clone()),
                },
                // Read generation 0 as well, but the group's first swap came first.
                Op::Swap {
                    expected: Box::new(family.clone()),
                    next: Box::new(revoked),
                },
                Op::Swap {
                    expected: Box::new(other.clone()),
                    next: Box::new(logout(&other, Timestamp::now()).unwrap()),
                },
            ],
        );
        let answers: Vec<usize> = answers.into_iter().map(Result::unwrap).collect();
        assert_eq!(answers, [1, 1, 1, 0, 1]);
        let txn = store.db.begin_read().unwrap();
        let families = txn.open_table(FAMILIES).unwrap();
        assert_eq!(read_family(&families, &family.id).unwrap(), Some(rotated));
        assert!(
            read_family(&families, &other.id)
                .unwrap()
                .unwrap()
                .revoked
                .is_some()
        );
    }

    #[test]
    fn a_write_that_fails_alone_leaves_the_rest_of_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("t.redb")).unwrap();
        let (broken, fine) = (family(), family());
        apply_batch(
            &store.db,
            &[
                Op::Create(Box::new(broken.clone())),
                Op::Create(Box::new(fine.clone())),
            ],
        );
        write(&store.db, |txn| {
            txn.open_table(FAMILIES)?
                .insert(broken.id.as_str(), b"{".as_slice())?;
            Ok(true)
        })
        .unwrap();
        let answers = apply_batch(
            &store.db,
            &[
                Op::Swap {
                    expected: Box::new(broken.clone()),
                    next: Box::new(logout(&broken, Timestamp::now()).unwrap()),
                },
                Op::Swap {
                    expected: Box::new(fine.clone()),
                    next: Box::new(logout(&fine, Timestamp::now()).unwrap()),
                },
            ],
        );
        assert!(matches!(answers[0], Err(StoreError::Corrupt(_))));
        assert_eq!(answers[1].as_ref().unwrap(), &1);
    }
}
