//! Distributed tracing through the real binary: W3C Trace Context propagation (continued,
//! started, invalid), the access log's trace ids, and OTLP/HTTP export to a receiver that
//! decodes with the `opentelemetry-proto` types: a request retried once, with its auth (JWKS
//! refetch), rate-limit and attempt spans linked to the caller's trace; `-d` mode; a collector
//! that is down.

mod common;

use std::time::{Duration, Instant};

use common::jwt::{self, JwksServer};
use common::otlp::{Collector, Received};
use common::{client, free_port, json, Gatehouse, TestBackend};
use jsonwebtoken::Algorithm;
use serde_json::Value;

const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const INTERNAL: i32 = 1;
const STATUS_ERROR: i32 = 2;

/// A random sampled caller context: (trace id, span id, traceparent).
fn caller() -> (String, String, String) {
    let trace = hex::encode(rand::random::<[u8; 16]>());
    let span = hex::encode(rand::random::<[u8; 8]>());
    let header = format!("00-{trace}-{span}-01");
    (trace, span, header)
}

fn tracing_section(collector: &str, ratio: f64) -> String {
    format!(
        "[tracing]\notlp_endpoint = \"{collector}\"\nsample_ratio = {ratio:.1}\nservice_name = \"edge-test\"\n"
    )
}

fn one<'a>(spans: &'a [Received], pred: impl Fn(&Received) -> bool, what: &str) -> &'a Received {
    let found: Vec<&Received> = spans.iter().filter(|s| pred(s)).collect();
    assert_eq!(found.len(), 1, "{what}: {spans:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retried_request_is_exported_with_its_spans_in_the_callers_trace() {
    let collector = Collector::start();
    let jwks = JwksServer::start(vec![jwt::jwk("rsa1", Algorithm::RS256, "a")]);
    let good = TestBackend::start("good");
    // Nothing listens here: connecting is refused, and the attempt is retried on `good`.
    let dead = format!("127.0.0.1:{}", free_port());
    let gw = Gatehouse::builder().access_log_file().start(&format!(
        r#"
{tracing}
[auth.jwt.idp]
algorithms = ["RS256"]
jwks_url = "{jwks}"
issuer = "https://idp.test/"
audiences = ["api.test"]

[rate_limit.tiers.t]
rps = 100
burst = 100

[upstreams.svc]
backends = [{{ addr = "{dead}" }}, {{ addr = "{good}" }}]
[upstreams.svc.retry]
attempts = 1
on = ["connect"]
backoff = "1ms"

[[routes]]
name = "api"
path_prefix = "/api"
upstream = "svc"
auth = ["jwt:idp"]
rate_limit = {{ key = "consumer", default_tier = "t" }}
"#,
        // Ratio 0: only callers that sampled are recorded (parent-based).
        tracing = tracing_section(&collector.endpoint(), 0.0),
        jwks = jwks.url(),
        good = good.addr,
    ));
    // Once the gateway has the first key set, rotate in a key it has not seen: the first
    // request waits for a refetch.
    let deadline = Instant::now() + Duration::from_secs(10);
    while jwks.fetches() == 0 {
        assert!(
            Instant::now() < deadline,
            "the gateway never fetched the JWKS"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    jwks.set_keys(vec![
        jwt::jwk("rsa1", Algorithm::RS256, "a"),
        jwt::jwk("rsa2", Algorithm::RS256, "b"),
    ]);
    let token = jwt::sign("rsa2", Algorithm::RS256, Some("b"), &jwt::claims("alice"));

    // Round robin over two backends: of two requests, one starts on the dead backend.
    let mut traces = Vec::new();
    for _ in 0..2 {
        let (trace, span, header) = caller();
        let resp = client()
            .get(gw.url("/api/x"))
            .bearer_auth(&token)
            .header("traceparent", &header)
            .header("tracestate", "vendor=opaque")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let seen_upstream = json(resp).await;
        traces.push((trace, span, seen_upstream));
    }

    let mut retried = None;
    for (i, (trace, caller_span, upstream)) in traces.iter().enumerate() {
        // server + auth + rate_limit + 1 or 2 attempts (+ the refetch in the first).
        let spans = collector.trace(trace, 4 + usize::from(i == 0)).await;
        let server = one(&spans, |s| s.span.kind == SERVER, "one server span");
        assert_eq!(server.service, "edge-test");
        assert_eq!(server.span.name, "GET api");
        assert_eq!(
            server.parent_id(),
            *caller_span,
            "continues the caller's span"
        );
        for (k, v) in [
            ("http.request.method", "GET"),
            ("url.path", "/api/x"),
            ("url.scheme", "http"),
            ("http.response.status_code", "200"),
            ("route", "api"),
            ("upstream", "svc"),
            ("consumer", "alice"),
        ] {
            assert_eq!(server.attr(k).as_deref(), Some(v), "{k}: {server:#?}");
        }
        assert_eq!(server.attr("backend"), Some(good.addr.to_string()));
        let auth = one(&spans, |s| s.span.name == "auth", "one auth span");
        assert_eq!(auth.parent_id(), server.span_id());
        assert_eq!(auth.span.kind, INTERNAL);
        assert_eq!(auth.attr("auth.method").as_deref(), Some("jwt:idp"));
        let limit = one(
            &spans,
            |s| s.span.name == "rate_limit",
            "one rate-limit span",
        );
        assert_eq!(limit.parent_id(), server.span_id());
        assert_eq!(limit.attr("ratelimit.store").as_deref(), Some("local"));
        assert_eq!(limit.attr("ratelimit.allowed").as_deref(), Some("true"));
        let refetch: Vec<&Received> = spans
            .iter()
            .filter(|s| s.span.name == "jwks refetch")
            .collect();
        if i == 0 {
            assert_eq!(refetch.len(), 1, "the first request waited for a refetch");
            assert_eq!(refetch[0].parent_id(), auth.span_id());
            assert_eq!(refetch[0].attr("jwks.refetch.ok").as_deref(), Some("true"));
        } else {
            assert!(refetch.is_empty());
        }
        let mut attempts: Vec<&Received> =
            spans.iter().filter(|s| s.span.name == "upstream").collect();
        attempts.sort_by_key(|s| s.span.start_time_unix_nano);
        assert!(attempts
            .iter()
            .all(|a| a.span.kind == CLIENT && a.parent_id() == server.span_id()));
        let last = attempts.last().unwrap();
        assert_eq!(
            last.attr("http.response.status_code").as_deref(),
            Some("200")
        );
        assert_eq!(last.attr("server.port"), Some(good.addr.port().to_string()));
        // The backend got the caller's trace, with the answering attempt as its parent, and
        // the caller's tracestate.
        assert_eq!(
            upstream["headers"]["traceparent"],
            format!("00-{trace}-{}-01", last.span_id())
        );
        assert_eq!(upstream["headers"]["tracestate"], "vendor=opaque");
        if attempts.len() == 2 {
            let first = attempts[0];
            assert_eq!(first.attr("error.type").as_deref(), Some("connect"));
            assert_eq!(
                first.span.status.as_ref().map(|s| s.code),
                Some(STATUS_ERROR)
            );
            assert_eq!(first.attr("attempt").as_deref(), Some("1"));
            assert_eq!(last.attr("attempt").as_deref(), Some("2"));
            assert!(first.span.end_time_unix_nano <= last.span.start_time_unix_nano);
            retried = Some(trace.clone());
        }
        // The access log names the trace and the gateway's span.
        let lines = common::access_log_lines(&gw, 2).await;
        let line = lines
            .iter()
            .find(|l| l["trace_id"] == trace.as_str())
            .unwrap_or_else(|| panic!("no access log line for {trace}: {lines:?}"));
        assert_eq!(line["span_id"], server.span_id());
    }
    assert!(
        retried.is_some(),
        "one of the two requests was retried once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn trace_context_is_propagated_whether_or_not_spans_are_exported() {
    let collector = Collector::start();
    let backend = TestBackend::start("b");
    let gw = Gatehouse::builder().access_log_file().start(&format!(
        "{}\n[upstreams.b]\nbackends = [{{ addr = \"{}\" }}]\n[[routes]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"b\"\n",
        tracing_section(&collector.endpoint(), 0.0),
        backend.addr
    ));
    let get = |headers: &'static [(&'static str, &'static str)]| {
        let url = gw.url("/x");
        async move {
            let mut req = client().get(url);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            json(req.send().await.unwrap()).await["headers"].clone()
        }
    };
    let parse = |v: &Value| -> (String, String, String) {
        let text = v.as_str().expect("traceparent sent upstream");
        let parts: Vec<&str> = text.split('-').collect();
        assert_eq!(parts.len(), 4, "{text}");
        assert_eq!(parts[0], "00");
        (parts[1].into(), parts[2].into(), parts[3].into())
    };

    // No traceparent: a new trace, not sampled at ratio 0.
    let h = get(&[]).await;
    let (trace, _, flags) = parse(&h["traceparent"]);
    assert_eq!((trace.len(), flags.as_str()), (32, "00"));
    // An unsampled caller: continued, still unsampled, tracestate kept.
    let h = get(&[
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
        ),
        ("tracestate", "a=1"),
    ])
    .await;
    let (trace, span, flags) = parse(&h["traceparent"]);
    assert_eq!(trace, "0af7651916cd43dd8448eb211c80319c");
    assert_ne!(span, "b7ad6b7169203331", "the gateway's own span id");
    assert_eq!(flags, "00");
    assert_eq!(h["tracestate"], "a=1");
    // An invalid traceparent: a new trace, and its tracestate is dropped.
    let h = get(&[
        (
            "traceparent",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
        ),
        ("tracestate", "a=1"),
    ])
    .await;
    let (trace, _, _) = parse(&h["traceparent"]);
    assert_ne!(trace, "0af7651916cd43dd8448eb211c80319c");
    assert!(h.get("tracestate").is_none(), "{h}");
    let invalid_trace = trace;

    // A sampled caller is exported; once its spans are in, nothing else was (export keeps
    // the queue's order).
    let (trace, _, header) = caller();
    let resp = client()
        .get(gw.url("/x"))
        .header("traceparent", &header)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let spans = collector.trace(&trace, 2).await;
    assert_eq!(spans.len(), 2, "server and upstream: {spans:#?}");
    let traces: std::collections::BTreeSet<String> =
        collector.spans().iter().map(Received::trace_id).collect();
    assert_eq!(traces.len(), 1, "only the sampled request: {traces:?}");

    // The access log carries every request's trace id, sampled or not.
    common::access_log_lines(&gw, 4).await;
    let log = gw.access_log();
    for t in [
        "0af7651916cd43dd8448eb211c80319c",
        invalid_trace.as_str(),
        trace.as_str(),
    ] {
        assert!(log.contains(&format!("\"trace_id\":\"{t}\"")), "{t}: {log}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_down_collector_costs_requests_nothing_and_spans_are_counted() {
    let backend = TestBackend::start("b");
    // A collector that accepts connections and never answers: every export times out, and
    // meanwhile the queue (4 requests) fills.
    let hanging = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", hanging.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in hanging.incoming() {
            held.push(conn);
        }
    });
    let gw = Gatehouse::builder().admin(Some(common::ADMIN_TOKEN)).start(&format!(
        "{}max_queue = 4\nexport_timeout = \"1s\"\n[upstreams.b]\nbackends = [{{ addr = \"{}\" }}]\n[[routes]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"b\"\n",
        tracing_section(&endpoint, 1.0),
        backend.addr
    ));
    for _ in 0..50 {
        assert_eq!(
            client().get(gw.url("/x")).send().await.unwrap().status(),
            200
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let failed = common::metric(&gw, "gatehouse_tracing_spans_total{result=\"failed\"}")
            .await
            .unwrap_or(0.0);
        let dropped = common::metric(&gw, "gatehouse_tracing_spans_total{result=\"dropped\"}")
            .await
            .unwrap_or(0.0);
        let exported = common::metric(&gw, "gatehouse_tracing_spans_total{result=\"exported\"}")
            .await
            .unwrap_or(-1.0);
        // 50 requests of 2 spans each: none exported, every one failed or dropped.
        if failed + dropped == 100.0 {
            assert_eq!(exported, 0.0);
            assert!(
                dropped > 0.0 && failed > 0.0,
                "a queue of 4 drops most, the rest fail: {dropped} / {failed}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "failed {failed} + dropped {dropped} != 100"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        gw.stderr().matches("tracing: export to").count() == 1,
        "logged once: {}",
        gw.stderr()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_are_exported_in_daemon_mode() {
    let collector = Collector::start();
    let backend = TestBackend::start("b");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("gatehouse.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\nthreads = 1\npid_file = \"{pid}\"\nupgrade_sock = \"{sock}\"\ngrace_period = \"1s\"\ngraceful_shutdown_timeout = \"1s\"\n{tracing}\n[upstreams.b]\nbackends = [{{ addr = \"{b}\" }}]\n[[routes]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"b\"\n",
            pid = dir.path().join("gh.pid").display(),
            sock = dir.path().join("up.sock").display(),
            tracing = tracing_section(&collector.endpoint(), 1.0),
            b = backend.addr,
        ),
    )
    .unwrap();
    let _daemon = common::start_daemon(
        &config,
        false,
        &dir.path().join("gh.pid"),
        &[],
        &dir.path().join("daemon.log"),
    );
    // `-d` returns once the daemon has bootstrapped; its listener may take a moment more.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the daemon never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (trace, _, header) = caller();
    let resp = client()
        .get(format!("http://127.0.0.1:{port}/x"))
        .header("traceparent", header)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let spans = collector.trace(&trace, 2).await;
    assert_eq!(spans.len(), 2, "{spans:#?}");
    assert!(spans.iter().all(|s| s.service == "edge-test"));
}
