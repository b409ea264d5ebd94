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
use super::handover::{HandedEntry, Merged};
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
    /// A token balance handed over by the process this one upgraded from (tokens at a time on
    /// this store's clock), merged at the key's next check, when its limits are known: the
    /// lower of the two balances wins.
    handed: Option<(f64, u64)>,
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
        self.map.with(&key, fresh, |entry| {
            if let Some((tokens, ts_ms)) = entry.handed.take() {
                if entry.state.initialised {
                    let handed = bucket::refilled(tokens, ts_ms, limits, now_ms);
                    let own =
                        bucket::refilled(entry.state.tokens, entry.state.ts_ms, limits, now_ms);
                    entry.state.tokens = own.min(handed);
                    entry.state.ts_ms = entry.state.ts_ms.max(now_ms);
                }
            }
            let out = bucket::take(&mut entry.state, limits, now_ms, unix_secs, want);
            entry.forgettable_at_ms = forgettable_at(&out, limits, now_ms);
            entry.class = class(&out, limits);
            out
        })
    }

    /// Every key's counters as of `now_ms` (this store's clock), for the upgrade hand-over.
    pub fn export(&self, now_ms: u64) -> Vec<HandedEntry> {
        let mut out = Vec::with_capacity(self.map.len());
        self.map.retain(|&key, e| {
            if e.state.initialised {
                let (tokens, ts_ms) = match e.handed {
                    // Not merged yet: hand on the lower balance, unrefilled (the limits that
                    // would refill it are not known here).
                    Some((t, ts)) if t < e.state.tokens => (t, ts),
                    _ => (e.state.tokens, e.state.ts_ms),
                };
                out.push(HandedEntry {
                    key,
                    tokens,
                    age_ms: now_ms.saturating_sub(ts_ms),
                    day: e.state.day,
                    day_count: e.state.day_count,
                    month: e.state.month,
                    month_count: e.state.month_count,
                    forgettable_in_ms: e.forgettable_at_ms.saturating_sub(now_ms),
                    class: e.class,
                });
            }
            true
        });
        out
    }

    /// Merges one entry handed over by the process this one upgraded from, `age_ms` older
    /// than its own `age_ms` says (the time the hand-over took), at `now_ms`. `before` is what
    /// was merged from the same writer for this key earlier (zero counts if nothing): quota
    /// counts add what the writer admitted since then, token balances take the lower one.
    /// Returns what has now been merged, for the next hand-over of the same writer.
    pub fn merge(&self, e: &HandedEntry, transit_ms: u64, now_ms: u64, before: Merged) -> Merged {
        let ts_ms = now_ms.saturating_sub(e.age_ms.saturating_add(transit_ms));
        let day_delta = if before.day == e.day {
            e.day_count.saturating_sub(before.day_count)
        } else {
            e.day_count
        };
        let month_delta = if before.month == e.month {
            e.month_count.saturating_sub(before.month_count)
        } else {
            e.month_count
        };
        let forgettable_at = now_ms + e.forgettable_in_ms.saturating_sub(transit_ms);
        self.map.with(&e.key, fresh, |entry| {
            let s = &mut entry.state;
            if !s.initialised {
                *s = State {
                    tokens: e.tokens,
                    ts_ms,
                    day: e.day,
                    day_count: e.day_count,
                    month: e.month,
                    month_count: e.month_count,
                    initialised: true,
                };
            } else {
                add_count(&mut s.day, &mut s.day_count, e.day, day_delta);
                add_count(&mut s.month, &mut s.month_count, e.month, month_delta);
                entry.handed = Some(match entry.handed {
                    Some((t, ts)) if t < e.tokens => (t, ts),
                    _ => (e.tokens, ts_ms),
                });
            }
            entry.forgettable_at_ms = entry.forgettable_at_ms.max(forgettable_at);
            entry.class = entry.class.max(e.class);
        });
        Merged {
            day: e.day,
            day_count: e.day_count,
            month: e.month,
            month_count: e.month_count,
        }
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

fn fresh() -> Entry {
    Entry {
        state: State::default(),
        forgettable_at_ms: 0,
        class: NO_QUOTA_COUNT,
        handed: None,
    }
}

/// Adds `delta` admissions of `period` to a counter that holds `count` for `at`: a counter of
/// an earlier period starts the new one; admissions of a period already past are dropped.
fn add_count(at: &mut u64, count: &mut u64, period: u64, delta: u64) {
    if *at == period {
        *count += delta;
    } else if *at < period {
        *at = period;
        *count = delta;
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

    fn quota() -> Limits {
        Limits {
            rps: 1.0,
            burst: 10.0,
            daily: Some(100),
            monthly: None,
        }
    }

    #[test]
    fn a_handed_over_store_continues_where_the_old_one_stopped() {
        let unix = 86_400 * 20_000 + 3_600;
        let old = LocalStore::new(1000, IntCounter::new("e", "e").unwrap());
        // Old process: 8 admissions of key 1 at t = 0 (2 tokens left, day count 8).
        for _ in 0..8 {
            assert_eq!(old.take(1, &quota(), 50_000, unix, 1).granted, 1);
        }
        let handed = old.export(50_000);
        assert_eq!(handed.len(), 1);
        // New process, whose clock reads 1_000 when the hand-over (written 100 ms earlier)
        // arrives: the key has 2 tokens + 0.1 s of refill, and 8 admissions today.
        let new = LocalStore::new(1000, IntCounter::new("e", "e").unwrap());
        let merged = new.merge(&handed[0], 100, 1_000, Merged::default());
        assert_eq!(merged.day_count, 8);
        let out = new.take(1, &quota(), 1_000, unix, 1);
        assert_eq!(out.granted, 1);
        assert!((out.tokens - 1.1).abs() < 1e-9, "{}", out.tokens);
        assert_eq!(out.day_count, 9);
    }

    #[test]
    fn repeated_hand_overs_add_only_new_admissions_and_keep_the_lower_balance() {
        let unix = 86_400 * 20_000 + 3_600;
        let old = LocalStore::new(1000, IntCounter::new("e", "e").unwrap());
        for _ in 0..5 {
            old.take(7, &quota(), 0, unix, 1);
        }
        let new = LocalStore::new(1000, IntCounter::new("e", "e").unwrap());
        let first = new.merge(&old.export(0)[0], 0, 0, Merged::default());
        // Both processes admit meanwhile: 2 in the new one, 3 more in the old one.
        for _ in 0..2 {
            assert_eq!(new.take(7, &quota(), 0, unix, 1).granted, 1);
        }
        for _ in 0..3 {
            old.take(7, &quota(), 0, unix, 1);
        }
        let second = new.merge(&old.export(0)[0], 0, 0, first);
        assert_eq!(second.day_count, 8);
        // Day count: 5 + 2 + 3 = 10 admitted, never counted twice. Tokens: the new process
        // had 3 left, the old one 2: the lower wins.
        let out = new.take(7, &quota(), 0, unix, 1);
        assert_eq!(out.day_count, 11);
        assert!((out.tokens - 1.0).abs() < 1e-9, "{}", out.tokens);
        // The same hand-over merged again adds nothing.
        new.merge(&old.export(0)[0], 0, 0, second);
        assert_eq!(new.take(7, &quota(), 0, unix, 1).day_count, 12);
    }

    #[test]
    fn a_used_up_daily_quota_stays_used_up_and_a_new_day_starts_over() {
        let day = 86_400 * 20_000;
        let small = Limits {
            daily: Some(3),
            ..quota()
        };
        let old = LocalStore::new(1000, IntCounter::new("e", "e").unwrap());
        for _ in 0..3 {
            old.take(9, &small, 0, day + 10, 1);
        }
        let new = LocalStore::new(1000, IntCounter::new("e", "e").unwrap());
        new.merge(&old.export(30_000)[0], 0, 60_000, Merged::default());
        assert_eq!(new.take(9, &small, 60_000, day + 70, 1).granted, 0);
        assert_eq!(
            new.take(9, &small, 61_000, day + 86_400 + 1, 1).granted,
            1,
            "the next UTC day has a fresh quota"
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
