//! The `[upstreams.NAME]` sections: backend pools, how to balance them, their timeouts and
//! active health checks.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use http::HeaderName;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use super::reader::{Node, Reader};
use super::ser;

/// Largest accepted backend weight; keeps the smooth round-robin schedule small.
pub const MAX_WEIGHT: u32 = 1000;

/// A validated upstream: a named pool of backends.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpstreamSpec {
    /// Name used by routes, metrics and logs.
    pub name: String,
    /// How a backend is chosen for each request (rendered as `balance` and `hash_key`).
    #[serde(flatten)]
    pub balance: Balance,
    /// The pool, in declaration order; addresses are unique.
    pub backends: Vec<BackendSpec>,
    /// Per-attempt timeouts towards the backends.
    #[serde(flatten)]
    pub timeouts: Timeouts,
    /// Active health checking; `None` means every backend counts as healthy.
    pub health_check: Option<HealthCheckSpec>,
    /// Concurrency cap (0: none); beyond it requests get 503 + Retry-After.
    pub max_inflight: u32,
    /// Per-backend circuit breaker, if configured.
    pub circuit_breaker: Option<super::resilience::BreakerSpec>,
    /// Retry policy, if configured.
    pub retry: Option<super::resilience::RetrySpec>,
}

/// Backend selection policy.
#[derive(Debug, Clone, PartialEq)]
pub enum Balance {
    /// Smooth weighted round robin (nginx's algorithm).
    RoundRobin,
    /// Fewest in-flight requests relative to weight; ties rotate.
    LeastConn,
    /// Ketama consistent hashing on a request key; requests without the key use round robin.
    ConsistentHash(HashKey),
}

impl Serialize for Balance {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (name, key) = match self {
            Balance::RoundRobin => ("round_robin", None),
            Balance::LeastConn => ("least_conn", None),
            Balance::ConsistentHash(k) => ("consistent_hash", Some(k.to_string())),
        };
        let mut map = s.serialize_map(Some(2))?;
        map.serialize_entry("balance", name)?;
        map.serialize_entry("hash_key", &key)?;
        map.end()
    }
}

/// The request property a consistent hash is computed on.
#[derive(Debug, Clone, PartialEq)]
pub enum HashKey {
    /// The value of a request header.
    Header(HeaderName),
    /// The value of a cookie.
    Cookie(String),
    /// The client IP (see `trusted_proxies`).
    ClientIp,
    /// The request path, without the query string.
    Path,
}

impl std::fmt::Display for HashKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HashKey::Header(h) => write!(f, "header:{h}"),
            HashKey::Cookie(c) => write!(f, "cookie:{c}"),
            HashKey::ClientIp => f.write_str("client_ip"),
            HashKey::Path => f.write_str("path"),
        }
    }
}

/// One backend of a pool.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackendSpec {
    /// Resolved socket address.
    pub addr: SocketAddr,
    /// Relative share of traffic, 1..=1000.
    pub weight: u32,
}

/// Timeouts towards the upstream, applied to every attempt.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Timeouts {
    /// TCP connect.
    #[serde(rename = "connect_timeout", serialize_with = "ser::duration")]
    pub connect: Duration,
    /// Each read from the upstream; expiry answers 504.
    #[serde(rename = "read_timeout", serialize_with = "ser::duration")]
    pub read: Duration,
    /// Each write to the upstream.
    #[serde(rename = "write_timeout", serialize_with = "ser::duration")]
    pub write: Duration,
    /// How long a pooled keep-alive connection may stay idle.
    #[serde(rename = "idle_timeout", serialize_with = "ser::duration")]
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            read: Duration::from_secs(60),
            write: Duration::from_secs(60),
            idle: Duration::from_secs(60),
        }
    }
}

/// What an active health check does (rendered as `type`, `path` and `host`).
#[derive(Debug, Clone, PartialEq)]
pub enum HealthCheckKind {
    /// `GET path` must answer 200.
    Http {
        /// Request path.
        path: String,
        /// `Host` header sent with the check.
        host: String,
    },
    /// A TCP connect must succeed.
    Tcp,
}

impl Serialize for HealthCheckKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (kind, path, host) = match self {
            HealthCheckKind::Http { path, host } => ("http", Some(path), Some(host)),
            HealthCheckKind::Tcp => ("tcp", None, None),
        };
        let mut map = s.serialize_map(Some(3))?;
        map.serialize_entry("type", kind)?;
        map.serialize_entry("path", &path)?;
        map.serialize_entry("host", &host)?;
        map.end()
    }
}

/// Active health check settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthCheckSpec {
    /// HTTP or TCP.
    #[serde(flatten)]
    pub kind: HealthCheckKind,
    /// Time between checks of one backend.
    #[serde(serialize_with = "ser::duration")]
    pub interval: Duration,
    /// Budget for one check.
    #[serde(serialize_with = "ser::duration")]
    pub timeout: Duration,
    /// Consecutive successes that bring an unhealthy backend back.
    pub healthy_threshold: u32,
    /// Consecutive failures that take a healthy backend out.
    pub unhealthy_threshold: u32,
}

pub use super::reader::valid_name;

/// Reads one upstream table named `name`.
pub fn read(r: &mut Reader<'_>, name: &str, node: &Node<'_, '_>) -> Option<UpstreamSpec> {
    let t = r.table(node)?;
    let errors_before = r.error_count();
    let mut ok = true;

    let balance_kind = match t.get("balance") {
        None => Some("round_robin"),
        Some(n) => match r.string(&n) {
            Some(b @ ("round_robin" | "least_conn" | "consistent_hash")) => Some(b),
            Some(other) => {
                r.error(
                    &n,
                    format!("unknown balance \"{other}\" (expected round_robin, least_conn or consistent_hash)"),
                );
                None
            }
            None => None,
        },
    };
    let hash_key = t.get("hash_key").and_then(|n| {
        let key = read_hash_key(r, &n);
        if key.is_some() && balance_kind.is_some_and(|b| b != "consistent_hash") {
            r.error(&n, "hash_key applies only to balance = \"consistent_hash\"");
        }
        key
    });
    let balance = match balance_kind {
        Some("least_conn") => Balance::LeastConn,
        Some("consistent_hash") => match hash_key {
            Some(k) => Balance::ConsistentHash(k),
            None => {
                if t.get("hash_key").is_none() {
                    r.error_at(
                        t.span(),
                        t.path(),
                        "balance = \"consistent_hash\" needs hash_key (header:NAME, cookie:NAME, client_ip or path)",
                    );
                }
                ok = false;
                Balance::RoundRobin
            }
        },
        Some(_) => Balance::RoundRobin,
        None => {
            ok = false;
            Balance::RoundRobin
        }
    };

    let mut backends = Vec::new();
    if let Some(n) = t.require(r, "backends") {
        match r.array(&n) {
            Some(items) if items.is_empty() => {
                r.error(&n, "an upstream needs at least one backend");
            }
            Some(items) => {
                for item in &items {
                    if let Some(b) = read_backend(r, item) {
                        if backends.iter().any(|x: &BackendSpec| x.addr == b.addr) {
                            r.error(item, format!("duplicate backend address {}", b.addr));
                        } else {
                            backends.push(b);
                        }
                    }
                }
            }
            None => {}
        }
    }

    let mut timeouts = Timeouts::default();
    for (key, slot) in [
        ("connect_timeout", &mut timeouts.connect),
        ("read_timeout", &mut timeouts.read),
        ("write_timeout", &mut timeouts.write),
        ("idle_timeout", &mut timeouts.idle),
    ] {
        if let Some(n) = t.get(key) {
            if let Some(d) = r.duration(&n) {
                *slot = d;
            }
        }
    }

    let health_check = t.get("health_check").and_then(|n| read_health(r, &n));
    let max_inflight = t
        .get("max_inflight")
        .and_then(|n| r.integer(&n, 0, 10_000_000))
        .map_or(0, |v| v as u32);
    let circuit_breaker = t
        .get("circuit_breaker")
        .and_then(|n| super::resilience::read_breaker(r, &n));
    let retry = t
        .get("retry")
        .and_then(|n| super::resilience::read_retry(r, &n));

    if !ok || r.error_count() > errors_before {
        return None;
    }
    Some(UpstreamSpec {
        name: name.to_string(),
        balance,
        backends,
        timeouts,
        health_check,
        max_inflight,
        circuit_breaker,
        retry,
    })
}

fn read_hash_key(r: &mut Reader<'_>, n: &Node<'_, '_>) -> Option<HashKey> {
    let text = r.string(n)?;
    let key = if let Some(h) = text.strip_prefix("header:") {
        HeaderName::from_bytes(h.as_bytes())
            .ok()
            .map(HashKey::Header)
    } else if let Some(c) = text.strip_prefix("cookie:") {
        (!c.is_empty() && !c.contains([';', '=', ' '])).then(|| HashKey::Cookie(c.to_string()))
    } else if text == "client_ip" {
        Some(HashKey::ClientIp)
    } else if text == "path" {
        Some(HashKey::Path)
    } else {
        None
    };
    if key.is_none() {
        r.error(
            n,
            format!("invalid hash_key \"{text}\" (expected header:NAME, cookie:NAME, client_ip or path)"),
        );
    }
    key
}

fn read_backend(r: &mut Reader<'_>, n: &Node<'_, '_>) -> Option<BackendSpec> {
    let t = r.table(n)?;
    let addr_node = t.require(r, "addr");
    let addr = addr_node.as_ref().and_then(|a| {
        let text = r.string(a)?;
        let resolved = resolve(text);
        if resolved.is_none() {
            r.error(
                a,
                format!("invalid backend address \"{text}\" (expected IP:PORT or HOST:PORT that resolves)"),
            );
        }
        resolved
    });
    let weight = match t.get("weight") {
        None => Some(1),
        Some(w) => r.integer(&w, 1, i64::from(MAX_WEIGHT)).map(|v| v as u32),
    };
    Some(BackendSpec {
        addr: addr?,
        weight: weight?,
    })
}

/// Resolves `HOST:PORT` once, at load time. IP literals never touch DNS.
fn resolve(text: &str) -> Option<SocketAddr> {
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Some(a);
    }
    let (host, port) = text.rsplit_once(':')?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return None;
    }
    text.to_socket_addrs().ok()?.next()
}

fn read_health(r: &mut Reader<'_>, n: &Node<'_, '_>) -> Option<HealthCheckSpec> {
    let t = r.table(n)?;
    let mut ok = true;
    let is_http = match t.get("type") {
        None => true,
        Some(n) => match r.string(&n) {
            Some("http") => true,
            Some("tcp") => false,
            Some(other) => {
                r.error(
                    &n,
                    format!("unknown health check type \"{other}\" (expected http or tcp)"),
                );
                ok = false;
                true
            }
            None => {
                ok = false;
                true
            }
        },
    };
    let mut path = "/health".to_string();
    if let Some(n) = t.get("path") {
        match r.string(&n) {
            Some(p) if p.starts_with('/') && http::uri::PathAndQuery::try_from(p).is_ok() => {
                path = p.to_string()
            }
            Some(p) => {
                r.error(
                    &n,
                    format!("invalid health check path \"{p}\" (must start with /)"),
                );
                ok = false;
            }
            None => ok = false,
        }
    }
    let mut host = "localhost".to_string();
    if let Some(n) = t.get("host") {
        match r.string(&n) {
            Some(h) if http::HeaderValue::from_str(h).is_ok() && !h.is_empty() => {
                host = h.to_string()
            }
            Some(_) => {
                r.error(&n, "invalid Host header value");
                ok = false;
            }
            None => ok = false,
        }
    }
    let mut duration = |key: &'static str, default: Duration| match t.get(key) {
        None => Some(default),
        Some(n) => r.duration(&n),
    };
    let interval = duration("interval", Duration::from_secs(5));
    let timeout = duration("timeout", Duration::from_secs(1));
    let mut threshold = |key: &'static str| match t.get(key) {
        None => Some(2),
        Some(n) => r.integer(&n, 1, 100).map(|v| v as u32),
    };
    let healthy_threshold = threshold("healthy_threshold");
    let unhealthy_threshold = threshold("unhealthy_threshold");
    if !ok {
        return None;
    }
    Some(HealthCheckSpec {
        kind: if is_http {
            HealthCheckKind::Http { path, host }
        } else {
            HealthCheckKind::Tcp
        },
        interval: interval?,
        timeout: timeout?,
        healthy_threshold: healthy_threshold?,
        unhealthy_threshold: unhealthy_threshold?,
    })
}
