//! Per-backend circuit breaker, driven by real traffic (passive health checking):
//! closed → open after `consecutive_failures` failures in a row, or when the failure ratio over
//! `window` exceeds `failure_ratio` with at least `min_requests`; open → half-open after
//! `open_for`, admitting at most `half_open_probes` concurrent trial requests; all probes
//! succeeding closes it, any failure opens it again. Time is passed in (milliseconds).

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

use crate::config::BreakerSpec;

const BUCKETS: usize = 10;

/// Breaker state, with the values exported in `gatehouse_circuit_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Traffic flows.
    Closed = 0,
    /// No traffic until `open_for` has passed.
    Open = 1,
    /// A few trial requests decide.
    HalfOpen = 2,
}

impl CircuitState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => CircuitState::Open,
            2 => CircuitState::HalfOpen,
            _ => CircuitState::Closed,
        }
    }

    /// Lower-case name, for logs and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }
}

#[derive(Default, Clone, Copy, Debug)]
struct Bucket {
    slot: u64,
    ok: u32,
    failed: u32,
}

/// One backend's breaker.
#[derive(Default, Debug)]
pub struct Breaker {
    state: AtomicU8,
    consecutive: AtomicU32,
    /// When an open breaker half-opens (store clock, ms).
    reopen_at_ms: AtomicU64,
    probes_inflight: AtomicU32,
    probe_successes: AtomicU32,
    window: Mutex<[Bucket; BUCKETS]>,
}

/// Permission to send one request; a probe holds a half-open trial slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    /// Whether this request is a half-open trial.
    pub probe: bool,
}

impl Breaker {
    /// The current state.
    pub fn state(&self) -> CircuitState {
        CircuitState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Whether a request could be admitted now (without reserving anything).
    pub fn available(&self, spec: &BreakerSpec, now_ms: u64) -> bool {
        match self.state() {
            CircuitState::Closed => true,
            CircuitState::Open => now_ms >= self.reopen_at(),
            CircuitState::HalfOpen => {
                self.probes_inflight.load(Ordering::Acquire) < spec.half_open_probes
            }
        }
    }

    fn reopen_at(&self) -> u64 {
        self.reopen_at_ms.load(Ordering::Acquire)
    }

    /// Milliseconds until an open breaker half-opens (0 unless open).
    pub fn retry_after_ms(&self, now_ms: u64) -> u64 {
        match self.state() {
            CircuitState::Open => self.reopen_at().saturating_sub(now_ms),
            _ => 0,
        }
    }

    /// Admits a request, moving open → half-open when `open_for` has passed. Returns the new
    /// state as well when it changed.
    pub fn try_acquire(
        &self,
        spec: &BreakerSpec,
        now_ms: u64,
    ) -> (Option<Permit>, Option<CircuitState>) {
        let mut changed = None;
        if self.state() == CircuitState::Open && now_ms >= self.reopen_at() {
            let swapped = self.state.compare_exchange(
                CircuitState::Open as u8,
                CircuitState::HalfOpen as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            if swapped.is_ok() {
                self.probes_inflight.store(0, Ordering::Release);
                self.probe_successes.store(0, Ordering::Release);
                changed = Some(CircuitState::HalfOpen);
            }
        }
        let permit = match self.state() {
            CircuitState::Closed => Some(Permit { probe: false }),
            CircuitState::Open => None,
            CircuitState::HalfOpen => {
                let taken =
                    self.probes_inflight
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                            (n < spec.half_open_probes).then_some(n + 1)
                        });
                taken.is_ok().then_some(Permit { probe: true })
            }
        };
        (permit, changed)
    }

    /// Records the outcome of a request admitted with `permit`; returns the new state when it
    /// changed.
    pub fn record(
        &self,
        spec: &BreakerSpec,
        permit: Permit,
        failure: bool,
        now_ms: u64,
    ) -> Option<CircuitState> {
        if permit.probe {
            self.probes_inflight.fetch_sub(1, Ordering::AcqRel);
        }
        match self.state() {
            CircuitState::HalfOpen if permit.probe => {
                if failure {
                    return self.open(now_ms + spec.open_for.as_millis() as u64);
                }
                let ok = self.probe_successes.fetch_add(1, Ordering::AcqRel) + 1;
                if ok >= spec.half_open_probes {
                    return self.close();
                }
                None
            }
            CircuitState::Closed => {
                let (total, failed) = self.observe(spec, failure, now_ms);
                if failure {
                    let run = self.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
                    let ratio_trips = total >= spec.min_requests
                        && f64::from(failed) / f64::from(total) > spec.failure_ratio;
                    if run >= spec.consecutive_failures || ratio_trips {
                        return self.open(now_ms + spec.open_for.as_millis() as u64);
                    }
                } else {
                    self.consecutive.store(0, Ordering::Release);
                }
                None
            }
            _ => None,
        }
    }

    /// Gives a probe slot back without an outcome (the request ended before one was known).
    pub fn release(&self, permit: Permit) {
        if permit.probe {
            let _ = self
                .probes_inflight
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        }
    }

    /// Opens the breaker because another gateway instance opened its own (shared breakers):
    /// open now, half-opening after `remaining_ms` (at most `open_for`) without counting any
    /// failure here. A breaker that is already open stays as it is. Returns the new state
    /// when it changed.
    pub fn open_for_peer(
        &self,
        spec: &BreakerSpec,
        remaining_ms: u64,
        now_ms: u64,
    ) -> Option<CircuitState> {
        if self.state() == CircuitState::Open && now_ms < self.reopen_at() {
            return None;
        }
        let remaining = remaining_ms.min(spec.open_for.as_millis() as u64);
        self.open(now_ms + remaining)
    }

    /// Opens until `reopen_at_ms`.
    fn open(&self, reopen_at_ms: u64) -> Option<CircuitState> {
        self.reopen_at_ms.store(reopen_at_ms, Ordering::Release);
        let previous = self.state.swap(CircuitState::Open as u8, Ordering::AcqRel);
        self.consecutive.store(0, Ordering::Release);
        (previous != CircuitState::Open as u8).then_some(CircuitState::Open)
    }

    fn close(&self) -> Option<CircuitState> {
        if let Ok(mut w) = self.window.lock() {
            *w = [Bucket::default(); BUCKETS];
        }
        self.consecutive.store(0, Ordering::Release);
        let previous = self
            .state
            .swap(CircuitState::Closed as u8, Ordering::AcqRel);
        (previous != CircuitState::Closed as u8).then_some(CircuitState::Closed)
    }

    /// Adds an outcome to the ratio window; returns (requests, failures) within it.
    fn observe(&self, spec: &BreakerSpec, failure: bool, now_ms: u64) -> (u32, u32) {
        let width = (spec.window.as_millis() as u64 / BUCKETS as u64).max(1);
        let slot = now_ms / width;
        let Ok(mut w) = self.window.lock() else {
            return (0, 0);
        };
        let b = &mut w[(slot % BUCKETS as u64) as usize];
        if b.slot != slot {
            *b = Bucket {
                slot,
                ok: 0,
                failed: 0,
            };
        }
        if failure {
            b.failed += 1;
        } else {
            b.ok += 1;
        }
        w.iter()
            .filter(|b| slot.saturating_sub(b.slot) < BUCKETS as u64)
            .fold((0, 0), |(t, f), b| (t + b.ok + b.failed, f + b.failed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FailureKind;
    use std::time::Duration;

    fn spec() -> BreakerSpec {
        BreakerSpec {
            consecutive_failures: 3,
            failure_ratio: 0.5,
            min_requests: 10,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(5),
            half_open_probes: 2,
            failure_on: vec![FailureKind::Status5xx],
            shared: true,
            redis_url: None,
        }
    }

    #[test]
    fn a_peer_opens_it_for_the_remaining_time_only() {
        let (b, s) = (Breaker::default(), spec());
        assert_eq!(b.open_for_peer(&s, 2_000, 100), Some(CircuitState::Open));
        assert_eq!(b.retry_after_ms(100), 2_000);
        assert!(!b.available(&s, 2_099));
        // Already open: a second announcement changes nothing.
        assert_eq!(b.open_for_peer(&s, 4_000, 200), None);
        // Never beyond open_for.
        let c = Breaker::default();
        c.open_for_peer(&s, 60_000, 0);
        assert_eq!(c.retry_after_ms(0), 5_000);
        // Then half-open, probing locally.
        let (permit, changed) = b.try_acquire(&s, 2_100);
        assert!(permit.is_some_and(|p| p.probe));
        assert_eq!(changed, Some(CircuitState::HalfOpen));
    }

    #[test]
    fn opens_after_consecutive_failures_then_half_opens_and_closes() {
        let (b, s) = (Breaker::default(), spec());
        let p = Permit { probe: false };
        assert_eq!(b.record(&s, p, true, 0), None);
        assert_eq!(b.record(&s, p, true, 0), None);
        assert_eq!(b.record(&s, p, true, 0), Some(CircuitState::Open));
        assert!(!b.available(&s, 4_999));
        assert_eq!(b.try_acquire(&s, 4_999).0, None);
        assert_eq!(b.retry_after_ms(4_000), 1_000);
        let (first, changed) = b.try_acquire(&s, 5_000);
        assert_eq!(
            (first, changed),
            (Some(Permit { probe: true }), Some(CircuitState::HalfOpen))
        );
        let second = b.try_acquire(&s, 5_000).0.unwrap();
        assert_eq!(b.try_acquire(&s, 5_000).0, None, "only two probes at once");
        assert_eq!(b.record(&s, first.unwrap(), false, 5_100), None);
        assert_eq!(
            b.record(&s, second, false, 5_100),
            Some(CircuitState::Closed)
        );
    }

    #[test]
    fn a_failed_probe_reopens_and_the_ratio_trips_too() {
        let (b, s) = (Breaker::default(), spec());
        let p = Permit { probe: false };
        // 6 failures among 11, never 3 in a row: the ratio opens it.
        let mut state = None;
        for i in 0..11 {
            state = state.or(b.record(&s, p, i % 2 == 0, 100));
        }
        assert_eq!(state, Some(CircuitState::Open));
        let probe = b.try_acquire(&s, 10_000).0.unwrap();
        assert_eq!(b.record(&s, probe, true, 10_001), Some(CircuitState::Open));
        assert!(!b.available(&s, 10_002));
    }
}
