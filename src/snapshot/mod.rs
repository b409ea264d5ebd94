//! The runtime snapshot (the layer above `metrics`): a validated [`Config`] plus everything
//! built from it once: route table, clusters, trusted proxy set, authenticator, rate limiter,
//! each route's policy [`Pipeline`] and the metric handles. Requests load the current snapshot
//! once and use it to the end; a reload builds a new one and swaps it in atomically. Live
//! gauges read the current snapshot at scrape time ([`gauges`]).

pub mod gauges;

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::auth::Authenticator;
use crate::cache::CachePolicy;
use crate::config::{Config, RouteId, UpstreamId};
use crate::forwarding::TrustedProxies;
use crate::metrics::{
    CacheResults, EdgeCounters, Metrics, RouteMetrics, UpstreamMetrics, NO_ROUTE,
};
use crate::policy::{Parts, Pipeline};
use crate::ratelimit::RateLimiter;
use crate::routing::Router;
use crate::upstream::{Cluster, UpstreamState};

/// A caching route's policy and result counters.
pub struct RouteCaching {
    /// What the route caches and how.
    pub policy: CachePolicy,
    /// `gatehouse_cache_requests_total` of the route, by [`crate::metrics::CACHE_RESULTS`].
    pub results: CacheResults,
}

/// Everything the request path needs, built from one configuration.
pub struct Snapshot {
    config: Arc<Config>,
    router: Router,
    clusters: Vec<Arc<Cluster>>,
    trusted: TrustedProxies,
    route_metrics: Vec<RouteMetrics>,
    unmatched_metrics: RouteMetrics,
    upstream_metrics: Vec<UpstreamMetrics>,
    auth: Arc<Authenticator>,
    ratelimit: Arc<RateLimiter>,
    pipelines: Vec<Pipeline>,
    caching: Vec<Option<RouteCaching>>,
    edge: EdgeCounters,
    certs: Option<Arc<crate::tls::CertStore>>,
    generation: u64,
    loaded_at: std::time::SystemTime,
}

impl Snapshot {
    /// Builds a snapshot; live state (backend health, in-flight, drained, breakers, upstream
    /// traffic, JWKS keys, rate-limit counters, the Redis connection) is carried over from
    /// `previous` wherever the name (and address, URL or target) is unchanged.
    pub fn build(config: Config, previous: Option<&Snapshot>, metrics: &Metrics) -> Self {
        let clusters: Vec<Arc<Cluster>> = config
            .upstreams
            .iter()
            .map(|spec| {
                let old = previous.and_then(|p| p.clusters.iter().find(|c| c.name() == spec.name));
                let state = old.map_or_else(UpstreamState::new, |c| Arc::clone(&c.state));
                Arc::new(Cluster::new(
                    spec,
                    |addr| {
                        old.and_then(|c| c.members().iter().find(|m| m.addr == addr))
                            .map(|m| Arc::clone(&m.state))
                    },
                    state,
                    |b| metrics.breaker(&spec.name, &b.addr.to_string()),
                ))
            })
            .collect();
        let auth = Arc::new(Authenticator::new(
            &config,
            previous.map(|p| &*p.auth),
            metrics,
        ));
        let ratelimit = Arc::new(RateLimiter::new(
            &config,
            previous.map(|p| &*p.ratelimit),
            metrics.ratelimit_store(),
        ));
        let tiers: Vec<String> = config
            .rate_limit
            .tiers
            .iter()
            .map(|t| t.name.clone())
            .collect();
        let pipelines = config
            .routes
            .iter()
            .map(|r| {
                let parts = Parts {
                    auth: &auth,
                    limiter: &ratelimit,
                    cluster: &clusters[r.upstream.id.index()],
                    max_body: config.server.max_body,
                    upstream_name: &r.upstream.name,
                    tiers: &tiers,
                };
                Pipeline::build(r, &parts, metrics)
            })
            .collect();
        let caching = config
            .routes
            .iter()
            .map(|r| {
                r.cache.as_ref().map(|spec| RouteCaching {
                    policy: CachePolicy::new(&r.name, spec),
                    results: metrics.cache_results(&r.name),
                })
            })
            .collect();
        Snapshot {
            caching,
            router: Router::new(&config.routes),
            trusted: TrustedProxies::new(&config.server.trusted_proxies),
            // Resolving the handles also makes each route's series visible at zero.
            route_metrics: config
                .routes
                .iter()
                .map(|r| metrics.route(&r.name, &r.upstream.name))
                .collect(),
            unmatched_metrics: metrics.route(NO_ROUTE, NO_ROUTE),
            upstream_metrics: config
                .upstreams
                .iter()
                .map(|u| metrics.upstream(u))
                .collect(),
            clusters,
            auth,
            ratelimit,
            pipelines,
            edge: metrics.edge().clone(),
            // Certificates were checked when the configuration was loaded.
            certs: config
                .server
                .tls
                .as_ref()
                .and_then(|t| crate::tls::CertStore::new(t).ok())
                .map(Arc::new),
            config: Arc::new(config),
            generation: previous.map_or(1, |p| p.generation + 1),
            loaded_at: std::time::SystemTime::now(),
        }
    }

    /// 1 for the configuration the process started with, one more for each applied reload.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// When this snapshot was built.
    pub fn loaded_at(&self) -> std::time::SystemTime {
        self.loaded_at
    }

    /// The configuration this snapshot was built from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The route table.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The clusters, indexed by [`UpstreamId`].
    pub fn clusters(&self) -> &[Arc<Cluster>] {
        &self.clusters
    }

    /// The upstream that route `route` sends to.
    pub fn upstream_of(&self, route: RouteId) -> UpstreamId {
        self.config.route(route).upstream.id
    }

    /// The cluster that route `route` sends to.
    pub fn cluster_of(&self, route: RouteId) -> &Arc<Cluster> {
        &self.clusters[self.upstream_of(route).index()]
    }

    /// The policy pipeline of route `route`.
    pub fn pipeline(&self, route: RouteId) -> &Pipeline {
        &self.pipelines[route.index()]
    }

    /// The route's response caching, when it caches.
    pub fn caching(&self, route: RouteId) -> Option<&RouteCaching> {
        self.caching[route.index()].as_ref()
    }

    /// Peers whose forwarding headers are believed.
    pub fn trusted(&self) -> &TrustedProxies {
        &self.trusted
    }

    /// Metric handles of a route, or of unmatched requests for `None`.
    pub fn route_metrics(&self, route: Option<RouteId>) -> &RouteMetrics {
        route.map_or(&self.unmatched_metrics, |r| &self.route_metrics[r.index()])
    }

    /// The authentication providers.
    pub fn auth(&self) -> &Authenticator {
        &self.auth
    }

    /// The rate limiter.
    pub fn ratelimit(&self) -> &RateLimiter {
        &self.ratelimit
    }

    /// Counts an edge refusal (position in
    /// [`EDGE_REASONS`](crate::refusal::EDGE_REASONS)).
    pub fn edge_refusal(&self, reason: usize) {
        self.edge.record(reason);
    }

    /// The TLS certificates, when TLS listeners are configured.
    pub fn certs(&self) -> Option<&crate::tls::CertStore> {
        self.certs.as_deref()
    }

    /// Metric handles of an upstream.
    pub fn upstream_metrics(&self, upstream: UpstreamId) -> &UpstreamMetrics {
        &self.upstream_metrics[upstream.index()]
    }
}

/// The shared, atomically swappable current snapshot.
#[derive(Clone)]
pub struct SnapshotStore(Arc<ArcSwap<Snapshot>>);

impl std::fmt::Debug for SnapshotStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SnapshotStore")
    }
}

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
