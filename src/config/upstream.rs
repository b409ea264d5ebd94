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
    /// The protocol spoken to the backends.
    pub protocol: Protocol,
    /// TLS towards the backends, if any.
    pub tls: Option<UpstreamTls>,
    /// Concurrent streams per HTTP/2 connection to a backend.
    pub h2_streams_per_connection: usize,
    /// Sticky sessions by cookie, if configured.
    pub sticky: Option<StickySpec>,
}

/// The protocol towards an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 (the default).
    Http1,
    /// HTTP/2 over TLS (ALPN h2).
    H2,
    /// HTTP/2 over cleartext TCP (prior knowledge).
    H2c,
}

/// TLS towards the backends of an upstream.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpstreamTls {
    /// The server name sent and verified (default: the backend's address).
    pub sni: String,
    /// Verify the backend's certificate and name.
    pub verify: bool,
    /// The CA file to verify with (default: the system's roots).
    pub ca_file: Option<std::path::PathBuf>,
    /// Its certificates, DER.
    #[serde(skip)]
    pub ca: Vec<Vec<u8>>,
    /// A client certificate and key for mTLS to the backends: (cert file, key file).
    pub client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// The client chain (DER) and key (DER).
    #[serde(skip)]
    pub client_pair: Option<(Vec<Vec<u8>>, super::secret::SecretBytes)>,
}

/// Sticky sessions by cookie (`[upstreams.NAME.sticky]`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StickySpec {
    /// The cookie's name.
    pub cookie: String,
    /// The cookie's Max-Age; `None`: a session cookie.
    #[serde(serialize_with = "ser::opt_duration")]
    pub ttl: Option<Duration>,
    /// The variable holding the signing key.
    pub secret_env: String,
    /// The signing key.
    pub secret: super::secret::Secret,
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
    /// `grpc.health.v1.Health/Check` for `service` must answer SERVING (over the upstream's
    /// HTTP/2).
    Grpc {
        /// The service name asked about (empty: the server as a whole).
        service: String,
    },
}

impl Serialize for HealthCheckKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (kind, path, host) = match self {
            HealthCheckKind::Http { path, host } => ("http", Some(path), Some(host)),
            HealthCheckKind::Tcp => ("tcp", None, None),
            HealthCheckKind::Grpc { service } => ("grpc", Some(service), None),
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
    let protocol = match t.get("protocol") {
        None => Protocol::Http1,
        Some(n) => match r.string(&n) {
            Some("http1") => Protocol::Http1,
            Some("h2") => Protocol::H2,
            Some("h2c") => Protocol::H2c,
            Some(other) => {
                r.error(
                    &n,
                    format!("unknown protocol \"{other}\" (expected http1, h2 or h2c)"),
                );
                Protocol::Http1
            }
            None => Protocol::Http1,
        },
    };
    let tls = read_upstream_tls(r, &t, protocol);
    let h2_streams_per_connection = match t.get("h2_streams_per_connection") {
        None => 100,
        Some(n) => r.integer(&n, 1, 10_000).map_or(100, |v| v as usize),
    };
    let sticky = t.get("sticky").and_then(|n| read_sticky(r, &n));
    if protocol == Protocol::Http1
        && matches!(
            health_check.as_ref().map(|h| &h.kind),
            Some(HealthCheckKind::Grpc { .. })
        )
    {
        if let Some(n) = t.get("health_check") {
            r.error(
                &n,
                "a grpc health check needs protocol = \"h2\" or \"h2c\" on the upstream",
            );
        }
    }

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
        protocol,
        tls,
        h2_streams_per_connection,
        sticky,
    })
}

/// A minimal valid upstream named `name` (no backends), for tests.
#[cfg(test)]
pub fn test_spec(name: &str) -> UpstreamSpec {
    UpstreamSpec {
        name: name.into(),
        balance: Balance::RoundRobin,
        backends: Vec::new(),
        timeouts: Timeouts::default(),
        health_check: None,
        max_inflight: 0,
        circuit_breaker: None,
        retry: None,
        protocol: Protocol::Http1,
        tls: None,
        h2_streams_per_connection: 100,
        sticky: None,
    }
}

fn read_pem_certs(path: &std::path::Path) -> Result<Vec<Vec<u8>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut bytes.as_slice()).collect();
    match certs {
        Ok(c) if !c.is_empty() => Ok(c.into_iter().map(|c| c.to_vec()).collect()),
        Ok(_) => Err(format!("{}: no PEM certificate in it", path.display())),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Reads `tls`, `sni`, `verify`, `ca_file`, `client_cert` and `client_key` of an upstream.
fn read_upstream_tls(
    r: &mut Reader<'_>,
    t: &super::reader::Table<'_, '_>,
    protocol: Protocol,
) -> Option<UpstreamTls> {
    let tls_node = t.get("tls");
    let tls = tls_node
        .as_ref()
        .and_then(|n| r.boolean(n))
        .unwrap_or(false);
    let sni_node = t.get("sni");
    let verify_node = t.get("verify");
    let sni = sni_node
        .as_ref()
        .and_then(|n| r.string(n).map(str::to_string));
    let verify = verify_node.as_ref().and_then(|n| r.boolean(n));
    let ca_node = t.get("ca_file");
    let cert_node = t.get("client_cert");
    let key_node = t.get("client_key");
    if protocol == Protocol::H2 && !tls {
        r.error_at(
            t.span(),
            t.path(),
            "protocol = \"h2\" needs tls = true (use h2c for cleartext HTTP/2)",
        );
    }
    if protocol == Protocol::H2c && tls {
        if let Some(n) = &tls_node {
            r.error(n, "h2c is cleartext: use protocol = \"h2\" with tls");
        }
    }
    if !tls {
        for (node, key) in [
            (&sni_node, "sni"),
            (&verify_node, "verify"),
            (&ca_node, "ca_file"),
            (&cert_node, "client_cert"),
            (&key_node, "client_key"),
        ] {
            if let Some(n) = node {
                r.error(n, format!("{key} applies only with tls = true"));
            }
        }
        return None;
    }
    let ca_file = ca_node
        .as_ref()
        .and_then(|n| r.string(n).map(|s| r.resolve(s)));
    let ca = match (&ca_file, &ca_node) {
        (Some(path), Some(n)) => match read_pem_certs(path) {
            Ok(c) => c,
            Err(e) => {
                r.error(n, e);
                Vec::new()
            }
        },
        _ => Vec::new(),
    };
    let client = match (&cert_node, &key_node) {
        (Some(c), Some(k)) => {
            let cert = r.string(c).map(|s| r.resolve(s));
            let key = r.string(k).map(|s| r.resolve(s));
            match (cert, key) {
                (Some(cert), Some(key)) => {
                    let chain = read_pem_certs(&cert);
                    let key_der = std::fs::read(&key)
                        .map_err(|e| format!("cannot read {}: {e}", key.display()))
                        .and_then(|b| {
                            rustls_pemfile::private_key(&mut b.as_slice())
                                .map_err(|e| e.to_string())?
                                .ok_or_else(|| format!("{}: no PEM private key", key.display()))
                        });
                    match (chain, key_der) {
                        (Ok(chain), Ok(k)) => Some((
                            (cert, key),
                            (
                                chain,
                                super::secret::SecretBytes::new(k.secret_der().to_vec()),
                            ),
                        )),
                        (Err(e), _) => {
                            r.error(c, e);
                            None
                        }
                        (_, Err(e)) => {
                            r.error(k, e);
                            None
                        }
                    }
                }
                _ => None,
            }
        }
        (Some(n), None) | (None, Some(n)) => {
            r.error(n, "client_cert and client_key go together");
            None
        }
        (None, None) => None,
    };
    let (client_cert, client_pair) = match client {
        Some((paths, pair)) => (Some(paths), Some(pair)),
        None => (None, None),
    };
    Some(UpstreamTls {
        sni: sni.unwrap_or_default(),
        verify: verify.unwrap_or(true),
        ca_file,
        ca,
        client_cert,
        client_pair,
    })
}

/// Reads `[upstreams.NAME.sticky]`.
fn read_sticky(r: &mut Reader<'_>, n: &Node<'_, '_>) -> Option<StickySpec> {
    let t = r.table(n)?;
    let before = r.error_count();
    let cookie = t.require(r, "cookie").and_then(|n| {
        let name = r.string(&n)?;
        let ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !ok {
            r.error(&n, format!("invalid cookie name \"{name}\""));
            return None;
        }
        Some(name.to_string())
    });
    let ttl = t.get("ttl").and_then(|n| r.duration(&n));
    let secret = t.require(r, "secret_env").and_then(|n| {
        let var = r.string(&n)?.to_string();
        let value = std::env::var(&var).unwrap_or_default();
        if value.len() < 32 {
            r.error(
                &n,
                format!(
                    "${var} must hold a signing key of at least 32 bytes (it is unset or shorter)"
                ),
            );
            return None;
        }
        Some((var, super::secret::Secret::new(value)))
    });
    if r.error_count() > before {
        return None;
    }
    let (secret_env, secret) = secret?;
    Some(StickySpec {
        cookie: cookie?,
        ttl,
        secret_env,
        secret,
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
    let kind = match t.get("type") {
        None => "http",
        Some(n) => match r.string(&n) {
            Some(k @ ("http" | "tcp" | "grpc")) => k,
            Some(other) => {
                r.error(
                    &n,
                    format!("unknown health check type \"{other}\" (expected http, tcp or grpc)"),
                );
                ok = false;
                "http"
            }
            None => {
                ok = false;
                "http"
            }
        },
    };
    let service = t
        .get("service")
        .and_then(|n| r.string(&n).map(str::to_string))
        .unwrap_or_default();
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
        kind: match kind {
            "tcp" => HealthCheckKind::Tcp,
            "grpc" => HealthCheckKind::Grpc { service },
            _ => HealthCheckKind::Http { path, host },
        },
        interval: interval?,
        timeout: timeout?,
        healthy_threshold: healthy_threshold?,
        unhealthy_threshold: unhealthy_threshold?,
    })
}
