//! The `AuthPolicy` custom resource: which workloads get JWT enforcement, what a valid
//! token is, and how far the rollout has gone.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::cel_rules::{NO_CONTROL_CHARACTERS, NO_CONTROL_CHARACTERS_MESSAGE};

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
    printcolumn = r#"{"name":"Attached","type":"string","jsonPath":".status.targets[*].conditions[?(@.type==\"Accepted\")].reason"}"#,
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

    /// Who may issue accepted tokens: 1 to 16 entries.
    #[schemars(length(min = 1, max = 16))]
    pub issuers: Vec<IssuerRef>,

    /// Accepted audiences: a token must carry at least one of them in `aud`. Empty: `aud`
    /// is not checked. At most 32, each at most 256 characters.
    #[serde(default)]
    #[schemars(length(max = 32), inner(length(max = 256)))]
    #[x_kube(validation = Rule::new("self.all(a, size(a) > 0)").message("audiences must not be empty strings"))]
    pub audiences: Vec<String>,

    /// Clock skew tolerated on `exp` and `nbf`. Default 30s, at most 5m.
    #[serde(default = "defaults::leeway")]
    #[x_kube(validation = Rule::new(duration_between!("0s", "5m"))
        .message("must be between 0s and 5m"))]
    pub leeway: Duration,

    /// The longest lifetime a token of any issuer may have: a token whose `exp - iat`
    /// exceeds it is refused (`token_lifetime_too_long`), and so is a token without `iat`
    /// (`missing_iat`). It only shortens: tokens of a SigningKey are always held to the
    /// key's own `maxTokenLifetime` (see `issuers[].maxTokenLifetime` to accept longer
    /// ones). Unset: external issuers' tokens of any lifetime are accepted (Entra ID
    /// access tokens live 60 to 90 minutes). Between 1s and 87600h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(duration_between!("1s", "87600h"))
        .message("must be between 1s and 87600h"))]
    pub max_token_lifetime: Option<Duration>,

    /// Where the token is found: headers first, in order, then cookies. Default: the
    /// `Authorization` header with the `Bearer ` prefix.
    #[serde(default)]
    pub token_sources: TokenSources,

    /// Claims a token must carry; a valid token without them is refused with 403.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub required_claims: Vec<ClaimRequirement>,

    /// Claims copied into response headers for the workload, claim name to header name
    /// (for example `sub: X-Auth-Subject`). Arrays are joined with commas. At most 32.
    #[serde(default)]
    #[schemars(extend("maxProperties" = 32, "additionalProperties" = {"type": "string", "maxLength": 64}))]
    #[x_kube(validation = Rule::new("self.all(k, self[k].matches('^[A-Za-z0-9-]{1,64}$'))")
        .message("header names are letters, digits and '-', at most 64"))]
    pub forward_claims: BTreeMap<String, String>,

    /// How far enforcement has rolled out.
    #[serde(default)]
    pub rollout: Rollout,

    /// During a migration: requests outside the enforced share that carry this legacy
    /// session cookie pass without a valid token (in Enforce mode), until `until`. When
    /// set, requests outside the enforced share with neither a valid token nor the cookie
    /// are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legacy_session: Option<LegacySession>,

    /// How tokens map to Kubernetes users on the TokenReview endpoint.
    #[serde(default)]
    pub token_review: TokenReviewSpec,
}

/// A workload protected by the policy, or the Gateway API gateway or route in front of
/// it (a GEP-713 `LocalPolicyTargetReferenceWithSectionName`: always in the policy's
/// namespace).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new(TARGET_GROUP_RULE).message("group must be the kind's: gateway.networking.k8s.io for Gateway, HTTPRoute and GRPCRoute, networking.k8s.io for Ingress, apps for Deployment and StatefulSet, empty for Service").field_path(".group"))]
#[x_kube(validation = Rule::new("!has(self.sectionName) || self.kind in ['Gateway', 'HTTPRoute', 'GRPCRoute']")
    .message("sectionName names a listener of a Gateway or a rule of a route: only with Gateway, HTTPRoute and GRPCRoute").field_path(".sectionName"))]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    /// API group of the kind. Optional: it defaults to the kind's own
    /// (`gateway.networking.k8s.io` for Gateway, HTTPRoute and GRPCRoute), and may only
    /// be that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub group: Option<String>,
    /// Gateway, HTTPRoute or GRPCRoute (Gateway API: the operator wires the gateway that
    /// serves it), or Deployment, StatefulSet, Service or Ingress (reported only).
    pub kind: TargetKind,
    /// Name of the object, in the policy's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// A listener of the Gateway or a named rule of the route; the whole object when
    /// unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')")
        .message("a section name is lowercase letters, digits, '-' and '.' (an RFC 1123 subdomain)"))]
    pub section_name: Option<String>,
}

const TARGET_GROUP_RULE: &str = "!has(self.group) || self.group == (self.kind in ['Gateway', 'HTTPRoute', 'GRPCRoute'] ? 'gateway.networking.k8s.io' : self.kind == 'Ingress' ? 'networking.k8s.io' : self.kind == 'Service' ? '' : 'apps')";

impl TargetRef {
    /// A target of `kind` named `name`, with no section.
    pub fn new(kind: TargetKind, name: impl Into<String>) -> Self {
        Self {
            group: None,
            kind,
            name: name.into(),
            section_name: None,
        }
    }
}

#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub enum TargetKind {
    Deployment,
    StatefulSet,
    Service,
    Ingress,
    #[serde(rename = "HTTPRoute")]
    HttpRoute,
    Gateway,
    #[serde(rename = "GRPCRoute")]
    GrpcRoute,
}

impl TargetKind {
    /// The Gateway API group.
    pub const GATEWAY_API_GROUP: &str = "gateway.networking.k8s.io";

    /// The kind's API group.
    pub fn group(self) -> &'static str {
        match self {
            TargetKind::Deployment | TargetKind::StatefulSet => "apps",
            TargetKind::Service => "",
            TargetKind::Ingress => "networking.k8s.io",
            TargetKind::HttpRoute | TargetKind::Gateway | TargetKind::GrpcRoute => {
                Self::GATEWAY_API_GROUP
            }
        }
    }

    /// The kind as the apiserver spells it.
    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Deployment => "Deployment",
            TargetKind::StatefulSet => "StatefulSet",
            TargetKind::Service => "Service",
            TargetKind::Ingress => "Ingress",
            TargetKind::HttpRoute => "HTTPRoute",
            TargetKind::Gateway => "Gateway",
            TargetKind::GrpcRoute => "GRPCRoute",
        }
    }

    /// Whether the operator wires the gateway for it (a Gateway API kind), rather than
    /// only reporting whether it exists.
    pub fn is_gateway_api(self) -> bool {
        self.group() == Self::GATEWAY_API_GROUP
    }

    /// Whether it is a route (attached to Gateways through its `parentRefs`).
    pub fn is_route(self) -> bool {
        matches!(self, TargetKind::HttpRoute | TargetKind::GrpcRoute)
    }
}

/// One accepted issuer: a SigningKey of authplane, or an external OIDC provider.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.signingKeyRef) != has(self.issuer)")
    .message("set exactly one of signingKeyRef and issuer"))]
#[x_kube(validation = Rule::new("has(self.issuer) || (!has(self.jwksUri) && !has(self.refresh))")
    .message("jwksUri and refresh belong to an external issuer: set issuer too"))]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    /// A SigningKey of authplane: its issuer and keys, resolved in memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key_ref: Option<SigningKeyRef>,
    /// An external OIDC issuer, exactly as tokens carry it in `iss`, such as
    /// `https://login.microsoftonline.com/<tenant-id>/v2.0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new(URL_RULE).message(URL_MESSAGE))]
    #[x_kube(validation = Rule::new(NO_CONTROL_CHARACTERS).message(NO_CONTROL_CHARACTERS_MESSAGE))]
    pub issuer: Option<String>,
    /// The external issuer's JWKS. Default: the `jwks_uri` of
    /// `{issuer}/.well-known/openid-configuration`, whose `issuer` must equal `issuer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new(URL_RULE).message(URL_MESSAGE))]
    #[x_kube(validation = Rule::new(NO_CONTROL_CHARACTERS).message(NO_CONTROL_CHARACTERS_MESSAGE))]
    pub jwks_uri: Option<String>,
    /// How the external issuer's keys are cached and refreshed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<KeyRefresh>,
    /// The longest lifetime (`exp - iat`) of this issuer's tokens; tokens without `iat`
    /// are refused once a limit applies. For a SigningKey the default is the key's own
    /// `maxTokenLifetime`: setting a longer one here accepts its longer tokens under this
    /// policy (tokens minted with `--force`, or signed by hand), and its Revocations then
    /// live as long. For an external issuer, default: no limit but the policy's
    /// `maxTokenLifetime`. The policy's `maxTokenLifetime`, when shorter, still applies.
    /// Between 1s and 87600h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(duration_between!("1s", "87600h"))
        .message("must be between 1s and 87600h"))]
    pub max_token_lifetime: Option<Duration>,
}

impl IssuerRef {
    /// The SigningKey this entry names, its namespace defaulted to the policy's.
    pub fn signing_key_id(&self, policy_namespace: &str) -> Option<super::ObjectKey> {
        let reference = self.signing_key_ref.as_ref()?;
        Some(super::ObjectKey {
            namespace: reference
                .namespace
                .clone()
                .unwrap_or_else(|| policy_namespace.to_owned()),
            name: reference.name.clone(),
        })
    }
}

/// https, or http to a loopback address (local providers in development and tests).
pub(super) const URL_RULE: &str = "self.startsWith('https://') || self.matches('^http://(127\\\\.0\\\\.0\\\\.1|localhost|\\\\[::1\\\\])(:[0-9]+)?(/.*)?$')";
pub(super) const URL_MESSAGE: &str =
    "must be an https URL (http only to 127.0.0.1, localhost or [::1])";

/// Caching of an external issuer's keys.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new(concat!(
    "!(", is_duration!("self.minInterval"), " && ", is_duration!("self.maxInterval"),
    ") || duration(self.minInterval) <= duration(self.maxInterval)"
)).message("minInterval must not exceed maxInterval").field_path(".minInterval"))]
#[serde(rename_all = "camelCase")]
pub struct KeyRefresh {
    /// Floor of the refresh interval; also the least time between two refetches
    /// triggered by tokens with unknown kids. Default 1m. authplane never fetches one key
    /// set more often than every 30s (its `--external-refresh-floor`), whatever this says.
    #[serde(default = "defaults::min_refresh")]
    #[x_kube(validation = Rule::new(duration_between!("1s", "87600h")).message("must be between 1s and 87600h"))]
    pub min_interval: Duration,
    /// Ceiling of the refresh interval, whatever the provider's `Cache-Control` says.
    /// Default 1h.
    #[serde(default = "defaults::max_refresh")]
    pub max_interval: Duration,
    /// How long the last good key set keeps verifying tokens while refreshes fail.
    /// Default 24h.
    #[serde(default = "defaults::max_stale")]
    pub max_stale: Duration,
}

impl Default for KeyRefresh {
    fn default() -> Self {
        Self {
            min_interval: defaults::min_refresh(),
            max_interval: defaults::max_refresh(),
            max_stale: defaults::max_stale(),
        }
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct SigningKeyRef {
    /// Name of the SigningKey.
    #[schemars(length(max = 253))]
    pub name: String,
    /// Namespace of the SigningKey; default: the policy's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
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
    #[schemars(length(max = 8), inner(length(max = 256)))]
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
    #[schemars(length(max = 64))]
    pub name: String,
    /// Prefix before the token, such as `Bearer ` (matched case-insensitively).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
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
    #[schemars(length(max = 256))]
    pub claim: String,
    /// The claim is this string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub equals: Option<String>,
    /// The claim is an array holding this string, or a space-separated string (such as
    /// `scope`) holding it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub contains: Option<String>,
    /// The claim is one of these strings, or an array holding at least one of them. At
    /// most 64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), inner(length(max = 1024)))]
    pub one_of: Option<Vec<String>>,
}

/// Rollout of enforcement.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.steps) || size(self.steps) == 0 || has(self.stepEvery)")
    .message("steps need stepEvery"))]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// Disabled: every request passes, nothing is checked. Audit: every request passes; the
    /// ones that would be refused are marked and counted. Enforce: the enforced share of
    /// users is refused without a valid token; the rest is audited. Default Audit.
    #[serde(default)]
    pub mode: Mode,
    /// Share of users under enforcement in Enforce mode, 0 to 100 in steps of 0.001.
    /// Sticky: raising it only adds users. With `steps`, a ceiling on them: lowering it
    /// rolls back at once. Default 100.
    #[serde(default = "defaults::percentage")]
    #[x_kube(validation = Rule::new("self >= 0.0 && self <= 100.0").message("must be between 0 and 100"))]
    pub percentage: f64,
    /// Automatic progression in Enforce mode: the enforced share starts at the first
    /// step and moves to the next one every `stepEvery`, such as `[10, 50, 100]`.
    /// Strictly increasing, each between 0 and 100.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.all(s, s >= 0.0 && s <= 100.0)").message("steps must be between 0 and 100"))]
    pub steps: Vec<f64>,
    /// Time on each step, such as `1h`. The progression is recorded in status (in dev
    /// mode, in the state folder), so restarts do not reset it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(duration_between!("1s", "87600h")).message("must be between 1s and 87600h"))]
    pub step_every: Option<Duration>,
    /// Hold the progression while too many audited requests would be refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_above_deny_ratio: Option<DenyRatioPause>,
    /// Hold the progression (`authplane rollout pause`). Resuming gives the current step
    /// a full `stepEvery` again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// What identifies a user for bucketing. Default: the `sub` claim.
    #[serde(default)]
    pub bucket_by: BucketBy,
    /// Salt of the bucketing hash. Default `<namespace>/<name>` of the policy, so
    /// recreating a policy keeps every user in their bucket. Change it to reshuffle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub salt: Option<String>,
}

impl Default for Rollout {
    fn default() -> Self {
        Self {
            mode: Mode::default(),
            percentage: defaults::percentage(),
            steps: Vec::new(),
            step_every: None,
            pause_above_deny_ratio: None,
            paused: false,
            bucket_by: BucketBy::default(),
            salt: None,
        }
    }
}

/// Holds a stepped rollout while the share of would-deny decisions among audited
/// requests (those outside enforcement) over the last `window` is above `ratio`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DenyRatioPause {
    /// Such as 0.05 for 5%.
    #[x_kube(validation = Rule::new("self >= 0.0 && self <= 1.0").message("must be between 0 and 1"))]
    pub ratio: f64,
    /// The sliding window the ratio is measured over. Default 5m.
    #[serde(default = "defaults::deny_window")]
    #[x_kube(validation = Rule::new(duration_between!("10s", "87600h")).message("must be between 10s and 87600h"))]
    pub window: Duration,
    /// Fewer audited requests in the window say nothing: no hold. Default 100.
    #[serde(default = "defaults::min_requests")]
    pub min_requests: u32,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Not `Off`: YAML 1.1 (kubectl, Helm) reads an unquoted `Off` as the boolean false.
    Disabled,
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
    #[schemars(length(max = 256))]
    pub claim: Option<String>,
    /// A request header, such as `X-User-Id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub header: Option<String>,
    /// A cookie, such as `session_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
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
    #[schemars(length(max = 256))]
    pub cookie: String,
    /// The end of the migration (RFC 3339): from this instant on the cookie no longer
    /// passes, on every replica, with no restart. Until then, passes carry `Deprecation`
    /// and `Sunset` headers with this time, and from 7 days before it the
    /// `LegacySessionsAccepted` condition says `SunsetSoon`. Unset: no end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub until: Option<Time>,
}

/// Kubernetes user mapping for TokenReview. The defaults are those of the apiserver's
/// own OIDC authenticator: usernames carry their issuer, and no token names a `system:`
/// user or group.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TokenReviewSpec {
    /// Claim that becomes the username. Default `sub`. With `email`, a token whose
    /// `email_verified` is present and not `true` is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub username_claim: Option<String>,
    /// Prefix of usernames. Unset: the token's issuer and `#` (`https://auth.example/web#alice`),
    /// except for the `email` claim, which is unique across issuers; so a token's user is
    /// never another authenticator's. `-` or an empty string: no prefix (warned about at
    /// admission).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub username_prefix: Option<String>,
    /// Claim holding the groups (a string or an array of strings). Default `groups`; an
    /// empty string reads no groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub groups_claim: Option<String>,
    /// Prefix of group names, such as `authplane:`. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub groups_prefix: Option<String>,
    /// Accept usernames and groups starting with `system:` (Kubernetes' own users and
    /// groups, `system:masters` among them). Default false: such a token is refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_system_names: bool,
}

impl TokenReviewSpec {
    /// The claim that becomes the username.
    pub fn username_claim(&self) -> &str {
        self.username_claim.as_deref().unwrap_or("sub")
    }

    /// The claim holding the groups; `None` when none is read.
    pub fn groups_claim(&self) -> Option<&str> {
        match self.groups_claim.as_deref() {
            None => Some("groups"),
            Some("") => None,
            Some(claim) => Some(claim),
        }
    }

    /// Whether usernames are the bare claim value (`-` or an empty prefix).
    pub fn unprefixed_usernames(&self) -> bool {
        matches!(self.username_prefix.as_deref(), Some("" | "-"))
    }

    /// The username prefix for a token of issuer `iss`.
    pub fn username_prefix(&self, iss: &str) -> String {
        match self.username_prefix.as_deref() {
            Some("-") => String::new(),
            Some(prefix) => prefix.to_owned(),
            None if self.username_claim() == "email" => String::new(),
            None => format!("{iss}#"),
        }
    }
}

/// Observed state, written by the operator.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuthPolicyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`: `True` (reason `Valid`) or `False` (reason `Invalid`, the message names
    /// the fields).
    /// `Ready`: `True` (reason `IssuersResolved`) when every issuer has keys; `False` with
    /// reason `SigningKeyNotFound` or `IssuerUnavailable` (requests under enforcement that
    /// need those keys are refused).
    /// `KeysFresh`, only with external issuers: `True` (reason `Refreshed`) or `False` with
    /// reason `FirstFetchPending` or `RefreshFailing` (the last good keys serve until they
    /// expire).
    /// `LegacySessionsAccepted`, only with `legacySession`: `True` while its cookie passes
    /// (reason `NoSunset` without `until`, `SunsetScheduled`, or `SunsetSoon` from 7 days
    /// before it) and `False` from `until` on (reason `SunsetPassed`).
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Share of users under enforcement now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_percentage: Option<f64>,
    /// When a stepped rollout moves to its next step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_step_at: Option<Time>,
    /// Whether a stepped rollout is held, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_reason: Option<String>,
    /// The recorded progression of a stepped rollout: every replica derives the enforced
    /// share from it, and restarts continue from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutProgress>,
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

/// Where a stepped rollout is.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutProgress {
    /// The steps this progression follows; when `spec.rollout.steps` changes, it starts
    /// over.
    pub steps: Vec<f64>,
    /// Index of the current step.
    pub step: u32,
    /// When the current step began.
    pub since: Time,
    /// Why the progression is held, while it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TargetStatus {
    /// Set for Gateway API kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub kind: TargetKind,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    /// Whether the object exists; absent where nobody can tell (dev mode, or a kind
    /// the operator cannot list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub found: Option<bool>,
    /// Gateway API targets only: the Gateways the target is served by (the Gateway
    /// itself, or a route's parents; GEP-713's ancestors), the controller of each, and
    /// whether the target is attached through it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub ancestors: Vec<AncestorStatus>,
    /// Gateway API targets only: `Accepted`, summing up the ancestors': `True` (reason
    /// `Accepted`) only when the target is attached through every one of them;
    /// otherwise `False` with the reason of the first ancestor that is not, and a message
    /// naming it. Reasons as for an ancestor; `TargetNotFound` also when the target, or
    /// the listener or rule its `sectionName` names, does not exist, or a route has no
    /// parent Gateway; `Disabled` while `rollout.mode` is `Disabled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub conditions: Vec<Condition>,
}

/// A Gateway that serves a target (GEP-713's `PolicyAncestorStatus`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AncestorStatus {
    #[schemars(length(max = 63))]
    pub namespace: String,
    #[schemars(length(max = 253))]
    pub name: String,
    /// Its GatewayClass's `spec.controllerName`; absent while unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub controller_name: Option<String>,
    /// `Accepted`: `True` (reason `Accepted`: the configuration of the implementation
    /// serving this Gateway was written, and the message names it) or `False` with
    /// reason `TargetNotFound` (this Gateway does not exist, or the target or its
    /// section does not), `Conflicted` (another policy attaches external auth to the
    /// target first: the older wins), `Invalid` (authplane writes nothing for this
    /// Gateway's controller, or its implementation is not enabled, cannot take the
    /// target, or refused what was written: its message says what to do) or `Disabled`
    /// (`rollout.mode` is `Disabled`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub conditions: Vec<Condition>,
}

/// Refused by `authplane rollout set`.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{0} is not a percentage: 0 to 100, at most three decimals")]
pub struct NotAPercentage(pub f64);

/// A change to a rollout, as `authplane rollout` applies it (a JSON merge patch).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RolloutAction {
    Pause,
    Resume,
    /// Set the enforced percentage (in Enforce mode), replacing the steps.
    Set(f64),
}

impl RolloutAction {
    pub fn patch(self) -> Result<serde_json::Value, NotAPercentage> {
        let rollout = match self {
            RolloutAction::Pause => serde_json::json!({"paused": true}),
            // null removes the field (RFC 7386).
            RolloutAction::Resume => serde_json::json!({"paused": null}),
            RolloutAction::Set(p) => {
                if !(0.0..=100.0).contains(&p) || !super::validation::has_at_most_three_decimals(p)
                {
                    return Err(NotAPercentage(p));
                }
                serde_json::json!({"percentage": p, "steps": null, "stepEvery": null, "paused": null})
            }
        };
        Ok(serde_json::json!({"spec": {"rollout": rollout}}))
    }
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

    fn parse(s: &str) -> Duration {
        s.parse()
            .unwrap_or_else(|e| panic!("built-in default {s}: {e}"))
    }

    pub fn min_refresh() -> Duration {
        parse("1m")
    }

    pub fn max_refresh() -> Duration {
        parse("1h")
    }

    pub fn max_stale() -> Duration {
        parse("24h")
    }

    pub fn deny_window() -> Duration {
        parse("5m")
    }

    pub fn min_requests() -> u32 {
        100
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Status written before `since` and `nextStepAt` were `Time`: RFC 3339 strings with
    /// a fraction (jiff's `to_string`). They still read, and round trips stay stable.
    #[test]
    fn rollout_times_written_as_strings_still_read() {
        let stored = json!({
            "nextStepAt": "2026-01-01T02:00:00.5Z",
            "rollout": {"steps": [10.0, 50.0], "step": 1, "since": "2026-01-01T01:00:00.123456789Z"},
        });
        let status: AuthPolicyStatus = serde_json::from_value(stored).unwrap();
        let since = status.rollout.as_ref().unwrap().since.0;
        assert_eq!(since.to_string(), "2026-01-01T01:00:00.123456789Z");
        assert_eq!(
            status.next_step_at.as_ref().unwrap().0.to_string(),
            "2026-01-01T02:00:00.5Z"
        );
        let written = serde_json::to_value(&status).unwrap();
        assert_eq!(written["rollout"]["since"], "2026-01-01T01:00:00Z");
        assert_eq!(written["nextStepAt"], "2026-01-01T02:00:00Z");
    }

    /// A status computed in memory equals what the apiserver gives back, or the
    /// controller would write it again on every reconcile.
    #[test]
    fn status_times_survive_a_round_trip_unchanged() {
        let now: jiff::Timestamp = "2026-01-01T01:00:00.987Z".parse().unwrap();
        let status = AuthPolicyStatus {
            next_step_at: Some(crate::api::status_time(now)),
            rollout: Some(RolloutProgress {
                steps: vec![10.0, 100.0],
                step: 0,
                since: crate::api::status_time(now),
                held: None,
            }),
            ..AuthPolicyStatus::default()
        };
        let stored: AuthPolicyStatus =
            serde_json::from_value(serde_json::to_value(&status).unwrap()).unwrap();
        assert_eq!(stored, status);
    }

    #[test]
    fn rollout_commands_are_merge_patches_of_the_rollout() {
        assert_eq!(
            RolloutAction::Pause.patch().unwrap(),
            json!({"spec": {"rollout": {"paused": true}}})
        );
        assert_eq!(
            RolloutAction::Resume.patch().unwrap(),
            json!({"spec": {"rollout": {"paused": null}}})
        );
        assert_eq!(
            RolloutAction::Set(10.0).patch().unwrap(),
            json!({"spec": {"rollout": {"percentage": 10.0, "steps": null, "stepEvery": null, "paused": null}}})
        );
        for bad in [-1.0, 100.5, 12.3456, f64::NAN] {
            assert!(RolloutAction::Set(bad).patch().is_err(), "{bad}");
        }
        // Three decimals in binary floating point are not exact.
        for good in [1.005, 33.333, 0.001, 99.999] {
            assert!(RolloutAction::Set(good).patch().is_ok(), "{good}");
        }
    }
}
