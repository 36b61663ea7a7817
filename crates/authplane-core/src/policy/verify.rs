//! Token verification. Checks the signature with the key's own algorithm only (no `none`,
//! no HMAC, no algorithm confusion), ignores `jku`, `x5u` and embedded `jwk` (keys come
//! from our own sets, never from the token), refuses any `crit` extension, bounds the
//! token size, and checks the time and identity claims itself, against the clock it is
//! given.
//!
//! The token is split and each part decoded once; signatures are checked with public keys
//! parsed when the key set was built, never per request.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use aws_lc_rs::signature::{self, ParsedPublicKey, RsaPublicKeyComponents};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::Rejection;
use super::remote::{ExternalKeys, RemoteIssuer};
use crate::keys::{Algorithm, PublicJwk};

/// Larger tokens are refused before any parsing: real tokens are a few hundred bytes to a
/// few kilobytes; headers much larger than this are an attack or a mistake.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

pub type Claims = Map<String, Value>;

/// A public key ready to verify signatures of one algorithm, for one issuer.
pub struct VerifyKey {
    alg: Algorithm,
    key: ParsedPublicKey,
    issuer: Arc<str>,
}

impl VerifyKey {
    pub fn new(issuer: Arc<str>, jwk: &PublicJwk, alg: Algorithm) -> Result<Self, String> {
        let rsa = |params| match jwk {
            PublicJwk::Rsa { n, e } => RsaPublicKeyComponents { n, e }
                .to_parsed_public_key(params)
                .map_err(|e| e.to_string()),
            _ => Err(format!("{alg} needs an RSA key")),
        };
        let point = |params, crv: &str| match jwk {
            PublicJwk::Ec { crv: c, x, y } if *c == crv => {
                let sec1 = [&[0x04][..], x, y].concat();
                ParsedPublicKey::new(params, sec1).map_err(|e| e.to_string())
            }
            _ => Err(format!("{alg} needs an EC key on {crv}")),
        };
        let key = match alg {
            Algorithm::RS256 => rsa(&signature::RSA_PKCS1_2048_8192_SHA256),
            Algorithm::RS384 => rsa(&signature::RSA_PKCS1_2048_8192_SHA384),
            Algorithm::RS512 => rsa(&signature::RSA_PKCS1_2048_8192_SHA512),
            Algorithm::PS256 => rsa(&signature::RSA_PSS_2048_8192_SHA256),
            Algorithm::PS384 => rsa(&signature::RSA_PSS_2048_8192_SHA384),
            Algorithm::PS512 => rsa(&signature::RSA_PSS_2048_8192_SHA512),
            Algorithm::ES256 => point(&signature::ECDSA_P256_SHA256_FIXED, "P-256"),
            Algorithm::ES384 => point(&signature::ECDSA_P384_SHA384_FIXED, "P-384"),
            Algorithm::EdDSA => match jwk {
                PublicJwk::Ed25519 { x } => {
                    ParsedPublicKey::new(&signature::ED25519, x).map_err(|e| e.to_string())
                }
                _ => Err("EdDSA needs an Ed25519 key".to_owned()),
            },
        }?;
        Ok(Self { alg, key, issuer })
    }
}

/// The JOSE header members we read; the others (`typ`, `jku`, `x5u`, `jwk`, ...) are
/// ignored on purpose. Duplicate members make the header malformed.
#[derive(Deserialize)]
struct Header<'a> {
    /// `none` and unknown names fail to parse: a malformed token, not a choice.
    alg: jsonwebtoken::Algorithm,
    #[serde(borrow, default)]
    kid: Option<Cow<'a, str>>,
    #[serde(default)]
    crit: Option<Vec<String>>,
}

/// A token whose signature and registered claims checked out.
pub struct Verified {
    pub claims: Claims,
    /// `exp`, for caches.
    pub expires: i64,
    /// The external key set that verified it, when the key came from one: a cached result
    /// is good only while that set is current.
    pub external: Option<(usize, Arc<ExternalKeys>)>,
}

/// The keys and claim rules of one policy, ready to verify.
pub struct Verifier {
    keys: HashMap<String, VerifyKey>,
    external: Vec<Arc<dyn RemoteIssuer>>,
    audiences: Vec<String>,
    leeway_secs: i64,
    /// The longest `exp - iat` accepted (seconds); `None`: any.
    max_lifetime_secs: Option<i64>,
    /// Some issuer could not be resolved: an unknown kid may belong to it.
    incomplete: bool,
}

impl Verifier {
    pub fn new(audiences: Vec<String>, leeway_secs: i64) -> Self {
        Self {
            keys: HashMap::new(),
            external: Vec::new(),
            audiences,
            leeway_secs,
            max_lifetime_secs: None,
            incomplete: false,
        }
    }

    /// Refuses tokens whose `exp - iat` exceeds `seconds`, and tokens without `iat`.
    pub fn set_max_lifetime(&mut self, seconds: i64) {
        self.max_lifetime_secs = Some(seconds);
    }

    /// Adds a public key of an issuer.
    pub fn add_key(&mut self, kid: &str, key: VerifyKey) {
        self.keys.insert(kid.to_owned(), key);
    }

    /// Adds an external issuer whose keys are fetched and refreshed elsewhere.
    pub fn add_external(&mut self, issuer: Arc<dyn RemoteIssuer>) {
        self.external.push(issuer);
    }

    pub fn external(&self) -> &[Arc<dyn RemoteIssuer>] {
        &self.external
    }

    pub fn mark_incomplete(&mut self) {
        self.incomplete = true;
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    pub fn verify(&self, token: &str, now: Timestamp) -> Result<Verified, Rejection> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Rejection::TooLarge);
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Rejection::Malformed);
        };
        let header_json = B64URL
            .decode(header_b64)
            .map_err(|_| Rejection::Malformed)?;
        let header: Header<'_> =
            serde_json::from_slice(&header_json).map_err(|_| Rejection::Malformed)?;
        if header.crit.as_ref().is_some_and(|crit| !crit.is_empty()) {
            return Err(Rejection::UnsupportedCrit);
        }
        let token = Token {
            whole: token,
            signed: &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()],
            payload: payload_b64,
            signature: signature_b64,
            alg: header.alg,
        };
        let Some(kid) = header.kid.as_deref() else {
            let usable = self
                .external
                .iter()
                .filter(|i| i.usable_keys(now).is_some());
            return Err(self.no_key(usable.count()));
        };
        if let Some(key) = self.keys.get(kid) {
            return self.verify_with(&token, key, None, now);
        }
        if self.external.is_empty() {
            return Err(self.no_key(0));
        }
        // Issuers may share keys (Entra ID's tenants, its v1 and v2 issuers): the token is
        // checked against the issuer it names. Its `iss` is read unverified only to
        // choose; signature and `iss` are then checked against that issuer's keys.
        let named = unverified_claim(token.whole, "iss");
        let chosen = self
            .external
            .iter()
            .enumerate()
            .find(|(_, issuer)| Some(&issuer.config().issuer) == named.as_ref());
        if let Some((index, issuer)) = chosen {
            let set = issuer
                .usable_keys(now)
                .ok_or(Rejection::IssuerUnavailable)?;
            let key = set.get(kid).ok_or(Rejection::UnknownKid)?;
            return self.verify_with(&token, key, Some((index, set.clone())), now);
        }
        // No external issuer of that name: a key with this kid still verifies the
        // signature, and the issuer check then says what is wrong.
        let mut usable = 0;
        for (index, issuer) in self.external.iter().enumerate() {
            if let Some(set) = issuer.usable_keys(now) {
                usable += 1;
                if let Some(key) = set.get(kid) {
                    return self.verify_with(&token, key, Some((index, set.clone())), now);
                }
            }
        }
        Err(self.no_key(usable))
    }

    /// No key for the token's kid: `issuer_unavailable` when no key at all is usable
    /// because an issuer is missing or down, else `unknown_kid`.
    fn no_key(&self, usable_external: usize) -> Rejection {
        let missing = self.incomplete || usable_external < self.external.len();
        if missing && self.keys.is_empty() && usable_external == 0 {
            Rejection::IssuerUnavailable
        } else {
            Rejection::UnknownKid
        }
    }

    fn verify_with(
        &self,
        token: &Token<'_>,
        key: &VerifyKey,
        external: Option<(usize, Arc<ExternalKeys>)>,
        now: Timestamp,
    ) -> Result<Verified, Rejection> {
        if token.alg != key.alg.to_jwt() {
            return Err(Rejection::AlgNotAllowed);
        }
        let signature = B64URL
            .decode(token.signature)
            .map_err(|_| Rejection::Malformed)?;
        key.key
            .verify_sig(token.signed, &signature)
            .map_err(|_| Rejection::BadSignature)?;
        let payload = B64URL
            .decode(token.payload)
            .map_err(|_| Rejection::Malformed)?;
        let claims: Claims = serde_json::from_slice(&payload).map_err(|_| Rejection::Malformed)?;
        let expires = self.check_claims(&claims, &key.issuer, now)?;
        Ok(Verified {
            claims,
            expires,
            external,
        })
    }

    /// Checks the registered claims; returns `exp`.
    fn check_claims(
        &self,
        claims: &Claims,
        issuer: &str,
        now: Timestamp,
    ) -> Result<i64, Rejection> {
        let now = now.as_second();
        let exp = numeric(claims, "exp")?.ok_or(Rejection::MissingExp)?;
        if now > exp.saturating_add(self.leeway_secs) {
            return Err(Rejection::Expired);
        }
        if let Some(nbf) = numeric(claims, "nbf")?
            && now.saturating_add(self.leeway_secs) < nbf
        {
            return Err(Rejection::NotYetValid);
        }
        let iat = numeric(claims, "iat")?;
        if let Some(max) = self.max_lifetime_secs {
            let iat = iat.ok_or(Rejection::MissingIat)?;
            if exp.saturating_sub(iat) > max {
                return Err(Rejection::TokenLifetimeTooLong);
            }
        }
        if claims.get("iss").and_then(Value::as_str) != Some(issuer) {
            return Err(Rejection::WrongIssuer);
        }
        if claims.get("sub").is_some_and(|sub| !sub.is_string()) {
            return Err(Rejection::InvalidClaims);
        }
        if !self.audiences.is_empty() {
            let matches = |aud: &str| self.audiences.iter().any(|a| a == aud);
            let ok = match claims.get("aud") {
                Some(Value::String(aud)) => matches(aud),
                Some(Value::Array(auds)) => auds.iter().filter_map(Value::as_str).any(matches),
                Some(_) => return Err(Rejection::InvalidClaims),
                None => false,
            };
            if !ok {
                return Err(Rejection::WrongAudience);
            }
        }
        Ok(exp)
    }
}

/// The parts of a split token.
struct Token<'t> {
    whole: &'t str,
    /// `header.payload`, the signed bytes.
    signed: &'t [u8],
    payload: &'t str,
    signature: &'t str,
    alg: jsonwebtoken::Algorithm,
}

/// A NumericDate claim (RFC 7519: seconds, possibly fractional); an error when present
/// but not a number.
fn numeric(claims: &Claims, name: &str) -> Result<Option<i64>, Rejection> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .map(Some)
            .ok_or(Rejection::InvalidClaims),
        Some(_) => Err(Rejection::InvalidClaims),
    }
}

/// A string claim of a token that was not (or not successfully) verified: only for
/// bucketing, never for a decision to allow.
pub fn unverified_claim(token: &str, name: &str) -> Option<String> {
    if token.len() > MAX_TOKEN_BYTES {
        return None;
    }
    let payload = token.split('.').nth(1)?;
    let bytes = B64URL.decode(payload).ok()?;
    let claims: Claims = serde_json::from_slice(&bytes).ok()?;
    super::claims::lookup(&claims, name)?
        .as_str()
        .map(str::to_owned)
}
