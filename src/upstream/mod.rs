//! Upstream pools: a [`Cluster`] per configured upstream, holding its backends, the selection
//! policy and the peer templates handed to Pingora. Live backend state lives in [`backend`] and
//! is carried across snapshots; active checks live in [`health`].

pub mod backend;
pub mod balance;
pub mod health;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use pingora::upstreams::peer::HttpPeer;

use crate::config::{Balance, HashKey, UpstreamSpec};
use backend::BackendState;
use balance::HashRing;

/// One backend of a cluster: its spec, its peer template and its shared live state.
pub struct Member {
    /// Backend address.
    pub addr: SocketAddr,
    /// Relative weight.
    pub weight: u32,
    /// Peer template (address and timeouts) cloned for each attempt.
    pub peer: HttpPeer,
    /// Live state shared across snapshots.
    pub state: Arc<BackendState>,
    /// The same backend in the form Pingora's health checks take.
    pub check_target: pingora::lb::Backend,
}

enum Picker {
    RoundRobin(Box<[u16]>),
    LeastConn,
    Hash(HashKey, HashRing, Box<[u16]>),
}

/// A pool of backends and how to choose among them.
pub struct Cluster {
    spec: UpstreamSpec,
    members: Box<[Member]>,
    picker: Picker,
    cursor: AtomicUsize,
    /// The active health check, when configured.
    pub health: Option<health::Checker>,
}

impl Cluster {
    /// Builds a cluster; backend state is taken from `reuse` where the address is already known.
    pub fn new(
        spec: &UpstreamSpec,
        reuse: impl Fn(SocketAddr) -> Option<Arc<BackendState>>,
    ) -> Self {
        let members: Vec<Member> = spec
            .backends
            .iter()
            .map(|b| {
                let mut peer = HttpPeer::new(b.addr, false, String::new());
                peer.options.connection_timeout = Some(spec.timeouts.connect);
                peer.options.read_timeout = Some(spec.timeouts.read);
                peer.options.write_timeout = Some(spec.timeouts.write);
                peer.options.idle_timeout = Some(spec.timeouts.idle);
                let state = reuse(b.addr).unwrap_or_else(|| BackendState::new(b.addr));
                if spec.health_check.is_none() {
                    state.reset_health();
                }
                Member {
                    addr: b.addr,
                    weight: b.weight,
                    peer,
                    state,
                    check_target: pingora::lb::Backend {
                        addr: pingora::protocols::l4::socket::SocketAddr::Inet(b.addr),
                        weight: b.weight as usize,
                        ext: Default::default(),
                    },
                }
            })
            .collect();
        let weights: Vec<u32> = members.iter().map(|m| m.weight).collect();
        let schedule = || balance::smooth_schedule(&weights).into_boxed_slice();
        let picker = match &spec.balance {
            Balance::RoundRobin => Picker::RoundRobin(schedule()),
            Balance::LeastConn => Picker::LeastConn,
            Balance::ConsistentHash(key) => {
                let pairs: Vec<(SocketAddr, u32)> =
                    members.iter().map(|m| (m.addr, m.weight)).collect();
                Picker::Hash(key.clone(), HashRing::new(&pairs), schedule())
            }
        };
        Cluster {
            health: spec.health_check.as_ref().map(health::Checker::new),
            spec: spec.clone(),
            members: members.into_boxed_slice(),
            picker,
            cursor: AtomicUsize::new(0),
        }
    }

    /// The upstream's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The validated spec this cluster was built from.
    pub fn spec(&self) -> &UpstreamSpec {
        &self.spec
    }

    /// The backends, in configuration order.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The hash key this cluster balances on, if it uses consistent hashing.
    pub fn hash_key(&self) -> Option<&HashKey> {
        match &self.picker {
            Picker::Hash(key, _, _) => Some(key),
            _ => None,
        }
    }

    /// Whether some backend other than `exclude` could take a request.
    pub fn has_available(&self, exclude: Option<usize>) -> bool {
        self.members
            .iter()
            .enumerate()
            .any(|(i, m)| Some(i) != exclude && m.state.is_available())
    }

    /// Picks a healthy, undrained backend other than `exclude`. `key` is the consistent-hash key when the
    /// policy uses one and the request carries it. `None` when no backend is available.
    pub fn select(&self, key: Option<&[u8]>, exclude: Option<usize>) -> Option<usize> {
        let available = |i: usize| Some(i) != exclude && self.members[i].state.is_available();
        match &self.picker {
            Picker::RoundRobin(schedule) => self.round_robin(schedule, available),
            Picker::LeastConn => self.least_conn(available),
            Picker::Hash(_, ring, schedule) => match key {
                Some(k) => ring.pick(k, available),
                None => self.round_robin(schedule, available),
            },
        }
    }

    fn round_robin(&self, schedule: &[u16], available: impl Fn(usize) -> bool) -> Option<usize> {
        let n = schedule.len();
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| usize::from(schedule[(start.wrapping_add(k)) % n]))
            .find(|&i| available(i))
    }

    fn least_conn(&self, available: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.members.len();
        // Starting the scan at a rotating offset makes ties rotate.
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(usize, u64, u64)> = None;
        for k in 0..n {
            let i = start.wrapping_add(k) % n;
            if !available(i) {
                continue;
            }
            let m = &self.members[i];
            let (load, weight) = (m.state.inflight() as u64, u64::from(m.weight));
            // load/weight < best_load/best_weight, without division.
            if best.is_none_or(|(_, bl, bw)| load * bw < bl * weight) {
                best = Some((i, load, weight));
            }
        }
        best.map(|(i, _, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BackendSpec, Timeouts};
    use crate::upstream::backend::InflightGuard;

    fn cluster(balance: Balance, weights: &[u32]) -> Cluster {
        let spec = UpstreamSpec {
            name: "u".into(),
            balance,
            backends: weights
                .iter()
                .enumerate()
                .map(|(i, w)| BackendSpec {
                    addr: SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)),
                    weight: *w,
                })
                .collect(),
            timeouts: Timeouts::default(),
            health_check: None,
        };
        Cluster::new(&spec, |_| None)
    }

    #[test]
    fn round_robin_follows_weights_and_skips_excluded() {
        let c = cluster(Balance::RoundRobin, &[3, 1]);
        let picks: Vec<usize> = (0..8).map(|_| c.select(None, None).unwrap()).collect();
        assert_eq!(picks, vec![0, 0, 1, 0, 0, 0, 1, 0]);
        assert!((0..8).all(|_| c.select(None, Some(0)) == Some(1)));
    }

    #[test]
    fn least_conn_prefers_the_least_loaded_relative_to_weight() {
        let c = cluster(Balance::LeastConn, &[1, 1]);
        let _busy = InflightGuard::new(&c.members()[0].state);
        assert!((0..4).all(|_| c.select(None, None) == Some(1)));
        let _busy2 = InflightGuard::new(&c.members()[1].state);
        let picks: Vec<usize> = (0..4).map(|_| c.select(None, None).unwrap()).collect();
        assert!(
            picks.contains(&0) && picks.contains(&1),
            "ties rotate: {picks:?}"
        );
    }
}
