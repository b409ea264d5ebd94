//! The `ProxyHttp` implementation (top layer). It only dispatches: the route's policy
//! [`Pipeline`](crate::policy::Pipeline) runs in `request_filter`, `upstream_request_filter`,
//! `response_filter`, `response_body_filter` and `logging`; backend choice and retries are
//! [`attempt`]; every response the gateway writes itself is [`respond`]; the response cache's
//! phases are [`cache`].
//!
//! Phase map: `request_filter` assigns the request id, resolves the client, matches the route
//! (404/405) and runs the pipeline's `on_request` (401/403/429/503); on a caching route the
//! cache phases then look the response up (served from the cache, or fetched and stored);
//! `upstream_peer`,
//! `fail_to_connect`, `error_while_proxy` and `upstream_response_filter` hand attempts to
//! [`attempt`]; `upstream_request_filter` runs `on_upstream_request` and sets forwarding
//! headers; `response_filter` echoes the request id, runs `on_response` and sets `X-Cache`;
//! `fail_to_proxy`
//! maps failures to 502/503/504 JSON answers; `logging` records metrics, `on_log` and the
//! access log.

mod attempt;
pub mod cache;
pub mod ctx;
pub mod listener;
mod record;
pub mod respond;
pub mod tls;
pub mod websocket;

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderValue;
use pingora::cache::key::HashBinary;
use pingora::cache::{CacheKey, CacheMeta, ForcedFreshness, HitHandler, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;

use crate::access_log::AccessLog;
use crate::metrics::{ConnectionGuard, Metrics};
use crate::refusal::Refusal;
use crate::routing::{request_host, RequestView, RouteMatch};
use crate::snapshot::SnapshotStore;
use ctx::RequestCtx;
use respond::{REQUEST_ID, REQUEST_ID_NAME, TRACEPARENT, TRACESTATE};

/// The gateway: serves a listener service, reading the current snapshot per request.
pub struct Gateway {
    store: SnapshotStore,
    metrics: Arc<Metrics>,
    access_log: AccessLog,
    tls_conns: Arc<crate::tls::Connections>,
    /// Whether the gRPC-Web bridge module is installed: only when a route of the starting
    /// configuration uses it (a reload that enables it reports that it needs an upgrade).
    grpc_web_bridge: bool,
    /// The response cache (used by routes with a `cache` table).
    cache: &'static crate::cache::Cache,
}

impl Gateway {
    /// A gateway serving whatever `store` holds; `tls_conns` holds what TLS handshakes learnt.
    pub fn new(
        store: SnapshotStore,
        metrics: Arc<Metrics>,
        access_log: AccessLog,
        tls_conns: Arc<crate::tls::Connections>,
        cache: &'static crate::cache::Cache,
    ) -> Self {
        let grpc_web_bridge = store.load().config().routes.iter().any(|r| r.grpc_web);
        Gateway {
            store,
            metrics,
            access_log,
            tls_conns,
            grpc_web_bridge,
            cache,
        }
    }
}

impl Gateway {
    /// TLS at the request level: plain requests redirected to https (`redirect_http`), the SNI
    /// name and `Host` must agree (`strict_sni`, else 421), the client certificate's subject
    /// for the identity headers.
    fn tls_checks(
        &self,
        session: &Session,
        server: &crate::config::ServerSettings,
        state: &mut crate::policy::RequestState,
    ) -> Option<Refusal> {
        let tls = server.tls.as_ref()?;
        if !state.tls {
            if !tls.redirect_http {
                return None;
            }
            let req = session.req_header();
            let host = request_host(req).map(crate::routing::strip_port)?;
            let port = tls.listen.first().map_or(443, |a| a.port());
            let authority = if port == 443 {
                host.to_string()
            } else {
                format!("{host}:{port}")
            };
            let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
            return Some(Refusal::Redirect(format!("https://{authority}{target}")));
        }
        let peer = session.client_addr().and_then(|a| a.as_inet())?;
        let info = self.tls_conns.get(peer)?;
        state.client_cert_subject = info.client_subject.as_deref().map(Arc::from);
        if tls.strict_sni {
            let host = request_host(session.req_header()).map(crate::routing::strip_port);
            let agrees = match (&info.sni, host) {
                (Some(sni), Some(host)) => sni.eq_ignore_ascii_case(host),
                _ => true,
            };
            if !agrees {
                return Some(Refusal::Misdirected);
            }
        }
        None
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.store.load())
    }

    fn on_connection_reuse(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
        prev: Box<dyn Any + Send + Sync>,
    ) {
        if let Ok(guard) = prev.downcast::<Arc<ConnectionGuard>>() {
            ctx.connection = Some(*guard);
        }
    }

    fn persist_connection_context(
        &self,
        _session: &Session,
        ctx: &RequestCtx,
    ) -> Option<Box<dyn Any + Send + Sync>> {
        ctx.connection
            .as_ref()
            .map(|g| Box::new(Arc::clone(g)) as Box<dyn Any + Send + Sync>)
    }

    fn init_downstream_modules(&self, modules: &mut pingora::modules::http::HttpModules) {
        // Pingora's default (a disabled compression module), plus the gRPC-Web bridge, which
        // stays off unless a request turns it on; each module costs every request a boxed
        // context and its calls, so the bridge is there only if a route can use it.
        modules
            .add_module(pingora::modules::http::compression::ResponseCompressionBuilder::enable(0));
        if self.grpc_web_bridge {
            modules.add_module(Box::new(pingora::modules::http::grpc_web::GrpcWeb));
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if ctx.connection.is_none() {
            // First request of a connection (HTTP/2: of a stream).
            ctx.connection = Some(ConnectionGuard::new(&self.metrics));
        }
        // Before the modules see the request: the gRPC-Web bridge rewrites its content type.
        let kind = crate::grpc::kind(
            session
                .req_header()
                .headers
                .get(http::header::CONTENT_TYPE)
                .map(HeaderValue::as_bytes),
        );
        ctx.state.grpc = kind;
        if kind == crate::grpc::Kind::Web {
            // Bridged only if the route allows it: the protocol gate refuses it otherwise.
            match session
                .downstream_modules_ctx
                .get_mut::<pingora::modules::http::grpc_web::GrpcWebBridge>()
            {
                Some(bridge) => bridge.init(),
                None => ctx.state.grpc_web_unbridged = true,
            }
        }
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let RequestCtx {
            snapshot, state, ..
        } = &mut *ctx;
        let req = session.req_header();
        let client_id = req.headers.get(REQUEST_ID);
        state.request_id =
            crate::request_id::RequestId::from_client_or_new(client_id.map(HeaderValue::as_bytes));
        state.request_id_header = match client_id {
            // Kept as sent: share its bytes.
            Some(v) if v.as_bytes() == state.request_id.as_str().as_bytes() => Some(v.clone()),
            // Shared bytes: the copies up and down cost no allocation.
            _ => Some(crate::forwarding::shared_value(state.request_id)),
        };
        state.trace = crate::trace::RequestTrace::start(
            req.headers.get(TRACEPARENT).map(HeaderValue::as_bytes),
            snapshot.config().tracing.sample_ratio,
            crate::trace::export::exporting(),
        );
        if let Some(peer) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
        {
            let trusted = snapshot.trusted();
            state.peer_trusted = trusted.contains(peer);
            state.client_ip = Some(trusted.client_ip(peer, &req.headers));
        }
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        state.tls = tls;
        let mut refusal = edge_hygiene(session, &snapshot.config().server.limits).err();
        if refusal.is_none() {
            refusal = self.tls_checks(session, &snapshot.config().server, state);
        }
        if let Some(refusal) = refusal {
            respond::refuse(session, ctx, &refusal).await?;
            return Ok(true);
        }
        let RequestCtx {
            snapshot, state, ..
        } = &mut *ctx;
        let req = session.req_header();
        let refusal = match route_of(snapshot, req) {
            RouteMatch::Found(route) => {
                state.route = Some(route);
                let pipeline = snapshot.pipeline(route);
                match pipeline.on_request(req, state).await {
                    Ok(()) if pipeline.prefetch_body(req) => {
                        match prefetch_body(session, ctx, route).await {
                            Ok(()) => return Ok(false),
                            Err(refusal) => refusal,
                        }
                    }
                    Ok(()) => return Ok(false),
                    Err(refusal) => refusal,
                }
            }
            RouteMatch::MethodNotAllowed(route, allowed) => {
                // Counted (metrics, access log) under the route whose path matched.
                state.route = Some(route);
                Refusal::MethodNotAllowed(allowed)
            }
            RouteMatch::NotFound => Refusal::NotFound,
        };
        respond::refuse(session, ctx, &refusal).await?;
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        attempt::choose_peer(session, ctx).await
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        cache::request_filter(self.cache, session, ctx);
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut RequestCtx) -> Result<CacheKey> {
        cache::key(session, ctx).ok_or_else(|| {
            Error::explain(
                ErrorType::InternalError,
                "cache enabled without a caching route",
            )
        })
    }

    async fn cache_hit_filter(
        &self,
        session: &mut Session,
        meta: &CacheMeta,
        _hit_handler: &mut HitHandler,
        _is_fresh: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<ForcedFreshness>> {
        Ok(cache::hit_filter(self.cache, session, meta, ctx))
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<RespCacheable> {
        Ok(cache::response_cacheable(session, resp, ctx))
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        ctx: &mut RequestCtx,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        cache::variance(meta, ctx, req)
    }

    fn should_serve_stale(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
        error: Option<&Error>,
    ) -> bool {
        cache::should_serve_stale(error)
    }

    /// The request as Pingora's own error lines show it: method, path without the query (a
    /// query may carry credentials, such as `?api_key=`), host and request id.
    fn request_summary(&self, session: &Session, ctx: &RequestCtx) -> String {
        let req = session.req_header();
        format!(
            "{} {}, Host: {}, request id: {}",
            req.method,
            req.uri.path(),
            request_host(req).unwrap_or("-"),
            ctx.state.request_id.as_str()
        )
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        if incident_kind(&e).is_some() {
            record_incident(ctx, crate::upstream::incidents::Kind::ConnectFailed);
        }
        attempt::on_connect_failure(ctx, e)
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &RequestCtx,
        error: &Error,
        _context: pingora::proxy::ProxyWarnLogContext,
    ) -> bool {
        // A connection failure that is retried is part of an incident, logged as such.
        incident_kind(error).is_some()
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let e = e.more_context(format!("Peer: {peer}"));
        attempt::on_proxy_error(session, ctx, e, client_reused)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(route) = ctx.state.route {
            ctx.snapshot.pipeline(route).on_upstream_request(
                session.req_header(),
                upstream_request,
                &ctx.state,
            )?;
        }
        if let Some(body) = &ctx.state.request_body {
            upstream_request.remove_header(&http::header::TRANSFER_ENCODING);
            upstream_request.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
        }
        crate::forwarding::set_upstream_headers(
            upstream_request,
            session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip()),
            ctx.state.peer_trusted,
            request_host_value(session.req_header()),
            ctx.state.tls,
        )?;
        upstream_request.insert_header_static(
            &REQUEST_ID_NAME,
            REQUEST_ID,
            ctx.state.request_id_value(),
        );
        let trace = &ctx.state.trace;
        upstream_request.insert_header_static(
            &TRACEPARENT,
            "traceparent",
            crate::trace::context::traceparent(
                &trace.trace_id,
                &trace.upstream_parent(),
                trace.sampled,
            ),
        );
        if trace.invalid_parent {
            // A tracestate belongs to the traceparent it came with.
            upstream_request.remove_header(&TRACESTATE);
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if ctx.upstream_elapsed.is_none() {
            ctx.upstream_elapsed = ctx.upstream_started.map(|t| t.elapsed());
        }
        let status = resp.status.as_u16();
        if ctx.state.trace.recording() {
            ctx.state.trace.close_attempt(
                vec![(
                    "http.response.status_code",
                    crate::trace::Value::Int(i64::from(status)),
                )],
                (status >= 500).then(|| format!("HTTP {status}")),
            );
        }
        let failure = (status >= 500).then_some(crate::config::FailureKind::Status5xx);
        attempt::record(ctx, failure);
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        resp.insert_header_static(&REQUEST_ID_NAME, REQUEST_ID, ctx.state.request_id_value());
        if let Some(route) = ctx.state.route {
            let RequestCtx {
                snapshot, state, ..
            } = ctx;
            snapshot
                .pipeline(route)
                .on_response(session.req_header(), resp, state)?;
            cache::response_filter(session, resp, ctx);
            if resp.status == http::StatusCode::SWITCHING_PROTOCOLS
                && crate::policy::protocols::is_websocket_upgrade(session.req_header())
            {
                websocket_upgraded(session, ctx, route);
            }
        }
        if crate::signals::draining() {
            session.set_keepalive(None);
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(replacement) = &ctx.state.request_body {
            // The body was read and transformed before the upstream was chosen: every attempt
            // sends the transformed one (Pingora replays the client's from its retry buffer).
            *body = Some(if end_of_stream {
                replacement.clone()
            } else {
                Bytes::new()
            });
            return Ok(());
        }
        if let Some(route) = ctx.state.route {
            let RequestCtx {
                snapshot, state, ..
            } = ctx;
            snapshot
                .pipeline(route)
                .on_request_body(body, end_of_stream, state)
                .map_err(Refusal::into_error)?;
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if let Some(route) = ctx.state.route {
            ctx.snapshot
                .pipeline(route)
                .on_response_body(body, end_of_stream, &mut ctx.state)?;
        }
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        if ctx.state.request_id.as_str().is_empty() {
            // Failed before request_filter ran (e.g. malformed request).
            ctx.state.request_id = crate::request_id::RequestId::generate();
        }
        let status = respond::status_for(e);
        match incident_kind(e) {
            // Connection failures are counted per attempt, in `fail_to_connect`.
            Some(crate::upstream::incidents::Kind::ConnectFailed) | None => {}
            Some(kind) => record_incident(ctx, kind),
        }
        respond::fail(session, ctx, e, status).await;
        ctx.failure_status = Some(status);
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, error: &Error) -> bool {
        // A client that went away, or a client error the gateway refused, is not a gateway
        // error; the access log still records it. Refusals that come in runs are logged as
        // incidents (see `upstream::incidents`), not one line each.
        if Refusal::of(error).is_some_and(|r| r.status() < 500) || incident_kind(error).is_some() {
            return true;
        }
        error.esource() == &ErrorSource::Downstream
            && matches!(
                error.etype(),
                ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
            )
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        attempt::finish(ctx);
        ctx.inflight = None;
        ctx.slot = None;
        ctx.websocket = None;
        let status = record::finished(&self.access_log, session, ctx);
        if ctx.state.trace.recording() {
            record::export_trace(session, ctx, status);
        }
    }
}

/// Counts a refusal of `kind` in the incidents of the request's upstream.
fn record_incident(ctx: &RequestCtx, kind: crate::upstream::incidents::Kind) {
    if let Some(route) = ctx.state.route {
        let cluster = ctx.snapshot.cluster_of(route);
        cluster
            .state
            .incidents
            .record(cluster.name(), kind, crate::clock::now_ms());
    }
}

/// The incident a failed request belongs to, if its kind comes in runs.
fn incident_kind(e: &Error) -> Option<crate::upstream::incidents::Kind> {
    use crate::upstream::incidents::Kind;
    match Refusal::of(e) {
        Some(Refusal::Overloaded) => return Some(Kind::Shedding),
        Some(Refusal::CircuitOpen { .. }) => return Some(Kind::CircuitOpen),
        Some(Refusal::NoHealthyBackend { .. }) => return Some(Kind::NoHealthyBackend),
        Some(_) => return None,
        None => {}
    }
    matches!(
        e.etype(),
        ErrorType::ConnectRefused
            | ErrorType::ConnectTimedout
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError
    )
    .then_some(Kind::ConnectFailed)
}

/// A 101 to a WebSocket upgrade is about to be written: the connection's guard takes over its
/// idleness (the route's `websocket_idle_timeout` replaces the per-read timeouts) and the
/// going-away close, and the connection is counted until the request's context is dropped.
fn websocket_upgraded(session: &mut Session, ctx: &mut RequestCtx, route: crate::config::RouteId) {
    let idle = ctx.snapshot.config().route(route).websocket_idle_timeout;
    if listener::mark_websocket(session, idle) {
        session.as_downstream_mut().set_read_timeout(None);
        ctx.websocket = Some(ctx.snapshot.route_metrics(Some(route)).websocket_opened());
    }
}

/// The route of `req`. A CORS preflight is routed by the method it asks about, so that it
/// reaches the route that would serve the actual request (whatever that route's `methods`);
/// on a route without CORS it is an ordinary `OPTIONS` request.
fn route_of(snapshot: &crate::snapshot::Snapshot, req: &RequestHeader) -> RouteMatch {
    fn view<'a>(req: &'a RequestHeader, method: &'a http::Method) -> RequestView<'a> {
        RequestView {
            method,
            host: request_host(req),
            path: req.uri.path(),
            headers: &req.headers,
        }
    }
    if let Some(asked) = crate::policy::cors::preflight_method(req) {
        let route = match snapshot.router().lookup(&view(req, &asked)) {
            RouteMatch::Found(route) => Some(route),
            // A method the route does not allow: its CORS settings refuse it (403).
            _ => snapshot.router().lookup_any_method(&view(req, &asked)),
        };
        if let Some(route) = route.filter(|r| snapshot.pipeline(*r).handles_preflight()) {
            return RouteMatch::Found(route);
        }
    }
    snapshot.router().lookup(&view(req, &req.method))
}

/// Reads the whole request body (its declared length is at most 64 KiB) before the upstream is
/// chosen and keeps the route's transformed version to send on every attempt. The client's
/// body stays in Pingora's retry buffer, which is what makes Pingora replay it through
/// `request_body_filter` (where the transformed one replaces it).
async fn prefetch_body(
    session: &mut Session,
    ctx: &mut RequestCtx,
    route: crate::config::RouteId,
) -> std::result::Result<(), Refusal> {
    session.as_mut().enable_retry_buffering();
    let mut body = bytes::BytesMut::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk);
                if body.len() as u64 > crate::policy::json_body::PREFETCH_LIMIT {
                    // More than declared: the framing lied.
                    return Err(Refusal::BadRequest(
                        crate::refusal::BadRequest::InvalidTarget,
                    ));
                }
            }
            Ok(None) => break,
            Err(_) => {
                return Err(Refusal::BadRequest(
                    crate::refusal::BadRequest::MalformedJson,
                ))
            }
        }
    }
    let transformed = ctx.snapshot.pipeline(route).prefetched_body(
        session.req_header(),
        body.freeze(),
        &ctx.state,
    )?;
    ctx.state.request_body = Some(transformed);
    Ok(())
}

/// Request hygiene before routing: the raw request line (HTTP/1), head limits, `Host`, header
/// names, then path normalisation in place.
fn edge_hygiene(session: &mut Session, limits: &crate::config::Limits) -> Result<(), Refusal> {
    use crate::hygiene::request_line::Verdict;
    match listener::raw_line_verdict(session) {
        Verdict::Invalid => {
            return Err(Refusal::BadRequest(
                crate::refusal::BadRequest::InvalidTarget,
            ))
        }
        Verdict::TooLong => return Err(Refusal::UriTooLong),
        Verdict::Fine => {}
    }
    let req = session.req_header();
    let head_len = match session.as_downstream().as_http1() {
        Some(h1) => h1.get_headers_raw_bytes().len(),
        None => crate::hygiene::encoded_head_len(req),
    };
    crate::hygiene::check(req, head_len, limits)?;
    crate::hygiene::sanitize(session.req_header_mut(), limits)
}

/// The request's host as a header value: the `Host` header's (shared, not copied), else the
/// URI authority (HTTP/2).
fn request_host_value(req: &RequestHeader) -> Option<HeaderValue> {
    match req.headers.get(http::header::HOST) {
        Some(h) => Some(h.clone()),
        None => req
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    }
}
