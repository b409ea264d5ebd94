//! The `ProxyHttp` implementation. It only dispatches: routing, balancing, forwarding headers
//! and error responses each live in their own module.
//!
//! Phase map: `request_filter` assigns the request id, resolves the client, matches the route
//! (404/405), authenticates (401/403) and rate limits (429); `upstream_peer`,
//! `fail_to_connect`, `error_while_proxy` and `upstream_response_filter` hand attempts to
//! [`attempt`]; `upstream_request_filter` rewrites the path and sets forwarding and identity
//! headers; `fail_to_proxy` maps failures to 502/503/504 JSON answers; `response_filter`
//! echoes the request id and adds rate-limit headers; `logging` records metrics and the
//! access log.

mod attempt;
pub mod ctx;
mod record;
pub mod respond;

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use http::{HeaderValue, Uri};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;

use crate::access_log::AccessLog;
use crate::metrics::{ConnectionGuard, Metrics};
use crate::routing::{RequestView, RouteMatch};
use crate::snapshot::SnapshotStore;
use ctx::RequestCtx;
use respond::REQUEST_ID;

/// The gateway: one instance serves every listener, reading the current snapshot per request.
pub struct Gateway {
    store: SnapshotStore,
    metrics: Arc<Metrics>,
    access_log: AccessLog,
}

impl Gateway {
    /// A gateway serving whatever `store` holds.
    pub fn new(store: SnapshotStore, metrics: Arc<Metrics>, access_log: AccessLog) -> Self {
        Gateway {
            store,
            metrics,
            access_log,
        }
    }
}

impl Gateway {
    /// Applies the route's rate limit; answers 429 itself and returns `Ok(true)` when the
    /// request is refused.
    async fn rate_limit(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: usize,
    ) -> Result<bool> {
        let snapshot = Arc::clone(&ctx.snapshot);
        let limiter = snapshot.ratelimit();
        let factor = if snapshot.config().routes[route].adaptive_limit {
            snapshot.cluster_of(route).state.factor()
        } else {
            1.0
        };
        let Some(decision) = limiter
            .check(
                route,
                ctx.identity.as_deref(),
                ctx.client_ip,
                &session.req_header().headers,
                factor,
            )
            .await
        else {
            return Ok(false);
        };
        if decision.store_unavailable {
            // on_store_error = allow / deny: there is no state worth reporting in headers.
            if decision.allowed {
                return Ok(false);
            }
            let message = "service unavailable: rate limit store unavailable";
            respond::reject_with(session, ctx, 503, message, &[("retry-after", "1")]).await?;
            return Ok(true);
        }
        ctx.ratelimit = Some(decision);
        if decision.allowed {
            return Ok(false);
        }
        respond::rate_limited(session, ctx, &decision, limiter).await?;
        Ok(true)
    }

    /// Runs the route's authentication; answers 401/403 itself and returns `Ok(true)` when the
    /// request is refused.
    async fn authenticate(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: usize,
    ) -> Result<bool> {
        let snapshot = Arc::clone(&ctx.snapshot);
        if !snapshot.auth().protects(route) {
            return Ok(false);
        }
        let spec = &snapshot.config().routes[route];
        let outcome = snapshot
            .auth()
            .authenticate(route, spec, &session.req_header().headers)
            .await;
        let counters = snapshot.auth_metrics(route);
        match outcome {
            Ok(identity) => {
                counters.record(Some(&identity.method), None);
                ctx.identity = Some(identity);
                Ok(false)
            }
            Err(denial) => {
                counters.record(denial.method.as_deref(), Some(denial.reason));
                respond::deny(session, ctx, &denial).await?;
                Ok(true)
            }
        }
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

    async fn early_request_filter(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if ctx.connection.is_none() {
            // First request of a connection (HTTP/2: of a stream).
            ctx.connection = Some(ConnectionGuard::new(&self.metrics));
        }
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let req = session.req_header();
        ctx.request_id = crate::request_id::RequestId::from_client_or_new(
            req.headers.get(REQUEST_ID).map(HeaderValue::as_bytes),
        );
        if let Some(peer) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
        {
            let trusted = ctx.snapshot.trusted();
            ctx.peer_trusted = trusted.contains(peer);
            ctx.client_ip = Some(trusted.client_ip(peer, &req.headers));
        }
        let req = session.req_header();
        let view = RequestView {
            method: &req.method,
            host: request_host(req),
            path: req.uri.path(),
            headers: &req.headers,
        };
        match ctx.snapshot.router().lookup(&view) {
            RouteMatch::Found(i) => {
                ctx.route = Some(i);
                if self.authenticate(session, ctx, i).await? {
                    return Ok(true);
                }
                self.rate_limit(session, ctx, i).await
            }
            RouteMatch::MethodNotAllowed(allowed) => {
                let allow = allowed.allow_header();
                respond::reject(session, ctx, 405, &[("allow", &allow)]).await?;
                Ok(true)
            }
            RouteMatch::NotFound => {
                respond::reject(session, ctx, 404, &[]).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        attempt::choose_peer(session, ctx).await
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        attempt::on_connect_failure(ctx, &self.metrics, e)
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
        attempt::on_proxy_error(session, ctx, &self.metrics, e, client_reused)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(route) = ctx.route {
            if let Some(prefix) = &ctx.snapshot.config().routes[route].strip_prefix {
                if let Some(uri) = strip_prefix(&upstream_request.uri, prefix) {
                    upstream_request.set_uri(uri);
                }
            }
        }
        for name in crate::auth::IDENTITY_HEADERS {
            upstream_request.remove_header(name);
        }
        if let Some(route) = ctx.route {
            if ctx.snapshot.config().routes[route].hide_credentials {
                for name in ctx.snapshot.auth().credential_headers(route) {
                    upstream_request.remove_header(&name);
                }
            }
        }
        if let Some(id) = &ctx.identity {
            set_identity_headers(upstream_request, id)?;
        }
        crate::forwarding::set_upstream_headers(
            upstream_request,
            session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip()),
            ctx.peer_trusted,
            request_host(session.req_header()),
        )?;
        upstream_request.insert_header(REQUEST_ID, ctx.request_id.as_str())?;
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if ctx.upstream_elapsed.is_none() {
            ctx.upstream_elapsed = ctx.upstream_started.map(|t| t.elapsed());
        }
        let failure =
            (_resp.status.as_u16() >= 500).then_some(crate::config::FailureKind::Status5xx);
        attempt::record(ctx, failure);
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        resp.insert_header(REQUEST_ID, ctx.request_id.as_str())?;
        if let Some(d) = &ctx.ratelimit {
            crate::ratelimit::headers::apply(resp, d, ctx.snapshot.ratelimit().tier_name(d.tier))?;
        }
        if crate::signals::draining() {
            session.set_keepalive(None);
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        if ctx.request_id.as_str().is_empty() {
            // Failed before request_filter ran (e.g. malformed request).
            ctx.request_id = crate::request_id::RequestId::generate();
        }
        let status = respond::status_for(e, ctx);
        respond::fail(session, ctx, status).await;
        ctx.failure_status = Some(status);
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, error: &Error) -> bool {
        // A client that went away is not a gateway error; the access log still records it
        // (status 0).
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
        record::finished(&self.access_log, session, ctx);
    }
}

/// Tells the upstream who the caller is.
fn set_identity_headers(req: &mut RequestHeader, id: &crate::auth::Identity) -> Result<()> {
    for (name, value) in &id.headers {
        req.insert_header(*name, value.clone())?;
    }
    Ok(())
}

/// The request's host: the `Host` header, else the URI authority (HTTP/2).
fn request_host(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
}

/// The URI with `prefix` removed from the front of its path, query kept. `None` when the path
/// does not start with the prefix at a segment boundary.
fn strip_prefix(uri: &Uri, prefix: &str) -> Option<Uri> {
    let path = uri.path();
    if !crate::routing::prefix_matches(prefix, path) {
        return None;
    }
    let rest = &path[prefix.len()..];
    let rest = if rest.is_empty() { "/" } else { rest };
    let rewritten = match uri.query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_string(),
    };
    Uri::try_from(rewritten).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_prefix_keeps_the_query() {
        let uri: Uri = "/api/v1/users/7?x=1&y=2".parse().unwrap();
        assert_eq!(strip_prefix(&uri, "/api/v1").unwrap(), "/users/7?x=1&y=2");
        let uri: Uri = "/api/v1?q".parse().unwrap();
        assert_eq!(strip_prefix(&uri, "/api/v1").unwrap(), "/?q");
        let uri: Uri = "/api/v10".parse().unwrap();
        assert!(strip_prefix(&uri, "/api/v1").is_none());
    }
}
