//! Rate-limit upkeep for the current snapshot every 250 ms: connects to Redis when needed,
//! gives back expired and evicted batched reservations, and sweeps idle local keys every 5 s
//! (see [`RateLimiter::upkeep`](crate::ratelimit::RateLimiter::upkeep)). At shutdown (SIGTERM,
//! or SIGQUIT once the old process stops accepting) it gives back every unspent reservation;
//! the requests still draining are then checked exactly.

use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::snapshot::SnapshotStore;

/// Background upkeep of the rate limiter.
pub struct RateLimitService {
    store: SnapshotStore,
}

impl RateLimitService {
    /// Upkeep for whatever `store` holds.
    pub fn new(store: SnapshotStore) -> Self {
        RateLimitService { store }
    }
}

#[async_trait]
impl BackgroundService for RateLimitService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for round in 0u64.. {
            tokio::select! {
                _ = shutdown.changed() => {
                    // Reservations this process will not spend go back to Redis now, not
                    // after their lease.
                    self.store.load().ratelimit().give_back_leases().await;
                    return;
                }
                _ = tick.tick() => {}
            }
            let snapshot = self.store.load();
            // Sweeping walks every local key: every 5 s is plenty.
            snapshot.ratelimit().upkeep(round.is_multiple_of(20)).await;
        }
    }
}
