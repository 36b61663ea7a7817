//! The embedded store's families in memory: every state the store has decided, durable
//! or on its way to the disk, so that a refresh's lookup and its compare-and-set cost a
//! hash-map access under a mutex instead of a read transaction on a blocking thread.
//!
//! The rules that keep memory from ever answering ahead of the disk:
//! - a state is decided here (under the mutex) and queued for the writer in the same
//!   critical section, so the writer's order is the order of the decisions, and each
//!   decision carries a sequence number;
//! - whoever observes a state (a lookup, a read of a family) waits until the writer has
//!   made the write that produced it durable ([`Durability::wait`]) before answering: an
//!   answer never rests on a state a crash could lose;
//! - a commit that fails poisons memory (every call answers "unavailable"), fails every
//!   decision still queued (they were taken on the failed state), and the writer reloads
//!   memory from the disk: memory and disk agree again, and waiters of the failed states
//!   learn of the failure through the epoch (see [`Durability`]).
//!
//! Held per family: the family itself, its custom claims as JSON text (a tree of
//! `serde_json::Value`s costs up to 16 times the text: `{"r":[0,0,…]}` within the
//! 8 KiB a login may carry is about 130 KB as a tree, 8 KB as text; they are parsed again
//! only when a family is answered), and the hashes of its current and preceding
//! tokens (a retry within the grace and the race's loser find their family here).
//! Older tokens are found through the file's `tokens` index (reuse is rare).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::sync::watch;

use super::{StoreError, namespace_of};
use crate::refresh::{Family, TokenHash};

/// One family as memory holds it.
pub(super) struct Slot {
    /// The family without its custom claims (see `claims`).
    pub family: Family,
    /// The family's custom claims as JSON text; `None`: none.
    claims: Option<Box<str>>,
    /// The sequence number of the write that produced this state (0: read from disk).
    pub written: u64,
    /// The hash of the preceding generation's token, if any is known.
    pub preceding: Option<TokenHash>,
    /// What this family costs the process ([`footprint`]).
    bytes: usize,
}

/// What families hold: per client, per namespace, in total.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct Held {
    pub families: usize,
    /// Summed [`footprint`]s.
    pub bytes: usize,
}

/// What a family without custom claims costs the process, beyond its strings: measured
/// (`examples/token_store_memory.rs`, 100,000 logins) as 1.5 to 1.7 KB per login with
/// short strings (the family, its slot, its entries in three maps, the hashes, allocator
/// overhead, redb's cache): counted so that the estimate is not below the measurement.
const FAMILY_BYTES: usize = 1_500;

/// The process grew by 19 to 28 KB per login carrying 8 KiB of claims text (held once,
/// but also copied into the write, its JSON record and redb's pages while it is written,
/// with allocator slack after): the text is counted this many times.
const CLAIMS_FACTOR: usize = 3;

/// What holding `family` (claims as `claims` text) costs the process, estimated from its
/// variable parts; the memory budgets of the store sum these.
pub fn footprint(family: &Family, claims: Option<&str>) -> usize {
    let strings = 3 * family.id.len()
        + family.client.len()
        + family.issuer.len()
        + family.subject.len()
        + family.nonce.len()
        + family.jti.len()
        + family.audiences.iter().map(String::len).sum::<usize>();
    FAMILY_BYTES + strings + CLAIMS_FACTOR * claims.map_or(0, str::len)
}

/// Everything the store has decided, and what a lookup needs.
#[derive(Default)]
pub(super) struct Memory {
    pub families: HashMap<String, Slot>,
    /// The current and preceding tokens' hashes: family id and generation.
    pub recent: HashMap<TokenHash, (String, u64)>,
    /// Families whose record on disk does not read: their tokens are an error, not
    /// unknown (the store's fault, not the client's).
    pub unreadable: HashSet<String>,
    /// The families held per client and per namespace of clients (until forgotten:
    /// revoked and idle-dead ones too, since they hold memory until their absolute
    /// expiry). A tenant may create any number of TokenClients in its namespace, so the
    /// namespace is what a tenant's memory budget counts.
    pub per_client: HashMap<String, Held>,
    pub per_namespace: HashMap<String, Held>,
    /// What every family held costs, summed.
    pub total: Held,
    /// The last sequence number handed out.
    pub sequence: u64,
    /// Changes when a failed commit poisons memory (see [`Durability`]).
    pub epoch: u64,
    /// A commit failed and memory is not yet reloaded: answer nothing from it.
    pub poisoned: bool,
}

/// A state observed in memory: answer it once its write is durable.
pub(super) struct Observed<T> {
    pub value: T,
    /// The family whose state it is.
    pub family: Box<str>,
    pub written: u64,
    pub epoch: u64,
}

impl Memory {
    pub fn next_sequence(&mut self) -> u64 {
        self.sequence += 1;
        self.sequence
    }

    /// Records `family` as its latest state, written by `sequence`; keeps the hashes of
    /// its current and preceding tokens findable and forgets older ones.
    pub fn put(&mut self, mut family: Family, sequence: u64) {
        let id = family.id.clone();
        let claims = std::mem::take(&mut family.claims);
        let claims = (!claims.is_empty()).then(|| Value::Object(claims).to_string().into());
        let bytes = footprint(&family, claims.as_deref());
        let before = self.families.remove(&id);
        let old_bytes = before.as_ref().map(|old| old.bytes);
        for held in [
            self.per_client.entry(family.client.clone()).or_default(),
            self.per_namespace
                .entry(namespace_of(&family.client).to_owned())
                .or_default(),
            &mut self.total,
        ] {
            match old_bytes {
                Some(old) => held.bytes -= old,
                None => held.families += 1,
            }
            held.bytes += bytes;
        }
        let preceding = match &before {
            Some(old) if old.family.generation == family.generation => old.preceding,
            Some(old) => {
                if let Some(older) = old.preceding {
                    self.recent.remove(&older);
                }
                Some(old.family.current)
            }
            None => None,
        };
        self.recent
            .insert(family.current, (id.clone(), family.generation));
        self.families.insert(
            id,
            Slot {
                family,
                claims,
                written: sequence,
                preceding,
                bytes,
            },
        );
    }

    /// What `client`'s families hold.
    pub fn held_by(&self, client: &str) -> Held {
        self.per_client.get(client).copied().unwrap_or_default()
    }

    /// What the families of every client in `client`'s namespace hold.
    pub fn held_in_namespace_of(&self, client: &str) -> Held {
        self.per_namespace
            .get(namespace_of(client))
            .copied()
            .unwrap_or_default()
    }

    /// Forgets a family and the hashes memory holds for it.
    pub fn forget(&mut self, id: &str) {
        if let Some(slot) = self.families.remove(id) {
            let client = &slot.family.client;
            for (map, key) in [
                (&mut self.per_client, client.as_str()),
                (&mut self.per_namespace, namespace_of(client)),
            ] {
                if let Some(held) = map.get_mut(key) {
                    held.families -= 1;
                    held.bytes -= slot.bytes;
                    if held.families == 0 {
                        map.remove(key);
                    }
                }
            }
            self.total.families -= 1;
            self.total.bytes -= slot.bytes;
            self.recent.remove(&slot.family.current);
            if let Some(preceding) = slot.preceding {
                self.recent.remove(&preceding);
            }
        }
        self.unreadable.remove(id);
    }

    /// The family `id` as last decided.
    pub fn family(&self, id: &str) -> Result<Option<Observed<Compact>>, StoreError> {
        if self.unreadable.contains(id) {
            return Err(StoreError::Corrupt(format!("family {id} does not read")));
        }
        Ok(self.families.get(id).map(|slot| Observed {
            value: Compact {
                family: slot.family.clone(),
                claims: slot.claims.clone(),
            },
            family: id.into(),
            written: slot.written,
            epoch: self.epoch,
        }))
    }
}

/// A family as memory holds it, copied out of the lock: the claims are parsed outside it.
pub(super) struct Compact {
    /// Without its custom claims.
    pub family: Family,
    claims: Option<Box<str>>,
}

impl Compact {
    /// The whole family.
    pub fn expand(self) -> Result<Family, StoreError> {
        let mut family = self.family;
        if let Some(claims) = self.claims {
            family.claims = serde_json::from_str::<Map<String, Value>>(&claims).map_err(|e| {
                StoreError::Corrupt(format!("the claims of family {}: {e}", family.id))
            })?;
        }
        Ok(family)
    }
}

/// How far the writer has come: the highest sequence number committed, and the epoch
/// (bumped when a failed commit poisoned memory). A waiter that observed a state in epoch
/// E is answered when the commit passes the state's sequence number while the epoch is
/// still E, and refused once the epoch moved on (its state may be one that was lost;
/// a spurious refusal of a durable state during a failure is the price of simplicity,
/// and only a failing disk pays it).
#[derive(Clone, Copy, Default, Debug)]
pub(super) struct Progress {
    pub committed: u64,
    pub epoch: u64,
}

pub(super) struct Durability {
    progress: watch::Sender<Progress>,
    /// Per family, the sequence numbers of states decided and then undone (their writes'
    /// callers had gone, see `split_abandoned`): never durable, so never answered. Only
    /// that family's readers are refused; a failed commit, which may have lost anything,
    /// moves the epoch and refuses every reader. Kept [`UNDONE_KEPT`] (a reader waits at
    /// most the store's deadline, 2 s).
    undone: Mutex<HashMap<Box<str>, Vec<Undone>>>,
}

/// Sequence numbers `from..=to` of one family, undone at `at`.
struct Undone {
    from: u64,
    to: u64,
    at: Instant,
}

/// How long the marks of undone states are kept.
const UNDONE_KEPT: Duration = Duration::from_secs(60);

impl Durability {
    pub fn new() -> Self {
        Self {
            progress: watch::Sender::new(Progress::default()),
            undone: Mutex::new(HashMap::new()),
        }
    }

    pub fn committed(&self, sequence: u64) {
        self.progress
            .send_modify(|p| p.committed = p.committed.max(sequence));
    }

    pub fn failed(&self, epoch: u64) {
        self.progress.send_modify(|p| p.epoch = epoch);
    }

    /// Marks the states of `family` decided with sequence numbers `from..=to` as undone:
    /// before the group that held them is said committed.
    pub fn undone(&self, family: &str, from: u64, to: u64) {
        let now = Instant::now();
        let mut undone = self.undone.lock().unwrap_or_else(|e| e.into_inner());
        undone.retain(|_, marks| {
            marks.retain(|mark| now.duration_since(mark.at) < UNDONE_KEPT);
            !marks.is_empty()
        });
        undone
            .entry(family.into())
            .or_default()
            .push(Undone { from, to, at: now });
    }

    fn was_undone(&self, family: &str, written: u64) -> bool {
        let undone = self.undone.lock().unwrap_or_else(|e| e.into_inner());
        undone.get(family).is_some_and(|marks| {
            marks
                .iter()
                .any(|mark| (mark.from..=mark.to).contains(&written))
        })
    }

    /// Waits until `observed`'s state is durable.
    pub async fn wait<T>(&self, observed: Observed<T>) -> Result<T, StoreError> {
        let mut progress = self.progress.subscribe();
        let done = progress
            .wait_for(|p| p.epoch != observed.epoch || p.committed >= observed.written)
            .await
            .map(|p| p.epoch == observed.epoch)
            .unwrap_or(false);
        if done && !self.was_undone(&observed.family, observed.written) {
            Ok(observed.value)
        } else if done {
            Err(StoreError::Unavailable(
                "this session's last change was not written (its request was cancelled or timed out) and is undone: retry".into(),
            ))
        } else {
            Err(StoreError::Unavailable(
                "a write to the token store failed; it is being reloaded from its file".into(),
            ))
        }
    }
}
