//! The route table (domain layer): built once per configuration snapshot, then looked up per request without
//! compiling or allocating anything.
//!
//! Precedence: among routes whose host, headers and method match, the highest `priority` wins;
//! then `path_exact` beats `path_prefix` (longest first) beats `path_regex` (declaration order).
//! The table is pre-sorted in that order, so lookup returns the first full match.

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::config::{HostMatch, PathMatch, RouteId, RouteSpec};

/// A set of HTTP methods as a bit mask (allocation-free).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MethodSet(u16);

const KNOWN: [(Method, &str); 8] = [
    (Method::GET, "GET"),
    (Method::HEAD, "HEAD"),
    (Method::POST, "POST"),
    (Method::PUT, "PUT"),
    (Method::DELETE, "DELETE"),
    (Method::PATCH, "PATCH"),
    (Method::OPTIONS, "OPTIONS"),
    (Method::TRACE, "TRACE"),
];

impl MethodSet {
    /// Every method, extension methods included.
    pub const ANY: MethodSet = MethodSet(u16::MAX);

    fn bit(method: &Method) -> u16 {
        KNOWN
            .iter()
            .position(|(m, _)| m == method)
            .map_or(1 << 15, |i| 1 << i)
    }

    /// The set of `methods`.
    pub fn of(methods: &[Method]) -> Self {
        MethodSet(methods.iter().fold(0, |acc, m| acc | Self::bit(m)))
    }

    /// Whether `method` is in the set.
    pub fn contains(self, method: &Method) -> bool {
        self.0 & Self::bit(method) != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The value of an `Allow` header listing the set (error path only: allocates).
    pub fn allow_header(self) -> String {
        KNOWN
            .iter()
            .enumerate()
            .filter(|(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, (_, name))| *name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Outcome of a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteMatch {
    /// The matching route.
    Found(RouteId),
    /// Some route matches everything but the method: the first such route (the one a
    /// refusal is counted under) and the methods that would be accepted.
    MethodNotAllowed(RouteId, MethodSet),
    /// No route matches.
    NotFound,
}

/// The request properties routing looks at.
pub struct RequestView<'a> {
    /// Request method.
    pub method: &'a Method,
    /// Host from `Host` or the URI authority, possibly with a port.
    pub host: Option<&'a str>,
    /// Path without the query string.
    pub path: &'a str,
    /// All request headers.
    pub headers: &'a HeaderMap,
}

/// What lookup needs of a route, kept compact so a scan touches few cache lines.
struct Entry {
    index: RouteId,
    path: PathMatch,
    host: Option<HostMatch>,
    headers: Box<[(HeaderName, HeaderValue)]>,
    methods: MethodSet,
}

/// The compiled route table.
pub struct Router {
    entries: Box<[Entry]>,
}

impl Router {
    /// Builds the table from validated routes.
    pub fn new(routes: &[RouteSpec]) -> Self {
        let mut order: Vec<(usize, &RouteSpec)> = routes.iter().enumerate().collect();
        order.sort_by_key(|(index, spec)| {
            let (rank, len) = match &spec.path {
                PathMatch::Exact(p) => (0u8, p.len()),
                PathMatch::Prefix(p) => (1, p.len()),
                PathMatch::Regex(_) => (2, 0),
            };
            (
                std::cmp::Reverse(spec.priority),
                rank,
                std::cmp::Reverse(len),
                *index,
            )
        });
        Router {
            entries: order
                .into_iter()
                .map(|(index, spec)| Entry {
                    index: RouteId::new(index),
                    path: spec.path.clone(),
                    host: spec.host.clone(),
                    headers: spec.headers.clone().into_boxed_slice(),
                    methods: spec
                        .methods
                        .as_deref()
                        .map_or(MethodSet::ANY, MethodSet::of),
                })
                .collect(),
        }
    }

    /// The first route that matches everything but the method (a CORS preflight asking
    /// about a method the route does not allow still belongs to that route).
    pub fn lookup_any_method(&self, req: &RequestView<'_>) -> Option<RouteId> {
        let host = req.host.map(strip_port);
        self.entries
            .iter()
            .find(|e| {
                path_matches(&e.path, req.path)
                    && host_matches(e.host.as_ref(), host)
                    && headers_match(&e.headers, req.headers)
            })
            .map(|e| e.index)
    }

    /// Finds the route for a request.
    pub fn lookup(&self, req: &RequestView<'_>) -> RouteMatch {
        let host = req.host.map(strip_port);
        let mut allowed = MethodSet::default();
        let mut first = None;
        for e in self.entries.iter() {
            if !path_matches(&e.path, req.path)
                || !host_matches(e.host.as_ref(), host)
                || !headers_match(&e.headers, req.headers)
            {
                continue;
            }
            if e.methods.contains(req.method) {
                return RouteMatch::Found(e.index);
            }
            allowed.0 |= e.methods.0;
            first.get_or_insert(e.index);
        }
        match first {
            Some(route) if !allowed.is_empty() => RouteMatch::MethodNotAllowed(route, allowed),
            _ => RouteMatch::NotFound,
        }
    }
}

/// Why a route did or did not match a request ([`Router::explain`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Everything matches: the lookup stops here.
    Matches,
    /// The path does not match.
    Path,
    /// The host does not match (or the request has none and the route names one).
    Host,
    /// This required header is absent or has another value.
    Header(usize),
    /// Everything but the method matches.
    Method,
    /// Not looked at: an earlier route matched.
    NotReached,
}

impl Router {
    /// Every route in precedence order with why it did or did not match `req`: what
    /// [`Router::lookup`] does, told (for `gatehouse explain`; not on the request path).
    pub fn explain(&self, req: &RequestView<'_>) -> Vec<(RouteId, Verdict)> {
        let host = req.host.map(strip_port);
        let mut found = false;
        self.entries
            .iter()
            .map(|e| {
                let verdict =
                    if found {
                        Verdict::NotReached
                    } else if !path_matches(&e.path, req.path) {
                        Verdict::Path
                    } else if !host_matches(e.host.as_ref(), host) {
                        Verdict::Host
                    } else if let Some(i) = e.headers.iter().position(|(name, value)| {
                        !req.headers.get_all(name).iter().any(|v| v == value)
                    }) {
                        Verdict::Header(i)
                    } else if !e.methods.contains(req.method) {
                        Verdict::Method
                    } else {
                        found = true;
                        Verdict::Matches
                    };
                (e.index, verdict)
            })
            .collect()
    }
}

/// The request's host: the `Host` header, else the URI authority (HTTP/2).
pub fn request_host(req: &pingora::http::RequestHeader) -> Option<&str> {
    req.headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
}

/// Whether `path` is `prefix` or continues it at a segment boundary.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.ends_with('/'),
        None => false,
    }
}

fn path_matches(m: &PathMatch, path: &str) -> bool {
    match m {
        PathMatch::Exact(p) => p == path,
        PathMatch::Prefix(p) => prefix_matches(p, path),
        PathMatch::Regex(re) => re.is_match(path),
    }
}

fn host_matches(m: Option<&HostMatch>, host: Option<&str>) -> bool {
    match (m, host) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(HostMatch::Exact(h)), Some(host)) => h.eq_ignore_ascii_case(host),
        (Some(HostMatch::Wildcard(suffix)), Some(host)) => {
            host.len() > suffix.len()
                && host.is_char_boundary(host.len() - suffix.len())
                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        }
    }
}

fn headers_match(wanted: &[(HeaderName, HeaderValue)], headers: &HeaderMap) -> bool {
    wanted
        .iter()
        .all(|(name, value)| headers.get_all(name).iter().any(|v| v == value))
}

/// `example.com:8080` → `example.com`, `[::1]:80` → `[::1]`.
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn router(toml: &str) -> Router {
        let src = format!("[upstreams.u]\nbackends = [{{ addr = \"127.0.0.1:1\" }}]\n{toml}");
        let cfg = crate::config::parse(Path::new("t.toml"), &src).expect("valid config");
        Router::new(&cfg.routes)
    }

    fn find(r: &Router, method: Method, host: Option<&str>, path: &str) -> RouteMatch {
        r.lookup(&RequestView {
            method: &method,
            host,
            path,
            headers: &HeaderMap::new(),
        })
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        assert!(prefix_matches("/api/v1/users", "/api/v1/users"));
        assert!(prefix_matches("/api/v1/users", "/api/v1/users/7"));
        assert!(!prefix_matches("/api/v1/users", "/api/v1/usersX"));
        assert!(prefix_matches("/", "/anything"));
    }

    #[test]
    fn exact_beats_prefix_beats_regex_and_longest_prefix_wins() {
        let r = router(
            r#"
[[routes]]
name = "re"
path_regex = "^/a/.*"
upstream = "u"
[[routes]]
name = "short"
path_prefix = "/a"
upstream = "u"
[[routes]]
name = "long"
path_prefix = "/a/b"
upstream = "u"
[[routes]]
name = "exact"
path_exact = "/a/b/c"
upstream = "u"
"#,
        );
        assert_eq!(
            find(&r, Method::GET, None, "/a/b/c"),
            RouteMatch::Found(RouteId::new(3))
        );
        assert_eq!(
            find(&r, Method::GET, None, "/a/b/d"),
            RouteMatch::Found(RouteId::new(2))
        );
        assert_eq!(
            find(&r, Method::GET, None, "/a/x"),
            RouteMatch::Found(RouteId::new(1))
        );
        assert_eq!(find(&r, Method::GET, None, "/b"), RouteMatch::NotFound);
    }

    #[test]
    fn method_mismatch_reports_the_allowed_set() {
        let r = router(
            r#"
[[routes]]
name = "r"
path_prefix = "/x"
methods = ["GET", "POST"]
upstream = "u"
"#,
        );
        match find(&r, Method::DELETE, None, "/x") {
            RouteMatch::MethodNotAllowed(_, set) => assert_eq!(set.allow_header(), "GET, POST"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn host_matching_ignores_case_and_port_and_wildcards_need_a_label() {
        let r = router(
            r#"
[[routes]]
name = "w"
host = "*.example.com"
path_prefix = "/"
upstream = "u"
"#,
        );
        assert_eq!(
            find(&r, Method::GET, Some("A.Example.com:8080"), "/"),
            RouteMatch::Found(RouteId::new(0))
        );
        assert_eq!(
            find(&r, Method::GET, Some("example.com"), "/"),
            RouteMatch::NotFound
        );
        assert_eq!(strip_port("[::1]:80"), "[::1]");
    }
}
