//! Upstream attempts: choosing the backend (balancing, breakers, `max_inflight`, the route
//! deadline), recording each attempt's outcome for the breaker and the traffic window, and
//! deciding retries (kind, method, replayable body, attempts, deadline, budget).
//!
//! Retry rules: a connection that could not be made sent nothing, so any method may retry it
//! (once without a `[retry]` section; up to `attempts` with one). Anything after bytes may have
//! reached the upstream is retried only for the listed idempotent methods, only when the body
//! can be replayed, and only within the budget. Pingora's own retry of a pooled connection
//! that was closed before the request was written is kept: nothing reached the upstream.

use std::time::{Duration, Instant};

use pingora::prelude::*;
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;

use http::HeaderValue;
use pingora::http::RequestHeader;

use super::ctx::RequestCtx;
use crate::clock;
use crate::config::{FailureKind, HashKey};
use crate::refusal::Refusal;

/// `Retry-After` (seconds) of a 503 for "no healthy backend" on an upstream without active
/// health checks: nothing brings a backend back but an operator (undrain, reload).
const NO_CHECK_RETRY_AFTER: u64 = 5;
use crate::upstream::backend::InflightGuard;
use crate::upstream::{bit, Unavailable};

/// Classifies a proxy error by what went wrong with the upstream.
pub fn classify(e: &Error) -> FailureKind {
    use ErrorType::*;
    match e.etype() {
        ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout => {
            FailureKind::Timeout
        }
        ConnectRefused | ConnectNoRoute | ConnectError | SocketError | BindError
        | ConnectProxyFailure => FailureKind::Connect,
        _ => FailureKind::Reset,
    }
}

/// Chooses the backend of the next attempt and returns its peer, timeouts capped by the
/// remaining route deadline. Refuses (503/504) without touching the upstream when it must.
pub async fn choose_peer(session: &mut Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
    let Some(route) = ctx.state.route else {
        return Error::e_explain(ErrorType::InternalError, "upstream_peer without a route");
    };
    let snapshot = std::sync::Arc::clone(&ctx.snapshot);
    let cluster = snapshot.cluster_of(route);
    let spec = cluster.spec();
    if ctx.attempts == 0 {
        cluster.state.traffic.request(clock::unix_secs());
        ctx.deadline = snapshot
            .config()
            .route(route)
            .timeout
            .map(|t| ctx.started + t);
        if ctx.state.grpc.is_grpc() {
            // The caller's own deadline, when shorter, is the one that counts.
            if let Some(t) = crate::grpc::timeout(&session.req_header().headers) {
                let caller = ctx.started + t;
                ctx.deadline = Some(ctx.deadline.map_or(caller, |d| d.min(caller)));
            }
        }
        if spec.max_inflight > 0 {
            match cluster.state.try_slot(spec.max_inflight) {
                Some(slot) => ctx.slot = Some(slot),
                None => return Err(Refusal::Overloaded.into_error()),
            }
        }
        if spec.retry.is_some() {
            session.as_mut().enable_retry_buffering();
        }
    } else if let Some(retry) = &spec.retry {
        let wait = backoff(retry.backoff, ctx.attempts);
        let wait = ctx.deadline.map_or(wait, |d| {
            wait.min(d.saturating_duration_since(Instant::now()))
        });
        tokio::time::sleep(wait).await;
    }
    let remaining = ctx
        .deadline
        .map(|d| d.saturating_duration_since(Instant::now()));
    if remaining.is_some_and(|r| r.is_zero()) {
        return Err(Refusal::DeadlineExceeded.into_error());
    }
    let mut ip_buf = [0u8; 16];
    let key = cluster
        .hash_key()
        .and_then(|k| hash_key(k, session.req_header(), ctx.state.client_ip, &mut ip_buf));
    let now_ms = clock::now_ms();
    let sticky = ctx
        .state
        .sticky_backend
        .filter(|_| ctx.attempts == 0)
        .and_then(|i| cluster.pick_this(i, now_ms));
    let picked = match sticky {
        Some(choice) => Ok(choice),
        None => cluster.pick(key, ctx.tried, now_ms),
    };
    let (i, permit) = match picked {
        Ok(choice) => choice,
        Err(Unavailable::NoHealthy) => {
            // The next health check may bring a backend back; without checks, only an operator
            // can (undrain, reload), so clients are asked to wait a little longer.
            let retry_after = spec
                .health_check
                .as_ref()
                .map_or(NO_CHECK_RETRY_AFTER, |h| {
                    h.interval.as_secs() + u64::from(h.interval.subsec_nanos() > 0)
                });
            let retry_after = retry_after.max(1);
            return Err(Refusal::NoHealthyBackend { retry_after }.into_error());
        }
        Err(Unavailable::CircuitOpen(ms)) => {
            let retry_after = ms.div_ceil(1000).max(1);
            return Err(Refusal::CircuitOpen { retry_after }.into_error());
        }
    };
    let member = &cluster.members()[i];
    if spec.sticky.is_some() {
        ctx.state.sticky_assigned = (ctx.state.sticky_backend != Some(i)).then_some(i);
    }
    ctx.attempts += 1;
    ctx.tried |= bit(i);
    ctx.permit = permit;
    // Replacing the guard releases the previous attempt's count.
    ctx.inflight = Some(InflightGuard::new(&member.state));
    ctx.backend = Some(i);
    ctx.upstream_started.get_or_insert_with(Instant::now);
    if ctx.state.trace.recording() {
        use crate::trace::Value;
        ctx.state.trace.open_attempt(vec![
            ("upstream", Value::Str(spec.name.clone())),
            ("server.address", Value::Str(member.addr.ip().to_string())),
            ("server.port", Value::Int(i64::from(member.addr.port()))),
            ("attempt", Value::Int(i64::from(ctx.attempts))),
        ]);
    }
    let mut peer = Box::new(member.peer.clone());
    if spec.protocol != crate::config::Protocol::Http1
        && crate::policy::protocols::is_websocket_upgrade(session.req_header())
    {
        // WebSocket upgrades are HTTP/1.1 to the backend too (no RFC 8441 in Pingora).
        peer.options.set_http_version(1, 1);
    }
    if let Some(left) = remaining {
        let o = &mut peer.options;
        for t in [
            &mut o.connection_timeout,
            &mut o.read_timeout,
            &mut o.write_timeout,
        ] {
            *t = Some(t.map_or(left, |v| v.min(left)));
        }
        o.total_connection_timeout = Some(left);
    }
    Ok(peer)
}

/// Exponential backoff with jitter: base × 2^(n−1) × [0.5, 1.5).
fn backoff(base: Duration, attempt: u32) -> Duration {
    let factor =
        2f64.powi(attempt.saturating_sub(1).min(10) as i32) * (0.5 + rand::random::<f64>());
    base.mul_f64(factor)
}

/// Records the outcome of the current attempt (once): the breaker and the traffic window.
pub fn record(ctx: &mut RequestCtx, failure: Option<FailureKind>) {
    let (Some(route), Some(i)) = (ctx.state.route, ctx.backend) else {
        return;
    };
    let cluster = ctx.snapshot.cluster_of(route);
    if failure.is_some() {
        cluster.state.traffic.failure(clock::unix_secs());
    }
    if let Some(permit) = ctx.permit.take() {
        cluster.record(i, permit, failure, clock::now_ms());
    }
}

/// Gives back an unrecorded breaker permit (the request ended without an outcome).
pub fn finish(ctx: &mut RequestCtx) {
    if let (Some(route), Some(i), Some(permit)) = (ctx.state.route, ctx.backend, ctx.permit.take())
    {
        ctx.snapshot.cluster_of(route).members()[i]
            .state
            .breaker
            .release(permit);
    }
}

fn deadline_left(ctx: &RequestCtx) -> bool {
    ctx.deadline.is_none_or(|d| Instant::now() < d)
}

/// A connection could not be made: nothing was sent, so any method may be retried on
/// another backend.
pub fn on_connect_failure(ctx: &mut RequestCtx, mut e: Box<Error>) -> Box<Error> {
    let kind = classify(&e);
    trace_failure(ctx, kind, &e);
    record(ctx, Some(kind));
    let retry = match ctx.state.route {
        Some(route) => {
            let cluster = ctx.snapshot.cluster_of(route);
            match &cluster.spec().retry {
                // Core behaviour: one retry, on another backend.
                None => ctx.attempts == 1 && cluster.has_available(ctx.tried, clock::now_ms()),
                Some(spec) => {
                    (spec.on.contains(&kind) || kind == FailureKind::Connect)
                        && ctx.attempts <= spec.attempts
                        && deadline_left(ctx)
                        && spend_budget(ctx, kind)
                }
            }
        }
        None => false,
    };
    e.set_retry(retry);
    e
}

/// An error after the connection was made: retried only when safe and within the budget.
pub fn on_proxy_error(
    session: &Session,
    ctx: &mut RequestCtx,
    mut e: Box<Error>,
    client_reused: bool,
) -> Box<Error> {
    // A body transformed while it streamed was sent as it ended: it cannot be sent again.
    trace_failure(ctx, classify(&e), &e);
    let replayable = !session.as_ref().retry_buffer_truncated() && !ctx.state.body_not_replayable;
    let idempotent = session.req_header().method.is_idempotent();
    if replayable && idempotent {
        // Pingora's own rule: a pooled connection closed before the request was written.
        e.retry.decide_reuse(client_reused);
        if e.retry() {
            finish(ctx);
            return e;
        }
    }
    let kind = classify(&e);
    record(ctx, Some(kind));
    let retry = ctx.state.route.is_some_and(|route| {
        let cluster = ctx.snapshot.cluster_of(route);
        let method = &session.req_header().method;
        cluster.spec().retry.as_ref().is_some_and(|spec| {
            spec.on.contains(&kind)
                && spec.methods.contains(method)
                && replayable
                && ctx.attempts <= spec.attempts
                && deadline_left(ctx)
        })
    }) && spend_budget(ctx, kind);
    e.set_retry(retry);
    e
}

/// Ends the attempt's span (when traced) with what went wrong.
fn trace_failure(ctx: &mut RequestCtx, kind: FailureKind, e: &Error) {
    if ctx.state.trace.recording() {
        ctx.state.trace.close_attempt(
            vec![("error.type", crate::trace::Value::Static(kind.as_str()))],
            Some(e.to_string()),
        );
    }
}

fn spend_budget(ctx: &RequestCtx, kind: FailureKind) -> bool {
    let Some(route) = ctx.state.route else {
        return false;
    };
    let cluster = ctx.snapshot.cluster_of(route);
    let Some(spec) = &cluster.spec().retry else {
        return true;
    };
    let metrics = ctx
        .snapshot
        .upstream_metrics(ctx.snapshot.upstream_of(route));
    if cluster.state.traffic.try_retry(spec, clock::unix_secs()) {
        metrics.retry(kind);
        true
    } else {
        metrics.retry_budget_exhausted();
        false
    }
}

/// The consistent-hash key of a request, if it carries one.
fn hash_key<'a>(
    key: &HashKey,
    req: &'a RequestHeader,
    client_ip: Option<std::net::IpAddr>,
    ip_buf: &'a mut [u8; 16],
) -> Option<&'a [u8]> {
    match key {
        HashKey::Header(name) => req.headers.get(name).map(HeaderValue::as_bytes),
        HashKey::Cookie(name) => crate::forwarding::cookie(req, name),
        HashKey::Path => Some(req.uri.path().as_bytes()),
        HashKey::ClientIp => match client_ip? {
            std::net::IpAddr::V4(v4) => {
                ip_buf[..4].copy_from_slice(&v4.octets());
                Some(&ip_buf[..4])
            }
            std::net::IpAddr::V6(v6) => {
                *ip_buf = v6.octets();
                Some(&ip_buf[..])
            }
        },
    }
}
