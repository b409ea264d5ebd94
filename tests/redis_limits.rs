//! Shared rate limits through real redis-server processes: two gateway instances enforce one
//! global limit (exact and batched sync), skewed clocks change nothing, every on_store_error
//! policy behaves as documented when Redis dies mid-load and recovers when it returns, Redis
//! down at start does not stop the gateway, and a three-node Redis Cluster works.

mod common;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis::{RedisCluster, RedisServer};
use common::{client, Gatehouse, TestBackend, ADMIN_TOKEN};

fn config(
    store: &str,
    sync: &str,
    on_error: &str,
    rps: f64,
    burst: u32,
    backend: &TestBackend,
    extra_tier: &str,
) -> String {
    format!(
        r#"
[rate_limit]
{store}
sync = "{sync}"
on_store_error = "{on_error}"
redis_timeout = "200ms"

[rate_limit.tiers.shared]
rps = {rps:.1}
burst = {burst}
{extra_tier}

[upstreams.svc]
backends = [{{ addr = "{}" }}]

[[routes]]
name = "api"
path_prefix = "/api"
upstream = "svc"
rate_limit = {{ key = "header:X-Client", default_tier = "shared" }}
"#,
        backend.addr_str()
    )
}

fn single(redis: &RedisServer) -> String {
    format!("store = \"redis\"\nredis_url = \"{}\"", redis.url())
}

async fn status(gw: &Gatehouse, client_key: &str) -> u16 {
    client()
        .get(gw.url("/api/x"))
        .header("x-client", client_key)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Waits until the gateway's store is connected (a request gets shared-state headers).
async fn wait_connected(gw: &Gatehouse, redis: &RedisServer) {
    for _ in 0..100 {
        let before = redis.script_calls();
        status(gw, "probe").await;
        if redis.script_calls() > before {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("gateway never reached Redis");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_share_one_exact_limit() {
    let redis = RedisServer::start();
    let backend = TestBackend::start("svc");
    let cfg = config(&single(&redis), "exact", "deny", 0.5, 20, &backend, "");
    let a = Gatehouse::start(&cfg);
    let b = Gatehouse::start(&cfg);
    wait_connected(&a, &redis).await;
    wait_connected(&b, &redis).await;
    let mut admitted = 0;
    for i in 0..60 {
        let gw = if i % 2 == 0 { &a } else { &b };
        admitted += usize::from(status(gw, "alice").await == 200);
    }
    // One bucket of 20 for both instances (plus at most one token refilled meanwhile).
    assert!((20..=21).contains(&admitted), "admitted {admitted}");
}

#[tokio::test(flavor = "multi_thread")]
async fn skewed_clocks_change_nothing() {
    let redis = RedisServer::start();
    let backend = TestBackend::start("svc");
    let cfg = config(
        &single(&redis),
        "exact",
        "deny",
        100.0,
        100,
        &backend,
        "daily_quota = 10",
    );
    let a = Gatehouse::start(&cfg);
    // Two days and a few hours ahead: a different calendar day than instance a.
    let b = Gatehouse::builder().skewed_clock("+2d 5h").start(&cfg);
    wait_connected(&a, &redis).await;
    wait_connected(&b, &redis).await;
    let mut admitted = 0;
    let mut resets = Vec::new();
    for i in 0..20 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let r = client()
            .get(gw.url("/api/x"))
            .header("x-client", "skew")
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            admitted += 1;
            resets.push(
                r.headers()["x-ratelimit-daily-reset"]
                    .to_str()
                    .unwrap()
                    .parse::<i64>()
                    .unwrap(),
            );
        }
    }
    assert_eq!(admitted, 10, "one daily quota, counted on the Redis clock");
    let spread = resets.iter().max().unwrap() - resets.iter().min().unwrap();
    assert!(
        spread <= 2,
        "both instances report the same day boundary: {resets:?}"
    );
}

/// Sends requests from `workers` concurrent clients for `duration`; returns (ok, 429, other).
async fn load(
    gws: &[&Gatehouse],
    key: &str,
    workers: usize,
    duration: Duration,
) -> (usize, usize, usize) {
    let ok = Arc::new(AtomicUsize::new(0));
    let limited = Arc::new(AtomicUsize::new(0));
    let other = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let url = gws[w % gws.len()].url("/api/x");
        let (ok, limited, other, key, c) = (
            ok.clone(),
            limited.clone(),
            other.clone(),
            key.to_string(),
            client(),
        );
        tasks.push(tokio::spawn(async move {
            // Bounded: stops at the deadline or after 100 000 requests.
            for _ in 0..100_000 {
                if Instant::now() >= deadline {
                    break;
                }
                match c
                    .get(&url)
                    .header("x-client", &key)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                {
                    Ok(200) => ok.fetch_add(1, Ordering::Relaxed),
                    Ok(429) => limited.fetch_add(1, Ordering::Relaxed),
                    _ => other.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (
        ok.load(Ordering::Relaxed),
        limited.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn batched_sync_stays_within_bounds_with_few_redis_calls() {
    let redis = RedisServer::start();
    let backend = TestBackend::start("svc");
    let cfg = config(&single(&redis), "batched", "deny", 100.0, 100, &backend, "");
    let a = Gatehouse::start(&cfg);
    let b = Gatehouse::start(&cfg);
    wait_connected(&a, &redis).await;
    wait_connected(&b, &redis).await;
    // Let the probe reservations lapse and be returned, and the bucket refill.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    redis.reset_stats();
    let duration = Duration::from_secs(4);
    let started = Instant::now();
    let (ok, limited, other) = load(&[&a, &b], "batch", 8, duration).await;
    let elapsed = started.elapsed().as_secs_f64();
    let calls = redis.script_calls() as usize;
    let limit = 100.0 + 100.0 * elapsed;
    let total = ok + limited;
    eprintln!("batched: admitted {ok} of limit {limit:.0} ({:.1} %), {total} requests, {calls} Redis calls", 100.0 * ok as f64 / limit);
    assert_eq!(other, 0);
    assert!(
        total as f64 > 3.0 * limit,
        "demand well above the limit: {total} vs {limit:.0}"
    );
    assert!(
        ok as f64 <= limit * 1.05,
        "over-admitted: {ok} > {limit:.0} + 5 %"
    );
    assert!(
        ok as f64 >= limit * 0.90,
        "under-admitted: {ok} < 90 % of {limit:.0}"
    );
    // Calls follow time, not demand: one per batch admitted, plus, while the key is refused,
    // one per blocked interval (batch / rps = 100 ms here) per instance and concurrent
    // request. Demand varies with the machine's load; the calls per second do not.
    assert!(
        calls * 5 <= total,
        "{calls} Redis calls for {total} requests"
    );
    assert!(
        calls as f64 <= 150.0 * elapsed,
        "{calls} Redis calls in {elapsed:.1} s"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn exact_sync_under_load_admits_the_global_limit() {
    let redis = RedisServer::start();
    let backend = TestBackend::start("svc");
    let cfg = config(&single(&redis), "exact", "deny", 100.0, 100, &backend, "");
    let a = Gatehouse::start(&cfg);
    let b = Gatehouse::start(&cfg);
    wait_connected(&a, &redis).await;
    wait_connected(&b, &redis).await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let started = Instant::now();
    let (ok, _limited, other) = load(&[&a, &b], "exact", 8, Duration::from_secs(3)).await;
    let limit = 100.0 + 100.0 * started.elapsed().as_secs_f64();
    assert_eq!(other, 0);
    assert!(
        ok as f64 <= limit * 1.02 && ok as f64 >= limit * 0.95,
        "admitted {ok} of {limit:.0}"
    );
}

/// Kills Redis under a connected gateway, sends 12 requests, restarts it. Returns the
/// statuses, the gateway, Redis and how much the gateway had logged before the kill (on a
/// loaded machine the first requests can come before the first connection, an incident of
/// its own).
async fn kill_and_recover(on_error: &str) -> (Vec<u16>, Gatehouse, RedisServer, usize) {
    let mut redis = RedisServer::start();
    let backend = TestBackend::start("svc");
    // rps 0.1: nothing refills noticeably while requests wait out the store's timeout.
    let cfg = config(&single(&redis), "exact", on_error, 0.1, 5, &backend, "");
    let gw = Gatehouse::builder().admin(Some(ADMIN_TOKEN)).start(&cfg);
    wait_connected(&gw, &redis).await;
    let logged_before = gw.stderr().len();
    redis.kill();
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(status(&gw, "victim").await);
    }
    redis.restart();
    (statuses, gw, redis, logged_before)
}

async fn recovers(gw: &Gatehouse, redis: &RedisServer, logged_before: usize) {
    let mut back = false;
    for _ in 0..100 {
        let before = redis.script_calls();
        let s = status(gw, "after").await;
        if redis.script_calls() > before && s == 200 {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "the gateway uses Redis again after it returns");
    let log = gw.stderr();
    let since_kill = String::from_utf8_lossy(&log.as_bytes()[logged_before..]);
    let incidents = since_kill.matches("rate limit store unavailable").count();
    assert_eq!(incidents, 1, "logged once per incident:\n{log}");
    assert!(since_kill.contains("rate limit store recovered"), "{log}");
    let errors = common::metric(gw, "gatehouse_ratelimit_store_errors_total ")
        .await
        .unwrap();
    assert!(errors >= 12.0, "{errors}");
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_down_with_local_fallback_enforces_the_tier_locally() {
    let (statuses, gw, redis, logged) = kill_and_recover("local_fallback").await;
    // Burst 5 per instance from local state: 5 admitted, then refused.
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "{statuses:?}"
    );
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429));
    recovers(&gw, &redis, logged).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_down_with_allow_admits_everything() {
    let (statuses, gw, redis, logged) = kill_and_recover("allow").await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    recovers(&gw, &redis, logged).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_down_with_deny_answers_503() {
    let (statuses, gw, redis, logged) = kill_and_recover("deny").await;
    assert!(statuses.iter().all(|s| *s == 503), "{statuses:?}");
    recovers(&gw, &redis, logged).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_down_at_start_does_not_stop_the_gateway() {
    let mut redis = RedisServer::start();
    let port_url = redis.url();
    redis.kill();
    let backend = TestBackend::start("svc");
    let cfg = config(
        &format!("store = \"redis\"\nredis_url = \"{port_url}\""),
        "exact",
        "local_fallback",
        1.0,
        3,
        &backend,
        "",
    );
    let gw = Gatehouse::start(&cfg);
    let mut ok = 0;
    for _ in 0..5 {
        ok += usize::from(status(&gw, "early").await == 200);
    }
    assert_eq!(ok, 3, "local fallback while Redis is down");
    redis.restart();
    wait_connected(&gw, &redis).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_three_node_cluster_enforces_the_limit() {
    let cluster = RedisCluster::start();
    let backend = TestBackend::start("svc");
    let store = format!(
        "store = \"redis\"\nredis_cluster = [{}]",
        cluster.toml_urls()
    );
    let cfg = config(
        &store,
        "exact",
        "deny",
        0.5,
        10,
        &backend,
        "daily_quota = 1000",
    );
    let gw = Gatehouse::start(&cfg);
    let mut admitted_total = 0;
    for _ in 0..100 {
        if status(&gw, "probe").await != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Several keys, spread over the cluster's slots, each limited to its burst.
    for key in ["k1", "k2", "k3", "k4", "k5", "k6"] {
        let mut admitted = 0;
        for _ in 0..15 {
            let s = status(&gw, key).await;
            assert!(s == 200 || s == 429, "{s}");
            admitted += usize::from(s == 200);
        }
        assert!((10..=11).contains(&admitted), "{key}: {admitted}");
        admitted_total += admitted;
    }
    assert!(cluster.script_calls() >= 6 * 15);
    let per_node: Vec<u64> = cluster.nodes.iter().map(|n| n.script_calls()).collect();
    assert!(
        per_node.iter().filter(|c| **c > 0).count() >= 2,
        "keys land on several nodes: {per_node:?}"
    );
    assert!(admitted_total >= 60);
}

#[test]
fn lua_calendar_matches_the_rust_calendar() {
    let redis = RedisServer::start();
    let script = format!(
        "{}\nlocal out = {{}}\nfor i, a in ipairs(ARGV) do local d, m, de, me = calendar(tonumber(a)); table.insert(out, d); table.insert(out, m); table.insert(out, de); table.insert(out, me) end\nreturn out",
        gatehouse::ratelimit::redis::calendar_lua()
    );
    // Month ends, leap days, year ends, and a spread of ordinary times from 1970 to 2100.
    let mut samples: Vec<u64> = vec![
        0,
        951_782_399,
        951_782_400,
        1_798_761_599,
        1_798_761_600,
        1_835_395_199,
        1_835_395_200,
        4_102_444_799,
    ];
    samples.extend((0..200u64).map(|i| i * 20_503_451 + 12_345));
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(&script).arg(0);
    for s in &samples {
        cmd.arg(*s);
    }
    let got: Vec<i64> = redis.query(&mut cmd);
    for (i, s) in samples.iter().enumerate() {
        let (d, m, de, me) = gatehouse::ratelimit::bucket::calendar(*s);
        assert_eq!(
            &got[i * 4..i * 4 + 4],
            &[d as i64, m as i64, de as i64, me as i64],
            "at {s}"
        );
    }
}
