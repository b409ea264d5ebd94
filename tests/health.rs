//! Active health checks through the real gateway: a failing backend is ejected within
//! interval × (unhealthy_threshold + 1), comes back after healthy_threshold good checks, and
//! when every backend is out the gateway answers 503 without trying them.

mod common;
use std::time::{Duration, Instant};

use common::{client, json, Gatehouse, TestBackend};

fn config(a: &TestBackend, b: &TestBackend, kind: &str) -> String {
    format!(
        r#"
[upstreams.pool]
backends = [{{ addr = "{}" }}, {{ addr = "{}" }}]
[upstreams.pool.health_check]
type = "{kind}"
path = "/health"
interval = "200ms"
timeout = "100ms"
healthy_threshold = 2
unhealthy_threshold = 2
[[routes]]
name = "all"
path_prefix = "/"
upstream = "pool"
"#,
        a.addr_str(),
        b.addr_str()
    )
}

/// Sends requests until `n` in a row avoid (or, with `want_hit`, one reaches) `target`;
/// returns how long that took.
async fn time_until(
    gw: &Gatehouse,
    target: &TestBackend,
    want_hit: bool,
    limit: Duration,
) -> Duration {
    let c = client();
    let start = Instant::now();
    let mut clean = 0;
    while start.elapsed() < limit {
        let before = target.hits();
        let resp = c.get(gw.url("/x")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let hit = target.hits() > before;
        if want_hit && hit {
            return start.elapsed();
        }
        if !want_hit {
            clean = if hit { 0 } else { clean + 1 };
            if clean == 6 {
                return start.elapsed();
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached within {limit:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_backend_is_ejected_in_time_and_returns() {
    let a = TestBackend::start("a");
    let b = TestBackend::start("b");
    let gw = Gatehouse::start(&config(&a, &b, "http"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(a.health_checks() >= 1, "checks run against /health");

    a.set_healthy(false);
    let ejected_after = time_until(&gw, &a, false, Duration::from_secs(5)).await;
    // interval 200 ms × (unhealthy_threshold 2 + 1) = 600 ms; the detector above needs six
    // clean requests (~60 ms) on top of the ejection itself.
    assert!(
        ejected_after <= Duration::from_millis(600 + 150),
        "ejected after {ejected_after:?}"
    );

    a.set_healthy(true);
    let back_after = time_until(&gw, &a, true, Duration::from_secs(5)).await;
    assert!(
        back_after <= Duration::from_millis(600 + 150),
        "back after {back_after:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn all_backends_unhealthy_answers_503_without_touching_them() {
    let a = TestBackend::start("a");
    let b = TestBackend::start("b");
    let gw = Gatehouse::start(&config(&a, &b, "http"));
    a.set_healthy(false);
    b.set_healthy(false);
    // unhealthy_threshold (2) failed checks each, plus one that may have been in flight when
    // they turned and one more so the gateway has recorded the second failure: counted on
    // the backends, so a loaded machine's late ticks do not matter.
    let (ca, cb) = (a.health_checks(), b.health_checks());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while a.health_checks() < ca + 4 || b.health_checks() < cb + 4 {
        assert!(std::time::Instant::now() < deadline, "checks stopped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let hits_before = a.hits() + b.hits();
    let resp = client().get(gw.url("/x")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    // The health check (every 200 ms) may bring one back: come back in a second.
    assert_eq!(resp.headers()["retry-after"], "1");
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let body = json(resp).await;
    assert_eq!(body["error"], "service unavailable: no healthy backend");
    assert_eq!(body["request_id"], id.as_str());
    assert_eq!(a.hits() + b.hits(), hits_before);
}

#[tokio::test(flavor = "multi_thread")]
async fn tcp_checks_eject_a_backend_that_stops_listening() {
    let a = TestBackend::start("a");
    let b = TestBackend::start("b");
    // "a" is replaced by a port where nothing listens.
    let dead = common::free_port();
    let cfg = config(&a, &b, "tcp").replace(&a.addr_str(), &format!("127.0.0.1:{dead}"));
    let gw = Gatehouse::start(&cfg);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let c = client();
    for _ in 0..10 {
        let resp = c.get(gw.url("/x")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(json(resp).await["backend"], "b");
    }
}
