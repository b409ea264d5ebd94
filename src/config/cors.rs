//! CORS settings: `[cors.NAME]` tables shared by routes through `cors = "NAME"`, or a route's
//! own `[routes.cors]` table. Origins are exact (`https://app.example.com`), wildcard subdomains
//! (`https://*.example.com`: any depth, not the bare domain) or `"*"`; credentials cannot be
//! combined with `"*"`.

use std::time::Duration;

use http::{HeaderName, Method};
use serde::{Serialize, Serializer};

use super::reader::{Node, Reader};
use super::route::METHODS;
use super::ser;

/// An allowed origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPattern {
    /// `*`: any origin.
    Any,
    /// One origin, lower-case (`https://app.example.com`, port only when not the default).
    Exact(String),
    /// `scheme://*.suffix[:port]`: any subdomain of `suffix`, at any depth.
    Subdomains {
        /// `https://`, lower-case.
        scheme: String,
        /// `.example.com`, lower-case.
        suffix: String,
        /// `:8443`, or empty.
        port: String,
    },
}

impl OriginPattern {
    /// Whether `origin` (as sent in the `Origin` header) matches.
    pub fn matches(&self, origin: &str) -> bool {
        match self {
            OriginPattern::Any => true,
            OriginPattern::Exact(o) => o.eq_ignore_ascii_case(origin),
            OriginPattern::Subdomains {
                scheme,
                suffix,
                port,
            } => {
                let Some(rest) = strip_prefix_ci(origin, scheme) else {
                    return false;
                };
                let Some(host) = strip_suffix_ci(rest, port) else {
                    return false;
                };
                host.len() > suffix.len()
                    && strip_suffix_ci(host, suffix).is_some_and(|label| {
                        !label.is_empty() && !label.contains(':') && !label.contains('/')
                    })
            }
        }
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    (s.len() >= prefix.len() && s.is_char_boundary(prefix.len()))
        .then(|| s.split_at(prefix.len()))
        .filter(|(head, _)| head.eq_ignore_ascii_case(prefix))
        .map(|(_, rest)| rest)
}

fn strip_suffix_ci<'a>(s: &'a str, suffix: &str) -> Option<&'a str> {
    let cut = s.len().checked_sub(suffix.len())?;
    (s.is_char_boundary(cut) && s[cut..].eq_ignore_ascii_case(suffix)).then(|| &s[..cut])
}

impl Serialize for OriginPattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            OriginPattern::Any => s.serialize_str("*"),
            OriginPattern::Exact(o) => s.serialize_str(o),
            OriginPattern::Subdomains {
                scheme,
                suffix,
                port,
            } => s.collect_str(&format_args!("{scheme}*{suffix}{port}")),
        }
    }
}

/// Validated CORS settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CorsSpec {
    /// The `[cors.NAME]` it came from, if shared.
    pub name: Option<String>,
    /// Allowed origins.
    pub allow_origins: Vec<OriginPattern>,
    /// Allowed methods; `None`: the route's methods.
    #[serde(serialize_with = "ser::opt_methods")]
    pub allow_methods: Option<Vec<Method>>,
    /// Allowed request headers (lower-case); `["*"]` allows any.
    pub allow_headers: Vec<String>,
    /// Response headers a page may read.
    #[serde(serialize_with = "header_names")]
    pub expose_headers: Vec<HeaderName>,
    /// Whether credentials (cookies, `Authorization`) may be sent.
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight answer.
    #[serde(serialize_with = "ser::opt_duration")]
    pub max_age: Option<Duration>,
    /// Answer `Access-Control-Request-Private-Network` preflights.
    pub allow_private_network: bool,
}

fn header_names<S: Serializer>(names: &[HeaderName], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(names.iter().map(HeaderName::as_str))
}

/// Parses one `allow_origins` entry.
fn origin_pattern(text: &str) -> Option<OriginPattern> {
    if text == "*" {
        return Some(OriginPattern::Any);
    }
    let lower = text.to_ascii_lowercase();
    let (scheme, rest) = lower
        .split_once("://")
        .filter(|(s, _)| s == &"http" || s == &"https")?;
    if rest.is_empty() || rest.contains('/') || rest.ends_with(':') {
        return None;
    }
    let (host, port) = if let Some(inside) = rest.strip_prefix('[') {
        let close = inside.find(']')?;
        let (host, tail) = rest.split_at(close + 2);
        let port = match tail {
            "" => String::new(),
            t => {
                let p = t.strip_prefix(':')?;
                p.parse::<u16>().ok()?;
                format!(":{p}")
            }
        };
        (host, port)
    } else {
        match rest.split_once(':') {
            Some((h, p)) => {
                p.parse::<u16>().ok()?;
                (h, format!(":{p}"))
            }
            None => (rest, String::new()),
        }
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if let Some(suffix) = host.strip_prefix("*.") {
        return suffix
            .split('.')
            .all(label_ok)
            .then(|| OriginPattern::Subdomains {
                scheme: format!("{scheme}://"),
                suffix: format!(".{suffix}"),
                port,
            });
    }
    let host_ok = (host.starts_with('[') && host.ends_with(']')) || host.split('.').all(label_ok);
    host_ok.then(|| OriginPattern::Exact(format!("{scheme}://{host}{port}")))
}

/// Reads a CORS table (`name` when it is a shared `[cors.NAME]`).
pub fn read(r: &mut Reader<'_>, node: &Node<'_, '_>, name: Option<&str>) -> Option<CorsSpec> {
    let t = r.table(node)?;
    let before = r.error_count();
    let mut allow_origins = Vec::new();
    let origins = t.require(r, "allow_origins");
    if let Some(n) = &origins {
        if let Some(items) = r.strings(n) {
            if items.is_empty() {
                r.error(n, "list at least one origin (or \"*\")");
            }
            for (text, span, path) in items {
                match origin_pattern(text) {
                    Some(p) => allow_origins.push(p),
                    None => r.error_at(
                        span,
                        &path,
                        format!("invalid origin \"{text}\" (expected \"*\", https://host[:port] or https://*.domain)"),
                    ),
                }
            }
        }
    }
    let allow_methods = t.get("allow_methods").and_then(|n| {
        let items = r.strings(&n)?;
        let mut out = Vec::new();
        for (text, span, path) in items {
            let upper = text.to_ascii_uppercase();
            match Method::from_bytes(upper.as_bytes()) {
                Ok(m) if METHODS.contains(&upper.as_str()) => out.push(m),
                _ => r.error_at(span, &path, format!("unknown method \"{text}\"")),
            }
        }
        Some(out)
    });
    let names = |r: &mut Reader<'_>, key: &'static str, star: bool| -> Vec<String> {
        let Some(n) = t.get(key) else {
            return Vec::new();
        };
        let Some(items) = r.strings(&n) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (text, span, path) in items {
            if star && text == "*" {
                out.push("*".to_string());
            } else if HeaderName::from_bytes(text.as_bytes()).is_ok() {
                out.push(text.to_ascii_lowercase());
            } else {
                r.error_at(span, &path, format!("invalid header name \"{text}\""));
            }
        }
        out
    };
    let allow_headers = names(r, "allow_headers", true);
    let expose_headers = names(r, "expose_headers", false)
        .into_iter()
        .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
        .collect();
    let allow_credentials = t
        .get("allow_credentials")
        .and_then(|n| r.boolean(&n))
        .unwrap_or(false);
    if allow_credentials && allow_origins.contains(&OriginPattern::Any) {
        let at = origins.as_ref().map_or(t.span(), |n| n.span());
        let path = origins
            .as_ref()
            .map_or(t.path().to_string(), |n| n.path().to_string());
        r.error_at(
            at,
            &path,
            "allow_credentials = true cannot be combined with \"*\" (list the origins)",
        );
    }
    let max_age = t.get("max_age").and_then(|n| r.duration(&n));
    let allow_private_network = t
        .get("allow_private_network")
        .and_then(|n| r.boolean(&n))
        .unwrap_or(false);
    if r.error_count() > before {
        return None;
    }
    Some(CorsSpec {
        name: name.map(str::to_string),
        allow_origins,
        allow_methods,
        allow_headers,
        expose_headers,
        allow_credentials,
        max_age,
        allow_private_network,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_parse_and_match() {
        let exact = origin_pattern("https://App.Example.com").unwrap();
        assert!(exact.matches("https://app.example.com"));
        assert!(!exact.matches("https://app.example.com.evil.net"));
        assert!(!exact.matches("http://app.example.com"));
        let wild = origin_pattern("https://*.example.com").unwrap();
        assert!(wild.matches("https://a.example.com"));
        assert!(wild.matches("https://a.b.example.com"));
        assert!(!wild.matches("https://example.com"));
        assert!(!wild.matches("https://evilexample.com"));
        assert!(!wild.matches("https://a.example.com:8443"));
        assert!(!wild.matches("http://a.example.com"));
        let port = origin_pattern("http://127.0.0.1:8080").unwrap();
        assert!(port.matches("http://127.0.0.1:8080"));
        assert!(!port.matches("http://127.0.0.1:8081"));
        for bad in [
            "example.com",
            "https://",
            "ftp://x",
            "https://a/b",
            "https://a:x",
        ] {
            assert!(origin_pattern(bad).is_none(), "{bad}");
        }
    }
}
