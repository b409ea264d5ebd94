//! `[cache]` (the response cache's memory, fixed at start) and each route's `cache` table
//! (what the route caches, for how long, under which key).

use std::time::Duration;

use http::{HeaderName, Method};
use serde::Serialize;

use super::reader::{Node, Reader};
use super::ser;

/// The `[cache]` settings: the memory all cached routes share. Fixed at start (the storage,
/// its eviction manager and the cache lock live for the whole process); a reload that changes
/// them reports that it needs an upgrade.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CacheSettings {
    /// Bytes of responses (bodies plus headers) kept at most; least recently used go first.
    pub max_size: u64,
    /// A larger response is passed through, not stored.
    pub max_object_size: u64,
    /// How long concurrent misses of one key wait for the request that fetches it before
    /// they fetch it themselves.
    #[serde(serialize_with = "ser::duration")]
    pub lock_timeout: Duration,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            max_size: 256 << 20,
            max_object_size: 8 << 20,
            lock_timeout: Duration::from_secs(10),
        }
    }
}

/// Largest `[cache] max_size`: 64 GiB.
const MAX_CACHE_SIZE: u64 = 64 << 30;

/// Reads `[cache]`.
pub fn read(r: &mut Reader<'_>, node: Option<&Node<'_, '_>>) -> CacheSettings {
    let mut s = CacheSettings::default();
    let Some(node) = node else { return s };
    let Some(t) = r.table(node) else { return s };
    if let Some(n) = t.get("max_size") {
        match r.size(&n, MAX_CACHE_SIZE) {
            Some(0) => r.error(&n, "max_size must be greater than zero"),
            Some(v) => s.max_size = v,
            None => {}
        }
    }
    let object = t.get("max_object_size");
    if let Some(n) = &object {
        match r.size(n, MAX_CACHE_SIZE) {
            Some(0) => r.error(n, "max_object_size must be greater than zero"),
            Some(v) => s.max_object_size = v,
            None => {}
        }
    }
    if s.max_object_size > s.max_size {
        match &object {
            Some(n) => r.error(n, "max_object_size must not exceed max_size"),
            // Only max_size given, below the default object size: objects up to all of it.
            None => s.max_object_size = s.max_size,
        }
    }
    if let Some(n) = t.get("lock_timeout") {
        if let Some(d) = r.duration(&n) {
            s.lock_timeout = d;
        }
    }
    s
}

/// One part of a route's cache key (besides the route and the `Host`, always part of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyPart {
    /// The request path.
    Path,
    /// The query string, as sent.
    Query,
    /// The authenticated consumer (with the provider that authenticated it).
    Consumer,
}

/// A route's `cache` table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteCache {
    /// Freshness when the upstream gives none (no `Cache-Control` max-age / s-maxage, no
    /// `Expires`).
    #[serde(serialize_with = "ser::duration")]
    pub ttl: Duration,
    /// Freshness at most, whatever the upstream says.
    #[serde(serialize_with = "ser::duration")]
    pub max_ttl: Duration,
    /// Cached methods (GET and HEAD; a HEAD is answered from a cached GET).
    #[serde(serialize_with = "ser::methods")]
    pub methods: Vec<Method>,
    /// Request headers every response varies on, besides those the upstream's `Vary` names.
    #[serde(serialize_with = "ser::header_names")]
    pub vary: Vec<HeaderName>,
    /// What identifies a cached response besides the route and the `Host`.
    pub key: Vec<KeyPart>,
    /// Response statuses stored (2xx other than 206, and 301 and 404 when listed).
    pub statuses: Vec<u16>,
    /// On an authenticated route: every consumer gets the same response, so they share the
    /// entries (the key need not hold the consumer).
    pub shared: bool,
    /// A stale response may be served while one request revalidates it in the background,
    /// unless the upstream's `Cache-Control` says otherwise.
    #[serde(serialize_with = "ser::opt_duration")]
    pub stale_while_revalidate: Option<Duration>,
    /// A stale response may be served when the upstream fails (connect error, timeout, 5xx),
    /// unless the upstream's `Cache-Control` says otherwise.
    #[serde(serialize_with = "ser::opt_duration")]
    pub stale_if_error: Option<Duration>,
}

/// Statuses cached when `statuses` is not given.
const DEFAULT_STATUSES: [u16; 3] = [200, 203, 204];

/// Reads a route's `cache` table; `authenticated`: the route has `auth`.
pub fn read_route(
    r: &mut Reader<'_>,
    node: &Node<'_, '_>,
    authenticated: bool,
) -> Option<RouteCache> {
    let t = r.table(node)?;
    let errors_before = r.error_count();
    let ttl_node = t.get("ttl");
    let ttl = ttl_node
        .as_ref()
        .and_then(|n| r.duration(n))
        .unwrap_or(Duration::from_secs(60));
    let max_ttl_node = t.get("max_ttl");
    let max_ttl = max_ttl_node
        .as_ref()
        .and_then(|n| r.duration(n))
        .unwrap_or(Duration::from_secs(3600).max(ttl));
    if ttl > max_ttl {
        let at = max_ttl_node.as_ref().or(ttl_node.as_ref());
        if let Some(n) = at {
            r.error(n, "ttl must not exceed max_ttl");
        }
    }
    let mut methods = vec![Method::GET, Method::HEAD];
    if let Some(n) = t.get("methods") {
        if let Some(items) = r.strings(&n) {
            methods.clear();
            for (text, span, path) in items {
                match text.to_ascii_uppercase().as_str() {
                    "GET" if !methods.contains(&Method::GET) => methods.push(Method::GET),
                    "HEAD" if !methods.contains(&Method::HEAD) => methods.push(Method::HEAD),
                    "GET" | "HEAD" => {}
                    _ => r.error_at(
                        span,
                        &path,
                        format!("\"{text}\" responses are not cached (only GET and HEAD)"),
                    ),
                }
            }
            if methods.is_empty() {
                r.error(
                    &n,
                    "methods must not be empty (omit cache to cache nothing)",
                );
            }
        }
    }
    let mut vary = Vec::new();
    if let Some(n) = t.get("vary") {
        for (text, span, path) in r.strings(&n).unwrap_or_default() {
            match HeaderName::from_bytes(text.as_bytes()) {
                Ok(name) if !vary.contains(&name) => vary.push(name),
                Ok(_) => {}
                Err(_) => r.error_at(span, &path, format!("invalid header name \"{text}\"")),
            }
        }
    }
    let shared = t.get("shared").and_then(|n| r.boolean(&n)).unwrap_or(false);
    let key = match t.get("key") {
        None => {
            let mut key = vec![KeyPart::Path, KeyPart::Query];
            if authenticated && !shared {
                key.push(KeyPart::Consumer);
            }
            key
        }
        Some(n) => {
            let mut key = Vec::new();
            for (text, span, path) in r.strings(&n).unwrap_or_default() {
                let part = match text {
                    "path" => KeyPart::Path,
                    "query" => KeyPart::Query,
                    "consumer" => KeyPart::Consumer,
                    _ => {
                        r.error_at(
                            span,
                            &path,
                            format!(
                                "unknown key part \"{text}\" (expected path, query or consumer; \
                                 the route and the Host are always part of the key)"
                            ),
                        );
                        continue;
                    }
                };
                if !key.contains(&part) {
                    key.push(part);
                }
            }
            if !key.contains(&KeyPart::Path) && r.error_count() == errors_before {
                r.error(&n, "key must include \"path\"");
            }
            if key.contains(&KeyPart::Consumer) && !authenticated {
                r.error(
                    &n,
                    "\"consumer\" in the key needs auth on the route (a public route has no consumer)",
                );
            }
            if authenticated && !shared && !key.contains(&KeyPart::Consumer) {
                r.error(
                    &n,
                    "on an authenticated route the key must include \"consumer\" (or set \
                     shared = true when every consumer gets the same response)",
                );
            }
            key
        }
    };
    let mut statuses = DEFAULT_STATUSES.to_vec();
    if let Some(n) = t.get("statuses") {
        if let Some(items) = r.array(&n) {
            statuses.clear();
            for item in &items {
                let Some(code) = r.integer(item, 100, 599) else {
                    continue;
                };
                let code = code as u16;
                if !((200..300).contains(&code) && code != 206) && code != 301 && code != 404 {
                    r.error(
                        item,
                        format!("{code} responses are not cached (2xx other than 206, 301 and 404 can be)"),
                    );
                } else if !statuses.contains(&code) {
                    statuses.push(code);
                }
            }
            if items.is_empty() {
                r.error(
                    &n,
                    "statuses must not be empty (omit cache to cache nothing)",
                );
            }
        }
    }
    let stale_while_revalidate = t.get("stale_while_revalidate").and_then(|n| r.duration(&n));
    let stale_if_error = t.get("stale_if_error").and_then(|n| r.duration(&n));
    if r.error_count() > errors_before {
        return None;
    }
    Some(RouteCache {
        ttl,
        max_ttl,
        methods,
        vary,
        key,
        statuses,
        shared,
        stale_while_revalidate,
        stale_if_error,
    })
}
