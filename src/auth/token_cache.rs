//! A bounded cache of verified JWTs, so that a client presenting the same token again skips
//! the signature and claim checks. An entry is used only for the exact same token bytes
//! (compared in full, never by hash alone), only until the token's `exp` (plus leeway) and
//! at most 60 s, and only while the provider's key set is the one that verified it (a JWKS
//! refresh or a reload empties it in effect). Authorisation (roles, scopes) is re-checked on
//! every request by the caller.

use std::hash::BuildHasher;
use std::sync::Arc;

use super::identity::Identity;
use crate::bounded::{BoundedMap, Lru, PreHashed};

const SHARDS: usize = 16;
/// Most tokens remembered per provider. Any entry may be evicted (least recently used first):
/// an evicted token is simply verified again.
const CAPACITY: usize = 16 * 1024;
/// Longest time an entry is trusted.
pub const MAX_AGE_SECS: u64 = 60;

struct Entry {
    token: Box<str>,
    identity: Arc<Identity>,
    valid_until: u64,
    keys_generation: u64,
}

/// Verified tokens of one provider, keyed by a keyed hash of the token (the full token is
/// compared on every hit).
pub struct TokenCache {
    map: BoundedMap<u64, Entry, Lru, PreHashed>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache {
            map: BoundedMap::with_hasher(CAPACITY, SHARDS, Lru, PreHashed),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }
}

impl TokenCache {
    /// The identity of `token` if it was verified before and is still trusted at `now`
    /// (Unix seconds) with key set `generation`.
    pub fn get(&self, token: &str, now: u64, generation: u64) -> Option<Arc<Identity>> {
        let key = self.hasher.hash_one(token);
        self.map
            .get_mut(&key, |e| {
                (e.token.as_ref() == token
                    && now < e.valid_until
                    && e.keys_generation == generation)
                    .then(|| Arc::clone(&e.identity))
            })
            .flatten()
    }

    /// Remembers a verified token until `valid_until` (capped at now + [`MAX_AGE_SECS`]).
    pub fn put(
        &self,
        token: &str,
        identity: &Arc<Identity>,
        now: u64,
        valid_until: u64,
        generation: u64,
    ) {
        let entry = Entry {
            token: token.into(),
            identity: Arc::clone(identity),
            valid_until: valid_until.min(now + MAX_AGE_SECS),
            keys_generation: generation,
        };
        self.map.insert(self.hasher.hash_one(token), entry);
    }

    /// Tokens held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no token is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Arc<Identity> {
        Identity::build(
            "a".into(),
            None,
            crate::config::ProviderId::new(0),
            "jwt:x".into(),
            vec![],
            vec![],
            None,
        )
    }

    #[test]
    fn entries_match_exact_tokens_and_expire() {
        let c = TokenCache::default();
        c.put("tok", &id(), 100, 130, 1);
        assert_eq!(c.get("tok", 129, 1), Some(id()));
        assert_eq!(c.get("tok", 130, 1), None, "expired");
        assert_eq!(c.get("tok", 110, 2), None, "key set changed");
        assert_eq!(c.get("tok2", 110, 1), None);
        c.put("long", &id(), 100, 10_000, 1);
        assert_eq!(c.get("long", 161, 1), None, "capped at 60 s");
    }

    #[test]
    fn spraying_tokens_never_empties_the_cache() {
        let c = TokenCache::default();
        c.put("kept", &id(), 100, 130, 1);
        // Keep "kept" recently used while far more tokens than fit arrive.
        for i in 0..(CAPACITY * 3) {
            c.put(&format!("spray-{i}"), &id(), 100, 130, 1);
            if i % 64 == 0 {
                assert!(c.get("kept", 101, 1).is_some(), "lost after {i} tokens");
            }
        }
        assert!(c.len() <= CAPACITY + SHARDS);
        assert!(c.len() > CAPACITY / 2, "no clear-all: {} held", c.len());
    }
}
