//! Upstream pools (domain layer): a [`Cluster`] per configured upstream, holding its backends,
//! the selection policy and the peer templates handed to Pingora. Live backend state (health,
//! in-flight count, circuit breaker) lives in [`backend`] and live upstream state (traffic
//! window, concurrency, adaptive factor) in [`UpstreamState`]; both are carried across
//! snapshots. Active check probes live in [`health`]; the loop that schedules them is
//! [`crate::services::health`].

pub mod backend;
pub mod balance;
pub mod breaker;
pub mod health;
pub mod incidents;
pub mod shared;
pub mod traffic;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::{parse_x509, CertKey, WrappedX509};
use prometheus::IntCounter;

use crate::config::{BackendSpec, Balance, HashKey, UpstreamSpec};
use backend::BackendState;
use balance::HashRing;
use breaker::{CircuitState, Permit};

/// `gatehouse_circuit_transitions_total` of one backend, indexed by new state (closed, open,
/// half-open); filled by the metrics registry.
pub type BreakerCounters = [IntCounter; 3];

/// One backend of a cluster: its spec, its peer template and its shared live state.
pub struct Member {
    /// Backend address.
    pub addr: SocketAddr,
    /// The address as text, written once (for the access log).
    pub addr_text: Box<str>,
    /// Relative weight.
    pub weight: u32,
    /// Peer template (address and timeouts) cloned for each attempt.
    pub peer: HttpPeer,
    /// Live state shared across snapshots.
    pub state: Arc<BackendState>,
    /// The same backend in the form Pingora's health checks take.
    pub check_target: pingora::lb::Backend,
    /// Circuit transitions of this backend.
    transitions: BreakerCounters,
}

/// Live state of an upstream, shared by every snapshot that keeps its name.
pub struct UpstreamState {
    /// Requests, failures and retries over the last ten seconds.
    pub traffic: traffic::Traffic,
    /// Runs of refusals, logged as incidents rather than per request.
    pub incidents: incidents::Incidents,
    inflight: AtomicU32,
    factor_milli: AtomicU32,
}

impl UpstreamState {
    /// Fresh state: nothing in flight, factor 1.
    pub fn new() -> Arc<Self> {
        Arc::new(UpstreamState {
            traffic: traffic::Traffic::default(),
            incidents: incidents::Incidents::default(),
            inflight: AtomicU32::new(0),
            factor_milli: AtomicU32::new(1000),
        })
    }

    /// The adaptive limit factor, in (0, 1].
    pub fn factor(&self) -> f64 {
        f64::from(self.factor_milli.load(Ordering::Relaxed)) / 1000.0
    }

    /// Requests in flight (counted only when `max_inflight` is set).
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Takes a concurrency slot if fewer than `max` are in use.
    pub fn try_slot(self: &Arc<Self>, max: u32) -> Option<UpstreamSlot> {
        self.inflight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| UpstreamSlot(Arc::clone(self)))
    }
}

/// One request's share of `max_inflight`, released on drop.
pub struct UpstreamSlot(Arc<UpstreamState>);

impl Drop for UpstreamSlot {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

enum Picker {
    RoundRobin(Box<[u16]>),
    LeastConn,
    Hash(HashKey, HashRing, Box<[u16]>),
}

/// Why no backend could be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// No backend is healthy and enabled.
    NoHealthy,
    /// Healthy backends exist but every breaker is open; retry after this many ms.
    CircuitOpen(u64),
}

/// A pool of backends and how to choose among them.
pub struct Cluster {
    spec: UpstreamSpec,
    members: Box<[Member]>,
    picker: Picker,
    cursor: AtomicUsize,
    /// Live upstream state.
    pub state: Arc<UpstreamState>,
    /// The active health check, when configured.
    pub health: Option<health::Checker>,
}

impl Cluster {
    /// Builds a cluster; backend state is taken from `reuse` where the address is already
    /// known, the upstream state is `state`, and `transitions` gives each backend's counters.
    pub fn new(
        spec: &UpstreamSpec,
        reuse: impl Fn(SocketAddr) -> Option<Arc<BackendState>>,
        state: Arc<UpstreamState>,
        transitions: impl Fn(&BackendSpec) -> BreakerCounters,
    ) -> Self {
        let members: Vec<Member> = spec
            .backends
            .iter()
            .map(|b| {
                let peer = peer_template(spec, b.addr);
                let backend = reuse(b.addr).unwrap_or_else(|| BackendState::new(b.addr));
                if spec.health_check.is_none() {
                    backend.reset_health();
                }
                Member {
                    addr: b.addr,
                    addr_text: b.addr.to_string().into_boxed_str(),
                    weight: b.weight,
                    peer,
                    state: backend,
                    check_target: pingora::lb::Backend {
                        addr: pingora::protocols::l4::socket::SocketAddr::Inet(b.addr),
                        weight: b.weight as usize,
                        ext: Default::default(),
                    },
                    transitions: transitions(b),
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
            health: spec
                .health_check
                .as_ref()
                .map(|check| health::Checker::new(check, spec)),
            spec: spec.clone(),
            members: members.into_boxed_slice(),
            picker,
            cursor: AtomicUsize::new(0),
            state,
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

    /// The circuit state of backend `i` (closed when no breaker is configured).
    pub fn circuit(&self, i: usize) -> CircuitState {
        match &self.spec.circuit_breaker {
            Some(_) => self.members[i].state.breaker.state(),
            None => CircuitState::Closed,
        }
    }

    /// Whether backend `i` may take a new request now: healthy, enabled, breaker admitting.
    fn available(&self, i: usize, now_ms: u64) -> bool {
        let m = &self.members[i];
        m.state.is_available()
            && self
                .spec
                .circuit_breaker
                .as_ref()
                .is_none_or(|b| m.state.breaker.available(b, now_ms))
    }

    /// Whether some backend outside `exclude` (a bit mask of indexes) could take a request.
    pub fn has_available(&self, exclude: u64, now_ms: u64) -> bool {
        (0..self.members.len()).any(|i| !excluded(exclude, i) && self.available(i, now_ms))
    }

    /// Picks an available backend outside `exclude` (bit mask). `key` is the consistent-hash
    /// key when the policy uses one and the request carries it. Takes no breaker permit.
    pub fn select(&self, key: Option<&[u8]>, exclude: u64, now_ms: u64) -> Option<usize> {
        let available = |i: usize| !excluded(exclude, i) && self.available(i, now_ms);
        match &self.picker {
            Picker::RoundRobin(schedule) => self.round_robin(schedule, available),
            Picker::LeastConn => self.least_conn(available),
            Picker::Hash(_, ring, schedule) => match key {
                Some(k) => ring.pick(k, available),
                None => self.round_robin(schedule, available),
            },
        }
    }

    /// Takes backend `i` (a sticky session's) if it is available now and its breaker admits
    /// a request; `None` otherwise.
    pub fn pick_this(&self, i: usize, now_ms: u64) -> Option<(usize, Option<Permit>)> {
        if i >= self.members.len() || !self.members[i].state.is_available() {
            return None;
        }
        let Some(spec) = &self.spec.circuit_breaker else {
            return Some((i, None));
        };
        let (permit, changed) = self.members[i].state.breaker.try_acquire(spec, now_ms);
        if let Some(state) = changed {
            self.transition(i, state);
        }
        permit.map(|p| (i, Some(p)))
    }

    /// Picks a backend and takes its breaker permit (a half-open trial slot, if that is what
    /// is left). Prefers backends outside `tried`, falls back to any available one.
    pub fn pick(
        &self,
        key: Option<&[u8]>,
        tried: u64,
        now_ms: u64,
    ) -> Result<(usize, Option<Permit>), Unavailable> {
        let mut exclude = tried;
        for _ in 0..=self.members.len() {
            let choice = self.select(key, exclude, now_ms).or_else(|| {
                (exclude != 0)
                    .then(|| self.select(key, exclude & !tried, now_ms))
                    .flatten()
            });
            let Some(i) = choice else { break };
            let Some(spec) = &self.spec.circuit_breaker else {
                return Ok((i, None));
            };
            let member = &self.members[i];
            let (permit, changed) = member.state.breaker.try_acquire(spec, now_ms);
            if let Some(state) = changed {
                self.transition(i, state);
            }
            match permit {
                Some(p) => return Ok((i, Some(p))),
                None => exclude |= bit(i),
            }
        }
        let healthy = self.members.iter().any(|m| m.state.is_available());
        match (&self.spec.circuit_breaker, healthy) {
            (Some(_), true) => {
                let wait = self
                    .members
                    .iter()
                    .filter(|m| m.state.is_available())
                    .map(|m| m.state.breaker.retry_after_ms(now_ms))
                    .min()
                    .unwrap_or(1000);
                Err(Unavailable::CircuitOpen(wait))
            }
            _ => Err(Unavailable::NoHealthy),
        }
    }

    /// Records the outcome of an attempt on backend `i` admitted with `permit`.
    pub fn record(
        &self,
        i: usize,
        permit: Permit,
        failure: Option<crate::config::FailureKind>,
        now_ms: u64,
    ) {
        let Some(spec) = &self.spec.circuit_breaker else {
            return;
        };
        let counts = failure.is_some_and(|k| spec.failure_on.contains(&k));
        if let Some(state) = self.members[i]
            .state
            .breaker
            .record(spec, permit, counts, now_ms)
        {
            self.transition(i, state);
            if state == CircuitState::Open && spec.shared {
                shared::announce(
                    self.name(),
                    &self.members[i].addr_text,
                    spec.open_for.as_millis() as u64,
                );
            }
        }
    }

    /// Opens backend `i`'s shared breaker because another instance opened its own, for
    /// `remaining_ms`. Returns whether it changed (it may be open already).
    pub fn open_for_peer(&self, i: usize, remaining_ms: u64, instance: &str, now_ms: u64) -> bool {
        let Some(spec) = self.spec.circuit_breaker.as_ref().filter(|b| b.shared) else {
            return false;
        };
        let m = &self.members[i];
        match m.state.breaker.open_for_peer(spec, remaining_ms, now_ms) {
            Some(state) => {
                m.transitions[state as usize].inc();
                log::warn!(
                    "upstream {} backend {}: circuit open for {} ms, opened by gateway instance {instance}",
                    self.name(),
                    m.addr,
                    remaining_ms.min(spec.open_for.as_millis() as u64)
                );
                true
            }
            None => false,
        }
    }

    fn transition(&self, i: usize, state: CircuitState) {
        let m = &self.members[i];
        m.transitions[state as usize].inc();
        match state {
            CircuitState::Open => {
                log::warn!("upstream {} backend {}: circuit open", self.name(), m.addr)
            }
            CircuitState::HalfOpen => log::info!(
                "upstream {} backend {}: circuit half-open",
                self.name(),
                m.addr
            ),
            CircuitState::Closed => log::info!(
                "upstream {} backend {}: circuit closed",
                self.name(),
                m.addr
            ),
        }
    }

    /// Recomputes the adaptive limit factor: the lower of the recent success ratio and the
    /// share of backends that are available with a closed breaker, at least 0.1; it falls at
    /// once and recovers by a fifth of the gap per update.
    pub fn update_factor(&self, now_second: u64) {
        let t = self.state.traffic.totals(now_second);
        let success = if t.requests < 10 {
            1.0
        } else {
            1.0 - (f64::from(t.failures) / f64::from(t.requests + t.retries)).min(1.0)
        };
        let up = (0..self.members.len())
            .filter(|&i| {
                self.members[i].state.is_available() && self.circuit(i) == CircuitState::Closed
            })
            .count();
        let share = up as f64 / self.members.len().max(1) as f64;
        let target = success.min(share).clamp(0.1, 1.0);
        let current = self.state.factor();
        let next = if target < current {
            target
        } else {
            current + (target - current) * 0.2
        };
        let next = if (1.0 - next) < 0.005 { 1.0 } else { next };
        self.state
            .factor_milli
            .store((next * 1000.0).round() as u32, Ordering::Relaxed);
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

/// The peer template of backend `addr` of `spec`: its timeouts, its protocol (HTTP/1.1, or
/// HTTP/2 by ALPN over TLS or by prior knowledge in cleartext, with
/// `h2_streams_per_connection` streams per connection) and its TLS settings. Without an
/// explicit `sni` the backend's IP address is the name verified, against an IP SAN.
pub fn peer_template(spec: &UpstreamSpec, addr: SocketAddr) -> HttpPeer {
    use crate::config::Protocol;
    let mut peer = match &spec.tls {
        None => HttpPeer::new(addr, false, String::new()),
        Some(tls) => {
            let sni = if tls.sni.is_empty() {
                addr.ip().to_string()
            } else {
                tls.sni.clone()
            };
            let mut peer = HttpPeer::new(addr, true, sni);
            peer.options.verify_cert = tls.verify;
            peer.options.verify_hostname = tls.verify;
            if !tls.ca.is_empty() {
                let ca: Vec<WrappedX509> = tls
                    .ca
                    .iter()
                    .map(|der| WrappedX509::new(der.clone(), parse_x509))
                    .collect();
                peer.options.ca = Some(Arc::from(ca.into_boxed_slice()));
            }
            if let Some((chain, key)) = &tls.client_pair {
                peer.client_cert_key =
                    Some(Arc::new(CertKey::new(chain.clone(), key.expose().to_vec())));
            }
            peer
        }
    };
    match spec.protocol {
        Protocol::Http1 => peer.options.set_http_version(1, 1),
        Protocol::H2 | Protocol::H2c => {
            peer.options.set_http_version(2, 2);
            peer.options.max_h2_streams = spec.h2_streams_per_connection;
        }
    }
    peer.options.connection_timeout = Some(spec.timeouts.connect);
    peer.options.read_timeout = Some(spec.timeouts.read);
    peer.options.write_timeout = Some(spec.timeouts.write);
    peer.options.idle_timeout = Some(spec.timeouts.idle);
    peer
}

/// The bit of backend `i` in an exclusion mask (backends past 64 share the last bit).
pub fn bit(i: usize) -> u64 {
    1u64 << i.min(63)
}

fn excluded(mask: u64, i: usize) -> bool {
    mask & bit(i) != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::backend::InflightGuard;

    fn cluster(balance: Balance, weights: &[u32]) -> Cluster {
        let mut spec = crate::config::upstream::test_spec("u");
        spec.balance = balance;
        spec.backends = weights
            .iter()
            .enumerate()
            .map(|(i, w)| BackendSpec {
                addr: SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)),
                weight: *w,
            })
            .collect();
        Cluster::new(
            &spec,
            |_| None,
            UpstreamState::new(),
            |_| std::array::from_fn(|_| IntCounter::new("t", "t").unwrap()),
        )
    }

    #[test]
    fn round_robin_follows_weights_and_skips_excluded() {
        let c = cluster(Balance::RoundRobin, &[3, 1]);
        let picks: Vec<usize> = (0..8).map(|_| c.select(None, 0, 0).unwrap()).collect();
        assert_eq!(picks, vec![0, 0, 1, 0, 0, 0, 1, 0]);
        assert!((0..8).all(|_| c.select(None, bit(0), 0) == Some(1)));
    }

    #[test]
    fn least_conn_prefers_the_least_loaded_relative_to_weight() {
        let c = cluster(Balance::LeastConn, &[1, 1]);
        let _busy = InflightGuard::new(&c.members()[0].state);
        assert!((0..4).all(|_| c.select(None, 0, 0) == Some(1)));
        let _busy2 = InflightGuard::new(&c.members()[1].state);
        let picks: Vec<usize> = (0..4).map(|_| c.select(None, 0, 0).unwrap()).collect();
        assert!(
            picks.contains(&0) && picks.contains(&1),
            "ties rotate: {picks:?}"
        );
    }

    #[test]
    fn pick_prefers_untried_backends_but_falls_back() {
        let c = cluster(Balance::RoundRobin, &[1, 1]);
        assert_eq!(c.pick(None, bit(0), 0), Ok((1, None)));
        assert_eq!(
            c.pick(None, bit(0) | bit(1), 0).map(|(i, _)| i < 2),
            Ok(true)
        );
    }

    #[test]
    fn concurrency_slots_are_capped_and_released() {
        let s = UpstreamState::new();
        let a = s.try_slot(2).unwrap();
        let _b = s.try_slot(2).unwrap();
        assert!(s.try_slot(2).is_none());
        drop(a);
        assert!(s.try_slot(2).is_some());
    }
}
