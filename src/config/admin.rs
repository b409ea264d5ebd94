//! The `[admin]` section (admin listener and its token) and the `[access_log]` section.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Serialize;

use super::reader::{Node, Reader};
use super::secret::Secret;

/// Validated admin listener settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdminSettings {
    /// Where the admin listener binds.
    pub listen: SocketAddr,
    /// Name of the environment variable holding the token.
    pub token_env: Option<String>,
    /// The token, read from `token_env` at load; `None` when not configured or empty.
    pub token: Option<Secret>,
}

/// Validated access log settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccessLogSettings {
    /// Whether requests are logged at all.
    pub enabled: bool,
    /// File to append to; `None` means stdout.
    pub path: Option<PathBuf>,
    /// Whether `path` in the log includes the query string.
    pub include_query: bool,
}

impl Default for AccessLogSettings {
    fn default() -> Self {
        AccessLogSettings {
            enabled: true,
            path: None,
            include_query: false,
        }
    }
}

/// Reads `[admin]`.
pub fn read_admin(r: &mut Reader<'_>, node: &Node<'_, '_>) -> Option<AdminSettings> {
    let t = r.table(node)?;
    let before = r.error_count();
    let listen = t.require(r, "listen").and_then(|n| {
        let text = r.string(&n)?;
        let addr = text.parse::<SocketAddr>().ok();
        if addr.is_none() {
            r.error(
                &n,
                format!(
                    "invalid listen address \"{text}\" (expected IP:PORT, e.g. \"127.0.0.1:9901\")"
                ),
            );
        }
        addr
    });
    let token_env = t.get("token_env").and_then(|n| {
        let name = r.string(&n)?;
        let valid =
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            r.error(&n, format!("invalid environment variable name \"{name}\""));
            return None;
        }
        Some((name.to_string(), n))
    });
    let token = token_env
        .as_ref()
        .and_then(|(name, _)| std::env::var(name).ok())
        .filter(|v| !v.is_empty())
        .map(Secret::new);
    if let Some(addr) = listen {
        if !addr.ip().is_loopback() && token.is_none() {
            let (at, path) = match &token_env {
                Some((name, n)) => (
                    n.span(),
                    format!("{} (${name} is unset or empty)", n.path()),
                ),
                None => (t.span(), t.path().to_string()),
            };
            r.error_at(
                at,
                &path,
                format!("admin listener on non-loopback address {addr} needs a token: set token_env to a variable holding it"),
            );
        }
    }
    if r.error_count() > before {
        return None;
    }
    Some(AdminSettings {
        listen: listen?,
        token_env: token_env.map(|(n, _)| n),
        token,
    })
}

/// Reads `[access_log]`.
pub fn read_access_log(r: &mut Reader<'_>, node: Option<&Node<'_, '_>>) -> AccessLogSettings {
    let mut s = AccessLogSettings::default();
    let Some(node) = node else { return s };
    let Some(t) = r.table(node) else {
        return s;
    };
    if let Some(n) = t.get("enabled") {
        s.enabled = r.boolean(&n).unwrap_or(s.enabled);
    }
    if let Some(n) = t.get("include_query") {
        s.include_query = r.boolean(&n).unwrap_or(s.include_query);
    }
    if let Some(n) = t.get("path") {
        match r.string(&n) {
            Some("") => r.error(&n, "path must not be empty (omit it to log to stdout)"),
            Some(p) => s.path = Some(r.resolve(p)),
            None => {}
        }
    }
    s
}
