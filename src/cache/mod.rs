//! The response cache (a domain module): Pingora's HTTP cache state machine over
//! [`storage::MemoryStorage`], with each route's [`policy::CachePolicy`] and the admin's
//! [`purge::Purges`].
//!
//! Pingora's cache takes its storage, eviction manager, cacheability predictor and cache lock
//! as `&'static` references: [`Cache::install`] builds them once at start from `[cache]` and
//! they live as long as the process (a reload that changes `[cache]` reports that it needs an
//! upgrade). What each route caches comes from its `cache` table and applies on reload.
//!
//! - Eviction: Pingora's sharded LRU (`eviction::lru::Manager`) weighted in bytes, limited to
//!   `max_size`; Pingora asks it what to evict after each admission and purges that from the
//!   storage.
//! - Coalescing: Pingora's `CacheLock`. Concurrent misses of one key wait for the first to
//!   fetch and store the response, then read it from the cache (at most `lock_timeout`).
//! - Prediction: Pingora's `Predictor` remembers keys whose responses were not storable
//!   (`no-store`, cookies), so their requests skip the lock and go to the upstream at once
//!   (responses refused for their status are not remembered: the next one may be storable).

pub mod policy;
pub mod purge;
pub mod storage;

use pingora::cache::eviction::lru::Manager;
use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora::cache::predictor::Predictor;
use pingora::cache::{CacheOptionOverrides, HttpCache};

pub use policy::CachePolicy;
pub use purge::Purges;
pub use storage::{MemoryStorage, StorageMetrics};

use crate::config::cache::CacheSettings;

const EVICTION_SHARDS: usize = 16;
const PREDICTOR_SHARDS: usize = 16;
/// Keys remembered as not storable, per predictor shard.
const PREDICTOR_SHARD_CAPACITY: usize = 1024;

/// The process-wide cache (see the module documentation).
pub struct Cache {
    storage: &'static MemoryStorage,
    eviction: &'static Manager<EVICTION_SHARDS>,
    predictor: &'static Predictor<PREDICTOR_SHARDS>,
    lock: &'static CacheKeyLockImpl,
    purges: Purges,
    settings: CacheSettings,
}

impl Cache {
    /// Builds the cache for the process's lifetime from `settings`.
    pub fn install(settings: &CacheSettings, metrics: StorageMetrics) -> &'static Cache {
        let max_object = usize::try_from(settings.max_object_size).unwrap_or(usize::MAX);
        let max_size = usize::try_from(settings.max_size).unwrap_or(usize::MAX);
        let storage: &'static MemoryStorage =
            Box::leak(Box::new(MemoryStorage::new(max_object, metrics)));
        let eviction: &'static Manager<EVICTION_SHARDS> =
            Box::leak(Box::new(Manager::with_capacity(max_size, 256)));
        let predictor: &'static Predictor<PREDICTOR_SHARDS> = Box::leak(Box::new(Predictor::new(
            PREDICTOR_SHARD_CAPACITY,
            Some(|reason| reason == policy::STATUS_NOT_CACHED),
        )));
        let lock: &'static CacheLock = Box::leak(CacheLock::new_boxed(settings.lock_timeout));
        Box::leak(Box::new(Cache {
            storage,
            eviction,
            predictor,
            lock,
            purges: Purges::default(),
            settings: settings.clone(),
        }))
    }

    /// Turns the cache on for one request. `deadline`: the route's timeout, which also bounds
    /// how long the request waits for another one fetching the same response.
    pub fn enable(&'static self, cache: &mut HttpCache, deadline: Option<std::time::Duration>) {
        let overrides = deadline.map(|d| {
            let mut o = CacheOptionOverrides::default();
            o.wait_timeout = Some(d.min(self.settings.lock_timeout));
            o
        });
        cache.enable(
            self.storage,
            Some(self.eviction),
            Some(self.predictor),
            Some(self.lock),
            overrides,
        );
    }

    /// The purge records.
    pub fn purges(&self) -> &Purges {
        &self.purges
    }
}
