//! Keyed rate limits whose memory is bounded for real: governor's GCRA (one number per
//! key) over an LRU map of fixed capacity. A crowd of new keys evicts the least recently
//! seen ones, each in O(1); nothing scans the map, and it never grows past its capacity.
//!
//! governor's own keyed stores grow until `retain_recent()` runs, and that keeps every
//! key seen within the period: 15,000 addresses in a minute are 15,000 entries. An
//! evicted key starts again with a full budget, which is what it would have after a
//! period of quiet anyway.

use std::collections::HashMap;
use std::hash::Hash;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::{Arc, Mutex};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};

/// A budget: `burst` events at once, then `per_minute` refilled evenly (governor's
/// `Quota::per_minute(..).allow_burst(..)`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct Budget {
    pub per_minute: NonZeroU32,
    pub burst: NonZeroU32,
}

impl Budget {
    /// `per_minute` events, all of them at once (at least 1).
    pub fn per_minute(per_minute: u32) -> Self {
        let per_minute = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        Self {
            per_minute,
            burst: per_minute,
        }
    }

    /// A TokenClient's `rateLimit` over the server's `default`: each field it leaves out
    /// is the default's (a burst left out is its rate).
    pub fn of(limit: Option<&crate::api::RateLimit>, default: Budget) -> Self {
        let Some(limit) = limit else { return default };
        let per_minute = limit
            .per_minute
            .and_then(NonZeroU32::new)
            .unwrap_or(default.per_minute);
        let burst = match (limit.burst.and_then(NonZeroU32::new), limit.per_minute) {
            (Some(burst), _) => burst,
            (None, Some(_)) => per_minute,
            (None, None) => default.burst,
        };
        Self { per_minute, burst }
    }

    fn quota(self) -> Quota {
        Quota::per_minute(self.per_minute).allow_burst(self.burst)
    }
}

type Map<K> = Arc<Mutex<lru::LruCache<(Budget, K), Nanos>>>;

/// governor's per-key state in an LRU map (shared with [`KeyedLimit`], which reports its
/// size).
pub struct BoundedStore<K: Hash + Eq>(Map<K>);

impl<K: Hash + Eq + Clone> StateStore for BoundedStore<K> {
    type Key = (Budget, K);

    fn measure_and_replace<T, F, E>(&self, key: &(Budget, K), f: F) -> Result<T, E>
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
struct PeekStore<K: Hash + Eq>(Map<K>);

impl<K: Hash + Eq + Clone> StateStore for PeekStore<K> {
    type Key = (Budget, K);

    fn measure_and_replace<T, F, E>(&self, key: &(Budget, K), f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(map.peek(key).copied()).map(|(result, _)| result)
    }
}

/// The limiters of one budget over the shared map.
struct Limiters<K: Hash + Eq + Clone, C: Clock> {
    limiter: RateLimiter<(Budget, K), BoundedStore<K>, C, NoOpMiddleware<C::Instant>>,
    /// Built right after `limiter`, on the same clock and map: its start is later by the
    /// time between the two, so it may see a budget spent that long more, never less.
    peeker: RateLimiter<(Budget, K), PeekStore<K>, C, NoOpMiddleware<C::Instant>>,
}

/// Events per key within a [`Budget`], for at most `capacity` keys at once (all budgets
/// together). A key is counted per budget: the budget is part of it, so a client whose
/// budget changes starts afresh under the new one. governor's limiter has one quota,
/// so there is one per budget in use (a few hundred bytes each, created at its first
/// use and kept: their number is that of the distinct budgets configured), each over
/// the same map; a key is only ever read by its own budget's limiter, so their
/// different start instants never mix.
pub struct KeyedLimit<K: Hash + Eq + Clone, C: Clock = DefaultClock> {
    budget: Budget,
    clock: C,
    keys: Map<K>,
    limiters: Mutex<HashMap<Budget, Arc<Limiters<K, C>>>>,
}

impl<K: Hash + Eq + Clone> KeyedLimit<K> {
    pub fn per_minute(per_minute: u32, capacity: usize) -> Self {
        Self::with_clock(per_minute, capacity, DefaultClock::default())
    }
}

impl<K: Hash + Eq + Clone, C: Clock + Clone> KeyedLimit<K, C> {
    /// `per_minute` events a minute (all at once, then refilled evenly) is the budget of
    /// [`Self::take`] and [`Self::peek`].
    pub fn with_clock(per_minute: u32, capacity: usize, clock: C) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Self {
            budget: Budget::per_minute(per_minute),
            clock,
            keys: Arc::new(Mutex::new(lru::LruCache::new(capacity))),
            limiters: Mutex::new(HashMap::new()),
        }
    }

    /// The budget of [`Self::take`] and [`Self::peek`].
    pub fn budget(&self) -> Budget {
        self.budget
    }

    fn limiters(&self, budget: Budget) -> Arc<Limiters<K, C>> {
        let mut limiters = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
        limiters
            .entry(budget)
            .or_insert_with(|| {
                let quota = budget.quota();
                Arc::new(Limiters {
                    limiter: RateLimiter::new(
                        quota,
                        BoundedStore(self.keys.clone()),
                        self.clock.clone(),
                    ),
                    peeker: RateLimiter::new(
                        quota,
                        PeekStore(self.keys.clone()),
                        self.clock.clone(),
                    ),
                })
            })
            .clone()
    }

    /// Takes one event from `key`'s budget; `Err(seconds)` to wait when it is spent.
    pub fn take(&self, key: &K) -> Result<(), u64> {
        self.take_within(key, self.budget)
    }

    /// [`Self::take`] within another budget.
    pub fn take_within(&self, key: &K, budget: Budget) -> Result<(), u64> {
        let limiters = self.limiters(budget);
        let limiter = &limiters.limiter;
        limiter
            .check_key(&(budget, key.clone()))
            .map_err(|not_until| seconds(not_until.wait_time_from(limiter.clock().now())))
    }

    /// Whether `key` has budget left now, without spending any: `Err(seconds)` to wait
    /// when it is spent. For refusing before costly work whose failure would be counted.
    pub fn peek(&self, key: &K) -> Result<(), u64> {
        let limiters = self.limiters(self.budget);
        let peeker = &limiters.peeker;
        peeker
            .check_key(&(self.budget, key.clone()))
            .map_err(|not_until| seconds(not_until.wait_time_from(peeker.clock().now())))
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.keys.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A wait in whole seconds, at least one (what `Retry-After` says).
fn seconds(wait: std::time::Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
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
    fn each_budget_counts_its_own_keys() {
        let clock = FakeRelativeClock::default();
        let limit = KeyedLimit::with_clock(2, 100, clock.clone());
        let generous = Budget {
            per_minute: NonZeroU32::new(60).unwrap(),
            burst: NonZeroU32::new(5).unwrap(),
        };
        for _ in 0..5 {
            assert_eq!(limit.take_within(&"a", generous), Ok(()));
        }
        assert_eq!(
            limit.take_within(&"a", generous),
            Err(1),
            "one back a second"
        );
        // The default budget of the same key is another count.
        assert_eq!(limit.take(&"a"), Ok(()));
        assert_eq!(limit.take(&"a"), Ok(()));
        assert_eq!(limit.take(&"a"), Err(30));
        clock.advance(Duration::from_secs(1));
        assert_eq!(limit.take_within(&"a", generous), Ok(()));
        assert!(limit.take_within(&"a", generous).is_err());
    }

    #[test]
    fn a_clients_rate_limit_over_the_servers() {
        let server = Budget::per_minute(10);
        let of = |per_minute, burst| {
            let b = Budget::of(Some(&crate::api::RateLimit { per_minute, burst }), server);
            (b.per_minute.get(), b.burst.get())
        };
        assert_eq!(Budget::of(None, server), server);
        assert_eq!(of(None, None), (10, 10));
        assert_eq!(
            of(Some(120), None),
            (120, 120),
            "a burst left out is the rate"
        );
        assert_eq!(of(Some(120), Some(20)), (120, 20));
        assert_eq!(of(None, Some(3)), (10, 3));
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
