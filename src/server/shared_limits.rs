//! Rate limits shared by every replica, when the token service has a Redis
//! (`--token-store redis://…`): a limit of 10 a minute per client address stays 10, not
//! 10 × replicas. Each limit is asked in Redis first and, when Redis does not answer
//! within the store's deadline, in this replica's own limits ([`super::rate_limit`]):
//! neither open to everyone nor closed to everyone while Redis is away.
//!
//! The algorithm is governor's, GCRA (the one of go-redis/redis_rate and redis-cell), in
//! one Lua script that Redis runs atomically: one number per key, the theoretical arrival
//! time, read, compared and written in one step, so two replicas can never both take the
//! last event. governor has no Redis backend and redis-rs no limiter, hence this small
//! script. Time is Redis's own (`TIME`), so replicas with skewed clocks agree.
//!
//! Keys: `<installation prefix>rl:<limit>:<perMinute>/<burst>:<digest of what is
//! counted>` (an address, a client and an address, a session, a subject), never the
//! value itself. Each expires when its budget is full again (`PX`): one request from an
//! address keeps its key at most one refill interval (at most a minute), so a flood of
//! distinct addresses holds as many keys as arrive in that time, and nothing is kept for
//! good.
//!
//! While Redis fails, this replica decides alone and asks Redis again at most once a
//! second (a Redis that is down costs no request a deadline each); the first failure of
//! an outage and the return are logged once, never per request, and
//! `authplane_rate_limit_fallbacks_total` counts the decisions taken alone.

use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use ::redis::aio::ConnectionManager;
use ::redis::{Script, Value};
use aws_lc_rs::digest::{SHA256, digest};
use tokio::time::Instant;

use super::client_address::ClientKey;
use super::rate_limit::{Budget, KeyedLimit};
use crate::tokens::StoreError;
use crate::tokens::metrics::TokenMetrics;
use crate::tokens::redis::{RedisSettings, connect, prefix, redacted};

/// `KEYS[1]`: the budget's key. `ARGV`: the refill interval in microseconds, the burst,
/// `1` to take an event or `0` to ask only. Answers `{1, 0}` admitted, or `{0, µs to
/// wait}`. A value that is not a number is an error (the caller decides alone), never
/// read as a full budget.
const GCRA: &str = r#"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tat = now
local stored = redis.call('GET', KEYS[1])
if stored then
  tat = tonumber(stored)
  if not tat then return redis.error_reply('CORRUPT a rate limit is not a number') end
end
if tat < now then tat = now end
local earliest = tat - interval * (burst - 1)
if now < earliest then return {0, earliest - now} end
if ARGV[3] == '1' then
  local next = tat + interval
  redis.call('SET', KEYS[1], string.format('%.0f', next), 'PX', math.ceil((next - now) / 1000))
end
return {1, 0}
"#;

static GCRA_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(GCRA));

/// How long this replica decides alone after Redis failed, before it asks again.
const ASK_AGAIN_AFTER: Duration = Duration::from_secs(1);

/// The shared budgets of one installation, in its Redis.
pub struct SharedLimits {
    connection: ConnectionManager,
    prefix: String,
    timeout: Duration,
    shown: String,
    /// While Redis fails: when to ask it again.
    down_until: Mutex<Option<Instant>>,
    /// Redis failed and has not answered since (the outage is logged once).
    down: AtomicBool,
    metrics: TokenMetrics,
}

impl SharedLimits {
    /// The shared limits of the Redis of `settings` (connected at the first call).
    pub fn new(settings: &RedisSettings, metrics: TokenMetrics) -> Result<Self, StoreError> {
        metrics.shared_limits_up.set(1);
        Ok(Self {
            connection: connect(settings)?,
            prefix: prefix(&settings.installation),
            timeout: settings.timeout,
            shown: redacted(&settings.url),
            down_until: Mutex::new(None),
            down: AtomicBool::new(false),
            metrics,
        })
    }

    /// One event of `what` (hashed) under `limit` within `budget` (`take: false`: only
    /// whether one would be admitted). `None` when Redis did not answer: the caller
    /// decides with its own limits.
    async fn check(
        &self,
        limit: &str,
        what: &[u8],
        budget: Budget,
        take: bool,
    ) -> Option<Result<(), u64>> {
        let asleep = self
            .down_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|until| Instant::now() < until);
        if asleep {
            self.metrics.shared_limit_fallbacks.inc();
            return None;
        }
        let key = self.key(limit, what, budget);
        let answer = tokio::time::timeout(self.timeout, self.gcra(&key, budget, take))
            .await
            .unwrap_or_else(|_| Err("Redis did not answer in time".to_owned()));
        match answer {
            Ok(decision) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    *self.down_until.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    self.metrics.shared_limits_up.set(1);
                    tracing::info!(
                        store = self.shown.as_str(),
                        "the shared rate limits answer again: every replica counts together"
                    );
                }
                Some(decision)
            }
            Err(why) => {
                *self.down_until.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(Instant::now() + ASK_AGAIN_AFTER);
                self.metrics.shared_limit_fallbacks.inc();
                if !self.down.swap(true, Ordering::Relaxed) {
                    self.metrics.shared_limits_up.set(0);
                    tracing::warn!(
                        store = self.shown.as_str(),
                        error = why.as_str(),
                        "the shared rate limits do not answer: each replica limits on its own until they do"
                    );
                }
                None
            }
        }
    }

    fn key(&self, limit: &str, what: &[u8], budget: Budget) -> String {
        let hash = digest(&SHA256, what);
        let hex: String = hash.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!(
            "{}rl:{limit}:{}/{}:{hex}",
            self.prefix, budget.per_minute, budget.burst
        )
    }

    async fn gcra(&self, key: &str, budget: Budget, take: bool) -> Result<Result<(), u64>, String> {
        let interval = 60_000_000 / u64::from(budget.per_minute.get());
        let mut invocation = GCRA_SCRIPT.prepare_invoke();
        invocation
            .key(key)
            .arg(interval.max(1))
            .arg(budget.burst.get())
            .arg(if take { "1" } else { "0" });
        let mut connection = self.connection.clone();
        let answer: Value = invocation
            .invoke_async(&mut connection)
            .await
            .map_err(|e| format!("Redis: {e}"))?;
        match answer {
            Value::Array(items) => match items.as_slice() {
                [Value::Int(1), _] => Ok(Ok(())),
                [Value::Int(0), Value::Int(wait)] => {
                    let wait = Duration::from_micros(u64::try_from(*wait).unwrap_or(0));
                    Ok(Err(
                        (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
                    ))
                }
                _ => Err("a rate limit answered with a value of the wrong shape".to_owned()),
            },
            _ => Err("a rate limit answered with a value of the wrong shape".to_owned()),
        }
    }
}

/// What a limit counts, as bytes for its shared key.
pub trait Counted: Hash + Eq + Clone {
    fn counted(&self) -> Vec<u8>;
}

impl Counted for ClientKey {
    fn counted(&self) -> Vec<u8> {
        self.bits().to_be_bytes().to_vec()
    }
}

impl Counted for String {
    fn counted(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
}

impl Counted for [u8; 32] {
    fn counted(&self) -> Vec<u8> {
        self.to_vec()
    }
}

impl Counted for (String, ClientKey) {
    fn counted(&self) -> Vec<u8> {
        // A newline cannot occur in a client id: no two pairs share bytes.
        let mut bytes = self.0.as_bytes().to_vec();
        bytes.push(b'\n');
        bytes.extend(self.1.bits().to_be_bytes());
        bytes
    }
}

/// A keyed limit: shared in Redis when there is one, this replica's own otherwise (and
/// while Redis does not answer).
pub struct Limit<K: Counted> {
    /// The limit's name in its keys (`token-failures`, ...).
    name: &'static str,
    local: KeyedLimit<K>,
    shared: Option<Arc<SharedLimits>>,
}

impl<K: Counted> Limit<K> {
    /// `per_minute` events a minute per key, at most `capacity` keys remembered here.
    pub fn new(name: &'static str, per_minute: u32, capacity: usize) -> Self {
        Self {
            name,
            local: KeyedLimit::per_minute(per_minute, capacity),
            shared: None,
        }
    }

    /// Counted in `shared` (when `Some`) with every replica.
    pub fn share(&mut self, shared: Option<Arc<SharedLimits>>) {
        self.shared = shared;
    }

    /// The default budget.
    pub fn budget(&self) -> Budget {
        self.local.budget()
    }

    /// Takes one event from `key`'s default budget; `Err(seconds)` once it is spent.
    pub async fn take(&self, key: &K) -> Result<(), u64> {
        self.take_within(key, self.local.budget()).await
    }

    /// Takes one event from `key`'s `budget`.
    pub async fn take_within(&self, key: &K, budget: Budget) -> Result<(), u64> {
        if let Some(shared) = &self.shared
            && let Some(decision) = shared.check(self.name, &key.counted(), budget, true).await
        {
            return decision;
        }
        self.local.take_within(key, budget)
    }

    /// Whether `key` has its default budget left, spending none.
    pub async fn peek(&self, key: &K) -> Result<(), u64> {
        let budget = self.local.budget();
        if let Some(shared) = &self.shared
            && let Some(decision) = shared.check(self.name, &key.counted(), budget, false).await
        {
            return decision;
        }
        self.local.peek(key)
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use crate::tokens::tests::redis_server::RedisServer;

    use super::*;

    fn settings(server: &RedisServer, timeout: Duration) -> RedisSettings {
        RedisSettings {
            url: server.url(),
            password: None,
            ca: None,
            installation: "limits-test".into(),
            timeout,
        }
    }

    fn budget(per_minute: u32, burst: u32) -> Budget {
        Budget {
            per_minute: NonZeroU32::new(per_minute).unwrap(),
            burst: NonZeroU32::new(burst).unwrap(),
        }
    }

    async fn query<T: ::redis::FromRedisValue>(shared: &SharedLimits, args: &[&str]) -> T {
        let mut command = ::redis::cmd(args[0]);
        for arg in &args[1..] {
            command.arg(*arg);
        }
        let mut connection = shared.connection.clone();
        command.query_async(&mut connection).await.unwrap()
    }

    #[tokio::test]
    async fn replicas_share_one_gcra_budget_and_its_keys_expire() {
        let Some(server) = RedisServer::start("replicas_share_one_gcra_budget") else {
            return;
        };
        let settings = settings(&server, Duration::from_secs(2));
        let (a, b) = (
            SharedLimits::new(&settings, TokenMetrics::default()).unwrap(),
            SharedLimits::new(&settings, TokenMetrics::default()).unwrap(),
        );
        let three = budget(3, 3);
        // Asking spends nothing.
        for _ in 0..5 {
            assert_eq!(a.check("l", b"x", three, false).await, Some(Ok(())));
        }
        assert_eq!(a.check("l", b"x", three, true).await, Some(Ok(())));
        assert_eq!(b.check("l", b"x", three, true).await, Some(Ok(())));
        assert_eq!(a.check("l", b"x", three, true).await, Some(Ok(())));
        // Spent over both: one event comes back every 20 s.
        let Some(Err(wait)) = b.check("l", b"x", three, true).await else {
            panic!("the fourth event was admitted");
        };
        assert!((19..=20).contains(&wait), "{wait}");
        assert!(matches!(
            a.check("l", b"x", three, false).await,
            Some(Err(_))
        ));
        // Another key, and the same key under another budget, count apart.
        assert_eq!(a.check("l", b"y", three, true).await, Some(Ok(())));
        assert_eq!(a.check("l", b"x", budget(3, 4), true).await, Some(Ok(())));
        // Each key lives until its budget is full again (three events: a minute), and
        // names neither the limit's subject nor anything but the installation.
        let keys: Vec<String> = query(&a, &["KEYS", "*"]).await;
        assert_eq!(keys.len(), 3, "{keys:?}");
        for key in &keys {
            assert!(key.starts_with("authplane:limits-test:rl:l:3/"), "{key}");
            let ttl: i64 = query(&a, &["PTTL", key]).await;
            assert!((1..=60_000).contains(&ttl), "{key}: {ttl}");
        }
    }

    #[tokio::test]
    async fn a_redis_that_fails_is_asked_again_later_and_the_outage_counted() {
        let Some(mut server) = RedisServer::start("a_redis_that_fails_is_asked_again_later") else {
            return;
        };
        let metrics = TokenMetrics::default();
        let shared = Arc::new(
            SharedLimits::new(
                &settings(&server, Duration::from_millis(300)),
                metrics.clone(),
            )
            .unwrap(),
        );
        let one = budget(1, 1);
        // A value of the wrong shape is an error, never a full budget.
        let key = shared.key("l", b"x", one);
        let _: () = query(&shared, &["SET", &key, "garbage"]).await;
        assert_eq!(shared.check("l", b"x", one, true).await, None);
        assert_eq!(metrics.shared_limits_up.get(), 0);
        // Until a second has passed, Redis is not asked again: no deadline per request.
        let _: () = query(&shared, &["DEL", &key]).await;
        assert_eq!(shared.check("l", b"x", one, true).await, None);
        assert_eq!(metrics.shared_limit_fallbacks.get(), 2);
        // The limit decides on its own meanwhile: still one event, not none, not all.
        let mut limit: Limit<String> = Limit::new("l", 1, 10);
        limit.share(Some(shared.clone()));
        assert_eq!(limit.take(&"x".to_owned()).await, Ok(()));
        assert!(limit.take(&"x".to_owned()).await.is_err());
        // A frozen Redis costs one deadline, then this replica's own limits answer.
        *shared.down_until.lock().unwrap() = None;
        server.freeze();
        let started = Instant::now();
        assert_eq!(shared.check("l", b"z", one, true).await, None);
        assert!(started.elapsed() < Duration::from_secs(2));
        server.thaw();
        server.kill();
    }
}
