//! Request body limits: a declared length over the limit is refused (413) before any byte is
//! read and before authentication; a chunked body is cut when it crosses the limit; bodies
//! within the limit pass whole. Route `max_body` overrides `[server] max_body`.

mod common;

use std::io::Write;
use std::time::Duration;

use common::raw::{connect, exchange, read_response};
use common::{metric, Gatehouse, TestBackend};

fn start(b: &TestBackend) -> Gatehouse {
    let keys = tempfile::NamedTempFile::new().unwrap();
    let body = format!(
        r#"
[auth.api_keys.k]
keys_file = "{keys}"
[upstreams.svc]
backends = [{{ addr = "{b}" }}]
[[routes]]
name = "small"
path_prefix = "/small"
upstream = "svc"
max_body = "1KiB"
[[routes]]
name = "private"
path_prefix = "/private"
upstream = "svc"
max_body = "1KiB"
auth = ["api_key:k"]
[[routes]]
name = "big"
path_prefix = "/big"
upstream = "svc"
max_body = "64KiB"
[[routes]]
name = "default"
path_prefix = "/"
upstream = "svc"
"#,
        keys = keys.path().display(),
        b = b.addr_str()
    );
    let gw = Gatehouse::builder()
        .admin(Some(common::ADMIN_TOKEN))
        .server("max_body = \"2KiB\"")
        .start(&body);
    // Keep the (empty) keys file alive as long as the gateway.
    std::mem::forget(keys);
    gw
}

#[test]
fn a_declared_length_over_the_limit_gets_413_before_the_body_is_read() {
    let b = TestBackend::start("b");
    let gw = start(&b);
    let mut s = connect(gw.addr);
    // 50 MB announced, not one byte of it sent: the answer must not wait for the body.
    s.write_all(b"POST /small/x HTTP/1.1\r\nHost: a\r\nContent-Length: 50000000\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let r = read_response(&mut s).expect("answered without reading the body");
    assert_eq!(r.status, 413, "{}", r.body);
    let body = r.json();
    assert_eq!(body["limit"], 1024);
    assert!(body["request_id"].is_string());
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    assert_eq!(b.hits(), 0);
}

#[test]
fn the_limit_applies_before_authentication() {
    let b = TestBackend::start("b");
    let gw = start(&b);
    let r = exchange(
        gw.addr,
        b"POST /private/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n",
    );
    assert_eq!(r.status, 413, "not 401: {}", r.body);
}

#[test]
fn a_chunked_body_crossing_the_limit_is_cut_with_413() {
    let b = TestBackend::start("b");
    let gw = start(&b);
    let mut s = connect(gw.addr);
    s.write_all(b"POST /small/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    for _ in 0..4 {
        // 512-byte chunks: the third crosses 1 KiB.
        let _ = s.write_all(format!("200\r\n{}\r\n", "x".repeat(512)).as_bytes());
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let r = read_response(&mut s).expect("a response");
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(r.json()["limit"], 1024);
}

#[test]
fn bodies_within_the_limits_pass_whole() {
    let b = TestBackend::start("b");
    let gw = start(&b);
    let body = "y".repeat(1000);
    let req = format!(
        "POST /small/x HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let r = exchange(gw.addr, req.as_bytes());
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body"], body);
    // The route's own limit wins over [server] max_body in both directions.
    let body = "z".repeat(40_000);
    let req = format!(
        "POST /big/x HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(exchange(gw.addr, req.as_bytes()).status, 200);
    let req = "POST /other HTTP/1.1\r\nHost: a\r\nContent-Length: 3000\r\n\r\n";
    assert_eq!(exchange(gw.addr, req.as_bytes()).status, 413);
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_for_size_are_counted() {
    let b = TestBackend::start("b");
    let gw = start(&b);
    exchange(
        gw.addr,
        b"POST /small/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n",
    );
    assert_eq!(
        metric(
            &gw,
            "gatehouse_edge_refusals_total{reason=\"payload_too_large\"}"
        )
        .await,
        Some(1.0)
    );
}
