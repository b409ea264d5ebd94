//! Incidents: a run of refusals of one kind on one upstream (shedding at `max_inflight`, every
//! circuit open, no healthy backend, connections failing) is logged as one incident — a line
//! when it starts, at most one summary line every [`SUMMARY_EVERY`] while it lasts, and a line
//! once it has been quiet for [`QUIET_ENDS`] — instead of a line per request, which at a few
//! thousand requests a second would bury everything else in the log. Every request is still
//! counted in the metrics and written to the access log.
//!
//! Recording is lock-free (atomics per kind); the end of an incident is noticed by
//! [`Incidents::tick`], which the incident-report background service calls every second.

use std::sync::atomic::{AtomicU64, Ordering};

/// At most one summary line per incident this often (ms).
pub const SUMMARY_EVERY: u64 = 10_000;
/// An incident with no refusal for this long (ms) has ended.
pub const QUIET_ENDS: u64 = 10_000;

/// What kind of refusal an incident is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// 503: the upstream is at `max_inflight`.
    Shedding,
    /// 503: every available backend's circuit is open.
    CircuitOpen,
    /// 503: every backend is unhealthy or drained.
    NoHealthyBackend,
    /// 502/504: connections to the backends are refused or time out.
    ConnectFailed,
}

impl Kind {
    const ALL: [Kind; 4] = [
        Kind::Shedding,
        Kind::CircuitOpen,
        Kind::NoHealthyBackend,
        Kind::ConnectFailed,
    ];

    fn describe(self) -> &'static str {
        match self {
            Kind::Shedding => "requests shed at max_inflight (503)",
            Kind::CircuitOpen => "every backend's circuit is open (503)",
            Kind::NoHealthyBackend => "no healthy backend (503)",
            Kind::ConnectFailed => "connections to backends failing (502/504)",
        }
    }
}

#[derive(Default)]
struct Slot {
    /// Refusals since the incident started.
    total: AtomicU64,
    /// `total` when the last line was written.
    reported: AtomicU64,
    /// When the incident started (ms, [`crate::clock::now_ms`] + 1); 0: none running.
    started: AtomicU64,
    last_event: AtomicU64,
    last_report: AtomicU64,
}

/// The incidents of one upstream (part of its live state, so a reload keeps them).
#[derive(Default)]
pub struct Incidents {
    slots: [Slot; 4],
}

impl Incidents {
    /// Counts one refusal of `kind` on `upstream` at `now_ms`; logs when an incident starts
    /// and, at most every [`SUMMARY_EVERY`], how it goes on.
    pub fn record(&self, upstream: &str, kind: Kind, now_ms: u64) {
        let now = now_ms + 1;
        let slot = &self.slots[kind as usize];
        let total = slot.total.fetch_add(1, Ordering::AcqRel) + 1;
        slot.last_event.store(now, Ordering::Release);
        if slot
            .started
            .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            slot.last_report.store(now, Ordering::Release);
            slot.reported.store(total, Ordering::Release);
            log::warn!(
                "incident started: upstream {upstream}: {} (further refusals are summarised every {} s)",
                kind.describe(),
                SUMMARY_EVERY / 1000
            );
            return;
        }
        let last = slot.last_report.load(Ordering::Acquire);
        if now.saturating_sub(last) >= SUMMARY_EVERY
            && slot
                .last_report
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            let before = slot.reported.swap(total, Ordering::AcqRel);
            let started = slot.started.load(Ordering::Acquire);
            log::warn!(
                "incident continues: upstream {upstream}: {}: {} refused in the last {} s, {total} since it started {} s ago",
                kind.describe(),
                total.saturating_sub(before),
                (now - last) / 1000,
                now.saturating_sub(started) / 1000
            );
        }
    }

    /// Ends the incidents of `upstream` that have been quiet for [`QUIET_ENDS`], with a line
    /// each.
    pub fn tick(&self, upstream: &str, now_ms: u64) {
        let now = now_ms + 1;
        for kind in Kind::ALL {
            let slot = &self.slots[kind as usize];
            let started = slot.started.load(Ordering::Acquire);
            if started == 0
                || now.saturating_sub(slot.last_event.load(Ordering::Acquire)) < QUIET_ENDS
            {
                continue;
            }
            if slot
                .started
                .compare_exchange(started, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                let total = slot.total.swap(0, Ordering::AcqRel);
                slot.reported.store(0, Ordering::Release);
                let last = slot.last_event.load(Ordering::Acquire);
                log::warn!(
                    "incident ended: upstream {upstream}: {}: {total} refused over {} s",
                    kind.describe(),
                    last.saturating_sub(started) / 1000
                );
            }
        }
    }

    /// Whether an incident of `kind` is running (for tests and the admin API).
    pub fn running(&self, kind: Kind) -> bool {
        self.slots[kind as usize].started.load(Ordering::Acquire) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_incident_starts_goes_on_and_ends() {
        let i = Incidents::default();
        assert!(!i.running(Kind::Shedding));
        i.record("api", Kind::Shedding, 0);
        assert!(i.running(Kind::Shedding));
        let slot = &i.slots[Kind::Shedding as usize];
        for t in 1..100 {
            i.record("api", Kind::Shedding, t * 100);
        }
        // No summary before 10 s: the count reported is still the first one.
        assert_eq!(slot.reported.load(Ordering::Relaxed), 1);
        i.record("api", Kind::Shedding, SUMMARY_EVERY);
        // The summary at 10 s caught up with the 101 refusals.
        assert_eq!(slot.reported.load(Ordering::Relaxed), 101);
        i.tick("api", SUMMARY_EVERY + QUIET_ENDS - 1);
        assert!(i.running(Kind::Shedding), "not quiet long enough");
        i.tick("api", SUMMARY_EVERY + QUIET_ENDS);
        assert!(!i.running(Kind::Shedding));
        assert_eq!(slot.total.load(Ordering::Relaxed), 0);
        // Other kinds are independent.
        assert!(!i.running(Kind::CircuitOpen));
    }
}
