//! Resilience through the real gateway, with backends that fail, hang, reset and recover on
//! command: circuit breakers, retries (safe methods only, replayable bodies only, within a
//! budget), the route deadline, load shedding and the adaptive limit factor.

mod common;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::backend::counting_resetting_backend;
use common::{client, json, metric, Gatehouse, TestBackend, ADMIN_TOKEN};

const BREAKER: &str = r#"
[upstreams.svc.circuit_breaker]
consecutive_failures = 3
failure_ratio = 0.9
min_requests = 1000
window = "10s"
open_for = "1s"
half_open_probes = 2
failure_on = ["connect", "timeout", "5xx"]
"#;

fn two(a: &str, b: &str, extra: &str) -> String {
    format!(
        "[upstreams.svc]\nbackends = [{{ addr = \"{a}\" }}, {{ addr = \"{b}\" }}]\n{extra}\n[[routes]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"svc\"\n"
    )
}

async fn get(gw: &Gatehouse) -> reqwest::Response {
    client().get(gw.url("/x")).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_backend_opens_its_breaker_then_half_opens_with_exact_probes_and_closes() {
    let a = TestBackend::start("a");
    let b = TestBackend::start("b");
    a.set_status(500);
    let gw = Gatehouse::builder().admin(Some(ADMIN_TOKEN)).start(&two(
        &a.addr_str(),
        &b.addr_str(),
        BREAKER,
    ));
    for _ in 0..20 {
        get(&gw).await;
    }
    assert_eq!(a.hits(), 3, "opened after 3 consecutive failures");
    let backend = a.addr_str();
    let state = format!("gatehouse_circuit_state{{backend=\"{backend}\",upstream=\"svc\"}}");
    assert_eq!(metric(&gw, &state).await, Some(1.0));
    let admin = json(common::admin_get(&gw, "/admin/upstreams").await).await;
    assert_eq!(admin["upstreams"][0]["backends"][0]["circuit"], "open");

    // The backend recovers but answers slowly; after open_for, 10 concurrent requests arrive.
    a.set_status(200);
    a.set_delay(Duration::from_millis(400));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = a.hits();
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            tokio::spawn({
                let url = gw.url("/x");
                async move { client().get(url).send().await.unwrap().status().as_u16() }
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(
        a.hits() - before,
        2,
        "half-open admits exactly half_open_probes"
    );
    // Both probes succeeded: closed again, the backend gets its share.
    a.set_delay(Duration::ZERO);
    let before = a.hits();
    for _ in 0..10 {
        get(&gw).await;
    }
    assert!(
        a.hits() - before >= 4,
        "closed breaker lets traffic through"
    );
    assert_eq!(metric(&gw, &state).await, Some(0.0));
    let transitions = format!(
        "gatehouse_circuit_transitions_total{{backend=\"{backend}\",to=\"open\",upstream=\"svc\"}}"
    );
    assert_eq!(metric(&gw, &transitions).await, Some(1.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn all_circuits_open_answers_503_fast_with_retry_after() {
    let a = TestBackend::start("a");
    let b = TestBackend::start("b");
    a.set_status(500);
    b.set_status(500);
    let gw = Gatehouse::start(&two(
        &a.addr_str(),
        &b.addr_str(),
        &BREAKER.replace("open_for = \"1s\"", "open_for = \"30s\""),
    ));
    for _ in 0..6 {
        assert_eq!(get(&gw).await.status(), 500);
    }
    let hits = a.hits() + b.hits();
    let start = Instant::now();
    let resp = get(&gw).await;
    assert!(start.elapsed() < Duration::from_millis(100));
    assert_eq!(resp.status(), 503);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((25..=30).contains(&retry), "{retry}");
    assert!(json(resp).await["error"]
        .as_str()
        .unwrap()
        .contains("circuit"));
    assert_eq!(a.hits() + b.hits(), hits, "the upstream was not touched");
}

const RETRY: &str = r#"
[upstreams.svc.retry]
attempts = 2
on = ["connect", "timeout", "reset"]
backoff = "5ms"
budget_ratio = 0.2
min_retries_per_sec = 1
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_reset_get_is_retried_on_another_backend_and_succeeds() {
    let (bad, resets) = counting_resetting_backend();
    let good = TestBackend::start("good");
    let gw = Gatehouse::builder().admin(Some(ADMIN_TOKEN)).start(&two(
        &bad.to_string(),
        &good.addr_str(),
        RETRY,
    ));
    for _ in 0..10 {
        assert_eq!(get(&gw).await.status(), 200);
    }
    assert!(
        resets.load(Ordering::SeqCst) >= 4,
        "round robin sent first attempts to the bad backend"
    );
    assert_eq!(good.hits(), 10);
    let retried = metric(
        &gw,
        "gatehouse_retries_total{reason=\"reset\",upstream=\"svc\"}",
    )
    .await;
    assert_eq!(retried, Some(resets.load(Ordering::SeqCst) as f64));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_post_whose_body_reached_the_upstream_is_not_retried() {
    let (bad, resets) = counting_resetting_backend();
    let gw = Gatehouse::start(&format!(
        "[upstreams.svc]\nbackends = [{{ addr = \"{bad}\" }}]\n{RETRY}\n[[routes]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"svc\"\n"
    ));
    let resp = client()
        .post(gw.url("/orders"))
        .body("{\"buy\": 1}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(resets.load(Ordering::SeqCst), 1, "POST sent once");
    // The same failure on a GET is retried (attempts = 2, on the only backend there is).
    let resp = client().get(gw.url("/orders")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(resets.load(Ordering::SeqCst), 1 + 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_stop_at_the_budget_under_load() {
    let (a, ra) = counting_resetting_backend();
    let (b, rb) = counting_resetting_backend();
    let gw = Gatehouse::builder().admin(Some(ADMIN_TOKEN)).start(&two(
        &a.to_string(),
        &b.to_string(),
        RETRY,
    ));
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let url = gw.url("/x");
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut n = 0usize;
            // Bounded by time and count.
            while Instant::now() < deadline && n < 20_000 {
                let r = c.get(&url).send().await.unwrap();
                assert_eq!(r.status(), 502);
                n += 1;
            }
            n
        }));
    }
    let mut requests = 0;
    for t in tasks {
        requests += t.await.unwrap();
    }
    let attempts = ra.load(Ordering::SeqCst) + rb.load(Ordering::SeqCst);
    let multiplier = attempts as f64 / requests as f64;
    // Every first attempt fails; without a budget each request would cost 3 attempts.
    // budget_ratio 0.2, plus the floor of 1 retry/s over the 10 s window.
    let floor = 10.0 / requests as f64;
    eprintln!("budget: {requests} requests, {attempts} attempts, multiplier {multiplier:.3}");
    assert!(requests > 500, "load ran: {requests}");
    assert!(
        multiplier <= 1.2 + floor + 0.03,
        "multiplier {multiplier:.3} over {requests} requests"
    );
    let exhausted = metric(
        &gw,
        "gatehouse_retry_budget_exhausted_total{upstream=\"svc\"}",
    )
    .await
    .unwrap_or(0.0);
    assert!(exhausted > 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_route_deadline_answers_504_on_time_with_a_hanging_backend() {
    let hang = TestBackend::slow("hang", Duration::from_secs(10));
    let other = TestBackend::slow("hang2", Duration::from_secs(10));
    let gw = Gatehouse::start(&format!(
        "[upstreams.svc]\nbackends = [{{ addr = \"{}\" }}, {{ addr = \"{}\" }}]\n{RETRY}\n[[routes]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"svc\"\ntimeout = \"300ms\"\n",
        hang.addr_str(),
        other.addr_str()
    ));
    let start = Instant::now();
    let resp = get(&gw).await;
    let took = start.elapsed();
    assert_eq!(resp.status(), 504);
    // Not before the deadline, and long before the backends would answer (10 s); how close
    // to 300 ms it comes depends on the machine's load, which a test cannot assert.
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn max_inflight_sheds_with_503() {
    let slow = TestBackend::slow("slow", Duration::from_millis(600));
    let gw = Gatehouse::start(&format!(
        "[upstreams.svc]\nbackends = [{{ addr = \"{}\" }}]\nmax_inflight = 2\n[[routes]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"svc\"\n",
        slow.addr_str()
    ));
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let url = gw.url("/x");
            tokio::spawn(async move {
                let r = client().get(url).send().await.unwrap();
                (
                    r.status().as_u16(),
                    r.headers().get("retry-after").is_some(),
                )
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    assert_eq!(
        results.iter().filter(|(s, _)| *s == 200).count(),
        2,
        "{results:?}"
    );
    assert!(results
        .iter()
        .filter(|(s, _)| *s == 503)
        .all(|(_, retry)| *retry));
    assert_eq!(slow.hits(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn adaptive_factor_drops_when_half_the_backends_fail_and_recovers() {
    let a = TestBackend::start("a");
    let b = TestBackend::start("b");
    let gw = Gatehouse::builder()
        .admin(Some(ADMIN_TOKEN))
        .start(&format!(
            r#"
[rate_limit.tiers.t]
rps = 100
burst = 100
[upstreams.svc]
backends = [{{ addr = "{}" }}, {{ addr = "{}" }}]
[upstreams.svc.health_check]
interval = "100ms"
timeout = "100ms"
healthy_threshold = 1
unhealthy_threshold = 1
[[routes]]
name = "adaptive"
path_prefix = "/"
upstream = "svc"
adaptive_limit = true
rate_limit = {{ key = "client_ip", default_tier = "t" }}
"#,
            a.addr_str(),
            b.addr_str()
        ));
    let factor = || metric(&gw, "gatehouse_adaptive_limit_factor{route=\"adaptive\"}");
    assert_eq!(factor().await, Some(1.0));
    a.set_healthy(false);
    let mut low = 1.0;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        low = factor().await.unwrap();
        if low <= 0.5 {
            break;
        }
    }
    assert!(low <= 0.5, "factor {low} after half the backends failed");
    // The route's limit follows: the burst shrinks with the factor.
    let limit: u32 = get(&gw).await.headers()["x-ratelimit-limit"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(limit <= 50, "{limit}");
    a.set_healthy(true);
    let mut high = low;
    for _ in 0..80 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        high = factor().await.unwrap();
        if high >= 0.95 {
            break;
        }
    }
    assert!(high >= 0.95, "factor {high} after the backends healed");
}
