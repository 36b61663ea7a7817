//! Prometheus metrics. Labels carry resource names and states only: never key material.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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
    pub source: String,
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
pub struct AdmissionLabels {
    /// `SigningKey`, `AuthPolicy`, another kind the webhook was sent, or empty when the
    /// review did not parse.
    pub kind: String,
    /// `CREATE`, `UPDATE`, ...; empty when the review did not parse.
    pub operation: String,
    /// `allowed`, `warned` (allowed with warnings), `denied`, `skipped` (not ours to
    /// judge), `malformed` (answered 400).
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: String,
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
    pub decision_seconds: Family<PolicyLabels, Histogram>,
    /// Operator reconciles, and failures by kind.
    pub reconciles: Counter,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_seconds: Histogram,
    /// 1 while this replica holds the lease (and writes).
    pub leader: Gauge,
    /// Admission reviews answered.
    pub admission_reviews: Family<AdmissionLabels, Counter>,
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
        let decision_seconds = Family::<PolicyLabels, Histogram>::new_with_constructor(
            decision_histogram as fn() -> Histogram,
        );
        registry.register(
            "decision_duration_seconds",
            "Time to decide one request",
            decision_seconds.clone(),
        );
        let reconciles = Counter::default();
        registry.register("reconciles", "SigningKey reconciles", reconciles.clone());
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
        let admission_reviews = Family::<AdmissionLabels, Counter>::default();
        registry.register(
            "admission_reviews",
            "Admission reviews answered, by kind, operation and result",
            admission_reviews.clone(),
        );
        Self {
            registry,
            keys,
            rotations,
            reload_errors,
            decisions,
            decision_seconds,
            reconciles,
            reconcile_errors,
            reconcile_seconds,
            leader,
            admission_reviews,
        }
    }
}

/// 25 µs to about 100 ms.
fn decision_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_025, 2.0, 13))
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
        use crate::keys::lifecycle::{KeyEvent, KeyState};
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
        let activations = outcome
            .events
            .iter()
            .filter(|e| matches!(e, KeyEvent::Activated { .. }))
            .count();
        if activations > 0 {
            self.rotations
                .get_or_create(&ResourceLabels {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                })
                .inc_by(activations as u64);
        }
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

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn admission(&self, kind: &str, operation: &str, result: &str) {
        self.admission_reviews
            .get_or_create(&AdmissionLabels {
                kind: kind.to_owned(),
                operation: operation.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }

    pub fn reload_error(&self, source: &str) {
        self.reload_errors
            .get_or_create(&SourceLabels {
                source: source.to_owned(),
            })
            .inc();
    }
}
