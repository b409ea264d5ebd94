//! CORS through the real binary: preflights answered by the gateway (204 or 403, before
//! authentication and rate limiting, whatever the route's methods), CORS headers on every
//! response of the route including the gateway's own refusals and failures, `Vary: Origin`, and
//! a real headless Chromium whose `fetch()` from another origin succeeds (reading a 429 body and
//! its `RateLimit` header) or fails as the configuration says.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;

use common::{client, metric, Gatehouse, TestBackend};

fn config(b: &TestBackend, origin: &str, keys: &str) -> String {
    format!(
        r#"
[cors.web]
allow_origins = ["{origin}", "https://*.example.com"]
allow_headers = ["content-type", "x-api-key"]
expose_headers = ["x-request-id", "ratelimit", "ratelimit-policy", "retry-after"]
allow_credentials = true
max_age = "10m"
allow_private_network = true
[auth.api_keys.k]
keys_file = "{keys}"
[rate_limit.tiers.tiny]
rps = 1
burst = 1
[upstreams.svc]
backends = [{{ addr = "{b}" }}]
[upstreams.dead]
backends = [{{ addr = "127.0.0.1:1" }}]
[[routes]]
name = "data"
path_prefix = "/data"
methods = ["GET", "POST"]
upstream = "svc"
cors = "web"
[[routes]]
name = "limited"
path_prefix = "/limited"
upstream = "svc"
cors = "web"
rate_limit = {{ key = "client_ip", default_tier = "tiny" }}
[[routes]]
name = "private"
path_prefix = "/private"
upstream = "svc"
cors = "web"
auth = ["api_key:k"]
max_body = "1KiB"
[[routes]]
name = "broken"
path_prefix = "/broken"
upstream = "dead"
[routes.cors]
allow_origins = ["*"]
[[routes]]
name = "plain"
path_prefix = "/plain"
upstream = "svc"
"#,
        b = b.addr_str()
    )
}

struct Env {
    gw: Gatehouse,
    b: TestBackend,
    _dir: tempfile::TempDir,
}

fn start(origin: &str) -> Env {
    let b = TestBackend::start("b");
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    std::fs::write(&keys, "").unwrap();
    let gw = Gatehouse::builder()
        .admin(Some(common::ADMIN_TOKEN))
        .start(&config(&b, origin, &keys.display().to_string()));
    Env { gw, b, _dir: dir }
}

const APP: &str = "http://app.test";

fn preflight(
    e: &Env,
    path: &str,
    origin: &str,
    method: &str,
    headers: &str,
) -> reqwest::RequestBuilder {
    let mut req = client()
        .request(reqwest::Method::OPTIONS, e.gw.url(path))
        .header("origin", origin)
        .header("access-control-request-method", method);
    if !headers.is_empty() {
        req = req.header("access-control-request-headers", headers);
    }
    req
}

#[tokio::test(flavor = "multi_thread")]
async fn an_allowed_preflight_is_answered_by_the_gateway() {
    let e = start(APP);
    let resp = preflight(&e, "/data/x", APP, "POST", "Content-Type, X-API-Key")
        .header("access-control-request-private-network", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let h = resp.headers();
    assert_eq!(h["access-control-allow-origin"], APP);
    assert_eq!(h["access-control-allow-methods"], "GET, POST");
    assert_eq!(h["access-control-allow-headers"], "content-type, x-api-key");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-max-age"], "600");
    assert_eq!(h["access-control-allow-private-network"], "true");
    assert!(h["vary"].to_str().unwrap().contains("Origin"));
    assert_eq!(e.b.hits(), 0, "the upstream never sees a preflight");
    // Wildcard subdomains, at any depth.
    let resp = preflight(&e, "/data/x", "https://a.b.example.com", "GET", "")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_preflight_reaches_its_route_even_when_methods_leave_out_options() {
    let e = start(APP);
    // The route allows GET and POST only: a plain OPTIONS is 405, a preflight is answered.
    let plain = client()
        .request(reqwest::Method::OPTIONS, e.gw.url("/data/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 405);
    let resp = preflight(&e, "/data/x", APP, "GET", "")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disallowed_origin_method_or_header_gets_403_without_cors_headers() {
    let e = start(APP);
    for (origin, method, headers) in [
        ("http://evil.test", "GET", ""),
        ("https://example.com", "GET", ""),
        (APP, "DELETE", ""),
        (APP, "POST", "content-type, x-secret"),
    ] {
        let resp = preflight(&e, "/data/x", origin, method, headers)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403, "{origin} {method} {headers}");
        assert_eq!(resp.headers()["vary"], "Origin");
        assert!(
            !resp
                .headers()
                .keys()
                .any(|k| k.as_str().starts_with("access-control-")),
            "no CORS header on a refused preflight"
        );
    }
    assert_eq!(
        metric(
            &e.gw,
            "gatehouse_cors_preflights_total{result=\"denied\",route=\"data\"}"
        )
        .await,
        Some(4.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn preflights_are_not_charged_to_the_rate_limit_nor_authenticated() {
    let e = start(APP);
    for _ in 0..5 {
        let resp = preflight(&e, "/limited/x", APP, "GET", "")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204);
    }
    let resp = preflight(&e, "/private/x", APP, "GET", "x-api-key")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204, "before authentication");
    // The bucket (burst 1) is still full: the first actual request passes.
    let resp = client()
        .get(e.gw.url("/limited/x"))
        .header("origin", APP)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        metric(
            &e.gw,
            "gatehouse_cors_preflights_total{result=\"allowed\",route=\"limited\"}"
        )
        .await,
        Some(5.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn actual_responses_carry_cors_headers_for_allowed_origins_only() {
    let e = start(APP);
    let resp = client()
        .get(e.gw.url("/data/x"))
        .header("origin", APP)
        .send()
        .await
        .unwrap();
    let h = resp.headers();
    assert_eq!(h["access-control-allow-origin"], APP);
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(
        h["access-control-expose-headers"],
        "x-request-id, ratelimit, ratelimit-policy, retry-after"
    );
    assert_eq!(h["vary"], "Origin");
    let resp = client()
        .get(e.gw.url("/data/x"))
        .header("origin", "http://evil.test")
        .send()
        .await
        .unwrap();
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    assert_eq!(resp.headers()["vary"], "Origin", "Vary: Origin always");
    let resp = client().get(e.gw.url("/data/x")).send().await.unwrap();
    assert_eq!(resp.headers()["vary"], "Origin");
    // Routes without CORS are untouched.
    let resp = client()
        .get(e.gw.url("/plain/x"))
        .header("origin", APP)
        .send()
        .await
        .unwrap();
    assert!(resp.headers().get("vary").is_none());
    assert!(resp.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateways_own_answers_carry_cors_headers_too() {
    let e = start(APP);
    let get = |path: &str| client().get(e.gw.url(path)).header("origin", APP).send();
    // 401 (no key), 413 (declared body too large), 429 (second request in the bucket).
    let resp = get("/private/x").await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["access-control-allow-origin"], APP);
    let resp = client()
        .post(e.gw.url("/private/x"))
        .header("origin", APP)
        .body(vec![b'x'; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(resp.headers()["access-control-allow-origin"], APP);
    let _ = get("/limited/x").await.unwrap();
    let resp = get("/limited/x").await.unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["access-control-allow-origin"], APP);
    assert!(resp.headers().get("ratelimit").is_some());
    // 502 from a dead upstream, on a route allowing any origin without credentials.
    let resp = get("/broken/x").await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    assert!(resp
        .headers()
        .get("access-control-allow-credentials")
        .is_none());
}

#[test]
fn credentials_with_any_origin_is_a_configuration_error() {
    let (code, stderr, _) =
        common::check_config("[cors.x]\nallow_origins = [\"*\"]\nallow_credentials = true\n");
    assert_eq!(code, 1);
    assert!(
        stderr.contains(
            "cors.x.allow_origins: allow_credentials = true cannot be combined with \"*\""
        ),
        "{stderr}"
    );
    let (code, stderr, _) = common::check_config(
        "[upstreams.u]\nbackends = [{ addr = \"127.0.0.1:1\" }]\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\ncors = \"missing\"\n",
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains("unknown CORS settings \"missing\""),
        "{stderr}"
    );
}

/// Serves `html` to every request on a loopback port (the page's origin).
fn serve_page(html: String) -> u16 {
    serve_page_on(TcpListener::bind("127.0.0.1:0").unwrap(), html)
}

/// Serves `html` to every request on `listener`; returns its port.
fn serve_page_on(listener: TcpListener, html: String) -> u16 {
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{html}",
                    html.len()
                )
                .as_bytes(),
            );
        }
    });
    port
}

/// Loads `url` in headless Chromium and returns the text of `<pre id="out">` once the page's
/// scripts are done.
fn browse(url: &str) -> serde_json::Value {
    let chromium = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| {
            std::process::Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("Chromium is not installed: run scripts/install-deps.sh (CI installs it)");
    let profile = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=15000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .output()
        .expect("run chromium");
    let dom = String::from_utf8_lossy(&out.stdout);
    let start = dom.find("<pre id=\"out\">").expect("the page rendered") + 14;
    let end = dom[start..].find("</pre>").unwrap() + start;
    let text = dom[start..end]
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
        .replace("&lt;", "<")
        .replace("&gt;", ">");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

const SCRIPT: &str = r#"
<html><body><pre id="out">pending</pre><script>
(async () => {
  const gw = "GATEWAY";
  const r = {};
  const grab = async (name, url, init) => {
    try {
      const resp = await fetch(gw + url, init);
      r[name] = { status: resp.status, ratelimit: resp.headers.get("RateLimit"),
                  request_id: resp.headers.get("X-Request-Id"), body: await resp.json() };
    } catch (e) { r[name] = { error: String(e) }; }
  };
  await grab("get", "/data/x", { credentials: "include" });
  await grab("post", "/data/x", { method: "POST", credentials: "include",
      headers: { "Content-Type": "application/json" }, body: JSON.stringify({ a: 1 }) });
  await grab("first", "/limited/x", {});
  await grab("limited", "/limited/x", {});
  document.getElementById("out").textContent = JSON.stringify(r);
})();
</script></body></html>
"#;

#[test]
fn a_browser_on_an_allowed_origin_reads_answers_and_a_disallowed_one_cannot() {
    // The allowed page's origin must be known before the gateway starts.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let allowed_port = listener.local_addr().unwrap().port();
    drop(listener);
    let origin = format!("http://127.0.0.1:{allowed_port}");
    let e = start(&origin);
    let gw = format!("http://{}", e.gw.addr);
    let page = SCRIPT.replace("GATEWAY", &gw);

    // Serve the allowed page on exactly that port.
    serve_page_on(
        TcpListener::bind(("127.0.0.1", allowed_port)).unwrap(),
        page.clone(),
    );
    let r = browse(&format!("{origin}/page.html"));
    assert_eq!(r["get"]["status"], 200, "{r}");
    assert_eq!(r["get"]["body"]["backend"], "b");
    assert!(r["get"]["request_id"].is_string(), "exposed header: {r}");
    assert_eq!(r["post"]["status"], 200, "after a preflight: {r}");
    assert_eq!(r["post"]["body"]["method"], "POST");
    assert_eq!(r["first"]["status"], 200, "{r}");
    assert_eq!(r["limited"]["status"], 429, "{r}");
    assert_eq!(r["limited"]["body"]["error"], "rate limit exceeded");
    assert!(
        r["limited"]["ratelimit"]
            .as_str()
            .is_some_and(|v| v.contains("\"burst\";r=0")),
        "the page reads the RateLimit header: {r}"
    );

    // Another origin: the browser refuses to hand the answers to the page.
    let other = serve_page(page);
    let r = browse(&format!("http://127.0.0.1:{other}/page.html"));
    for name in ["get", "post", "first"] {
        assert!(
            r[name]["error"]
                .as_str()
                .is_some_and(|e| e.contains("TypeError")),
            "{name} must fail for a disallowed origin: {r}"
        );
    }
}
