//! Client secrets of dev mode's trusted workloads (`client_secret_post`): random,
//! shown once, kept only as a hash in the state folder, compared in constant time.
//! On a cluster workloads authenticate with their ServiceAccount tokens instead.

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::digest::{SHA256, digest};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde::{Deserialize, Serialize};

use crate::refresh::{Entropy, EntropyUnavailable};

/// What every client secret starts with, so that secret scanners recognise one.
pub const SECRET_PREFIX: &str = "apcs_";

/// A new secret, to show once, and what is kept of it.
pub struct NewSecret {
    pub secret: String,
    pub stored: StoredSecret,
}

// Never print the secret itself.
impl std::fmt::Debug for NewSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewSecret")
            .field("stored", &self.stored)
            .finish_non_exhaustive()
    }
}

/// The SHA-256 of a client secret, base64url: nothing to present (the secret has 256
/// random bits, so the hash cannot be turned back into it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredSecret {
    pub sha256: String,
}

impl StoredSecret {
    /// Whether `presented` is the secret, in time that does not depend on where it
    /// differs.
    pub fn matches(&self, presented: &str) -> bool {
        let Ok(stored) = B64URL.decode(&self.sha256) else {
            return false;
        };
        verify_slices_are_equal(digest(&SHA256, presented.as_bytes()).as_ref(), &stored).is_ok()
    }
}

pub fn new_secret(entropy: &mut dyn Entropy) -> Result<NewSecret, EntropyUnavailable> {
    let mut bytes = [0u8; 32];
    entropy.fill(&mut bytes)?;
    let secret = format!("{SECRET_PREFIX}{}", B64URL.encode(bytes));
    let stored = StoredSecret {
        sha256: B64URL.encode(digest(&SHA256, secret.as_bytes())),
    };
    Ok(NewSecret { secret, stored })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::refresh::SystemEntropy;

    #[test]
    fn a_secret_matches_only_itself_and_is_never_stored_or_printed() {
        let new = new_secret(&mut SystemEntropy).unwrap();
        assert!(new.secret.starts_with(SECRET_PREFIX));
        assert_eq!(new.secret.len(), SECRET_PREFIX.len() + 43);
        assert!(new.stored.matches(&new.secret));
        let other = new_secret(&mut SystemEntropy).unwrap();
        assert_ne!(other.secret, new.secret);
        for wrong in [
            other.secret.as_str(),
            "",
            &new.secret[..new.secret.len() - 1],
            &new.stored.sha256,
        ] {
            assert!(!new.stored.matches(wrong), "{wrong:?}");
        }
        let secret_part = &new.secret[SECRET_PREFIX.len()..];
        assert!(!format!("{new:?}").contains(secret_part));
        assert!(
            !serde_json::to_string(&new.stored)
                .unwrap()
                .contains(secret_part)
        );
        // A stored hash that does not decode matches nothing.
        let broken = StoredSecret { sha256: "!".into() };
        assert!(!broken.matches(&new.secret));
    }
}
