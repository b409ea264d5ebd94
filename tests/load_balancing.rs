//! Balancing policies through the real gateway: smooth weighted round robin, least
//! connections under concurrency, consistent-hash stickiness.

mod common;
use std::collections::HashMap;
use std::time::Duration;

use common::{client, json, Gatehouse, TestBackend};

async fn backend_of(resp: reqwest::Response) -> String {
    assert_eq!(resp.status(), 200);
    json(resp).await["backend"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn weighted_round_robin_splits_3_to_1_smoothly() {
    let a = TestBackend::start("a");
    let b = TestBackend::start("b");
    let gw = Gatehouse::start(&format!(
        r#"
[upstreams.pool]
balance = "round_robin"
backends = [{{ addr = "{}", weight = 3 }}, {{ addr = "{}" }}]
[[routes]]
name = "all"
path_prefix = "/"
upstream = "pool"
"#,
        a.addr_str(),
        b.addr_str()
    ));
    let c = client();
    let mut order = Vec::new();
    for _ in 0..400 {
        order.push(backend_of(c.get(gw.url("/x")).send().await.unwrap()).await);
    }
    let count_a = order.iter().filter(|n| *n == "a").count();
    // Sequential requests see the exact schedule; allow a little slack all the same.
    assert!((295..=305).contains(&count_a), "a got {count_a} of 400");
    assert_eq!(a.hits() + b.hits(), 400);
    // Smooth: never more than 3 a's in a row (a burst schedule would allow AAAB AAAB, a smooth
    // one gives AABA; both cap at 3, but the smooth one never has b's adjacent and never puts
    // 3 a's right after a b twice in a row).
    let longest_run = order
        .split(|n| n == "b")
        .map(|run| run.len())
        .max()
        .unwrap_or(0);
    assert!(longest_run <= 3, "run of {longest_run}");
    let windows_with_b = order
        .windows(4)
        .filter(|w| w.iter().any(|n| n == "b"))
        .count();
    assert_eq!(
        windows_with_b,
        order.windows(4).count(),
        "every 4 requests include b"
    );
    let pattern: Vec<&str> = order[..8].iter().map(String::as_str).collect();
    assert_ne!(
        pattern[..4],
        ["a", "a", "a", "b"],
        "schedule must not be bursty: {pattern:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn least_conn_steers_away_from_a_slow_backend() {
    let slow = TestBackend::slow("slow", Duration::from_millis(400));
    let fast = TestBackend::start("fast");
    let gw = Gatehouse::start(&format!(
        r#"
[upstreams.pool]
balance = "least_conn"
backends = [{{ addr = "{}" }}, {{ addr = "{}" }}]
[[routes]]
name = "all"
path_prefix = "/"
upstream = "pool"
"#,
        slow.addr_str(),
        fast.addr_str()
    ));
    let c = client();
    // 8 concurrent workers, 15 requests each: the slow backend holds its requests for 400 ms,
    // so least-connections sends nearly everything else to the fast one.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let c = c.clone();
        let url = gw.url("/work");
        tasks.push(tokio::spawn(async move {
            let mut seen = HashMap::new();
            for _ in 0..15 {
                let name = backend_of(c.get(&url).send().await.unwrap()).await;
                *seen.entry(name).or_insert(0usize) += 1;
            }
            seen
        }));
    }
    let mut total: HashMap<String, usize> = HashMap::new();
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            *total.entry(k).or_default() += v;
        }
    }
    let slow_n = total.get("slow").copied().unwrap_or(0);
    let fast_n = total.get("fast").copied().unwrap_or(0);
    assert_eq!(slow_n + fast_n, 120);
    // Round robin would give the slow backend 60; least_conn gives it a handful.
    assert!(slow_n <= 20, "slow got {slow_n}, fast {fast_n}");
    assert!(
        slow_n >= 1,
        "the slow backend is still used when it is free"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn consistent_hash_sticks_each_key_to_one_backend() {
    let backends: Vec<TestBackend> = (0..4)
        .map(|i| TestBackend::start(&format!("b{i}")))
        .collect();
    let list = backends
        .iter()
        .map(|b| format!("{{ addr = \"{}\" }}", b.addr_str()))
        .collect::<Vec<_>>()
        .join(", ");
    let gw = Gatehouse::start(&format!(
        r#"
[upstreams.pool]
balance = "consistent_hash"
hash_key = "header:X-User-Id"
backends = [{list}]
[[routes]]
name = "all"
path_prefix = "/"
upstream = "pool"
"#
    ));
    let c = client();
    let mut owners = HashMap::new();
    for user in 0..40 {
        let id = format!("user-{user}");
        let first = backend_of(
            c.get(gw.url("/p"))
                .header("x-user-id", &id)
                .send()
                .await
                .unwrap(),
        )
        .await;
        for _ in 0..4 {
            let again = backend_of(
                c.get(gw.url("/p"))
                    .header("x-user-id", &id)
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            assert_eq!(again, first, "{id} moved");
        }
        owners.insert(id, first);
    }
    let distinct: std::collections::HashSet<_> = owners.values().collect();
    assert!(
        distinct.len() >= 3,
        "keys spread over backends: {distinct:?}"
    );
    // Requests without the key fall back to round robin over all backends.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..8 {
        seen.insert(backend_of(c.get(gw.url("/p")).send().await.unwrap()).await);
    }
    assert_eq!(seen.len(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn consistent_hash_on_cookie_and_path() {
    let a = TestBackend::start("a");
    let b = TestBackend::start("b");
    let gw = Gatehouse::start(&format!(
        r#"
[upstreams.bycookie]
balance = "consistent_hash"
hash_key = "cookie:session"
backends = [{{ addr = "{a}" }}, {{ addr = "{b}" }}]
[upstreams.bypath]
balance = "consistent_hash"
hash_key = "path"
backends = [{{ addr = "{a}" }}, {{ addr = "{b}" }}]
[[routes]]
name = "c"
path_prefix = "/c"
upstream = "bycookie"
[[routes]]
name = "p"
path_prefix = "/p"
upstream = "bypath"
"#,
        a = a.addr_str(),
        b = b.addr_str()
    ));
    let c = client();
    for s in 0..10 {
        let cookie = format!("theme=dark; session=s{s}");
        let first = backend_of(
            c.get(gw.url("/c"))
                .header("cookie", &cookie)
                .send()
                .await
                .unwrap(),
        )
        .await;
        let again = backend_of(
            c.get(gw.url("/c"))
                .header("cookie", &cookie)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(first, again);
        let path = format!("/p/{s}");
        let first = backend_of(c.get(gw.url(&path)).send().await.unwrap()).await;
        let again = backend_of(c.get(gw.url(&path)).send().await.unwrap()).await;
        assert_eq!(first, again);
    }
}
