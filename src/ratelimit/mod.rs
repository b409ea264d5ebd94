//! Tiered rate limiting (domain layer): a token bucket with burst per (route, key) plus
//! calendar-aligned daily and monthly quotas, kept in this process ([`local`]) or shared through
//! Redis ([`redis`]: one atomic script call per request, or [`batched`] reservations). The
//! request-path policy that uses it is [`crate::policy::rate_limit`]; the upkeep loop (sweeps,
//! Redis connection, lease returns) is [`crate::services::ratelimit`].

pub mod batched;
pub mod bucket;
mod decision;
pub mod handover;
pub mod headers;
pub mod local;
pub mod redis;

use std::collections::HashMap;
use std::hash::Hasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use prometheus::IntCounter;

use crate::auth::Identity;
use crate::config::{
    Config, LimitKey, OnStoreError, RateLimitSettings, RouteSpec, Store, SyncMode, TierId, TierSpec,
};
use batched::Leases;
use bucket::Limits;
use decision::unavailable;
pub use decision::{decide, Decision, QuotaState};
use local::LocalStore;
use redis::RedisStore;
pub use redis::StoreError;

/// Process-wide counters of the rate limiter, filled by the metrics registry.
#[derive(Clone)]
pub struct StoreCounters {
    /// Failed shared-store calls.
    pub store_errors: IntCounter,
    /// Local keys evicted because `max_keys` was reached.
    pub evictions: IntCounter,
    /// Batched leases evicted because `max_keys` was reached (their unspent tokens are given
    /// back to Redis).
    pub lease_evictions: IntCounter,
}

/// Decision counters of one (route, tier): `[allowed, rejected]`.
pub type DecisionCounters = [IntCounter; 2];

struct Tier {
    spec: TierSpec,
    limits: Limits,
    headers: headers::TierCache,
}

/// The key of the local store's hash (SipHash-1-3, a specified function, so the same key hashes
/// alike in every process and every build that shares the seed).
pub type KeySeed = [u8; 16];

static KEY_SEED: OnceLock<KeySeed> = OnceLock::new();

/// Sets the process's key seed; call once, before the first limiter is built (the server does,
/// with a seed kept beside the upgrade socket so that a graceful upgrade's new process hashes
/// keys as the old one did and can take over its counters). Without it, a random seed is used.
/// Returns false if a seed was already set.
pub fn set_key_seed(seed: KeySeed) -> bool {
    KEY_SEED.set(seed).is_ok()
}

/// Process-wide state that survives reloads: the local store, its key hasher and clock.
pub struct Shared {
    local: LocalStore,
    seed: KeySeed,
    epoch: Instant,
}

impl Shared {
    /// The local store's clock: milliseconds since the store was created (also what the
    /// upgrade hand-over converts times with).
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The local store (for the upgrade hand-over).
    pub fn local(&self) -> &LocalStore {
        &self.local
    }

    /// A fingerprint of the key seed, so that a hand-over is only merged by a process that
    /// hashes keys the same way.
    pub fn seed_fingerprint(&self) -> u64 {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(self.seed);
        u64::from_le_bytes(digest[..8].try_into().unwrap_or_default())
    }
}

/// The Redis side, shared by snapshots with the same target and timeout.
pub struct Remote {
    store: Arc<RedisStore>,
    timeout: Duration,
    leases: Leases,
    /// Set when the process shuts down: no new reservations (batched sync answers exactly),
    /// so that what is given back at shutdown stays given back.
    draining: AtomicBool,
}

/// The rate limiter of one snapshot: tiers and stores. Routes check through their
/// [`RouteLimiter`].
pub struct RateLimiter {
    tiers: Vec<Tier>,
    tier_by_name: HashMap<String, TierId>,
    shared: Arc<Shared>,
    remote: Option<Arc<Remote>>,
    settings: RateLimitSettings,
}

/// One route's limit, resolved once per snapshot.
pub struct RouteLimiter {
    name: String,
    key: LimitKey,
    default_tier: TierId,
    /// Indexed by tier.
    decisions: Vec<DecisionCounters>,
}

/// What a bucket is keyed on, for one request.
#[derive(Clone, Copy)]
enum ClientKey<'a> {
    Consumer(&'a str),
    Header(&'a [u8]),
    Ip(Option<IpAddr>),
}

impl RateLimiter {
    /// Builds the limiter; the local store and the Redis connection are carried over from
    /// `previous` (the latter when the target and timeout are unchanged).
    pub fn new(config: &Config, previous: Option<&RateLimiter>, counters: &StoreCounters) -> Self {
        let settings = &config.rate_limit;
        let shared = previous.map(|p| Arc::clone(&p.shared)).unwrap_or_else(|| {
            Arc::new(Shared {
                local: LocalStore::new(settings.max_keys, counters.evictions.clone()),
                seed: *KEY_SEED.get_or_init(|| {
                    let mut seed = KeySeed::default();
                    // Without OS randomness the seed is only predictable, not wrong.
                    let _ = getrandom::fill(&mut seed);
                    seed
                }),
                epoch: Instant::now(),
            })
        });
        let remote = match &settings.store {
            Store::Local => None,
            target => {
                let kept = previous
                    .and_then(|p| p.remote.as_ref())
                    .filter(|r| r.store.target() == target && r.timeout == settings.redis_timeout);
                Some(kept.map(Arc::clone).unwrap_or_else(|| {
                    Arc::new(Remote {
                        store: RedisStore::new(
                            target.clone(),
                            settings.redis_timeout,
                            counters.store_errors.clone(),
                        ),
                        timeout: settings.redis_timeout,
                        leases: Leases::new(settings.max_keys, counters.lease_evictions.clone()),
                        draining: AtomicBool::new(false),
                    })
                }))
            }
        };
        let tiers: Vec<Tier> = settings
            .tiers
            .iter()
            .map(|t| Tier {
                limits: Limits {
                    rps: t.rps,
                    burst: f64::from(t.burst),
                    daily: t.daily_quota,
                    monthly: t.monthly_quota,
                },
                spec: t.clone(),
                headers: headers::TierCache::default(),
            })
            .collect();
        let tier_by_name = settings
            .tiers
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), TierId::new(i)))
            .collect();
        RateLimiter {
            tiers,
            tier_by_name,
            shared,
            remote,
            settings: settings.clone(),
        }
    }

    /// The limit of `route`, if it has one; `decisions` gives the counters of (route, tier).
    pub fn route(
        &self,
        route: &RouteSpec,
        decisions: impl Fn(&str, &str) -> DecisionCounters,
    ) -> Option<RouteLimiter> {
        let limit = route.rate_limit.as_ref()?;
        Some(RouteLimiter {
            name: route.name.clone(),
            key: limit.key.clone(),
            default_tier: limit.default_tier.id,
            decisions: self
                .tiers
                .iter()
                .map(|t| decisions(&route.name, &t.spec.name))
                .collect(),
        })
    }

    /// The name of tier `tier`.
    pub fn tier_name(&self, tier: TierId) -> &str {
        &self.tiers[tier.index()].spec.name
    }

    /// Adds the configured rate-limit headers for decision `d` to `resp`.
    pub fn apply_headers(
        &self,
        resp: &mut pingora::http::ResponseHeader,
        d: &Decision,
    ) -> pingora::Result<()> {
        let tier = &self.tiers[d.tier.index()];
        headers::apply(
            resp,
            d,
            &tier.spec.name,
            &tier.headers,
            self.settings.headers,
        )
    }

    /// The upgrade URL of tier `tier`.
    pub fn upgrade_url(&self, tier: TierId) -> Option<&str> {
        self.tiers[tier.index()].spec.upgrade_url.as_deref()
    }

    /// The store's name for traces: `local`, `redis` or `redis_batched`.
    pub fn store_name(&self) -> &'static str {
        match (&self.remote, self.settings.sync) {
            (None, _) => "local",
            (Some(_), SyncMode::Exact) => "redis",
            (Some(_), SyncMode::Batched) => "redis_batched",
        }
    }

    /// The process-wide local state (store, clock, seed).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops taking batched reservations (requests are then checked exactly) and gives back
    /// every unspent one; for shutdown, so that a successor or the other instances can spend
    /// them at once instead of after the lease.
    pub async fn give_back_leases(&self) {
        if let Some(remote) = &self.remote {
            remote.draining.store(true, Ordering::Relaxed);
            remote.leases.release_all(&remote.store).await;
        }
    }

    /// The Redis store, when configured.
    pub fn redis(&self) -> Option<&Arc<RedisStore>> {
        self.remote.as_ref().map(|r| &r.store)
    }

    /// Checks (and, when allowed, counts) one request under `route`'s limit, with the tier's
    /// rate and burst scaled by `factor` (the adaptive limit factor, 1.0 when not adaptive).
    /// The identity's tier (one hash look-up) wins over the route's default tier.
    pub async fn check(
        &self,
        route: &RouteLimiter,
        identity: Option<&Identity>,
        client_ip: Option<IpAddr>,
        headers: &HeaderMap,
        factor: f64,
    ) -> Decision {
        let tier = identity
            .and_then(|i| i.tier.as_deref())
            .and_then(|name| self.tier_by_name.get(name).copied())
            .unwrap_or(route.default_tier);
        let client_key = match (&route.key, identity) {
            (LimitKey::Consumer, Some(id)) => ClientKey::Consumer(&id.consumer),
            (LimitKey::Header(name), _) => match headers.get(name) {
                Some(v) => ClientKey::Header(v.as_bytes()),
                None => ClientKey::Ip(client_ip),
            },
            _ => ClientKey::Ip(client_ip),
        };
        let key = self.key_hash(&route.name, client_key);
        let scaled;
        let limits = if factor < 1.0 {
            let base = &self.tiers[tier.index()].limits;
            scaled = Limits {
                rps: base.rps * factor,
                burst: (base.burst * factor).max(1.0).floor(),
                ..*base
            };
            &scaled
        } else {
            &self.tiers[tier.index()].limits
        };
        let decision = match &self.remote {
            None => self.check_local(key, tier, limits),
            Some(remote) => {
                let redis_key = redis_key(&self.settings.key_prefix, &route.name, client_key);
                let sync = if remote.draining.load(Ordering::Relaxed) {
                    SyncMode::Exact
                } else {
                    self.settings.sync
                };
                let shared = match sync {
                    SyncMode::Exact => remote
                        .store
                        .take(&redis_key, limits, 1, 0, 0, 0)
                        .await
                        .map(|r| decide(tier, limits, &r.outcome, unix_now())),
                    SyncMode::Batched => {
                        let batch = batched::Batch {
                            size: self.batch_size(limits),
                            lease_ms: self.settings.lease.as_millis() as u64,
                        };
                        remote
                            .leases
                            .check(
                                &remote.store,
                                key,
                                redis_key,
                                tier,
                                limits,
                                batch,
                                self.shared.now_ms(),
                            )
                            .await
                    }
                };
                match (shared, self.settings.on_store_error) {
                    (Ok(d), _) => d,
                    (Err(_), OnStoreError::LocalFallback) => self.check_local(key, tier, limits),
                    (Err(_), OnStoreError::Allow) => unavailable(tier, limits, true),
                    (Err(_), OnStoreError::Deny) => unavailable(tier, limits, false),
                }
            }
        };
        route.decisions[tier.index()][usize::from(!decision.allowed)].inc();
        decision
    }

    fn check_local(&self, key: u64, tier: TierId, limits: &Limits) -> Decision {
        let unix = unix_now();
        let out = self
            .shared
            .local
            .take(key, limits, self.shared.now_ms(), unix, 1);
        decide(tier, limits, &out, unix)
    }

    /// Tokens reserved per Redis call in batched mode: `batch_size`, or max(10, rps / 10),
    /// never more than the burst.
    fn batch_size(&self, limits: &Limits) -> u32 {
        let auto = ((limits.rps / 10.0).ceil() as u32).max(10);
        self.settings
            .batch_size
            .unwrap_or(auto)
            .min(limits.burst as u32)
            .max(1)
    }

    /// The local store's key: SipHash-1-3 under the process's seed of the route name and
    /// the client key, written as explicit bytes (lengths included) so that the value does
    /// not depend on the standard library's `Hash` impls.
    fn key_hash(&self, route: &str, key: ClientKey<'_>) -> u64 {
        let (k0, k1) = self.shared.seed.split_at(8);
        let mut h = siphasher::sip::SipHasher13::new_with_keys(
            u64::from_le_bytes(k0.try_into().unwrap_or_default()),
            u64::from_le_bytes(k1.try_into().unwrap_or_default()),
        );
        h.write(&(route.len() as u64).to_le_bytes());
        h.write(route.as_bytes());
        let v4;
        let v6;
        let (kind, bytes): (u8, &[u8]) = match key {
            ClientKey::Consumer(c) => (0, c.as_bytes()),
            ClientKey::Header(v) => (1, v),
            ClientKey::Ip(None) => (2, &[]),
            ClientKey::Ip(Some(IpAddr::V4(ip))) => {
                v4 = ip.octets();
                (3, &v4)
            }
            ClientKey::Ip(Some(IpAddr::V6(ip))) => {
                v6 = ip.octets();
                (4, &v6)
            }
        };
        h.write_u8(kind);
        h.write(&(bytes.len() as u64).to_le_bytes());
        h.write(bytes);
        h.finish()
    }

    /// Local-only check for benchmarks: the same path as a request on a local-store route
    /// keyed on `consumer`, under tier number `tier`.
    pub fn check_local_for_bench(&self, consumer: &str, tier: usize) -> Decision {
        let key = self.key_hash("bench", ClientKey::Consumer(consumer));
        let tier = TierId::new(tier);
        self.check_local(key, tier, &self.tiers[tier.index()].limits)
    }

    /// Background upkeep: drops idle local keys (when `sweep`), connects to Redis when
    /// needed, returns expired and evicted batched reservations.
    pub async fn upkeep(&self, sweep: bool) {
        if sweep {
            self.shared.local.sweep(self.shared.now_ms());
        }
        if let Some(remote) = &self.remote {
            if !remote.store.connected() {
                if let Err(e) = remote.store.connect().await {
                    log::debug!("rate limit store: cannot connect yet: {e}");
                }
            }
            remote
                .leases
                .release_expired(&remote.store, self.shared.now_ms())
                .await;
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn redis_key(prefix: &str, route: &str, key: ClientKey<'_>) -> String {
    match key {
        ClientKey::Consumer(c) => redis::key(prefix, route, format!("c:{c}").as_bytes()),
        ClientKey::Header(v) => {
            let mut k = b"h:".to_vec();
            k.extend_from_slice(v);
            redis::key(prefix, route, &k)
        }
        ClientKey::Ip(Some(ip)) => redis::key(prefix, route, format!("ip:{ip}").as_bytes()),
        ClientKey::Ip(None) => redis::key(prefix, route, b"ip:unknown"),
    }
}
