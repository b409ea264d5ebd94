//! The `[[routes]]` array: which requests go to which upstream, and how the path is rewritten.

use http::{HeaderName, HeaderValue, Method};
use regex::Regex;
use serde::{Serialize, Serializer};

use super::ids::{ProviderId, Ref, UpstreamId};
use super::reader::{Node, Reader};
use super::ser;

/// How a route matches the request host.
#[derive(Debug, Clone, PartialEq)]
pub enum HostMatch {
    /// Exact host, lowercase, without port.
    Exact(String),
    /// `*.example.com`: any name ending in `.example.com` (one or more labels), stored as
    /// the suffix `.example.com`. The bare `example.com` does not match.
    Wildcard(String),
}

impl Serialize for HostMatch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            HostMatch::Exact(h) => s.serialize_str(h),
            HostMatch::Wildcard(suffix) => s.collect_str(&format_args!("*{suffix}")),
        }
    }
}

/// How a route matches the request path (rendered under the key it was written with).
#[derive(Debug, Clone, Serialize)]
pub enum PathMatch {
    /// The whole path equals this.
    #[serde(rename = "path_exact")]
    Exact(String),
    /// The path equals this or continues it at a `/` boundary.
    #[serde(rename = "path_prefix")]
    Prefix(String),
    /// The regex matches the path (unanchored unless the pattern anchors itself).
    #[serde(rename = "path_regex", serialize_with = "ser::regex")]
    Regex(Regex),
}

impl PartialEq for PathMatch {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (PathMatch::Exact(a), PathMatch::Exact(b)) => a == b,
            (PathMatch::Prefix(a), PathMatch::Prefix(b)) => a == b,
            (PathMatch::Regex(a), PathMatch::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

/// A validated route.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteSpec {
    /// Unique name, used in metrics and logs.
    pub name: String,
    /// Host matcher; `None` matches any host.
    pub host: Option<HostMatch>,
    /// Path matcher.
    #[serde(flatten)]
    pub path: PathMatch,
    /// Allowed methods; `None` allows all.
    #[serde(serialize_with = "ser::opt_methods")]
    pub methods: Option<Vec<Method>>,
    /// Headers that must be present with exactly these values.
    #[serde(serialize_with = "ser::headers")]
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The upstream.
    pub upstream: Ref<UpstreamId>,
    /// Removed from the front of the path before forwarding.
    pub strip_prefix: Option<String>,
    /// Higher wins among matching routes.
    pub priority: i32,
    /// Accepted authentication providers (named `jwt:NAME` / `api_key:NAME` /
    /// `introspection:NAME`); any one
    /// suffices. Empty: a public route.
    pub auth: Vec<Ref<ProviderId>>,
    /// The identity must hold at least one of these roles (when not empty).
    pub require_roles: Vec<String>,
    /// The identity must hold all of these scopes.
    pub require_scopes: Vec<String>,
    /// Strip the credential (Authorization or the key header) before forwarding.
    pub hide_credentials: bool,
    /// Rate limit, if any.
    pub rate_limit: Option<super::rate_limit::RouteLimit>,
    /// Deadline to response headers across attempts (504 when exceeded).
    #[serde(serialize_with = "ser::opt_duration")]
    pub timeout: Option<std::time::Duration>,
    /// Scale this route's rate limits by the upstream's health.
    pub adaptive_limit: bool,
    /// Largest request body in bytes (`None`: `[server] max_body`).
    pub max_body: Option<u64>,
    /// CORS, when the route answers browsers on other origins.
    pub cors: Option<super::cors::CorsSpec>,
    /// Changes to the request headers sent upstream.
    pub request_headers: Option<super::transform::HeaderTransform>,
    /// Changes to the response headers sent to the client.
    pub response_headers: Option<super::transform::HeaderTransform>,
    /// Path rewrite (exclusive with `strip_prefix`).
    pub rewrite: Option<super::transform::Rewrite>,
    /// Changes to JSON request bodies.
    pub request_body: Option<super::transform::BodyTransform>,
    /// Changes to JSON response bodies.
    pub response_body: Option<super::transform::BodyTransform>,
    /// The route serves gRPC (documentation and a `-t` check that its upstream speaks HTTP/2).
    pub grpc: bool,
    /// gRPC-Web requests are bridged to gRPC (binary `application/grpc-web` only).
    pub grpc_web: bool,
    /// WebSocket upgrades are allowed (the default).
    pub websocket: bool,
    /// An upgraded connection with no frame either way for this long is closed.
    #[serde(serialize_with = "ser::duration")]
    pub websocket_idle_timeout: std::time::Duration,
    /// Response caching, when the route caches.
    pub cache: Option<super::cache::RouteCache>,
}

/// Methods a route may list. Extension methods are not routable by name.
pub const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE",
];

/// What a route may refer to: the declared names, each with its id when its declaration is
/// valid (an invalid declaration was reported already and is not reported again here).
pub struct Declared<'a> {
    /// Upstream names.
    pub upstreams: &'a [(&'a str, Option<UpstreamId>)],
    /// The protocol of each valid upstream, by [`UpstreamId`].
    pub protocols: &'a [super::Protocol],
    /// Provider labels (`jwt:NAME`, `api_key:NAME`, `introspection:NAME`).
    pub providers: &'a [(String, Option<ProviderId>)],
    /// Valid tier names, in [`TierId`](super::TierId) order.
    pub tiers: &'a [String],
    /// Shared `[cors.NAME]` settings (`None` when the declaration is invalid).
    pub cors: &'a [(String, Option<super::cors::CorsSpec>)],
}

/// Reads one route, resolving the names it refers to against `declared`.
pub fn read(r: &mut Reader<'_>, node: &Node<'_, '_>, declared: &Declared<'_>) -> Option<RouteSpec> {
    let t = r.table(node)?;
    let errors_before = r.error_count();

    let name = t.require(r, "name").and_then(|n| {
        let v = r.string(&n)?;
        if !super::upstream::valid_name(v) {
            r.error(
                &n,
                "route name must be 1-64 characters of A-Z a-z 0-9 _ - .",
            );
            return None;
        }
        Some(v.to_string())
    });

    let host = t.get("host").and_then(|n| {
        let v = r.string(&n)?;
        let parsed = parse_host(v);
        if parsed.is_none() {
            r.error(
                &n,
                format!(
                    "invalid host \"{v}\" (expected a name like api.example.com or *.example.com)"
                ),
            );
        }
        parsed
    });

    let mut matchers = Vec::new();
    for key in ["path_exact", "path_prefix", "path_regex"] {
        if let Some(n) = t.get(key) {
            matchers.push((key, n));
        }
    }
    let path = match matchers.as_slice() {
        [] => {
            r.error_at(
                t.span(),
                t.path(),
                "route has no path matcher (set one of path_exact, path_prefix, path_regex)",
            );
            None
        }
        [(key, n)] => read_path(r, key, n),
        [_, (_, second), ..] => {
            r.error(
                second,
                "a route takes exactly one of path_exact, path_prefix, path_regex",
            );
            None
        }
    };

    let methods = t.get("methods").and_then(|n| {
        let items = r.strings(&n)?;
        if items.is_empty() {
            r.error(
                &n,
                "methods must not be empty (omit it to allow every method)",
            );
            return None;
        }
        let mut out = Vec::new();
        for (text, span, path) in items {
            let upper = text.to_ascii_uppercase();
            if !METHODS.contains(&upper.as_str()) {
                r.error_at(
                    span,
                    &path,
                    format!(
                        "unknown method \"{text}\" (expected one of {})",
                        METHODS.join(", ")
                    ),
                );
                continue;
            }
            if let Ok(m) = Method::from_bytes(upper.as_bytes()) {
                if !out.contains(&m) {
                    out.push(m);
                }
            }
        }
        Some(out)
    });

    let headers = t
        .get("headers")
        .map(|n| read_headers(r, &n))
        .unwrap_or_default();

    let upstream = t.require(r, "upstream").and_then(|n| {
        let v = r.string(&n)?;
        match declared.upstreams.iter().find(|(name, _)| *name == v) {
            Some((_, id)) => id.map(|id| Ref::new(id, v)),
            None => {
                r.error(&n, format!("unknown upstream \"{v}\""));
                None
            }
        }
    });

    let strip_prefix = t.get("strip_prefix").and_then(|n| {
        let v = r.string(&n)?;
        if !v.starts_with('/') || v.len() < 2 {
            r.error(&n, "strip_prefix must start with / and not be / alone");
            return None;
        }
        Some(v.trim_end_matches('/').to_string())
    });

    let priority = match t.get("priority") {
        None => Some(0),
        Some(n) => r
            .integer(&n, i64::from(i32::MIN), i64::from(i32::MAX))
            .map(|v| v as i32),
    };

    let mut auth = Vec::new();
    if let Some(n) = t.get("auth") {
        if let Some(items) = r.strings(&n) {
            for (text, span, path) in items {
                if !["jwt:", "api_key:", "introspection:"]
                    .iter()
                    .any(|p| text.starts_with(p))
                {
                    r.error_at(
                        span,
                        &path,
                        format!("invalid auth \"{text}\" (expected jwt:NAME, api_key:NAME or introspection:NAME)"),
                    );
                    continue;
                }
                match declared.providers.iter().find(|(label, _)| label == text) {
                    None => r.error_at(span, &path, format!("unknown auth provider \"{text}\"")),
                    Some((_, Some(id))) if !auth.iter().any(|a: &Ref<ProviderId>| a.id == *id) => {
                        auth.push(Ref::new(*id, text))
                    }
                    Some(_) => {}
                }
            }
        }
    }
    let list = |r: &mut Reader<'_>, key: &'static str| -> Vec<String> {
        t.get(key)
            .and_then(|n| r.strings(&n))
            .map(|v| v.into_iter().map(|(s, _, _)| s.to_string()).collect())
            .unwrap_or_default()
    };
    let require_roles = list(r, "require_roles");
    let require_scopes = list(r, "require_scopes");
    if (!require_roles.is_empty() || !require_scopes.is_empty()) && t.get("auth").is_none() {
        r.error_at(
            t.span(),
            t.path(),
            "require_roles / require_scopes need auth on the route",
        );
    }
    let hide_credentials = t
        .get("hide_credentials")
        .and_then(|n| r.boolean(&n))
        .unwrap_or(false);
    let timeout = t.get("timeout").and_then(|n| r.duration(&n));
    let adaptive_limit = t
        .get("adaptive_limit")
        .and_then(|n| r.boolean(&n))
        .unwrap_or(false);
    if adaptive_limit && t.get("rate_limit").is_none() {
        r.error_at(
            t.span(),
            t.path(),
            "adaptive_limit needs rate_limit on the route",
        );
    }
    let max_body = t
        .get("max_body")
        .and_then(|n| r.size(&n, super::server::MAX_BODY_LIMIT));
    let cors = t.get("cors").and_then(|n| match n.value() {
        toml::de::DeValue::String(name) => {
            match declared
                .cors
                .iter()
                .find(|(declared, _)| declared == name.as_ref())
            {
                Some((_, spec)) => spec.clone(),
                None => {
                    r.error(
                        &n,
                        format!("unknown CORS settings \"{name}\" (declare [cors.{name}])"),
                    );
                    None
                }
            }
        }
        _ => super::cors::read(r, &n, None),
    });
    let request_headers = t
        .get("request_headers")
        .and_then(|n| super::transform::read_headers(r, &n));
    let response_headers = t
        .get("response_headers")
        .and_then(|n| super::transform::read_headers(r, &n));
    let rewrite = t.get("rewrite").and_then(|n| {
        if t.get("strip_prefix").is_some() {
            r.error(
                &n,
                "rewrite and strip_prefix cannot be combined on one route",
            );
        }
        super::transform::read_rewrite(r, &n)
    });
    let request_body = t
        .get("request_body")
        .and_then(|n| super::transform::read_body(r, &n));
    let response_body = t
        .get("response_body")
        .and_then(|n| super::transform::read_body(r, &n));
    let rate_limit = t.get("rate_limit").and_then(|n| {
        super::rate_limit::read_route_limit(r, &n, declared.tiers, t.get("auth").is_some())
    });
    let flag = |r: &mut Reader<'_>, key: &'static str, default: bool| {
        t.get(key).and_then(|n| r.boolean(&n)).unwrap_or(default)
    };
    let grpc = flag(r, "grpc", false);
    let grpc_web = flag(r, "grpc_web", false);
    let websocket = flag(r, "websocket", true);
    let websocket_idle_timeout = t
        .get("websocket_idle_timeout")
        .and_then(|n| r.duration(&n))
        .unwrap_or(std::time::Duration::from_secs(600));
    let cache = t
        .get("cache")
        .and_then(|n| super::cache::read_route(r, &n, !auth.is_empty() || t.get("auth").is_some()));
    if let Some(up) = &upstream {
        let protocol = declared.protocols.get(up.id.index()).copied();
        if (grpc || grpc_web) && protocol == Some(super::Protocol::Http1) {
            if let Some(n) = t.get(if grpc { "grpc" } else { "grpc_web" }) {
                r.warn(
                    &n,
                    format!(
                        "upstream \"{}\" speaks HTTP/1.1: gRPC calls on this route will fail \
                         with UNAVAILABLE (set protocol = \"h2\" or \"h2c\" on the upstream)",
                        up.name
                    ),
                );
            }
        }
    }

    if r.error_count() > errors_before {
        return None;
    }
    Some(RouteSpec {
        name: name?,
        host,
        path: path?,
        methods,
        headers,
        upstream: upstream?,
        strip_prefix,
        priority: priority?,
        auth,
        require_roles,
        require_scopes,
        hide_credentials,
        rate_limit,
        timeout,
        adaptive_limit,
        max_body,
        cors,
        request_headers,
        response_headers,
        rewrite,
        request_body,
        response_body,
        grpc,
        grpc_web,
        websocket,
        websocket_idle_timeout,
        cache,
    })
}

fn read_path(r: &mut Reader<'_>, key: &str, n: &Node<'_, '_>) -> Option<PathMatch> {
    if key == "path_regex" {
        return r.regex(n).map(PathMatch::Regex);
    }
    let v = r.string(n)?;
    if !v.starts_with('/') || http::uri::PathAndQuery::try_from(v).is_err() || v.contains('?') {
        r.error(
            n,
            format!("invalid path \"{v}\" (must start with / and hold no query)"),
        );
        return None;
    }
    Some(if key == "path_exact" {
        PathMatch::Exact(v.to_string())
    } else {
        // A trailing slash adds nothing under segment-boundary matching.
        let trimmed = v.trim_end_matches('/');
        PathMatch::Prefix(if trimmed.is_empty() { "/" } else { trimmed }.to_string())
    })
}

fn read_headers(r: &mut Reader<'_>, n: &Node<'_, '_>) -> Vec<(HeaderName, HeaderValue)> {
    let Some(t) = r.map(n) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (key, key_span, value) in t.entries() {
        let Ok(name) = HeaderName::from_bytes(key.as_bytes()) else {
            r.error_at(
                key_span,
                value.path(),
                format!("invalid header name \"{key}\""),
            );
            continue;
        };
        let Some(text) = r.string(&value) else {
            continue;
        };
        match HeaderValue::from_str(text) {
            Ok(v) => out.push((name, v)),
            Err(_) => r.error(&value, "invalid header value"),
        }
    }
    out
}

fn parse_host(v: &str) -> Option<HostMatch> {
    let lower = v.to_ascii_lowercase();
    let label_ok = |s: &str| {
        !s.is_empty()
            && s.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
    };
    if let Some(rest) = lower.strip_prefix("*.") {
        return label_ok(rest).then(|| HostMatch::Wildcard(format!(".{rest}")));
    }
    label_ok(&lower).then_some(HostMatch::Exact(lower))
}
