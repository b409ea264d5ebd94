//! The access log: one JSON object per line with flat keys, no query string by default and
//! never a credential.

mod common;
use std::time::Duration;

use common::{client, Gatehouse, TestBackend};

fn body(b: &TestBackend) -> String {
    format!(
        "[upstreams.svc]\nbackends = [{{ addr = \"{}\" }}]\n[[routes]]\nname = \"api\"\npath_prefix = \"/api\"\nupstream = \"svc\"\n",
        b.addr_str()
    )
}

async fn lines(gw: &Gatehouse, n: usize) -> Vec<serde_json::Value> {
    common::access_log_lines(gw, n).await
}

#[tokio::test(flavor = "multi_thread")]
async fn each_request_is_one_json_line_with_the_documented_keys() {
    let b = TestBackend::start("b");
    let gw = Gatehouse::builder().access_log_file().start(&body(&b));
    let c = client();
    c.get(gw.url("/api/users?token=s3cret-query"))
        .header("authorization", "Bearer s3cret-bearer")
        .header("x-request-id", "log-test-1")
        .header("host", "api.example.com")
        .send()
        .await
        .unwrap();
    c.get(gw.url("/missing")).send().await.unwrap();
    let lines = lines(&gw, 2).await;
    let first = lines
        .iter()
        .find(|l| l["request_id"] == "log-test-1")
        .expect("line for request");
    for key in [
        "time",
        "request_id",
        "client_ip",
        "method",
        "host",
        "path",
        "route",
        "upstream",
        "backend",
        "status",
        "duration_ms",
        "upstream_ms",
        "bytes_sent",
    ] {
        assert!(first.get(key).is_some(), "missing {key}: {first}");
    }
    assert_eq!(first["client_ip"], "127.0.0.1");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["host"], "api.example.com");
    assert_eq!(first["path"], "/api/users");
    assert_eq!(first["route"], "api");
    assert_eq!(first["upstream"], "svc");
    assert_eq!(first["backend"], b.addr_str());
    assert_eq!(first["status"], 200);
    assert!(first["bytes_sent"].as_u64().unwrap() > 0);
    assert!(first["upstream_ms"].as_f64().is_some());
    // Durations are milliseconds rounded to the microsecond: at most three decimals.
    let text = gw.access_log();
    let line = text
        .lines()
        .find(|l| l.contains("log-test-1"))
        .expect("raw line");
    for key in ["\"duration_ms\":", "\"upstream_ms\":"] {
        let value = line
            .split(key)
            .nth(1)
            .unwrap()
            .split([',', '}'])
            .next()
            .unwrap();
        let decimals = value.split('.').nth(1).map_or(0, str::len);
        assert!(decimals <= 3, "{key} {value} in {line}");
    }
    assert!(first["time"].as_str().unwrap().ends_with('Z'));
    let missing = lines.iter().find(|l| l["path"] == "/missing").unwrap();
    assert_eq!(missing["status"], 404);
    assert!(missing["route"].is_null());
    let text = gw.access_log();
    assert!(
        !text.contains("s3cret"),
        "credentials or query leaked: {text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn access_log_can_be_turned_off() {
    let b = TestBackend::start("b");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("off.log");
    let gw = Gatehouse::start(&format!(
        "[access_log]\nenabled = false\npath = \"{}\"\n{}",
        path.display(),
        body(&b)
    ));
    client().get(gw.url("/api/x")).send().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!path.exists(), "nothing is written when disabled");
}

/// The writer is never woken per line (it drains the queue on a timer), so lines queued just
/// before a graceful shutdown must still be written when the process exits.
#[tokio::test(flavor = "multi_thread")]
async fn lines_queued_at_shutdown_are_not_lost() {
    let b = TestBackend::start("b");
    let mut gw = Gatehouse::builder().access_log_file().start(&body(&b));
    let c = client();
    for i in 0..200 {
        let r = c
            .get(gw.url(&format!("/api/{i}")))
            .header("connection", "close")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // At once: some lines are still queued when the signal arrives.
    gw.signal("TERM");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while gw.exited().is_none() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gw.exited().is_some(), "stopped");
    let text = gw.access_log();
    let paths: std::collections::HashSet<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["path"].to_string())
        .collect();
    assert_eq!(paths.len(), 200, "every request is logged:\n{text}");
}
