//! Batched sync: shared limits without a Redis round trip per request. Each instance reserves
//! up to `batch` tokens (and as many quota units) per key in one atomic script call and spends
//! them locally; what is left when the lease expires is given back (with the next call for the
//! key, or by the background service). When the store grants nothing, the key is refused
//! locally until enough tokens for a batch can have accumulated, so requests far above the
//! limit do not each cost a Redis call.
//!
//! Error bounds (N instances, batch B, lease L): reservations are exact decrements of the
//! shared bucket, so no more than the limit is ever admitted; at any moment at most N × B
//! tokens sit in unexpired reservations (returned after at most L), which bounds the shortfall
//! when demand exceeds the limit; at most one call per B admitted requests, plus one per
//! blocked interval (B / rps, at least 10 ms) per key and instance while refusing.

use std::sync::Mutex;

use prometheus::IntCounter;

use super::bucket::{Limited, Limits};
use super::redis::{RedisStore, StoreError};
use super::{decide, unix_now, Decision};
use crate::bounded::{BoundedMap, Eviction, PreHashed};
use crate::config::TierId;

const SHARDS: usize = 32;
/// Evicted reservations waiting to be given back; beyond this their tokens come back when the
/// Redis key expires (`lease` plus the bucket's refill time) instead.
const MAX_PENDING_RETURNS: usize = 4096;

/// Reservation sizing.
#[derive(Debug, Clone, Copy)]
pub struct Batch {
    /// Tokens reserved per call.
    pub size: u32,
    /// How long a reservation may be spent, in milliseconds.
    pub lease_ms: u64,
}

struct Lease {
    redis_key: String,
    limits: Limits,
    left: u32,
    expires_ms: u64,
    blocked_until_ms: u64,
    day: u64,
    month: u64,
    last: Option<Decision>,
}

impl Lease {
    fn new(redis_key: String, limits: &Limits) -> Self {
        Lease {
            redis_key,
            limits: *limits,
            left: 0,
            expires_ms: 0,
            blocked_until_ms: 0,
            day: 0,
            month: 0,
            last: None,
        }
    }
}

/// Unspent tokens to give back: (key, limits, tokens, day, month).
type Return = (String, Limits, u32, u64, u64);

/// Evicting a lease queues its unspent tokens for the background upkeep to give back.
struct GiveBack {
    pending: Mutex<Vec<Return>>,
    evictions: IntCounter,
}

impl Eviction<u64, Lease> for GiveBack {
    fn evicted(&self, _key: u64, lease: Lease) {
        if lease.left == 0 {
            return;
        }
        self.evictions.inc();
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.len() < MAX_PENDING_RETURNS {
            pending.push((
                lease.redis_key,
                lease.limits,
                lease.left,
                lease.day,
                lease.month,
            ));
        }
    }
}

/// This instance's reservations, by key, bounded by `max_keys`. Any lease may be evicted
/// (least recently used first); an evicted lease's unspent tokens are given back to Redis
/// asynchronously by the upkeep and counted in `gatehouse_ratelimit_lease_evictions_total`.
pub struct Leases {
    map: BoundedMap<u64, Lease, GiveBack, PreHashed>,
}

impl Leases {
    /// No reservations; at most about `max_keys` of them.
    pub fn new(max_keys: usize, evictions: IntCounter) -> Self {
        Leases {
            map: BoundedMap::with_hasher(
                max_keys,
                SHARDS,
                GiveBack {
                    pending: Mutex::new(Vec::new()),
                    evictions,
                },
                PreHashed,
            ),
        }
    }

    /// Checks one request for `key`, spending a local reservation when one is available.
    #[allow(clippy::too_many_arguments)]
    pub async fn check(
        &self,
        store: &RedisStore,
        key: u64,
        redis_key: String,
        tier: TierId,
        limits: &Limits,
        batch: Batch,
        now_ms: u64,
    ) -> Result<Decision, StoreError> {
        let local = self.map.with(
            &key,
            || Lease::new(redis_key.clone(), limits),
            |lease| {
                if lease.left > 0 && now_ms < lease.expires_ms && lease.limits == *limits {
                    lease.left -= 1;
                    return Ok(spent(lease, tier));
                }
                if now_ms < lease.blocked_until_ms && lease.limits == *limits {
                    if let Some(d) = refused(lease, tier, now_ms) {
                        return Ok(d);
                    }
                }
                Err((std::mem::take(&mut lease.left), lease.day, lease.month))
            },
        );
        let (give_back, day, month) = match local {
            Ok(d) => return Ok(d),
            Err(back) => back,
        };
        let result = store
            .take(&redis_key, limits, batch.size, give_back, day, month)
            .await?;
        let out = result.outcome;
        let mut d = decide(tier, limits, &out, unix_now());
        self.map.with(
            &key,
            || Lease::new(redis_key, limits),
            |lease| {
                lease.limits = *limits;
                lease.day = result.day;
                lease.month = result.month;
                if out.granted > 0 {
                    // Concurrent refills of the same key simply add up.
                    lease.left += out.granted - 1;
                    lease.expires_ms = now_ms + batch.lease_ms;
                    lease.blocked_until_ms = 0;
                    d.remaining = (out.tokens.floor().max(0.0) as u64) + u64::from(lease.left);
                } else {
                    let wait_ms = match out.limited_by {
                        Some(Limited::Daily) | Some(Limited::Monthly) => batch.lease_ms,
                        _ => {
                            let want = f64::from(batch.size.min(limits.burst as u32));
                            (((want - out.tokens).max(1.0) / limits.rps) * 1000.0).ceil() as u64
                        }
                    };
                    lease.blocked_until_ms = now_ms + wait_ms.clamp(10, batch.lease_ms.max(10));
                }
                lease.last = Some(d);
            },
        );
        Ok(d)
    }

    /// Gives back what expired and evicted reservations did not spend (background upkeep).
    pub async fn release_expired(&self, store: &RedisStore, now_ms: u64) {
        let mut due = std::mem::take(
            &mut *self
                .map
                .eviction()
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        self.map.retain(|_, lease| {
            if lease.left > 0 && now_ms >= lease.expires_ms {
                due.push((
                    lease.redis_key.clone(),
                    lease.limits,
                    lease.left,
                    lease.day,
                    lease.month,
                ));
                lease.left = 0;
            }
            // Forget idle keys; a new reservation recreates them.
            lease.left > 0 || now_ms < lease.expires_ms.max(lease.blocked_until_ms) + 60_000
        });
        for (key, limits, left, day, month) in due {
            let _ = store.take(&key, &limits, 0, left, day, month).await;
        }
    }

    /// Gives back every unspent reservation now (shutdown).
    pub async fn release_all(&self, store: &RedisStore) {
        self.release_expired(store, u64::MAX).await;
    }

    /// Leases held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no lease is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// The decision for a request served from a reservation.
fn spent(lease: &mut Lease, tier: TierId) -> Decision {
    let mut d = lease.last.unwrap_or_else(|| empty(tier, &lease.limits));
    d.allowed = true;
    d.limited_by = None;
    d.retry_after = 0;
    d.remaining = d.remaining.saturating_sub(1);
    for q in [&mut d.daily, &mut d.monthly].into_iter().flatten() {
        q.remaining = q.remaining.saturating_sub(1);
    }
    lease.last = Some(d);
    d
}

/// The decision for a request refused locally while the key is blocked.
fn refused(lease: &Lease, tier: TierId, now_ms: u64) -> Option<Decision> {
    let mut d = lease.last?;
    if d.allowed {
        return None;
    }
    d.tier = tier;
    d.retry_after = d
        .retry_after
        .max((lease.blocked_until_ms.saturating_sub(now_ms)).div_ceil(1000))
        .max(1);
    Some(d)
}

fn empty(tier: TierId, limits: &Limits) -> Decision {
    let out = super::bucket::Outcome {
        granted: 1,
        tokens: 0.0,
        day_count: 0,
        month_count: 0,
        limited_by: None,
        secs_to_day_end: 0,
        secs_to_month_end: 0,
    };
    decide(tier, limits, &out, unix_now())
}
