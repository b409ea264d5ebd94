//! Refreshes every JWKS key set of the current snapshot when it is due (every `jwks_refresh`
//! after a success, every `min_refetch_interval` while failing); see [`crate::auth::jwks`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::snapshot::SnapshotStore;

/// Background service refreshing every key set of the current snapshot.
pub struct JwksService {
    store: SnapshotStore,
}

impl JwksService {
    /// A service refreshing what `store` holds.
    pub fn new(store: SnapshotStore) -> Self {
        JwksService { store }
    }
}

#[async_trait]
impl BackgroundService for JwksService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            for set in self.store.load().auth().jwks_sets() {
                if set.due() {
                    let set = Arc::clone(set);
                    tokio::spawn(async move {
                        let _ = set.fetch().await;
                    });
                }
            }
        }
    }
}
