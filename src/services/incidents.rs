//! Incident reports: every second, ends the incidents of each upstream that have gone quiet
//! (see [`crate::upstream::incidents`]); starting and summarising happen as refusals are
//! recorded.

use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::snapshot::SnapshotStore;

/// Ends quiet incidents of the current snapshot's upstreams.
pub struct IncidentService {
    store: SnapshotStore,
}

impl IncidentService {
    /// Reports for whatever `store` holds.
    pub fn new(store: SnapshotStore) -> Self {
        IncidentService { store }
    }
}

#[async_trait]
impl BackgroundService for IncidentService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let snapshot = self.store.load();
            let now = crate::clock::now_ms();
            for cluster in snapshot.clusters() {
                cluster.state.incidents.tick(cluster.name(), now);
            }
        }
    }
}
