//! The admin status page (`GET /` on the admin listener) in a real headless Chromium, driven
//! by Playwright (`tests/tools/status_page.mjs`): the reduced view without a token and with a
//! wrong one, the whole view with the right one (routes with rates and quantiles, backends,
//! tiers, config generation and the last reload's errors rendered as text), a drain click that
//! reaches the gateway, a narrow screen, and a screenshot for the README.

mod common;

use std::time::Duration;

use common::{client, json, Gatehouse, TestBackend, ADMIN_TOKEN};
use serde_json::Value;

/// Runs the Playwright script against `url`; returns what it saw.
fn drive_page(url: &str, backend: &str, screenshot: &std::path::Path) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/status_page.mjs");
    let modules = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/tools/node_modules/playwright-core"
    );
    assert!(
        std::path::Path::new(modules).exists(),
        "playwright-core is not installed: run scripts/install-deps.sh (CI does)"
    );
    let out = std::process::Command::new("node")
        .arg(script)
        .arg(url)
        .arg(ADMIN_TOKEN)
        .arg(backend)
        .arg(screenshot)
        .output()
        .expect("node (scripts/install-deps.sh installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the browser script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// Milliseconds from a rendered duration such as "37.5 ms".
fn millis(text: &str) -> f64 {
    text.strip_suffix(" ms")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a duration in ms: {text:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn status_page_in_a_real_browser() {
    let a = TestBackend::start("a");
    let b = TestBackend::start("b");
    let slow = TestBackend::slow("slow", Duration::from_millis(40));
    let body = format!(
        r#"
[rate_limit.tiers.free]
rps = 0.01
burst = 3

[upstreams.api]
backends = [{{ addr = "{a}" }}, {{ addr = "{b}" }}]
[upstreams.api.health_check]
interval = "1s"

[upstreams.slow]
backends = [{{ addr = "{slow}" }}]

[[routes]]
name = "api"
path_prefix = "/api"
upstream = "api"
rate_limit = {{ key = "client_ip", default_tier = "free" }}

[[routes]]
name = "slow"
path_prefix = "/slow"
upstream = "slow"

[[routes]]
name = "cached"
path_prefix = "/cached"
upstream = "api"
[routes.cache]
ttl = "60s"
"#,
        a = a.addr,
        b = b.addr,
        slow = slow.addr,
    );
    let gw = Gatehouse::builder().admin(Some(ADMIN_TOKEN)).start(&body);
    let http = client();

    // Traffic: 3 admitted and 2 refused on "api", 4 slow answers on "slow".
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(
            http.get(gw.url("/api/x"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    for _ in 0..4 {
        assert_eq!(
            http.get(gw.url("/slow/x")).send().await.unwrap().status(),
            200
        );
    }
    // One miss and three hits on "cached".
    for _ in 0..4 {
        assert_eq!(
            http.get(gw.url("/cached/x")).send().await.unwrap().status(),
            200
        );
    }

    // A rejected reload whose error text carries markup: the page must show it as text.
    gw.rewrite_config(&body.replace(
        "upstream = \"slow\"\n",
        "upstream = \"<img src=x onerror=alert(1)>\"\n",
    ));
    let reload = common::admin_post(&gw, "/admin/reload").await;
    assert_eq!(reload.status(), 422);

    // The page itself: self-contained, with a strict CSP.
    let page = http.get(gw.admin_url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'sha256-"));

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let shot = std::env::var_os("STATUS_PAGE_SCREENSHOT")
        .map_or_else(|| dir.join("status-page.png"), std::path::PathBuf::from);
    let key = format!("api/{}", a.addr);
    let seen = drive_page(&gw.admin_url("/"), &key, &shot);
    let ctx = serde_json::to_string_pretty(&seen).unwrap();

    // Without a token, and with a wrong one: health and readiness only.
    assert_eq!(seen["no_token"]["ready"], "ready", "{ctx}");
    assert!(
        seen["no_token"]["health"]
            .as_str()
            .unwrap()
            .contains("every upstream has an available backend"),
        "{ctx}"
    );
    assert_eq!(seen["no_token"]["admin_visible"], false, "{ctx}");
    assert_eq!(seen["no_token"]["reduced_note_visible"], true, "{ctx}");
    assert_eq!(
        seen["wrong_token"]["message"], "The admin token was not accepted.",
        "{ctx}"
    );
    assert_eq!(seen["wrong_token"]["admin_visible"], false, "{ctx}");

    // With the token: everything, the token kept for the session.
    let w = &seen["with_token"];
    assert_eq!(w["message"], "", "{ctx}");
    assert_eq!(w["stored_token"], ADMIN_TOKEN, "{ctx}");
    for backend in [&a, &b] {
        let row = w["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["key"] == format!("api/{}", backend.addr))
            .unwrap_or_else(|| panic!("backend {} not rendered: {ctx}", backend.addr));
        assert_eq!(row["health"], "healthy", "{ctx}");
        assert_eq!(row["circuit"], "closed", "{ctx}");
        assert_eq!(row["inflight"], "0", "{ctx}");
        assert_eq!(row["drained"], "in rotation", "{ctx}");
    }
    let route = |name: &str| -> Vec<String> {
        w["routes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c.as_str().unwrap().to_string())
                    .collect::<Vec<_>>()
            })
            .find(|r| r[0] == name)
            .unwrap_or_else(|| panic!("route {name} not rendered: {ctx}"))
    };
    // Columns: route, upstream, requests/s, 4xx, 5xx, p50, p99, cache hits, total.
    let api = route("api");
    assert_eq!((api[1].as_str(), api[8].as_str()), ("api", "5"), "{ctx}");
    assert_eq!(api[7], "–", "a route without a cache: {ctx}");
    let cached = route("cached");
    assert_eq!(
        (cached[7].as_str(), cached[8].as_str()),
        ("75.0 %", "4"),
        "{ctx}"
    );
    assert_eq!(
        (api[3].as_str(), api[4].as_str()),
        ("40.0 %", "0.0 %"),
        "{ctx}"
    );
    let slow_row = route("slow");
    assert_eq!(slow_row[8], "4", "{ctx}");
    // The page interpolates inside the histogram's buckets as Prometheus does: the same
    // computation over the summary's buckets (no traffic since) gives the same figures.
    // Which bucket 40 ms answers land in depends on the machine's load; the arithmetic not.
    let (p50, p99) = (millis(&slow_row[5]), millis(&slow_row[6]));
    let summary = json(common::admin_get(&gw, "/admin/summary").await).await;
    let slow = summary["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "slow")
        .unwrap();
    let buckets: Vec<(f64, f64)> = slow["latency_buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b[0].as_f64().unwrap(), b[1].as_f64().unwrap()))
        .collect();
    let quantile = |q: f64| {
        let rank = q * buckets.last().unwrap().1;
        let (mut lower, mut below) = (0.0, 0.0);
        for &(le, count) in &buckets {
            if count >= rank {
                let in_bucket = count - below;
                return 1000.0
                    * if in_bucket > 0.0 {
                        lower + (le - lower) * (rank - below) / in_bucket
                    } else {
                        le
                    };
            }
            (lower, below) = (le, count);
        }
        f64::INFINITY
    };
    assert!(
        (p50 - quantile(0.5)).abs() <= 0.051,
        "p50 {p50}: {summary} {ctx}"
    );
    assert!(
        (p99 - quantile(0.99)).abs() <= 0.051,
        "p99 {p99}: {summary} {ctx}"
    );
    // The backend answers after 40 ms: nothing can be faster than its bucket's floor.
    assert!(p50 >= 25.0 && p99 >= p50, "p50 {p50}, p99 {p99}: {ctx}");
    let free: Vec<&str> = w["tiers"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(free, ["free", "3", "2", "40.0 %"], "{ctx}");
    assert_eq!(w["generation"], "1", "{ctx}");
    assert!(
        w["last_reload"].as_str().unwrap().ends_with("rejected"),
        "{ctx}"
    );
    let errors = w["reload_errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e.as_str().unwrap().contains("<img src=x onerror=alert(1)>")),
        "the error text is shown as text: {ctx}"
    );
    assert_eq!(w["injected_elements"], 0, "{ctx}");
    assert!(
        w["process"]
            .as_str()
            .unwrap()
            .contains(&format!("pid {} · up ", gw.pid())),
        "{ctx}"
    );

    // The drain click changed the page and the gateway.
    assert_eq!(seen["drain"]["before"], "in rotation", "{ctx}");
    assert_eq!(seen["drain"]["after"], "drained", "{ctx}");
    assert_eq!(seen["drain"]["button"], "Enable", "{ctx}");
    let upstreams = json(common::admin_get(&gw, "/admin/upstreams").await).await;
    let drained: Vec<(String, bool)> = upstreams["upstreams"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["addr"].as_str().unwrap().to_string(),
                b["drained"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        drained,
        [(a.addr.to_string(), true), (b.addr.to_string(), false)]
    );

    // Usable on a narrow screen; no script error, CSP violation included.
    assert!(
        seen["narrow"]["page_width"].as_u64() <= seen["narrow"]["viewport"].as_u64(),
        "{ctx}"
    );
    // (The browser logs the wrong token's 401 answers as failed loads; nothing else may be.)
    let errors: Vec<&str> = seen["console_errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .filter(|e| !e.contains("status of 401"))
        .collect();
    assert!(errors.is_empty(), "{ctx}");
    assert!(shot.exists());
}
