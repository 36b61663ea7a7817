//! Minting tokens with the Active key: the developer's `kubectl create token`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use jiff::{SignedDuration, Timestamp};
use jsonwebtoken::Header;
use serde_json::{Map, Value};

use crate::keys::lifecycle::{KeySet, add};

/// Claims the minting command sets itself.
const REGISTERED: [&str; 8] = ["iss", "sub", "aud", "iat", "nbf", "exp", "jti", "sid"];

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("no key is active yet: start `authplane dev` with this SigningKey first")]
    NoActiveKey,
    #[error("claim {0:?} is set by `token mint` itself: {how}", how = how_to_set(.0))]
    Registered(String),
    #[error("--claim {0:?} must look like KEY=VALUE")]
    ClaimSyntax(String),
    #[error(
        "--ttl {0}: a token must live for a positive time (an already expired token verifies nowhere)"
    )]
    Lifetime(String),
    #[error(
        "--ttl {ttl} outlives its key: a retired key leaves the JWKS {retain_for} after its successor starts signing (spec.rotation.retainFor), so this token may stop verifying before it expires; use a shorter --ttl, raise retainFor, or pass --force"
    )]
    OutlivesKey { ttl: String, retain_for: String },
    #[error(
        "--ttl {ttl} is longer than the key's maxTokenLifetime {max}: a longer-lived token outlives the Revocations of its issuer; use a shorter --ttl, raise spec.maxTokenLifetime, or pass --force"
    )]
    TooLong { ttl: String, max: String },
    #[error("signing failed: {0}")]
    Signing(String),
}

/// What to do instead of `--claim` for a claim the command sets.
fn how_to_set(claim: &str) -> &'static str {
    match claim {
        "iss" => "use --issuer",
        "sub" => "use --sub",
        "aud" => "use --aud (repeat it for several audiences)",
        "exp" => "use --ttl (exp is the time of minting plus --ttl)",
        "iat" | "nbf" => "it is the time of minting",
        "jti" => "it is a random id, new for every token",
        "sid" => "use --session",
        _ => "use its own flag",
    }
}

impl MintError {
    /// What minting anyway (`--force`) means for a token this error refused.
    pub fn forced(&self) -> String {
        match self {
            MintError::TooLong { ttl, max } => format!(
                "--ttl {ttl} is longer than the key's maxTokenLifetime {max}: AuthPolicies refuse this token (token_lifetime_too_long) unless one accepts longer tokens of this key (spec.issuers[].maxTokenLifetime, which also keeps the key's Revocations that long)"
            ),
            other => other.to_string(),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct MintRequest {
    pub subject: String,
    pub audiences: Vec<String>,
    pub ttl: SignedDuration,
    /// Extra claims.
    pub claims: Map<String, Value>,
    /// The session id (`sid`), which a Revocation's `sessionId` names.
    pub session: Option<String>,
}

/// Parses `KEY=VALUE`; VALUE is JSON when it parses as JSON (`3`, `true`, `["a","b"]`),
/// a string otherwise.
pub fn parse_claim(arg: &str) -> Result<(String, Value), MintError> {
    let (key, value) = arg
        .split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| MintError::ClaimSyntax(arg.to_owned()))?;
    if REGISTERED.contains(&key) {
        return Err(MintError::Registered(key.to_owned()));
    }
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
    Ok((key.to_owned(), value))
}

/// A compact JWT signed by the key Active at `now`, with `kid` in its header.
pub fn mint(
    keys: &KeySet,
    issuer: &str,
    request: &MintRequest,
    now: Timestamp,
) -> Result<String, MintError> {
    if !request.ttl.is_positive() {
        return Err(MintError::Lifetime(format!("{:#}", request.ttl)));
    }
    if let Some(key) = request
        .claims
        .keys()
        .find(|k| REGISTERED.contains(&k.as_str()))
    {
        return Err(MintError::Registered(key.clone()));
    }
    if keys.active(now).is_none() {
        return Err(MintError::NoActiveKey);
    }
    let mut claims = request.claims.clone();
    claims.insert("iss".into(), issuer.into());
    claims.insert("sub".into(), request.subject.clone().into());
    match request.audiences.as_slice() {
        [] => {}
        [one] => {
            claims.insert("aud".into(), one.clone().into());
        }
        many => {
            claims.insert("aud".into(), many.into());
        }
    }
    claims.insert("iat".into(), now.as_second().into());
    claims.insert("nbf".into(), now.as_second().into());
    claims.insert("exp".into(), add(now, request.ttl).as_second().into());
    claims.insert("jti".into(), random_id().into());
    if let Some(session) = &request.session {
        claims.insert("sid".into(), session.clone().into());
    }
    sign(keys, &claims, now)
}

/// Signs `claims` as they are with the key Active at `now`, `kid` in the header: for
/// `token mint` and the token endpoint alike (the private key never leaves authplane).
pub fn sign(
    keys: &KeySet,
    claims: &Map<String, Value>,
    now: Timestamp,
) -> Result<String, MintError> {
    let active = keys.active(now).ok_or(MintError::NoActiveKey)?;
    let material = &active.material;
    let mut header = Header::new(material.alg().to_jwt());
    header.kid = Some(material.kid().to_owned());
    // JWS compact serialization (RFC 7515 §7.1), as jsonwebtoken::encode writes it, but
    // with the key parsed once ([`KeyMaterial::sign`]) rather than at every signature.
    let mut token = B64URL.encode(serde_json::to_vec(&header).map_err(signing)?);
    token.push('.');
    B64URL.encode_string(serde_json::to_vec(claims).map_err(signing)?, &mut token);
    let signature = material
        .sign(token.as_bytes())
        .map_err(|e| MintError::Signing(e.to_string()))?;
    token.push('.');
    B64URL.encode_string(signature, &mut token);
    Ok(token)
}

fn signing(error: serde_json::Error) -> MintError {
    MintError::Signing(error.to_string())
}

/// Refuses a lifetime that is not positive, or longer than the key stays published
/// after it retires (`retain_for`, when known): such a token could fail to verify before
/// it expires, though nothing was revoked.
pub fn check_lifetime(
    ttl: &crate::api::Duration,
    retain_for: Option<SignedDuration>,
) -> Result<(), MintError> {
    if !ttl.value().is_positive() {
        return Err(MintError::Lifetime(ttl.to_string()));
    }
    match retain_for {
        Some(retain_for) if ttl.value() > retain_for => Err(MintError::OutlivesKey {
            ttl: ttl.to_string(),
            retain_for: format!("{retain_for:#}"),
        }),
        _ => Ok(()),
    }
}

/// Refuses a lifetime longer than the SigningKey's `maxTokenLifetime` (when known).
pub fn check_max_lifetime(
    ttl: &crate::api::Duration,
    max: Option<SignedDuration>,
) -> Result<(), MintError> {
    match max {
        Some(max) if ttl.value() > max => Err(MintError::TooLong {
            ttl: ttl.to_string(),
            max: format!("{max:#}"),
        }),
        _ => Ok(()),
    }
}

fn random_id() -> String {
    let mut bytes = [0u8; 16];
    // The system generator does not fail on supported platforms; a zero jti would still
    // be a valid (if less unique) token.
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    B64URL.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_arguments() {
        assert_eq!(parse_claim("n=3").unwrap(), ("n".into(), Value::from(3)));
        assert_eq!(
            parse_claim("email=a@b").unwrap(),
            ("email".into(), Value::from("a@b"))
        );
        assert_eq!(
            parse_claim("roles=[\"x\",\"y\"]").unwrap().1,
            serde_json::json!(["x", "y"])
        );
        assert_eq!(parse_claim("empty=").unwrap().1, Value::from(""));
        assert!(matches!(
            parse_claim("noequals"),
            Err(MintError::ClaimSyntax(_))
        ));
        assert!(matches!(parse_claim("=x"), Err(MintError::ClaimSyntax(_))));
        assert!(matches!(
            parse_claim("exp=1"),
            Err(MintError::Registered(_))
        ));
        // Each registered claim says what sets it instead.
        for (claim, says) in [
            ("exp", "use --ttl"),
            ("iat", "the time of minting"),
            ("nbf", "the time of minting"),
            ("iss", "use --issuer"),
            ("aud", "use --aud"),
            ("sid", "use --session"),
            ("jti", "a random id"),
        ] {
            let error = parse_claim(&format!("{claim}=1")).unwrap_err().to_string();
            assert!(error.contains(says), "{claim}: {error}");
        }
    }

    #[test]
    fn lifetimes_must_be_positive_and_within_the_retention() {
        let ttl = |text: &str| text.parse::<crate::api::Duration>().unwrap();
        let hour = Some(SignedDuration::from_hours(1));
        assert!(check_lifetime(&ttl("15m"), hour).is_ok());
        assert!(check_lifetime(&ttl("60m"), hour).is_ok());
        assert!(check_lifetime(&ttl("15m"), None).is_ok());
        let negative = check_lifetime(&ttl("-5m"), None).unwrap_err().to_string();
        assert!(negative.contains("--ttl -5m"), "{negative}");
        assert!(check_lifetime(&ttl("0"), None).is_err());
        let long = check_lifetime(&ttl("87600h"), Some(SignedDuration::from_hours(24)))
            .unwrap_err()
            .to_string();
        assert!(
            long.contains("--ttl 87600h") && long.contains("24h"),
            "{long}"
        );
    }

    #[test]
    fn nothing_to_sign_with_is_an_error() {
        let request = MintRequest {
            subject: "a".into(),
            ttl: SignedDuration::from_mins(5),
            ..MintRequest::default()
        };
        let err = mint(&KeySet::default(), "iss", &request, Timestamp::now()).unwrap_err();
        assert!(matches!(err, MintError::NoActiveKey));
    }

    /// `sign` writes the JWS itself (with a key parsed once): every algorithm's token
    /// must verify with jsonwebtoken against the published JWK, header as expected.
    #[test]
    fn signed_tokens_verify_for_every_algorithm() {
        use crate::keys::lifecycle::KeyRecord;
        use crate::keys::{Algorithm, KeyMaterial};
        let now = Timestamp::now();
        for alg in Algorithm::ALL {
            let material = KeyMaterial::generate(alg, 2048).unwrap();
            let jwk: jsonwebtoken::jwk::Jwk =
                serde_json::from_value(material.public_jwk().to_json(material.kid(), alg)).unwrap();
            let kid = material.kid().to_owned();
            let keys = KeySet::new(vec![KeyRecord {
                material,
                created: now,
                activates_at: now,
            }]);
            let mut claims = Map::new();
            claims.insert("sub".into(), "alice".into());
            claims.insert("aud".into(), "api".into());
            claims.insert("exp".into(), (now.as_second() + 60).into());
            let token = sign(&keys, &claims, now).unwrap();
            let header = jsonwebtoken::decode_header(&token).unwrap();
            assert_eq!(header.alg, alg.to_jwt(), "{alg}");
            assert_eq!(header.kid.as_deref(), Some(kid.as_str()), "{alg}");
            let mut validation = jsonwebtoken::Validation::new(alg.to_jwt());
            validation.set_audience(&["api"]);
            let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
            let verified = jsonwebtoken::decode::<Map<String, Value>>(&token, &key, &validation)
                .unwrap_or_else(|e| panic!("{alg}: {e}"));
            assert_eq!(verified.claims, claims, "{alg}");
            // A signature over other bytes does not verify.
            let (message, _) = token.rsplit_once('.').unwrap();
            let other = sign(&keys, &Map::new(), now).unwrap();
            let forged = format!("{message}.{}", other.rsplit_once('.').unwrap().1);
            assert!(
                jsonwebtoken::decode::<Map<String, Value>>(&forged, &key, &validation).is_err()
            );
        }
    }
}
