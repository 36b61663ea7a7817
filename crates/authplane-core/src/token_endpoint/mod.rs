//! The token endpoint's rules as data (`POST {issuer}/token`): reading a request (RFC 6749
//! §3.2, form-encoded, each parameter at most once), the errors it answers (§5.2), and
//! what an access token of a TokenClient may say (its audiences, its custom claims, its
//! lifetime under the key's limit). The handler (runtime) authenticates the client, runs
//! the grant against the family store and signs; everything it decides comes from here.

mod claims;
pub mod id_token;
mod request;
mod revoked;
pub mod secret;
#[cfg(test)]
mod tests;

pub use claims::{
    ClientRules, MAX_CLAIMS_BYTES, MAX_CLAIMS_DEPTH, MAX_SUBJECT_CHARS, access_claims,
};
pub use request::{
    ClientAuth, Grant, MAX_BODY_BYTES, Params, TokenRequest, parse_form, parse_request,
};
pub use revoked::family_revoked;

/// RFC 8693's grant type.
pub const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// RFC 6749 §6.
pub const GRANT_REFRESH_TOKEN: &str = "refresh_token";
/// RFC 7523 §2.2: a JWT (here a projected ServiceAccount token) as client authentication.
pub const CLIENT_ASSERTION_JWT: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// RFC 8693 §3: what the endpoint issues.
pub const TOKEN_TYPE_ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";
/// RFC 8693 §3: an ID token of an external issuer as the subject.
pub const TOKEN_TYPE_ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
/// authplane's own token type: the subject as the trusted workload asserts it (after it
/// checked the user's password): `subject_token` is the subject itself.
pub const TOKEN_TYPE_SUBJECT: &str = "urn:authplane:params:oauth:token-type:subject";

/// RFC 6749 §5.2 and RFC 8693 §2.2.2 error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    UnauthorizedClient,
    UnsupportedGrantType,
    InvalidTarget,
    /// RFC 7009 §2.2.1: a token of a type `/revoke` does not revoke here.
    UnsupportedTokenType,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidClient => "invalid_client",
            ErrorCode::InvalidGrant => "invalid_grant",
            ErrorCode::UnauthorizedClient => "unauthorized_client",
            ErrorCode::UnsupportedGrantType => "unsupported_grant_type",
            ErrorCode::InvalidTarget => "invalid_target",
            ErrorCode::UnsupportedTokenType => "unsupported_token_type",
        }
    }

    /// The HTTP status: 401 for a client that did not authenticate (§5.2), 400 otherwise.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::InvalidClient => 401,
            _ => 400,
        }
    }
}

/// An OAuth error answer. The description is for a person and never repeats a token,
/// secret or assertion a client sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {description}", code.as_str())]
pub struct OAuthError {
    pub code: ErrorCode,
    pub description: String,
}

impl OAuthError {
    pub fn new(code: ErrorCode, description: impl Into<String>) -> Self {
        Self {
            code,
            description: description.into(),
        }
    }

    pub fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, description)
    }

    /// The JSON body of the answer (RFC 6749 §5.2).
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": self.code.as_str(),
            "error_description": self.description,
        })
    }
}
