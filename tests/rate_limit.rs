//! Local rate limiting through the real gateway: burst and refill per tier, headers that match
//! the real state, quotas, refused requests consuming nothing, client IP keys that forged
//! X-Forwarded-For cannot evade, reload of tiers, metrics and access log.

mod common;
use std::process::Command;
use std::time::Duration;

use common::{client, json, Gatehouse, TestBackend, ADMIN_TOKEN};

fn body(backend: &TestBackend, keys: &std::path::Path, free_burst: u32) -> String {
    format!(
        r#"
[auth.api_keys.k]
keys_file = "{keys}"

[rate_limit]
store = "local"

[rate_limit.tiers.free]
rps = 1
burst = {free_burst}
daily_quota = 50
upgrade_url = "/pricing"

[rate_limit.tiers.pro]
rps = 1
burst = 8

[rate_limit.tiers.quota]
rps = 1
burst = 100
daily_quota = 3

[upstreams.svc]
backends = [{{ addr = "{addr}" }}]

[[routes]]
name = "keyed"
path_prefix = "/keyed"
upstream = "svc"
auth = ["api_key:k"]
rate_limit = {{ key = "consumer", default_tier = "free" }}

[[routes]]
name = "anon"
path_prefix = "/anon"
upstream = "svc"
rate_limit = {{ key = "client_ip", default_tier = "free" }}

[[routes]]
name = "quota"
path_prefix = "/quota"
upstream = "svc"
rate_limit = {{ key = "client_ip", default_tier = "quota" }}
"#,
        keys = keys.display(),
        addr = backend.addr_str()
    )
}

fn new_key(file: &std::path::Path, consumer: &str, tier: Option<&str>) -> String {
    let mut cmd = Command::new(Gatehouse::binary());
    cmd.args(["keys", "new", "--consumer", consumer, "--file"])
        .arg(file);
    if let Some(t) = tier {
        cmd.args(["--tier", t]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

struct Setup {
    gw: Gatehouse,
    free_key: String,
    pro_key: String,
    _dir: tempfile::TempDir,
}

fn setup(server_extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    let free_key = new_key(&keys, "freebie", None);
    let pro_key = new_key(&keys, "payer", Some("pro"));
    let backend = TestBackend::start("svc");
    let gw = Gatehouse::builder()
        .server(server_extra)
        .admin(Some(ADMIN_TOKEN))
        .access_log_file()
        .start(&body(&backend, &keys, 4));
    Setup {
        gw,
        free_key,
        pro_key,
        _dir: dir,
    }
}

async fn hit(
    gw: &Gatehouse,
    path: &str,
    key: Option<&str>,
    xff: Option<&str>,
) -> reqwest::Response {
    let mut req = client().get(gw.url(path));
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    if let Some(x) = xff {
        req = req.header("x-forwarded-for", x);
    }
    req.send().await.unwrap()
}

async fn admitted(gw: &Gatehouse, path: &str, key: Option<&str>, n: usize) -> usize {
    let mut ok = 0;
    for _ in 0..n {
        let s = hit(gw, path, key, None).await.status();
        assert!(s == 200 || s == 429, "{s}");
        ok += usize::from(s == 200);
    }
    ok
}

#[tokio::test(flavor = "multi_thread")]
async fn burst_then_refill_per_tier_exactly() {
    let s = setup("");
    assert_eq!(
        admitted(&s.gw, "/keyed", Some(&s.free_key), 7).await,
        4,
        "free: burst 4"
    );
    assert_eq!(
        admitted(&s.gw, "/keyed", Some(&s.pro_key), 11).await,
        8,
        "pro: burst 8"
    );
    // Independent buckets: each consumer has its own.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    // rps 1: after 1.2 s exactly one token is back.
    assert_eq!(admitted(&s.gw, "/keyed", Some(&s.free_key), 3).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn headers_report_the_real_state() {
    let s = setup("");
    for expected_remaining in (0..4).rev() {
        let r = hit(&s.gw, "/keyed", Some(&s.free_key), None).await;
        assert_eq!(r.status(), 200);
        let h = r.headers();
        assert_eq!(h["x-ratelimit-limit"], "4");
        assert_eq!(
            h["x-ratelimit-remaining"],
            expected_remaining.to_string().as_str()
        );
        assert_eq!(h["x-ratelimit-tier"], "free");
        assert_eq!(h["x-ratelimit-daily-limit"], "50");
        assert_eq!(
            h["x-ratelimit-daily-remaining"],
            (50 - (4 - expected_remaining)).to_string().as_str()
        );
        assert_eq!(
            h["ratelimit-policy"],
            "\"burst\";q=4;w=4, \"daily\";q=50;w=86400"
        );
        assert_eq!(
            h["ratelimit"].to_str().unwrap().split(',').next().unwrap(),
            format!(
                "\"burst\";r={expected_remaining};t={}",
                4 - expected_remaining
            )
        );
    }
    let r = hit(&s.gw, "/keyed", Some(&s.free_key), None).await;
    assert_eq!(r.status(), 429);
    let h = r.headers().clone();
    assert_eq!(h["retry-after"], "1");
    assert_eq!(h["x-ratelimit-remaining"], "0");
    assert_eq!(
        h["x-ratelimit-daily-remaining"], "46",
        "the refused request took no quota"
    );
    let body = json(r).await;
    assert_eq!(body["error"], "rate limit exceeded");
    assert_eq!(body["tier"], "free");
    assert_eq!(body["limit"], 4);
    assert_eq!(body["retry_after"], 1);
    assert_eq!(body["upgrade_url"], "/pricing");
    assert_eq!(body["request_id"], h["x-request-id"].to_str().unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn daily_quota_refuses_until_midnight_and_refusals_consume_nothing() {
    let s = setup("");
    assert_eq!(admitted(&s.gw, "/quota", None, 3).await, 3);
    for _ in 0..5 {
        let r = hit(&s.gw, "/quota", None, None).await;
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["x-ratelimit-daily-remaining"], "0");
        let retry: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let to_midnight = 86_400 - now % 86_400;
        assert!(
            retry.abs_diff(to_midnight) <= 2,
            "retry {retry} vs {to_midnight}"
        );
        let body = json(r).await;
        assert_eq!(body["policy"], "daily");
        assert_eq!(body["limit"], 3);
    }
    // The bucket itself was not drained by the refusals.
    let r = hit(&s.gw, "/quota", None, None).await;
    assert_eq!(r.headers()["x-ratelimit-remaining"], "97");
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_forwarded_for_from_an_untrusted_peer_does_not_evade_a_per_ip_limit() {
    let s = setup("");
    let mut ok = 0;
    for i in 0..10 {
        let r = hit(&s.gw, "/anon", None, Some(&format!("198.51.100.{i}"))).await;
        ok += usize::from(r.status() == 200);
    }
    assert_eq!(ok, 4, "one bucket for the real peer");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trusted_proxys_forwarded_for_is_honoured() {
    let s = setup("trusted_proxies = [\"127.0.0.0/8\"]");
    for i in 0..10 {
        let r = hit(&s.gw, "/anon", None, Some(&format!("198.51.100.{i}"))).await;
        assert_eq!(r.status(), 200, "client {i} has its own bucket");
    }
    // The same client behind the proxy is limited.
    let ok = {
        let mut ok = 0;
        for _ in 0..6 {
            ok += usize::from(
                hit(&s.gw, "/anon", None, Some("203.0.113.5"))
                    .await
                    .status()
                    == 200,
            );
        }
        ok
    };
    assert_eq!(ok, 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_changes_tiers_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    let free_key = new_key(&keys, "freebie", None);
    let fresh_key = new_key(&keys, "fresh", None);
    let backend = TestBackend::start("svc");
    let gw = Gatehouse::builder()
        .admin(Some(ADMIN_TOKEN))
        .start(&body(&backend, &keys, 2));
    assert_eq!(admitted(&gw, "/keyed", Some(&free_key), 4).await, 2);
    gw.rewrite_config(&body(&backend, &keys, 30));
    let r = common::admin_post(&gw, "/admin/reload").await;
    assert_eq!(r.status(), 200);
    // An existing bucket keeps its tokens under the new capacity; a new one starts full.
    let h = hit(&gw, "/keyed", Some(&free_key), None).await;
    assert_eq!(h.headers()["x-ratelimit-limit"], "30");
    assert_eq!(admitted(&gw, "/keyed", Some(&fresh_key), 32).await, 30);
}

#[tokio::test(flavor = "multi_thread")]
async fn decisions_are_counted_and_logged() {
    let s = setup("");
    admitted(&s.gw, "/keyed", Some(&s.free_key), 6).await;
    let m = common::metrics_text(&s.gw).await;
    assert!(m.contains("gatehouse_ratelimit_decisions_total{decision=\"allowed\",route=\"keyed\",tier=\"free\"} 4"), "{m}");
    assert!(m.contains("gatehouse_ratelimit_decisions_total{decision=\"rejected\",route=\"keyed\",tier=\"free\"} 2"));
    let lines = common::access_log_lines(&s.gw, 6).await;
    assert_eq!(
        lines.iter().filter(|l| l["rate_limited"] == true).count(),
        2
    );
    assert!(lines.iter().all(|l| l["tier"] == "free"));
}

#[tokio::test(flavor = "multi_thread")]
async fn header_families_can_be_chosen() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    let key = new_key(&keys, "freebie", None);
    let backend = TestBackend::start("svc");
    for (families, x, ietf) in [
        ("ietf", false, true),
        ("x-ratelimit", true, false),
        ("none", false, false),
    ] {
        let body = body(&backend, &keys, 1).replace(
            "store = \"local\"",
            &format!("store = \"local\"\nheaders = \"{families}\""),
        );
        let gw = Gatehouse::start(&body);
        let r = hit(&gw, "/keyed", Some(&key), None).await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers().contains_key("x-ratelimit-limit"),
            x,
            "{families}"
        );
        assert_eq!(
            r.headers().contains_key("x-ratelimit-daily-remaining"),
            x,
            "{families}"
        );
        assert_eq!(
            r.headers().contains_key("ratelimit-policy"),
            ietf,
            "{families}"
        );
        assert_eq!(r.headers().contains_key("ratelimit"), ietf, "{families}");
        // A refusal keeps its Retry-After whatever the families.
        let r = hit(&gw, "/keyed", Some(&key), None).await;
        assert_eq!(r.status(), 429);
        assert!(r.headers().contains_key("retry-after"));
        assert_eq!(
            r.headers().contains_key("x-ratelimit-remaining"),
            x,
            "{families}"
        );
    }
}
