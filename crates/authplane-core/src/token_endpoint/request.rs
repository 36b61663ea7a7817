//! Reading a token request: the form, then the grant and the client's credentials.

use std::collections::BTreeMap;

use super::{
    CLIENT_ASSERTION_JWT, ErrorCode, GRANT_REFRESH_TOKEN, GRANT_TOKEN_EXCHANGE, OAuthError,
    TOKEN_TYPE_ACCESS,
};

/// The largest request body read: an assertion (a projected ServiceAccount token, about
/// 1 KiB), an ID token (a few KiB) and claims fit many times over.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// More parameters than any grant has: the rest is refused rather than parsed.
const MAX_PARAMS: usize = 32;

/// The form's parameters, each present once and non-empty.
pub type Params = BTreeMap<String, String>;

/// Reads `application/x-www-form-urlencoded`. A parameter given twice is refused (RFC
/// 6749 §3.2: "Request and response parameters MUST NOT be included more than once"), so
/// that no layer in front can be made to read another value than this one; an empty one
/// counts as absent (§3.1); bytes that are not UTF-8 once decoded are refused.
pub fn parse_form(body: &[u8]) -> Result<Params, OAuthError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(OAuthError::invalid_request(format!(
            "the request body is larger than {MAX_BODY_BYTES} bytes"
        )));
    }
    let mut params = Params::new();
    let mut seen = 0usize;
    for (name, value) in form_urlencoded::parse(body) {
        seen += 1;
        if seen > MAX_PARAMS {
            return Err(OAuthError::invalid_request(format!(
                "more than {MAX_PARAMS} parameters"
            )));
        }
        if name.contains('\u{FFFD}') || value.contains('\u{FFFD}') {
            return Err(OAuthError::invalid_request(
                "a parameter is not UTF-8 once percent-decoded",
            ));
        }
        if params.contains_key(&*name) {
            return Err(OAuthError::invalid_request(format!(
                "parameter {name:?} is given more than once"
            )));
        }
        // Recorded even when empty, so that a repetition of an empty one is refused too;
        // dropped below.
        params.insert(name.into_owned(), value.into_owned());
    }
    params.retain(|_, value| !value.is_empty());
    Ok(params)
}

/// How the client authenticates.
#[derive(Clone, PartialEq, Eq)]
pub enum ClientAuth {
    /// A public client (a browser or app refreshing): only its id.
    Public { client_id: String },
    /// `client_secret_post` (dev mode's trusted workloads).
    Secret { client_id: String, secret: String },
    /// `private_key_jwt`-style RFC 7523 assertion: a projected ServiceAccount token.
    Assertion {
        client_id: Option<String>,
        assertion: String,
    },
}

// Never print a secret or an assertion.
impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientAuth::Public { client_id } => write!(f, "Public({client_id:?})"),
            ClientAuth::Secret { client_id, .. } => write!(f, "Secret({client_id:?}, ..)"),
            ClientAuth::Assertion { client_id, .. } => write!(f, "Assertion({client_id:?}, ..)"),
        }
    }
}

impl ClientAuth {
    /// The `client_id` the request names, if any (an assertion may name it by its `sub`).
    pub fn client_id(&self) -> Option<&str> {
        match self {
            ClientAuth::Public { client_id } | ClientAuth::Secret { client_id, .. } => {
                Some(client_id)
            }
            ClientAuth::Assertion { client_id, .. } => client_id.as_deref(),
        }
    }
}

/// What the client asks for.
#[derive(Clone, PartialEq, Eq)]
pub enum Grant {
    /// RFC 8693: a login. `subject_token` is checked by its type by the handler.
    Exchange {
        subject_token: String,
        subject_token_type: String,
        /// `audience` and `resource`, as named (RFC 8693 §2.1 allows several of each).
        audiences: Vec<String>,
        /// Custom claims as a JSON object (`authplane_claims`), checked against the
        /// client's `allowedClaims` later.
        claims: Option<String>,
    },
    /// RFC 6749 §6.
    Refresh { refresh_token: String },
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Grant::Exchange {
                subject_token_type,
                audiences,
                ..
            } => write!(f, "Exchange({subject_token_type:?}, {audiences:?}, ..)"),
            Grant::Refresh { .. } => f.write_str("Refresh(..)"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRequest {
    pub grant: Grant,
    pub client: ClientAuth,
}

/// Reads the grant and the client's credentials from the form; every missing or
/// contradictory parameter is named.
pub fn parse_request(params: &Params) -> Result<TokenRequest, OAuthError> {
    let get = |name: &str| params.get(name).cloned();
    let required = |name: &str| {
        get(name).ok_or_else(|| OAuthError::invalid_request(format!("parameter {name} is missing")))
    };
    let grant_type = required("grant_type")?;
    let grant = match grant_type.as_str() {
        GRANT_TOKEN_EXCHANGE => {
            if let Some(requested) = get("requested_token_type")
                && requested != TOKEN_TYPE_ACCESS
            {
                return Err(OAuthError::invalid_request(format!(
                    "requested_token_type {requested:?} is not issued here: only {TOKEN_TYPE_ACCESS}"
                )));
            }
            if params.contains_key("actor_token") {
                return Err(OAuthError::invalid_request(
                    "actor_token is not supported: the client's own credentials say who acts",
                ));
            }
            // RFC 8693 allows audience and resource to repeat; RFC 6749 forbids any
            // parameter to, and so do we: several audiences are one value, space-separated.
            let audiences = ["audience", "resource"]
                .iter()
                .filter_map(|name| params.get(*name))
                .flat_map(|value| value.split(' ').filter(|a| !a.is_empty()))
                .map(str::to_owned)
                .collect();
            Grant::Exchange {
                subject_token: required("subject_token")?,
                subject_token_type: required("subject_token_type")?,
                audiences,
                claims: get("authplane_claims"),
            }
        }
        GRANT_REFRESH_TOKEN => {
            if params.contains_key("scope") {
                return Err(OAuthError::invalid_request(
                    "scope cannot change on refresh: a refresh gives the login's audiences and claims",
                ));
            }
            Grant::Refresh {
                refresh_token: required("refresh_token")?,
            }
        }
        other => {
            return Err(OAuthError::new(
                ErrorCode::UnsupportedGrantType,
                format!(
                    "grant_type {other:?} is not supported: use {GRANT_TOKEN_EXCHANGE} or {GRANT_REFRESH_TOKEN}"
                ),
            ));
        }
    };
    Ok(TokenRequest {
        grant,
        client: client_auth(params)?,
    })
}

fn client_auth(params: &Params) -> Result<ClientAuth, OAuthError> {
    let client_id = params.get("client_id").cloned();
    let secret = params.get("client_secret").cloned();
    let assertion_type = params.get("client_assertion_type");
    let assertion = params.get("client_assertion").cloned();
    let invalid_client =
        |description: String| OAuthError::new(ErrorCode::InvalidClient, description);
    if secret.is_some() && (assertion_type.is_some() || assertion.is_some()) {
        return Err(invalid_client(
            "use one client authentication: client_secret or client_assertion, not both".into(),
        ));
    }
    if let Some(kind) = assertion_type {
        if kind != CLIENT_ASSERTION_JWT {
            return Err(invalid_client(format!(
                "client_assertion_type {kind:?} is not supported: use {CLIENT_ASSERTION_JWT}"
            )));
        }
        let assertion =
            assertion.ok_or_else(|| invalid_client("client_assertion is missing".into()))?;
        return Ok(ClientAuth::Assertion {
            client_id,
            assertion,
        });
    }
    if assertion.is_some() {
        return Err(invalid_client("client_assertion_type is missing".into()));
    }
    let client_id = client_id.ok_or_else(|| invalid_client("client_id is missing".into()))?;
    Ok(match secret {
        Some(secret) => ClientAuth::Secret { client_id, secret },
        None => ClientAuth::Public { client_id },
    })
}
