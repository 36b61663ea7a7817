//! The token service's metrics: tokens issued by client and grant, requests by result
//! (rate-limited ones among them), reuse detected by client, and the store's latency and
//! errors by operation. The only label read from outside is a TokenClient's name, and
//! only of a client that is served (an unknown `client_id` a request names never becomes
//! a label); the rest are values written here.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::metrics::AtomicHistogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IssuedLabels {
    /// The TokenClient, `namespace/name`.
    pub client: String,
    /// `token_exchange` (a login) or `refresh_token` (a rotation).
    pub grant: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClientLabels {
    pub client: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenResultLabels {
    /// `issued`, `replayed` (a retry within the grace got the same pair), an OAuth error
    /// code (`invalid_request`, `invalid_client`, `invalid_grant`, ...), `rate_limited`,
    /// `unavailable` (503) or `error` (500).
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    /// `create`, `find`, `family`, `swap` or `purge`.
    pub operation: &'static str,
}

#[derive(Clone, Debug, Default)]
pub struct TokenMetrics {
    pub issued: Family<IssuedLabels, Counter>,
    pub requests: Family<TokenResultLabels, Counter>,
    pub reuse: Family<ClientLabels, Counter>,
    pub store_seconds: Family<StoreLabels, AtomicHistogram>,
    pub store_errors: Family<StoreLabels, Counter>,
    /// Sessions ended in the token store held by this replica, and when it last read
    /// them (Unix seconds): the age of its logouts is `time() - this`.
    pub session_revocations: Gauge,
    pub session_revocations_synced: Gauge,
    pub session_revocations_malformed: Counter,
    /// Sessions this replica ended in the token store (each one entry appended).
    pub session_revocations_recorded: Counter,
    pub session_revocations_dropped: Counter,
    /// Rate-limit decisions this replica took with its own limits because the shared
    /// ones (Redis) did not answer, and whether they answer now (1) or not (0).
    pub shared_limit_fallbacks: Counter,
    pub shared_limits_up: Gauge,
}

impl TokenMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "tokens_issued",
            "Token pairs issued by the token endpoint, by TokenClient and grant (a login, or a refresh's rotation)",
            metrics.issued.clone(),
        );
        registry.register(
            "token_requests",
            "Requests to the token endpoints, by result",
            metrics.requests.clone(),
        );
        registry.register(
            "refresh_token_reuse",
            "Superseded refresh tokens presented after the grace (each ended its session), by TokenClient",
            metrics.reuse.clone(),
        );
        registry.register(
            "token_store_seconds",
            "Time of the token store's operations",
            metrics.store_seconds.clone(),
        );
        registry.register(
            "token_store_errors",
            "Token store operations that failed or missed their deadline",
            metrics.store_errors.clone(),
        );
        registry.register(
            "session_revocations",
            "Sessions ended in the token store (logouts, reused refresh tokens) held in force by this replica",
            metrics.session_revocations.clone(),
        );
        registry.register(
            "session_revocations_last_sync_timestamp_seconds",
            "When this replica last read the sessions ended in the token store (Unix seconds): time() minus this is their age",
            metrics.session_revocations_synced.clone(),
        );
        registry.register(
            "session_revocations_recorded",
            "Sessions this replica ended in the token store (logouts, reused refresh tokens): one entry appended each",
            metrics.session_revocations_recorded.clone(),
        );
        registry.register(
            "session_revocations_malformed",
            "Entries of the token store's ended sessions that did not read (skipped)",
            metrics.session_revocations_malformed.clone(),
        );
        registry.register(
            "session_revocations_dropped",
            "Sessions ended in the token store not held in memory: over the cap of 1,000,000",
            metrics.session_revocations_dropped.clone(),
        );
        registry.register(
            "rate_limit_fallbacks",
            "Rate-limit decisions taken by this replica's own limits because the shared limits (Redis) did not answer",
            metrics.shared_limit_fallbacks.clone(),
        );
        registry.register(
            "shared_rate_limits_up",
            "1 while the shared rate limits (Redis) answer; 0 while this replica falls back to its own, or has no shared limits",
            metrics.shared_limits_up.clone(),
        );
        metrics
    }

    /// A successful read of the ended sessions at `now` (Unix seconds), `held` in force.
    pub fn session_revocations_synced(&self, held: usize, now: i64) {
        self.session_revocations.set(held as i64);
        self.session_revocations_synced.set(now);
    }

    pub fn issued(&self, client: &str, grant: &'static str) {
        self.issued
            .get_or_create(&IssuedLabels {
                client: client.to_owned(),
                grant,
            })
            .inc();
    }

    pub fn request(&self, result: &'static str) {
        self.requests
            .get_or_create(&TokenResultLabels { result })
            .inc();
    }

    pub fn reuse(&self, client: &str) {
        self.reuse
            .get_or_create(&ClientLabels {
                client: client.to_owned(),
            })
            .inc();
    }

    /// Forgets a TokenClient's series once it is gone.
    pub fn forget_client(&self, client: &str) {
        for grant in ["token_exchange", "refresh_token"] {
            self.issued.remove(&IssuedLabels {
                client: client.to_owned(),
                grant,
            });
        }
        self.reuse.remove(&ClientLabels {
            client: client.to_owned(),
        });
    }
}
