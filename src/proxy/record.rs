//! The `logging` phase's work: metrics from pre-resolved handles, the route's `on_log`
//! policies, and the access log line.

use pingora::proxy::Session;

use super::ctx::RequestCtx;
use super::request_host;
use crate::access_log::{self, AccessLog};

/// Records a finished request.
pub fn finished(access_log: &AccessLog, session: &Session, ctx: &RequestCtx) {
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
        access_log::Clock::with_now(|time| {
            access_log.log(&access_log::Entry {
                time,
                request_id: state.request_id.as_str(),
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
            })
        });
    }
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
