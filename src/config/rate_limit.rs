//! The `[rate_limit]` section: tiers (token bucket plus calendar quotas), where counters live
//! (local or Redis), and what happens when the store fails. Routes opt in with
//! `rate_limit = { key = ..., default_tier = ... }`.

use std::time::Duration;

use http::HeaderName;
use serde::Serialize;

use super::ids::{Ref, TierId};
use super::reader::{Node, Reader};
use super::ser;

/// Validated rate limiting settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RateLimitSettings {
    /// Where counters live.
    pub store: Store,
    /// Budget of one store call on the request path.
    #[serde(serialize_with = "ser::duration")]
    pub redis_timeout: Duration,
    /// What to do when the store fails.
    pub on_store_error: OnStoreError,
    /// How instances share a Redis store.
    pub sync: SyncMode,
    /// Prefix of every Redis key.
    pub key_prefix: String,
    /// Most keys the local store holds before evicting (also the fallback store's bound).
    pub max_keys: usize,
    /// Batched sync: tokens reserved per Redis call; `None` means max(10, rps / 10).
    pub batch_size: Option<u32>,
    /// Batched sync: how long an instance may keep a reservation before returning the rest.
    #[serde(serialize_with = "ser::duration")]
    pub lease: Duration,
    /// The tiers, in file order; [`TierId`] indexes this list.
    pub tiers: Vec<TierSpec>,
    /// Which rate-limit header families responses carry.
    pub headers: HeaderFamilies,
}

/// Which rate-limit header families responses carry (`headers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum HeaderFamilies {
    /// `X-RateLimit-*` and the IETF `RateLimit-Policy` / `RateLimit` fields (the default).
    #[default]
    #[serde(rename = "both")]
    Both,
    /// Only `RateLimit-Policy` and `RateLimit`.
    #[serde(rename = "ietf")]
    Ietf,
    /// Only `X-RateLimit-*`.
    #[serde(rename = "x-ratelimit")]
    XRatelimit,
    /// None.
    #[serde(rename = "none")]
    None,
}

impl RateLimitSettings {
    /// The tier `id`.
    pub fn tier(&self, id: TierId) -> &TierSpec {
        &self.tiers[id.index()]
    }
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        RateLimitSettings {
            store: Store::Local,
            redis_timeout: Duration::from_millis(25),
            on_store_error: OnStoreError::LocalFallback,
            sync: SyncMode::Exact,
            key_prefix: "gatehouse:".to_string(),
            max_keys: 100_000,
            batch_size: None,
            lease: Duration::from_secs(1),
            tiers: Vec::new(),
            headers: HeaderFamilies::Both,
        }
    }
}

/// Counter storage. Rendered with passwords in URLs redacted.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Store {
    /// In this process only.
    Local,
    /// One Redis server (`redis://` URL).
    Redis(#[serde(serialize_with = "ser::url")] String),
    /// A Redis Cluster (seed node URLs).
    RedisCluster(#[serde(serialize_with = "ser::urls")] Vec<String>),
}

/// Failure policy for the shared store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    /// Enforce the same tier per instance from local state.
    LocalFallback,
    /// Admit.
    Allow,
    /// Answer 503.
    Deny,
}

/// How instances share limits through Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// One atomic Redis call per request.
    Exact,
    /// Each instance reserves tokens in batches and spends them locally.
    Batched,
}

/// A validated tier.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TierSpec {
    /// Tier name (matches API key records and the JWT tier claim).
    pub name: String,
    /// Refill rate, tokens per second.
    pub rps: f64,
    /// Bucket capacity.
    pub burst: u32,
    /// Admitted requests per UTC day.
    pub daily_quota: Option<u64>,
    /// Admitted requests per UTC calendar month.
    pub monthly_quota: Option<u64>,
    /// Echoed in 429 bodies.
    pub upgrade_url: Option<String>,
}

/// What a route's limit is keyed on.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKey {
    /// The authenticated consumer.
    Consumer,
    /// The client IP (see `trusted_proxies`).
    ClientIp,
    /// A request header; requests without it are keyed on the client IP.
    Header(#[serde(serialize_with = "ser::header_name")] HeaderName),
}

/// A route's rate limit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteLimit {
    /// What the bucket is keyed on.
    pub key: LimitKey,
    /// Tier used when the identity names none (or an unknown one).
    pub default_tier: Ref<TierId>,
}

/// Reads `[rate_limit]`.
pub fn read(r: &mut Reader<'_>, node: Option<&Node<'_, '_>>) -> RateLimitSettings {
    let mut s = RateLimitSettings::default();
    let Some(node) = node else { return s };
    let Some(t) = r.table(node) else {
        return s;
    };
    let store_kind = match t.get("store") {
        None => "local".to_string(),
        Some(n) => match r.string(&n) {
            Some(k @ ("local" | "redis")) => k.to_string(),
            Some(other) => {
                r.error(
                    &n,
                    format!("unknown store \"{other}\" (expected local or redis)"),
                );
                "local".to_string()
            }
            None => "local".to_string(),
        },
    };
    let url_ok = |u: &str| {
        u.starts_with("redis://") || u.starts_with("rediss://") || u.starts_with("unix://")
    };
    let single = t.get("redis_url").and_then(|n| {
        let u = r.string(&n)?.to_string();
        if !url_ok(&u) || redis::parse_redis_url(&u).is_none() {
            r.error(
                &n,
                format!("invalid Redis URL \"{u}\" (redis://host:port/db)"),
            );
            return None;
        }
        Some(u)
    });
    let cluster = t.get("redis_cluster").and_then(|n| {
        let items = r.strings(&n)?;
        if items.is_empty() {
            r.error(&n, "list at least one cluster node");
            return None;
        }
        let mut out = Vec::new();
        for (u, span, path) in items {
            if url_ok(u) && redis::parse_redis_url(u).is_some() {
                out.push(u.to_string());
            } else {
                r.error_at(span, &path, format!("invalid Redis URL \"{u}\""));
            }
        }
        Some(out)
    });
    if store_kind == "redis" {
        s.store = match (single, cluster) {
            (Some(u), None) => Store::Redis(u),
            (None, Some(c)) => Store::RedisCluster(c),
            (Some(_), Some(_)) => {
                r.error_at(
                    t.span(),
                    t.path(),
                    "set redis_url or redis_cluster, not both",
                );
                Store::Local
            }
            (None, None) => {
                r.error_at(
                    t.span(),
                    t.path(),
                    "store = \"redis\" needs redis_url or redis_cluster",
                );
                Store::Local
            }
        };
    }
    if let Some(n) = t.get("redis_timeout") {
        if let Some(d) = r.duration(&n) {
            s.redis_timeout = d;
        }
    }
    if let Some(n) = t.get("lease") {
        if let Some(d) = r.duration(&n) {
            s.lease = d;
        }
    }
    if let Some(n) = t.get("headers") {
        match r.string(&n) {
            Some("both") => s.headers = HeaderFamilies::Both,
            Some("ietf") => s.headers = HeaderFamilies::Ietf,
            Some("x-ratelimit") => s.headers = HeaderFamilies::XRatelimit,
            Some("none") => s.headers = HeaderFamilies::None,
            Some(other) => r.error(
                &n,
                format!("unknown header families \"{other}\" (expected both, ietf, x-ratelimit or none)"),
            ),
            None => {}
        }
    }
    if let Some(n) = t.get("on_store_error") {
        match r.string(&n) {
            Some("local_fallback") => s.on_store_error = OnStoreError::LocalFallback,
            Some("allow") => s.on_store_error = OnStoreError::Allow,
            Some("deny") => s.on_store_error = OnStoreError::Deny,
            Some(other) => r.error(
                &n,
                format!("unknown policy \"{other}\" (expected local_fallback, allow or deny)"),
            ),
            None => {}
        }
    }
    if let Some(n) = t.get("sync") {
        match r.string(&n) {
            Some("exact") => s.sync = SyncMode::Exact,
            Some("batched") => s.sync = SyncMode::Batched,
            Some(other) => r.error(
                &n,
                format!("unknown sync \"{other}\" (expected exact or batched)"),
            ),
            None => {}
        }
    }
    if let Some(n) = t.get("key_prefix") {
        if let Some(p) = r.string(&n) {
            if p.contains(['{', '}']) {
                r.error(
                    &n,
                    "key_prefix must not contain { or } (they delimit Redis Cluster hash tags)",
                );
            } else {
                s.key_prefix = p.to_string();
            }
        }
    }
    if let Some(n) = t.get("max_keys") {
        if let Some(v) = r.integer(&n, 1, 100_000_000) {
            s.max_keys = v as usize;
        }
    }
    if let Some(n) = t.get("batch_size") {
        s.batch_size = r.integer(&n, 1, 1_000_000).map(|v| v as u32);
    }
    if let Some(n) = t.get("tiers") {
        for (name, value) in r.named(&n, "tier") {
            if let Some(tier) = read_tier(r, name, &value) {
                s.tiers.push(tier);
            }
        }
    }
    s
}

fn read_tier(r: &mut Reader<'_>, name: &str, n: &Node<'_, '_>) -> Option<TierSpec> {
    let t = r.table(n)?;
    let before = r.error_count();
    let rps = t.require(r, "rps").and_then(|n| match n.value() {
        toml::de::DeValue::Float(f) => match f.as_str().replace('_', "").parse::<f64>() {
            Ok(v) if v > 0.0 && v.is_finite() => Some(v),
            _ => {
                r.error(&n, "rps must be a positive number");
                None
            }
        },
        _ => r.integer(&n, 1, 10_000_000).map(|v| v as f64),
    });
    let burst = t
        .require(r, "burst")
        .and_then(|n| r.integer(&n, 1, 100_000_000))
        .map(|v| v as u32);
    let quota = |r: &mut Reader<'_>, key: &'static str| {
        t.get(key)
            .and_then(|n| r.integer(&n, 1, i64::MAX))
            .map(|v| v as u64)
    };
    let daily_quota = quota(r, "daily_quota");
    let monthly_quota = quota(r, "monthly_quota");
    let upgrade_url = t
        .get("upgrade_url")
        .and_then(|n| r.string(&n).map(str::to_string));
    if r.error_count() > before {
        return None;
    }
    Some(TierSpec {
        name: name.to_string(),
        rps: rps?,
        burst: burst?,
        daily_quota,
        monthly_quota,
        upgrade_url,
    })
}

/// Reads a route's `rate_limit = { key, default_tier }`; `tiers` are the declared tier names
/// and `has_auth` whether the route authenticates (needed for `key = "consumer"`).
pub fn read_route_limit(
    r: &mut Reader<'_>,
    n: &Node<'_, '_>,
    tiers: &[String],
    has_auth: bool,
) -> Option<RouteLimit> {
    let t = r.table(n)?;
    let before = r.error_count();
    let key = match t.get("key") {
        None => Some(if has_auth {
            LimitKey::Consumer
        } else {
            LimitKey::ClientIp
        }),
        Some(k) => {
            match r.string(&k) {
                Some("consumer") => {
                    if !has_auth {
                        r.error(&k, "key = \"consumer\" needs auth on the route (use client_ip for public routes)");
                    }
                    Some(LimitKey::Consumer)
                }
                Some("client_ip") => Some(LimitKey::ClientIp),
                Some(other) => match other
                    .strip_prefix("header:")
                    .map(|h| HeaderName::from_bytes(h.as_bytes()))
                {
                    Some(Ok(h)) => Some(LimitKey::Header(h)),
                    _ => {
                        r.error(&k, format!("invalid key \"{other}\" (expected consumer, client_ip or header:NAME)"));
                        None
                    }
                },
                None => None,
            }
        }
    };
    let default_tier = t.require(r, "default_tier").and_then(|d| {
        let name = r.string(&d)?;
        match tiers.iter().position(|x| x == name) {
            Some(i) => Some(Ref::new(TierId::new(i), name)),
            None => {
                r.error(&d, format!("unknown tier \"{name}\""));
                None
            }
        }
    });
    if r.error_count() > before {
        return None;
    }
    Some(RouteLimit {
        key: key?,
        default_tier: default_tier?,
    })
}
