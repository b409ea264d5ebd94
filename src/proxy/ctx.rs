//! Per-request state carried through the proxy phases: the snapshot, the policies' state and
//! the upstream attempts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::{ConnectionGuard, WebSocketGuard};
use crate::policy::RequestState;
use crate::snapshot::Snapshot;
use crate::upstream::backend::InflightGuard;
use crate::upstream::breaker::Permit;
use crate::upstream::UpstreamSlot;

/// State of one request, from `request_filter` to `logging`.
pub struct RequestCtx {
    /// The snapshot the whole request uses, loaded once at the start.
    pub snapshot: Arc<Snapshot>,
    /// What the policies read and write (request id, route, client, identity, decisions).
    pub state: RequestState,
    /// Index of the backend of the current attempt.
    pub backend: Option<usize>,
    /// Backends tried so far (bit mask, see `upstream::bit`).
    pub tried: u64,
    /// Upstream attempts started.
    pub attempts: u32,
    /// The current attempt's circuit breaker permit, until its outcome is recorded.
    pub permit: Option<Permit>,
    /// When the route's deadline (to response headers) passes.
    pub deadline: Option<Instant>,
    /// The request's share of the upstream's `max_inflight`.
    pub slot: Option<UpstreamSlot>,
    /// Keeps the current backend's in-flight count; released whenever the context is dropped.
    pub inflight: Option<InflightGuard>,
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
    /// A gRPC answer the gateway wrote itself: the HTTP status it stands for (what metrics
    /// and the access log record) and its `grpc-status`.
    pub grpc_answer: Option<(u16, crate::grpc::Code)>,
    /// Keeps an upgraded WebSocket counted while it is open.
    pub websocket: Option<WebSocketGuard>,
    /// The route's response cache is on for this request.
    pub caching: bool,
    /// What the cache did (set with the response header).
    pub cache: Option<super::cache::CacheResult>,
}

impl RequestCtx {
    /// A fresh context on `snapshot`.
    pub fn new(snapshot: Arc<Snapshot>) -> Self {
        RequestCtx {
            snapshot,
            state: RequestState::default(),
            backend: None,
            tried: 0,
            attempts: 0,
            permit: None,
            deadline: None,
            slot: None,
            inflight: None,
            started: Instant::now(),
            upstream_started: None,
            upstream_elapsed: None,
            failure_status: None,
            connection: None,
            grpc_answer: None,
            websocket: None,
            caching: false,
            cache: None,
        }
    }
}
