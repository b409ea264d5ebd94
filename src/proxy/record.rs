//! The `logging` phase's work: metrics from pre-resolved handles, the route's `on_log`
//! policies, and the access log line.

use pingora::proxy::Session;

use super::ctx::RequestCtx;
use crate::access_log::{self, AccessLog};
use crate::routing::request_host;

/// Records a finished request; returns the status it counted.
pub fn finished(access_log: &AccessLog, session: &Session, ctx: &RequestCtx) -> u16 {
    // A gRPC answer of the gateway's is HTTP 200 on the wire; it counts as what it stands for.
    let status = ctx
        .grpc_answer
        .map(|(status, _)| status)
        .or_else(|| session.response_written().map(|r| r.status.as_u16()))
        .or(ctx.failure_status)
        .unwrap_or(0);
    let elapsed = ctx.started.elapsed();
    let snapshot = &ctx.snapshot;
    let state = &ctx.state;
    snapshot
        .route_metrics(state.route)
        .record(status, elapsed.as_secs_f64());
    if let Some(route) = state.route {
        snapshot.pipeline(route).on_log(state, status);
        if let (Some(result), Some(caching)) = (ctx.cache, snapshot.caching(route)) {
            caching.results[result as usize].inc();
        }
    }
    let upstream = state.route.map(|r| snapshot.upstream_of(r));
    if let (Some(u), Some(t)) = (upstream, ctx.upstream_elapsed) {
        snapshot.upstream_metrics(u).record(t.as_secs_f64());
    }
    if access_log.enabled() {
        let req = session.req_header();
        let path = match (access_log.include_query(), req.uri.path_and_query()) {
            (true, Some(pq)) => pq.as_str(),
            _ => req.uri.path(),
        };
        let config = snapshot.config();
        let backend = upstream
            .zip(ctx.backend)
            .map(|(u, b)| &*snapshot.clusters()[u.index()].members()[b].addr_text);
        let mut ip_text = crate::forwarding::IpText::default();
        let client_ip = state
            .client_ip
            .map(|ip| std::str::from_utf8(ip_text.write(ip)).unwrap_or(""));
        let (trace_id, span_id) = (state.trace.trace_id.hex(), state.trace.span_id.hex());
        access_log::Clock::with_now(|time| {
            access_log.log(&access_log::Entry {
                time,
                request_id: state.request_id.as_str(),
                trace_id: std::str::from_utf8(&trace_id).unwrap_or(""),
                span_id: std::str::from_utf8(&span_id).unwrap_or(""),
                client_ip,
                method: req.method.as_str(),
                host: request_host(req),
                path,
                route: state.route.map(|r| config.route(r).name.as_str()),
                upstream: upstream.map(|u| config.upstream(u).name.as_str()),
                backend,
                status,
                duration_ms: millis(elapsed),
                upstream_ms: ctx.upstream_elapsed.map(millis),
                bytes_sent: session.body_bytes_sent(),
                consumer: state.identity.as_ref().map(|i| i.consumer.as_str()),
                tier: state
                    .ratelimit
                    .map(|d| snapshot.ratelimit().tier_name(d.tier)),
                rate_limited: state.ratelimit.map(|d| !d.allowed),
                auth_method: state.identity.as_ref().map(|i| i.method.as_str()),
                grpc_status: ctx.grpc_answer.map(|(_, code)| code.as_str()),
                cache: ctx.cache.map(|c| c.header()),
            })
        });
    }
    status
}

/// Queues a sampled request's spans for export: the server span gets the HTTP semantic
/// convention attributes and the gateway's own (`route`, `upstream`, `backend`, `consumer`).
pub fn export_trace(session: &Session, ctx: &mut RequestCtx, status: u16) {
    use crate::trace::Value;
    if !ctx.state.trace.recording() {
        return;
    }
    ctx.state.trace.close_attempt(Vec::new(), None);
    let snapshot = std::sync::Arc::clone(&ctx.snapshot);
    let config = snapshot.config();
    let state = &mut ctx.state;
    let req = session.req_header();
    let route = state.route.map(|r| config.route(r).name.as_str());
    let upstream = state.route.map(|r| snapshot.upstream_of(r));
    let mut attributes = vec![
        (
            "http.request.method",
            Value::Str(req.method.as_str().to_string()),
        ),
        ("url.path", Value::Str(req.uri.path().to_string())),
        (
            "url.scheme",
            Value::Static(if state.tls { "https" } else { "http" }),
        ),
        ("http.response.status_code", Value::Int(i64::from(status))),
        (
            "network.protocol.version",
            Value::Static(match req.version {
                http::Version::HTTP_2 => "2",
                http::Version::HTTP_10 => "1.0",
                _ => "1.1",
            }),
        ),
    ];
    if let Some(host) = request_host(req) {
        attributes.push(("server.address", Value::Str(host.to_string())));
    }
    if let Some(ip) = state.client_ip {
        attributes.push(("client.address", Value::Str(ip.to_string())));
    }
    if let Some(ua) = req
        .headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
    {
        attributes.push(("user_agent.original", Value::Str(ua.to_string())));
    }
    if let Some(r) = route {
        attributes.push(("route", Value::Str(r.to_string())));
    }
    if let Some(u) = upstream {
        attributes.push(("upstream", Value::Str(config.upstream(u).name.clone())));
        if let Some(b) = ctx.backend {
            let addr = &snapshot.clusters()[u.index()].members()[b].addr_text;
            attributes.push(("backend", Value::Str(addr.to_string())));
        }
    }
    if let Some(id) = &state.identity {
        attributes.push(("consumer", Value::Str(id.consumer.clone())));
    }
    if let Some(cache) = ctx.cache {
        attributes.push(("cache", Value::Static(cache.header())));
    }
    attributes.push((
        "request_id",
        Value::Str(state.request_id.as_str().to_string()),
    ));
    let name = match route {
        Some(r) => format!("{} {r}", req.method),
        None => req.method.to_string(),
    };
    let error = (status >= 500 || status == 0).then(|| format!("HTTP {status}"));
    let trace = std::mem::take(&mut state.trace);
    let end = trace
        .recording
        .as_ref()
        .map_or_else(Default::default, |r| r.started.elapsed());
    crate::trace::export::submit(crate::trace::export::FinishedTrace {
        trace,
        end,
        name,
        attributes,
        error,
    });
}

/// Milliseconds with microsecond precision: `7.83`, never `7.830207000000001` (the value is
/// the double nearest to a whole number of microseconds, which JSON prints shortest).
fn millis(d: std::time::Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn millis_have_microsecond_precision_and_print_short() {
        let d = Duration::from_nanos(7_830_207_123);
        assert_eq!(super::millis(d), 7830.207);
        let json = serde_json::to_string(&super::millis(Duration::from_nanos(7_830_207))).unwrap();
        assert_eq!(json, "7.83");
    }
}
