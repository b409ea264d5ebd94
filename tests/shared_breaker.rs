//! Circuit breakers shared across gateway instances, with two real gateway processes and a
//! real redis-server: failures through instance A open the breaker on instance B, which then
//! sends the failing backend nothing; with Redis down each instance keeps its local breaker,
//! and once Redis is back they share again.

mod common;

use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::{admin_get, client, json, metric, Gatehouse, TestBackend, ADMIN_TOKEN};

fn config(redis: &RedisServer, backends: &[&TestBackend]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ addr = \"{}\" }}", b.addr))
        .collect();
    format!(
        r#"
[upstreams.svc]
backends = [{}]
[upstreams.svc.circuit_breaker]
consecutive_failures = 3
open_for = "30s"
failure_on = ["5xx"]
shared = true
redis_url = "{}"

[[routes]]
name = "all"
path_prefix = "/"
upstream = "svc"
"#,
        list.join(", "),
        redis.url()
    )
}

fn instance(config: &str) -> Gatehouse {
    Gatehouse::builder().admin(Some(ADMIN_TOKEN)).start(config)
}

/// The circuit state of backend `addr` as instance `gw` reports it.
async fn circuit(gw: &Gatehouse, addr: &str) -> String {
    let ups = json(admin_get(gw, "/admin/upstreams").await).await;
    ups["upstreams"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["addr"] == addr)
        .map(|b| b["circuit"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

/// Waits until both instances listen on the channel.
async fn wait_subscribed(redis: &RedisServer, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let counts: Vec<redis::Value> = redis.query(
            redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg("gatehouse:breaker-events"),
        );
        let subscribers = match counts.get(1) {
            Some(redis::Value::Int(n)) => *n,
            _ => 0,
        };
        if subscribers >= n {
            return;
        }
        assert!(Instant::now() < deadline, "instances never subscribed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends requests to `gw` until backend `addr`'s breaker is open there (at most 30).
async fn fail_until_open(gw: &Gatehouse, addr: &str) {
    for _ in 0..30 {
        client().get(gw.url("/x")).send().await.unwrap();
        if circuit(gw, addr).await == "open" {
            return;
        }
    }
    panic!("the breaker of {addr} never opened");
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_through_one_instance_open_the_breaker_on_the_other() {
    let redis = RedisServer::start();
    let bad = TestBackend::start("bad");
    bad.set_status(500);
    let good = TestBackend::start("good");
    let cfg = config(&redis, &[&bad, &good]);
    let a = instance(&cfg);
    let b = instance(&cfg);
    wait_subscribed(&redis, 2).await;
    let bad_addr = bad.addr.to_string();
    assert_eq!(circuit(&b, &bad_addr).await, "closed");

    fail_until_open(&a, &bad_addr).await;
    let opened = Instant::now();
    let seen_by_b = loop {
        if circuit(&b, &bad_addr).await == "open" {
            break opened.elapsed();
        }
        assert!(
            opened.elapsed() < Duration::from_secs(2),
            "B never learned it"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    eprintln!("B saw the breaker open {seen_by_b:?} after A reported it");

    // B sends the failing backend nothing while the breaker is open, and paid no failure.
    let hits = bad.hits();
    for _ in 0..20 {
        let r = client().get(b.url("/x")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(json(r).await["backend"], "good");
    }
    assert_eq!(bad.hits(), hits, "no traffic to the open backend");
    assert_eq!(
        metric(
            &b,
            &format!("gatehouse_circuit_peer_transitions_total{{backend=\"{bad_addr}\",upstream=\"svc\"}}")
        )
        .await,
        Some(1.0)
    );
    assert!(
        b.stderr().contains("opened by gateway instance"),
        "{}",
        b.stderr()
    );
    // The state key holds the remaining time (for instances that connect later).
    let ttl: i64 = redis.query(redis::cmd("PTTL").arg(format!("gatehouse:breaker:svc:{bad_addr}")));
    assert!((25_000..=30_000).contains(&ttl), "{ttl}");

    // An instance started now learns it at once from the key.
    let c = instance(&cfg);
    let deadline = Instant::now() + Duration::from_secs(5);
    while circuit(&c, &bad_addr).await != "open" {
        assert!(
            Instant::now() < deadline,
            "a late instance never learned it"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn with_redis_down_each_instance_keeps_its_own_breaker_and_they_share_again_after() {
    let mut redis = RedisServer::start();
    let flaky = TestBackend::start("flaky");
    let good = TestBackend::start("good");
    let cfg = config(&redis, &[&flaky, &good]);
    let a = instance(&cfg);
    let b = instance(&cfg);
    wait_subscribed(&redis, 2).await;

    redis.kill();
    flaky.set_status(500);
    let flaky_addr = flaky.addr.to_string();
    // A's own breaker still works...
    fail_until_open(&a, &flaky_addr).await;
    // ...but B cannot hear of it: B's stays closed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(circuit(&b, &flaky_addr).await, "closed");
    let errors = metric(&a, "gatehouse_circuit_shared_errors_total")
        .await
        .unwrap_or(0.0);
    assert!(errors >= 1.0, "{errors}");
    let log = a.stderr();
    assert_eq!(
        log.matches("each breaker is local until it returns")
            .count(),
        1,
        "logged once: {log}"
    );

    // Redis back: A reconnects, announces its open breaker, B opens its own.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while circuit(&b, &flaky_addr).await != "open" {
        assert!(
            Instant::now() < deadline,
            "the instances never shared again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        a.stderr().contains("breakers are shared again"),
        "{}",
        a.stderr()
    );
}

#[test]
fn a_shared_breaker_needs_a_redis() {
    let (code, stderr, _) = common::check_config(
        r#"
[upstreams.svc]
backends = [{ addr = "127.0.0.1:1" }]
[upstreams.svc.circuit_breaker]
shared = true
[[routes]]
name = "all"
path_prefix = "/"
upstream = "svc"
"#,
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains(
            "upstreams.svc.circuit_breaker.shared: a shared circuit breaker needs a Redis"
        ),
        "{stderr}"
    );
}
