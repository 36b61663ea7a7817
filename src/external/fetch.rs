//! Fetching an OIDC provider's documents: discovery and the JWKS, over rustls, with
//! timeouts, a size bound, no redirects, and only to addresses that are allowed
//! ([`super::address`]). Parsing the JWKS into verification keys.
//!
//! A failure is described twice: in full for authplane's own log, and by its class alone
//! ([`FetchError::summary`]) for the policy's status, which the policy's owner reads: a
//! tenant naming an internal service must not learn its status codes or what it
//! answered, only that it is not a usable key set.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde_json::Value;

use super::FetchSettings;
use super::address::{AddressClass, DnsFailed, GuardedResolver, RefusedAddress};
use crate::keys::{Algorithm, PublicJwk};
use crate::policy::verify::VerifyKey;

/// Real JWKS are a few kilobytes; anything this large is not one.
const MAX_BODY_BYTES: usize = 512 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// For one whole request, body included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a connection or request failed, as far as the policy's owner is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unreachable {
    Dns,
    ConnectionRefused,
    Tls,
    TimedOut,
    /// Anything else on the way (reset, broken connection).
    Other,
}

impl Unreachable {
    fn as_str(self) -> &'static str {
        match self {
            Self::Dns => "unreachable: DNS lookup failed",
            Self::ConnectionRefused => "unreachable: connection refused",
            Self::Tls => "unreachable: TLS handshake failed (certificate not trusted, or not TLS)",
            Self::TimedOut => "unreachable: timed out",
            Self::Other => "unreachable: the connection failed",
        }
    }
}

/// What is wrong with a document that was fetched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unusable {
    NotJwks,
    NoUsableKey,
    NotDiscovery,
    OtherIssuer,
}

impl Unusable {
    fn as_str(self) -> &'static str {
        match self {
            Self::NotJwks => "not a JWKS",
            Self::NoUsableKey => "a JWKS without a usable signing key",
            Self::NotDiscovery => "not an OpenID discovery document (with a jwks_uri)",
            Self::OtherIssuer => {
                "the discovery document names an issuer that is not the configured one"
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(
        "{0} is not an https URL (plain http only to localhost, 127.0.0.1 or [::1], in dev mode or with --allow-loopback-issuers)"
    )]
    Insecure(String),
    #[error("GET {url}: {source}")]
    Refused { url: String, source: RefusedAddress },
    #[error("GET {url}: {message}")]
    Http {
        url: String,
        message: String,
        why: Unreachable,
    },
    #[error("GET {url}: status {status}")]
    Status { url: String, status: u16 },
    #[error("GET {url}: the response is larger than {MAX_BODY_BYTES} bytes")]
    TooLarge { url: String },
    #[error("{url}: {message}")]
    Invalid {
        url: String,
        message: String,
        what: Unusable,
    },
}

impl FetchError {
    /// What the policy's status says: the class of the failure, never what an internal
    /// service answered.
    pub fn summary(&self) -> String {
        match self {
            FetchError::Insecure(_) => {
                "refused: not an https URL (plain http only to loopback, in dev mode or with --allow-loopback-issuers)".to_owned()
            }
            FetchError::Refused { source, .. } => format!("refused: {source}"),
            FetchError::Http { why, .. } => why.as_str().to_owned(),
            FetchError::Status { status, .. } => match status / 100 {
                3 => "HTTP error: a redirect (redirects are not followed)".to_owned(),
                4 => "HTTP error: a 4xx client error".to_owned(),
                5 => "HTTP error: a 5xx server error".to_owned(),
                _ => "HTTP error: not 200".to_owned(),
            },
            FetchError::TooLarge { .. } => {
                format!("the answer is larger than {MAX_BODY_BYTES} bytes: not a JWKS")
            }
            FetchError::Invalid { what, .. } => what.as_str().to_owned(),
        }
    }

    fn from_reqwest(url: &str, error: reqwest::Error) -> Self {
        let mut why = if error.is_timeout() {
            Unreachable::TimedOut
        } else {
            Unreachable::Other
        };
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        while let Some(e) = cause {
            if let Some(refused) = e.downcast_ref::<RefusedAddress>() {
                return FetchError::Refused {
                    url: url.to_owned(),
                    source: RefusedAddress {
                        host: refused.host.clone(),
                        class: refused.class,
                    },
                };
            }
            if e.downcast_ref::<DnsFailed>().is_some() {
                why = Unreachable::Dns;
            }
            if e.downcast_ref::<rustls::Error>().is_some() {
                why = Unreachable::Tls;
            }
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if io.kind() == std::io::ErrorKind::ConnectionRefused {
                    why = Unreachable::ConnectionRefused;
                }
                // An io::Error's `source` skips the error it wraps.
                if io
                    .get_ref()
                    .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
                {
                    why = Unreachable::Tls;
                }
            }
            cause = e.source();
        }
        FetchError::Http {
            url: url.to_owned(),
            message: error.to_string(),
            why,
        }
    }
}

/// Whether `url` may be fetched at all: https, or plain http to a loopback name when
/// loopback is allowed. Where it leads is checked again at the connection.
pub fn check_url(url: &str, settings: &FetchSettings) -> Result<(), FetchError> {
    let insecure = || FetchError::Insecure(url.to_owned());
    let parsed = url::Url::parse(url).map_err(|_| insecure())?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(insecure());
    }
    let host = parsed.host().ok_or_else(insecure)?;
    let class = match &host {
        url::Host::Ipv4(v4) => AddressClass::of((*v4).into()),
        url::Host::Ipv6(v6) => AddressClass::of((*v6).into()),
        url::Host::Domain(name) if name.trim_end_matches('.').eq_ignore_ascii_case("localhost") => {
            AddressClass::Loopback
        }
        url::Host::Domain(_) => AddressClass::Other,
    };
    match parsed.scheme() {
        "https" => {}
        "http" if class == AddressClass::Loopback && settings.allow_loopback => {}
        _ => return Err(insecure()),
    }
    if !class.allowed(settings) {
        return Err(FetchError::Refused {
            url: url.to_owned(),
            source: RefusedAddress {
                host: host.to_string(),
                class,
            },
        });
    }
    Ok(())
}

/// A body and the `max-age` it may be cached for.
pub struct Fetched {
    pub body: Vec<u8>,
    pub max_age: Option<Duration>,
}

#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    settings: FetchSettings,
}

impl Fetcher {
    pub fn new(settings: FetchSettings) -> Result<Self, FetchError> {
        // reqwest uses the process's rustls provider; make sure there is one (aws-lc).
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(GuardedResolver::new(settings.clone()))
            .user_agent(concat!("authplane/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| FetchError::Http {
                url: String::new(),
                message: e.to_string(),
                why: Unreachable::Other,
            })?;
        Ok(Self { client, settings })
    }

    pub async fn get(&self, url: &str) -> Result<Fetched, FetchError> {
        check_url(url, &self.settings)?;
        let http = |e: reqwest::Error| FetchError::from_reqwest(url, e);
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
        let invalid = |what: Unusable, message: String| FetchError::Invalid {
            url: url.clone(),
            message,
            what,
        };
        let document: Value = serde_json::from_slice(&fetched.body).map_err(|e| {
            invalid(
                Unusable::NotDiscovery,
                format!("not a JSON discovery document: {e}"),
            )
        })?;
        let discovered = document.get("issuer").and_then(Value::as_str);
        if discovered != Some(issuer) {
            return Err(invalid(
                Unusable::OtherIssuer,
                format!("names issuer {discovered:?}, not the configured {issuer:?}"),
            ));
        }
        let jwks_uri = document
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(Unusable::NotDiscovery, "has no jwks_uri".to_owned()))?;
        check_url(jwks_uri, &self.settings)?;
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
    let invalid = |what: Unusable, message: String| FetchError::Invalid {
        url: url.to_owned(),
        message,
        what,
    };
    let document: Value = serde_json::from_slice(body)
        .map_err(|e| invalid(Unusable::NotJwks, format!("not a JSON JWKS: {e}")))?;
    let entries = document
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            invalid(
                Unusable::NotJwks,
                "not a JWKS: no \"keys\" array".to_owned(),
            )
        })?;
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
        return Err(invalid(
            Unusable::NoUsableKey,
            format!("no usable signing key ({} keys in the set)", entries.len()),
        ));
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

    fn allowed(url: &str, settings: &FetchSettings) -> bool {
        check_url(url, settings).is_ok()
    }

    #[test]
    fn https_or_with_loopback_allowed_loopback_http() {
        let dev = FetchSettings {
            allow_loopback: true,
            ..FetchSettings::default()
        };
        assert!(allowed("https://login.microsoftonline.com/t/v2.0", &dev));
        assert!(allowed("http://127.0.0.1:8080/jwks", &dev));
        assert!(allowed("http://localhost/jwks", &dev));
        assert!(allowed("http://[::1]:9/x", &dev));
        assert!(!allowed("http://example.com/jwks", &dev));
        assert!(!allowed("http://127.0.0.1.evil.example/jwks", &dev));
        assert!(!allowed("http://localhost@evil.example/jwks", &dev));
        assert!(!allowed("ftp://127.0.0.1/jwks", &dev));
    }

    #[test]
    fn on_a_cluster_loopback_and_metadata_addresses_are_refused() {
        let cluster = FetchSettings::default();
        for url in [
            "http://127.0.0.1:15000/config_dump",
            "http://localhost:15000/",
            "http://[::1]:9/x",
            "https://127.0.0.1/jwks",
            "https://[::ffff:127.0.0.1]/jwks",
            "https://169.254.169.254/latest/meta-data/",
            "https://[fe80::1]/x",
            "https://localhost./x",
        ] {
            assert!(!allowed(url, &cluster), "{url}");
        }
        assert!(allowed(
            "https://login.microsoftonline.com/t/v2.0",
            &cluster
        ));
        assert!(allowed("https://10.0.0.5/keycloak/certs", &cluster));
        let error = check_url("https://169.254.169.254/x", &cluster).unwrap_err();
        assert_eq!(
            error.summary(),
            "refused: 169.254.169.254 leads only to link-local (cloud metadata) addresses, which are refused (allowed with --allow-link-local-issuers)"
        );
        let metadata = FetchSettings {
            allow_link_local: true,
            ..FetchSettings::default()
        };
        assert!(allowed("https://169.254.169.254/x", &metadata));
    }

    /// The check that holds against DNS rebinding is the one at the connection: a name
    /// that passes the URL check is refused once it resolves to loopback.
    #[tokio::test]
    async fn the_connection_refuses_what_a_name_resolves_to() {
        use reqwest::dns::Resolve as _;
        let resolver = GuardedResolver {
            settings: FetchSettings::default(),
        };
        let refused = resolver
            .resolve("localhost".parse().unwrap())
            .await
            .err()
            .expect("localhost refused");
        assert!(refused.to_string().contains("loopback"), "{refused}");
        // Through the HTTP client (past the URL check), the failure is classed as refused.
        let fetcher = Fetcher::new(FetchSettings::default()).unwrap();
        let error = fetcher
            .client
            .get("http://localhost:9/")
            .send()
            .await
            .unwrap_err();
        let error = FetchError::from_reqwest("http://localhost:9/", error);
        assert!(matches!(error, FetchError::Refused { .. }), "{error}");
        assert!(
            error
                .summary()
                .starts_with("refused: localhost leads only to loopback")
        );
        // Allowed, it connects (and finds nothing listening on port 9).
        let dev = Fetcher::new(FetchSettings {
            allow_loopback: true,
            ..FetchSettings::default()
        })
        .unwrap();
        let error = dev.get("http://localhost:9/").await.err().unwrap();
        assert_eq!(
            error.summary(),
            "unreachable: connection refused",
            "{error}"
        );
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
