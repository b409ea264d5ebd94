//! Failures behind the gateway get the right status and a JSON body, never a hang:
//! 502 refused/reset, 504 timeout, one retry on another backend when a connection is refused,
//! and Pingora's 400 for malformed HTTP.

mod common;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{backend::resetting_backend, client, free_port, json, Gatehouse, TestBackend};

fn single(addr: &str, extra: &str) -> String {
    format!(
        r#"
[upstreams.svc]
backends = [{{ addr = "{addr}" }}]
{extra}
[[routes]]
name = "all"
path_prefix = "/"
upstream = "svc"
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_connection_is_502_json() {
    let gw = Gatehouse::start(&single(&format!("127.0.0.1:{}", free_port()), ""));
    let resp = client()
        .get(gw.url("/x"))
        .header("x-request-id", "req-502")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body = json(resp).await;
    assert!(body["error"].as_str().unwrap().starts_with("bad gateway"));
    assert_eq!(body["request_id"], "req-502");
}

#[tokio::test(flavor = "multi_thread")]
async fn pingora_error_lines_show_the_path_without_the_query() {
    // A backend that resets the connection: Pingora logs the failed request (refused
    // connections are logged as incidents instead, without requests).
    let gw = Gatehouse::start(&single(&resetting_backend().to_string(), ""));
    let resp = client()
        .get(gw.url("/orders?api_key=s3cret-in-query"))
        .header("x-request-id", "req-query")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    // Pingora logs the failed request with our summary: path, host, request id, no query.
    let started = Instant::now();
    while !gw.stderr().contains("req-query") && started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = gw.stderr();
    assert!(log.contains("GET /orders, Host: "), "{log}");
    assert!(log.contains("request id: req-query"), "{log}");
    assert!(!log.contains("s3cret"), "the query reached the log: {log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_of_refusals_is_logged_as_one_incident_not_a_line_per_request() {
    let gw = Gatehouse::start(&single(&format!("127.0.0.1:{}", free_port()), ""));
    let c = client();
    for _ in 0..30 {
        assert_eq!(c.get(gw.url("/x")).send().await.unwrap().status(), 502);
    }
    let log = gw.stderr();
    let started = "incident started: upstream svc: connections to backends failing";
    assert_eq!(log.matches(started).count(), 1, "{log}");
    assert!(
        !log.contains("Fail to proxy"),
        "a line per refused request: {log}"
    );
    // Quiet for 10 s: the incident ends, with its count (30 requests, each tried once).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !gw.stderr().contains("incident ended: upstream svc") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = gw.stderr();
    assert!(
        log.contains(
            "incident ended: upstream svc: connections to backends failing (502/504): 30 refused"
        ),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_connection_is_502() {
    let gw = Gatehouse::start(&single(&resetting_backend().to_string(), ""));
    let resp = client().get(gw.url("/x")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_upstream_is_504_after_the_read_timeout() {
    let slow = TestBackend::slow("slow", Duration::from_secs(3));
    let gw = Gatehouse::start(&single(&slow.addr_str(), "read_timeout = \"300ms\""));
    let start = Instant::now();
    let resp = client().get(gw.url("/x")).send().await.unwrap();
    assert_eq!(resp.status(), 504);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "answered before the backend did"
    );
    let body = json(resp).await;
    assert!(body["error"]
        .as_str()
        .unwrap()
        .starts_with("gateway timeout"));
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_backend_is_retried_once_on_a_healthy_one() {
    let alive = TestBackend::start("alive");
    let dead = format!("127.0.0.1:{}", free_port());
    let gw = Gatehouse::start(&format!(
        r#"
[upstreams.svc]
backends = [{{ addr = "{dead}" }}, {{ addr = "{}" }}]
[[routes]]
name = "all"
path_prefix = "/"
upstream = "svc"
"#,
        alive.addr_str()
    ));
    let c = client();
    for _ in 0..20 {
        let resp = c.post(gw.url("/orders")).body("{}").send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(alive.hits(), 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_status_codes_pass_through_untouched() {
    let b = TestBackend::start("b");
    b.set_status(503);
    let gw = Gatehouse::start(&single(&b.addr_str(), ""));
    let resp = client().get(gw.url("/x")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(json(resp).await["backend"], "b");
}

#[test]
fn malformed_http_gets_400() {
    let b = TestBackend::start("b");
    let gw = Gatehouse::start(&single(&b.addr_str(), ""));
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\nBad Header Without Colon\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 400"), "got: {text}");
    assert_eq!(b.hits(), 0);
}
