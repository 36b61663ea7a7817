//! The embedded family store: one redb file (ACID transactions, copy-on-write B-trees, a
//! commit is durable when it returns), in the state folder or on a volume. For one
//! replica: a file cannot be shared.
//!
//! Tables: `families` (id → the family as JSON), `tokens` (SHA-256 of a refresh token →
//! family id and generation), `family_tokens` (id → its token hashes, to forget them with
//! it) and `expiry` ((forget-after second, id) → (), the purge's index). redb serialises
//! write transactions, so the compare-and-set is a read and a write in one transaction.

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

use super::{FamilyStore, Found, StoreError};
use crate::refresh::{Family, TokenHash};

const FAMILIES: TableDefinition<&str, &[u8]> = TableDefinition::new("families");
const TOKENS: TableDefinition<&[u8], (&str, u64)> = TableDefinition::new("tokens");
const FAMILY_TOKENS: MultimapTableDefinition<&str, &[u8]> =
    MultimapTableDefinition::new("family_tokens");
const EXPIRY: TableDefinition<(i64, &str), ()> = TableDefinition::new("expiry");

/// redb's page cache is a ceiling, not an allocation; its default (1 GiB) is far more than
/// families need (about 1 KiB each).
const CACHE_BYTES: usize = 32 * 1024 * 1024;

#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
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
            Ok(true)
        })
        .map_err(|e| in_file(path, e))?;
        Ok(Self { db: Arc::new(db) })
    }

    /// Runs `job` on the blocking pool: redb's calls do file I/O and wait for the writer.
    fn blocking<T: Send + 'static>(
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
        let family = family.clone();
        self.blocking(move |db| {
            write(db, |txn| {
                let json = encode(&family)?;
                txn.open_table(FAMILIES)?
                    .insert(family.id.as_str(), json.as_slice())?;
                record_token(txn, &family)?;
                txn.open_table(EXPIRY)?
                    .insert((family.forget_after().as_second(), family.id.as_str()), ())?;
                Ok(true)
            })
            .map(drop)
        })
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

    fn swap<'a>(
        &'a self,
        expected: &'a Family,
        next: &'a Family,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let (expected, next) = (expected.clone(), next.clone());
        self.blocking(move |db| {
            write(db, |txn| {
                let mut families = txn.open_table(FAMILIES)?;
                let Some(stored) = read_family(&families, &next.id)? else {
                    return Ok(false);
                };
                if stored.generation != expected.generation
                    || stored.revoked.is_some() != expected.revoked.is_some()
                {
                    return Ok(false);
                }
                let json = encode(&next)?;
                families.insert(next.id.as_str(), json.as_slice())?;
                drop(families);
                if next.generation != stored.generation {
                    record_token(txn, &next)?;
                }
                Ok(true)
            })
        })
    }

    fn purge(&self, now: Timestamp) -> BoxFuture<'_, Result<usize, StoreError>> {
        self.blocking(move |db| {
            let mut purged = 0;
            write(db, |txn| {
                let mut expiry = txn.open_table(EXPIRY)?;
                let due: Vec<(i64, String)> = expiry
                    .range(..(now.as_second(), ""))?
                    .map(|entry| entry.map(|(key, _)| (key.value().0, key.value().1.to_owned())))
                    .collect::<Result<_, _>>()?;
                let mut families = txn.open_table(FAMILIES)?;
                let mut tokens = txn.open_table(TOKENS)?;
                let mut family_tokens = txn.open_multimap_table(FAMILY_TOKENS)?;
                for (second, id) in &due {
                    expiry.remove((*second, id.as_str()))?;
                    families.remove(id.as_str())?;
                    for hash in family_tokens.remove_all(id.as_str())? {
                        tokens.remove(hash?.value())?;
                    }
                }
                purged = due.len();
                Ok(purged > 0)
            })?;
            Ok(purged)
        })
    }
}

/// Errors inside a transaction: redb's, or a record that does not read.
enum TxnError {
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
fn write(
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

fn failed(e: redb::Error) -> StoreError {
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
