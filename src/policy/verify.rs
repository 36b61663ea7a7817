//! Token verification against a fixed set of keys. Checks the signature with the key's
//! own algorithm only (no `none`, no HMAC, no algorithm confusion), ignores `jku`, `x5u`
//! and embedded `jwk` (keys come from our own sets, never from the token), refuses any
//! `crit` extension, bounds the token size, and checks the time and identity claims
//! itself, against the clock it is given.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use jiff::Timestamp;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::{Map, Value};

use super::Rejection;

/// Larger tokens are refused before any parsing: real tokens are a few hundred bytes to a
/// few kilobytes; headers much larger than this are an attack or a mistake.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

pub type Claims = Map<String, Value>;

struct VerifyKey {
    alg: jsonwebtoken::Algorithm,
    key: DecodingKey,
    issuer: Arc<str>,
    validation: Validation,
}

/// The keys and claim rules of one policy, ready to verify.
pub struct Verifier {
    keys: HashMap<String, VerifyKey>,
    audiences: Vec<String>,
    leeway_secs: i64,
    /// Some issuer could not be resolved: an unknown kid may belong to it.
    incomplete: bool,
}

impl Verifier {
    pub fn new(audiences: Vec<String>, leeway_secs: i64) -> Self {
        Self {
            keys: HashMap::new(),
            audiences,
            leeway_secs,
            incomplete: false,
        }
    }

    /// Adds a public key (a JWK as published) of an issuer.
    pub fn add_key(
        &mut self,
        issuer: &Arc<str>,
        kid: &str,
        alg: crate::keys::Algorithm,
        jwk: &jsonwebtoken::jwk::Jwk,
    ) -> Result<(), String> {
        let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
        let alg = alg.to_jwt();
        let mut validation = Validation::new(alg);
        // Time, issuer and audience are checked below, against our clock, with our reasons.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        validation.leeway = 0;
        self.keys.insert(
            kid.to_owned(),
            VerifyKey {
                alg,
                key,
                issuer: issuer.clone(),
                validation,
            },
        );
        Ok(())
    }

    pub fn mark_incomplete(&mut self) {
        self.incomplete = true;
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    pub fn verify(&self, token: &str, now: Timestamp) -> Result<Claims, Rejection> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Rejection::TooLarge);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| Rejection::Malformed)?;
        if header.crit.is_some_and(|crit| !crit.is_empty()) {
            return Err(Rejection::UnsupportedCrit);
        }
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.keys.get(kid))
            .ok_or(if self.incomplete && self.keys.is_empty() {
                Rejection::IssuerUnavailable
            } else {
                Rejection::UnknownKid
            })?;
        if header.alg != key.alg {
            return Err(Rejection::AlgNotAllowed);
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &key.key, &key.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => Rejection::BadSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    Rejection::AlgNotAllowed
                }
                _ => Rejection::Malformed,
            })?
            .claims;
        self.check_claims(&claims, &key.issuer, now)?;
        Ok(claims)
    }

    fn check_claims(&self, claims: &Claims, issuer: &str, now: Timestamp) -> Result<(), Rejection> {
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
        numeric(claims, "iat")?;
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
        Ok(())
    }
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
