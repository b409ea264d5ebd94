//! The runtime snapshot: a validated [`Config`] plus everything built from it once (route
//! table, clusters, trusted proxy set). Requests load the current snapshot once and use it to
//! the end; a reload builds a new one and swaps it in atomically.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::forwarding::TrustedProxies;
use crate::routing::Router;
use crate::upstream::Cluster;

/// Everything the request path needs, built from one configuration.
pub struct Snapshot {
    config: Arc<Config>,
    router: Router,
    clusters: Vec<Arc<Cluster>>,
    trusted: TrustedProxies,
}

impl Snapshot {
    /// Builds a snapshot; backend state (health, in-flight) is carried over from `previous`
    /// for every backend whose upstream name and address are unchanged.
    pub fn build(config: Config, previous: Option<&Snapshot>) -> Self {
        let clusters = config
            .upstreams
            .iter()
            .map(|spec| {
                let old = previous.and_then(|p| p.clusters.iter().find(|c| c.name() == spec.name));
                Arc::new(Cluster::new(spec, |addr| {
                    old.and_then(|c| c.members().iter().find(|m| m.addr == addr))
                        .map(|m| Arc::clone(&m.state))
                }))
            })
            .collect();
        Snapshot {
            router: Router::new(&config.routes),
            trusted: TrustedProxies::new(&config.server.trusted_proxies),
            clusters,
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

    /// Peers whose forwarding headers are believed.
    pub fn trusted(&self) -> &TrustedProxies {
        &self.trusted
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
