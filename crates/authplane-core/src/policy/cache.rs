//! The verified-token cache: a client sending the same token again skips the signature
//! check. Keyed by a SHA-256 of the token and the compiled policy's epoch (never the
//! token itself); an entry is good until the token's `exp`, while its policy is the one
//! compiled (a new key set or spec compiles a new epoch), and while the external key set
//! that verified it is still current.
//!
//! Direct-mapped and lock-free: each slot is an `ArcSwapOption`, a colliding token
//! replaces the entry in its slot. Bounded by its slot count.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwapOption;
use aws_lc_rs::digest::{Context, SHA256};

use super::remote::ExternalKeys;
use super::verify::Claims;

pub type CacheKey = [u8; 32];

pub struct Entry {
    key: CacheKey,
    pub claims: Arc<Claims>,
    /// The token's `exp`, Unix seconds.
    pub expires: i64,
    /// Whether the claims satisfy the policy's required claims.
    pub satisfied: bool,
    /// The external issuer (index in the policy) and key set that verified the token.
    pub external: Option<(usize, Arc<ExternalKeys>)>,
}

pub struct DecisionCache {
    slots: Box<[ArcSwapOption<Entry>]>,
}

impl DecisionCache {
    /// A cache of `size` entries; `None` for 0 (caching off).
    pub fn new(size: usize) -> Option<Arc<Self>> {
        (size > 0).then(|| {
            Arc::new(Self {
                slots: (0..size).map(|_| ArcSwapOption::empty()).collect(),
            })
        })
    }

    pub fn key(epoch: u64, token: &str) -> CacheKey {
        let mut context = Context::new(&SHA256);
        context.update(&epoch.to_le_bytes());
        context.update(token.as_bytes());
        let mut key = [0; 32];
        key.copy_from_slice(context.finish().as_ref());
        key
    }

    fn slot(&self, key: &CacheKey) -> &ArcSwapOption<Entry> {
        let mut index = [0; 8];
        index.copy_from_slice(&key[..8]);
        &self.slots[(u64::from_le_bytes(index) % self.slots.len() as u64) as usize]
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
    ) {
        self.slot(&key).store(Some(Arc::new(Entry {
            key,
            claims,
            expires,
            satisfied,
            external,
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
        let key = DecisionCache::key(1, "token-a");
        cache.insert(key, claims, 100, true, None);
        assert!(cache.get(&key).is_some());
        assert!(cache.get(&DecisionCache::key(2, "token-a")).is_none());
        assert!(cache.get(&DecisionCache::key(1, "token-b")).is_none());
        assert!(DecisionCache::new(0).is_none());
    }
}
