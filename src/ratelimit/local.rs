//! The in-process store: counters in a sharded map (a key's shard is locked only for the few
//! arithmetic operations of one check; there is no global lock). Memory is bounded by
//! `max_keys`: idle keys whose bucket is full again and whose quotas have no count are swept,
//! and when a shard is full the entry closest to expiry is evicted (and counted).

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus::IntCounter;

use super::bucket::{self, Limits, Outcome, State};

const SHARDS: usize = 64;

struct Entry {
    state: State,
    /// When dropping the entry loses nothing (bucket full again, quota period over), in the
    /// store's milliseconds.
    forgettable_at_ms: u64,
}

/// Counters in this process.
pub struct LocalStore {
    shards: Box<[Mutex<HashMap<u64, Entry>>]>,
    per_shard_max: usize,
    evictions: IntCounter,
}

impl LocalStore {
    /// A store holding at most about `max_keys` keys.
    pub fn new(max_keys: usize, evictions: IntCounter) -> Self {
        LocalStore {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard_max: max_keys.div_ceil(SHARDS).max(1),
            evictions,
        }
    }

    /// Takes `want` tokens for `key` (a hash of route and client key).
    pub fn take(
        &self,
        key: u64,
        limits: &Limits,
        now_ms: u64,
        unix_secs: u64,
        want: u32,
    ) -> Outcome {
        let shard = &self.shards[(key as usize) % SHARDS];
        let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(&key) && map.len() >= self.per_shard_max {
            Self::evict_one(&mut map, now_ms);
            self.evictions.inc();
        }
        let entry = map.entry(key).or_insert_with(|| Entry {
            state: State::default(),
            forgettable_at_ms: 0,
        });
        let out = bucket::take(&mut entry.state, limits, now_ms, unix_secs, want);
        entry.forgettable_at_ms = forgettable_at(&out, limits, now_ms);
        out
    }

    /// Returns unused reserved tokens.
    pub fn give_back(&self, key: u64, limits: &Limits, tokens: u32, day: u64, month: u64) {
        let shard = &self.shards[(key as usize) % SHARDS];
        let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = map.get_mut(&key) {
            bucket::give_back(&mut e.state, limits, tokens, day, month);
        }
    }

    fn evict_one(map: &mut HashMap<u64, Entry>, now_ms: u64) {
        let victim = map
            .iter()
            .min_by_key(|(_, e)| e.forgettable_at_ms.saturating_sub(now_ms))
            .map(|(k, _)| *k);
        if let Some(k) = victim {
            map.remove(&k);
        }
    }

    /// Drops every entry that can be forgotten without changing any decision.
    pub fn sweep(&self, now_ms: u64) {
        for shard in self.shards.iter() {
            let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, e| e.forgettable_at_ms > now_ms);
        }
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn forgettable_at(out: &Outcome, limits: &Limits, now_ms: u64) -> u64 {
    let refill_ms = ((limits.burst - out.tokens).max(0.0) / limits.rps * 1000.0).ceil() as u64;
    let mut at = now_ms + refill_ms;
    if limits.daily.is_some() && out.day_count > 0 {
        at = at.max(now_ms + out.secs_to_day_end * 1000);
    }
    if limits.monthly.is_some() && out.month_count > 0 {
        at = at.max(now_ms + out.secs_to_month_end * 1000);
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            rps: 1.0,
            burst: 2.0,
            daily: None,
            monthly: None,
        }
    }

    #[test]
    fn keys_are_independent_and_memory_is_bounded() {
        let evictions = IntCounter::new("e", "e").unwrap();
        let store = LocalStore::new(64, evictions.clone());
        for k in 0..64u64 {
            assert_eq!(store.take(k, &limits(), 0, 0, 1).granted, 1);
        }
        assert_eq!(store.len(), 64);
        // One more key per shard than allowed evicts one entry of that shard.
        store.take(64, &limits(), 0, 0, 1);
        assert_eq!(evictions.get(), 1);
        assert_eq!(store.len(), 64);
    }

    #[test]
    fn sweep_forgets_only_idle_full_buckets() {
        let store = LocalStore::new(1000, IntCounter::new("e", "e").unwrap());
        store.take(1, &limits(), 0, 0, 1);
        store.take(2, &limits(), 0, 0, 2);
        // Key 1 refills in 1 s, key 2 in 2 s.
        store.sweep(1_500);
        assert_eq!(store.len(), 1);
        store.sweep(2_000);
        assert!(store.is_empty());
    }
}
