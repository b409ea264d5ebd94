//! Per-backend live state (health and in-flight count) and the guard that keeps the in-flight
//! count honest on every path. The state outlives configuration snapshots: a reload that keeps a
//! backend keeps its state.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use super::breaker::Breaker;

/// Live state of one backend, shared by every snapshot that contains it.
#[derive(Debug)]
pub struct BackendState {
    addr: SocketAddr,
    healthy: AtomicBool,
    drained: AtomicBool,
    inflight: AtomicUsize,
    ok_streak: AtomicU32,
    fail_streak: AtomicU32,
    /// The backend's circuit breaker (used when the upstream configures one).
    pub breaker: Breaker,
}

impl BackendState {
    /// A backend that starts healthy with nothing in flight.
    pub fn new(addr: SocketAddr) -> Arc<Self> {
        Arc::new(BackendState {
            addr,
            healthy: AtomicBool::new(true),
            drained: AtomicBool::new(false),
            inflight: AtomicUsize::new(0),
            ok_streak: AtomicU32::new(0),
            fail_streak: AtomicU32::new(0),
            breaker: Breaker::default(),
        })
    }

    /// The backend's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether active health checks currently allow traffic to it.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Whether an operator took it out of rotation (in-flight requests still finish).
    pub fn is_drained(&self) -> bool {
        self.drained.load(Ordering::Relaxed)
    }

    /// Drains (`true`) or re-enables (`false`) the backend.
    pub fn set_drained(&self, drained: bool) {
        self.drained.store(drained, Ordering::Relaxed);
    }

    /// Whether new requests may be sent to it: healthy and not drained.
    pub fn is_available(&self) -> bool {
        self.is_healthy() && !self.is_drained()
    }

    /// Requests currently in flight to it.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Records one health check result; returns `Some(new_health)` when health flipped.
    pub fn observe(
        &self,
        ok: bool,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) -> Option<bool> {
        if ok {
            self.fail_streak.store(0, Ordering::Relaxed);
            let streak = self
                .ok_streak
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1);
            if !self.is_healthy() && streak >= healthy_threshold {
                self.healthy.store(true, Ordering::Relaxed);
                return Some(true);
            }
        } else {
            self.ok_streak.store(0, Ordering::Relaxed);
            let streak = self
                .fail_streak
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1);
            if self.is_healthy() && streak >= unhealthy_threshold {
                self.healthy.store(false, Ordering::Relaxed);
                return Some(false);
            }
        }
        None
    }

    /// Marks the backend healthy again (used when health checks are removed by a reload).
    pub fn reset_health(&self) {
        self.healthy.store(true, Ordering::Relaxed);
        self.ok_streak.store(0, Ordering::Relaxed);
        self.fail_streak.store(0, Ordering::Relaxed);
    }
}

/// Counts one request in flight to a backend for as long as it lives: dropped on success,
/// error or client abort alike, because it lives in the request context.
#[derive(Debug)]
#[must_use = "the in-flight count drops as soon as the guard does"]
pub struct InflightGuard(Arc<BackendState>);

impl InflightGuard {
    /// Counts a new request to `backend`.
    pub fn new(backend: &Arc<BackendState>) -> Self {
        backend.inflight.fetch_add(1, Ordering::Relaxed);
        InflightGuard(Arc::clone(backend))
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_releases_on_drop() {
        let b = BackendState::new("127.0.0.1:1".parse().unwrap());
        let g1 = InflightGuard::new(&b);
        let g2 = InflightGuard::new(&b);
        assert_eq!(b.inflight(), 2);
        drop(g1);
        assert_eq!(b.inflight(), 1);
        drop(g2);
        assert_eq!(b.inflight(), 0);
    }

    #[test]
    fn health_flips_only_after_thresholds() {
        let b = BackendState::new("127.0.0.1:1".parse().unwrap());
        assert_eq!(b.observe(false, 2, 3), None);
        assert_eq!(b.observe(false, 2, 3), None);
        assert_eq!(b.observe(false, 2, 3), Some(false));
        assert_eq!(b.observe(true, 2, 3), None);
        assert_eq!(b.observe(true, 2, 3), Some(true));
    }
}
