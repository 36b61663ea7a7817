//! Fetching an OIDC provider's documents: discovery and the JWKS, over rustls, with
//! timeouts, a size bound and no redirects. Parsing the JWKS into verification keys.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde_json::Value;

use crate::keys::{Algorithm, PublicJwk};
use crate::policy::verify::VerifyKey;

/// Real JWKS are a few kilobytes; anything this large is not one.
const MAX_BODY_BYTES: usize = 512 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// For one whole request, body included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0} is not an https URL (plain http is accepted for loopback addresses only)")]
    Insecure(String),
    #[error("GET {url}: {message}")]
    Http { url: String, message: String },
    #[error("GET {url}: status {status}")]
    Status { url: String, status: u16 },
    #[error("GET {url}: the response is larger than {MAX_BODY_BYTES} bytes")]
    TooLarge { url: String },
    #[error("{url}: {message}")]
    Invalid { url: String, message: String },
}

/// Whether a URL may be fetched: https, or http to a loopback address (tests, dev mode).
pub fn is_allowed_url(url: &str) -> bool {
    if url.starts_with("https://") {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = match host.rsplit_once(':') {
        Some((h, port)) if !h.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    matches!(host, "127.0.0.1" | "localhost" | "[::1]")
}

/// A body and the `max-age` it may be cached for.
pub struct Fetched {
    pub body: Vec<u8>,
    pub max_age: Option<Duration>,
}

#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
}

impl Fetcher {
    pub fn new() -> Result<Self, FetchError> {
        // reqwest uses the process's rustls provider; make sure there is one (aws-lc).
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("authplane/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| FetchError::Http {
                url: String::new(),
                message: e.to_string(),
            })?;
        Ok(Self { client })
    }

    pub async fn get(&self, url: &str) -> Result<Fetched, FetchError> {
        if !is_allowed_url(url) {
            return Err(FetchError::Insecure(url.to_owned()));
        }
        let http = |e: reqwest::Error| FetchError::Http {
            url: url.to_owned(),
            message: e.to_string(),
        };
        let mut response = self
            .client
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(http)?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(FetchError::Status {
                url: url.to_owned(),
                status: response.status().as_u16(),
            });
        }
        let too_large = || FetchError::TooLarge {
            url: url.to_owned(),
        };
        if response
            .content_length()
            .is_some_and(|n| n > MAX_BODY_BYTES as u64)
        {
            return Err(too_large());
        }
        let max_age = response
            .headers()
            .get_all(reqwest::header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(max_age);
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(http)? {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Fetched { body, max_age })
    }

    /// The `jwks_uri` of an issuer's discovery document, which must name the same issuer.
    pub async fn discover(&self, issuer: &str) -> Result<String, FetchError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let fetched = self.get(&url).await?;
        let invalid = |message: String| FetchError::Invalid {
            url: url.clone(),
            message,
        };
        let document: Value = serde_json::from_slice(&fetched.body)
            .map_err(|e| invalid(format!("not a JSON discovery document: {e}")))?;
        let discovered = document.get("issuer").and_then(Value::as_str);
        if discovered != Some(issuer) {
            return Err(invalid(format!(
                "names issuer {discovered:?}, not the configured {issuer:?}"
            )));
        }
        let jwks_uri = document
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("has no jwks_uri".to_owned()))?;
        if !is_allowed_url(jwks_uri) {
            return Err(FetchError::Insecure(jwks_uri.to_owned()));
        }
        Ok(jwks_uri.to_owned())
    }
}

/// `max-age` of a `Cache-Control` value; `no-cache`/`no-store` count as zero.
fn max_age(value: &str) -> Option<Duration> {
    value.split(',').map(str::trim).find_map(|directive| {
        if directive.eq_ignore_ascii_case("no-cache") || directive.eq_ignore_ascii_case("no-store")
        {
            return Some(Duration::ZERO);
        }
        let (name, seconds) = directive.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("max-age")
            .then(|| seconds.trim().trim_matches('"').parse().ok())
            .flatten()
            .map(Duration::from_secs)
    })
}

/// The signing keys of a JWKS. Keys for encryption, symmetric keys, keys without `kid`
/// and keys of algorithms outside our allow-list are skipped; a set with no usable key
/// at all is an error, so that a broken response never replaces a good set.
pub fn parse_jwks(
    body: &[u8],
    issuer: &Arc<str>,
    url: &str,
) -> Result<HashMap<String, VerifyKey>, FetchError> {
    let invalid = |message: String| FetchError::Invalid {
        url: url.to_owned(),
        message,
    };
    let document: Value =
        serde_json::from_slice(body).map_err(|e| invalid(format!("not a JSON JWKS: {e}")))?;
    let entries = document
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("not a JWKS: no \"keys\" array".to_owned()))?;
    let mut keys = HashMap::new();
    let mut skipped = Vec::new();
    for entry in entries {
        let kid = entry.get("kid").and_then(Value::as_str);
        match (kid, signing_key(entry)) {
            (Some(kid), Ok((jwk, alg))) => match VerifyKey::new(issuer.clone(), &jwk, alg) {
                Ok(key) => {
                    keys.insert(kid.to_owned(), key);
                }
                Err(e) => skipped.push(format!("{kid}: {e}")),
            },
            (None, _) => skipped.push("a key without kid".to_owned()),
            (Some(kid), Err(e)) => skipped.push(format!("{kid}: {e}")),
        }
    }
    if !skipped.is_empty() {
        tracing::debug!(%url, "JWKS keys skipped: {}", skipped.join("; "));
    }
    if keys.is_empty() {
        return Err(invalid(format!(
            "no usable signing key ({} keys in the set)",
            entries.len()
        )));
    }
    Ok(keys)
}

/// A JWK's public key and the one algorithm it verifies. Without `alg` (Microsoft Entra
/// ID publishes none) an RSA key verifies RS256 only and an EC key its curve's ECDSA.
fn signing_key(entry: &Value) -> Result<(PublicJwk, Algorithm), SkippedKey> {
    let member = |name: &str| entry.get(name).and_then(Value::as_str);
    let bytes = |name: &'static str| {
        member(name)
            .and_then(|v| B64URL.decode(v.trim_end_matches('=')).ok())
            .ok_or(SkippedKey::Member(name))
    };
    if member("use").is_some_and(|u| u != "sig") {
        return Err(SkippedKey::NotForSigning);
    }
    let alg = match member("alg") {
        Some(name) => Some(
            serde_json::from_value::<Algorithm>(Value::String(name.to_owned()))
                .map_err(|_| SkippedKey::AlgorithmNotAllowed(name.to_owned()))?,
        ),
        None => None,
    };
    let (jwk, default) = match member("kty") {
        Some("RSA") => (
            PublicJwk::Rsa {
                n: bytes("n")?,
                e: bytes("e")?,
            },
            Algorithm::RS256,
        ),
        Some("EC") => {
            let (crv, alg) = match member("crv") {
                Some("P-256") => ("P-256", Algorithm::ES256),
                Some("P-384") => ("P-384", Algorithm::ES384),
                other => return Err(SkippedKey::Curve(other.map(str::to_owned))),
            };
            (
                PublicJwk::Ec {
                    crv,
                    x: bytes("x")?,
                    y: bytes("y")?,
                },
                alg,
            )
        }
        Some("OKP") if member("crv") == Some("Ed25519") => {
            (PublicJwk::Ed25519 { x: bytes("x")? }, Algorithm::EdDSA)
        }
        other => return Err(SkippedKey::KeyType(other.map(str::to_owned))),
    };
    let alg = alg.unwrap_or(default);
    let fits = match &jwk {
        PublicJwk::Rsa { .. } => alg.is_rsa(),
        PublicJwk::Ec { .. } | PublicJwk::Ed25519 { .. } => alg == default,
    };
    if !fits {
        return Err(SkippedKey::AlgorithmMismatch(alg));
    }
    Ok((jwk, alg))
}

/// Why a key of a fetched set is skipped (the others still serve).
#[derive(Debug, thiserror::Error, PartialEq)]
enum SkippedKey {
    #[error("not a signing key (use)")]
    NotForSigning,
    #[error("missing or invalid {0:?}")]
    Member(&'static str),
    #[error("algorithm {0:?} is not allowed")]
    AlgorithmNotAllowed(String),
    #[error("curve {0:?} is not supported")]
    Curve(Option<String>),
    #[error("key type {0:?} is not supported")]
    KeyType(Option<String>),
    #[error("algorithm {0} does not fit the key")]
    AlgorithmMismatch(Algorithm),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_or_loopback_http() {
        assert!(is_allowed_url("https://login.microsoftonline.com/t/v2.0"));
        assert!(is_allowed_url("http://127.0.0.1:8080/jwks"));
        assert!(is_allowed_url("http://localhost/jwks"));
        assert!(is_allowed_url("http://[::1]:9/x"));
        assert!(!is_allowed_url("http://example.com/jwks"));
        assert!(!is_allowed_url("http://127.0.0.1.evil.example/jwks"));
        assert!(!is_allowed_url("http://localhost@evil.example/jwks"));
        assert!(!is_allowed_url("ftp://127.0.0.1/jwks"));
    }

    #[test]
    fn cache_control_max_age() {
        assert_eq!(
            max_age("public, max-age=3600"),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(max_age("no-cache"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=abc"), None);
    }

    #[test]
    fn keys_outside_the_allow_list_are_skipped() {
        let issuer: Arc<str> = Arc::from("https://issuer.example");
        let body = br#"{"keys":[
            {"kty":"oct","kid":"hmac","k":"c2VjcmV0"},
            {"kty":"RSA","kid":"enc","use":"enc","n":"AQAB","e":"AQAB"},
            {"kty":"OKP","crv":"X25519","kid":"x","x":"AAAA"}
        ]}"#;
        let error = parse_jwks(body, &issuer, "u").err().map(|e| e.to_string());
        assert!(error.is_some_and(|e| e.contains("no usable signing key")));
        assert!(parse_jwks(b"<html>", &issuer, "u").is_err());
        assert!(parse_jwks(br#"{"keys":"x"}"#, &issuer, "u").is_err());
    }
}
