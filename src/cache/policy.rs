//! A route's cache policy, compiled once per snapshot from its `cache` table: which requests
//! use the cache, under which key, which responses are stored and for how long, and which
//! request headers select a variant.
//!
//! Decisions (where HTTP caching leaves a choice, what nginx and RFC 9111 do):
//! - Only GET and HEAD without a body or an `Upgrade` use the cache; a HEAD miss fetches a GET
//!   upstream (Pingora does this), so HEAD and GET share entries.
//! - The key is the route, the host (`Host` or the HTTP/2 authority, without the port) and
//!   the configured parts ([`KeyPart`]), each length-prefixed before hashing (no two different requests frame to the same bytes).
//! - A response is stored when its status is listed, it sets no cookie, its `Vary` is not `*`
//!   and its `Cache-Control` has neither `no-store` nor `private`. Freshness: `s-maxage`, else
//!   `max-age`, else `Expires`, else the route's `ttl`; never beyond `max_ttl`. `no-cache`
//!   stores it as always stale (revalidated before each use). A stale response is served (while
//!   revalidating, or when the upstream fails) within the windows the upstream's
//!   `stale-while-revalidate` / `stale-if-error` give, else the route's; never longer than the
//!   route's `max_ttl` or its configured windows, whichever is longer.
//! - On a route whose key has no consumer, a request carrying `Authorization` stores its
//!   response only when the response allows it (`public`, `s-maxage` or `must-revalidate`,
//!   RFC 9111 §3.5). With the consumer in the key every consumer has entries of its own; with
//!   `shared = true` the operator has declared that all consumers get the same response.
//! - Client `Cache-Control` request directives are ignored (as nginx does by default): a
//!   client could otherwise send every request past the cache to the upstream.

use std::time::{Duration, SystemTime};

use blake2::Digest;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, SET_COOKIE, TRANSFER_ENCODING, UPGRADE, VARY};
use http::HeaderName;
use pingora::cache::cache_control::{CacheControl, Cacheable, InterpretCacheControl};
use pingora::cache::key::HashBinary;
use pingora::cache::{filters, CacheKey, CacheMeta, CacheMetaDefaults, NoCacheReason};
use pingora::cache::{RespCacheable, VarianceBuilder};
use pingora::http::{RequestHeader, ResponseHeader};

use crate::auth::Identity;
use crate::config::cache::{KeyPart, RouteCache};
use crate::routing::{request_host, strip_port};

/// The `NoCacheReason::Custom` of a response whose status is not stored: not remembered as
/// uncacheable (the next response of the same key may well be a 200).
pub const STATUS_NOT_CACHED: &str = "status not cached";

type Blake2b128 = blake2::Blake2b<blake2::digest::consts::U16>;

/// One route's cache policy.
pub struct CachePolicy {
    route: String,
    spec: RouteCache,
    defaults: CacheMetaDefaults,
    /// The Authorization rule of shared caches applies (no consumer in the key, not shared).
    authorization_rule: bool,
}

impl CachePolicy {
    /// The policy of route `route` with settings `spec`.
    pub fn new(route: &str, spec: &RouteCache) -> Self {
        let secs =
            |d: Option<Duration>| d.map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX));
        CachePolicy {
            route: route.to_string(),
            defaults: CacheMetaDefaults::new(
                // Freshness without upstream directives is decided in `response_cacheable`.
                |_| None,
                secs(spec.stale_while_revalidate),
                secs(spec.stale_if_error),
            ),
            authorization_rule: !spec.shared && !spec.key.contains(&KeyPart::Consumer),
            spec: spec.clone(),
        }
    }

    /// The route's name (purge records are kept by it).
    pub fn route(&self) -> &str {
        &self.route
    }

    /// The longest a stored response may be served stale (whatever the upstream asks): the
    /// route's `max_ttl`, or its configured stale windows when longer.
    fn stale_cap(&self) -> u32 {
        let longest = [
            Some(self.spec.max_ttl),
            self.spec.stale_while_revalidate,
            self.spec.stale_if_error,
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or_default();
        u32::try_from(longest.as_secs()).unwrap_or(u32::MAX)
    }

    /// How long after it was stored a response of this route may still be served (fresh, then
    /// stale): how long a purge record must be kept.
    pub fn longest_life(&self) -> Duration {
        self.spec.max_ttl + Duration::from_secs(u64::from(self.stale_cap()))
    }

    /// Whether this request uses the cache.
    pub fn applies_to(&self, req: &RequestHeader) -> bool {
        // (`methods` holds only GET and HEAD.)
        let method_ok = self.spec.methods.contains(&req.method);
        let has_body = req.headers.contains_key(TRANSFER_ENCODING)
            || req
                .headers
                .get(CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0");
        method_ok && !has_body && !req.headers.contains_key(UPGRADE)
    }

    /// The cache key of `req` (answered for `identity`, on authenticated routes).
    pub fn key(&self, req: &RequestHeader, identity: Option<&Identity>) -> CacheKey {
        let mut h = Blake2b128::new();
        let mut part = |bytes: &[u8]| {
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        part(self.route.as_bytes());
        // The name the route matched on: `Host` (HTTP/1.1) or the authority (HTTP/2), without
        // the port, so that both protocols and every listener share entries.
        let host = request_host(req)
            .map(|h| strip_port(h).as_bytes())
            .unwrap_or_default();
        let mut lower = [0u8; 256];
        match host.len() {
            n if n <= lower.len() => {
                lower[..n].copy_from_slice(host);
                lower[..n].make_ascii_lowercase();
                part(&lower[..n]);
            }
            _ => part(&host.to_ascii_lowercase()),
        }
        for p in &self.spec.key {
            match p {
                KeyPart::Path => part(req.uri.path().as_bytes()),
                KeyPart::Query => part(req.uri.query().unwrap_or_default().as_bytes()),
                KeyPart::Consumer => {
                    let (method, consumer) =
                        identity.map_or(("", ""), |i| (i.method.as_str(), i.consumer.as_str()));
                    part(method.as_bytes());
                    part(consumer.as_bytes());
                }
            }
        }
        let mut key = CacheKey::new(Vec::new(), String::new());
        // Hashed once here: Pingora asks for the key's hash many times per request.
        key.set_primary_bin_override(h.finalize().into());
        key
    }

    /// Whether (and for how long) `resp` is stored; `req` is the request it answers.
    pub fn response_cacheable(&self, req: &RequestHeader, resp: &ResponseHeader) -> RespCacheable {
        let uncacheable =
            |reason: &'static str| RespCacheable::Uncacheable(NoCacheReason::Custom(reason));
        if !self.spec.statuses.contains(&resp.status.as_u16()) {
            return uncacheable(STATUS_NOT_CACHED);
        }
        if resp.headers.contains_key(SET_COOKIE) {
            return uncacheable("sets a cookie");
        }
        if vary_names(resp).any(|n| n == "*") {
            return uncacheable("Vary: *");
        }
        let cc = CacheControl::from_resp_headers(resp);
        if cc
            .as_ref()
            .is_some_and(|cc| cc.is_cacheable() == Cacheable::No)
        {
            return RespCacheable::Uncacheable(NoCacheReason::OriginNotCache);
        }
        if self.authorization_rule
            && req.headers.contains_key(AUTHORIZATION)
            && !cc
                .as_ref()
                .is_some_and(|cc| cc.allow_caching_authorized_req())
        {
            return uncacheable("request carries Authorization");
        }
        let now = SystemTime::now();
        let max = now + self.spec.max_ttl;
        let fresh_until = match cc.as_ref().and_then(|cc| cc.fresh_duration()) {
            // Always stale: revalidated before each use.
            Some(d) if d.is_zero() => now - Duration::from_secs(1),
            Some(d) => now + d,
            None => filters::calculate_expires_header_time(resp).unwrap_or(now + self.spec.ttl),
        }
        .min(max);
        let (swr, sie) = filters::calculate_serve_stale_durations(cc.as_ref(), &self.defaults);
        let cap = self.stale_cap();
        let (swr, sie) = (swr.min(cap), sie.min(cap));
        let mut header = resp.clone();
        if let Some(cc) = &cc {
            cc.strip_private_headers(&mut header);
        }
        RespCacheable::Cacheable(CacheMeta::new(fresh_until, now, swr, sie, header))
    }

    /// The variant of `meta` that `req` asks for: the values of the request headers that the
    /// route's `vary` and the stored response's `Vary` name. `None`: no variants.
    pub fn variance(&self, meta: &CacheMeta, req: &RequestHeader) -> Option<HashBinary> {
        let stored = meta.response_header();
        if self.spec.vary.is_empty() && !stored.headers.contains_key(VARY) {
            return None;
        }
        // The builder keeps one value per name: a header named twice counts once.
        let upstream = vary_names(stored).filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok());
        let mut variance = VarianceBuilder::new();
        for name in self.spec.vary.iter().cloned().chain(upstream) {
            let value = req
                .headers
                .get_all(&name)
                .iter()
                .map(|v| v.as_bytes())
                .collect::<Vec<_>>()
                .join(&b","[..]);
            variance.add_owned_name_value(name.as_str().to_string(), value);
        }
        variance.finalize()
    }
}

/// The header names a response's `Vary` lists (trimmed; `*` as is).
fn vary_names(resp: &ResponseHeader) -> impl Iterator<Item = &str> {
    resp.headers
        .get_all(VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;
    use pingora::cache::key::CacheHashKey;

    fn spec() -> RouteCache {
        RouteCache {
            ttl: Duration::from_secs(30),
            max_ttl: Duration::from_secs(600),
            methods: vec![Method::GET, Method::HEAD],
            vary: vec![],
            key: vec![KeyPart::Path, KeyPart::Query],
            statuses: vec![200, 203, 204],
            shared: false,
            stale_while_revalidate: None,
            stale_if_error: None,
        }
    }

    fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, uri.as_bytes(), None).unwrap();
        r.insert_header("host", "api.example.com").unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn ttl(p: &CachePolicy, r: &ResponseHeader) -> Option<u64> {
        match p.response_cacheable(&req("GET", "/", &[]), r) {
            RespCacheable::Cacheable(m) => Some(
                m.fresh_until()
                    .duration_since(SystemTime::now())
                    .map_or(0, |d| d.as_secs() + 1),
            ),
            RespCacheable::Uncacheable(_) => None,
        }
    }

    #[test]
    fn freshness_follows_the_upstream_within_max_ttl() {
        let p = CachePolicy::new("r", &spec());
        assert_eq!(ttl(&p, &resp(200, &[])), Some(30));
        assert_eq!(
            ttl(&p, &resp(200, &[("cache-control", "max-age=100")])),
            Some(100)
        );
        assert_eq!(
            ttl(
                &p,
                &resp(200, &[("cache-control", "max-age=100, s-maxage=5")])
            ),
            Some(5)
        );
        assert_eq!(
            ttl(&p, &resp(200, &[("cache-control", "max-age=99999")])),
            Some(600)
        );
        assert_eq!(
            ttl(&p, &resp(200, &[("cache-control", "no-cache")])),
            Some(0)
        );
        for refused in [
            resp(200, &[("cache-control", "no-store")]),
            resp(200, &[("cache-control", "private, max-age=60")]),
            resp(200, &[("set-cookie", "a=b")]),
            resp(200, &[("vary", "Accept, *")]),
            resp(404, &[]),
            resp(500, &[("cache-control", "max-age=60")]),
        ] {
            assert_eq!(ttl(&p, &refused), None, "{refused:?}");
        }
    }

    #[test]
    fn authorization_needs_the_responses_consent_unless_keyed_by_consumer() {
        let p = CachePolicy::new("r", &spec());
        let with_auth = req("GET", "/", &[("authorization", "Bearer x")]);
        let plain = resp(200, &[("cache-control", "max-age=60")]);
        assert!(matches!(
            p.response_cacheable(&with_auth, &plain),
            RespCacheable::Uncacheable(_)
        ));
        let public = resp(200, &[("cache-control", "public, max-age=60")]);
        assert!(matches!(
            p.response_cacheable(&with_auth, &public),
            RespCacheable::Cacheable(_)
        ));
        let mut per_consumer = spec();
        per_consumer.key.push(KeyPart::Consumer);
        let p = CachePolicy::new("r", &per_consumer);
        assert!(matches!(
            p.response_cacheable(&with_auth, &plain),
            RespCacheable::Cacheable(_)
        ));
    }

    #[test]
    fn keys_separate_routes_hosts_paths_queries_and_frame_their_parts() {
        let p = CachePolicy::new("r", &spec());
        let k = |uri: &str, host: &str| {
            let mut r = req("GET", uri, &[]);
            r.insert_header("host", host).unwrap();
            p.key(&r, None).primary_bin()
        };
        assert_eq!(
            k("/a?x=1", "api.example.com"),
            k("/a?x=1", "API.example.com")
        );
        assert_eq!(
            k("/a?x=1", "api.example.com"),
            k("/a?x=1", "api.example.com:8443")
        );
        // HTTP/2: no Host header, the authority instead.
        let mut h2 = RequestHeader::build("GET", b"/a?x=1", None).unwrap();
        h2.set_uri(http::Uri::from_static("https://api.example.com:8443/a?x=1"));
        h2.set_version(http::Version::HTTP_2);
        assert_eq!(
            p.key(&h2, None).primary_bin(),
            k("/a?x=1", "api.example.com")
        );
        assert_ne!(
            k("/a?x=1", "api.example.com"),
            k("/a?x=2", "api.example.com")
        );
        assert_ne!(k("/a", "api.example.com"), k("/b", "api.example.com"));
        assert_ne!(k("/a", "api.example.com"), k("/a", "other.example.com"));
        let other = CachePolicy::new("s", &spec());
        assert_ne!(
            p.key(&req("GET", "/a", &[]), None).primary_bin(),
            other.key(&req("GET", "/a", &[]), None).primary_bin()
        );
    }

    #[test]
    fn only_bodiless_get_and_head_use_the_cache() {
        let p = CachePolicy::new("r", &spec());
        assert!(p.applies_to(&req("GET", "/", &[])));
        assert!(p.applies_to(&req("HEAD", "/", &[])));
        assert!(!p.applies_to(&req("POST", "/", &[])));
        assert!(!p.applies_to(&req("GET", "/", &[("content-length", "5")])));
        assert!(!p.applies_to(&req("GET", "/", &[("upgrade", "websocket")])));
        let mut get_only = spec();
        get_only.methods = vec![Method::GET];
        assert!(!CachePolicy::new("r", &get_only).applies_to(&req("HEAD", "/", &[])));
    }

    #[test]
    fn variants_follow_configured_and_upstream_vary() {
        let mut s = spec();
        s.vary = vec![HeaderName::from_static("accept-encoding")];
        let p = CachePolicy::new("r", &s);
        let stored = match p.response_cacheable(
            &req("GET", "/", &[]),
            &resp(200, &[("vary", "Accept-Language")]),
        ) {
            RespCacheable::Cacheable(m) => m,
            RespCacheable::Uncacheable(r) => panic!("{r:?}"),
        };
        let v = |h: &[(&str, &str)]| p.variance(&stored, &req("GET", "/", h));
        assert_eq!(
            v(&[("accept-encoding", "gzip")]),
            v(&[("accept-encoding", "gzip")])
        );
        assert_ne!(
            v(&[("accept-encoding", "gzip")]),
            v(&[("accept-encoding", "br")])
        );
        assert_ne!(
            v(&[("accept-language", "en")]),
            v(&[("accept-language", "fr")])
        );
        assert!(v(&[]).is_some());
        let plain = CachePolicy::new("r", &spec());
        assert!(
            plain.variance(&stored, &req("GET", "/", &[])).is_some(),
            "the upstream's Vary applies on a route without vary"
        );
    }
}
