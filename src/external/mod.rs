//! External OIDC issuers (Microsoft Entra ID, Google, Keycloak, ...): each configured
//! issuer's key set is fetched in the background, cached, refreshed as its
//! `Cache-Control` says within a floor and a ceiling, and refetched early, rate-limited,
//! when a token names an unknown kid. When a refresh fails the last good set keeps
//! serving, up to a maximum staleness.
//!
//! Requests only read: the current set is behind an `ArcSwap`, the rate limit is an
//! atomic. Only the refresh task does I/O.

pub mod fetch;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use aws_lc_rs::digest::{SHA256, digest};
use jiff::Timestamp;
use tokio::sync::{Notify, watch};

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::policy::verify::VerifyKey;
use fetch::{FetchError, Fetcher};

/// One external issuer as a policy configures it. Policies with the same configuration
/// share one cache and one refresh task.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ExternalConfig {
    pub issuer: String,
    /// Where the keys are; `None`: from the issuer's discovery document.
    pub jwks_uri: Option<String>,
    /// Floor of the refresh interval, and the least time between two fetches triggered by
    /// unknown kids.
    pub min_refresh: Duration,
    /// Ceiling of the refresh interval, whatever `Cache-Control` says.
    pub max_refresh: Duration,
    /// How long after the last successful fetch the last good set still verifies tokens.
    pub max_stale: Duration,
}

impl ExternalConfig {
    /// A configuration with intervals that make sense whatever was asked: a floor of at
    /// least 1 s and a ceiling not under the floor (the CRD refuses the rest; this keeps a
    /// bad object that got through from spinning or panicking).
    pub fn new(
        issuer: String,
        jwks_uri: Option<String>,
        min_refresh: Duration,
        max_refresh: Duration,
        max_stale: Duration,
    ) -> Self {
        let min_refresh = min_refresh.max(Duration::from_secs(1));
        Self {
            issuer,
            jwks_uri,
            min_refresh,
            max_refresh: max_refresh.max(min_refresh),
            max_stale,
        }
    }

    /// When to fetch again after a success: when the provider's `max-age` says, within
    /// the floor and the ceiling (the ceiling when it says nothing).
    fn after_success(&self, max_age: Option<Duration>) -> Duration {
        max_age
            .unwrap_or(self.max_refresh)
            .clamp(self.min_refresh, self.max_refresh)
    }

    /// When to try again after `failures` failures in a row: from the floor, doubling,
    /// up to the ceiling.
    fn after_failure(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(16);
        self.min_refresh
            .max(Duration::from_secs(1))
            .saturating_mul(factor)
            .min(self.max_refresh)
    }
}

/// A fetched key set.
pub struct ExternalKeys {
    keys: HashMap<String, VerifyKey>,
    digest: [u8; 32],
    /// Unix seconds of the last fetch that returned this exact set.
    confirmed_at: AtomicI64,
}

impl ExternalKeys {
    pub fn get(&self, kid: &str) -> Option<&VerifyKey> {
        self.keys.get(kid)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// What status reports about an external issuer.
#[derive(Clone, Debug, PartialEq)]
pub enum Health {
    /// No fetch has completed yet.
    Pending,
    /// The last refresh succeeded.
    Fresh { keys: usize },
    /// The last refresh failed; the last good set serves until `until`.
    Stale {
        keys: usize,
        error: String,
        until: Timestamp,
    },
    /// No usable keys: never fetched successfully, or stale beyond the maximum.
    Unavailable { error: String },
}

#[derive(Default)]
struct Record {
    last_success: Option<Timestamp>,
    last_error: Option<String>,
}

pub struct ExternalIssuer {
    config: ExternalConfig,
    keys: ArcSwapOption<ExternalKeys>,
    record: Mutex<Record>,
    wake: Arc<Notify>,
    /// Counts completed fetches, for requests waiting on one.
    fetched: watch::Sender<u64>,
    in_flight: AtomicBool,
    /// Whether a refresh task is running: without one, nobody would answer a request
    /// waiting for a fetch.
    task_alive: Arc<AtomicBool>,
    /// Milliseconds since `started` of the last fetch begun.
    last_attempt_ms: AtomicU64,
    started: Instant,
    /// Dropped with the issuer, which ends its refresh task.
    _stop: watch::Sender<()>,
}

impl ExternalIssuer {
    pub fn config(&self) -> &ExternalConfig {
        &self.config
    }

    /// The current set, unless it is older than the maximum staleness.
    pub fn usable_keys(&self, now: Timestamp) -> Option<Arc<ExternalKeys>> {
        let keys = self.keys.load_full()?;
        let age = now.as_second() - keys.confirmed_at.load(Ordering::Relaxed);
        (age <= self.config.max_stale.as_secs() as i64).then_some(keys)
    }

    pub fn health(&self, now: Timestamp) -> Health {
        let record = self.record.lock().unwrap_or_else(|e| e.into_inner());
        let usable = self.usable_keys(now);
        match (&record.last_error, usable, record.last_success) {
            (None, Some(keys), _) => Health::Fresh { keys: keys.len() },
            (Some(error), Some(keys), Some(success)) => Health::Stale {
                keys: keys.len(),
                error: error.clone(),
                until: crate::keys::lifecycle::add(
                    success,
                    jiff::SignedDuration::try_from(self.config.max_stale).unwrap_or_default(),
                ),
            },
            (None, None, None) => Health::Pending,
            (error, _, _) => Health::Unavailable {
                error: error
                    .clone()
                    .unwrap_or_else(|| "the last good key set is older than maxStale".to_owned()),
            },
        }
    }

    fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// A token named a kid no current set has: fetch again unless a fetch is running or
    /// ran less than `min_refresh` ago, and wait for it. True when a fetch completed.
    pub async fn refetch_for_unknown_kid(&self) -> bool {
        if !self.task_alive.load(Ordering::Acquire) {
            return false;
        }
        let mut done = self.fetched.subscribe();
        done.borrow_and_update();
        if !self.in_flight.load(Ordering::Acquire) {
            let now = self.elapsed_ms();
            let last = self.last_attempt_ms.load(Ordering::Acquire);
            if now.saturating_sub(last) < self.config.min_refresh.as_millis() as u64 {
                return false;
            }
            if self
                .last_attempt_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                self.in_flight.store(true, Ordering::Release);
                self.wake.notify_one();
            }
        }
        let wait = fetch::REQUEST_TIMEOUT * 2 + Duration::from_secs(1);
        matches!(tokio::time::timeout(wait, done.changed()).await, Ok(Ok(())))
    }

    /// One fetch; returns when to fetch next.
    async fn refresh(
        &self,
        fetcher: &Fetcher,
        discovered: &mut Option<String>,
        failures: &mut u32,
        metrics: &Metrics,
        clock: &dyn Clock,
    ) -> Duration {
        self.in_flight.store(true, Ordering::Release);
        // Cleared however this ends, a cancelled or panicking fetch included.
        let _in_flight = ClearOnDrop(&self.in_flight);
        self.last_attempt_ms
            .store(self.elapsed_ms(), Ordering::Release);
        let result = self.fetch(fetcher, discovered).await;
        let now = clock.now();
        let issuer = &self.config.issuer;
        let next = match result {
            Ok((keys, max_age)) => {
                *failures = 0;
                let count = keys.len();
                let current = self.keys.load_full();
                match current.filter(|k| k.digest == keys.digest) {
                    Some(same) => same.confirmed_at.store(now.as_second(), Ordering::Relaxed),
                    None => {
                        tracing::info!(%issuer, keys = count, "external key set updated");
                        keys.confirmed_at.store(now.as_second(), Ordering::Relaxed);
                        self.keys.store(Some(Arc::new(keys)));
                    }
                }
                let mut record = self.record.lock().unwrap_or_else(|e| e.into_inner());
                record.last_success = Some(now);
                record.last_error = None;
                metrics.jwks_fetched(issuer, Ok(count), now);
                self.config.after_success(max_age)
            }
            Err(error) => {
                if self.config.jwks_uri.is_none() {
                    *discovered = None; // the provider may have moved its keys
                }
                *failures = failures.saturating_add(1);
                let keeping = if self.keys.load().is_some() {
                    "the last good key set keeps serving"
                } else {
                    "no key set yet: tokens of this issuer are refused"
                };
                tracing::warn!(%issuer, "external key set refresh failed: {error}; {keeping}");
                self.record
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .last_error = Some(error.to_string());
                metrics.jwks_fetched(issuer, Err(()), now);
                self.config.after_failure(*failures)
            }
        };
        self.in_flight.store(false, Ordering::Release);
        self.fetched.send_modify(|n| *n += 1);
        next
    }

    fn seed_from(&self, other: &ExternalIssuer) {
        self.keys.store(other.keys.load_full());
        let from = other.record.lock().unwrap_or_else(|e| e.into_inner());
        let mut to = self.record.lock().unwrap_or_else(|e| e.into_inner());
        to.last_success = from.last_success;
        to.last_error = from.last_error.clone();
    }

    async fn fetch(
        &self,
        fetcher: &Fetcher,
        discovered: &mut Option<String>,
    ) -> Result<(ExternalKeys, Option<Duration>), FetchError> {
        let uri = match (&self.config.jwks_uri, &discovered) {
            (Some(uri), _) | (None, Some(uri)) => uri.clone(),
            (None, None) => {
                let uri = fetcher.discover(&self.config.issuer).await?;
                *discovered = Some(uri.clone());
                uri
            }
        };
        let fetched = fetcher.get(&uri).await?;
        let issuer: Arc<str> = Arc::from(self.config.issuer.as_str());
        let keys = fetch::parse_jwks(&fetched.body, &issuer, &uri)?;
        Ok((
            ExternalKeys {
                keys,
                digest: digest(&SHA256, &fetched.body)
                    .as_ref()
                    .try_into()
                    .unwrap_or([0; 32]),
                confirmed_at: AtomicI64::new(0),
            },
            fetched.max_age,
        ))
    }
}

/// Clears a flag when dropped, on a panic or a cancellation too.
struct ClearOnDrop<'a>(&'a AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

async fn refresh_loop(
    alive: Arc<AtomicBool>,
    issuer: Weak<ExternalIssuer>,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<()>,
    fetcher: Fetcher,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
) {
    let _alive = ClearOnDrop(&alive);
    let mut discovered = None;
    let mut failures = 0;
    loop {
        let Some(strong) = issuer.upgrade() else {
            return;
        };
        let next = strong
            .refresh(
                &fetcher,
                &mut discovered,
                &mut failures,
                &metrics,
                clock.as_ref(),
            )
            .await;
        drop(strong);
        tokio::select! {
            () = tokio::time::sleep(next) => {}
            () = wake.notified() => {}
            _ = stop.changed() => return,
        }
    }
}

/// The external issuers in use, one refresh task each. Drivers ask for issuers while
/// building a snapshot; an issuer no snapshot holds any more stops its task.
pub struct ExternalIssuers {
    fetcher: Option<Fetcher>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    issuers: Mutex<HashMap<ExternalConfig, Weak<ExternalIssuer>>>,
}

impl ExternalIssuers {
    pub fn new(metrics: Arc<Metrics>, clock: Arc<dyn Clock>) -> Self {
        let fetcher = Fetcher::new()
            .inspect_err(|e| tracing::error!("no HTTP client for external issuers: {e}"))
            .ok();
        Self {
            fetcher,
            metrics,
            clock,
            issuers: Mutex::new(HashMap::new()),
        }
    }

    /// The issuer for a configuration, starting its refresh task when it is new. Must be
    /// called on a tokio runtime.
    pub fn get(&self, config: &ExternalConfig) -> Arc<ExternalIssuer> {
        let mut issuers = self.issuers.lock().unwrap_or_else(|e| e.into_inner());
        let gone: Vec<String> = issuers
            .iter()
            .filter(|(_, issuer)| issuer.strong_count() == 0)
            .map(|(config, _)| config.issuer.clone())
            .collect();
        issuers.retain(|_, issuer| issuer.strong_count() > 0);
        for name in gone {
            if !issuers.keys().any(|c| c.issuer == name) {
                self.metrics.forget_issuer(&name);
            }
        }
        if let Some(issuer) = issuers.get(config).and_then(Weak::upgrade) {
            return issuer;
        }
        // Same keys, other refresh settings (an edit, or another policy): start from what
        // is known, so that a provider down right now does not fail every token.
        let sibling = issuers
            .iter()
            .filter(|(c, _)| c.issuer == config.issuer && c.jwks_uri == config.jwks_uri)
            .find_map(|(_, issuer)| issuer.upgrade());
        let (stop, stop_rx) = watch::channel(());
        let wake = Arc::new(Notify::new());
        let issuer = Arc::new(ExternalIssuer {
            config: config.clone(),
            keys: ArcSwapOption::empty(),
            record: Mutex::default(),
            wake: wake.clone(),
            fetched: watch::channel(0).0,
            in_flight: AtomicBool::new(true),
            task_alive: Arc::new(AtomicBool::new(false)),
            last_attempt_ms: AtomicU64::new(0),
            started: Instant::now(),
            _stop: stop,
        });
        if let Some(sibling) = sibling {
            issuer.seed_from(&sibling);
        }
        issuers.insert(config.clone(), Arc::downgrade(&issuer));
        match (&self.fetcher, tokio::runtime::Handle::try_current()) {
            (Some(fetcher), Ok(runtime)) => {
                issuer.task_alive.store(true, Ordering::Release);
                runtime.spawn(refresh_loop(
                    issuer.task_alive.clone(),
                    Arc::downgrade(&issuer),
                    wake,
                    stop_rx,
                    fetcher.clone(),
                    self.metrics.clone(),
                    self.clock.clone(),
                ));
            }
            _ => {
                issuer.in_flight.store(false, Ordering::Release);
                issuer
                    .record
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .last_error = Some("no HTTP client or runtime to fetch keys".to_owned());
            }
        }
        issuer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ExternalConfig {
        ExternalConfig::new(
            "https://issuer.example".into(),
            None,
            Duration::from_secs(60),
            Duration::from_secs(3600),
            Duration::from_secs(86_400),
        )
    }

    #[test]
    fn nonsense_intervals_are_made_safe() {
        let c = ExternalConfig::new(
            "i".into(),
            None,
            Duration::ZERO,
            Duration::ZERO,
            Duration::ZERO,
        );
        assert_eq!((c.min_refresh.as_secs(), c.max_refresh.as_secs()), (1, 1));
        let c = ExternalConfig::new(
            "i".into(),
            None,
            Duration::from_secs(600),
            Duration::from_secs(60),
            Duration::ZERO,
        );
        assert_eq!(c.after_success(Some(Duration::from_secs(5))).as_secs(), 600);
    }

    #[test]
    fn cache_control_decides_within_the_floor_and_the_ceiling() {
        let c = config();
        let secs = Duration::from_secs;
        assert_eq!(c.after_success(Some(secs(600))), secs(600));
        assert_eq!(c.after_success(Some(secs(5))), secs(60), "floor");
        assert_eq!(c.after_success(Some(secs(86_400))), secs(3600), "ceiling");
        assert_eq!(c.after_success(None), secs(3600));
        assert_eq!(c.after_success(Some(Duration::ZERO)), secs(60), "no-cache");
    }

    #[test]
    fn failures_back_off_from_the_floor_to_the_ceiling() {
        let c = config();
        let waits: Vec<u64> = (1..=8).map(|n| c.after_failure(n).as_secs()).collect();
        assert_eq!(waits, [60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(c.after_failure(1000).as_secs(), 3600);
    }
}
