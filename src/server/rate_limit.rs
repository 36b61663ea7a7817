//! Keyed rate limits whose memory is bounded for real: governor's GCRA (one number per
//! key) over an LRU map of fixed capacity. A crowd of new keys evicts the least recently
//! seen ones, each in O(1); nothing scans the map, and it never grows past its capacity.
//!
//! governor's own keyed stores grow until `retain_recent()` runs, and that keeps every
//! key seen within the period: 15,000 addresses in a minute are 15,000 entries. An
//! evicted key starts again with a full budget, which is what it would have after a
//! period of quiet anyway.

use std::hash::Hash;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::{Arc, Mutex};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};

/// governor's per-key state in an LRU map (shared with [`KeyedLimit`], which reports its
/// size).
pub struct BoundedStore<K: Hash + Eq>(Arc<Mutex<lru::LruCache<K, Nanos>>>);

impl<K: Hash + Eq + Clone> StateStore for BoundedStore<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (result, state) = f(map.get(key).copied())?;
        map.put(key.clone(), state);
        Ok(result)
    }
}

/// The same map, read and never written: a limiter over it answers whether an event
/// would be admitted now without spending it (governor has no such query).
struct PeekStore<K: Hash + Eq>(Arc<Mutex<lru::LruCache<K, Nanos>>>);

impl<K: Hash + Eq + Clone> StateStore for PeekStore<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(map.peek(key).copied()).map(|(result, _)| result)
    }
}

/// `per_minute` events per key (all at once, then refilled evenly), for at most
/// `capacity` keys at once.
pub struct KeyedLimit<K: Hash + Eq + Clone, C: Clock = DefaultClock> {
    limiter: RateLimiter<K, BoundedStore<K>, C, NoOpMiddleware<C::Instant>>,
    /// Built right after `limiter`, on the same clock and map: its start is later by the
    /// time between the two, so it may see a budget spent that long more, never less.
    peeker: RateLimiter<K, PeekStore<K>, C, NoOpMiddleware<C::Instant>>,
    keys: Arc<Mutex<lru::LruCache<K, Nanos>>>,
}

impl<K: Hash + Eq + Clone> KeyedLimit<K> {
    pub fn per_minute(per_minute: u32, capacity: usize) -> Self {
        Self::with_clock(per_minute, capacity, DefaultClock::default())
    }
}

impl<K: Hash + Eq + Clone, C: Clock + Clone> KeyedLimit<K, C> {
    pub fn with_clock(per_minute: u32, capacity: usize, clock: C) -> Self {
        let quota = Quota::per_minute(NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN));
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        let keys = Arc::new(Mutex::new(lru::LruCache::new(capacity)));
        Self {
            limiter: RateLimiter::new(quota, BoundedStore(keys.clone()), clock.clone()),
            peeker: RateLimiter::new(quota, PeekStore(keys.clone()), clock),
            keys,
        }
    }

    /// Takes one event from `key`'s budget; `Err(seconds)` to wait when it is spent.
    pub fn take(&self, key: &K) -> Result<(), u64> {
        self.limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.limiter.clock().now());
            (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
        })
    }

    /// Whether `key` has budget left now, without spending any: `Err(seconds)` to wait
    /// when it is spent. For refusing before costly work whose failure would be counted.
    pub fn peek(&self, key: &K) -> Result<(), u64> {
        self.peeker.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.peeker.clock().now());
            (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
        })
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.keys.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use governor::clock::FakeRelativeClock;

    use super::*;

    #[test]
    fn a_budget_per_key_refilled_evenly_with_the_time_to_wait() {
        let clock = FakeRelativeClock::default();
        let limit = KeyedLimit::with_clock(10, 100, clock.clone());
        for _ in 0..10 {
            assert_eq!(limit.take(&"a"), Ok(()));
        }
        assert_eq!(limit.take(&"a"), Err(6), "one event comes back every 6 s");
        assert_eq!(limit.take(&"b"), Ok(()), "another key has its own budget");
        clock.advance(Duration::from_secs(6));
        assert_eq!(limit.take(&"a"), Ok(()));
        assert!(limit.take(&"a").is_err());
    }

    #[test]
    fn a_peek_spends_nothing() {
        let clock = FakeRelativeClock::default();
        let limit = KeyedLimit::with_clock(3, 100, clock.clone());
        for _ in 0..10 {
            assert_eq!(limit.peek(&"a"), Ok(()));
        }
        assert!(limit.is_empty(), "a peek remembers no key");
        for _ in 0..3 {
            assert_eq!(limit.take(&"a"), Ok(()));
        }
        assert_eq!(limit.peek(&"a"), Err(20));
        assert_eq!(limit.peek(&"b"), Ok(()));
        clock.advance(Duration::from_secs(20));
        assert_eq!(limit.peek(&"a"), Ok(()));
        assert_eq!(limit.take(&"a"), Ok(()));
        assert!(limit.peek(&"a").is_err());
    }

    #[test]
    fn the_map_never_grows_past_its_capacity() {
        let clock = FakeRelativeClock::default();
        let limit = KeyedLimit::with_clock(10, 1_000, clock);
        // 15,000 distinct keys within one period: all recent, none forgotten by age.
        for key in 0..15_000u32 {
            assert_eq!(limit.take(&key), Ok(()));
        }
        assert_eq!(limit.len(), 1_000);
        // The least recently seen went first; the latest are still counted.
        for _ in 0..9 {
            assert_eq!(limit.take(&14_999), Ok(()));
        }
        assert!(limit.take(&14_999).is_err());
    }
}
