//! Per-upstream traffic accounting over a sliding 10-second window of one-second buckets, with
//! atomics only: requests, failures and retries. It drives the retry budget and the adaptive
//! limit factor. Counts are approximate at bucket boundaries (a racing reset may drop a few),
//! which neither use needs to be exact about.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::config::RetrySpec;

const BUCKETS: u64 = 10;

#[derive(Default)]
struct Bucket {
    second: AtomicU64,
    requests: AtomicU32,
    failures: AtomicU32,
    retries: AtomicU32,
}

/// Sliding counts for one upstream.
#[derive(Default)]
pub struct Traffic {
    buckets: [Bucket; BUCKETS as usize],
}

/// Totals over the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    /// Client requests.
    pub requests: u32,
    /// Failed attempts.
    pub failures: u32,
    /// Retries sent.
    pub retries: u32,
}

impl Traffic {
    fn bucket(&self, second: u64) -> &Bucket {
        let b = &self.buckets[(second % BUCKETS) as usize];
        let seen = b.second.load(Ordering::Acquire);
        if seen != second
            && b.second
                .compare_exchange(seen, second, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            b.requests.store(0, Ordering::Release);
            b.failures.store(0, Ordering::Release);
            b.retries.store(0, Ordering::Release);
        }
        b
    }

    /// Counts a client request.
    pub fn request(&self, second: u64) {
        self.bucket(second).requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failed attempt.
    pub fn failure(&self, second: u64) {
        self.bucket(second).failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Totals over the last ten seconds.
    pub fn totals(&self, second: u64) -> Totals {
        self.buckets
            .iter()
            .filter(|b| second.saturating_sub(b.second.load(Ordering::Acquire)) < BUCKETS)
            .fold(Totals::default(), |t, b| Totals {
                requests: t.requests + b.requests.load(Ordering::Relaxed),
                failures: t.failures + b.failures.load(Ordering::Relaxed),
                retries: t.retries + b.retries.load(Ordering::Relaxed),
            })
    }

    /// Takes one retry from the budget: allowed while retries in the window stay below
    /// max(min_retries_per_sec × 10 s, budget_ratio × requests in the window).
    pub fn try_retry(&self, spec: &RetrySpec, second: u64) -> bool {
        let t = self.totals(second);
        let allowance = (f64::from(spec.min_retries_per_sec) * BUCKETS as f64)
            .max(spec.budget_ratio * f64::from(t.requests));
        if f64::from(t.retries) + 1.0 > allowance {
            return false;
        }
        self.bucket(second).retries.fetch_add(1, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn spec(ratio: f64, min: u32) -> RetrySpec {
        RetrySpec {
            attempts: 2,
            on: vec![],
            methods: vec![],
            backoff: Duration::from_millis(1),
            budget_ratio: ratio,
            min_retries_per_sec: min,
        }
    }

    #[test]
    fn budget_is_a_share_of_requests_with_a_floor() {
        let t = Traffic::default();
        for _ in 0..1000 {
            t.request(100);
        }
        let allowed = (0..1000)
            .filter(|_| t.try_retry(&spec(0.2, 1), 100))
            .count();
        assert_eq!(allowed, 200);
        let quiet = Traffic::default();
        let allowed = (0..100)
            .filter(|_| quiet.try_retry(&spec(0.2, 3), 100))
            .count();
        assert_eq!(allowed, 30, "the floor: 3 per second over 10 s");
    }

    #[test]
    fn old_buckets_fall_out_of_the_window() {
        let t = Traffic::default();
        t.request(100);
        t.failure(100);
        assert_eq!(t.totals(109).requests, 1);
        assert_eq!(t.totals(110).requests, 0);
        t.request(110);
        assert_eq!(
            t.totals(110),
            Totals {
                requests: 1,
                failures: 0,
                retries: 0
            }
        );
    }
}
