//! What an access token of a TokenClient may say, and the claims it carries.

use std::collections::BTreeSet;

use jiff::SignedDuration;
use serde_json::{Map, Value};

use super::{ErrorCode, OAuthError};
use crate::api::{ObjectKey, REGISTERED_CLAIMS, TokenClient};
use crate::keys::lifecycle::add;
use crate::refresh::{AccessGrant, Family, Lifetimes, Login};

/// The longest subject a client may assert (a Revocation's `subject` holds as much).
pub const MAX_SUBJECT_CHARS: usize = 256;
/// The largest custom-claims object, as sent: every access token of the login carries it.
pub const MAX_CLAIMS_BYTES: usize = 8 * 1024;
/// The deepest nesting of arrays and objects in the custom claims (the object itself is
/// level 1). The family that holds them is stored as JSON one level deeper, and the access
/// token's payload is too: claims nested near serde_json's limit (128) were accepted at
/// login, then their stored family did not read back (every refresh of it 503).
pub const MAX_CLAIMS_DEPTH: usize = 32;

/// One TokenClient compiled for the endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientRules {
    /// `namespace/name`: the `client_id`, and the owner of its families.
    pub client: String,
    pub issuer: String,
    pub audiences: Vec<String>,
    pub allowed_claims: BTreeSet<String>,
    /// `accessTokenLifetime`, capped by the key's `maxTokenLifetime`.
    pub access_lifetime: SignedDuration,
    pub lifetimes: Lifetimes,
}

impl ClientRules {
    pub fn new(client: &TokenClient, issuer: &str, key_max: SignedDuration) -> Self {
        let spec = &client.spec;
        Self {
            client: ObjectKey::of(&client.metadata).to_string(),
            issuer: issuer.to_owned(),
            audiences: spec.audiences.clone(),
            allowed_claims: spec.allowed_claims.iter().cloned().collect(),
            access_lifetime: spec.access_token_lifetime.value().min(key_max),
            lifetimes: spec.refresh_tokens.lifetimes(),
        }
    }

    /// The audiences of a token: those requested, each one of the client's; the first of
    /// the client's when none is requested.
    pub fn audiences(&self, requested: &[String]) -> Result<Vec<String>, OAuthError> {
        if requested.is_empty() {
            return Ok(self.audiences.iter().take(1).cloned().collect());
        }
        let mut granted: Vec<String> = Vec::new();
        for audience in requested {
            if !self.audiences.contains(audience) {
                return Err(OAuthError::new(
                    ErrorCode::InvalidTarget,
                    format!(
                        "audience {audience:?} is not one of TokenClient {}'s audiences",
                        self.client
                    ),
                ));
            }
            if !granted.contains(audience) {
                granted.push(audience.clone());
            }
        }
        Ok(granted)
    }

    /// A subject the trusted workload asserts.
    pub fn subject(&self, subject: &str) -> Result<String, OAuthError> {
        if subject.chars().count() > MAX_SUBJECT_CHARS {
            return Err(OAuthError::invalid_request(format!(
                "subject_token is longer than {MAX_SUBJECT_CHARS} characters"
            )));
        }
        if subject.chars().any(char::is_control) {
            return Err(OAuthError::invalid_request(
                "subject_token must not contain control characters",
            ));
        }
        Ok(subject.to_owned())
    }

    /// The custom claims a workload sets (`authplane_claims`, a JSON object): each one of
    /// the client's `allowedClaims`, never a registered claim.
    pub fn claims(&self, requested: Option<&str>) -> Result<Map<String, Value>, OAuthError> {
        let Some(text) = requested else {
            return Ok(Map::new());
        };
        if text.len() > MAX_CLAIMS_BYTES {
            return Err(OAuthError::invalid_request(format!(
                "authplane_claims is larger than {MAX_CLAIMS_BYTES} bytes"
            )));
        }
        let Ok(Value::Object(claims)) = serde_json::from_str::<Value>(text) else {
            return Err(OAuthError::invalid_request(
                "authplane_claims must be a JSON object of claims",
            ));
        };
        if claims.values().map(depth).max().unwrap_or(0) >= MAX_CLAIMS_DEPTH {
            return Err(OAuthError::invalid_request(format!(
                "authplane_claims nests arrays and objects deeper than {MAX_CLAIMS_DEPTH} levels"
            )));
        }
        for name in claims.keys() {
            if REGISTERED_CLAIMS.contains(&name.as_str()) || name == super::id_token::IDP_CLAIM {
                return Err(OAuthError::invalid_request(format!(
                    "claim {name:?} is set by authplane itself"
                )));
            }
            if !self.allowed_claims.contains(name) {
                return Err(OAuthError::invalid_request(format!(
                    "claim {name:?} is not in TokenClient {}'s allowedClaims",
                    self.client
                )));
            }
        }
        Ok(claims)
    }

    /// The family a login starts.
    pub fn login(
        &self,
        subject: String,
        audiences: Vec<String>,
        claims: Map<String, Value>,
    ) -> Login {
        Login {
            client: self.client.clone(),
            issuer: self.issuer.clone(),
            subject,
            audiences,
            claims,
            lifetimes: self.lifetimes,
        }
    }
}

/// The claims of a family's access token: the custom ones first, then the registered
/// ones over them (so a stored family can never override `iss`, `sub`, `sid` ...).
/// The same grant gives the same claims: a retry within the grace gets the same token.
pub fn access_claims(
    family: &Family,
    grant: &AccessGrant,
    lifetime: SignedDuration,
) -> Map<String, Value> {
    let mut claims = family.claims.clone();
    let aud = match family.audiences.as_slice() {
        [one] => Value::from(one.as_str()),
        many => Value::from(many.to_vec()),
    };
    let iat = grant.issued_at.as_second();
    let registered = [
        ("iss", Value::from(family.issuer.as_str())),
        ("sub", Value::from(family.subject.as_str())),
        ("aud", aud),
        ("iat", Value::from(iat)),
        (
            "exp",
            Value::from(add(grant.issued_at, lifetime).as_second()),
        ),
        ("jti", Value::from(grant.jti.as_str())),
        ("sid", Value::from(family.id.as_str())),
    ];
    for (name, value) in registered {
        claims.insert(name.to_owned(), value);
    }
    for name in REGISTERED_CLAIMS {
        if !matches!(name, "iss" | "sub" | "aud" | "iat" | "exp" | "jti" | "sid") {
            claims.remove(name);
        }
    }
    claims
}

/// How deeply `value` nests arrays and objects (a scalar: 0), without recursion.
fn depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut pending = vec![(value, 1)];
    while let Some((value, level)) = pending.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(members) => Box::new(members.values()),
            _ => continue,
        };
        deepest = deepest.max(level);
        pending.extend(children.map(|child| (child, level + 1)));
    }
    deepest
}
