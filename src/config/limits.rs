//! The `[server.limits]` section: what the gateway refuses at the edge before anything else
//! runs (request line, head size and count, head deadline, keep-alive idle time, header names
//! with underscores, encoded slashes, slash merging), and the size values shared with body
//! limits. Defaults follow nginx and Envoy at an edge.

use std::time::Duration;

use serde::Serialize;

use super::reader::{Node, Reader};
use super::ser;

/// Pingora parses at most this many request headers; more get its own bare 400.
pub const PINGORA_MAX_HEADERS: u64 = 256;

/// What happens to a request header whose name contains `_`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Underscores {
    /// Removed before anything reads the request (nginx's default).
    Drop,
    /// The request is refused with 400.
    Reject,
    /// Kept.
    Allow,
}

/// What happens to `%2F` / `%5C` (an encoded `/` or `\`) in a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EncodedSlash {
    /// The request is refused with 400.
    Reject,
    /// Kept as is: opaque, never decoded into a separator.
    Keep,
}

/// Validated edge limits.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Limits {
    /// Longest request line (method, target, version), in bytes; longer → 414.
    pub max_request_line: u64,
    /// Largest request head (request line and headers), in bytes; larger → 431.
    pub max_header_bytes: u64,
    /// Most header fields; more → 431.
    pub max_headers: u64,
    /// The whole request head must arrive within this, counted from its first byte (from the
    /// accept for a connection's first request); otherwise the connection is closed.
    #[serde(serialize_with = "ser::duration")]
    pub request_head_timeout: Duration,
    /// How long an idle keep-alive client connection is kept (whole seconds).
    #[serde(serialize_with = "ser::duration")]
    pub keepalive_timeout: Duration,
    /// Header names with `_`.
    pub underscores_in_headers: Underscores,
    /// Encoded `/` and `\` in paths.
    pub encoded_slash: EncodedSlash,
    /// Collapse `//` in paths into `/`.
    pub merge_slashes: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_line: 8 * 1024,
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            request_head_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            underscores_in_headers: Underscores::Drop,
            encoded_slash: EncodedSlash::Reject,
            merge_slashes: true,
        }
    }
}

/// Reads `[server.limits]`; absent keys keep their defaults.
pub fn read(r: &mut Reader<'_>, node: &Node<'_, '_>) -> Limits {
    let mut l = Limits::default();
    let Some(t) = r.table(node) else { return l };
    if let Some(n) = t.get("max_request_line") {
        match r.size(&n, 64 * 1024) {
            Some(v) if v >= 64 => l.max_request_line = v,
            Some(_) => r.error(&n, "max_request_line must be at least 64 bytes"),
            None => {}
        }
    }
    if let Some(n) = t.get("max_header_bytes") {
        match r.size(&n, 1024 * 1024 - 1) {
            Some(v) if v >= 256 => l.max_header_bytes = v,
            Some(_) => r.error(&n, "max_header_bytes must be at least 256 bytes"),
            None => {}
        }
    }
    if let Some(n) = t.get("max_headers") {
        if let Some(v) = r.integer(&n, 1, PINGORA_MAX_HEADERS as i64) {
            l.max_headers = v as u64;
        }
    }
    if let Some(n) = t.get("request_head_timeout") {
        if let Some(d) = r.duration(&n) {
            l.request_head_timeout = d;
        }
    }
    if let Some(n) = t.get("keepalive_timeout") {
        match r.duration(&n) {
            Some(d) if d >= Duration::from_secs(1) => l.keepalive_timeout = d,
            Some(_) => r.error(
                &n,
                "keepalive_timeout must be at least 1s (Pingora counts whole seconds)",
            ),
            None => {}
        }
    }
    if let Some(n) = t.get("underscores_in_headers") {
        match r.string(&n) {
            Some("drop") => l.underscores_in_headers = Underscores::Drop,
            Some("reject") => l.underscores_in_headers = Underscores::Reject,
            Some("allow") => l.underscores_in_headers = Underscores::Allow,
            Some(other) => r.error(
                &n,
                format!("unknown value \"{other}\" (expected drop, reject or allow)"),
            ),
            None => {}
        }
    }
    if let Some(n) = t.get("encoded_slash") {
        match r.string(&n) {
            Some("reject") => l.encoded_slash = EncodedSlash::Reject,
            Some("keep") => l.encoded_slash = EncodedSlash::Keep,
            Some(other) => r.error(
                &n,
                format!("unknown value \"{other}\" (expected reject or keep)"),
            ),
            None => {}
        }
    }
    if let Some(n) = t.get("merge_slashes") {
        if let Some(b) = r.boolean(&n) {
            l.merge_slashes = b;
        }
    }
    l
}
