//! Tiered rate limiting: a token bucket with burst per (route, key) plus calendar-aligned
//! daily and monthly quotas, kept in this process ([`local`]) or shared through Redis
//! ([`redis`], exact or batched). Runs in `request_filter` after authentication: the identity
//! chooses the tier, the route chooses the key.

pub mod bucket;
pub mod headers;
pub mod local;

use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use prometheus::IntCounter;

use crate::auth::Identity;
use crate::config::{Config, LimitKey, TierSpec};
use bucket::{Limited, Limits, Outcome};
use local::LocalStore;

/// State kept for a quota in a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaState {
    /// The quota.
    pub limit: u64,
    /// Requests still admissible in the period.
    pub remaining: u64,
    /// Seconds until the period ends.
    pub reset_secs: u64,
    /// The period's length in seconds.
    pub window_secs: u64,
}

/// The outcome of a rate-limit check, with what the headers report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Index of the tier applied.
    pub tier: usize,
    /// Bucket capacity.
    pub burst: u32,
    /// Seconds to refill an empty bucket.
    pub burst_window_secs: u64,
    /// Whole tokens left.
    pub remaining: u64,
    /// Seconds until the bucket is full again.
    pub reset_secs: u64,
    /// When refused: seconds until a retry can succeed.
    pub retry_after: u64,
    /// What refused the request.
    pub limited_by: Option<Limited>,
    /// Daily quota state, when the tier has one.
    pub daily: Option<QuotaState>,
    /// Monthly quota state, when the tier has one.
    pub monthly: Option<QuotaState>,
}

impl Decision {
    /// The limit that refused the request, for the 429 body.
    pub fn refusing_limit(&self) -> u64 {
        match self.limited_by {
            Some(Limited::Daily) => self.daily.map_or(0, |q| q.limit),
            Some(Limited::Monthly) => self.monthly.map_or(0, |q| q.limit),
            _ => u64::from(self.burst),
        }
    }
}

struct Tier {
    spec: TierSpec,
    limits: Limits,
}

struct RoutePolicy {
    name: String,
    key: LimitKey,
    default_tier: usize,
    decisions: Vec<[IntCounter; 2]>,
}

/// Process-wide state that survives reloads: the local store and its key hasher and clock.
pub struct Shared {
    local: LocalStore,
    hasher: std::collections::hash_map::RandomState,
    epoch: Instant,
}

/// The rate limiter of one snapshot.
pub struct RateLimiter {
    tiers: Vec<Tier>,
    routes: Vec<Option<RoutePolicy>>,
    shared: Arc<Shared>,
}

impl RateLimiter {
    /// Builds the limiter; the local store is carried over from `previous`.
    pub fn new(
        config: &Config,
        previous: Option<&RateLimiter>,
        metrics: &crate::metrics::Metrics,
    ) -> Self {
        let settings = &config.rate_limit;
        let shared = previous.map(|p| Arc::clone(&p.shared)).unwrap_or_else(|| {
            Arc::new(Shared {
                local: LocalStore::new(settings.max_keys, metrics.ratelimit_evictions.clone()),
                hasher: std::collections::hash_map::RandomState::new(),
                epoch: Instant::now(),
            })
        });
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
            })
            .collect();
        let routes = config
            .routes
            .iter()
            .map(|r| {
                let limit = r.rate_limit.as_ref()?;
                let default_tier = tiers
                    .iter()
                    .position(|t| t.spec.name == limit.default_tier)?;
                Some(RoutePolicy {
                    name: r.name.clone(),
                    key: limit.key.clone(),
                    default_tier,
                    decisions: tiers
                        .iter()
                        .map(|t| metrics.ratelimit_decisions(&r.name, &t.spec.name))
                        .collect(),
                })
            })
            .collect();
        RateLimiter {
            tiers,
            routes,
            shared,
        }
    }

    /// Whether route `route` is rate limited.
    pub fn limits(&self, route: usize) -> bool {
        self.routes[route].is_some()
    }

    /// The name of tier `tier`.
    pub fn tier_name(&self, tier: usize) -> &str {
        &self.tiers[tier].spec.name
    }

    /// The upgrade URL of tier `tier`.
    pub fn upgrade_url(&self, tier: usize) -> Option<&str> {
        self.tiers[tier].spec.upgrade_url.as_deref()
    }

    /// Checks (and, when allowed, counts) one request to `route`. `None` when the route has no
    /// limit.
    pub fn check(
        &self,
        route: usize,
        identity: Option<&Identity>,
        client_ip: Option<IpAddr>,
        headers: &HeaderMap,
    ) -> Option<Decision> {
        let policy = self.routes[route].as_ref()?;
        let tier = identity
            .and_then(|i| i.tier.as_deref())
            .and_then(|name| self.tiers.iter().position(|t| t.spec.name == name))
            .unwrap_or(policy.default_tier);
        let key = self.key_hash(policy, identity, client_ip, headers);
        let limits = &self.tiers[tier].limits;
        let now_ms = self.shared.epoch.elapsed().as_millis() as u64;
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let out = self.shared.local.take(key, limits, now_ms, unix, 1);
        let decision = decide(tier, limits, &out, unix);
        policy.decisions[tier][usize::from(!decision.allowed)].inc();
        Some(decision)
    }

    fn key_hash(
        &self,
        policy: &RoutePolicy,
        identity: Option<&Identity>,
        ip: Option<IpAddr>,
        headers: &HeaderMap,
    ) -> u64 {
        let mut h = self.shared.hasher.build_hasher();
        policy.name.hash(&mut h);
        match (&policy.key, identity) {
            (LimitKey::Consumer, Some(id)) => {
                0u8.hash(&mut h);
                id.consumer.hash(&mut h);
            }
            (LimitKey::Header(name), _) if headers.contains_key(name) => {
                1u8.hash(&mut h);
                headers.get(name).map(|v| v.as_bytes()).hash(&mut h);
            }
            _ => {
                2u8.hash(&mut h);
                ip.hash(&mut h);
            }
        }
        h.finish()
    }

    /// Drops idle keys (called periodically by the background service).
    pub fn sweep(&self) {
        self.shared
            .local
            .sweep(self.shared.epoch.elapsed().as_millis() as u64);
    }
}

/// Turns a bucket outcome into a decision with header values.
pub fn decide(tier: usize, limits: &Limits, out: &Outcome, unix_secs: u64) -> Decision {
    let allowed = out.granted > 0;
    let missing = (limits.burst - out.tokens).max(0.0);
    let reset_secs = (missing / limits.rps).ceil() as u64;
    let month_len = month_length_secs(unix_secs);
    let quota = |limit: Option<u64>, count: u64, reset: u64, window: u64| {
        limit.map(|l| QuotaState {
            limit: l,
            remaining: l.saturating_sub(count),
            reset_secs: reset,
            window_secs: window,
        })
    };
    let retry_after = match out.limited_by {
        _ if allowed => 0,
        Some(Limited::Daily) => out.secs_to_day_end,
        Some(Limited::Monthly) => out.secs_to_month_end,
        _ => (((1.0 - out.tokens).max(0.0)) / limits.rps).ceil().max(1.0) as u64,
    };
    Decision {
        allowed,
        tier,
        burst: limits.burst as u32,
        burst_window_secs: (limits.burst / limits.rps).ceil().max(1.0) as u64,
        remaining: out.tokens.floor().max(0.0) as u64,
        reset_secs,
        retry_after,
        limited_by: if allowed { None } else { out.limited_by },
        daily: quota(limits.daily, out.day_count, out.secs_to_day_end, 86_400),
        monthly: quota(
            limits.monthly,
            out.month_count,
            out.secs_to_month_end,
            month_len,
        ),
    }
}

fn month_length_secs(unix_secs: u64) -> u64 {
    let dt = time::OffsetDateTime::from_unix_timestamp(unix_secs as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    u64::from(time::util::days_in_month(dt.month(), dt.year())) * 86_400
}

/// Background upkeep of the rate limiter: sweeps idle local keys.
pub struct RateLimitService {
    store: crate::snapshot::SnapshotStore,
}

impl RateLimitService {
    /// Upkeep for whatever `store` holds.
    pub fn new(store: crate::snapshot::SnapshotStore) -> Self {
        RateLimitService { store }
    }
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for RateLimitService {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            self.store.load().ratelimit().sweep();
        }
    }
}
