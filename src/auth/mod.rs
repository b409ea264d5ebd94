//! Authentication and authorisation (domain layer): verifying credentials with the providers a
//! route accepts (`jwt:NAME`, `api_key:NAME`; any one suffices) and checking roles and scopes.
//! The resulting [`Identity`] is what rate limiting keys on and what the upstream is told in
//! `X-Consumer-*` and `X-Auth-*` headers. The request-path policies that use this live in
//! [`crate::policy`]; the JWKS refresh loop in [`crate::services`].

pub mod api_key;
pub mod claims;
pub mod identity;
pub mod introspection;
pub mod jwks;
pub mod jwt;
pub mod mint;
pub mod token_cache;

use std::sync::Arc;
use std::time::SystemTime;

use http::HeaderMap;
use prometheus::IntCounter;

use crate::config::{Config, JwtKeys, ProviderId, ProviderKind};
pub use identity::{Denial, Identity, Reason};
use jwks::{JwksMetrics, JwksSet};

/// Credentials longer than this are refused without being parsed.
pub const MAX_CREDENTIAL_LEN: usize = 8 * 1024;

/// Identity headers the gateway sets; any copy a client sends is removed.
pub const IDENTITY_HEADERS: [http::HeaderName; 6] = [
    http::HeaderName::from_static("x-consumer-id"),
    http::HeaderName::from_static("x-consumer-tier"),
    http::HeaderName::from_static("x-auth-method"),
    http::HeaderName::from_static("x-auth-roles"),
    http::HeaderName::from_static("x-auth-scopes"),
    CLIENT_CERT_SUBJECT,
];

/// How [`IDENTITY_HEADERS`] are spelled on the wire.
pub const IDENTITY_HEADER_TEXT: [&str; 6] = [
    "x-consumer-id",
    "x-consumer-tier",
    "x-auth-method",
    "x-auth-roles",
    "x-auth-scopes",
    "x-client-cert-subject",
];

/// The subject of the client's TLS certificate (mTLS), sent upstream when there is one.
pub const CLIENT_CERT_SUBJECT: http::HeaderName =
    http::HeaderName::from_static("x-client-cert-subject");

enum Provider {
    Jwt(jwt::JwtVerifier),
    ApiKey(api_key::ApiKeyStore),
    Introspection(Arc<introspection::Introspector>),
}

/// Where providers get their metric handles (the metrics registry implements it).
pub trait ProviderMetrics {
    /// A JWKS provider's handles.
    fn jwks(&self, provider: &str) -> JwksMetrics;
    /// An introspection provider's call counters.
    fn introspection(&self, provider: &str) -> introspection::IntrospectionCounters;
}

/// Every provider of a snapshot, indexed by [`ProviderId`].
pub struct Authenticator {
    providers: Vec<Provider>,
    jwks: Vec<Arc<JwksSet>>,
}

impl Authenticator {
    /// Builds verifiers and key indexes; JWKS sets are carried over from `previous` when the
    /// provider and URL are unchanged (keys already fetched stay), and introspection
    /// providers (with their caches) when their settings are. `metrics` gives the metric
    /// handles of new providers.
    pub fn new(
        config: &Config,
        previous: Option<&Authenticator>,
        metrics: &dyn ProviderMetrics,
    ) -> Self {
        let mut providers = Vec::new();
        let mut jwks = Vec::new();
        for (i, p) in config.auth.providers.iter().enumerate() {
            let id = ProviderId::new(i);
            let provider = match &p.kind {
                ProviderKind::Jwt(spec) => {
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
                    Provider::Jwt(jwt::JwtVerifier::new(id, spec, set))
                }
                ProviderKind::ApiKey(spec) => Provider::ApiKey(api_key::ApiKeyStore::new(id, spec)),
                ProviderKind::Introspection(spec) => {
                    // Kept (with its cache) when the provider at the same position is the same:
                    // identities record their provider by position.
                    let kept = previous.and_then(|p| match p.providers.get(id.index()) {
                        Some(Provider::Introspection(i)) if i.spec() == spec => Some(Arc::clone(i)),
                        _ => None,
                    });
                    Provider::Introspection(kept.unwrap_or_else(|| {
                        Arc::new(introspection::Introspector::new(
                            id,
                            spec,
                            metrics.introspection(&spec.name),
                        ))
                    }))
                }
            };
            providers.push(provider);
        }
        Authenticator { providers, jwks }
    }

    /// The JWKS sets in use.
    pub fn jwks_sets(&self) -> &[Arc<JwksSet>] {
        &self.jwks
    }

    /// The header that carries provider `id`'s credentials (removed when `hide_credentials`).
    pub fn credential_header(&self, id: ProviderId) -> http::HeaderName {
        match &self.providers[id.index()] {
            Provider::Jwt(_) | Provider::Introspection(_) => http::header::AUTHORIZATION,
            Provider::ApiKey(k) => k.header().clone(),
        }
    }

    /// Authenticates a request with any of `providers` (in order). When all refuse, the most
    /// specific refusal is reported ([`Reason::specificity`]; the first among equals); with no
    /// credential for any of them, [`Reason::Missing`].
    pub async fn authenticate(
        &self,
        providers: &[ProviderId],
        headers: &HeaderMap,
    ) -> Result<Arc<Identity>, Denial> {
        let bearer = bearer_token(headers);
        let mut refusal: Option<Denial> = None;
        for &id in providers {
            let outcome = match &self.providers[id.index()] {
                Provider::Jwt(v) => match &bearer {
                    Some(Ok(token)) => Some(v.verify(token).await),
                    Some(Err(d)) => Some(Err(d.clone())),
                    None => None,
                },
                Provider::ApiKey(k) => headers
                    .get(k.header())
                    .map(|v| k.verify(v.as_bytes(), SystemTime::now())),
                Provider::Introspection(i) => match &bearer {
                    Some(Ok(token)) => Some(i.verify(token).await),
                    Some(Err(d)) => Some(Err(d.clone())),
                    None => None,
                },
            };
            match outcome {
                Some(Ok(identity)) => return Ok(identity),
                Some(Err(mut d)) => {
                    d.provider = Some(id);
                    let more_specific = refusal
                        .as_ref()
                        .is_none_or(|r| d.reason.specificity() > r.reason.specificity());
                    if more_specific {
                        refusal = Some(d);
                    }
                }
                None => {}
            }
        }
        Err(refusal.unwrap_or_else(|| Denial::new(Reason::Missing, "credentials required")))
    }
}

/// Authentication counters of one route (`gatehouse_auth_total`), filled by the metrics
/// registry: one row per provider the route accepts, in the route's order, plus a last row for
/// requests without any credential; one column per result (success, then [`Reason::ALL`]).
pub struct AuthCounters {
    providers: Vec<ProviderId>,
    rows: Vec<[IntCounter; 1 + Reason::ALL.len()]>,
}

impl AuthCounters {
    /// Counters for a route accepting `providers`; `rows` has one more row than `providers`.
    pub fn new(providers: Vec<ProviderId>, rows: Vec<[IntCounter; 1 + Reason::ALL.len()]>) -> Self {
        AuthCounters { providers, rows }
    }

    /// Counts one outcome: `reason` `None` is a success; `provider` `None` means no credential.
    pub fn record(&self, provider: Option<ProviderId>, reason: Option<Reason>) {
        let row = provider
            .and_then(|p| self.providers.iter().position(|x| *x == p))
            .unwrap_or(self.providers.len());
        let col = reason.map_or(0, |r| r.index() + 1);
        if let Some(c) = self.rows.get(row) {
            c[col].inc();
        }
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

/// Checks role (any of `roles`) and scope (all of `scopes`) requirements. The denial names the
/// identity's provider.
pub fn authorize(roles: &[String], scopes: &[String], identity: &Identity) -> Result<(), Denial> {
    let denial = |reason, description: String| {
        let mut d = Denial::new(reason, description);
        d.provider = Some(identity.provider);
        d
    };
    if !roles.is_empty() && !roles.iter().any(|r| identity.roles.contains(r)) {
        return Err(denial(
            Reason::MissingRole,
            format!("requires one of the roles: {}", roles.join(", ")),
        ));
    }
    if let Some(missing) = scopes.iter().find(|s| !identity.scopes.contains(s)) {
        return Err(denial(
            Reason::InsufficientScope,
            format!("requires scope {missing}"),
        ));
    }
    Ok(())
}
