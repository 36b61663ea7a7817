//! `client_secret_basic` (RFC 6749 §2.3.1): a client's id and secret in `Authorization:
//! Basic`, each form-urlencoded before base64. They join the form as `client_id` and
//! `client_secret`, so the core's rules decide as for `client_secret_post`.

use axum::http::{HeaderMap, header};

use crate::token_endpoint::{ErrorCode, OAuthError, Params};

/// `client_secret_basic` (RFC 6749 §2.3.1): `Authorization: Basic` of the
/// form-urlencoded client id and secret. `None` without such a header.
pub fn credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, OAuthError> {
    use base64::Engine as _;
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let invalid = || {
        OAuthError::new(
            ErrorCode::InvalidClient,
            "the Authorization header is not Basic base64(client_id:client_secret)",
        )
    };
    let encoded = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Basic "))
        .ok_or_else(invalid)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(invalid)?;
    let (id, secret) = decoded.split_once(':').ok_or_else(invalid)?;
    let decode = |part: &str| {
        url::form_urlencoded::parse(format!("x={part}").as_bytes())
            .next()
            .map(|(_, value)| value.into_owned())
            .filter(|value| !value.contains('\u{FFFD}'))
    };
    match (decode(id), decode(secret)) {
        (Some(id), Some(secret)) if !id.is_empty() && !secret.is_empty() => Ok(Some((id, secret))),
        _ => Err(invalid()),
    }
}

/// The Basic credentials as the form's `client_id` and `client_secret`: one client
/// authentication only (§2.3), and a `client_id` in the form must be the same.
pub fn merge(params: &mut Params, (id, secret): (String, String)) -> Result<(), OAuthError> {
    let invalid = |description: &str| OAuthError::new(ErrorCode::InvalidClient, description);
    if ["client_secret", "client_assertion", "client_assertion_type"]
        .iter()
        .any(|name| params.contains_key(*name))
    {
        return Err(invalid(
            "use one client authentication: the Authorization header or the form, not both",
        ));
    }
    if params.get("client_id").is_some_and(|named| *named != id) {
        return Err(invalid(
            "client_id in the form is not the one in the Authorization header",
        ));
    }
    params.insert("client_id".into(), id);
    params.insert("client_secret".into(), secret);
    Ok(())
}
