//! The log of ended sessions in the embedded file: a table `ended_sessions` from a
//! sequence number to one entry ([`SessionRevocation::encode`]), in the same redb file as
//! the families, so a restart reloads it. One process: a reader waiting for an entry is
//! woken in memory. Each write also forgets the oldest entries that have lapsed (entries
//! are appended in the order they lapse: every one lapses a fixed time after it is
//! written), so the table holds no more than the last day's logouts.
//!
//! Written through the families' batching writer (one commit with the writes beside
//! it): in a transaction of its own, each logout of a wave held a blocking thread
//! waiting for the file's one writer (10,000 logouts in the plan's load test: some 100
//! MiB more RSS, and their commits one by one).

use std::time::Duration;

use futures::future::BoxFuture;
use jiff::Timestamp;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use super::StoreError;
use super::embedded::{EmbeddedStore, TxnError, failed, write};
use super::session_log::{Cursor, READ_BATCH, Read, SessionLog};
use crate::revocation::SessionRevocation;

const ENDED: TableDefinition<u64, &str> = TableDefinition::new("ended_sessions");
/// The most lapsed entries one write forgets.
const FORGET_PER_WRITE: usize = 64;
/// The most lapsed entries one [`SessionLog::forget`] forgets (it runs every minute).
const FORGET_PER_CALL: usize = 10_000;

pub struct EmbeddedSessionLog {
    store: EmbeddedStore,
}

impl EmbeddedSessionLog {
    pub fn new(store: &EmbeddedStore) -> Self {
        Self {
            store: store.clone(),
        }
    }
}

impl SessionLog for EmbeddedSessionLog {
    fn record<'a>(
        &'a self,
        revocation: &'a SessionRevocation,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let written = self.store.end_session(revocation, now.as_second());
        Box::pin(async move {
            written.await?;
            Ok(())
        })
    }

    fn forget(&self, now: Timestamp) -> BoxFuture<'_, Result<usize, StoreError>> {
        let now = now.as_second();
        self.store.blocking(move |db| {
            let mut forgotten = 0;
            write(db, |txn| {
                forgotten = forget_lapsed(&mut txn.open_table(ENDED)?, now, FORGET_PER_CALL)?;
                Ok(forgotten > 0)
            })?;
            Ok(forgotten)
        })
    }

    fn read(
        &self,
        after: Cursor,
        wait: Option<Duration>,
    ) -> BoxFuture<'_, Result<Read, StoreError>> {
        // Subscribed before reading: an entry committed in between wakes the wait.
        let mut written = self.store.ended_sessions();
        Box::pin(async move {
            let read = self
                .store
                .blocking(move |db| read_after(db, after.0))
                .await?;
            match wait {
                Some(wait) if read.revocations.is_empty() && read.malformed == 0 => {
                    // Woken by a write in this process (or not, within `wait`).
                    let _ =
                        tokio::time::timeout(wait, written.wait_for(|last| *last > after.0)).await;
                    self.store.blocking(move |db| read_after(db, after.0)).await
                }
                _ => Ok(read),
            }
        })
    }
}

/// Appends `line` to the log in `txn` (and forgets up to [`FORGET_PER_WRITE`] lapsed
/// entries at its head); its sequence number.
pub(super) fn append(txn: &WriteTransaction, line: &str, now: i64) -> Result<u64, TxnError> {
    let mut table = txn.open_table(ENDED)?;
    let sequence = table.last()?.map_or(0, |(k, _)| k.value()) + 1;
    table.insert(sequence, line)?;
    forget_lapsed(&mut table, now, FORGET_PER_WRITE)?;
    Ok(sequence)
}

/// Removes up to `most` entries at the head of the log that lapsed before `now` (or do
/// not read); entries lapse in the order they were written, so the head is where they are.
/// The last entry is always kept, lapsed or not: its sequence number is where the next
/// one continues (were the table emptied, numbering would start again at 1, behind every
/// follower's cursor, and new entries would never be read).
fn forget_lapsed(
    table: &mut redb::Table<u64, &str>,
    now: i64,
    most: usize,
) -> Result<usize, TxnError> {
    let Some(last) = table.last()?.map(|(k, _)| k.value()) else {
        return Ok(0);
    };
    let lapsed: Vec<u64> = table
        .iter()?
        .take(most)
        .filter_map(Result::ok)
        .take_while(|(k, v)| {
            k.value() != last
                && SessionRevocation::decode(v.value()).is_none_or(|r| r.lapses_at < now)
        })
        .map(|(k, _)| k.value())
        .collect();
    for key in &lapsed {
        table.remove(*key)?;
    }
    Ok(lapsed.len())
}

fn read_after(db: &Database, after: u64) -> Result<Read, StoreError> {
    let txn = db.begin_read().map_err(|e| failed(e.into()))?;
    let table = match txn.open_table(ENDED) {
        Ok(table) => table,
        // Nothing was ever written.
        Err(redb::TableError::TableDoesNotExist(_)) => {
            return Ok(Read {
                next: (after, 0),
                ..Read::default()
            });
        }
        Err(e) => return Err(failed(e.into())),
    };
    let mut read = Read {
        next: (after, 0),
        ..Read::default()
    };
    for entry in table
        .range(after.saturating_add(1)..)
        .map_err(|e| failed(e.into()))?
        .take(READ_BATCH)
    {
        let (key, value) = entry.map_err(|e| failed(e.into()))?;
        read.next = (key.value(), 0);
        match SessionRevocation::decode(value.value()) {
            Some(revocation) => read.revocations.push(revocation),
            None => read.malformed += 1,
        }
    }
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ObjectKey;
    use crate::revocation::SessionEnd;

    fn ended(sid: &str, at: i64) -> SessionRevocation {
        let key = ObjectKey {
            namespace: "auth".into(),
            name: "web".into(),
        };
        SessionRevocation::new(
            key,
            sid,
            SessionEnd::Logout,
            Timestamp::from_second(at).unwrap(),
        )
    }

    #[tokio::test]
    async fn entries_are_read_in_order_from_a_cursor_kept_across_a_reopen_and_lapsed_ones_forgotten()
     {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.redb");
        let store = EmbeddedStore::open(&path).unwrap();
        let log = EmbeddedSessionLog::new(&store);
        // A file where nothing was ended yet reads empty.
        let read = log.read((0, 0), None).await.unwrap();
        assert_eq!((read.revocations.len(), read.next), (0, (0, 0)));

        let t = 1_700_000_000;
        for (sid, at) in [("a", t), ("b", t + 10)] {
            let entry = ended(sid, at);
            log.record(&entry, Timestamp::from_second(at).unwrap())
                .await
                .unwrap();
        }
        let read = log.read((0, 0), None).await.unwrap();
        assert_eq!(read.revocations, vec![ended("a", t), ended("b", t + 10)]);
        assert_eq!(read.next, (2, 0));
        // From the cursor: nothing new; a waiting read is woken by a write.
        let waiting = log.read(read.next, Some(Duration::from_secs(30)));
        let writing = async {
            log.record(&ended("c", t + 20), Timestamp::from_second(t + 20).unwrap())
                .await
                .unwrap();
        };
        let (woken, ()) = tokio::join!(waiting, writing);
        assert_eq!(woken.unwrap().revocations, vec![ended("c", t + 20)]);

        // Reopened (a restart): everything is there.
        drop(log);
        drop(store);
        let store = EmbeddedStore::open(&path).unwrap();
        let log = EmbeddedSessionLog::new(&store);
        assert_eq!(log.read((0, 0), None).await.unwrap().revocations.len(), 3);
        // A write after "a" and "b" lapsed forgets them (the head), not "c".
        let later = ended("c", t + 20).lapses_at - 5;
        log.record(&ended("d", later), Timestamp::from_second(later).unwrap())
            .await
            .unwrap();
        let read = log.read((0, 0), None).await.unwrap();
        let sids: Vec<_> = read.revocations.iter().map(|r| r.sid).collect();
        assert_eq!(
            sids,
            vec![
                crate::revocation::sessions::SidHash::of("c"),
                crate::revocation::sessions::SidHash::of("d")
            ]
        );
        assert_eq!(read.next, (4, 0));
        // Once every entry has lapsed, the minute's purge forgets all but the last (its
        // number is where the next continues): the next entry still comes after the
        // cursor of a follower that read them all.
        let all_lapsed = Timestamp::from_second(ended("d", later).lapses_at + 1).unwrap();
        assert_eq!(log.forget(all_lapsed).await.unwrap(), 1);
        assert_eq!(log.forget(all_lapsed).await.unwrap(), 0);
        let fresh = ended("e", all_lapsed.as_second());
        log.record(&fresh, all_lapsed).await.unwrap();
        let read = log.read((4, 0), None).await.unwrap();
        assert_eq!((read.revocations, read.next), (vec![fresh], (5, 0)));
    }
}
