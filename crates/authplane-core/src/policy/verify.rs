//! Token verification. Checks the signature with the key's own algorithm only (no `none`,
//! no HMAC, no algorithm confusion), ignores `jku`, `x5u` and embedded `jwk` (keys come
//! from our own sets, never from the token), refuses any `crit` extension, bounds the
//! token size, and checks the time and identity claims itself, against the clock it is
//! given: `exp` always, `nbf` when present, `iat` never in the future, and the token's
//! lifetime where its issuer has a limit (see [`super::lifetime`]).
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
    /// The longest `exp - iat` of its tokens (seconds), when the key itself has a limit
    /// (authplane's own keys); `None`: the verifier's limit for its issuer applies.
    max_lifetime_secs: Option<i64>,
}

/// The RSA sizes the verification algorithms accept (`RSA_*_2048_8192_*`).
const MIN_RSA_BITS: usize = 2048;
const MAX_RSA_BITS: usize = 8192;

/// The size of a big-endian modulus, leading zero bits not counted.
fn modulus_bits(n: &[u8]) -> usize {
    let n = without_leading_zeros(n);
    n.first()
        .map_or(0, |first| n.len() * 8 - first.leading_zeros() as usize)
}

fn without_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

/// Why a published key cannot verify signatures of its algorithm.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyKeyError {
    /// The key's type does not fit the algorithm (an EC key for RS256, say): used as
    /// given, it would invite algorithm confusion, so it is not used at all.
    #[error("{alg} needs {needs}")]
    WrongType { alg: Algorithm, needs: &'static str },
    /// The key has the right type but its parameters do not parse (a 1024-bit modulus,
    /// a point off the curve).
    #[error("{alg} public key rejected: {reason}")]
    Rejected { alg: Algorithm, reason: String },
}

impl VerifyKey {
    pub fn new(issuer: Arc<str>, jwk: &PublicJwk, alg: Algorithm) -> Result<Self, VerifyKeyError> {
        let rejected = |e: &dyn std::fmt::Display| VerifyKeyError::Rejected {
            alg,
            reason: e.to_string(),
        };
        let wrong_type = |needs| VerifyKeyError::WrongType { alg, needs };
        let rsa = |params| match jwk {
            PublicJwk::Rsa { n, e } => {
                // aws-lc-rs checks the size only when verifying; a key that can never
                // verify is better refused here, where the reason is logged.
                let bits = modulus_bits(n);
                if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
                    return Err(rejected(&format_args!(
                        "a {bits}-bit RSA modulus; {MIN_RSA_BITS} to {MAX_RSA_BITS} bits are accepted"
                    )));
                }
                // RFC 7518 wants minimal octets, but some issuers publish a leading zero
                // (a signed big-integer encoding), which aws-lc-rs refuses.
                let (n, e) = (without_leading_zeros(n), without_leading_zeros(e));
                RsaPublicKeyComponents { n, e }
                    .to_parsed_public_key(params)
                    .map_err(|e| rejected(&e))
            }
            _ => Err(wrong_type("an RSA key")),
        };
        let point = |params, crv: &str, needs| match jwk {
            PublicJwk::Ec { crv: c, x, y } if *c == crv => {
                let sec1 = [&[0x04][..], x, y].concat();
                ParsedPublicKey::new(params, sec1).map_err(|e| rejected(&e))
            }
            _ => Err(wrong_type(needs)),
        };
        let key = match alg {
            Algorithm::RS256 => rsa(&signature::RSA_PKCS1_2048_8192_SHA256),
            Algorithm::RS384 => rsa(&signature::RSA_PKCS1_2048_8192_SHA384),
            Algorithm::RS512 => rsa(&signature::RSA_PKCS1_2048_8192_SHA512),
            Algorithm::PS256 => rsa(&signature::RSA_PSS_2048_8192_SHA256),
            Algorithm::PS384 => rsa(&signature::RSA_PSS_2048_8192_SHA384),
            Algorithm::PS512 => rsa(&signature::RSA_PSS_2048_8192_SHA512),
            Algorithm::ES256 => point(
                &signature::ECDSA_P256_SHA256_FIXED,
                "P-256",
                "an EC key on P-256",
            ),
            Algorithm::ES384 => point(
                &signature::ECDSA_P384_SHA384_FIXED,
                "P-384",
                "an EC key on P-384",
            ),
            Algorithm::EdDSA => match jwk {
                PublicJwk::Ed25519 { x } => {
                    ParsedPublicKey::new(&signature::ED25519, x).map_err(|e| rejected(&e))
                }
                _ => Err(wrong_type("an Ed25519 key")),
            },
        }?;
        Ok(Self {
            alg,
            key,
            issuer,
            max_lifetime_secs: None,
        })
    }

    /// Refuses tokens of this key whose `exp - iat` exceeds `limit`, and tokens without
    /// `iat`.
    pub fn with_max_lifetime(mut self, limit: jiff::SignedDuration) -> Self {
        self.max_lifetime_secs = Some(limit.as_secs());
        self
    }
}

/// The JOSE header members we read; the others (`typ`, `jku`, `x5u`, `jwk`, ...) are
/// ignored on purpose. Duplicate members make the header malformed.
#[derive(Deserialize)]
struct Header<'a> {
    /// Read as text: `none`, and any name that is no JWS signature algorithm, is
    /// `alg_not_allowed` (a choice the token made), not a malformed token.
    #[serde(borrow)]
    alg: Cow<'a, str>,
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
    /// The longest `exp - iat` (seconds) of each external issuer's tokens, by the index
    /// in `external`; `None`: any.
    external_limits: Vec<Option<i64>>,
    audiences: Vec<String>,
    leeway_secs: i64,
    /// Some issuer could not be resolved: an unknown kid may belong to it.
    incomplete: bool,
}

impl Verifier {
    pub fn new(audiences: Vec<String>, leeway_secs: i64) -> Self {
        Self {
            keys: HashMap::new(),
            external: Vec::new(),
            external_limits: Vec::new(),
            audiences,
            leeway_secs,
            incomplete: false,
        }
    }

    /// Adds a public key of an issuer.
    pub fn add_key(&mut self, kid: &str, key: VerifyKey) {
        self.keys.insert(kid.to_owned(), key);
    }

    /// Adds an external issuer whose keys are fetched and refreshed elsewhere; its
    /// tokens may live at most `max_lifetime` (`None`: any).
    pub fn add_external(
        &mut self,
        issuer: Arc<dyn RemoteIssuer>,
        max_lifetime: Option<jiff::SignedDuration>,
    ) {
        self.external.push(issuer);
        self.external_limits
            .push(max_lifetime.map(|limit| limit.as_secs()));
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
        let alg: jsonwebtoken::Algorithm =
            header.alg.parse().map_err(|_| Rejection::AlgNotAllowed)?;
        if header.crit.as_ref().is_some_and(|crit| !crit.is_empty()) {
            return Err(Rejection::UnsupportedCrit);
        }
        let token = Token {
            whole: token,
            signed: &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()],
            payload: payload_b64,
            signature: signature_b64,
            alg,
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
        let limit = match &external {
            Some((index, _)) => self.external_limits.get(*index).copied().flatten(),
            None => key.max_lifetime_secs,
        };
        let expires = self.check_claims(&claims, &key.issuer, limit, now)?;
        Ok(Verified {
            claims,
            expires,
            external,
        })
    }

    /// Checks the registered claims, `exp - iat` against `max_lifetime` (seconds) when
    /// given; returns `exp`.
    fn check_claims(
        &self,
        claims: &Claims,
        issuer: &str,
        max_lifetime: Option<i64>,
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
        // A token from the future would read as newer than a Revocation by subject, and
        // its `exp - iat` would hide how long it really lives.
        if let Some(iat) = iat
            && iat > now.saturating_add(self.leeway_secs)
        {
            return Err(Rejection::IatInFuture);
        }
        if let Some(max) = max_lifetime {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyMaterial;

    fn issuer() -> Arc<str> {
        Arc::from("https://auth.example.com")
    }

    #[test]
    fn a_key_is_used_only_with_an_algorithm_of_its_own_type() {
        let ec = KeyMaterial::generate(Algorithm::ES256, 0).unwrap();
        let ed = KeyMaterial::generate(Algorithm::EdDSA, 0).unwrap();
        assert!(VerifyKey::new(issuer(), ec.public_jwk(), Algorithm::ES256).is_ok());
        for (jwk, alg, needs) in [
            (ec.public_jwk(), Algorithm::RS256, "an RSA key"),
            (ec.public_jwk(), Algorithm::ES384, "an EC key on P-384"),
            (ec.public_jwk(), Algorithm::EdDSA, "an Ed25519 key"),
            (ed.public_jwk(), Algorithm::ES256, "an EC key on P-256"),
        ] {
            let error = VerifyKey::new(issuer(), jwk, alg).err();
            assert_eq!(error, Some(VerifyKeyError::WrongType { alg, needs }));
        }
    }

    #[test]
    fn an_rsa_key_outside_2048_to_8192_bits_is_rejected() {
        let rsa = KeyMaterial::generate(Algorithm::RS256, 2048).unwrap();
        let PublicJwk::Rsa { n, e } = rsa.public_jwk().clone() else {
            panic!("an RSA key");
        };
        let with_modulus = |n: Vec<u8>| PublicJwk::Rsa { n, e: e.clone() };
        // A leading zero byte (not minimal, but published by some issuers) is accepted
        // and does not make a key longer.
        let padded = [&[0][..], &n].concat();
        let padded = match VerifyKey::new(issuer(), &with_modulus(padded), Algorithm::RS256) {
            Ok(key) => key,
            Err(e) => panic!("{e}"),
        };
        let mut verifier = Verifier::new(Vec::new(), 0);
        verifier.add_key("k1", padded);
        let now = Timestamp::now();
        let claims = serde_json::json!({
            "iss": &*issuer(), "sub": "alice", "exp": now.as_second() + 60,
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some("k1".to_owned());
        let token = jsonwebtoken::encode(&header, &claims, &rsa.encoding_key().unwrap()).unwrap();
        assert!(verifier.verify(&token, now).is_ok());
        for (modulus, bits) in [(n[..128].to_vec(), 1024), (n.repeat(5), 10240)] {
            let error = VerifyKey::new(issuer(), &with_modulus(modulus), Algorithm::PS256).err();
            assert!(
                matches!(
                    &error,
                    Some(VerifyKeyError::Rejected { alg: Algorithm::PS256, reason })
                        if reason.starts_with(&format!("a {bits}-bit RSA modulus"))
                ),
                "{error:?}"
            );
        }
    }

    /// A verifier of one Ed25519 key whose tokens may live `limit`, with a 30 s leeway;
    /// and a signer for it.
    fn limited(limit: jiff::SignedDuration) -> (Verifier, impl Fn(&serde_json::Value) -> String) {
        let material = KeyMaterial::generate(Algorithm::EdDSA, 0).unwrap();
        let key = VerifyKey::new(issuer(), material.public_jwk(), Algorithm::EdDSA)
            .unwrap()
            .with_max_lifetime(limit);
        let mut verifier = Verifier::new(Vec::new(), 30);
        verifier.add_key("k1", key);
        let sign = move |claims: &serde_json::Value| {
            let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
            header.kid = Some("k1".to_owned());
            jsonwebtoken::encode(&header, claims, &material.encoding_key().unwrap()).unwrap()
        };
        (verifier, sign)
    }

    #[test]
    fn a_keys_tokens_need_iat_and_a_lifetime_within_its_limit() {
        let (verifier, sign) = limited(jiff::SignedDuration::from_mins(15));
        let now = Timestamp::from_second(1_000_000).unwrap();
        let t = now.as_second();
        let token = |iat: Option<i64>, exp: i64| {
            let mut claims = serde_json::json!({"iss": &*issuer(), "sub": "a", "exp": exp});
            if let Some(iat) = iat {
                claims["iat"] = iat.into();
            }
            sign(&claims)
        };
        let verdict = |token: String| verifier.verify(&token, now).map(|v| v.expires);
        assert_eq!(verdict(token(Some(t), t + 900)), Ok(t + 900));
        assert_eq!(
            verdict(token(Some(t), t + 901)).err(),
            Some(Rejection::TokenLifetimeTooLong)
        );
        assert_eq!(
            verdict(token(None, t + 60)).err(),
            Some(Rejection::MissingIat)
        );
        // An `iat` in the future: within the leeway it passes, beyond it is refused,
        // whatever `exp - iat` says.
        assert_eq!(verdict(token(Some(t + 30), t + 600)), Ok(t + 600));
        assert_eq!(
            verdict(token(Some(t + 31), t + 600)).err(),
            Some(Rejection::IatInFuture)
        );
        let ten_years = 10 * 365 * 86400;
        assert_eq!(
            verdict(token(Some(t + ten_years - 60), t + ten_years)).err(),
            Some(Rejection::IatInFuture)
        );
    }

    #[test]
    fn alg_none_and_unknown_algorithms_are_not_allowed_and_a_missing_alg_is_malformed() {
        let (verifier, sign) = limited(jiff::SignedDuration::from_mins(15));
        let now = Timestamp::now();
        let good = sign(
            &serde_json::json!({"iss": &*issuer(), "exp": now.as_second() + 60,
            "iat": now.as_second()}),
        );
        let payload = good.split('.').nth(1).unwrap();
        let with_header = |header: &str| format!("{}.{payload}.", B64URL.encode(header));
        for alg in ["none", "None", "NONE", "HS256", "ES512", "RSA-OAEP", ""] {
            let header = format!(r#"{{"alg":"{alg}","kid":"k1"}}"#);
            assert_eq!(
                verifier.verify(&with_header(&header), now).err(),
                Some(Rejection::AlgNotAllowed),
                "{alg}"
            );
        }
        for header in [
            r#"{"kid":"k1"}"#,
            r#"{"alg":7,"kid":"k1"}"#,
            r#"{"alg":null}"#,
        ] {
            assert_eq!(
                verifier.verify(&with_header(header), now).err(),
                Some(Rejection::Malformed),
                "{header}"
            );
        }
    }

    #[test]
    fn modulus_bits_ignore_leading_zeros() {
        assert_eq!(modulus_bits(&[]), 0);
        assert_eq!(modulus_bits(&[0, 0]), 0);
        assert_eq!(modulus_bits(&[0, 1]), 1);
        assert_eq!(modulus_bits(&[0x80, 0]), 16);
        assert_eq!(modulus_bits(&[0, 0x7f, 0xff]), 15);
    }
}
