//! The in-process store: counters in a [`BoundedMap`] (a key's shard is locked only for the
//! few arithmetic operations of one check; there is no global lock). Memory is bounded by
//! `max_keys`: idle keys whose bucket is full again and whose quotas have no count are swept,
//! and when a shard is full one entry is evicted (and counted) by this rule: first keys with no
//! quota count (only their bucket is lost, and an idle bucket refills anyway), then keys with
//! quota used, and keys whose quota is used up only when nothing else is left, so evicting
//! never hands an exhausted consumer a fresh quota while cheaper victims exist. Within a class
//! the least recently used goes first.

use prometheus::IntCounter;

use super::bucket::{self, Limits, Outcome, State};
use crate::bounded::{BoundedMap, Eviction, PreHashed};

const SHARDS: usize = 64;

/// Eviction classes, cheapest loss first.
const NO_QUOTA_COUNT: u8 = 0;
const QUOTA_USED: u8 = 1;
const QUOTA_EXHAUSTED: u8 = 2;

struct Entry {
    state: State,
    /// When dropping the entry loses nothing (bucket full again, quota period over), in the
    /// store's milliseconds.
    forgettable_at_ms: u64,
    class: u8,
}

struct Evict {
    evictions: IntCounter,
}

impl Eviction<u64, Entry> for Evict {
    fn class(&self, e: &Entry) -> usize {
        usize::from(e.class)
    }

    fn evicted(&self, _key: u64, _value: Entry) {
        self.evictions.inc();
    }
}

/// Counters in this process.
pub struct LocalStore {
    map: BoundedMap<u64, Entry, Evict, PreHashed>,
}

impl LocalStore {
    /// A store holding at most about `max_keys` keys; evictions are counted in `evictions`.
    pub fn new(max_keys: usize, evictions: IntCounter) -> Self {
        LocalStore {
            map: BoundedMap::with_hasher(max_keys, SHARDS, Evict { evictions }, PreHashed),
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
        let fresh = || Entry {
            state: State::default(),
            forgettable_at_ms: 0,
            class: NO_QUOTA_COUNT,
        };
        self.map.with(&key, fresh, |entry| {
            let out = bucket::take(&mut entry.state, limits, now_ms, unix_secs, want);
            entry.forgettable_at_ms = forgettable_at(&out, limits, now_ms);
            entry.class = class(&out, limits);
            out
        })
    }

    /// Drops every entry that can be forgotten without changing any decision.
    pub fn sweep(&self, now_ms: u64) {
        self.map.retain(|_, e| e.forgettable_at_ms > now_ms);
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

fn class(out: &Outcome, limits: &Limits) -> u8 {
    let exhausted = limits.daily.is_some_and(|q| out.day_count >= q)
        || limits.monthly.is_some_and(|q| out.month_count >= q);
    let used = (limits.daily.is_some() && out.day_count > 0)
        || (limits.monthly.is_some() && out.month_count > 0);
    match (exhausted, used) {
        (true, _) => QUOTA_EXHAUSTED,
        (false, true) => QUOTA_USED,
        _ => NO_QUOTA_COUNT,
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

    /// Keys as the limiter makes them: keyed hashes.
    fn key(i: u64) -> u64 {
        use std::hash::BuildHasher;
        std::collections::hash_map::RandomState::new().hash_one(i)
    }

    #[test]
    fn keys_are_independent_and_memory_is_bounded() {
        let evictions = IntCounter::new("e", "e").unwrap();
        let store = LocalStore::new(640, evictions.clone());
        for k in 0..5_000u64 {
            assert_eq!(store.take(key(k), &limits(), 0, 0, 1).granted, 1);
        }
        assert!(store.len() <= 640, "{} keys held", store.len());
        assert!(
            store.len() >= 600,
            "no clear-all: {} keys held",
            store.len()
        );
        assert_eq!(evictions.get(), 5_000 - store.len() as u64);
    }

    #[test]
    fn a_consumer_with_its_quota_used_up_is_evicted_last() {
        let quota = Limits {
            rps: 1.0,
            burst: 10.0,
            daily: Some(1),
            monthly: None,
        };
        let evictions = IntCounter::new("e", "e").unwrap();
        // One shard's worth: 64 shards of 2 keys.
        let store = LocalStore::new(128, evictions);
        let unix = 86_400 * 20_000;
        // Key 0 uses up its daily quota; it must survive a flood of bucket-only keys.
        let exhausted = key(0);
        assert_eq!(store.take(exhausted, &quota, 0, unix, 1).granted, 1);
        assert_eq!(store.take(exhausted, &quota, 1, unix, 1).granted, 0);
        for k in 1..10_000u64 {
            store.take(key(k), &limits(), 2, unix, 1);
        }
        assert_eq!(
            store.take(exhausted, &quota, 3, unix, 1).granted,
            0,
            "the exhausted quota was not reset by eviction"
        );
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
