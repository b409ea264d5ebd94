//! The cache phases of the `ProxyHttp` impl: they dispatch to the route's
//! [`CachePolicy`](crate::cache::CachePolicy) and the process's [`Cache`]. They run after
//! `request_filter`, so authentication and rate limiting have admitted the request before a
//! cached response is served.

use http::HeaderValue;
use pingora::cache::key::HashBinary;
use pingora::cache::{CacheKey, CacheMeta, CachePhase, ForcedFreshness, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;

use super::ctx::RequestCtx;
use crate::cache::Cache;

/// What the cache did for a request (index into
/// [`CACHE_RESULTS`](crate::metrics::CACHE_RESULTS)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    /// Served from the cache, fresh.
    Hit = 0,
    /// Fetched from the upstream (stored or not).
    Miss = 1,
    /// Served stale (while revalidating, or because the upstream failed).
    Stale = 2,
    /// The upstream confirmed the stored response (304), which was served.
    Revalidated = 3,
}

impl CacheResult {
    /// The `X-Cache` value.
    pub fn header(self) -> &'static str {
        match self {
            CacheResult::Hit => "HIT",
            CacheResult::Miss => "MISS",
            CacheResult::Stale => "STALE",
            CacheResult::Revalidated => "REVALIDATED",
        }
    }

    fn of(phase: CachePhase) -> Self {
        match phase {
            CachePhase::Hit => CacheResult::Hit,
            CachePhase::Stale | CachePhase::StaleUpdating => CacheResult::Stale,
            CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => CacheResult::Revalidated,
            _ => CacheResult::Miss,
        }
    }
}

/// `X-Cache`.
pub static X_CACHE: http::HeaderName = http::HeaderName::from_static("x-cache");

/// `request_cache_filter`: turns the cache on when the route caches this request.
pub fn request_filter(cache: &'static Cache, session: &mut Session, ctx: &mut RequestCtx) {
    let Some(route) = ctx.state.route else { return };
    let Some(caching) = ctx.snapshot.caching(route) else {
        return;
    };
    if caching.policy.applies_to(session.req_header()) {
        let deadline = ctx.snapshot.config().route(route).timeout;
        cache.enable(&mut session.cache, deadline);
        ctx.caching = true;
    }
}

/// `cache_key_callback`.
pub fn key(session: &Session, ctx: &RequestCtx) -> Option<CacheKey> {
    let caching = ctx.snapshot.caching(ctx.state.route?)?;
    Some(
        caching
            .policy
            .key(session.req_header(), ctx.state.identity.as_deref()),
    )
}

/// `cache_hit_filter`: a response stored before a purge that covers it is refetched.
pub fn hit_filter(
    cache: &Cache,
    session: &Session,
    meta: &CacheMeta,
    ctx: &RequestCtx,
) -> Option<ForcedFreshness> {
    let caching = ctx.snapshot.caching(ctx.state.route?)?;
    let purged = cache.purges().purged(
        caching.policy.route(),
        session.req_header().uri.path(),
        meta.created(),
    );
    purged.then_some(ForcedFreshness::ForceMiss)
}

/// `response_cache_filter`.
pub fn response_cacheable(
    session: &Session,
    resp: &ResponseHeader,
    ctx: &RequestCtx,
) -> RespCacheable {
    match ctx.state.route.and_then(|r| ctx.snapshot.caching(r)) {
        Some(caching) => caching
            .policy
            .response_cacheable(session.req_header(), resp),
        None => RespCacheable::Uncacheable(pingora::cache::NoCacheReason::NeverEnabled),
    }
}

/// `cache_vary_filter`.
pub fn variance(meta: &CacheMeta, ctx: &RequestCtx, req: &RequestHeader) -> Option<HashBinary> {
    let caching = ctx.snapshot.caching(ctx.state.route?)?;
    caching.policy.variance(meta, req)
}

/// In `response_filter`: what the cache did, as `X-Cache` and for the metrics and the log.
pub fn response_filter(session: &Session, resp: &mut ResponseHeader, ctx: &mut RequestCtx) {
    if !ctx.caching || ctx.state.gateway_response {
        return;
    }
    let result = CacheResult::of(session.cache.phase());
    ctx.cache = Some(result);
    resp.insert_header_static(
        &X_CACHE,
        "X-Cache",
        HeaderValue::from_static(result.header()),
    );
}

/// A stale response may be served while one request revalidates it (within the window its
/// `stale-while-revalidate` or the route's setting allows), or when the response could not be
/// fetched (within its `stale-if-error` window): an upstream failure, a 5xx, or no backend to
/// send to (open breakers, failed health checks). A failure of the client's is not one.
pub fn should_serve_stale(error: Option<&pingora::Error>) -> bool {
    error.is_none_or(|e| e.esource() != &pingora::ErrorSource::Downstream)
}
