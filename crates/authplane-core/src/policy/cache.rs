//! The verified-token cache: a client sending the same token again skips the signature
//! check. Keyed by a 128-bit SipHash-2-4 of the token and the compiled policy's epoch,
//! under a secret key drawn when the cache is made (never the token itself); an entry is
//! good until the token's `exp`, while its policy is the one compiled (a new key set or
//! spec compiles a new epoch), and while the external key set that verified it is still
//! current.
//!
//! Why SipHash and not SHA-256: the key is computed on every request, over the whole
//! token (a forged payload beside a cached token's signature must miss), and SHA-256 of
//! a 600-byte RS256 token was half the instructions of a cached decision (on CPUs
//! without SHA extensions, about 1.4 µs). A keyed PRF serves the same purpose here: the
//! hashes never leave the process, so finding a token that collides with a cached one
//! takes on the order of 2^64 requests to the server, the same bound as a 128-bit
//! digest's birthday attack without the key.
//!
//! Direct-mapped and lock-free: each slot is an `ArcSwapOption`, a colliding token
//! replaces the entry in its slot. Bounded by its slot count.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwapOption;
use siphasher::sip128::{Hasher128 as _, SipHasher24};

use http::HeaderValue;

use super::Rejection;
use super::remote::ExternalKeys;
use super::verify::Claims;

pub type CacheKey = u128;

pub struct Entry {
    key: CacheKey,
    pub claims: Arc<Claims>,
    /// The token's `exp`, Unix seconds.
    pub expires: i64,
    /// Whether the claims satisfy the policy's required claims.
    pub satisfied: bool,
    /// The external issuer (index in the policy) and key set that verified the token.
    pub external: Option<(usize, Arc<ExternalKeys>)>,
    /// The values of the policy's `forwardClaims` headers, rendered once per token (the
    /// epoch changes with the spec, so with `forwardClaims`).
    pub identity: Identity,
}

/// The `forwardClaims` header values of a verified token, in the policy's order, or why
/// its claims cannot be headers.
pub type Identity = Result<Arc<[HeaderValue]>, Rejection>;

pub struct DecisionCache {
    slots: Box<[ArcSwapOption<Entry>]>,
    /// The SipHash key, random per cache (per process).
    secret: [u8; 16],
}

impl DecisionCache {
    /// A cache of `size` entries; `None` for 0 (caching off), and when the system's
    /// random generator fails (no key: every token is verified).
    pub fn new(size: usize) -> Option<Arc<Self>> {
        if size == 0 {
            return None;
        }
        let mut secret = [0; 16];
        if aws_lc_rs::rand::fill(&mut secret).is_err() {
            tracing::error!("no random key for the verified-token cache: caching is off");
            return None;
        }
        Some(Arc::new(Self {
            slots: (0..size).map(|_| ArcSwapOption::empty()).collect(),
            secret,
        }))
    }

    /// The key of a token under a compiled policy's epoch.
    pub fn key(&self, epoch: u64, token: &str) -> CacheKey {
        let mut hasher = SipHasher24::new_with_key(&self.secret);
        // The epoch has a fixed width, so (epoch, token) pairs cannot run into each other.
        std::hash::Hasher::write(&mut hasher, &epoch.to_le_bytes());
        std::hash::Hasher::write(&mut hasher, token.as_bytes());
        hasher.finish128().as_u128()
    }

    fn slot(&self, key: &CacheKey) -> &ArcSwapOption<Entry> {
        &self.slots[(*key % self.slots.len() as u128) as usize]
    }

    pub fn get(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        self.slot(key).load_full().filter(|e| e.key == *key)
    }

    pub fn insert(
        &self,
        key: CacheKey,
        claims: Arc<Claims>,
        expires: i64,
        satisfied: bool,
        external: Option<(usize, Arc<ExternalKeys>)>,
        identity: Identity,
    ) {
        self.slot(&key).store(Some(Arc::new(Entry {
            key,
            claims,
            expires,
            satisfied,
            external,
            identity,
        })));
    }
}

/// Each compiled policy gets a new epoch, which retires every entry of its predecessor.
pub fn next_epoch() -> u64 {
    static EPOCH: AtomicU64 = AtomicU64::new(1);
    EPOCH.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_found_by_token_and_epoch_only() {
        let cache = DecisionCache::new(64).unwrap();
        let claims = Arc::new(Claims::new());
        let key = cache.key(1, "token-a");
        cache.insert(key, claims, 100, true, None, Ok(Arc::from([])));
        assert!(cache.get(&key).is_some());
        assert!(cache.get(&cache.key(2, "token-a")).is_none());
        assert!(cache.get(&cache.key(1, "token-b")).is_none());
        assert!(DecisionCache::new(0).is_none());
        // Another cache (another process) hashes under another key.
        let other = DecisionCache::new(64).unwrap();
        assert_ne!(other.key(1, "token-a"), key);
    }
}
