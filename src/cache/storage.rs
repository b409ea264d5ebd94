//! The response cache's storage: complete responses in memory, in shards, bounded by the
//! eviction manager that Pingora's cache drives beside it.
//!
//! Why not Pingora's `MemCache` (documented as for testing only): it keeps every entry behind
//! one process-wide `RwLock`, copies the body on every hit, decompresses and parses the stored
//! header on every hit, and never forgets anything (its only bound would be the eviction
//! manager's purges). Here:
//! - entries live in 64 shards, each a `Mutex<HashMap>` held only to clone an `Arc`;
//! - a hit shares the stored body (`Bytes`, no copy) and clones the parsed header;
//! - the size bound is Pingora's LRU eviction manager (`eviction::lru::Manager`), which the
//!   cache tells about every admission (body plus header bytes, see [`weight`]) and every hit,
//!   and which returns what to purge once `[cache] max_size` is exceeded;
//! - a response larger than `[cache] max_object_size` is not stored (its body stops being
//!   buffered at the limit; the client still receives all of it);
//! - a response is visible to readers only once complete: concurrent misses wait on the
//!   cache lock for it instead of reading a partial body (no streaming partial writes).

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::cache::key::{CacheHashKey, HashBinary};
use pingora::cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType,
};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheKey, CacheMeta, Storage};
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType, Result};
use prometheus::{IntCounter, IntGauge};

const SHARDS: usize = 64;

/// What a stored response keeps of its [`CacheMeta`] (rebuilt on each hit without parsing).
#[derive(Clone)]
struct Meta {
    header: ResponseHeader,
    fresh_until: SystemTime,
    /// When the response was stored or last revalidated (its age counts from here).
    updated: SystemTime,
    stale_while_revalidate: u32,
    stale_if_error: u32,
    variance: Option<HashBinary>,
    epoch_override: Option<SystemTime>,
}

impl Meta {
    fn of(meta: &CacheMeta) -> Self {
        Meta {
            header: meta.response_header_copy(),
            fresh_until: meta.fresh_until(),
            updated: meta.updated(),
            stale_while_revalidate: meta.stale_while_revalidate_sec(),
            stale_if_error: meta.stale_if_error_sec(),
            variance: meta.variance(),
            epoch_override: meta.epoch_override(),
        }
    }

    /// The [`CacheMeta`] Pingora works with. Its creation time is the last validation: age and
    /// freshness count from there, and a purge record compares against it.
    fn to_cache_meta(&self) -> CacheMeta {
        let mut meta = CacheMeta::new(
            self.fresh_until,
            self.updated,
            self.stale_while_revalidate,
            self.stale_if_error,
            self.header.clone(),
        );
        if let Some(v) = self.variance {
            meta.set_variance(v);
        }
        if let Some(e) = self.epoch_override {
            meta.set_epoch_override(e);
        }
        meta
    }
}

type Shard = HashMap<HashBinary, Arc<Entry>>;

struct Entry {
    meta: Meta,
    body: Bytes,
    weight: usize,
}

/// The bytes an entry counts for against `[cache] max_size`: its body, its header names and
/// values, and a fixed allowance for the entry, its key and the header maps.
pub fn weight(header: &ResponseHeader, body_len: usize) -> usize {
    const ENTRY_OVERHEAD: usize = 256;
    let headers: usize = header
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 32)
        .sum();
    body_len + headers + ENTRY_OVERHEAD
}

/// Counters and gauges the storage keeps current.
#[derive(Clone)]
pub struct StorageMetrics {
    /// Entries removed to make room.
    pub evictions: IntCounter,
    /// Responses not stored because they exceeded `max_object_size`.
    pub too_large: IntCounter,
    /// Entries stored.
    pub entries: IntGauge,
    /// Bytes stored (by [`weight`]).
    pub bytes: IntGauge,
}

/// The in-memory storage (see the module documentation).
pub struct MemoryStorage {
    shards: Box<[Mutex<Shard>]>,
    max_object_size: usize,
    metrics: StorageMetrics,
}

impl MemoryStorage {
    /// An empty storage that refuses responses over `max_object_size` bytes.
    pub fn new(max_object_size: usize, metrics: StorageMetrics) -> Self {
        MemoryStorage {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            max_object_size,
            metrics,
        }
    }

    fn shard(&self, key: &HashBinary) -> std::sync::MutexGuard<'_, Shard> {
        // The key is a Blake2 hash: any byte is uniformly distributed.
        self.shards[usize::from(key[0]) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, key: &HashBinary) -> Option<Arc<Entry>> {
        self.shard(key).get(key).cloned()
    }

    fn insert(&self, key: HashBinary, entry: Entry) {
        let weight = entry.weight;
        let old = self.shard(&key).insert(key, Arc::new(entry));
        match old {
            Some(old) => self.metrics.bytes.add(weight as i64 - old.weight as i64),
            None => {
                self.metrics.entries.inc();
                self.metrics.bytes.add(weight as i64);
            }
        }
    }

    fn remove(&self, key: &HashBinary) -> bool {
        let removed = self.shard(key).remove(key);
        if let Some(old) = &removed {
            self.metrics.entries.dec();
            self.metrics.bytes.sub(old.weight as i64);
        }
        removed.is_some()
    }

    /// Entries stored now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    /// Whether nothing is stored.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reads one stored body (or a range of it, for `Range` requests).
struct Hit {
    entry: Arc<Entry>,
    start: usize,
    end: usize,
    done: bool,
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.entry.body.slice(self.start..self.end)))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let len = self.entry.body.len();
        if start >= len {
            return Error::e_explain(
                ErrorType::InternalError,
                format!("seek start out of range {start} >= {len}"),
            );
        }
        self.start = start;
        self.end = end.map_or(len, |e| e.min(len));
        self.done = false;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.entry.weight
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// Buffers one response from the upstream; stores it when complete.
struct Miss {
    storage: &'static MemoryStorage,
    key: HashBinary,
    meta: Meta,
    body: BytesMut,
    /// The body went past `max_object_size`: nothing more is buffered, nothing is stored.
    too_large: bool,
}

#[async_trait]
impl HandleMiss for Miss {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        if self.too_large {
            return Ok(());
        }
        if self.body.len() + data.len() > self.storage.max_object_size {
            self.too_large = true;
            self.body = BytesMut::new();
            return Ok(());
        }
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        if self.too_large {
            // Not stored; the eviction manager tracks a key of no weight until it ages out.
            self.storage.metrics.too_large.inc();
            return Ok(MissFinishType::Created(0));
        }
        let body = self.body.freeze();
        let weight = weight(&self.meta.header, body.len());
        self.storage.insert(
            self.key,
            Entry {
                meta: self.meta,
                body,
                weight,
            },
        );
        Ok(MissFinishType::Created(weight))
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some(entry) = self.get(&key.combined_bin()) else {
            return Ok(None);
        };
        let meta = entry.meta.to_cache_meta();
        let end = entry.body.len();
        Ok(Some((
            meta,
            Box::new(Hit {
                entry,
                start: 0,
                end,
                done: false,
            }),
        )))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        Ok(Box::new(Miss {
            storage: self,
            key: key.combined_bin(),
            meta: Meta::of(meta),
            body: BytesMut::new(),
            too_large: false,
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        if !self.remove(&target.key().combined_bin()) {
            return Ok(PurgeOutcome::NotFound);
        }
        if matches!(purge_type, PurgeType::Eviction) {
            self.metrics.evictions.inc();
        }
        Ok(PurgeOutcome::Purged(None))
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let key = key.combined_bin();
        let Some(old) = self.get(&key) else {
            return Ok(false);
        };
        let meta = Meta::of(meta);
        let weight = weight(&meta.header, old.body.len());
        self.insert(
            key,
            Entry {
                meta,
                body: old.body.clone(),
                weight,
            },
        );
        Ok(true)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::cache::trace::Span;
    use std::time::Duration;

    fn metrics() -> StorageMetrics {
        StorageMetrics {
            evictions: IntCounter::new("e", "e").unwrap(),
            too_large: IntCounter::new("t", "t").unwrap(),
            entries: IntGauge::new("n", "n").unwrap(),
            bytes: IntGauge::new("b", "b").unwrap(),
        }
    }

    fn meta(ttl: u64) -> CacheMeta {
        let mut header = ResponseHeader::build(200, None).unwrap();
        header.append_header("content-type", "text/plain").unwrap();
        let now = SystemTime::now();
        CacheMeta::new(now + Duration::from_secs(ttl), now, 5, 7, header)
    }

    async fn store(s: &'static MemoryStorage, key: &CacheKey, body: &'static [u8]) {
        let span = Span::inactive().handle();
        let mut miss = s.get_miss_handler(key, &meta(60), &span).await.unwrap();
        miss.write_body(Bytes::from_static(&body[..body.len() / 2]), false)
            .await
            .unwrap();
        miss.write_body(Bytes::from_static(&body[body.len() / 2..]), true)
            .await
            .unwrap();
        miss.finish().await.unwrap();
    }

    #[tokio::test]
    async fn a_stored_response_is_read_back_whole_and_by_range() {
        let s: &'static MemoryStorage = Box::leak(Box::new(MemoryStorage::new(1024, metrics())));
        let span = Span::inactive().handle();
        let key = CacheKey::new("/a", "");
        assert!(s.lookup(&key, &span).await.unwrap().is_none());
        store(s, &key, b"hello world").await;
        let (m, mut hit) = s.lookup(&key, &span).await.unwrap().unwrap();
        assert!(m.is_fresh(SystemTime::now()));
        assert_eq!(m.stale_while_revalidate_sec(), 5);
        assert_eq!(m.stale_if_error_sec(), 7);
        assert_eq!(m.headers()["content-type"], "text/plain");
        assert_eq!(hit.read_body().await.unwrap().unwrap(), "hello world");
        assert!(hit.read_body().await.unwrap().is_none());
        hit.seek(6, Some(9)).unwrap();
        assert_eq!(hit.read_body().await.unwrap().unwrap(), "wor");
        assert!(hit.seek(11, None).is_err());
        assert_eq!(s.metrics.entries.get(), 1);
        assert_eq!(
            s.metrics.bytes.get() as usize,
            weight(m.response_header(), 11)
        );
    }

    #[tokio::test]
    async fn a_response_over_the_object_limit_is_not_stored() {
        let s: &'static MemoryStorage = Box::leak(Box::new(MemoryStorage::new(8, metrics())));
        let span = Span::inactive().handle();
        let key = CacheKey::new("/big", "");
        store(s, &key, b"0123456789").await;
        assert!(s.lookup(&key, &span).await.unwrap().is_none());
        assert_eq!(s.metrics.too_large.get(), 1);
        assert!(s.is_empty());
    }

    #[tokio::test]
    async fn purge_and_meta_update() {
        let s: &'static MemoryStorage = Box::leak(Box::new(MemoryStorage::new(1024, metrics())));
        let span = Span::inactive().handle();
        let key = CacheKey::new("/p", "");
        store(s, &key, b"body").await;
        let mut m = meta(1);
        m.update_freshness(SystemTime::now() + Duration::from_secs(600), 0, 0);
        assert!(s.update_meta(&key, &m, &span).await.unwrap());
        let (read, _) = s.lookup(&key, &span).await.unwrap().unwrap();
        assert!(read.fresh_until() > SystemTime::now() + Duration::from_secs(500));
        assert_eq!(read.stale_if_error_sec(), 0);
        let compact = key.to_compact();
        let entry = pingora::cache::CacheEntryKey::KeyOnly(compact);
        let outcome = s
            .purge(PurgeTarget::Exact(&entry), PurgeType::Eviction, &span)
            .await
            .unwrap();
        assert_eq!(outcome, PurgeOutcome::Purged(None));
        assert_eq!(s.metrics.evictions.get(), 1);
        assert!(s.lookup(&key, &span).await.unwrap().is_none());
        assert!(!s.update_meta(&key, &m, &span).await.unwrap());
        assert_eq!((s.metrics.entries.get(), s.metrics.bytes.get()), (0, 0));
    }
}
