//! The `[server]` section: listeners, worker threads, process files and drain timings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Serialize;

use super::reader::{Node, Reader};
use super::ser;

/// Validated process-level settings. Changing any of these needs a restart or upgrade.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerSettings {
    /// Addresses of the HTTP listeners (HTTP/1.1 and h2c).
    pub listen: Vec<SocketAddr>,
    /// Worker threads per listener service.
    pub threads: usize,
    /// Where the daemon writes its pid.
    pub pid_file: PathBuf,
    /// Unix socket through which listeners are handed to a new process on upgrade.
    pub upgrade_sock: PathBuf,
    /// How long a process told to stop keeps serving in-flight requests.
    #[serde(serialize_with = "ser::duration")]
    pub grace_period: Duration,
    /// After the grace period, how long remaining tasks get before they are cancelled.
    #[serde(serialize_with = "ser::duration")]
    pub graceful_shutdown_timeout: Duration,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Largest request body, in bytes, unless a route sets its own `max_body`.
    pub max_body: u64,
    /// What the edge refuses (`[server.limits]`).
    pub limits: super::limits::Limits,
    /// TLS listeners and certificates (`[server.tls]`), if any.
    pub tls: Option<super::tls::TlsSettings>,
}

/// Largest accepted `max_body`.
pub const MAX_BODY_LIMIT: u64 = 1 << 40;

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            pid_file: PathBuf::from("/run/gatehouse/gatehouse.pid"),
            upgrade_sock: PathBuf::from("/run/gatehouse/upgrade.sock"),
            grace_period: Duration::from_secs(30),
            graceful_shutdown_timeout: Duration::from_secs(5),
            trusted_proxies: Vec::new(),
            max_body: 10 * 1024 * 1024,
            limits: super::limits::Limits::default(),
            tls: None,
        }
    }
}

/// Reads `[server]`; absent keys keep their defaults.
pub fn read(r: &mut Reader<'_>, node: Option<&Node<'_, '_>>) -> ServerSettings {
    let mut s = ServerSettings::default();
    let Some(node) = node else { return s };
    let Some(t) = r.table(node) else {
        return s;
    };

    if let Some(n) = t.get("listen") {
        if let Some(items) = r.strings(&n) {
            if items.is_empty() {
                r.error(&n, "at least one listen address is required");
            }
            s.listen = items
                .into_iter()
                .filter_map(|(text, span, path)| match text.parse::<SocketAddr>() {
                    Ok(a) => Some(a),
                    Err(_) => {
                        r.error_at(
                            span,
                            &path,
                            format!("invalid listen address \"{text}\" (expected IP:PORT, e.g. \"127.0.0.1:8080\" or \"[::1]:8080\")"),
                        );
                        None
                    }
                })
                .collect();
        }
    }
    if let Some(n) = t.get("threads") {
        if let Some(v) = r.integer(&n, 1, 1024) {
            s.threads = v as usize;
        }
    }
    if let Some(n) = t.get("pid_file") {
        if let Some(p) = path(r, &n) {
            s.pid_file = p;
        }
    }
    if let Some(n) = t.get("upgrade_sock") {
        if let Some(p) = path(r, &n) {
            s.upgrade_sock = p;
        }
    }
    if let Some(n) = t.get("grace_period") {
        if let Some(d) = r.duration(&n) {
            s.grace_period = d;
        }
    }
    if let Some(n) = t.get("graceful_shutdown_timeout") {
        if let Some(d) = r.duration(&n) {
            s.graceful_shutdown_timeout = d;
        }
    }
    if let Some(n) = t.get("max_body") {
        if let Some(v) = r.size(&n, MAX_BODY_LIMIT) {
            s.max_body = v;
        }
    }
    if let Some(n) = t.get("limits") {
        s.limits = super::limits::read(r, &n);
    }
    if let Some(n) = t.get("tls") {
        s.tls = super::tls::read(r, &n);
        if let Some(clash) = s
            .tls
            .as_ref()
            .and_then(|tls| tls.listen.iter().find(|a| s.listen.contains(a)))
        {
            r.error(&n, format!("{clash} is both a plain and a TLS listener"));
        }
    }
    if let Some(n) = t.get("trusted_proxies") {
        if let Some(items) = r.strings(&n) {
            s.trusted_proxies = items
                .into_iter()
                .filter_map(|(text, span, path)| match parse_cidr(text) {
                    Some(net) => Some(net),
                    None => {
                        r.error_at(
                            span,
                            &path,
                            format!("invalid CIDR \"{text}\" (expected e.g. \"10.0.0.0/8\", \"192.0.2.7\" or \"fd00::/8\")"),
                        );
                        None
                    }
                })
                .collect();
        }
    }
    s
}

/// Parses a CIDR block; a bare address means a single host.
pub fn parse_cidr(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

fn path(r: &mut Reader<'_>, n: &Node<'_, '_>) -> Option<PathBuf> {
    let text = r.string(n)?;
    if text.is_empty() {
        r.error(n, "path must not be empty");
        return None;
    }
    Some(r.resolve(text))
}
