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
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

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
pub struct PauseLabels {
    pub namespace: String,
    pub policy: String,
    /// `spec` (`spec.rollout.paused`) or `deny_ratio` (`pauseAboveDenyRatio`).
    pub cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuditLabels {
    pub namespace: String,
    pub policy: String,
    /// `true` when the audited request would have been refused (`would_deny` or
    /// `legacy_session` decisions): what `pauseAboveDenyRatio` measures.
    pub would_deny: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InputLabels {
    /// What a driver reads, as `/readyz` names it (`SigningKey watch`, `manifests`, ...).
    pub input: &'static str,
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
    /// The token service (`POST {issuer}/token`) and its store.
    pub tokens: crate::tokens::metrics::TokenMetrics,
    /// Key lifecycle per SigningKey: when it next changes, since when the Active key
    /// signs, how often it should rotate, whether its last reconcile succeeded, failures.
    pub key_next_transition: Family<ResourceLabels, Gauge>,
    pub key_active_since: Family<ResourceLabels, Gauge>,
    pub key_rotation_period: Family<ResourceLabels, Gauge>,
    pub key_ready: Family<ResourceLabels, Gauge>,
    pub key_failures: Family<ResourceLabels, Counter>,
    /// Rollouts per AuthPolicy: the enforced share now, the step of a stepped one, when
    /// it steps next, whether it is paused and why, its deny-ratio rule.
    pub rollout_percentage: Family<PolicyLabels, Gauge<f64, AtomicU64>>,
    pub rollout_step: Family<PolicyLabels, Gauge>,
    pub rollout_steps: Family<PolicyLabels, Gauge>,
    pub rollout_next_step: Family<PolicyLabels, Gauge>,
    pub rollout_paused: Family<PauseLabels, Gauge>,
    pub rollout_deny_ratio_rule: Family<PolicyLabels, Gauge<f64, AtomicU64>>,
    /// Requests decided outside enforcement, and whether they would have been refused.
    pub audited: Family<AuditLabels, Counter>,
    /// External issuers: how long the last good key set serves after its fetch.
    pub jwks_max_stale: Family<IssuerLabels, Gauge>,
    /// 1 while an input (a watch, the manifest folder) is listed and followed.
    pub input_ready: Family<InputLabels, Gauge>,
    /// The (decision, reason) pairs each policy has counted, so that a deleted policy's
    /// decision series can be removed: a Family cannot be searched by a part of its
    /// labels, and series left behind would let policy names churned by a tenant grow
    /// `/metrics` without bound.
    decision_pairs: Arc<Mutex<DecisionPairs>>,
}

type DecisionPairs = HashMap<PolicyLabels, HashSet<(&'static str, &'static str)>>;

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
        // Exported at 0 from the start, so that `rate()` sees the first malformed review
        // (a series that appears at 1 shows no increase).
        let _ = admission_reviews.get_or_create(&AdmissionLabels {
            kind: "",
            operation: "",
            result: "malformed",
        });
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
        let tokens = crate::tokens::metrics::TokenMetrics::register(&mut registry);
        let revoke_requests = Family::<ResultLabels, Counter>::default();
        registry.register(
            "revoke_requests",
            "Requests to the token revocation endpoints, by result",
            revoke_requests.clone(),
        );
        let key_next_transition = Family::<ResourceLabels, Gauge>::default();
        registry.register(
            "signing_key_next_transition_timestamp_seconds",
            "Unix time of a SigningKey's next lifecycle change (a key published, activated or removed)",
            key_next_transition.clone(),
        );
        let key_active_since = Family::<ResourceLabels, Gauge>::default();
        registry.register(
            "signing_key_active_since_timestamp_seconds",
            "Unix time at which a SigningKey's Active key began to sign; its age is time() minus this",
            key_active_since.clone(),
        );
        let key_rotation_period = Family::<ResourceLabels, Gauge>::default();
        registry.register(
            "signing_key_rotation_period_seconds",
            "A SigningKey's rotation.every: an Active key older than this is overdue",
            key_rotation_period.clone(),
        );
        let key_ready = Family::<ResourceLabels, Gauge>::default();
        registry.register(
            "signing_key_ready",
            "1 when a SigningKey's last reconcile stored and published its keys with an Active one, 0 when it failed",
            key_ready.clone(),
        );
        let key_failures = Family::<ResourceLabels, Counter>::default();
        registry.register(
            "signing_key_failures",
            "Failed SigningKey reconciles (keys unreadable, unstorable or not generated): rotations that did not happen",
            key_failures.clone(),
        );
        let rollout_percentage = Family::<PolicyLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "rollout_enforced_percentage",
            "Share of users under enforcement now (0 in Audit and Disabled mode), as status.effectivePercentage",
            rollout_percentage.clone(),
        );
        let rollout_step = Family::<PolicyLabels, Gauge>::default();
        registry.register(
            "rollout_step",
            "Current step of a stepped rollout, counted from 1; absent when not stepped",
            rollout_step.clone(),
        );
        let rollout_steps = Family::<PolicyLabels, Gauge>::default();
        registry.register(
            "rollout_steps",
            "Number of steps of a stepped rollout; absent when not stepped",
            rollout_steps.clone(),
        );
        let rollout_next_step = Family::<PolicyLabels, Gauge>::default();
        registry.register(
            "rollout_next_step_timestamp_seconds",
            "Unix time of a stepped rollout's next step; absent when paused or at its last step",
            rollout_next_step.clone(),
        );
        let rollout_paused = Family::<PauseLabels, Gauge>::default();
        registry.register(
            "rollout_paused",
            "1 while a stepped rollout is held, by cause (spec, deny_ratio); 0 otherwise",
            rollout_paused.clone(),
        );
        let rollout_deny_ratio_rule = Family::<PolicyLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "rollout_pause_above_deny_ratio",
            "A stepped rollout's pauseAboveDenyRatio.ratio; absent without one",
            rollout_deny_ratio_rule.clone(),
        );
        let audited = Family::<AuditLabels, Counter>::default();
        registry.register(
            "audited_requests",
            "Requests decided outside enforcement (audited), by whether they would have been refused",
            audited.clone(),
        );
        let jwks_max_stale = Family::<IssuerLabels, Gauge>::default();
        registry.register(
            "jwks_max_stale_seconds",
            "How long an external issuer's last good key set keeps serving after its last successful fetch",
            jwks_max_stale.clone(),
        );
        let input_ready = Family::<InputLabels, Gauge>::default();
        registry.register(
            "input_ready",
            "1 while an input (a watch of one kind, the manifest folder) is listed and followed; 0 while listing or failing (/readyz degraded)",
            input_ready.clone(),
        );
        Self {
            registry,
            key_next_transition,
            key_active_since,
            key_rotation_period,
            key_ready,
            key_failures,
            rollout_percentage,
            rollout_step,
            rollout_steps,
            rollout_next_step,
            rollout_paused,
            rollout_deny_ratio_rule,
            audited,
            jwks_max_stale,
            input_ready,
            decision_pairs: Arc::default(),
            revocations,
            revocations_applied,
            revocation_propagation,
            revoke_requests,
            tokens,
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
        let resource = ResourceLabels {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        match outcome.next_wakeup {
            Some(next) => {
                self.key_next_transition
                    .get_or_create(&resource)
                    .set(next.as_second());
            }
            None => {
                self.key_next_transition.remove(&resource);
            }
        }
        let active = outcome.keys.active(now);
        match active {
            Some(active) => {
                self.key_active_since
                    .get_or_create(&resource)
                    .set(active.activates_at.as_second());
            }
            None => {
                self.key_active_since.remove(&resource);
            }
        }
        self.key_rotation_period
            .get_or_create(&resource)
            .set(outcome.policy.every.as_secs());
        self.key_ready
            .get_or_create(&resource)
            .set(i64::from(active.is_some()));
        // Exported from the start at 0, so that `increase()` sees the first failure.
        let _ = self.key_failures.get_or_create(&resource);
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

    /// A SigningKey's reconcile failed: no rotation happened, nothing was published.
    pub fn key_failed(&self, namespace: &str, name: &str) {
        let resource = ResourceLabels {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        self.key_failures.get_or_create(&resource).inc();
        self.key_not_ready(namespace, name);
    }

    /// A SigningKey is not Ready for a reason of its own (an invalid spec): nothing failed
    /// that a retry could fix.
    pub fn key_not_ready(&self, namespace: &str, name: &str) {
        self.key_ready
            .get_or_create(&ResourceLabels {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            })
            .set(0);
    }

    /// Where a policy's rollout stands at `now`, after a driver tracked it.
    pub fn observe_rollout(
        &self,
        namespace: &str,
        policy: &str,
        rollout: &crate::api::Rollout,
        tracked: &crate::driver::rollouts::Tracked,
        now: jiff::Timestamp,
    ) {
        use crate::api::Mode;
        use crate::policy::progression::{PAUSED_BY_SPEC, Schedule};
        let labels = PolicyLabels {
            namespace: namespace.to_owned(),
            policy: policy.to_owned(),
        };
        let schedule = Schedule::of(rollout, tracked.progress.as_ref());
        let enforced = if rollout.mode == Mode::Enforce {
            schedule.percentage_at(now)
        } else {
            0.0
        };
        self.rollout_percentage.get_or_create(&labels).set(enforced);
        let pause = |cause, on: bool| {
            let labels = PauseLabels {
                namespace: namespace.to_owned(),
                policy: policy.to_owned(),
                cause,
            };
            self.rollout_paused
                .get_or_create(&labels)
                .set(i64::from(on));
        };
        match &tracked.progress {
            Some(progress) => {
                let step = i64::from(progress.step) + 1;
                self.rollout_step.get_or_create(&labels).set(step);
                self.rollout_steps
                    .get_or_create(&labels)
                    .set(progress.steps.len() as i64);
                let held = progress.held.as_deref();
                pause("spec", held == Some(PAUSED_BY_SPEC));
                pause("deny_ratio", held.is_some_and(|h| h != PAUSED_BY_SPEC));
            }
            None => self.forget_steps(&labels),
        }
        match tracked.progress.as_ref().and(schedule.next_change(now)) {
            Some(next) => {
                self.rollout_next_step
                    .get_or_create(&labels)
                    .set(next.as_second());
            }
            None => {
                self.rollout_next_step.remove(&labels);
            }
        }
        let rule = rollout
            .pause_above_deny_ratio
            .as_ref()
            .filter(|_| tracked.progress.is_some());
        match rule {
            Some(rule) => {
                self.rollout_deny_ratio_rule
                    .get_or_create(&labels)
                    .set(rule.ratio);
            }
            None => {
                self.rollout_deny_ratio_rule.remove(&labels);
            }
        }
    }

    fn forget_steps(&self, labels: &PolicyLabels) {
        self.rollout_step.remove(labels);
        self.rollout_steps.remove(labels);
        for cause in ["spec", "deny_ratio"] {
            self.rollout_paused.remove(&PauseLabels {
                namespace: labels.namespace.clone(),
                policy: labels.policy.clone(),
                cause,
            });
        }
    }

    /// Drops the gauges of an AuthPolicy that is gone.
    pub fn forget_policy(&self, namespace: &str, policy: &str) {
        let labels = PolicyLabels {
            namespace: namespace.to_owned(),
            policy: policy.to_owned(),
        };
        self.legacy_session_sunset.remove(&labels);
        self.rollout_percentage.remove(&labels);
        self.rollout_next_step.remove(&labels);
        self.rollout_deny_ratio_rule.remove(&labels);
        self.forget_steps(&labels);
        self.decision_seconds.remove(&labels);
        for would_deny in ["true", "false"] {
            self.audited.remove(&AuditLabels {
                namespace: namespace.to_owned(),
                policy: policy.to_owned(),
                would_deny,
            });
        }
        let pairs = self
            .decision_pairs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&labels);
        for (decision, reason) in pairs.into_iter().flatten() {
            self.decisions.remove(&DecisionLabels {
                namespace: namespace.to_owned(),
                policy: policy.to_owned(),
                decision: decision.to_owned(),
                reason: reason.to_owned(),
            });
        }
    }

    /// This replica stopped leading: the gauges only the leader keeps up to date (its
    /// reconciles set them) go, so that a stale value (a paused rollout, a failed key)
    /// does not outlive the lease on this replica and keep an alert firing after the new
    /// leader has moved on. Counters stay: their rates are still true.
    pub fn forget_leader_state(&self) {
        self.keys.clear();
        self.key_next_transition.clear();
        self.key_active_since.clear();
        self.key_rotation_period.clear();
        self.key_ready.clear();
        self.rollout_percentage.clear();
        self.rollout_step.clear();
        self.rollout_steps.clear();
        self.rollout_next_step.clear();
        self.rollout_paused.clear();
        self.rollout_deny_ratio_rule.clear();
    }

    /// The state of every input, as `/readyz` reports it; read when scraped.
    pub fn observe_inputs(&self, inputs: &[(&'static str, bool)]) {
        for (input, ready) in inputs {
            self.input_ready
                .get_or_create(&InputLabels { input })
                .set(i64::from(*ready));
        }
    }

    /// Drops the gauges of a SigningKey that is gone.
    pub fn forget_keys(&self, namespace: &str, name: &str) {
        let resource = ResourceLabels {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        self.key_next_transition.remove(&resource);
        self.key_active_since.remove(&resource);
        self.key_rotation_period.remove(&resource);
        self.key_ready.remove(&resource);
        self.key_failures.remove(&resource);
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
            decision_pairs: self.decision_pairs.clone(),
            legacy_session_sunset: self.legacy_session_sunset.clone(),
            cache_hits: self.cache_hits.clone(),
            cache_misses: self.cache_misses.clone(),
            counters: (0..slots).map(|_| OnceLock::new()).collect(),
            audited: self.audited.clone(),
            audited_counters: Default::default(),
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
        self.jwks_max_stale.remove(&labels);
        for result in ["ok", "error"] {
            self.jwks_fetches.remove(&FetchLabels {
                issuer: issuer.to_owned(),
                result,
            });
        }
    }

    /// The outcome of one fetch of an external issuer's key set; a good set serves up to
    /// `max_stale` after it was fetched.
    pub fn jwks_fetched(
        &self,
        issuer: &str,
        keys: Result<usize, ()>,
        now: jiff::Timestamp,
        max_stale: std::time::Duration,
    ) {
        self.jwks_max_stale
            .get_or_create(&IssuerLabels {
                issuer: issuer.to_owned(),
            })
            .set(i64::try_from(max_stale.as_secs()).unwrap_or(i64::MAX));
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
    decision_pairs: Arc<Mutex<DecisionPairs>>,
    legacy_session_sunset: Family<PolicyLabels, Gauge>,
    cache_hits: Counter,
    cache_misses: Counter,
    counters: Vec<OnceLock<Counter>>,
    seconds: AtomicHistogram,
    audited: Family<AuditLabels, Counter>,
    /// Audited requests that passed, and that would have been refused.
    audited_counters: [OnceLock<Counter>; 2],
}

impl crate::policy::DecisionMeters for PolicyMeters {
    fn record(&self, slot: usize, decision: &'static str, reason: &'static str, seconds: f64) {
        // Looked up once per slot (or per request past the slots): each series made is
        // remembered for `forget_policy`.
        let labels = || {
            self.decision_pairs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(PolicyLabels {
                    namespace: self.namespace.clone(),
                    policy: self.policy.clone(),
                })
                .or_default()
                .insert((decision, reason));
            DecisionLabels {
                namespace: self.namespace.clone(),
                policy: self.policy.clone(),
                decision: decision.to_owned(),
                reason: reason.to_owned(),
            }
        };
        match self.counters.get(slot) {
            Some(cell) => cell
                .get_or_init(|| self.decisions.get_or_create(&labels()).clone())
                .inc(),
            None => self.decisions.get_or_create(&labels()).inc(),
        };
        self.seconds.observe(seconds);
    }

    fn audited(&self, would_deny: bool) {
        let cell = &self.audited_counters[usize::from(would_deny)];
        cell.get_or_init(|| {
            self.audited
                .get_or_create(&AuditLabels {
                    namespace: self.namespace.clone(),
                    policy: self.policy.clone(),
                    would_deny: if would_deny { "true" } else { "false" },
                })
                .clone()
        })
        .inc();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Rollout, RolloutProgress, status_time};
    use crate::driver::rollouts::Tracked;
    use crate::policy::progression::PAUSED_BY_SPEC;

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    fn samples(metrics: &Metrics, name: &str) -> Vec<String> {
        metrics
            .encode()
            .lines()
            .filter(|line| line.starts_with(&format!("{name}{{")))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn a_held_stepped_rollout_reports_its_step_cause_and_rule_until_the_policy_goes() {
        let metrics = Metrics::default();
        let rollout: Rollout = serde_yaml::from_str(
            "{mode: Enforce, steps: [10, 50, 100], stepEvery: 1h, pauseAboveDenyRatio: {ratio: 0.05}}",
        )
        .unwrap();
        let now = at("2026-01-01T01:30:00Z");
        let progress = |held: Option<&str>| RolloutProgress {
            steps: vec![10.0, 50.0, 100.0],
            step: 1,
            since: status_time(at("2026-01-01T01:00:00Z")),
            held: held.map(str::to_owned),
        };
        let tracked = |held| Tracked {
            progress: Some(progress(held)),
            next: None,
            moved: false,
        };
        metrics.observe_rollout("shop", "pay", &rollout, &tracked(None), now);
        let labels = r#"{namespace="shop",policy="pay"}"#;
        assert_eq!(
            samples(&metrics, "authplane_rollout_enforced_percentage"),
            [format!(
                "authplane_rollout_enforced_percentage{labels} 50.0"
            )]
        );
        assert_eq!(
            samples(&metrics, "authplane_rollout_step"),
            [format!("authplane_rollout_step{labels} 2")]
        );
        assert_eq!(
            samples(&metrics, "authplane_rollout_next_step_timestamp_seconds"),
            [format!(
                "authplane_rollout_next_step_timestamp_seconds{labels} {}",
                at("2026-01-01T02:00:00Z").as_second()
            )]
        );

        // Held by the deny ratio: no next step, the cause says which hold.
        metrics.observe_rollout(
            "shop",
            "pay",
            &rollout,
            &tracked(Some("3 of 10 would be refused")),
            now,
        );
        let mut paused = samples(&metrics, "authplane_rollout_paused");
        paused.sort();
        assert_eq!(
            paused,
            [
                r#"authplane_rollout_paused{namespace="shop",policy="pay",cause="deny_ratio"} 1"#,
                r#"authplane_rollout_paused{namespace="shop",policy="pay",cause="spec"} 0"#,
            ]
        );
        assert!(samples(&metrics, "authplane_rollout_next_step_timestamp_seconds").is_empty());
        metrics.observe_rollout("shop", "pay", &rollout, &tracked(Some(PAUSED_BY_SPEC)), now);
        assert!(
            metrics.encode().contains(
                r#"authplane_rollout_paused{namespace="shop",policy="pay",cause="spec"} 1"#
            )
        );

        // A deleted policy's series go with it: no alert about what no longer exists.
        metrics.forget_policy("shop", "pay");
        for name in [
            "authplane_rollout_enforced_percentage",
            "authplane_rollout_step",
            "authplane_rollout_steps",
            "authplane_rollout_paused",
            "authplane_rollout_pause_above_deny_ratio",
        ] {
            assert!(samples(&metrics, name).is_empty(), "{name}");
        }
    }

    #[test]
    fn a_deleted_policys_decision_series_go_with_it() {
        use crate::policy::DecisionMeters;
        let metrics = Metrics::default();
        for policy in ["pay", "web"] {
            // Two slots: the third pair is counted past them.
            let meters = metrics.policy_meters("shop", policy, 2);
            meters.record(0, "allow", "", 0.001);
            meters.record(1, "deny", "missing_token", 0.001);
            meters.record(7, "would_deny", "expired", 0.001);
            meters.audited(true);
        }
        let of = |policy: &str, name: &str| {
            samples(&metrics, name)
                .into_iter()
                .filter(|line| line.contains(&format!("policy=\"{policy}\"")))
                .count()
        };
        assert_eq!(of("pay", "authplane_decisions_total"), 3);
        assert!(of("pay", "authplane_decision_duration_seconds_count") > 0);

        metrics.forget_policy("shop", "pay");
        for name in [
            "authplane_decisions_total",
            "authplane_audited_requests_total",
            "authplane_decision_duration_seconds_count",
        ] {
            assert_eq!(of("pay", name), 0, "{name}");
            assert!(of("web", name) > 0, "{name} of another policy stays");
        }
    }

    #[test]
    fn a_replica_that_stops_leading_drops_the_gauges_only_the_leader_updates() {
        let metrics = Metrics::default();
        let rollout: Rollout =
            serde_yaml::from_str("{mode: Enforce, steps: [10, 50], stepEvery: 1h, paused: true}")
                .unwrap();
        let tracked = Tracked {
            progress: Some(RolloutProgress {
                steps: vec![10.0, 50.0],
                step: 0,
                since: status_time(at("2026-01-01T00:00:00Z")),
                held: Some(PAUSED_BY_SPEC.to_owned()),
            }),
            next: None,
            moved: false,
        };
        metrics.observe_rollout(
            "shop",
            "pay",
            &rollout,
            &tracked,
            at("2026-01-01T00:10:00Z"),
        );
        metrics.key_failed("auth", "web");
        assert!(!samples(&metrics, "authplane_rollout_paused").is_empty());
        assert!(!samples(&metrics, "authplane_signing_key_ready").is_empty());

        metrics.forget_leader_state();
        for name in [
            "authplane_rollout_enforced_percentage",
            "authplane_rollout_step",
            "authplane_rollout_paused",
            "authplane_signing_key_ready",
        ] {
            assert!(samples(&metrics, name).is_empty(), "{name}");
        }
        assert_eq!(
            samples(&metrics, "authplane_signing_key_failures_total"),
            [r#"authplane_signing_key_failures_total{namespace="auth",name="web"} 1"#]
        );
    }

    #[test]
    fn a_rollout_outside_enforce_enforces_nobody_and_has_no_steps() {
        let metrics = Metrics::default();
        let rollout: Rollout = serde_yaml::from_str("{mode: Audit, percentage: 50}").unwrap();
        let tracked = Tracked {
            progress: None,
            next: None,
            moved: false,
        };
        metrics.observe_rollout(
            "shop",
            "pay",
            &rollout,
            &tracked,
            at("2026-01-01T00:00:00Z"),
        );
        assert_eq!(
            samples(&metrics, "authplane_rollout_enforced_percentage"),
            [r#"authplane_rollout_enforced_percentage{namespace="shop",policy="pay"} 0.0"#]
        );
        assert!(samples(&metrics, "authplane_rollout_step").is_empty());
        assert!(samples(&metrics, "authplane_rollout_paused").is_empty());
    }
}
