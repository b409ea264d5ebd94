//! Request hygiene at the edge, through the real binary with raw sockets: malformed targets,
//! request-line and head limits, `Host`, header names with underscores, path normalisation,
//! the head deadline against slow clients, and the keep-alive idle timeout.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::raw::{closed_within, connect, exchange, read_response};
use common::{metric, Gatehouse, TestBackend};

fn routes(b: &TestBackend) -> String {
    format!(
        r#"
[upstreams.svc]
backends = [{{ addr = "{}" }}]
[[routes]]
name = "admin"
path_prefix = "/admin"
upstream = "svc"
[[routes]]
name = "public"
path_prefix = "/"
upstream = "svc"
"#,
        b.addr_str()
    )
}

fn start(limits: &str) -> (Gatehouse, TestBackend) {
    let b = TestBackend::start("b");
    let gw = Gatehouse::builder()
        .admin(Some(common::ADMIN_TOKEN))
        .server(&format!("[server.limits]\n{limits}"))
        .start(&routes(&b));
    (gw, b)
}

/// Asserts a JSON refusal with `status`, a request id, and nothing sent upstream.
fn assert_refused(r: &common::raw::RawResponse, status: u16, b: &TestBackend) {
    assert_eq!(r.status, status, "{}\n{}", r.head, r.body);
    let body = r.json();
    assert!(body["error"].is_string(), "{body}");
    assert!(
        body["request_id"].as_str().is_some_and(|id| !id.is_empty()),
        "{body}"
    );
    assert_eq!(
        r.header("x-request-id"),
        body["request_id"].as_str().map(String::from)
    );
    assert_eq!(b.hits(), 0, "nothing reaches the upstream");
}

#[test]
fn targets_with_characters_rfc_3986_does_not_allow_get_400() {
    let (gw, b) = start("");
    for target in [
        &b"/a b"[..],
        b"/a\\b",
        b"/a\"b",
        b"/a%zz",
        b"/a%2",
        b"/caf\xc3\xa9",
        b"/a#frag",
    ] {
        let mut req = b"GET ".to_vec();
        req.extend_from_slice(target);
        req.extend_from_slice(b" HTTP/1.1\r\nHost: a\r\n\r\n");
        let r = exchange(gw.addr, &req);
        assert_refused(&r, 400, &b);
        assert_eq!(
            r.json()["reason"],
            "invalid_target",
            "{}",
            String::from_utf8_lossy(target)
        );
    }
    // Pingora itself refuses some targets before any hook runs: still 400, not JSON.
    let r = exchange(gw.addr, b"GET /a<script> HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(r.status, 400);
    assert_eq!(b.hits(), 0);
    // What browsers send raw in queries is tolerated.
    let r = exchange(gw.addr, b"GET /q?a[]=1&b={x}|y HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn request_lines_and_heads_over_the_limits_get_414_and_431() {
    let (gw, b) =
        start("max_request_line = \"1KiB\"\nmax_header_bytes = \"4KiB\"\nmax_headers = 20\n");
    let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(2000));
    assert_refused(&exchange(gw.addr, long.as_bytes()), 414, &b);
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "v".repeat(5000)
    );
    assert_refused(&exchange(gw.addr, big.as_bytes()), 431, &b);
    let mut many = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
    for i in 0..25 {
        many.push_str(&format!("X-H{i}: {i}\r\n"));
    }
    many.push_str("\r\n");
    assert_refused(&exchange(gw.addr, many.as_bytes()), 431, &b);
    // Within the limits everything passes.
    let ok = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(900));
    assert_eq!(exchange(gw.addr, ok.as_bytes()).status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_are_counted_by_reason() {
    let (gw, _b) = start("");
    exchange(gw.addr, b"GET /a\\b HTTP/1.1\r\nHost: a\r\n\r\n");
    exchange(gw.addr, b"GET / HTTP/1.1\r\n\r\n");
    let count = |reason: &'static str| {
        let gw = &gw;
        async move {
            metric(
                gw,
                &format!("gatehouse_edge_refusals_total{{reason=\"{reason}\"}}"),
            )
            .await
            .unwrap_or(0.0)
        }
    };
    assert_eq!(count("invalid_target").await, 1.0);
    assert_eq!(count("missing_host").await, 1.0);
}

#[test]
fn http11_without_host_gets_400_but_http10_is_served() {
    let (gw, b) = start("");
    let r = exchange(gw.addr, b"GET /x HTTP/1.1\r\n\r\n");
    assert_refused(&r, 400, &b);
    assert_eq!(r.json()["reason"], "missing_host");
    // Two Host headers: Pingora refuses them itself (a bare 400, before any hook).
    let r = exchange(gw.addr, b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n");
    assert_eq!(r.status, 400);
    assert_eq!(b.hits(), 0);
    let r = exchange(gw.addr, b"GET /x HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn header_names_with_underscores_are_dropped_or_refused() {
    let (gw, _b) = start("");
    let r = exchange(
        gw.addr,
        b"GET /x HTTP/1.1\r\nHost: a\r\nX_Consumer_Id: evil\r\nX-Kept: 1\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let headers = &r.json()["headers"];
    assert!(headers.get("x_consumer_id").is_none(), "{headers}");
    assert_eq!(headers["x-kept"], "1");

    let (gw, b) = start("underscores_in_headers = \"reject\"\n");
    let r = exchange(gw.addr, b"GET /x HTTP/1.1\r\nHost: a\r\nX_Y: 1\r\n\r\n");
    assert_refused(&r, 400, &b);
    assert_eq!(r.json()["reason"], "underscore_in_header");

    let (gw, _b) = start("underscores_in_headers = \"allow\"\n");
    let r = exchange(gw.addr, b"GET /x HTTP/1.1\r\nHost: a\r\nX_Y: 1\r\n\r\n");
    assert_eq!(r.json()["headers"]["x_y"], "1");
}

#[test]
fn paths_are_normalised_before_routing_and_forwarding() {
    let (gw, _b) = start("");
    let get = |target: &str| {
        exchange(
            gw.addr,
            format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes(),
        )
    };
    // Dot-segments, encoded or not, cannot dodge the admin route's prefix.
    for target in [
        "/public/../admin/users",
        "/public/%2e%2e/admin/users",
        "/public/%2E./admin/users",
        "//admin//users",
        "/./admin/./users",
    ] {
        let r = get(target);
        assert_eq!(r.status, 200, "{target}");
        assert_eq!(r.json()["path"], "/admin/users", "{target}");
    }
    // Unreserved characters are decoded, the query is untouched.
    let r = get("/%61dmin/x?q=%2e%2e&r=1");
    assert_eq!(r.json()["path"], "/admin/x?q=%2e%2e&r=1");
}

#[test]
fn encoded_slashes_are_refused_or_kept_opaque() {
    let (gw, b) = start("");
    let r = exchange(gw.addr, b"GET /files/a%2Fb HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_refused(&r, 400, &b);
    assert_eq!(r.json()["reason"], "encoded_slash");
    let r = exchange(gw.addr, b"GET /files/a%5cb HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_refused(&r, 400, &b);

    let (gw, _b) = start("encoded_slash = \"keep\"\nmerge_slashes = false\n");
    let r = exchange(gw.addr, b"GET /files/a%2fb//c HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/files/a%2Fb//c");
}

#[test]
fn a_client_trickling_its_head_is_closed_at_the_deadline() {
    let (gw, b) = start("request_head_timeout = \"2s\"\n");
    let mut s = connect(gw.addr);
    let started = Instant::now();
    let head =
        b"GET /x HTTP/1.1\r\nHost: a\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut closed_at = None;
    for byte in head {
        if s.write_all(&[*byte]).is_err() {
            closed_at = Some(started.elapsed());
            break;
        }
        if closed_within(&mut s, Duration::from_millis(200)) {
            closed_at = Some(started.elapsed());
            break;
        }
    }
    // Sending the whole head this way takes 16 s; the deadline is 2 s.
    let closed_at = closed_at.expect("the connection was closed before the head was complete");
    assert!(
        closed_at < Duration::from_secs(8),
        "closed after {closed_at:?}"
    );
    assert_eq!(b.hits(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_connection_is_closed_at_the_deadline_and_counted() {
    let (gw, _b) = start("request_head_timeout = \"1s\"\n");
    let mut s = connect(gw.addr);
    assert!(
        closed_within(&mut s, Duration::from_secs(6)),
        "a connection that sends nothing is closed"
    );
    let timeouts = metric(&gw, "gatehouse_edge_head_timeouts_total").await;
    assert_eq!(timeouts, Some(1.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_keepalive_connections_follow_keepalive_timeout_not_the_head_deadline() {
    let (gw, _b) = start("request_head_timeout = \"1s\"\nkeepalive_timeout = \"3s\"\n");
    let mut s = connect(gw.addr);
    s.write_all(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut s).expect("first").status, 200);
    // Idle longer than the head deadline, shorter than the keep-alive timeout.
    std::thread::sleep(Duration::from_millis(1800));
    s.write_all(b"GET /two HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let second = read_response(&mut s).expect("the connection was still open");
    assert_eq!(second.json()["path"], "/two");
    // Then idle: still open before the keep-alive timeout, closed quietly (no bytes, no
    // head-timeout count) after it.
    assert!(!closed_within(&mut s, Duration::from_millis(2000)));
    let mut rest = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    s.read_to_end(&mut rest).expect("closed within 8 s");
    assert!(rest.is_empty(), "nothing is written at an idle close");
    let timeouts = metric(&gw, "gatehouse_edge_head_timeouts_total").await;
    assert_eq!(timeouts, Some(0.0));
}

#[test]
fn idle_keepalive_connections_close_when_the_gateway_stops_not_when_the_grace_period_ends() {
    let b = TestBackend::start("b");
    let mut gw = Gatehouse::builder().grace_period("20s").start(&routes(&b));
    let mut idle = connect(gw.addr);
    idle.write_all(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut idle).expect("first").status, 200);
    // Stopping: the gateway stops waiting for this connection's next request at once, as
    // Pingora's own keep-alive wait does, so clients reconnect (to a new process) early.
    gw.signal("TERM");
    let started = Instant::now();
    let mut rest = Vec::new();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    idle.read_to_end(&mut rest)
        .expect("the idle connection is closed, well before the 20 s grace period");
    assert!(rest.is_empty(), "nothing is written at an idle close");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "closed after {:?}",
        started.elapsed()
    );
    assert!(
        gw.exited().is_none(),
        "still draining, within its grace period"
    );
}

#[test]
fn a_second_request_trickled_on_a_kept_alive_connection_is_closed_too() {
    let (gw, _b) = start("request_head_timeout = \"1s\"\n");
    let mut s = connect(gw.addr);
    s.write_all(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut s).expect("first").status, 200);
    let started = Instant::now();
    let mut closed = false;
    for byte in b"GET /two HTTP/1.1\r\nHost: a\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n" {
        if s.write_all(&[*byte]).is_err() || closed_within(&mut s, Duration::from_millis(200)) {
            closed = true;
            break;
        }
    }
    assert!(closed, "closed before the slow head completed");
    assert!(started.elapsed() < Duration::from_secs(6));
}
