//! External issuers as the core sees them. Their key sets are fetched and refreshed by
//! the runtime (`crate::external`: HTTP, tasks, metrics) behind the [`RemoteIssuers`]
//! and [`RemoteIssuer`] traits, so that compiling a policy starts nothing and the core
//! stays free of tokio and reqwest. What is here is data and arithmetic.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use jiff::Timestamp;

use super::verify::VerifyKey;

/// Finds or starts the issuer of a configuration. Policies with the same configuration
/// share one issuer (one cache, one refresh); an issuer no compiled policy holds any more
/// is the runtime's to stop.
pub trait RemoteIssuers: Send + Sync {
    fn get(&self, config: &ExternalConfig) -> Arc<dyn RemoteIssuer>;
}

/// One external issuer's key set, kept fresh by the runtime. Requests only read.
pub trait RemoteIssuer: Send + Sync {
    fn config(&self) -> &ExternalConfig;

    /// The current set, unless it is older than the maximum staleness.
    fn usable_keys(&self, now: Timestamp) -> Option<Arc<ExternalKeys>>;

    /// What status reports.
    fn health(&self, now: Timestamp) -> Health;

    /// A token named a kid no current set has: fetch again, rate-limited, and wait for
    /// it. True when a fetch completed.
    fn refetch_for_unknown_kid(&self) -> Pin<Box<dyn Future<Output = bool> + Send + '_>>;
}

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

/// The configuration of a policy's external issuer entry; `None` for a SigningKey.
pub fn external_config(issuer: &crate::api::IssuerRef) -> Option<ExternalConfig> {
    let url = issuer.issuer.as_ref()?;
    Some(ExternalConfig::of(
        url,
        issuer.jwks_uri.as_deref(),
        issuer.refresh.as_ref(),
    ))
}

impl ExternalConfig {
    /// An external issuer entry's configuration (an AuthPolicy's issuer, a TokenClient's
    /// ID-token issuer): the same fields, the same defaults, so that both share a fetch.
    pub fn of(
        issuer: &str,
        jwks_uri: Option<&str>,
        refresh: Option<&crate::api::KeyRefresh>,
    ) -> Self {
        let refresh = refresh.cloned().unwrap_or_default();
        ExternalConfig::new(
            issuer.to_owned(),
            jwks_uri.map(str::to_owned),
            refresh.min_interval.value().unsigned_abs(),
            refresh.max_interval.value().unsigned_abs(),
            refresh.max_stale.value().unsigned_abs(),
        )
    }
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
    pub fn after_success(&self, max_age: Option<Duration>) -> Duration {
        max_age
            .unwrap_or(self.max_refresh)
            .clamp(self.min_refresh, self.max_refresh)
    }

    /// When to try again after `failures` failures in a row: from the floor, doubling,
    /// up to the ceiling.
    pub fn after_failure(&self, failures: u32) -> Duration {
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
    /// A set as fetched; `digest` identifies the document it was read from, so that a
    /// refresh returning the same document only confirms it.
    pub fn new(keys: HashMap<String, VerifyKey>, digest: [u8; 32]) -> Self {
        Self {
            keys,
            digest,
            confirmed_at: AtomicI64::new(0),
        }
    }

    pub fn get(&self, kid: &str) -> Option<&VerifyKey> {
        self.keys.get(kid)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// A fetch at `now` returned this set.
    pub fn confirm(&self, now: Timestamp) {
        self.confirmed_at.store(now.as_second(), Ordering::Relaxed);
    }

    /// Seconds since the last fetch that returned this set.
    pub fn age(&self, now: Timestamp) -> i64 {
        now.as_second() - self.confirmed_at.load(Ordering::Relaxed)
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
