//! Private key material: generation, PKCS#8 PEM round trips and the public JWK derived
//! from it. The public part is always recomputed from the private key, never stored, so
//! the published JWK cannot drift from the key that signs.

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair,
    EcdsaSigningAlgorithm, Ed25519KeyPair, KeyPair as _, RSA_PKCS1_SHA256, RSA_PKCS1_SHA384,
    RSA_PKCS1_SHA512, RSA_PSS_SHA256, RSA_PSS_SHA384, RSA_PSS_SHA512, RsaEncoding,
};

use super::Algorithm;
use super::jwk::PublicJwk;

const PEM_TAG: &str = "PRIVATE KEY";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("RSA key size {0} is not allowed (use 2048, 3072 or 4096)")]
    RsaBits(u32),
    #[error("key generation failed for {0}")]
    Generation(Algorithm),
    #[error("not a PEM-encoded PKCS#8 private key: {0}")]
    Pem(String),
    #[error("the private key is not a valid {alg} key: {reason}")]
    Rejected { alg: Algorithm, reason: String },
    #[error("cannot build a JWT signing key: {0}")]
    Signing(String),
}

/// One private signing key with its algorithm, public JWK and RFC 7638 `kid`.
#[derive(Clone)]
pub struct KeyMaterial {
    alg: Algorithm,
    pkcs8: Vec<u8>,
    public: PublicJwk,
    kid: String,
    /// The key parsed once, for signing. jsonwebtoken parses the private key again on
    /// every signature (an RSA key's validation, an EC key's public point), which costs
    /// the token endpoint as much as an ES256 signature itself.
    signer: Arc<Signer>,
}

enum Signer {
    Rsa(RsaKeyPair, &'static dyn RsaEncoding),
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

fn rsa_encoding(alg: Algorithm) -> &'static dyn RsaEncoding {
    match alg {
        Algorithm::RS384 => &RSA_PKCS1_SHA384,
        Algorithm::RS512 => &RSA_PKCS1_SHA512,
        Algorithm::PS256 => &RSA_PSS_SHA256,
        Algorithm::PS384 => &RSA_PSS_SHA384,
        Algorithm::PS512 => &RSA_PSS_SHA512,
        _ => &RSA_PKCS1_SHA256,
    }
}

impl fmt::Debug for KeyMaterial {
    // Deliberately omits the private key: Debug output ends up in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyMaterial")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl PartialEq for KeyMaterial {
    fn eq(&self, other: &Self) -> bool {
        self.alg == other.alg && self.kid == other.kid
    }
}

impl KeyMaterial {
    /// Generates a fresh key. `rsa_bits` is used by the RSA algorithms only.
    pub fn generate(alg: Algorithm, rsa_bits: u32) -> Result<Self, KeyError> {
        let failed = |_| KeyError::Generation(alg);
        let pkcs8 = if alg.is_rsa() {
            let size = match rsa_bits {
                2048 => KeySize::Rsa2048,
                3072 => KeySize::Rsa3072,
                4096 => KeySize::Rsa4096,
                other => return Err(KeyError::RsaBits(other)),
            };
            let pair = RsaKeyPair::generate(size).map_err(failed)?;
            pair.as_der().map_err(failed)?.as_ref().to_vec()
        } else if alg == Algorithm::EdDSA {
            let pair = Ed25519KeyPair::generate().map_err(failed)?;
            pair.to_pkcs8v1().map_err(failed)?.as_ref().to_vec()
        } else {
            let pair = EcdsaKeyPair::generate(ecdsa_alg(alg)).map_err(failed)?;
            pair.to_pkcs8v1().map_err(failed)?.as_ref().to_vec()
        };
        Self::from_pkcs8(alg, pkcs8)
    }

    /// Loads a PKCS#8 DER private key for `alg`, refusing keys of another type.
    pub fn from_pkcs8(alg: Algorithm, pkcs8: Vec<u8>) -> Result<Self, KeyError> {
        let rejected = |reason: String| KeyError::Rejected { alg, reason };
        let (public, signer) = if alg.is_rsa() {
            let pair = RsaKeyPair::from_pkcs8(&pkcs8).map_err(|e| rejected(e.to_string()))?;
            let bits = pair.public_modulus_len() * 8;
            if ![2048, 3072, 4096].contains(&bits) {
                return Err(rejected(format!("unsupported RSA modulus of {bits} bits")));
            }
            let public = pair.public_key();
            let public = PublicJwk::Rsa {
                n: public.modulus().big_endian_without_leading_zero().to_vec(),
                e: public.exponent().big_endian_without_leading_zero().to_vec(),
            };
            (public, Signer::Rsa(pair, rsa_encoding(alg)))
        } else if alg == Algorithm::EdDSA {
            let pair = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|e| rejected(e.to_string()))?;
            let public = PublicJwk::Ed25519 {
                x: pair.public_key().as_ref().to_vec(),
            };
            (public, Signer::Ed25519(pair))
        } else {
            let pair = EcdsaKeyPair::from_pkcs8(ecdsa_alg(alg), &pkcs8)
                .map_err(|e| rejected(e.to_string()))?;
            let public = PublicJwk::from_uncompressed_point(alg, pair.public_key().as_ref())
                .ok_or_else(|| rejected("malformed EC public point".into()))?;
            (public, Signer::Ecdsa(pair))
        };
        let kid = public.thumbprint();
        Ok(Self {
            alg,
            pkcs8,
            public,
            kid,
            signer: Arc::new(signer),
        })
    }

    pub fn from_pem(alg: Algorithm, text: &str) -> Result<Self, KeyError> {
        let block = pem::parse(text).map_err(|e| KeyError::Pem(e.to_string()))?;
        if block.tag() != PEM_TAG {
            return Err(KeyError::Pem(format!(
                "expected a {PEM_TAG:?} block, found {:?}",
                block.tag()
            )));
        }
        Self::from_pkcs8(alg, block.into_contents())
    }

    /// PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), the format `openssl` and most
    /// libraries read.
    pub fn to_pem(&self) -> String {
        let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
        pem::encode_config(&pem::Pem::new(PEM_TAG, self.pkcs8.clone()), config)
    }

    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn public_jwk(&self) -> &PublicJwk {
        &self.public
    }

    /// RSA modulus size in bits; `None` for other key types.
    pub fn rsa_bits(&self) -> Option<u32> {
        match &self.public {
            PublicJwk::Rsa { n, .. } => Some(n.len() as u32 * 8),
            _ => None,
        }
    }

    /// The JWS signature of `message` (the encoded header and payload) with this key and
    /// its algorithm, in the form JWS puts it (ECDSA: `r || s`, RFC 7518 §3.4).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let failed = |_| KeyError::Signing(format!("{} signing failed", self.alg));
        match &*self.signer {
            Signer::Rsa(pair, encoding) => {
                let mut signature = vec![0; pair.public_modulus_len()];
                pair.sign(*encoding, &SystemRandom::new(), message, &mut signature)
                    .map_err(failed)?;
                Ok(signature)
            }
            Signer::Ecdsa(pair) => Ok(pair
                .sign(&SystemRandom::new(), message)
                .map_err(failed)?
                .as_ref()
                .to_vec()),
            Signer::Ed25519(pair) => Ok(pair.sign(message).as_ref().to_vec()),
        }
    }

    pub fn encoding_key(&self) -> Result<jsonwebtoken::EncodingKey, KeyError> {
        use jsonwebtoken::EncodingKey;
        let key = if self.alg.is_rsa() {
            // jsonwebtoken's DER loader wants PKCS#1; its PEM loader accepts PKCS#8.
            EncodingKey::from_rsa_pem(self.to_pem().as_bytes())
        } else if self.alg == Algorithm::EdDSA {
            Ok(EncodingKey::from_ed_der(&self.pkcs8))
        } else {
            Ok(EncodingKey::from_ec_der(&self.pkcs8))
        };
        key.map_err(|e| KeyError::Signing(e.to_string()))
    }
}

fn ecdsa_alg(alg: Algorithm) -> &'static EcdsaSigningAlgorithm {
    match alg {
        Algorithm::ES384 => &ECDSA_P384_SHA384_FIXED_SIGNING,
        _ => &ECDSA_P256_SHA256_FIXED_SIGNING,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_algorithm_generates_and_round_trips_through_pem() {
        for alg in Algorithm::ALL {
            let key = KeyMaterial::generate(alg, 2048).unwrap();
            let back = KeyMaterial::from_pem(alg, &key.to_pem()).unwrap();
            assert_eq!(back.kid(), key.kid(), "{alg}");
            assert_eq!(back.public_jwk(), key.public_jwk(), "{alg}");
            key.encoding_key().unwrap();
        }
    }

    #[test]
    fn rsa_sizes_are_honoured_and_others_refused() {
        let key = KeyMaterial::generate(Algorithm::RS256, 3072).unwrap();
        assert_eq!(key.rsa_bits(), Some(3072));
        assert!(matches!(
            KeyMaterial::generate(Algorithm::RS256, 1024),
            Err(KeyError::RsaBits(1024))
        ));
    }

    #[test]
    fn a_key_of_another_type_is_refused() {
        let ec = KeyMaterial::generate(Algorithm::ES256, 0).unwrap();
        for alg in [Algorithm::RS256, Algorithm::EdDSA, Algorithm::ES384] {
            let err = KeyMaterial::from_pem(alg, &ec.to_pem()).unwrap_err();
            assert!(matches!(err, KeyError::Rejected { .. }), "{alg}: {err}");
        }
        assert!(matches!(
            KeyMaterial::from_pem(Algorithm::ES256, "garbage"),
            Err(KeyError::Pem(_))
        ));
    }

    #[test]
    fn debug_output_never_contains_the_private_key() {
        let key = KeyMaterial::generate(Algorithm::EdDSA, 0).unwrap();
        let pem = key.to_pem();
        let body = pem.lines().nth(1).unwrap();
        assert!(!format!("{key:?}").contains(body));
    }
}
