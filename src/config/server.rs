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
    /// Downstream HTTP/2 (`[server.http2]`).
    pub http2: Http2Settings,
    /// Bytes of read buffer each plain client connection keeps (Pingora's L4 read buffer);
    /// 0 reads straight into the request's own buffers.
    pub read_buffer: usize,
    /// Reload when the configuration file or a file it refers to changes on disk.
    pub watch_config: bool,
}

/// Largest accepted `read_buffer` (plain and TLS listeners).
pub const MAX_READ_BUFFER: u64 = 1 << 20;

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
            http2: Http2Settings::default(),
            // Measured (README, memory per connection): unbuffered reads cost no CPU for small
            // or 64 KiB requests on a plain listener, and save the buffer on every connection.
            read_buffer: 0,
            watch_config: false,
        }
    }
}

/// Downstream HTTP/2 settings (`[server.http2]`), for h2 over TLS and h2c alike. Changing
/// them takes a graceful upgrade (they are set when a listener starts).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Http2Settings {
    /// Concurrent streams a client may open on one connection (Pingora's default, 100).
    pub max_concurrent_streams: u32,
    /// `SETTINGS_MAX_HEADER_LIST_SIZE`, in bytes (RFC 9113 counts 32 bytes per field on top of
    /// name and value). `None`: the larger of Pingora's 64 KiB and what `[server.limits]`
    /// `max_header_bytes` and `max_headers` allow, so that a head over those limits gets the
    /// gateway's 431 JSON answer rather than a stream reset.
    pub max_header_list_size: Option<u32>,
    /// A connection with no open stream for this long is closed with GOAWAY; `None`:
    /// `[server.limits] keepalive_timeout`.
    #[serde(serialize_with = "ser::opt_duration")]
    pub idle_timeout: Option<Duration>,
    /// Rapid-reset protection (CVE-2023-44487): streams a client may open and reset before
    /// the gateway accepts them; beyond that the connection is closed with
    /// `ENHANCE_YOUR_CALM` (h2's default, 20).
    pub max_pending_reset_streams: u32,
    /// Streams the gateway may reset because of client errors on one connection before it
    /// closes the connection (h2's default, 1024).
    pub max_local_error_resets: u32,
}

impl Default for Http2Settings {
    fn default() -> Self {
        Http2Settings {
            max_concurrent_streams: 100,
            max_header_list_size: None,
            idle_timeout: None,
            max_pending_reset_streams: 20,
            max_local_error_resets: 1024,
        }
    }
}

impl Http2Settings {
    /// The header list size in effect under `limits`.
    pub fn header_list_size(&self, limits: &super::limits::Limits) -> u32 {
        self.max_header_list_size.unwrap_or_else(|| {
            let ours = limits.max_header_bytes + 32 * limits.max_headers;
            ours.max(64 * 1024).min(u64::from(u32::MAX)) as u32
        })
    }

    /// The idle timeout in effect under `limits`.
    pub fn idle_timeout(&self, limits: &super::limits::Limits) -> Duration {
        self.idle_timeout.unwrap_or(limits.keepalive_timeout)
    }
}

fn read_http2(r: &mut Reader<'_>, n: &Node<'_, '_>) -> Http2Settings {
    let mut h = Http2Settings::default();
    let Some(t) = r.table(n) else { return h };
    if let Some(n) = t.get("max_concurrent_streams") {
        if let Some(v) = r.integer(&n, 1, 10_000) {
            h.max_concurrent_streams = v as u32;
        }
    }
    if let Some(n) = t.get("max_header_list_size") {
        if let Some(v) = r.size(&n, 16 * 1024 * 1024) {
            if v < 1024 {
                r.error(&n, "max_header_list_size must be at least 1 KiB");
            }
            h.max_header_list_size = Some(v as u32);
        }
    }
    if let Some(n) = t.get("idle_timeout") {
        h.idle_timeout = r.duration(&n);
    }
    if let Some(n) = t.get("max_pending_reset_streams") {
        if let Some(v) = r.integer(&n, 1, 100_000) {
            h.max_pending_reset_streams = v as u32;
        }
    }
    if let Some(n) = t.get("max_local_error_resets") {
        if let Some(v) = r.integer(&n, 1, 1_000_000) {
            h.max_local_error_resets = v as u32;
        }
    }
    h
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
    if let Some(n) = t.get("watch_config") {
        if let Some(v) = r.boolean(&n) {
            s.watch_config = v;
        }
    }
    if let Some(n) = t.get("read_buffer") {
        if let Some(v) = r.size(&n, MAX_READ_BUFFER) {
            s.read_buffer = v as usize;
        }
    }
    if let Some(n) = t.get("limits") {
        s.limits = super::limits::read(r, &n);
    }
    if let Some(n) = t.get("http2") {
        s.http2 = read_http2(r, &n);
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    const BASE: &str = "[upstreams.b]\nbackends = [{ addr = \"127.0.0.1:1\" }]\n\
                        [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"b\"\n";

    #[test]
    fn read_buffer_defaults_to_none_and_takes_sizes() {
        let cfg = crate::config::parse(Path::new("t.toml"), BASE).unwrap();
        assert_eq!(cfg.server.read_buffer, 0);
        let src = format!("[server]\nread_buffer = \"16KiB\"\n{BASE}");
        let cfg = crate::config::parse(Path::new("t.toml"), &src).unwrap();
        assert_eq!(cfg.server.read_buffer, 16 * 1024);
    }

    #[test]
    fn read_buffer_over_the_maximum_is_an_error_with_its_place() {
        let src = format!("[server]\nread_buffer = \"2MiB\"\n{BASE}");
        let errors = crate::config::parse(Path::new("t.toml"), &src).unwrap_err();
        let text = errors.to_string();
        assert!(text.contains("t.toml:2:"), "{text}");
        assert!(text.contains("server.read_buffer"), "{text}");
        assert!(text.contains("at most 1048576 bytes"), "{text}");
    }
}
