//! Tokens already verified, so a repeated token costs a hash and a map lookup instead
//! of a signature check.
//!
//! Keyed by the SHA-256 of the token (the token itself is never kept). Each entry holds
//! the claims and the instant the token stops being valid (`exp` + clock skew): a hit
//! past it is dropped and reported as a miss, so the full path then rejects the token as
//! expired. Sharded `Mutex<HashMap>` with a fixed capacity: a full shard first drops
//! its expired entries, then an arbitrary one, so memory stays bounded whatever tokens
//! clients send. The cache is emptied whenever the provider's keys change, so a key
//! withdrawn from the JWKS stops accepting its tokens at the next refresh.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

const SHARDS: usize = 16;

/// Default number of entries per provider.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// SHA-256 of a token. `Debug` shows a prefix only.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct TokenHash([u8; 32]);

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenHash({}…)", hex::encode(&self.0[..4]))
    }
}

impl TokenHash {
    pub(crate) fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    fn shard(&self) -> usize {
        usize::from(self.0[0]) % SHARDS
    }
}

#[derive(Debug, Clone)]
pub(crate) struct CachedToken {
    pub(crate) claims: Arc<Map<String, Value>>,
    pub(crate) exp: u64,
    /// Unix second from which the token is no longer accepted (`exp` + skew).
    pub(crate) valid_until: u64,
}

#[derive(Debug)]
pub struct VerifiedTokenCache {
    shards: Box<[Mutex<HashMap<TokenHash, CachedToken>>]>,
    per_shard: usize,
}

impl VerifiedTokenCache {
    /// A cache of about `capacity` entries (rounded up to a multiple of the shard
    /// count); 0 disables caching.
    pub fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: capacity.div_ceil(SHARDS),
        }
    }

    fn shard(&self, hash: &TokenHash) -> MutexGuard<'_, HashMap<TokenHash, CachedToken>> {
        // A panic while holding the lock leaves a map that is still consistent.
        self.shards[hash.shard()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached claims of a token still valid at `now`; an expired entry is removed.
    pub(crate) fn get(&self, hash: &TokenHash, now: u64) -> Option<CachedToken> {
        let mut shard = self.shard(hash);
        match shard.get(hash) {
            Some(entry) if now < entry.valid_until => Some(entry.clone()),
            Some(_) => {
                shard.remove(hash);
                None
            }
            None => None,
        }
    }

    pub(crate) fn insert(&self, hash: TokenHash, entry: CachedToken, now: u64) {
        if self.per_shard == 0 || now >= entry.valid_until {
            return;
        }
        let mut shard = self.shard(&hash);
        if shard.len() >= self.per_shard && !shard.contains_key(&hash) {
            shard.retain(|_, cached| now < cached.valid_until);
            if shard.len() >= self.per_shard
                && let Some(victim) = shard.keys().next().copied()
            {
                shard.remove(&victim);
            }
        }
        shard.insert(hash, entry);
    }

    /// Drops every entry (the provider's keys changed).
    pub fn clear(&self) {
        for shard in self.shards.iter() {
            shard.lock().unwrap_or_else(PoisonError::into_inner).clear();
        }
    }

    /// Entries held, expired ones included until they are touched or evicted.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(valid_until: u64) -> CachedToken {
        CachedToken {
            claims: Arc::new(Map::new()),
            exp: valid_until,
            valid_until,
        }
    }

    #[test]
    fn hit_until_expiry_then_dropped() {
        let cache = VerifiedTokenCache::new(64);
        let hash = TokenHash::of("a.b.c");
        cache.insert(hash, entry(1_000), 900);
        assert!(cache.get(&hash, 999).is_some());
        assert!(cache.get(&hash, 1_000).is_none());
        assert_eq!(cache.len(), 0, "the expired entry is removed on access");
    }

    #[test]
    fn an_already_expired_token_is_not_cached() {
        let cache = VerifiedTokenCache::new(64);
        cache.insert(TokenHash::of("x"), entry(10), 10);
        assert!(cache.is_empty());
    }

    #[test]
    fn memory_stays_bounded_with_many_tokens() {
        let cache = VerifiedTokenCache::new(160);
        for i in 0..20_000 {
            cache.insert(TokenHash::of(&format!("token-{i}")), entry(u64::MAX), 0);
        }
        assert!(cache.len() <= 160, "{} entries", cache.len());
        assert!(cache.len() >= 100, "{} entries", cache.len());
    }

    #[test]
    fn a_full_shard_evicts_expired_entries_first() {
        let cache = VerifiedTokenCache::new(SHARDS);
        // Find two tokens of the same shard.
        let first = TokenHash::of("t0");
        let second = (1..)
            .map(|i| TokenHash::of(&format!("t{i}")))
            .find(|h| h.shard() == first.shard())
            .unwrap_or(first);
        cache.insert(first, entry(100), 0);
        cache.insert(second, entry(1_000), 150);
        assert!(cache.get(&second, 160).is_some());
        assert!(
            cache.get(&first, 50).is_none(),
            "the expired entry made room"
        );
    }

    #[test]
    fn zero_capacity_disables_the_cache() {
        let cache = VerifiedTokenCache::new(0);
        let hash = TokenHash::of("a");
        cache.insert(hash, entry(100), 0);
        assert!(cache.get(&hash, 1).is_none());
    }
}
