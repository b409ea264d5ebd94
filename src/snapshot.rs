//! The runtime snapshot: a validated [`Config`] plus everything built from it once (route
//! table, clusters, trusted proxy set, metric handles). Requests load the current snapshot once
//! and use it to the end; a reload builds a new one and swaps it in atomically.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::auth::Authenticator;
use crate::config::{AuthRef, Config};
use crate::forwarding::TrustedProxies;
use crate::metrics::{AuthMetrics, Metrics, RouteMetrics, UpstreamMetrics, NO_ROUTE};
use crate::ratelimit::RateLimiter;
use crate::routing::Router;
use crate::upstream::Cluster;

/// Everything the request path needs, built from one configuration.
pub struct Snapshot {
    config: Arc<Config>,
    router: Router,
    clusters: Vec<Arc<Cluster>>,
    route_upstream: Vec<usize>,
    trusted: TrustedProxies,
    route_metrics: Vec<RouteMetrics>,
    unmatched_metrics: RouteMetrics,
    upstream_metrics: Vec<UpstreamMetrics>,
    auth: Authenticator,
    auth_metrics: Vec<AuthMetrics>,
    ratelimit: RateLimiter,
}

impl Snapshot {
    /// Builds a snapshot; backend state (health, in-flight, drained) is carried over from
    /// `previous` for every backend whose upstream name and address are unchanged.
    pub fn build(config: Config, previous: Option<&Snapshot>, metrics: &Metrics) -> Self {
        let clusters = config
            .upstreams
            .iter()
            .map(|spec| {
                let old = previous.and_then(|p| p.clusters.iter().find(|c| c.name() == spec.name));
                let state = old.map_or_else(crate::upstream::UpstreamState::new, |c| {
                    Arc::clone(&c.state)
                });
                Arc::new(Cluster::new(
                    spec,
                    |addr| {
                        old.and_then(|c| c.members().iter().find(|m| m.addr == addr))
                            .map(|m| Arc::clone(&m.state))
                    },
                    state,
                    metrics,
                ))
            })
            .collect();
        // Validation guarantees every route's upstream exists.
        let route_upstream = config
            .routes
            .iter()
            .map(|r| config.upstream_index(&r.upstream).unwrap_or(0))
            .collect();
        let auth = Authenticator::new(&config, previous.map(|p| &p.auth), metrics);
        let auth_metrics = config
            .routes
            .iter()
            .map(|r| {
                let methods: Vec<String> = r
                    .auth
                    .iter()
                    .map(|a| match a {
                        AuthRef::Jwt(n) => format!("jwt:{n}"),
                        AuthRef::ApiKey(n) => format!("api_key:{n}"),
                    })
                    .collect();
                metrics.auth(&r.name, &methods)
            })
            .collect();
        let ratelimit = RateLimiter::new(&config, previous.map(|p| &p.ratelimit), metrics);
        Snapshot {
            ratelimit,
            auth,
            auth_metrics,
            router: Router::new(&config.routes),
            trusted: TrustedProxies::new(&config.server.trusted_proxies),
            route_metrics: config
                .routes
                .iter()
                .map(|r| metrics.route(&r.name, &r.upstream))
                .collect(),
            unmatched_metrics: metrics.route(NO_ROUTE, NO_ROUTE),
            upstream_metrics: config
                .upstreams
                .iter()
                .map(|u| metrics.upstream(&u.name))
                .collect(),
            clusters,
            route_upstream,
            config: Arc::new(config),
        }
    }

    /// The configuration this snapshot was built from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The route table.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The clusters, indexed like `config().upstreams`.
    pub fn clusters(&self) -> &[Arc<Cluster>] {
        &self.clusters
    }

    /// Index of the upstream (and cluster) that route `route` sends to.
    pub fn upstream_of(&self, route: usize) -> usize {
        self.route_upstream[route]
    }

    /// The cluster that route `route` sends to.
    pub fn cluster_of(&self, route: usize) -> &Arc<Cluster> {
        &self.clusters[self.route_upstream[route]]
    }

    /// Peers whose forwarding headers are believed.
    pub fn trusted(&self) -> &TrustedProxies {
        &self.trusted
    }

    /// Metric handles of a route, or of unmatched requests for `None`.
    pub fn route_metrics(&self, route: Option<usize>) -> &RouteMetrics {
        route.map_or(&self.unmatched_metrics, |i| &self.route_metrics[i])
    }

    /// The authenticator.
    pub fn auth(&self) -> &Authenticator {
        &self.auth
    }

    /// The rate limiter.
    pub fn ratelimit(&self) -> &RateLimiter {
        &self.ratelimit
    }

    /// Authentication counters of route `route`.
    pub fn auth_metrics(&self, route: usize) -> &AuthMetrics {
        &self.auth_metrics[route]
    }

    /// Metric handles of an upstream.
    pub fn upstream_metrics(&self, upstream: usize) -> &UpstreamMetrics {
        &self.upstream_metrics[upstream]
    }
}

/// The shared, atomically swappable current snapshot.
#[derive(Clone)]
pub struct SnapshotStore(Arc<ArcSwap<Snapshot>>);

impl SnapshotStore {
    /// A store holding `snapshot`.
    pub fn new(snapshot: Snapshot) -> Self {
        SnapshotStore(Arc::new(ArcSwap::from_pointee(snapshot)))
    }

    /// The current snapshot.
    pub fn load(&self) -> Arc<Snapshot> {
        self.0.load_full()
    }

    /// Replaces the current snapshot.
    pub fn store(&self, snapshot: Snapshot) {
        self.0.store(Arc::new(snapshot));
    }
}
