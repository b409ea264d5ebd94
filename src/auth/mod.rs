//! Authentication and authorisation, run in `request_filter` once the route is known.
//! A route lists providers (`jwt:NAME`, `api_key:NAME`); any one suffices. The resulting
//! [`Identity`] is what rate limiting keys on and what the upstream is told in `X-Consumer-*`
//! and `X-Auth-*` headers (client-sent copies of those are always removed).

pub mod api_key;
pub mod identity;
pub mod jwks;
pub mod jwt;
pub mod token_cache;

use std::sync::Arc;
use std::time::SystemTime;

use http::HeaderMap;

use crate::config::{AuthRef, Config, JwtKeys, RouteSpec};
use crate::metrics::Metrics;
pub use identity::{Denial, Identity, Reason};
use jwks::JwksSet;

/// Credentials longer than this are refused without being parsed.
pub const MAX_CREDENTIAL_LEN: usize = 8 * 1024;

/// Identity headers the gateway sets; any copy a client sends is removed.
pub const IDENTITY_HEADERS: [&str; 5] = [
    "x-consumer-id",
    "x-consumer-tier",
    "x-auth-method",
    "x-auth-roles",
    "x-auth-scopes",
];

enum Provider {
    Jwt(jwt::JwtVerifier),
    ApiKey(api_key::ApiKeyStore),
}

impl Provider {
    fn label(&self) -> &str {
        match self {
            Provider::Jwt(j) => j.label(),
            Provider::ApiKey(k) => k.label(),
        }
    }
}

/// Every provider of a snapshot, and which routes use which.
pub struct Authenticator {
    providers: Vec<Provider>,
    jwks: Vec<Arc<JwksSet>>,
    route_providers: Vec<Vec<usize>>,
}

impl Authenticator {
    /// Builds verifiers and key indexes; JWKS sets are carried over from `previous` when the
    /// provider and URL are unchanged (keys already fetched stay).
    pub fn new(config: &Config, previous: Option<&Authenticator>, metrics: &Metrics) -> Self {
        let mut providers = Vec::new();
        let mut jwks = Vec::new();
        for spec in &config.auth.jwt {
            let set = match &spec.keys {
                JwtKeys::JwksUrl {
                    url,
                    refresh,
                    min_refetch_interval,
                } => {
                    let kept = previous.and_then(|p| {
                        p.jwks
                            .iter()
                            .find(|s| s.url() == url && s.provider() == spec.name)
                    });
                    let set = match kept {
                        Some(s) if s.settings() == (*refresh, *min_refetch_interval) => {
                            Arc::clone(s)
                        }
                        _ => JwksSet::new(
                            &spec.name,
                            url,
                            *refresh,
                            *min_refetch_interval,
                            metrics.jwks(&spec.name),
                        ),
                    };
                    jwks.push(Arc::clone(&set));
                    Some(set)
                }
                _ => None,
            };
            providers.push(Provider::Jwt(jwt::JwtVerifier::new(spec, set)));
        }
        for spec in &config.auth.api_keys {
            providers.push(Provider::ApiKey(api_key::ApiKeyStore::new(spec)));
        }
        let route_providers = config
            .routes
            .iter()
            .map(|r| {
                r.auth
                    .iter()
                    .filter_map(|a| {
                        let label = match a {
                            AuthRef::Jwt(n) => format!("jwt:{n}"),
                            AuthRef::ApiKey(n) => format!("api_key:{n}"),
                        };
                        providers.iter().position(|p| p.label() == label)
                    })
                    .collect()
            })
            .collect();
        Authenticator {
            providers,
            jwks,
            route_providers,
        }
    }

    /// The JWKS sets in use.
    pub fn jwks_sets(&self) -> &[Arc<JwksSet>] {
        &self.jwks
    }

    /// Headers that carry route `route`'s credentials (removed when `hide_credentials`).
    pub fn credential_headers(&self, route: usize) -> impl Iterator<Item = http::HeaderName> + '_ {
        self.route_providers[route]
            .iter()
            .map(|&i| match &self.providers[i] {
                Provider::Jwt(_) => http::header::AUTHORIZATION,
                Provider::ApiKey(k) => k.header().clone(),
            })
    }

    /// Whether route `route` needs authentication.
    pub fn protects(&self, route: usize) -> bool {
        !self.route_providers[route].is_empty()
    }

    /// Authenticates a request to route `route` with any of its providers, then checks the
    /// route's roles and scopes. With several providers, the first failure is reported.
    pub async fn authenticate(
        &self,
        route: usize,
        spec: &RouteSpec,
        headers: &HeaderMap,
    ) -> Result<Arc<Identity>, Denial> {
        let bearer = bearer_token(headers);
        let mut first_failure: Option<Denial> = None;
        for &i in &self.route_providers[route] {
            let provider = &self.providers[i];
            let outcome = match provider {
                Provider::Jwt(v) => match &bearer {
                    Some(Ok(token)) => Some(v.verify(token).await),
                    Some(Err(d)) => Some(Err(d.clone())),
                    None => None,
                },
                Provider::ApiKey(k) => headers
                    .get(k.header())
                    .map(|v| k.verify(v.as_bytes(), SystemTime::now())),
            };
            match outcome {
                Some(Ok(identity)) => {
                    return match authorize(spec, &identity) {
                        Ok(()) => Ok(identity),
                        Err(mut d) => {
                            d.method = Some(identity.method.clone());
                            Err(d)
                        }
                    };
                }
                Some(Err(mut d)) => {
                    d.method = Some(provider.label().to_string());
                    first_failure.get_or_insert(d);
                }
                None => {}
            }
        }
        Err(first_failure.unwrap_or_else(|| Denial::new(Reason::Missing, "credentials required")))
    }
}

/// The bearer token of `Authorization`, if that header uses the Bearer scheme.
fn bearer_token(headers: &HeaderMap) -> Option<Result<&str, Denial>> {
    let value = headers.get(http::header::AUTHORIZATION)?;
    if value.len() > MAX_CREDENTIAL_LEN + 7 {
        return Some(Err(Denial::new(Reason::Malformed, "credential too large")));
    }
    let text = value.to_str().ok()?;
    let (scheme, token) = text.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| Ok(token.trim()))
}

/// Checks the route's role (any of) and scope (all of) requirements.
pub fn authorize(spec: &RouteSpec, identity: &Identity) -> Result<(), Denial> {
    if !spec.require_roles.is_empty()
        && !spec
            .require_roles
            .iter()
            .any(|r| identity.roles.contains(r))
    {
        return Err(Denial::new(
            Reason::MissingRole,
            format!(
                "requires one of the roles: {}",
                spec.require_roles.join(", ")
            ),
        ));
    }
    if let Some(missing) = spec
        .require_scopes
        .iter()
        .find(|s| !identity.scopes.contains(s))
    {
        return Err(Denial::new(
            Reason::InsufficientScope,
            format!("requires scope {missing}"),
        ));
    }
    Ok(())
}
