//! External OIDC issuers (Microsoft Entra ID, Google, Keycloak, ...): each configured
//! issuer's key set is fetched in the background, cached, refreshed as its
//! `Cache-Control` says within a floor and a ceiling, and refetched early, rate-limited,
//! when a token names an unknown kid. When a refresh fails the last good set keeps
//! serving, up to a maximum staleness.
//!
//! Requests only read: the current set is behind an `ArcSwap`, the rate limit is an
//! atomic. Only the refresh task does I/O.

pub mod address;
pub mod fetch;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use aws_lc_rs::digest::{SHA256, digest};
use jiff::Timestamp;
use tokio::sync::{Notify, watch};

use crate::clock::Clock;
use crate::metrics::Metrics;
pub use crate::policy::remote::{ExternalConfig, ExternalKeys, Health};
use crate::policy::remote::{RemoteIssuer, RemoteIssuers};
use fetch::{FetchError, Fetcher};

/// What a tenant's AuthPolicy may make authplane fetch, and how often.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchSettings {
    /// Loopback addresses (`localhost`, `127.0.0.1`, `[::1]`, and names resolving to
    /// them), over plain HTTP too: providers on the developer's machine. Dev mode allows
    /// them; `run` only with `--allow-loopback-issuers`, since on a cluster loopback is
    /// authplane's own pod (its sidecars' admin ports).
    pub allow_loopback: bool,
    /// Link-local addresses (169.254.0.0/16, fe80::/10): where clouds serve instance
    /// metadata and credentials (169.254.169.254). Only with `--allow-link-local-issuers`.
    pub allow_link_local: bool,
    /// The least time between two fetches of one key set, whatever a policy's
    /// `refresh.minInterval` says.
    pub refresh_floor: Duration,
    /// External issuers (distinct issuer, JWKS URL and refresh settings) the
    /// AuthPolicies of one namespace may use; a policy that would add more is refused.
    pub max_per_namespace: usize,
}

pub const DEFAULT_REFRESH_FLOOR: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_PER_NAMESPACE: usize = 32;

impl Default for FetchSettings {
    /// As on a cluster: no loopback, no link-local.
    fn default() -> Self {
        Self {
            allow_loopback: false,
            allow_link_local: false,
            refresh_floor: DEFAULT_REFRESH_FLOOR,
            max_per_namespace: DEFAULT_MAX_PER_NAMESPACE,
        }
    }
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
        (keys.age(now) <= self.config.max_stale.as_secs() as i64).then_some(keys)
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
                match current.filter(|k| k.digest() == keys.digest()) {
                    Some(same) => same.confirm(now),
                    None => {
                        tracing::info!(
                            issuer = issuer.as_str(),
                            keys = count,
                            "external key set updated"
                        );
                        keys.confirm(now);
                        self.keys.store(Some(Arc::new(keys)));
                    }
                }
                let mut record = self.record.lock().unwrap_or_else(|e| e.into_inner());
                record.last_success = Some(now);
                record.last_error = None;
                metrics.jwks_fetched(issuer, Ok(count), now, self.config.max_stale);
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
                // The whole story for the operator's log; its class for the policy's status,
                // which the policy's owner reads.
                tracing::warn!(
                    issuer = issuer.as_str(),
                    error = %error,
                    "external key set refresh failed; {keeping}"
                );
                self.record
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .last_error = Some(error.summary());
                metrics.jwks_fetched(issuer, Err(()), now, self.config.max_stale);
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
            ExternalKeys::new(
                keys,
                digest(&SHA256, &fetched.body)
                    .as_ref()
                    .try_into()
                    .unwrap_or([0; 32]),
            ),
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
    settings: FetchSettings,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    issuers: Mutex<HashMap<ExternalConfig, Weak<ExternalIssuer>>>,
}

impl ExternalIssuers {
    pub fn new(metrics: Arc<Metrics>, clock: Arc<dyn Clock>, settings: FetchSettings) -> Self {
        let fetcher = Fetcher::new(settings.clone())
            .inspect_err(|e| tracing::error!(error = %e, "no HTTP client for external issuers"))
            .ok();
        Self {
            fetcher,
            settings,
            metrics,
            clock,
            issuers: Mutex::new(HashMap::new()),
        }
    }

    /// The issuer for a configuration, starting its refresh task when it is new. Must be
    /// called on a tokio runtime. Refresh intervals below the floor count as the floor, so
    /// policies that differ only there share one issuer.
    pub fn get(&self, config: &ExternalConfig) -> Arc<ExternalIssuer> {
        let floor = self.settings.refresh_floor;
        let config = &ExternalConfig {
            min_refresh: config.min_refresh.max(floor),
            max_refresh: config.max_refresh.max(floor),
            ..config.clone()
        };
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

impl RemoteIssuer for ExternalIssuer {
    fn config(&self) -> &ExternalConfig {
        ExternalIssuer::config(self)
    }

    fn usable_keys(&self, now: Timestamp) -> Option<Arc<ExternalKeys>> {
        ExternalIssuer::usable_keys(self, now)
    }

    fn health(&self, now: Timestamp) -> Health {
        ExternalIssuer::health(self, now)
    }

    fn refetch_for_unknown_kid(&self) -> Pin<Box<dyn Future<Output = bool> + Send + '_>> {
        Box::pin(ExternalIssuer::refetch_for_unknown_kid(self))
    }
}

impl RemoteIssuers for ExternalIssuers {
    fn get(&self, config: &ExternalConfig) -> Arc<dyn RemoteIssuer> {
        ExternalIssuers::get(self, config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(min_refresh_secs: u64) -> ExternalConfig {
        ExternalConfig::new(
            "https://issuer.example".into(),
            Some("https://issuer.example/keys".into()),
            Duration::from_secs(min_refresh_secs),
            Duration::from_secs(3600),
            Duration::from_secs(86_400),
        )
    }

    #[tokio::test]
    async fn no_policy_refetches_more_often_than_the_floor() {
        let issuers = ExternalIssuers::new(
            Arc::new(Metrics::default()),
            Arc::new(crate::clock::SystemClock),
            FetchSettings::default(),
        );
        let every_second = issuers.get(&config(1));
        assert_eq!(every_second.config().min_refresh, DEFAULT_REFRESH_FLOOR);
        // Policies that differ only below the floor share one issuer and one fetch.
        assert!(Arc::ptr_eq(&every_second, &issuers.get(&config(5))));
        let slower = issuers.get(&config(120));
        assert_eq!(slower.config().min_refresh, Duration::from_secs(120));
    }
}
