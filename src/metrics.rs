//! Prometheus metrics. Labels carry resource names and states only: never key material.
//!
//! Every label value comes from a bounded set: the names of objects that exist (a
//! SigningKey, an AuthPolicy, the issuers they name, which go when the object goes), or
//! a value written in this code. Labels of the second kind are `&'static str`, so that a
//! value read from a request (an admission review's `kind`, a header) cannot become one:
//! each distinct label is a series kept forever, and a client choosing them could grow
//! `/metrics` and the process without bound.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyStateLabels {
    pub namespace: String,
    pub name: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// `manifest` (a refused manifest file or document), `keystore` (unreadable key
    /// material) or `tls` (a refused certificate, or a failed bootstrap).
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub namespace: String,
    pub policy: String,
    /// `allow`, `deny`, `would_deny` (audited), `legacy_session`, `off`.
    pub decision: String,
    /// The rejection reason; empty when allowed.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub namespace: String,
    pub policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IssuerLabels {
    pub issuer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FetchLabels {
    pub issuer: String,
    /// `ok` or `error`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    /// `SigningKey`, `AuthPolicy`, `Revocation`, `other` (any other kind the webhook was
    /// sent: never the request's own text), or empty when the review did not parse.
    pub kind: &'static str,
    /// `CREATE`, `UPDATE`, ...; empty when the review did not parse.
    pub operation: &'static str,
    /// `allowed`, `warned` (allowed with warnings), `denied`, `skipped` (not ours to
    /// judge), `malformed` (answered 400).
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RevocationLabels {
    /// The namespace of the Revocations.
    pub namespace: String,
    /// The SigningKey (`namespace/name`) or the issuer URL they name.
    pub issuer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// `logout`, `payment_failed`, `password_changed`, `compromised`,
    /// `account_disabled` or `other`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `revoked` (in force on this replica when answered), `ignored` (not a valid token
    /// of the issuer: nothing said), `unsupported` (valid, but no `jti` or `sid` to
    /// revoke it by), `rate_limited`, `invalid_request` or `error` (not stored, or not in
    /// force in time: 503).
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: &'static str,
}

pub struct Metrics {
    registry: Registry,
    /// Published keys per SigningKey and state (Next, Active, Retired).
    pub keys: Family<KeyStateLabels, Gauge>,
    /// Times a new key became the signing key.
    pub rotations: Family<ResourceLabels, Counter>,
    /// Inputs refused while reloading.
    pub reload_errors: Family<SourceLabels, Counter>,
    /// Forward-auth and TokenReview decisions.
    pub decisions: Family<DecisionLabels, Counter>,
    /// Time to decide, from request headers to response.
    pub decision_seconds: Family<PolicyLabels, AtomicHistogram>,
    /// When each policy's legacy session cookies stop passing (`legacySession.until`).
    pub legacy_session_sunset: Family<PolicyLabels, Gauge>,
    /// Operator reconciles, and failures by kind.
    pub reconciles: Counter,
    /// AuthPolicy status reconciles (each compares, and writes only what changed).
    pub policy_reconciles: Counter,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_seconds: Histogram,
    /// 1 while this replica holds the lease (and writes).
    pub leader: Gauge,
    /// External issuers: fetches by result, keys in the current set, last success.
    pub jwks_fetches: Family<FetchLabels, Counter>,
    pub jwks_keys: Family<IssuerLabels, Gauge>,
    pub jwks_last_success: Family<IssuerLabels, Gauge>,
    /// Decisions answered from the verified-token cache, and those that verified.
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    /// Admission reviews answered.
    pub admission_reviews: Family<AdmissionLabels, Counter>,
    /// Revocations in force, by namespace and issuer.
    pub revocations: Family<RevocationLabels, Gauge>,
    /// Revocations applied by this replica, by reason label.
    pub revocations_applied: Family<ReasonLabels, Counter>,
    /// From a Revocation's creation to its enforcement in this replica.
    pub revocation_propagation: Histogram,
    /// `POST {issuer}/revoke` requests by result.
    pub revoke_requests: Family<ResultLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("authplane");
        let keys = Family::<KeyStateLabels, Gauge>::default();
        let rotations = Family::<ResourceLabels, Counter>::default();
        let reload_errors = Family::<SourceLabels, Counter>::default();
        registry.register(
            "signing_keys",
            "Published signing keys by SigningKey and state",
            keys.clone(),
        );
        registry.register(
            "key_rotations",
            "Times a new key became the Active signing key",
            rotations.clone(),
        );
        registry.register(
            "reload_errors",
            "Refused inputs (manifests, key material) while reloading",
            reload_errors.clone(),
        );
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Authorization decisions by policy, decision and reason; audited requests count as would_deny",
            decisions.clone(),
        );
        let decision_seconds = Family::<PolicyLabels, AtomicHistogram>::default();
        registry.register(
            "decision_duration_seconds",
            "Time to decide one request",
            decision_seconds.clone(),
        );
        let legacy_session_sunset = Family::<PolicyLabels, Gauge>::default();
        registry.register(
            "legacy_session_sunset_timestamp_seconds",
            "Unix time at which a policy's legacy session cookies stop passing (legacySession.until); absent without one",
            legacy_session_sunset.clone(),
        );
        let reconciles = Counter::default();
        registry.register("reconciles", "SigningKey reconciles", reconciles.clone());
        let policy_reconciles = Counter::default();
        registry.register(
            "policy_status_reconciles",
            "AuthPolicy status reconciles",
            policy_reconciles.clone(),
        );
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Failed SigningKey reconciles by kind (api, conflict, key_generation, not_leader)",
            reconcile_errors.clone(),
        );
        let reconcile_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "reconcile_duration_seconds",
            "Time of one SigningKey reconcile",
            reconcile_seconds.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the lease and writes",
            leader.clone(),
        );
        let jwks_fetches = Family::<FetchLabels, Counter>::default();
        registry.register(
            "jwks_fetches",
            "Fetches of external issuers' key sets by result",
            jwks_fetches.clone(),
        );
        let jwks_keys = Family::<IssuerLabels, Gauge>::default();
        registry.register(
            "jwks_keys",
            "Keys in the current key set of an external issuer",
            jwks_keys.clone(),
        );
        let jwks_last_success = Family::<IssuerLabels, Gauge>::default();
        registry.register(
            "jwks_last_success_timestamp_seconds",
            "Unix time of the last successful fetch of an external issuer's key set; alert on its age",
            jwks_last_success.clone(),
        );
        let cache_hits = Counter::default();
        registry.register(
            "decision_cache_hits",
            "Tokens found in the verified-token cache (no signature check)",
            cache_hits.clone(),
        );
        let cache_misses = Counter::default();
        registry.register(
            "decision_cache_misses",
            "Tokens verified because the cache did not hold them",
            cache_misses.clone(),
        );
        let admission_reviews = Family::<AdmissionLabels, Counter>::default();
        registry.register(
            "admission_reviews",
            "Admission reviews answered, by kind, operation and result",
            admission_reviews.clone(),
        );
        let revocations = Family::<RevocationLabels, Gauge>::default();
        registry.register(
            "revocations",
            "Revocations in force (not lapsed), by namespace and issuer",
            revocations.clone(),
        );
        let revocations_applied = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "revocations_applied",
            "Revocations applied by this replica, by reason",
            revocations_applied.clone(),
        );
        let revocation_propagation =
            Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0]);
        registry.register(
            "revocation_propagation_seconds",
            "Time from a Revocation's creation to its enforcement in this replica (whole-second creation timestamps: up to 1 s too high)",
            revocation_propagation.clone(),
        );
        let revoke_requests = Family::<ResultLabels, Counter>::default();
        registry.register(
            "revoke_requests",
            "Requests to the token revocation endpoints, by result",
            revoke_requests.clone(),
        );
        Self {
            registry,
            revocations,
            revocations_applied,
            revocation_propagation,
            revoke_requests,
            jwks_fetches,
            jwks_keys,
            jwks_last_success,
            cache_hits,
            cache_misses,
            keys,
            rotations,
            reload_errors,
            decisions,
            decision_seconds,
            legacy_session_sunset,
            reconciles,
            policy_reconciles,
            reconcile_errors,
            reconcile_seconds,
            leader,
            admission_reviews,
        }
    }
}

/// A histogram of decision times, 25 µs to about 100 ms, updated with atomics only:
/// prometheus-client's own `Histogram` takes a mutex per observation, and this one sits on
/// every request.
#[derive(Debug, Default)]
pub struct AtomicHistogram {
    inner: std::sync::Arc<HistogramCells>,
}

#[derive(Debug, Default)]
struct HistogramCells {
    /// Per-bucket (not cumulative) counts; the last is +Inf.
    counts: [AtomicU64; DECISION_BUCKETS + 1],
    /// Sum of observations in nanoseconds.
    sum_nanos: AtomicU64,
}

const DECISION_BUCKETS: usize = 13;

fn decision_bound(i: usize) -> f64 {
    0.000_025 * f64::from(1u32 << i)
}

impl Clone for AtomicHistogram {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl AtomicHistogram {
    pub fn observe(&self, seconds: f64) {
        let bucket = (0..DECISION_BUCKETS)
            .find(|&i| seconds <= decision_bound(i))
            .unwrap_or(DECISION_BUCKETS);
        self.inner.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = (seconds.max(0.0) * 1e9) as u64;
        self.inner.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

impl prometheus_client::metrics::TypedMetric for AtomicHistogram {
    const TYPE: prometheus_client::metrics::MetricType =
        prometheus_client::metrics::MetricType::Histogram;
}

impl prometheus_client::encoding::EncodeMetric for AtomicHistogram {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = (0..=DECISION_BUCKETS)
            .map(|i| {
                let bound = if i == DECISION_BUCKETS {
                    f64::INFINITY
                } else {
                    decision_bound(i)
                };
                (bound, self.inner.counts[i].load(Ordering::Relaxed))
            })
            .collect();
        let count = buckets.iter().map(|(_, c)| c).sum();
        let sum = self.inner.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        <Self as prometheus_client::metrics::TypedMetric>::TYPE
    }
}

impl Metrics {
    /// Key-state gauges and the rotation count of one SigningKey after a reconcile.
    pub fn observe_keys(
        &self,
        outcome: &crate::reconcile::KeyOutcome,
        namespace: &str,
        name: &str,
        now: jiff::Timestamp,
    ) {
        use crate::keys::lifecycle::KeyState;
        let views = outcome.keys.view(now, outcome.policy.retain_for);
        for state in [KeyState::Next, KeyState::Active, KeyState::Retired] {
            let count = views.iter().filter(|v| v.state == state).count();
            self.keys
                .get_or_create(&KeyStateLabels {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    state: state.as_str().to_owned(),
                })
                .set(count as i64);
        }
        // Counted from the signing key itself, not from `Activated` events: a key that
        // signs early because `revoke-key` removed the Active one is a rotation too.
        if outcome.signing_key_changed {
            self.rotations
                .get_or_create(&ResourceLabels {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                })
                .inc();
        }
    }

    /// Drops the gauges of an AuthPolicy that is gone.
    pub fn forget_policy(&self, namespace: &str, policy: &str) {
        self.legacy_session_sunset.remove(&PolicyLabels {
            namespace: namespace.to_owned(),
            policy: policy.to_owned(),
        });
    }

    /// Drops the gauges of a SigningKey that is gone.
    pub fn forget_keys(&self, namespace: &str, name: &str) {
        for state in ["Next", "Active", "Retired"] {
            self.keys.remove(&KeyStateLabels {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                state: state.to_owned(),
            });
        }
    }

    pub fn decision(
        &self,
        namespace: &str,
        policy: &str,
        decision: &str,
        reason: &str,
        seconds: f64,
    ) {
        self.decisions
            .get_or_create(&DecisionLabels {
                namespace: namespace.to_owned(),
                policy: policy.to_owned(),
                decision: decision.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
        self.decision_seconds
            .get_or_create(&PolicyLabels {
                namespace: namespace.to_owned(),
                policy: policy.to_owned(),
            })
            .observe(seconds);
    }

    /// Decision meters of one policy, for the request path: each series is looked up
    /// (and its labels allocated) once, not per request.
    pub fn policy_meters(&self, namespace: &str, policy: &str, slots: usize) -> PolicyMeters {
        PolicyMeters {
            namespace: namespace.to_owned(),
            policy: policy.to_owned(),
            decisions: self.decisions.clone(),
            legacy_session_sunset: self.legacy_session_sunset.clone(),
            cache_hits: self.cache_hits.clone(),
            cache_misses: self.cache_misses.clone(),
            counters: (0..slots).map(|_| OnceLock::new()).collect(),
            seconds: self
                .decision_seconds
                .get_or_create(&PolicyLabels {
                    namespace: namespace.to_owned(),
                    policy: policy.to_owned(),
                })
                .clone(),
        }
    }

    /// Drops the series of an external issuer no policy uses any more, so that its
    /// last-success age does not set off alerts forever.
    pub fn forget_issuer(&self, issuer: &str) {
        let labels = IssuerLabels {
            issuer: issuer.to_owned(),
        };
        self.jwks_keys.remove(&labels);
        self.jwks_last_success.remove(&labels);
        for result in ["ok", "error"] {
            self.jwks_fetches.remove(&FetchLabels {
                issuer: issuer.to_owned(),
                result,
            });
        }
    }

    /// The outcome of one fetch of an external issuer's key set.
    pub fn jwks_fetched(&self, issuer: &str, keys: Result<usize, ()>, now: jiff::Timestamp) {
        let result = if keys.is_ok() { "ok" } else { "error" };
        self.jwks_fetches
            .get_or_create(&FetchLabels {
                issuer: issuer.to_owned(),
                result,
            })
            .inc();
        if let Ok(count) = keys {
            let labels = IssuerLabels {
                issuer: issuer.to_owned(),
            };
            self.jwks_keys.get_or_create(&labels).set(count as i64);
            self.jwks_last_success
                .get_or_create(&labels)
                .set(now.as_second());
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn admission(&self, kind: &'static str, operation: &'static str, result: &'static str) {
        self.admission_reviews
            .get_or_create(&AdmissionLabels {
                kind,
                operation,
                result,
            })
            .inc();
    }

    pub fn revoke_request(&self, result: &'static str) {
        self.revoke_requests
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// The active revocations per (namespace, issuer), replacing the last report.
    pub fn observe_revocations(&self, counts: &[crate::revocation::Count]) {
        self.revocations.clear();
        for count in counts {
            self.revocations
                .get_or_create(&RevocationLabels {
                    namespace: count.namespace.clone(),
                    issuer: count.issuer.clone(),
                })
                .set(count.active as i64);
        }
    }

    /// A Revocation newly applied by this replica, `seconds` after its creation.
    pub fn revocation_applied(&self, reason: &'static str, seconds: Option<f64>) {
        self.revocations_applied
            .get_or_create(&ReasonLabels { reason })
            .inc();
        if let Some(seconds) = seconds {
            self.revocation_propagation.observe(seconds.max(0.0));
        }
    }

    pub fn reload_error(&self, source: &'static str) {
        self.reload_errors
            .get_or_create(&SourceLabels { source })
            .inc();
    }
}

/// The decision series of one policy. Slot numbers are the caller's: one per
/// (decision, reason) pair.
pub struct PolicyMeters {
    namespace: String,
    policy: String,
    decisions: Family<DecisionLabels, Counter>,
    legacy_session_sunset: Family<PolicyLabels, Gauge>,
    cache_hits: Counter,
    cache_misses: Counter,
    counters: Vec<OnceLock<Counter>>,
    seconds: AtomicHistogram,
}

impl crate::policy::DecisionMeters for PolicyMeters {
    fn record(&self, slot: usize, decision: &'static str, reason: &'static str, seconds: f64) {
        let labels = || DecisionLabels {
            namespace: self.namespace.clone(),
            policy: self.policy.clone(),
            decision: decision.to_owned(),
            reason: reason.to_owned(),
        };
        match self.counters.get(slot) {
            Some(cell) => cell
                .get_or_init(|| self.decisions.get_or_create(&labels()).clone())
                .inc(),
            None => self.decisions.get_or_create(&labels()).inc(),
        };
        self.seconds.observe(seconds);
    }

    fn cache_hit(&self, hit: bool) {
        if hit {
            self.cache_hits.inc();
        } else {
            self.cache_misses.inc();
        }
    }

    fn legacy_sessions_end(&self, until: Option<jiff::Timestamp>) {
        let labels = PolicyLabels {
            namespace: self.namespace.clone(),
            policy: self.policy.clone(),
        };
        match until {
            Some(until) => {
                self.legacy_session_sunset
                    .get_or_create(&labels)
                    .set(until.as_second());
            }
            None => {
                self.legacy_session_sunset.remove(&labels);
            }
        }
    }
}
