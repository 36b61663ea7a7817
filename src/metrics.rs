//! Prometheus metrics. Labels carry resource names and states only: never key material.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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
    /// `manifest` (a refused manifest file or document) or `keystore` (unreadable key
    /// material).
    pub source: String,
}

pub struct Metrics {
    registry: Registry,
    /// Published keys per SigningKey and state (Next, Active, Retired).
    pub keys: Family<KeyStateLabels, Gauge>,
    /// Times a new key became the signing key.
    pub rotations: Family<ResourceLabels, Counter>,
    /// Inputs refused while reloading.
    pub reload_errors: Family<SourceLabels, Counter>,
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
        Self {
            registry,
            keys,
            rotations,
            reload_errors,
        }
    }
}

impl Metrics {
    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn reload_error(&self, source: &str) {
        self.reload_errors
            .get_or_create(&SourceLabels {
                source: source.to_owned(),
            })
            .inc();
    }
}
