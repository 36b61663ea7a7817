//! The leader's own writes, remembered until its caches have seen them. A reconcile
//! compares what it wants with what the apiserver holds; the watch caches lag behind the
//! apiserver by the time an event takes to arrive, and a reconcile that read a cache one
//! version behind its own last write wrote that write again (or wrote the older value
//! back). So each write's answer (the object as the apiserver stored it) is kept, and
//! a reconcile reads it instead of the cache until the cache has caught up with it.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

use crate::api::ObjectKey;

/// Objects as last written, by `Id` (namespace/name, for one kind).
pub struct Latest<T, Id = ObjectKey> {
    written: Mutex<HashMap<Id, Written<T>>>,
}

struct Written<T> {
    resource_version: Option<String>,
    value: T,
    /// The last sweep found no cached object for it ([`Latest::forget_seen`]).
    missing_at_last_sweep: bool,
}

impl<T, Id> Default for Latest<T, Id> {
    fn default() -> Self {
        Self {
            written: Mutex::default(),
        }
    }
}

impl<T: Clone, Id: Eq + Hash> Latest<T, Id> {
    /// What this replica wrote last of `id`, unless the cache (at `cached_version`) has
    /// caught up with it; then it is forgotten, and the cache is the latest.
    pub fn newer_than_cache(&self, id: &Id, cached_version: Option<&str>) -> Option<T> {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        let entry = written.get(id)?;
        if caught_up(cached_version, entry.resource_version.as_deref()) {
            written.remove(id);
            return None;
        }
        Some(entry.value.clone())
    }

    /// Remembers what the apiserver answered to a write of `id`.
    pub fn wrote(&self, id: Id, resource_version: Option<String>, value: T) {
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                id,
                Written {
                    resource_version,
                    value,
                    missing_at_last_sweep: false,
                },
            );
    }

    /// Forgets `id`: a write based on it was refused (409), so the cache is the truth.
    pub fn forget(&self, id: &Id) {
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Forgets everything: a new leadership term starts from freshly listed caches.
    pub fn clear(&self) {
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Forgets every write that its cache has caught up with; `cached_version` is the
    /// cache's version of an object, `None` when the cache does not hold it. Without
    /// this a write is forgotten only when a later reconcile of the same object reads
    /// it, and after a cold start most objects are not reconciled again: the leader
    /// held a copy of every status, Secret and ConfigMap it had written (on a cold start
    /// at 1,000 SigningKeys and 10,000 AuthPolicies, about a third of its memory).
    ///
    /// An object the cache does not hold may not have reached it yet (just created) or
    /// may be gone (deleted): its write is forgotten when two sweeps in a row miss it.
    pub fn forget_seen(&self, cached_version: impl Fn(&Id) -> Option<String>) {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        written.retain(|id, entry| match cached_version(id) {
            Some(cached) => {
                entry.missing_at_last_sweep = false;
                !caught_up(Some(&cached), entry.resource_version.as_deref())
            }
            None => !std::mem::replace(&mut entry.missing_at_last_sweep, true),
        });
    }

    /// How many writes are remembered.
    pub fn len(&self) -> usize {
        self.written.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether a cache at `cached` has seen the write that made `written`. An apiserver
/// backed by etcd hands out etcd revisions, which only grow: where both are integers, a
/// cache at the same or a later one has seen it. Otherwise only the same version says
/// so; and a write based on a memory older than the apiserver's object is refused with
/// a 409, which forgets the memory.
fn caught_up(cached: Option<&str>, written: Option<&str>) -> bool {
    match (cached, written) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(cached), Some(written)) => match (cached.parse::<u64>(), written.parse::<u64>()) {
            (Ok(cached), Ok(written)) => cached >= written,
            _ => cached == written,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> ObjectKey {
        ObjectKey {
            namespace: "auth".into(),
            name: "web".into(),
        }
    }

    #[test]
    fn a_write_is_read_back_until_the_cache_has_seen_it() {
        let latest: Latest<&str> = Latest::default();
        assert_eq!(latest.newer_than_cache(&id(), Some("5")), None);
        latest.wrote(id(), Some("7".into()), "seven");
        assert_eq!(latest.newer_than_cache(&id(), Some("5")), Some("seven"));
        assert_eq!(
            latest.newer_than_cache(&id(), None),
            Some("seven"),
            "not listed yet"
        );
        assert_eq!(latest.newer_than_cache(&id(), Some("7")), None, "caught up");
        assert!(latest.is_empty(), "and forgotten");
        latest.wrote(id(), Some("9".into()), "nine");
        assert_eq!(
            latest.newer_than_cache(&id(), Some("12")),
            None,
            "a later change"
        );
        latest.wrote(id(), Some("opaque-1".into()), "opaque");
        assert_eq!(
            latest.newer_than_cache(&id(), Some("opaque-0")),
            Some("opaque")
        );
        latest.forget(&id());
        assert_eq!(latest.newer_than_cache(&id(), Some("opaque-0")), None);
    }

    #[test]
    fn a_sweep_forgets_what_the_cache_has_seen_or_lost() {
        let other = ObjectKey {
            namespace: "auth".into(),
            name: "api".into(),
        };
        let gone = ObjectKey {
            namespace: "auth".into(),
            name: "gone".into(),
        };
        let latest: Latest<&str> = Latest::default();
        latest.wrote(id(), Some("7".into()), "seen");
        latest.wrote(other.clone(), Some("9".into()), "not yet");
        latest.wrote(gone.clone(), Some("3".into()), "missing");
        let cache = |key: &ObjectKey| match key.name.as_str() {
            "web" => Some("8".to_owned()),
            "api" => Some("8".to_owned()),
            _ => None,
        };
        latest.forget_seen(cache);
        assert_eq!(latest.len(), 2, "the caught-up write is forgotten");
        assert_eq!(latest.newer_than_cache(&other, Some("8")), Some("not yet"));
        assert_eq!(
            latest.newer_than_cache(&gone, None),
            Some("missing"),
            "missing once: maybe not arrived yet"
        );
        latest.forget_seen(cache);
        assert_eq!(latest.len(), 1, "missing twice: gone");
        latest.forget_seen(|_| Some("9".to_owned()));
        assert!(latest.is_empty());
    }
}
