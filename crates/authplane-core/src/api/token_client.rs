//! The `TokenClient` custom resource: who may obtain tokens from an issuer's token
//! endpoint, for which audiences and claims, and how long its tokens live.
//!
//! It names a SigningKey of its own namespace only: signing is the power to mint any
//! token of that issuer, so only a tenant with rights in the key's namespace may grant it
//! (the README's multi-tenancy rules).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Duration;
use super::KeyRefresh;
use super::auth_policy::{URL_MESSAGE, URL_RULE};
use super::cel_rules::{NO_CONTROL_CHARACTERS, NO_CONTROL_CHARACTERS_MESSAGE};

/// The claims authplane sets itself: a client may never set or override them.
pub const REGISTERED_CLAIMS: [&str; 9] = [
    "iss", "sub", "aud", "exp", "iat", "nbf", "jti", "sid", "act",
];

/// Who may obtain tokens signed by one SigningKey, and what those tokens may say.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "authplane.io",
    version = "v1alpha1",
    kind = "TokenClient",
    namespaced,
    status = "TokenClientStatus",
    shortname = "tc",
    category = "authplane",
    derive = "PartialEq",
    doc = "A TokenClient lets trusted workloads obtain tokens from the token endpoint of a SigningKey of its namespace ({issuer}/token): which ServiceAccounts may exchange a user's identity for tokens, for which audiences, with which custom claims, and how long access and refresh tokens live. Browsers and apps refresh through it; a reused refresh token ends its session.",
    printcolumn = r#"{"name":"Key","type":"string","jsonPath":".spec.signingKeyRef.name"}"#,
    printcolumn = r#"{"name":"Audiences","type":"string","priority":1,"jsonPath":".spec.audiences"}"#,
    printcolumn = r#"{"name":"Access TTL","type":"string","jsonPath":".spec.accessTokenLifetime"}"#,
    printcolumn = r#"{"name":"Refresh TTL","type":"string","jsonPath":".spec.refreshTokens.absoluteLifetime"}"#,
    printcolumn = r#"{"name":"Delivery","type":"string","jsonPath":".spec.delivery"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    cel
)]
#[serde(rename_all = "camelCase")]
pub struct TokenClientSpec {
    /// The SigningKey whose Active key signs this client's access tokens, in the
    /// TokenClient's own namespace (there is no `namespace` field: a tenant can grant
    /// signing only with its own keys). Its issuer is the token endpoint's:
    /// `{issuer}/token`.
    pub signing_key_ref: TokenClientKeyRef,

    /// The workloads that may exchange a user's identity for tokens (RFC 8693), each a
    /// ServiceAccount that authenticates with its projected token (audience: the issuer
    /// URL). At most 32. Empty: nobody on a cluster may (dev mode uses a client secret).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub service_accounts: Vec<ServiceAccountRef>,

    /// The audiences (`aud`) a token of this client may carry: 1 to 16, each at most 256
    /// characters. A request names some of them (`audience` or `resource`); without one,
    /// the token carries the first.
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 256)))]
    #[x_kube(validation = Rule::new("self.all(a, self.exists_one(b, b == a))").message("must not repeat an audience"))]
    pub audiences: Vec<String>,

    /// Custom claims a workload may set on the tokens (at most 32 names, each at most
    /// 128 characters), copied to every access token of the login, refreshes included.
    /// The registered claims `iss`, `sub`, `aud`, `exp`, `iat`, `nbf`, `jti`, `sid` and
    /// `act` are authplane's and cannot be listed, nor `idp` (the issuer of the ID token
    /// a login exchanged, set by authplane only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 128)))]
    #[x_kube(validation = Rule::new("self.all(c, self.exists_one(d, d == c))").message("must not repeat a claim"))]
    #[x_kube(validation = Rule::new("self.all(c, !(c in ['iss', 'sub', 'aud', 'exp', 'iat', 'nbf', 'jti', 'sid', 'act', 'idp']))")
        .message("must not list a registered claim: authplane sets iss, sub, aud, exp, iat, nbf, jti, sid, act and idp itself"))]
    pub allowed_claims: Vec<String>,

    /// How long an access token lives. Default 15m; between 1s and 24h, and never above
    /// the SigningKey's `maxTokenLifetime` (the admission webhook refuses a longer one;
    /// should the key's limit drop later, tokens get the key's limit).
    #[serde(default = "defaults::access_token_lifetime")]
    #[x_kube(validation = Rule::new(duration_between!("1s", "24h"))
        .message("must be between 1s and 24h"))]
    pub access_token_lifetime: Duration,

    /// Refresh tokens: their lifetimes and the reuse grace.
    #[serde(default)]
    pub refresh_tokens: RefreshTokens,

    /// External OIDC issuers (Microsoft Entra ID, Google, Keycloak, ...) whose ID tokens
    /// a trusted workload may exchange for this client's tokens (RFC 8693
    /// `subject_token_type` `urn:ietf:params:oauth:token-type:id_token`). Their keys are
    /// fetched and checked exactly as an AuthPolicy's external issuers are, and count
    /// with the AuthPolicies' in the namespace's cap of external issuers
    /// (`--max-external-issuers-per-namespace`). At most 8, each issuer once. Empty: ID
    /// tokens are refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[x_kube(validation = Rule::new("self.all(a, self.exists_one(b, b.issuer == a.issuer))").message("must not name an issuer twice"))]
    pub id_token_issuers: Vec<IdTokenIssuer>,

    /// How tokens reach the client: `Body` (default: JSON, RFC 6749 §5.1) or `Cookie`
    /// (the refresh token as a `__Host-` cookie, `Secure; HttpOnly; SameSite=Strict`,
    /// for browser apps).
    #[serde(default)]
    pub delivery: Delivery,

    /// This client's own budgets, instead of the server's (`--token-rate`): its failed
    /// requests per client address, and the refreshes of each of its sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

mod defaults {
    use super::Duration;

    fn parse(text: &str) -> Duration {
        text.parse()
            .unwrap_or_else(|e| panic!("built-in default: {e}"))
    }

    pub fn access_token_lifetime() -> Duration {
        parse("15m")
    }

    pub fn absolute_lifetime() -> Duration {
        parse("168h")
    }

    pub fn idle_lifetime() -> Duration {
        parse("24h")
    }

    pub fn reuse_grace() -> Duration {
        parse("5s")
    }
}

/// An external OIDC issuer whose ID tokens are accepted as the user of a login.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IdTokenIssuer {
    /// The issuer, exactly as its ID tokens carry it in `iss`, such as
    /// `https://login.microsoftonline.com/<tenant-id>/v2.0`: https, or http to a
    /// loopback address.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new(URL_RULE).message(URL_MESSAGE))]
    #[x_kube(validation = Rule::new(NO_CONTROL_CHARACTERS).message(NO_CONTROL_CHARACTERS_MESSAGE))]
    pub issuer: String,
    /// The audiences an ID token must carry one of in `aud`: the application's client id
    /// at the issuer (Entra ID's application (client) id). 1 to 16, each at most 256
    /// characters.
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 256)))]
    pub audiences: Vec<String>,
    /// The issuer's JWKS. Default: the `jwks_uri` of
    /// `{issuer}/.well-known/openid-configuration`, whose `issuer` must equal `issuer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new(URL_RULE).message(URL_MESSAGE))]
    #[x_kube(validation = Rule::new(NO_CONTROL_CHARACTERS).message(NO_CONTROL_CHARACTERS_MESSAGE))]
    pub jwks_uri: Option<String>,
    /// How the issuer's keys are cached and refreshed, as for an AuthPolicy's issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<KeyRefresh>,
    /// Put before the ID token's `sub` to make the access token's `sub` (at most 64
    /// characters), such as `entra:`: so that two issuers' users with the same `sub`
    /// never become one user. Default: none (the access token's `idp` claim still names
    /// the issuer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new(NO_CONTROL_CHARACTERS).message(NO_CONTROL_CHARACTERS_MESSAGE))]
    pub subject_prefix: Option<String>,
}

/// A SigningKey of the TokenClient's namespace.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TokenClientKeyRef {
    /// Name of the SigningKey.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A ServiceAccount, `namespace/name`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountRef {
    /// Name of the ServiceAccount.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Its namespace; default: the TokenClient's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

/// Refresh tokens' lifetimes. Durations use Go syntax (`5s`, `30m`, `168h`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
// As in RotationSpec: each comparison applies only when both fields are valid on their
// own, so that a bad value is reported on its own field.
#[x_kube(validation = Rule::new(concat!(
    "!(", duration_in!("self.idleLifetime", "1m", "8760h"), " && ", duration_in!("self.absoluteLifetime", "1m", "8760h"),
    ") || duration(self.idleLifetime) <= duration(self.absoluteLifetime)"
)).message("idleLifetime must not be longer than absoluteLifetime").field_path(".idleLifetime"))]
#[x_kube(validation = Rule::new(concat!(
    "!(", duration_in!("self.reuseGrace", "0s", "60s"), " && ", duration_in!("self.idleLifetime", "1m", "8760h"),
    ") || duration(self.reuseGrace) < duration(self.idleLifetime)"
)).message("reuseGrace must be shorter than idleLifetime").field_path(".reuseGrace"))]
#[serde(rename_all = "camelCase")]
pub struct RefreshTokens {
    /// How long a login's refresh tokens work at most, from the login; rotation never
    /// extends it. Default 168h (7 days); between 1m and 8760h.
    #[serde(default = "defaults::absolute_lifetime")]
    #[x_kube(validation = Rule::new(duration_between!("1m", "8760h"))
        .message("must be between 1m and 8760h"))]
    pub absolute_lifetime: Duration,

    /// How long a refresh token works unused: each refresh starts it again. Default 24h;
    /// between 1m and 8760h, at most `absoluteLifetime`.
    #[serde(default = "defaults::idle_lifetime")]
    #[x_kube(validation = Rule::new(duration_between!("1m", "8760h"))
        .message("must be between 1m and 8760h"))]
    pub idle_lifetime: Duration,

    /// After a refresh, how long the refresh token just superseded still gets the same
    /// new pair again (a lost response, two tabs). After it, presenting that token is
    /// reuse: the login's session is revoked. Default 5s; between 0s (no grace) and 60s.
    #[serde(default = "defaults::reuse_grace")]
    #[x_kube(validation = Rule::new(duration_between!("0s", "60s"))
        .message("must be between 0s and 60s"))]
    pub reuse_grace: Duration,
}

impl Default for RefreshTokens {
    fn default() -> Self {
        Self {
            absolute_lifetime: defaults::absolute_lifetime(),
            idle_lifetime: defaults::idle_lifetime(),
            reuse_grace: defaults::reuse_grace(),
        }
    }
}

impl RefreshTokens {
    /// As the core's family rules take them.
    pub fn lifetimes(&self) -> crate::refresh::Lifetimes {
        crate::refresh::Lifetimes {
            absolute: self.absolute_lifetime.value(),
            idle: self.idle_lifetime.value(),
            grace: self.reuse_grace.value(),
        }
    }
}

/// How tokens reach the client.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Delivery {
    /// In the JSON body of the answer.
    #[default]
    Body,
    /// The refresh token as a `__Host-` cookie (browser apps); the access token in the
    /// body.
    Cookie,
}

/// A TokenClient's budgets (GCRA: `burst` at once, then refilled evenly at `perMinute`).
/// Each applies per client address and client (failed requests proven to be this
/// client's) and per session (refreshes); requests not proven to be any client's keep
/// the server's per-address budget.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Events a minute, refilled evenly. Default: the server's `--token-rate` (10);
    /// between 1 and 60000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 60000").message("must be between 1 and 60000"))]
    pub per_minute: Option<u32>,
    /// Events allowed at once, before the even pace applies. Default: `perMinute`;
    /// between 1 and 60000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 60000").message("must be between 1 and 60000"))]
    pub burst: Option<u32>,
}

/// Observed state: a report.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TokenClientStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The token endpoint: `{issuer}/token` of the SigningKey.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_endpoint: Option<String>,
    /// `Ready`: `True` (reason `Serving`) while the token endpoint issues for this client;
    /// `False` with reason `InvalidSpec` (the message names the fields),
    /// `SigningKeyNotFound`, `LifetimeAboveKeyLimit` (`accessTokenLifetime` is longer
    /// than the key's `maxTokenLifetime`: tokens get the key's limit) or
    /// `IdTokenIssuerUnavailable` (an `idTokenIssuers` entry has no usable keys: the
    /// message names it and the class of the failure; its ID tokens are refused, other
    /// logins are served).
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

impl TokenClientSpec {
    /// The SigningKey that signs, in `namespace` (the TokenClient's).
    pub fn signing_key_id(&self, namespace: &str) -> super::ObjectKey {
        super::ObjectKey {
            namespace: namespace.to_owned(),
            name: self.signing_key_ref.name.clone(),
        }
    }

    /// The ServiceAccounts allowed, `namespace/name`, namespaces defaulted to `namespace`.
    pub fn service_account_ids(&self, namespace: &str) -> Vec<super::ObjectKey> {
        self.service_accounts
            .iter()
            .map(|sa| super::ObjectKey {
                namespace: sa.namespace.clone().unwrap_or_else(|| namespace.to_owned()),
                name: sa.name.clone(),
            })
            .collect()
    }
}
