//! A bounded cache of verified JWTs, so that a client presenting the same token again skips
//! the signature and claim checks. An entry is used only for the exact same token bytes
//! (compared in full, never by hash alone), only until the token's `exp` (plus leeway) and
//! at most 60 s, and only while the provider's key set is the one that verified it (a JWKS
//! refresh or a reload empties it in effect). Authorisation (roles, scopes) is re-checked on
//! every request by the caller.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};

use super::identity::Identity;

const SHARDS: usize = 16;
const PER_SHARD: usize = 1024;
/// Longest time an entry is trusted.
pub const MAX_AGE_SECS: u64 = 60;

struct Entry {
    token: Box<str>,
    identity: Arc<Identity>,
    valid_until: u64,
    keys_generation: u64,
}

/// Verified tokens of one provider.
pub struct TokenCache {
    shards: Box<[Mutex<HashMap<u64, Entry>>]>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }
}

impl TokenCache {
    fn slot(&self, token: &str) -> (usize, u64) {
        let v = self.hasher.hash_one(token);
        ((v as usize) % SHARDS, v)
    }

    /// The identity of `token` if it was verified before and is still trusted at `now`
    /// (Unix seconds) with key set `generation`.
    pub fn get(&self, token: &str, now: u64, generation: u64) -> Option<Arc<Identity>> {
        let (shard, key) = self.slot(token);
        let map = self.shards[shard].lock().ok()?;
        let e = map.get(&key)?;
        (e.token.as_ref() == token && now < e.valid_until && e.keys_generation == generation)
            .then(|| Arc::clone(&e.identity))
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
        let (shard, key) = self.slot(token);
        let Ok(mut map) = self.shards[shard].lock() else {
            return;
        };
        if map.len() >= PER_SHARD {
            map.retain(|_, e| e.valid_until > now);
            if map.len() >= PER_SHARD {
                map.clear();
            }
        }
        map.insert(
            key,
            Entry {
                token: token.into(),
                identity: Arc::clone(identity),
                valid_until: valid_until.min(now + MAX_AGE_SECS),
                keys_generation: generation,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Arc<Identity> {
        Identity::build("a".into(), None, "jwt:x".into(), vec![], vec![], None)
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
}
