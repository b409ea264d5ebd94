//! Per-request state carried through the proxy phases.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::Identity;
use crate::metrics::ConnectionGuard;
use crate::request_id::RequestId;
use crate::snapshot::Snapshot;
use crate::upstream::backend::InflightGuard;

/// Why the gateway itself failed a request, when it did (maps to a status in `respond`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Every backend of the route's upstream is unhealthy or drained (503).
    NoHealthyBackend,
    /// Every available backend's circuit is open (503, Retry-After in seconds).
    CircuitOpen(u64),
    /// The upstream is at `max_inflight` (503, Retry-After 1).
    Overloaded,
    /// The route deadline passed before an attempt could start (504).
    DeadlineExceeded,
}

/// State of one request, from `request_filter` to `logging`.
pub struct RequestCtx {
    /// The snapshot the whole request uses, loaded once at the start.
    pub snapshot: Arc<Snapshot>,
    /// The request id echoed to the client and sent upstream.
    pub request_id: RequestId,
    /// Index of the matched route in the snapshot's configuration.
    pub route: Option<usize>,
    /// The client IP (after trusted-proxy resolution).
    pub client_ip: Option<IpAddr>,
    /// Whether the socket peer is a trusted proxy.
    pub peer_trusted: bool,
    /// Index of the backend of the current attempt.
    pub backend: Option<usize>,
    /// Backends tried so far (bit mask, see `upstream::bit`).
    pub tried: u64,
    /// Upstream attempts started.
    pub attempts: u32,
    /// The current attempt's circuit breaker permit, until its outcome is recorded.
    pub permit: Option<crate::upstream::breaker::Permit>,
    /// When the route's deadline (to response headers) passes.
    pub deadline: Option<Instant>,
    /// The request's share of the upstream's `max_inflight`.
    pub slot: Option<crate::upstream::UpstreamSlot>,
    /// Keeps the current backend's in-flight count; released whenever the context is dropped.
    pub inflight: Option<InflightGuard>,
    /// Set when the gateway refuses the request itself.
    pub refusal: Option<Refusal>,
    /// When the request started.
    pub started: Instant,
    /// When the current upstream attempt started.
    pub upstream_started: Option<Instant>,
    /// Time from the first backend choice to the upstream response header.
    pub upstream_elapsed: Option<Duration>,
    /// Status of a response the gateway wrote after a proxy failure (0: none could be sent).
    pub failure_status: Option<u16>,
    /// Keeps the downstream connection counted while it is open.
    pub connection: Option<Arc<ConnectionGuard>>,
    /// The authenticated caller, on protected routes.
    pub identity: Option<Arc<Identity>>,
    /// The rate-limit decision, on limited routes.
    pub ratelimit: Option<crate::ratelimit::Decision>,
}

impl RequestCtx {
    /// A fresh context on `snapshot`.
    pub fn new(snapshot: Arc<Snapshot>) -> Self {
        RequestCtx {
            snapshot,
            request_id: RequestId::default(),
            route: None,
            client_ip: None,
            peer_trusted: false,
            backend: None,
            tried: 0,
            attempts: 0,
            permit: None,
            deadline: None,
            slot: None,
            inflight: None,
            refusal: None,
            started: Instant::now(),
            upstream_started: None,
            upstream_elapsed: None,
            failure_status: None,
            connection: None,
            identity: None,
            ratelimit: None,
        }
    }
}
