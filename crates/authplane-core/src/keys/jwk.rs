//! Public JWKs (RFC 7517/7518/8037) and the RFC 7638 thumbprint used as `kid`.

use aws_lc_rs::digest::{SHA256, digest};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde_json::{Value, json};

use super::Algorithm;

/// The public half of a signing key, as raw big-endian bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublicJwk {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    Ec {
        crv: &'static str,
        x: Vec<u8>,
        y: Vec<u8>,
    },
    Ed25519 {
        x: Vec<u8>,
    },
}

impl PublicJwk {
    /// Splits an uncompressed SEC1 point (`0x04 ‖ X ‖ Y`) for an ECDSA algorithm.
    pub fn from_uncompressed_point(alg: Algorithm, point: &[u8]) -> Option<Self> {
        let (crv, size) = match alg {
            Algorithm::ES256 => ("P-256", 32),
            Algorithm::ES384 => ("P-384", 48),
            _ => return None,
        };
        match point.split_first() {
            Some((0x04, xy)) if xy.len() == 2 * size => Some(PublicJwk::Ec {
                crv,
                x: xy[..size].to_vec(),
                y: xy[size..].to_vec(),
            }),
            _ => None,
        }
    }

    /// The required members only, in lexicographic order, without whitespace: the exact
    /// input RFC 7638 hashes. Built by hand because the order is part of the contract.
    fn thumbprint_input(&self) -> String {
        match self {
            PublicJwk::Rsa { n, e } => format!(
                r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
                B64URL.encode(e),
                B64URL.encode(n)
            ),
            PublicJwk::Ec { crv, x, y } => format!(
                r#"{{"crv":"{crv}","kty":"EC","x":"{}","y":"{}"}}"#,
                B64URL.encode(x),
                B64URL.encode(y)
            ),
            PublicJwk::Ed25519 { x } => {
                format!(
                    r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
                    B64URL.encode(x)
                )
            }
        }
    }

    /// RFC 7638 JWK SHA-256 thumbprint, base64url without padding.
    pub fn thumbprint(&self) -> String {
        B64URL.encode(digest(&SHA256, self.thumbprint_input().as_bytes()))
    }

    /// The JWK as published in a JWKS: public members, `kid`, `alg` and `use: sig`.
    pub fn to_json(&self, kid: &str, alg: Algorithm) -> Value {
        let mut jwk = match self {
            PublicJwk::Rsa { n, e } => {
                json!({"kty": "RSA", "n": B64URL.encode(n), "e": B64URL.encode(e)})
            }
            PublicJwk::Ec { crv, x, y } => {
                json!({"kty": "EC", "crv": crv, "x": B64URL.encode(x), "y": B64URL.encode(y)})
            }
            PublicJwk::Ed25519 { x } => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": B64URL.encode(x)})
            }
        };
        jwk["kid"] = kid.into();
        jwk["alg"] = alg.as_str().into();
        jwk["use"] = "sig".into();
        jwk
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> Vec<u8> {
        B64URL.decode(s).unwrap()
    }

    #[test]
    fn rfc7638_rsa_example() {
        // RFC 7638, section 3.1.
        let key = PublicJwk::Rsa {
            n: b64(concat!(
                "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECP",
                "ebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY",
                "368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0f",
                "M4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
            )),
            e: b64("AQAB"),
        };
        assert_eq!(
            key.thumbprint(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn rfc8037_ed25519_example() {
        // RFC 8037, appendix A.3.
        let key = PublicJwk::Ed25519 {
            x: b64("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"),
        };
        assert_eq!(
            key.thumbprint(),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    #[test]
    fn published_jwk_carries_only_public_members() {
        let key = PublicJwk::Ec {
            crv: "P-256",
            x: vec![1; 32],
            y: vec![2; 32],
        };
        let jwk = key.to_json("kid-1", Algorithm::ES256);
        let mut members: Vec<_> = jwk.as_object().unwrap().keys().cloned().collect();
        members.sort();
        assert_eq!(members, ["alg", "crv", "kid", "kty", "use", "x", "y"]);
        assert_eq!(jwk["use"], "sig");
    }

    #[test]
    fn malformed_ec_points_are_refused() {
        assert!(PublicJwk::from_uncompressed_point(Algorithm::ES256, &[4; 64]).is_none());
        assert!(PublicJwk::from_uncompressed_point(Algorithm::ES256, &[]).is_none());
        let mut compressed = vec![2u8];
        compressed.extend([0; 64]);
        assert!(PublicJwk::from_uncompressed_point(Algorithm::ES256, &compressed).is_none());
        assert!(PublicJwk::from_uncompressed_point(Algorithm::RS256, &[4; 65]).is_none());
    }
}
