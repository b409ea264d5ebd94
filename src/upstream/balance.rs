//! Backend selection policies. Each pick is lock-free and allocation-free: smooth weighted
//! round robin walks a schedule computed once, least-connections compares atomics, consistent
//! hashing walks Pingora's Ketama ring.

use std::collections::HashMap;
use std::net::SocketAddr;

use pingora_ketama::{Bucket, Continuum};

/// Computes nginx's smooth weighted round-robin order for `weights`: weights 3:1 give
/// A,A,B,A rather than A,A,A,B, and 5:1:1 give A,A,B,A,C,A,A.
pub fn smooth_schedule(weights: &[u32]) -> Vec<u16> {
    let divisor = weights.iter().copied().fold(0, gcd).max(1);
    let weights: Vec<i64> = weights.iter().map(|w| i64::from(*w / divisor)).collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += w;
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by(|(i, a), (j, b)| a.cmp(b).then(j.cmp(i)))
            .unwrap_or((0, &0));
        current[best] -= total;
        schedule.push(best as u16);
    }
    schedule
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// A Ketama ring over a pool, with the address→index map to turn ring nodes into backends.
pub struct HashRing {
    ring: Continuum,
    index: HashMap<SocketAddr, usize>,
    /// Upper bound on ring points visited while skipping unavailable backends.
    max_steps: usize,
}

impl HashRing {
    /// Builds the ring for `(addr, weight)` pairs.
    pub fn new(backends: &[(SocketAddr, u32)]) -> Self {
        let buckets: Vec<Bucket> = backends.iter().map(|(a, w)| Bucket::new(*a, *w)).collect();
        let total_weight: u32 = backends.iter().map(|(_, w)| *w).sum();
        HashRing {
            ring: Continuum::new(&buckets),
            index: backends
                .iter()
                .enumerate()
                .map(|(i, (a, _))| (*a, i))
                .collect(),
            // Ketama places 160 points per unit of weight.
            max_steps: (total_weight as usize).saturating_mul(160).max(1),
        }
    }

    /// The first backend on the ring from `key`'s point for which `available` holds.
    pub fn pick(&self, key: &[u8], available: impl Fn(usize) -> bool) -> Option<usize> {
        self.ring
            .node_iter(key)
            .take(self.max_steps)
            .filter_map(|addr| self.index.get(addr).copied())
            .find(|&i| available(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_smooth_and_proportional() {
        assert_eq!(smooth_schedule(&[3, 1]), vec![0, 0, 1, 0]);
        assert_eq!(smooth_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_schedule(&[2, 2]), vec![0, 1]);
    }

    #[test]
    fn ring_is_stable_and_skips_unavailable() {
        let addrs: Vec<(SocketAddr, u32)> = (1..=3)
            .map(|p| (SocketAddr::from(([127, 0, 0, 1], p)), 1))
            .collect();
        let ring = HashRing::new(&addrs);
        let first = ring.pick(b"user-42", |_| true).unwrap();
        assert_eq!(ring.pick(b"user-42", |_| true), Some(first));
        let other = ring.pick(b"user-42", |i| i != first).unwrap();
        assert_ne!(other, first);
        assert_eq!(ring.pick(b"user-42", |_| false), None);
    }
}
