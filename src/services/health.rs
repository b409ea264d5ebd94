//! Runs active health check rounds for every cluster of the current snapshot that is due one,
//! and updates the clusters' adaptive limit factors every 500 ms. One service serves every
//! snapshot, so a reload that adds, removes or changes upstreams needs no new service (Pingora
//! cannot add services after start).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::snapshot::SnapshotStore;
use crate::upstream::health::run_round;

/// How often the scheduler looks for clusters that are due a check round.
const TICK: Duration = Duration::from_millis(50);

/// The background service that drives every cluster's checks.
pub struct HealthService {
    store: SnapshotStore,
}

impl HealthService {
    /// A service checking whatever `store` currently holds.
    pub fn new(store: SnapshotStore) -> Self {
        HealthService { store }
    }
}

#[async_trait]
impl BackgroundService for HealthService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut round: u64 = 0;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let snapshot = self.store.load();
            let now = Instant::now();
            round += 1;
            if round.is_multiple_of(10) {
                // Every 500 ms: the adaptive limit factors follow upstream health.
                let second = crate::clock::unix_secs();
                for cluster in snapshot.clusters() {
                    cluster.update_factor(second);
                }
            }
            for cluster in snapshot.clusters() {
                if cluster.health.as_ref().is_some_and(|c| c.claim_round(now)) {
                    tokio::spawn(run_round(Arc::clone(cluster)));
                }
            }
        }
    }
}
