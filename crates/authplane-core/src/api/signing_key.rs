//! The `SigningKey` custom resource: one issuer's JWT signing keys and their rotation.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::cel_rules::{NO_CONTROL_CHARACTERS, NO_CONTROL_CHARACTERS_MESSAGE};

use super::Duration;
use crate::keys::Algorithm;

/// Annotation that requests a manual rotation: an RFC 3339 instant. A new key is made
/// and pre-published at the first reconcile at or after it.
pub const ROTATE_AT_ANNOTATION: &str = "authplane.io/rotate-at";

/// Annotation that revokes keys: comma-separated kids, removed from the key set and the
/// JWKS at once. If the Active key is among them, a replacement signs at once.
pub const REVOKE_KIDS_ANNOTATION: &str = "authplane.io/revoke-kids";

/// Desired keys: algorithm, issuer, rotation schedule and Secret.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "authplane.io",
    version = "v1alpha1",
    kind = "SigningKey",
    namespaced,
    status = "SigningKeyStatus",
    shortname = "sk",
    category = "authplane",
    derive = "PartialEq",
    doc = "A SigningKey generates JWT signing keys for one issuer, keeps them in a Secret and rotates them on a schedule: the next key is published in the JWKS before it signs and a retired key stays published after it stops, so that no rotation breaks a valid token.",
    printcolumn = r#"{"name":"Algorithm","type":"string","jsonPath":".spec.algorithm"}"#,
    printcolumn = r#"{"name":"Active Kid","type":"string","jsonPath":".status.activeKid"}"#,
    printcolumn = r#"{"name":"Next Transition","type":"string","description":"When the next key is generated, activated or removed (a date column would print <invalid> for a future time)","jsonPath":".status.nextTransition"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    cel
)]
#[x_kube(validation = Rule::new(
    "!has(self.rsaBits) || self.algorithm.startsWith('RS') || self.algorithm.startsWith('PS')"
).message("rsaBits applies to RSA algorithms only (RS256, RS384, RS512, PS256, PS384, PS512)").field_path(".rsaBits"))]
#[serde(rename_all = "camelCase")]
pub struct SigningKeySpec {
    /// JWS algorithm of the keys: RS256 (default), RS384, RS512, PS256, PS384, PS512,
    /// ES256, ES384 or EdDSA. Changing it rotates into a key of the new algorithm, with the
    /// usual pre-publication.
    #[serde(default)]
    pub algorithm: Algorithm,

    /// RSA modulus size in bits: 2048 (default), 3072 or 4096. RSA algorithms only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self in [2048, 3072, 4096]").message("must be 2048, 3072 or 4096"))]
    pub rsa_bits: Option<u32>,

    /// Issuer URL published in OIDC discovery and expected as `iss` in tokens. Its path
    /// decides where discovery and JWKS are served. Default: the server's external URL
    /// followed by `/<namespace>/<name>`. On authplane's own URL the path must lie under
    /// `/<namespace>/` (unless the platform allows the namespace any path) and be no
    /// other SigningKey's; an issuer on another host is published elsewhere: authplane
    /// serves no discovery or JWKS for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new(
        "(self.startsWith('https://') || self.startsWith('http://')) && !self.contains('?') && !self.contains('#')"
    ).message("must be an http(s) URL without query or fragment"))]
    #[x_kube(validation = Rule::new(NO_CONTROL_CHARACTERS).message(NO_CONTROL_CHARACTERS_MESSAGE))]
    pub issuer: Option<String>,

    /// When keys rotate and how long they stay published.
    #[serde(default)]
    pub rotation: RotationSpec,

    /// Name of the Secret that holds the keys. Default: `<name>-keys`. Workloads that
    /// sign mount `<secretName>-active` instead, which holds the Active key alone. Must
    /// be no other SigningKey's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // 253, a Secret name's limit, less the signer Secret's `-active`.
    #[schemars(length(max = 246))]
    #[x_kube(validation = Rule::new(
        "self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')"
    ).message("must be a valid Secret name (lowercase letters, digits, '-' and '.')"))]
    pub secret_name: Option<String>,

    /// The longest lifetime of a token signed with these keys. `token mint` refuses a
    /// longer TTL, and a Revocation of this issuer lapses this long after the last token
    /// it matches was issued. Default 1h; at most 87600h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(duration_between!("1s", "87600h"))
        .message("must be between 1s and 87600h"))]
    pub max_token_lifetime: Option<Duration>,
}

/// The default of `spec.maxTokenLifetime`.
pub const DEFAULT_MAX_TOKEN_LIFETIME: jiff::SignedDuration = jiff::SignedDuration::from_hours(1);

impl SigningKeySpec {
    /// `maxTokenLifetime`, or its default.
    pub fn max_token_lifetime(&self) -> jiff::SignedDuration {
        self.max_token_lifetime
            .as_ref()
            .map_or(DEFAULT_MAX_TOKEN_LIFETIME, |d| d.value())
    }
}

/// Rotation schedule. Durations use Go syntax (`30s`, `15m`, `1h30m`, `720h`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
// Each comparison applies only when both fields are valid on their own, so that a bad
// `every` is reported on `every`, not on `prePublish`.
#[x_kube(validation = Rule::new(concat!(
    "!(", duration_in!("self.every", "1s", "87600h"), " && ", duration_in!("self.prePublish", "1s", "87600h"),
    ") || duration(self.prePublish) < duration(self.every)"
)).message("prePublish must be shorter than every").field_path(".prePublish"))]
#[x_kube(validation = Rule::new(concat!(
    "!(", duration_in!("self.retainFor", "1s", "87600h"), " && ", duration_in!("self.prePublish", "1s", "87600h"),
    ") || duration(self.retainFor) >= duration(self.prePublish)"
)).message("retainFor must be at least prePublish").field_path(".retainFor"))]
#[serde(rename_all = "camelCase")]
pub struct RotationSpec {
    /// How often a new key becomes the signing key. Default 720h (30 days).
    #[serde(default = "defaults::every")]
    #[x_kube(validation = Rule::new(duration_between!("1s", "87600h"))
        .message("must be between 1s and 87600h"))]
    pub every: Duration,

    /// How long the next key is published in the JWKS before it signs: verifiers that
    /// refresh their JWKS at least this often always know the signing key. Default 1h.
    #[serde(default = "defaults::pre_publish")]
    #[x_kube(validation = Rule::new(duration_between!("1s", "87600h"))
        .message("must be between 1s and 87600h"))]
    pub pre_publish: Duration,

    /// How long a retired key stays in the JWKS. Must cover the longest token lifetime
    /// (plus, for workloads that mount the Secret, its propagation delay). Default 24h.
    #[serde(default = "defaults::retain_for")]
    #[x_kube(validation = Rule::new(duration_between!("1s", "87600h"))
        .message("must be between 1s and 87600h"))]
    pub retain_for: Duration,
}

mod defaults {
    use super::Duration;

    fn parse(text: &str) -> Duration {
        text.parse()
            .unwrap_or_else(|e| panic!("built-in default: {e}"))
    }

    pub fn every() -> Duration {
        parse("720h")
    }

    pub fn pre_publish() -> Duration {
        parse("1h")
    }

    pub fn retain_for() -> Duration {
        parse("24h")
    }
}

impl Default for RotationSpec {
    fn default() -> Self {
        Self {
            every: defaults::every(),
            pre_publish: defaults::pre_publish(),
            retain_for: defaults::retain_for(),
        }
    }
}

/// Observed state, written by the operator. A report only: the Secret is the source of
/// truth.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SigningKeyStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: `True` (reason `KeysReady`) once an Active key signs and is published;
    /// `False` with reason `InvalidSpec` (the message names the fields),
    /// `SecretNotManaged` (the Secret exists and is not labelled
    /// `app.kubernetes.io/managed-by=authplane`: it is left alone), `SecretInUse` (the
    /// Secret or the signer Secret belongs to another SigningKey: it is left alone),
    /// `SecretUnreadable` (nothing is overwritten; the last good keys keep serving),
    /// `IssuerPathConflict` (another SigningKey claimed the issuer's path first: nothing
    /// is served there for this one, its keys still sign) or `IssuerNotAllowed` (the
    /// issuer's path is outside `/<namespace>/` on authplane's URL: nothing is served
    /// for it, its keys still sign).
    /// `SecretRecreated`: `True` with reason `SecretDeleted` for a day after the Secret
    /// was deleted by hand and new keys replaced the old ones.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The kid of the key that signs now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_kid: Option<String>,
    /// Every published key with its state and transition times.
    #[serde(default)]
    pub keys: Vec<KeyStatus>,
    /// The next lifecycle transition (generation, activation or removal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_transition: Option<Time>,
    /// The issuer published in discovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Where the JWKS is served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
}

/// One published key.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeyStatus {
    /// RFC 7638 thumbprint of the public key.
    pub kid: String,
    /// JWS algorithm of the key.
    pub algorithm: String,
    /// Next, Active or Retired.
    pub state: String,
    /// When the key was generated (and published).
    pub created: Time,
    /// When the key starts (or started) signing.
    pub activates_at: Time,
    /// When the key stops (or stopped) signing, once its successor is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retires_at: Option<Time>,
    /// When the key leaves the JWKS, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_at: Option<Time>,
}
