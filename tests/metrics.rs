//! Prometheus metrics: the exposition passes the official Python client's parser and counts
//! what happened, with labels only from configured names.

mod common;
use std::process::{Command, Stdio};

use common::{client, Gatehouse, TestBackend, ADMIN_TOKEN};
use serde_json::Value;

/// Parses exposition text with `prometheus_client`'s parser (tests/tools/parse_metrics.py).
fn parse(text: &str) -> Vec<Value> {
    use std::io::Write;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/parse_metrics.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (scripts/install-deps.sh installs prometheus-client)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "exposition rejected by the Prometheus parser: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn value(samples: &[Value], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][*k] == *v))
        .and_then(|s| s["value"].as_f64())
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_parse_and_count_requests_by_route_upstream_and_status() {
    let a = TestBackend::start("a");
    let dead = format!("127.0.0.1:{}", common::free_port());
    let gw = Gatehouse::builder()
        .admin(Some(ADMIN_TOKEN))
        .start(&format!(
            r#"
[upstreams.svc]
backends = [{{ addr = "{}", weight = 2 }}]
[upstreams.gone]
backends = [{{ addr = "{dead}" }}]
[[routes]]
name = "api"
path_prefix = "/api"
upstream = "svc"
[[routes]]
name = "broken"
path_prefix = "/broken"
upstream = "gone"
[[routes]]
name = "readonly"
path_prefix = "/ro"
methods = ["GET"]
upstream = "svc"
"#,
            a.addr_str()
        ));
    let c = client();
    for _ in 0..2 {
        assert_eq!(
            c.delete(gw.url("/ro/x")).send().await.unwrap().status(),
            405
        );
    }
    for _ in 0..7 {
        assert_eq!(c.get(gw.url("/api/x")).send().await.unwrap().status(), 200);
    }
    for _ in 0..3 {
        assert_eq!(c.get(gw.url("/nope")).send().await.unwrap().status(), 404);
    }
    for _ in 0..2 {
        assert_eq!(c.get(gw.url("/broken")).send().await.unwrap().status(), 502);
    }
    // Requests are recorded in Pingora's logging phase, after the response has been sent, so a
    // scrape right after the last response may run ahead of its recording: wait for it.
    let mut text = String::new();
    for _ in 0..40 {
        text = common::metrics_text(&gw).await;
        if text.contains(
            "gatehouse_requests_total{route=\"broken\",status=\"5xx\",upstream=\"gone\"} 2",
        ) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let samples = parse(&text);
    let requests = |route, upstream, status| {
        value(
            &samples,
            "gatehouse_requests_total",
            &[("route", route), ("upstream", upstream), ("status", status)],
        )
    };
    assert_eq!(requests("api", "svc", "2xx"), Some(7.0));
    // A 405 is counted under the route whose path matched, not as "none".
    let readonly_4xx: f64 = samples
        .iter()
        .filter(|s| {
            s["name"] == "gatehouse_requests_total"
                && s["labels"]["route"] == "readonly"
                && s["labels"]["status"] == "4xx"
        })
        .filter_map(|s| s["value"].as_f64())
        .sum();
    assert_eq!(readonly_4xx, 2.0, "{text}");
    assert_eq!(requests("none", "none", "4xx"), Some(3.0));
    assert_eq!(requests("broken", "gone", "5xx"), Some(2.0));
    assert_eq!(
        value(
            &samples,
            "gatehouse_request_duration_seconds_count",
            &[("route", "api")]
        ),
        Some(7.0)
    );
    assert_eq!(
        value(
            &samples,
            "gatehouse_upstream_duration_seconds_count",
            &[("upstream", "svc")]
        ),
        Some(7.0)
    );
    let backend = a.addr_str();
    assert_eq!(
        value(
            &samples,
            "gatehouse_upstream_backend_healthy",
            &[("upstream", "svc"), ("backend", &backend)]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &samples,
            "gatehouse_upstream_backend_healthy",
            &[("upstream", "gone"), ("backend", &dead)]
        ),
        Some(1.0),
        "exported for every backend, 1 without health checks"
    );
    assert_eq!(
        value(
            &samples,
            "gatehouse_upstream_backend_inflight",
            &[("upstream", "svc"), ("backend", &backend)]
        ),
        Some(0.0)
    );
    assert_eq!(
        value(
            &samples,
            "gatehouse_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &samples,
            "gatehouse_config_reloads_total",
            &[("result", "success")]
        ),
        Some(0.0)
    );
    assert!(value(&samples, "gatehouse_connections_active", &[]).is_some());
    // Bounded cardinality: no label value comes from the request.
    assert!(!text.contains("/nope") && !text.contains("/api/x"));
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_active_follows_open_keepalive_connections() {
    let a = TestBackend::start("a");
    let gw = Gatehouse::builder().admin(Some(ADMIN_TOKEN)).start(&format!(
        "[upstreams.svc]\nbackends = [{{ addr = \"{}\" }}]\n[[routes]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"svc\"\n",
        a.addr_str()
    ));
    let scrape = || async {
        let text = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
            .get(gw.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        value(&parse(&text), "gatehouse_connections_active", &[]).unwrap()
    };
    assert_eq!(scrape().await, 0.0);
    // Three raw sockets, each kept open after two keep-alive requests: a client library's
    // pool may open a spare connection (a request sent before the previous one's connection
    // went back to the pool), which would make the count the pool's, not ours.
    let mut conns: Vec<_> = (0..3).map(|_| common::raw::connect(gw.addr)).collect();
    for c in &mut conns {
        for _ in 0..2 {
            use std::io::Write;
            c.write_all(b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .unwrap();
            let r = common::raw::read_response(c).expect("a response");
            assert_eq!(r.status, 200);
            assert!(r
                .header("connection")
                .is_none_or(|v| !v.eq_ignore_ascii_case("close")));
        }
    }
    assert_eq!(scrape().await, 3.0);
    drop(conns);
    let mut now = scrape().await;
    for _ in 0..50 {
        if now == 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        now = scrape().await;
    }
    assert_eq!(now, 0.0, "closed connections are no longer counted");
}
