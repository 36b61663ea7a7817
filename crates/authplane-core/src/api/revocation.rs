//! The `Revocation` custom resource: tokens of one issuer that must stop working now,
//! before they expire. One object revokes one token (`tokenId`), every token of a
//! subject issued up to an instant (`subject` + `issuedBefore`), or every token of a
//! session (`sessionId`).
//!
//! Where the object lives is its scope, so that RBAC on `revocations` is the permission
//! model: in the namespace of the SigningKey it names, it applies to that issuer's tokens
//! under every AuthPolicy; anywhere else, only under the AuthPolicies of its own
//! namespace.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::cel_rules::{NO_CONTROL_CHARACTERS, NO_CONTROL_CHARACTERS_MESSAGE};

/// Tokens of one issuer that stop being accepted now.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "authplane.io",
    version = "v1alpha1",
    kind = "Revocation",
    namespaced,
    status = "RevocationStatus",
    shortname = "rev",
    category = "authplane",
    derive = "PartialEq",
    doc = "A Revocation makes tokens of one issuer stop working at once, before they expire: one token (tokenId, its jti), every token of a subject issued at or before an instant (subject, issuedBefore), or every token of a session (sessionId, its sid). In the namespace of the SigningKey it names it applies everywhere; elsewhere only to the AuthPolicies of its own namespace. It expires by itself once no token it could match can still be valid.",
    printcolumn = r#"{"name":"Key","type":"string","jsonPath":".spec.signingKeyRef.name"}"#,
    printcolumn = r#"{"name":"Issuer","type":"string","priority":1,"jsonPath":".spec.issuer"}"#,
    printcolumn = r#"{"name":"Subject","type":"string","jsonPath":".spec.subject"}"#,
    printcolumn = r#"{"name":"Session","type":"string","priority":1,"jsonPath":".spec.sessionId"}"#,
    printcolumn = r#"{"name":"Token","type":"string","priority":1,"jsonPath":".spec.tokenId"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".spec.reason"}"#,
    printcolumn = r#"{"name":"Expires","type":"string","description":"When the revocation lapses: no token it matches can still be valid then","jsonPath":".status.expiresAt"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    cel
)]
#[x_kube(validation = Rule::new("has(self.signingKeyRef) != has(self.issuer)")
    .message("set exactly one of signingKeyRef and issuer"))]
#[x_kube(validation = Rule::new(
    "(has(self.tokenId) ? 1 : 0) + (has(self.subject) ? 1 : 0) + (has(self.sessionId) ? 1 : 0) == 1"
).message("set exactly one of tokenId, subject and sessionId"))]
#[x_kube(validation = Rule::new("!has(self.issuedBefore) || has(self.subject)")
    .message("issuedBefore applies to a subject only").field_path(".issuedBefore"))]
#[serde(rename_all = "camelCase")]
pub struct RevocationSpec {
    /// The SigningKey whose tokens are revoked. In the SigningKey's own namespace the
    /// revocation applies under every AuthPolicy; elsewhere only under the AuthPolicies
    /// of the revocation's namespace. Set this or `issuer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key_ref: Option<RevokedKeyRef>,

    /// An issuer exactly as tokens carry it in `iss` (an external OIDC provider, such
    /// as Entra ID). Applies under the AuthPolicies of the revocation's namespace only.
    /// Set this or `signingKeyRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new(NO_CONTROL_CHARACTERS).message(NO_CONTROL_CHARACTERS_MESSAGE))]
    pub issuer: Option<String>,

    /// Revokes the one token whose `jti` claim is this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new(NO_CONTROL_CHARACTERS).message(NO_CONTROL_CHARACTERS_MESSAGE))]
    pub token_id: Option<String>,

    /// Revokes every token whose `sub` claim is this and whose `iat` is at or before
    /// `issuedBefore` (the "payment failed" or "password changed" case): tokens issued
    /// later work again. A token without `iat` is revoked too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new(NO_CONTROL_CHARACTERS).message(NO_CONTROL_CHARACTERS_MESSAGE))]
    pub subject: Option<String>,

    /// With `subject`: tokens issued at or before this instant (RFC 3339) are revoked.
    /// Default: the creation time of this object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub issued_before: Option<Time>,

    /// Revokes every token whose `sid` claim (session id) is this: the logout of one
    /// device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new(NO_CONTROL_CHARACTERS).message(NO_CONTROL_CHARACTERS_MESSAGE))]
    pub session_id: Option<String>,

    /// When the revocation lapses, instead of the computed instant (the issued-before
    /// instant plus the longest time any AuthPolicy accepts the issuer's tokens, plus the
    /// largest leeway). After it, the revocation no longer counts and the operator
    /// deletes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub expires_at: Option<Time>,

    /// Why (free text, at most 256 characters), shown in logs. Metrics label it with one
    /// of `logout`, `payment_failed`, `password_changed`, `compromised`,
    /// `account_disabled` when it is one of them, `other` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    #[x_kube(validation = Rule::new(NO_CONTROL_CHARACTERS).message(NO_CONTROL_CHARACTERS_MESSAGE))]
    pub reason: Option<String>,
}

/// The SigningKey whose tokens a Revocation names.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct RevokedKeyRef {
    /// Name of the SigningKey.
    #[schemars(length(max = 253))]
    pub name: String,
    /// Namespace of the SigningKey; default: the revocation's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub namespace: Option<String>,
}

/// Observed state: a report of what the serving replicas apply.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RevocationStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the revocation lapses and is deleted: `spec.expiresAt`, or the issued-before
    /// instant (default: creation) plus the longest time any AuthPolicy accepts the
    /// issuer's tokens (a SigningKey's `maxTokenLifetime`, or longer where a policy
    /// raises it), plus 5m of leeway. Absent while it does not lapse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// `Active`: `True` while the revocation counts, with reason `Applied`,
    /// `LifetimeUnknown` (its SigningKey does not exist: it does not lapse) or
    /// `NoLifetimeLimit` (an AuthPolicy accepts the external issuer's tokens of any
    /// lifetime: it does not lapse); `False` with reason `Expired` once it lapsed.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// The bounded label set of `reason` for metrics.
pub const REASON_LABELS: [&str; 5] = [
    "logout",
    "payment_failed",
    "password_changed",
    "compromised",
    "account_disabled",
];

impl RevocationSpec {
    /// `reason` as a metric label: a well-known reason, or `other`.
    pub fn reason_label(&self) -> &'static str {
        let reason = self.reason.as_deref().unwrap_or("");
        REASON_LABELS
            .iter()
            .find(|known| **known == reason)
            .copied()
            .unwrap_or("other")
    }

    /// The SigningKey named, its namespace defaulted to `namespace` (the revocation's).
    pub fn signing_key_id(&self, namespace: &str) -> Option<super::ObjectKey> {
        let reference = self.signing_key_ref.as_ref()?;
        Some(super::ObjectKey {
            namespace: reference
                .namespace
                .clone()
                .unwrap_or_else(|| namespace.to_owned()),
            name: reference.name.clone(),
        })
    }
}
