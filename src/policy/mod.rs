//! The per-route policy pipeline (domain layer): what the gateway does to a request besides
//! routing and balancing, one module per policy. Each policy owns its configuration (read by
//! [`crate::config`]) and implements only the phases it needs ([`Policy`]); at snapshot build
//! time every route gets its ordered [`Pipeline`], and the `ProxyHttp` implementation only
//! calls the pipeline's phases. A policy refuses a request by returning a typed
//! [`Refusal`](crate::refusal::Refusal); it never writes a response itself.
//!
//! The order is fixed (a policy later in the list sees what earlier ones decided):
//!
//! | # | policy | `on_request` | `on_upstream_request` | `on_response` |
//! |---|---|---|---|---|
//! | 1 | [`protocols`] (every route) | gRPC needs an HTTP/2 upstream, gRPC-Web needs `grpc_web`, upgrades need `websocket` | `te: trailers` for gRPC | |
//! | 2 | [`cors`] (routes with `cors`) | answers preflights (204/403) | | CORS headers |
//! | 3 | [`body_limit`] (every route) | declared length over `max_body` (413) | | |
//! | 4 | [`authenticate`] (routes with `auth`) | verifies credentials (401) | removes the credential (`hide_credentials`) | |
//! | 5 | [`authorize`] (`require_roles` / `require_scopes`) | roles and scopes (403) | | |
//! | 6 | [`rate_limit`] (routes with `rate_limit`) | tiered limits and quotas (429, 503) | | rate-limit headers |
//! | 7 | [`headers`] (`request_headers` / `response_headers`) | | header edits | header edits |
//! | 8 | [`rewrite`] or [`strip_prefix`] | | rewrites the path | |
//! | 9 | [`json_body`] (`request_body` / `response_body`) | | | (bodies, in the body phases) |
//! | 10 | [`sticky`] (sticky upstreams) | reads the affinity cookie | | sets it when the backend changed |
//! | 11 | [`identity`] (every route) | | removes client copies of identity headers, sets the caller's | |
//!
//! Request hygiene runs before the pipeline, at the edge. A route pays only for the phases some
//! policy of its pipeline uses: each phase first tests one bit of the pipeline's phase set.

pub mod authenticate;
pub mod authorize;
pub mod body_limit;
pub mod cors;
pub mod headers;
pub mod identity;
pub mod json_body;
pub mod json_doc;
mod pipeline;
pub mod protocols;
pub mod rate_limit;
pub mod rewrite;
pub mod sticky;
pub mod strip_prefix;
pub mod template;

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};

use crate::auth::Identity;
use crate::config::RouteId;
use crate::ratelimit::Decision;
use crate::refusal::Refusal;
use crate::request_id::RequestId;
pub use pipeline::{Parts, Pipeline, PolicyMetrics, Step};

/// A set of pipeline phases (bit set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Phases(u8);

impl Phases {
    /// No phase.
    pub const NONE: Phases = Phases(0);
    /// [`Policy::on_request`].
    pub const REQUEST: Phases = Phases(1);
    /// [`Policy::on_request_body`].
    pub const REQUEST_BODY: Phases = Phases(32);
    /// [`Policy::on_upstream_request`].
    pub const UPSTREAM_REQUEST: Phases = Phases(2);
    /// [`Policy::on_response`].
    pub const RESPONSE: Phases = Phases(4);
    /// [`Policy::on_response_body`].
    pub const RESPONSE_BODY: Phases = Phases(8);
    /// [`Policy::on_log`].
    pub const LOG: Phases = Phases(16);

    /// Both sets.
    pub const fn union(self, other: Phases) -> Phases {
        Phases(self.0 | other.0)
    }

    /// Whether every phase of `other` is in this set.
    pub const fn contains(self, other: Phases) -> bool {
        self.0 & other.0 == other.0
    }
}

/// The per-request state policies read and write, from `request_filter` to `logging`. It holds
/// no snapshot: a policy gets what it needs from its own fields.
#[derive(Default)]
pub struct RequestState {
    /// The request id echoed to the client and sent upstream.
    pub request_id: RequestId,
    /// The same id as a header value, built once (the client's own value when it was kept)
    /// and shared by every header that carries it.
    pub request_id_header: Option<http::HeaderValue>,
    /// The matched route.
    pub route: Option<RouteId>,
    /// The client IP (after trusted-proxy resolution).
    pub client_ip: Option<IpAddr>,
    /// Whether the socket peer is a trusted proxy.
    pub peer_trusted: bool,
    /// The authenticated caller, on protected routes.
    pub identity: Option<Arc<Identity>>,
    /// The rate-limit decision, on limited routes.
    pub ratelimit: Option<Decision>,
    /// Request body bytes received from the client so far.
    pub body_bytes: u64,
    /// A complete request body that replaces the client's (read before the upstream was
    /// chosen, then transformed); sent, with its length, on every attempt.
    pub request_body: Option<Bytes>,
    /// The request body cannot be replayed (it was transformed while streaming): no retry
    /// once it started.
    pub body_not_replayable: bool,
    /// Per-policy scratch state of body transformations.
    pub body: BodyState,
    /// Whether the request came over TLS.
    pub tls: bool,
    /// The subject of the client's TLS certificate (mTLS).
    pub client_cert_subject: Option<Arc<str>>,
    /// Whether (and how) the request is gRPC: the gateway's own answers are then gRPC-shaped.
    pub grpc: crate::grpc::Kind,
    /// A gRPC-Web request that cannot be bridged: the bridge module is installed at start
    /// only when a route has `grpc_web = true` (it costs every request four allocations).
    pub grpc_web_unbridged: bool,
    /// The backend a valid sticky-session cookie names, by index in the upstream's cluster.
    pub sticky_backend: Option<usize>,
    /// The backend a sticky upstream chose without (or against) the cookie: the response sets
    /// the cookie for it.
    pub sticky_assigned: Option<usize>,
    /// Set while the gateway writes a response of its own (a refusal or a proxy failure):
    /// response policies that act on upstream bodies leave it alone.
    pub gateway_response: bool,
    /// The request's trace context (and its spans, when sampled and exported).
    pub trace: crate::trace::RequestTrace,
}

/// What body transformations keep between chunks.
#[derive(Default)]
pub struct BodyState {
    /// Request body chunks buffered until the end (streaming transformation).
    pub request: Option<bytes::BytesMut>,
    /// Response body chunks buffered until the end; `None` when the response passes through.
    pub response: Option<bytes::BytesMut>,
    /// The values the request body's `set` writes, rendered when the request arrived.
    pub request_values: Vec<serde_json::Value>,
    /// The values the response body's `set` writes, rendered with the response header.
    pub response_values: Vec<serde_json::Value>,
}

impl RequestState {
    /// The request id as a header value (shared bytes, no copy once built).
    pub fn request_id_value(&self) -> http::HeaderValue {
        match &self.request_id_header {
            Some(v) => v.clone(),
            None => http::HeaderValue::from_str(self.request_id.as_str())
                .unwrap_or(http::HeaderValue::from_static("-")),
        }
    }
}

/// One policy: the phases it implements (the rest do nothing). Implementations are dispatched
/// statically through [`Step`], so async phases cost no allocation.
pub trait Policy {
    /// The phases this policy implements.
    const PHASES: Phases;

    /// Before anything is sent upstream: may refuse the request.
    fn on_request(
        &self,
        _req: &RequestHeader,
        _state: &mut RequestState,
    ) -> impl Future<Output = Result<(), Refusal>> + Send {
        std::future::ready(Ok(()))
    }

    /// On each chunk of the client's request body (`end_of_stream` on the last); a chunk may
    /// be replaced (an empty one is not sent). May refuse the request.
    fn on_request_body(
        &self,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        _state: &mut RequestState,
    ) -> Result<(), Refusal> {
        Ok(())
    }

    /// Just before the request goes upstream: may change `upstream` (a copy of the client's
    /// request `req`, as earlier policies left it).
    fn on_upstream_request(
        &self,
        _req: &RequestHeader,
        _upstream: &mut RequestHeader,
        _state: &RequestState,
    ) -> pingora::Result<()> {
        Ok(())
    }

    /// On every response header the client gets on this route for request `req`: the
    /// upstream's, and those the gateway writes itself (refusals and proxy failures).
    fn on_response(
        &self,
        _req: &RequestHeader,
        _resp: &mut ResponseHeader,
        _state: &mut RequestState,
    ) -> pingora::Result<()> {
        Ok(())
    }

    /// On each chunk of the upstream response body.
    fn on_response_body(
        &self,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        _state: &mut RequestState,
    ) -> pingora::Result<()> {
        Ok(())
    }

    /// When the request is finished, with the status sent (0: none).
    fn on_log(&self, _state: &RequestState, _status: u16) {}
}
