//! Custom resource types, one file per kind, and the checks every driver applies to them.

#[macro_use]
mod cel_rules;
mod auth_policy;
pub mod conditions;
pub mod crds;
mod duration;
mod revocation;
mod signing_key;
pub mod structural;
mod token_client;
mod validation;

pub use auth_policy::{
    AncestorStatus, AuthPolicy, AuthPolicySpec, AuthPolicyStatus, BucketBy, ClaimRequirement,
    DenyRatioPause, HeaderSource, IssuerRef, KeyRefresh, LegacySession, Mode, NotAPercentage,
    Rollout, RolloutAction, RolloutProgress, SigningKeyRef, TargetKind, TargetRef, TargetStatus,
    TokenReviewSpec, TokenSources,
};
pub use duration::{Duration, DurationError};
pub use revocation::{REASON_LABELS, Revocation, RevocationSpec, RevocationStatus, RevokedKeyRef};
pub use signing_key::{
    DEFAULT_MAX_TOKEN_LIFETIME, KeyStatus, REVOKE_KIDS_ANNOTATION, ROTATE_AT_ANNOTATION,
    RotationSpec, SigningKey, SigningKeySpec, SigningKeyStatus,
};
pub use token_client::{
    Delivery, IdTokenIssuer, REGISTERED_CLAIMS, RateLimit, RefreshTokens, ServiceAccountRef,
    TokenClient, TokenClientKeyRef, TokenClientSpec, TokenClientStatus,
};
pub use validation::{
    FieldError, IssuerError, SIGNER_SECRET_SUFFIX, Validate, from_value, is_dns_label,
    is_dns_subdomain, issuer_path, read_object,
};

use std::fmt;

/// `namespace/name` of an object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl ObjectKey {
    pub fn of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Self {
        Self {
            namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

/// A time as a status stores it: `Time` serializes whole seconds (RFC 3339), so a fraction
/// kept in memory would make every computed status differ from its stored copy and be
/// written again on every reconcile.
pub fn status_time(t: jiff::Timestamp) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        jiff::Timestamp::from_second(t.as_second()).unwrap_or(t),
    )
}

/// A status condition (`True` when `ok`).
pub fn condition(
    kind: &str,
    ok: bool,
    reason: &str,
    message: String,
    observed_generation: Option<i64>,
    now: jiff::Timestamp,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        type_: kind.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation,
        last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now),
    }
}

/// Keeps each condition's `lastTransitionTime` from `previous` while its status is the
/// same, as Kubernetes conventions ask; only a real transition moves it.
pub fn keep_transition_times(
    conditions: &mut [k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    previous: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) {
    for condition in conditions {
        if let Some(old) = previous
            .iter()
            .find(|old| old.type_ == condition.type_ && old.status == condition.status)
        {
            condition.last_transition_time = old.last_transition_time.clone();
        }
    }
}

pub const GROUP: &str = "authplane.io";
pub const API_VERSION: &str = "authplane.io/v1alpha1";
