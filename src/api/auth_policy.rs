//! The `AuthPolicy` custom resource: which workloads get JWT enforcement, what a valid
//! token is, and how far the rollout has gone.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Duration;

/// What a valid token is for one set of workloads, and how far enforcement has rolled out.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "authplane.io",
    version = "v1alpha1",
    kind = "AuthPolicy",
    namespaced,
    status = "AuthPolicyStatus",
    shortname = "ap",
    category = "authplane",
    derive = "PartialEq",
    doc = "An AuthPolicy says which workloads get JWT enforcement, what a valid token is (issuers, audiences, required claims, where the token is found) and how far the rollout is: Audit first, then Enforce for a sticky share of users, reversible in seconds.",
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.rollout.mode"}"#,
    printcolumn = r#"{"name":"Percentage","type":"number","jsonPath":".spec.rollout.percentage"}"#,
    printcolumn = r#"{"name":"Effective","type":"number","jsonPath":".status.effectivePercentage"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    cel
)]
#[serde(rename_all = "camelCase")]
pub struct AuthPolicySpec {
    /// The workloads this policy protects. Reported in status (found or missing); the
    /// gateway in front of them is pointed at this policy's forward-auth URL.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub target_refs: Vec<TargetRef>,

    /// Who may issue accepted tokens.
    #[x_kube(validation = Rule::new("size(self) >= 1 && size(self) <= 16").message("between 1 and 16 issuers"))]
    pub issuers: Vec<IssuerRef>,

    /// Accepted audiences: a token must carry at least one of them in `aud`. Empty: `aud`
    /// is not checked.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self.all(a, size(a) > 0)").message("audiences must not be empty strings"))]
    pub audiences: Vec<String>,

    /// Clock skew tolerated on `exp` and `nbf`. Default 30s, at most 5m.
    #[serde(default = "defaults::leeway")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('0s') && duration(self) <= duration('5m')")
        .message("must be between 0s and 5m"))]
    pub leeway: Duration,

    /// Where the token is found: headers first, in order, then cookies. Default: the
    /// `Authorization` header with the `Bearer ` prefix.
    #[serde(default)]
    pub token_sources: TokenSources,

    /// Claims a token must carry; a valid token without them is refused with 403.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub required_claims: Vec<ClaimRequirement>,

    /// Claims copied into response headers for the workload, claim name to header name
    /// (for example `sub: X-Auth-Subject`). Arrays are joined with commas.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self.all(k, self[k].matches('^[A-Za-z0-9-]{1,64}$'))")
        .message("header names are letters, digits and '-', at most 64"))]
    pub forward_claims: BTreeMap<String, String>,

    /// How far enforcement has rolled out.
    #[serde(default)]
    pub rollout: Rollout,

    /// During a migration: requests outside the enforced share that carry this legacy
    /// session cookie pass without a token. When set, requests outside the enforced share
    /// with neither a valid token nor the cookie are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legacy_session: Option<LegacySession>,

    /// How tokens map to Kubernetes users on the TokenReview endpoint.
    #[serde(default)]
    pub token_review: TokenReviewSpec,
}

/// A workload protected by the policy.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    /// Deployment, StatefulSet, Service, Ingress or HTTPRoute (Gateway API).
    pub kind: TargetKind,
    /// Name of the object, in the policy's namespace.
    pub name: String,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetKind {
    Deployment,
    StatefulSet,
    Service,
    Ingress,
    #[serde(rename = "HTTPRoute")]
    HttpRoute,
}

/// One accepted issuer.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    /// A SigningKey of authplane: its issuer and keys, resolved in memory.
    pub signing_key_ref: SigningKeyRef,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct SigningKeyRef {
    /// Name of the SigningKey.
    pub name: String,
    /// Namespace of the SigningKey; default: the policy's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Where tokens are looked for.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TokenSources {
    /// Request headers, tried in order.
    #[serde(default)]
    #[schemars(length(max = 8))]
    pub headers: Vec<HeaderSource>,
    /// Cookie names (HttpOnly cookie deployments), tried after the headers.
    #[serde(default)]
    #[schemars(length(max = 8))]
    pub cookies: Vec<String>,
}

impl Default for TokenSources {
    fn default() -> Self {
        Self {
            headers: vec![HeaderSource {
                name: "Authorization".into(),
                prefix: Some("Bearer ".into()),
            }],
            cookies: Vec::new(),
        }
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HeaderSource {
    /// Header name, such as `Authorization`.
    pub name: String,
    /// Prefix before the token, such as `Bearer ` (matched case-insensitively).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// A claim a token must carry. Exactly one of `equals`, `contains` and `oneOf`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("[has(self.equals), has(self.contains), has(self.oneOf)].filter(x, x).size() == 1")
    .message("set exactly one of equals, contains and oneOf"))]
#[serde(rename_all = "camelCase")]
pub struct ClaimRequirement {
    /// Claim name; a dotted path reaches into objects (`realm_access.roles`) when no
    /// top-level claim has that exact name.
    pub claim: String,
    /// The claim is this string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<String>,
    /// The claim is an array holding this string, or a space-separated string (such as
    /// `scope`) holding it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<String>,
    /// The claim is one of these strings, or an array holding at least one of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<String>>,
}

/// Rollout of enforcement.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// Off: every request passes, nothing is checked. Audit: every request passes; the
    /// ones that would be refused are marked and counted. Enforce: the enforced share of
    /// users is refused without a valid token; the rest is audited. Default Audit.
    #[serde(default)]
    pub mode: Mode,
    /// Share of users under enforcement in Enforce mode, 0 to 100 in steps of 0.001.
    /// Sticky: raising it only adds users. Default 100.
    #[serde(default = "defaults::percentage")]
    #[x_kube(validation = Rule::new("self >= 0.0 && self <= 100.0").message("must be between 0 and 100"))]
    pub percentage: f64,
    /// What identifies a user for bucketing. Default: the `sub` claim.
    #[serde(default)]
    pub bucket_by: BucketBy,
    /// Salt of the bucketing hash. Default `<namespace>/<name>` of the policy, so
    /// recreating a policy keeps every user in their bucket. Change it to reshuffle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
}

impl Default for Rollout {
    fn default() -> Self {
        Self {
            mode: Mode::default(),
            percentage: defaults::percentage(),
            bucket_by: BucketBy::default(),
            salt: None,
        }
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    Off,
    #[default]
    Audit,
    Enforce,
}

/// The bucketing key: exactly one of `claim`, `header` and `cookie`. When a request has
/// no such value it is outside the enforced share (audited), unless the percentage is
/// 100.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("[has(self.claim), has(self.header), has(self.cookie)].filter(x, x).size() == 1")
    .message("set exactly one of claim, header and cookie"))]
#[serde(rename_all = "camelCase")]
pub struct BucketBy {
    /// A token claim, such as `sub` (read from the token even when it does not verify, so
    /// an enforced user with an expired token stays enforced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
    /// A request header, such as `X-User-Id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// A cookie, such as `session_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
}

impl Default for BucketBy {
    fn default() -> Self {
        Self {
            claim: Some("sub".into()),
            header: None,
            cookie: None,
        }
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LegacySession {
    /// Name of the legacy session cookie.
    pub cookie: String,
}

/// Kubernetes user mapping for TokenReview.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TokenReviewSpec {
    /// Claim that becomes the username. Default `sub`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_claim: Option<String>,
    /// Prefix of usernames, such as `authplane:`, to keep them apart from other
    /// authenticators' users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_prefix: Option<String>,
    /// Claim holding the groups (a string or an array of strings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups_claim: Option<String>,
    /// Prefix of group names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups_prefix: Option<String>,
}

/// Observed state, written by the operator.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuthPolicyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted` (the spec is valid) and `Ready` (every issuer resolved).
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Share of users under enforcement now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_percentage: Option<f64>,
    /// Each target and whether it exists.
    #[serde(default)]
    pub targets: Vec<TargetStatus>,
    /// URL to point the gateway's forward-auth at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_auth_url: Option<String>,
    /// URL of the TokenReview webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_review_url: Option<String>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TargetStatus {
    pub kind: TargetKind,
    pub name: String,
    /// Whether the object exists; absent where nobody can tell (dev mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub found: Option<bool>,
}

mod defaults {
    use super::Duration;

    pub fn leeway() -> Duration {
        "30s"
            .parse()
            .unwrap_or_else(|e| panic!("built-in default: {e}"))
    }

    pub fn percentage() -> f64 {
        100.0
    }
}
