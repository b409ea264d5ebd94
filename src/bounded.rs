//! One bounded, sharded map for per-key state on the request path: the local rate-limit
//! buckets, the batched Redis leases and the verified-token cache all use it.
//!
//! - **No global lock.** A key's shard is locked only for the closure run on its entry.
//! - **Bounded.** Each shard holds at most `capacity / shards` entries (rounded up). Inserting
//!   into a full shard first evicts one entry, in O(1): entries sit in per-class LRU lists
//!   (intrusive, in a slab), and the victim is the least recently used entry of the lowest
//!   non-empty class. There is never a clear-all, so spraying keys cannot wipe what others built.
//! - **Eviction rules per use.** An [`Eviction`] says which class an entry is in after each
//!   write (class 0 goes first) and is told about every evicted entry (to give leased tokens
//!   back, say). It runs under the shard lock: keep it cheap.
//! - **No allocation in steady state.** Slots and index grow with use up to the bound and are
//!   reused afterwards.
//! - **One hash per access.** The shard comes from the high bits of the key's hash, the slot in
//!   the shard's table from the low bits; keys that are already keyed hashes (all our uses) use
//!   [`PreHashed`] and are not hashed again.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Mutex, MutexGuard};

/// Number of eviction classes an [`Eviction`] may use.
pub const CLASSES: usize = 3;

const NIL: u32 = u32::MAX;

/// What a use of [`BoundedMap`] decides about eviction.
pub trait Eviction<K, V> {
    /// The class of an entry (`0..CLASSES`), asked after every write to it. Lower classes are
    /// evicted first; within a class the least recently used goes first.
    fn class(&self, _value: &V) -> usize {
        0
    }

    /// Receives an entry evicted to make room (not one removed by `remove` or `retain`).
    fn evicted(&self, _key: K, _value: V) {}
}

/// Eviction of anything, least recently used first, with no side effect.
#[derive(Debug, Default, Clone, Copy)]
pub struct Lru;

impl<K, V> Eviction<K, V> for Lru {}

struct Slot<K, V> {
    entry: Option<(K, V)>,
    class: u8,
    prev: u32,
    next: u32,
}

#[derive(Clone, Copy)]
struct List {
    head: u32,
    tail: u32,
}

const EMPTY: List = List {
    head: NIL,
    tail: NIL,
};

/// A `BuildHasher` for `u64` keys that are already the output of a keyed hash (SipHash with a
/// per-process random key): the key is its own hash. Never use it for keys a client chooses
/// directly.
#[derive(Debug, Default, Clone, Copy)]
pub struct PreHashed;

/// The hasher of [`PreHashed`].
#[derive(Debug, Default)]
pub struct PreHashedHasher(u64);

impl Hasher for PreHashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are expected; anything else still spreads.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl BuildHasher for PreHashed {
    type Hasher = PreHashedHasher;

    fn build_hasher(&self) -> PreHashedHasher {
        PreHashedHasher(0)
    }
}

struct Shard<K, V, S> {
    index: HashMap<K, u32, S>,
    slots: Vec<Slot<K, V>>,
    free: Vec<u32>,
    lists: [List; CLASSES],
}

impl<K: Hash + Eq + Clone, V, S: BuildHasher> Shard<K, V, S> {
    fn new(hasher: S) -> Self {
        Shard {
            index: HashMap::with_hasher(hasher),
            slots: Vec::new(),
            free: Vec::new(),
            lists: [EMPTY; CLASSES],
        }
    }

    fn unlink(&mut self, i: u32) {
        let (class, prev, next) = {
            let s = &self.slots[i as usize];
            (usize::from(s.class), s.prev, s.next)
        };
        match prev {
            NIL => self.lists[class].head = next,
            p => self.slots[p as usize].next = next,
        }
        match next {
            NIL => self.lists[class].tail = prev,
            n => self.slots[n as usize].prev = prev,
        }
    }

    fn push_back(&mut self, i: u32, class: usize) {
        let tail = self.lists[class].tail;
        {
            let s = &mut self.slots[i as usize];
            s.class = class as u8;
            s.prev = tail;
            s.next = NIL;
        }
        match tail {
            NIL => self.lists[class].head = i,
            t => self.slots[t as usize].next = i,
        }
        self.lists[class].tail = i;
    }

    /// Marks slot `i` most recently used, in `class`.
    fn touch(&mut self, i: u32, class: usize) {
        let class = class.min(CLASSES - 1);
        if self.lists[class].tail == i && usize::from(self.slots[i as usize].class) == class {
            return;
        }
        self.unlink(i);
        self.push_back(i, class);
    }

    fn take_slot(&mut self, i: u32) -> (K, V) {
        self.unlink(i);
        self.free.push(i);
        let s = &mut self.slots[i as usize];
        // Every linked slot holds an entry.
        s.entry.take().expect("linked slot holds an entry")
    }

    fn remove(&mut self, key: &K) -> Option<V> {
        let i = self.index.remove(key)?;
        Some(self.take_slot(i).1)
    }

    /// Evicts the least recently used entry of the lowest non-empty class.
    fn evict_one(&mut self) -> Option<(K, V)> {
        let victim = self.lists.iter().map(|l| l.head).find(|&h| h != NIL)?;
        let (key, value) = self.take_slot(victim);
        self.index.remove(&key);
        Some((key, value))
    }

    fn insert_new(&mut self, key: K, value: V) -> u32 {
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize].entry = Some((key.clone(), value));
                i
            }
            None => {
                self.slots.push(Slot {
                    entry: Some((key.clone(), value)),
                    class: 0,
                    prev: NIL,
                    next: NIL,
                });
                (self.slots.len() - 1) as u32
            }
        };
        // A fresh slot is not linked yet: link it at the back of class 0 (touch re-files it).
        self.push_back(i, 0);
        self.index.insert(key, i);
        i
    }

    fn value_mut(&mut self, i: u32) -> &mut V {
        &mut self.slots[i as usize]
            .entry
            .as_mut()
            .expect("indexed slot holds an entry")
            .1
    }
}

/// A bounded map from `K` to `V`, sharded by key hash (see the module documentation).
pub struct BoundedMap<K, V, E = Lru, S = RandomState> {
    shards: Box<[Mutex<Shard<K, V, S>>]>,
    per_shard: usize,
    hasher: S,
    eviction: E,
}

impl<K: Hash + Eq + Clone, V, E: Eviction<K, V>> BoundedMap<K, V, E> {
    /// A map of about `capacity` entries (at least one per shard) in `shards` shards.
    pub fn new(capacity: usize, shards: usize, eviction: E) -> Self {
        Self::with_hasher(capacity, shards, eviction, RandomState::new())
    }
}

impl<K: Hash + Eq + Clone, V, E: Eviction<K, V>, S: BuildHasher + Clone> BoundedMap<K, V, E, S> {
    /// Like [`BoundedMap::new`], hashing keys with `hasher`.
    pub fn with_hasher(capacity: usize, shards: usize, eviction: E, hasher: S) -> Self {
        let shards = shards.max(1);
        BoundedMap {
            shards: (0..shards)
                .map(|_| Mutex::new(Shard::new(hasher.clone())))
                .collect(),
            per_shard: capacity.div_ceil(shards).max(1),
            hasher,
            eviction,
        }
    }

    fn shard(&self, key: &K) -> MutexGuard<'_, Shard<K, V, S>> {
        // High bits pick the shard; the shard's table uses the low (and top 7) bits.
        let h = (self.hasher.hash_one(key) >> 40) as usize;
        // A poisoned shard only means a closure panicked mid-update; the map stays usable.
        self.shards[h % self.shards.len()]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The eviction policy.
    pub fn eviction(&self) -> &E {
        &self.eviction
    }

    /// Most entries the map holds.
    pub fn capacity(&self) -> usize {
        self.per_shard * self.shards.len()
    }

    /// Runs `f` on the entry for `key`, inserting `make()` first when there is none (evicting
    /// one entry if the shard is full). The entry becomes the most recently used of its class.
    pub fn with<R>(&self, key: &K, make: impl FnOnce() -> V, f: impl FnOnce(&mut V) -> R) -> R {
        let mut shard = self.shard(key);
        let i = match shard.index.get(key) {
            Some(&i) => i,
            None => {
                if shard.index.len() >= self.per_shard {
                    if let Some((k, v)) = shard.evict_one() {
                        self.eviction.evicted(k, v);
                    }
                }
                shard.insert_new(key.clone(), make())
            }
        };
        let value = shard.value_mut(i);
        let out = f(value);
        let class = self.eviction.class(value);
        shard.touch(i, class);
        out
    }

    /// Sets the entry for `key` to `value` (evicting one entry if a new key finds its shard
    /// full). The entry becomes the most recently used of its class.
    pub fn insert(&self, key: K, value: V) {
        let mut shard = self.shard(&key);
        let i = match shard.index.get(&key) {
            Some(&i) => {
                *shard.value_mut(i) = value;
                i
            }
            None => {
                if shard.index.len() >= self.per_shard {
                    if let Some((k, v)) = shard.evict_one() {
                        self.eviction.evicted(k, v);
                    }
                }
                shard.insert_new(key, value)
            }
        };
        let class = self.eviction.class(shard.value_mut(i));
        shard.touch(i, class);
    }

    /// Runs `f` on the entry for `key`, if there is one (it becomes the most recently used).
    pub fn get_mut<R>(&self, key: &K, f: impl FnOnce(&mut V) -> R) -> Option<R> {
        let mut shard = self.shard(key);
        let i = *shard.index.get(key)?;
        let value = shard.value_mut(i);
        let out = f(value);
        let class = self.eviction.class(value);
        shard.touch(i, class);
        Some(out)
    }

    /// Removes the entry for `key` (not an eviction).
    pub fn remove(&self, key: &K) -> Option<V> {
        self.shard(key).remove(key)
    }

    /// Keeps only the entries for which `keep` returns true (background sweeps); the rest are
    /// dropped, not evicted. Entries kept are re-filed by class, without changing recency.
    pub fn retain(&self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            let mut dropped = Vec::new();
            for (k, &i) in shard.index.iter() {
                dropped.push((k.clone(), i));
            }
            for (k, i) in dropped {
                let (keep_it, class) = {
                    let value = shard.value_mut(i);
                    let keep_it = keep(&k, value);
                    (keep_it, self.eviction.class(value))
                };
                if !keep_it {
                    shard.remove(&k);
                } else if usize::from(shard.slots[i as usize].class) != class {
                    shard.touch(i, class);
                }
            }
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).index.len())
            .sum()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Class = the value itself; counts evictions and remembers the last victim.
    #[derive(Default)]
    struct ByValue {
        evicted: AtomicUsize,
        last: Mutex<Option<(u64, usize)>>,
    }

    impl Eviction<u64, usize> for Arc<ByValue> {
        fn class(&self, v: &usize) -> usize {
            *v
        }
        fn evicted(&self, k: u64, v: usize) {
            self.evicted.fetch_add(1, Ordering::Relaxed);
            *self.last.lock().unwrap() = Some((k, v));
        }
    }

    #[test]
    fn inserts_updates_and_reads() {
        let m: BoundedMap<u64, usize> = BoundedMap::new(100, 4, Lru);
        assert_eq!(m.with(&1, || 10, |v| *v), 10);
        assert_eq!(m.with(&1, || 99, |v| std::mem::replace(v, 11)), 10);
        assert_eq!(m.get_mut(&1, |v| *v), Some(11));
        assert_eq!(m.get_mut(&2, |v| *v), None);
        assert_eq!(m.remove(&1), Some(11));
        assert!(m.is_empty());
    }

    #[test]
    fn a_full_shard_evicts_its_least_recently_used_entry() {
        let m: BoundedMap<u64, usize> = BoundedMap::new(3, 1, Lru);
        for k in 0..3 {
            m.with(&k, || 0, |_| ());
        }
        // Touch 0: 1 is now the least recently used.
        m.get_mut(&0, |_| ());
        m.with(&3, || 0, |_| ());
        assert_eq!(m.len(), 3);
        assert!(m.get_mut(&1, |_| ()).is_none(), "1 was evicted");
        assert!(m.get_mut(&0, |_| ()).is_some());
        assert!(m.get_mut(&2, |_| ()).is_some());
    }

    #[test]
    fn lower_classes_are_evicted_first_and_the_policy_sees_each_victim() {
        let policy = Arc::new(ByValue::default());
        let m = BoundedMap::new(3, 1, Arc::clone(&policy));
        m.with(&1, || 2, |_| ()); // class 2: most precious
        m.with(&2, || 1, |_| ());
        m.with(&3, || 0, |_| ()); // class 0: first to go, although newest
        m.with(&4, || 2, |_| ());
        assert_eq!(*policy.last.lock().unwrap(), Some((3, 0)));
        m.with(&5, || 2, |_| ());
        assert_eq!(*policy.last.lock().unwrap(), Some((2, 1)));
        // Only class 2 is left: its least recently used goes.
        m.with(&6, || 2, |_| ());
        assert_eq!(*policy.last.lock().unwrap(), Some((1, 2)));
        assert_eq!(policy.evicted.load(Ordering::Relaxed), 3);
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn a_write_that_changes_the_class_refiles_the_entry() {
        let policy = Arc::new(ByValue::default());
        let m = BoundedMap::new(2, 1, Arc::clone(&policy));
        m.with(&1, || 0, |_| ());
        m.with(&2, || 0, |_| ());
        m.with(&1, || 0, |v| *v = 2); // 1 becomes precious
        m.with(&3, || 0, |_| ());
        assert_eq!(*policy.last.lock().unwrap(), Some((2, 0)));
    }

    #[test]
    fn retain_drops_without_evicting_and_slots_are_reused() {
        let policy = Arc::new(ByValue::default());
        let m = BoundedMap::new(8, 1, Arc::clone(&policy));
        for k in 0..8 {
            m.with(&k, || (k % 2) as usize, |_| ());
        }
        m.retain(|k, _| k % 2 == 1);
        assert_eq!(m.len(), 4);
        assert_eq!(policy.evicted.load(Ordering::Relaxed), 0);
        for k in 10..14 {
            m.with(&k, || 0, |_| ());
        }
        assert!(m.len() <= m.capacity());
    }

    /// Random operations against a plain model: contents agree and the bound always holds.
    #[test]
    fn agrees_with_a_model_under_random_operations() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let policy = Arc::new(ByValue::default());
        let m = BoundedMap::new(64, 4, Arc::clone(&policy));
        let mut model: std::collections::HashMap<u64, usize> = Default::default();
        for _ in 0..20_000 {
            let k = rng.random_range(0..200u64);
            match rng.random_range(0..4) {
                0 => {
                    let v = rng.random_range(0..CLASSES);
                    m.with(&k, || v, |x| *x = v);
                    model.insert(k, v);
                }
                1 => assert_eq!(m.remove(&k), model.remove(&k)),
                _ => assert_eq!(m.get_mut(&k, |x| *x), model.get(&k).copied()),
            }
            // Evicted keys leave the model too.
            if let Some((ek, _)) = policy.last.lock().unwrap().take() {
                model.remove(&ek);
            }
            assert!(m.len() <= m.capacity());
            assert_eq!(m.len(), model.len());
        }
    }
}
