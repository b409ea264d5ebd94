//! Configuration (the bottom layer): one TOML file read once into a validated, immutable
//! [`Config`] with typed ids ([`ids`]).
//!
//! Reading goes through [`reader`], which keeps positions, so that [`load`] reports every
//! problem at once with file, line:column and key path; the keys a table accepts are the keys
//! its schema module reads. Nothing past this module sees a raw string where a typed value
//! belongs, and no name is looked up at request time. `Serialize` renders the effective
//! configuration (secrets redacted) for `GET /admin/config`.

pub mod admin;
pub mod auth;
pub mod cache;
pub mod cors;
pub mod error;
pub mod ids;
pub mod keys_file;
pub mod limits;
pub mod rate_limit;
mod reader;
pub mod resilience;
pub mod route;
pub mod secret;
mod ser;
pub mod server;
pub mod tls;
pub mod tracing;
pub mod transform;
pub mod upstream;

use std::path::{Path, PathBuf};

use serde::Serialize;

pub use admin::{AccessLogSettings, AdminSettings};
pub use auth::{
    ApiKeySpec, AuthSettings, IntrospectionSpec, JwtKeys, JwtSpec, OnIntrospectionError,
    ProviderKind, ProviderSpec,
};
pub use error::{ConfigError, ConfigErrors};
pub use ids::{ProviderId, Ref, RouteId, TierId, UpstreamId};
pub use keys_file::ApiKeyRecord;
pub use limits::{EncodedSlash, Limits, Underscores};
pub use rate_limit::{
    HeaderFamilies, LimitKey, OnStoreError, RateLimitSettings, RouteLimit, Store, SyncMode,
    TierSpec,
};
pub use resilience::{BreakerSpec, FailureKind, RetrySpec};
pub use route::{HostMatch, PathMatch, RouteSpec};
pub use secret::Secret;
pub use server::ServerSettings;
pub use upstream::{
    BackendSpec, Balance, HashKey, HealthCheckKind, HealthCheckSpec, Protocol, StickySpec,
    Timeouts, UpstreamSpec, UpstreamTls,
};

use reader::{Node, Reader};
use toml::de::DeTable;

/// A validated configuration snapshot. Serialises to the effective configuration with secrets
/// redacted (`GET /admin/config`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// The file it was read from.
    pub source: PathBuf,
    /// Process-level settings.
    pub server: ServerSettings,
    /// Upstreams, in file order; names are unique. [`UpstreamId`] indexes this list.
    pub upstreams: Vec<UpstreamSpec>,
    /// Routes, in file order; names are unique and every reference is resolved.
    /// [`RouteId`] indexes this list.
    pub routes: Vec<RouteSpec>,
    /// The admin listener; `None` means no admin listener.
    pub admin: Option<AdminSettings>,
    /// Access log settings.
    pub access_log: AccessLogSettings,
    /// Authentication providers.
    pub auth: AuthSettings,
    /// Rate limiting tiers and store.
    pub rate_limit: RateLimitSettings,
    /// Span export.
    pub tracing: tracing::TracingSettings,
    /// The response cache's memory.
    pub cache: cache::CacheSettings,
    /// Problems that do not make the file invalid (a certificate about to expire); printed by
    /// `-t` and logged when the file is loaded.
    #[serde(skip)]
    pub warnings: Vec<ConfigError>,
}

impl Config {
    /// The route `id`.
    pub fn route(&self, id: RouteId) -> &RouteSpec {
        &self.routes[id.index()]
    }

    /// The upstream `id`.
    pub fn upstream(&self, id: UpstreamId) -> &UpstreamSpec {
        &self.upstreams[id.index()]
    }

    /// Every route with its id.
    pub fn route_ids(&self) -> impl Iterator<Item = (RouteId, &RouteSpec)> {
        self.routes
            .iter()
            .enumerate()
            .map(|(i, r)| (RouteId::new(i), r))
    }

    /// The effective configuration as JSON, secrets redacted.
    pub fn render(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }))
    }
}

/// Reads and validates the file at `path`. Relative paths inside the file are relative to the
/// file's directory (a daemonised process's working directory is `/`).
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let path = absolute.as_path();
    let src = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            path: String::new(),
            message: format!("cannot read configuration file: {e}"),
        }])
    })?;
    parse(path, &src)
}

/// Gives every shared circuit breaker its Redis URL (its own `redis_url`, else `[rate_limit]
/// redis_url`), and reports shared breakers without one, or with a different one than the
/// others (they share one connection).
fn resolve_shared_breakers(
    r: &mut Reader<'_>,
    node: Option<Node<'_, '_>>,
    upstreams: &mut [UpstreamSpec],
    store: &rate_limit::Store,
) {
    let fallback = match store {
        rate_limit::Store::Redis(url) => Some(url.clone()),
        _ => None,
    };
    let mut first: Option<String> = None;
    for u in upstreams.iter_mut() {
        let Some(b) = u.circuit_breaker.as_mut().filter(|b| b.shared) else {
            continue;
        };
        let at = node
            .as_ref()
            .and_then(|n| r.map(n))
            .and_then(|t| {
                t.entries()
                    .into_iter()
                    .find(|(name, _, _)| *name == u.name)
                    .map(|(_, _, n)| n)
            })
            .and_then(|n| r.map(&n))
            .and_then(|t| t.get("circuit_breaker"))
            .and_then(|n| r.map(&n))
            .and_then(|t| t.get("shared"));
        let (span, path) = match &at {
            Some(n) => (n.span(), n.path().to_string()),
            None => (0..0, format!("upstreams.{}.circuit_breaker.shared", u.name)),
        };
        match b.redis_url.clone().or_else(|| fallback.clone()) {
            None => r.error_at(
                span,
                &path,
                "a shared circuit breaker needs a Redis: set redis_url here or [rate_limit] redis_url (a Redis Cluster cannot carry it)",
            ),
            Some(url) => {
                match &first {
                    Some(f) if *f != url => r.error_at(
                        span,
                        &path,
                        "shared circuit breakers use one Redis: every one must resolve to the same redis_url",
                    ),
                    Some(_) => {}
                    None => first = Some(url.clone()),
                }
                b.redis_url = Some(url);
            }
        }
    }
}

/// Validates `src` as if read from `path`.
pub fn parse(path: &Path, src: &str) -> Result<Config, ConfigErrors> {
    let mut r = Reader::new(path, src);
    let (doc, syntax_errors) = DeTable::parse_recoverable(src);
    if !syntax_errors.is_empty() {
        for e in syntax_errors {
            let span = e.span().unwrap_or(0..0);
            r.error_at(
                span,
                "",
                format!("TOML syntax error: {}", e.message().trim()),
            );
        }
        return Err(ConfigErrors(r.into_errors()));
    }
    let root_value = toml::Spanned::new(0..src.len(), toml::de::DeValue::Table(doc.into_inner()));
    let root = Node::root(&root_value);
    let Some(top) = r.table(&root) else {
        return Err(ConfigErrors(r.into_errors()));
    };

    let server = server::read(&mut r, top.get("server").as_ref());
    let admin = top.get("admin").and_then(|n| admin::read_admin(&mut r, &n));
    let access_log = admin::read_access_log(&mut r, top.get("access_log").as_ref());
    if let (Some(a), Some(n)) = (&admin, top.get("admin")) {
        let tls_listen = server.tls.as_ref().map_or(&[][..], |t| &t.listen[..]);
        if server.listen.contains(&a.listen) || tls_listen.contains(&a.listen) {
            let at = r
                .map(&n)
                .and_then(|t| t.get("listen"))
                .map_or(n.span(), |l| l.span());
            r.error_at(
                at,
                "admin.listen",
                format!("{} is also a traffic listener", a.listen),
            );
        }
    }

    let (auth, providers) = auth::read(&mut r, top.get("auth").as_ref());
    let rate_limit = rate_limit::read(&mut r, top.get("rate_limit").as_ref());
    let tracing = tracing::read(&mut r, top.get("tracing").as_ref());
    let cache = cache::read(&mut r, top.get("cache").as_ref());
    let tiers: Vec<String> = rate_limit.tiers.iter().map(|t| t.name.clone()).collect();
    let mut upstreams = Vec::new();
    let mut declared_upstreams = Vec::new();
    if let Some(n) = top.get("upstreams") {
        for (name, value) in r.named(&n, "upstream") {
            let id = upstream::read(&mut r, name, &value).map(|u| {
                upstreams.push(u);
                UpstreamId::new(upstreams.len() - 1)
            });
            declared_upstreams.push((name, id));
        }
    }
    resolve_shared_breakers(
        &mut r,
        top.get("upstreams"),
        &mut upstreams,
        &rate_limit.store,
    );
    let mut shared_cors = Vec::new();
    if let Some(n) = top.get("cors") {
        for (name, value) in r.named(&n, "CORS settings") {
            let spec = cors::read(&mut r, &value, Some(name));
            shared_cors.push((name.to_string(), spec));
        }
    }
    let protocols: Vec<Protocol> = upstreams.iter().map(|u| u.protocol).collect();
    let declared = route::Declared {
        upstreams: &declared_upstreams,
        protocols: &protocols,
        providers: &providers,
        tiers: &tiers,
        cors: &shared_cors,
    };

    let mut routes: Vec<RouteSpec> = Vec::new();
    if let Some(n) = top.get("routes") {
        if let Some(items) = r.array(&n) {
            let mut seen: Vec<String> = Vec::new();
            for item in &items {
                let name = r
                    .map(item)
                    .and_then(|t| t.get("name"))
                    .and_then(|n| n.value().as_str().map(|s| (s.to_string(), n)));
                let route = route::read(&mut r, item, &declared);
                if let Some((name, node)) = name {
                    if seen.contains(&name) {
                        r.error(&node, format!("duplicate route name \"{name}\""));
                        continue;
                    }
                    seen.push(name);
                }
                routes.extend(route);
            }
        }
    }

    let warnings = r.take_warnings();
    let errors = r.into_errors();
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    Ok(Config {
        warnings,
        source: path.to_path_buf(),
        server,
        upstreams,
        routes,
        admin,
        access_log,
        auth,
        rate_limit,
        tracing,
        cache,
    })
}
