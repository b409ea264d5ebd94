//! Test harness: starts the real `gatehouse` binary from a config string on a free loopback
//! port, and real HTTP backends whose behaviour each test controls.

#![allow(dead_code, unused_imports)]

pub mod backend;
pub mod gateway;
pub mod in_process;
pub mod introspection;
pub mod jwt;
pub mod otlp;
pub mod pki;
pub mod python;
pub mod raw;
pub mod redis;
pub mod serve;

pub use backend::TestBackend;
pub use gateway::{check_config, free_port, start_daemon, Daemon, Gatehouse, ADMIN_TOKEN};

/// An HTTP client that never uses a proxy from the environment. Without the system's root
/// certificates (tests speak plain HTTP to loopback, and TLS through curl and Python with the
/// test PKI): loading them took ~30 ms per client in a debug build, which made tests that
/// send requests one client each run at the pace of that, not of the gateway.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .tls_built_in_native_certs(false)
        .timeout(std::time::Duration::from_secs(20))
        .build()
        .expect("client")
}

/// The parsed JSON body of a response.
pub async fn json(resp: reqwest::Response) -> serde_json::Value {
    let text = resp.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The gateway's Prometheus exposition (from its admin listener).
pub async fn metrics_text(gw: &Gatehouse) -> String {
    client()
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body")
}

/// The access log's lines as JSON, once there are at least `n` (the writer is a background
/// task: a line appears shortly after its response).
pub async fn access_log_lines(gw: &Gatehouse, n: usize) -> Vec<serde_json::Value> {
    for _ in 0..100 {
        let text = gw.access_log();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        if lines.len() >= n {
            return lines;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("access log has fewer than {n} lines:\n{}", gw.access_log());
}

/// The value of the first sample line starting with `prefix` (e.g. `name{labels}`).
pub async fn metric(gw: &Gatehouse, prefix: &str) -> Option<f64> {
    metrics_text(gw)
        .await
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The value of the first metric line starting with `prefix` once it equals `want`, polling
/// for up to 5 s (gauges follow connections the gateway sees close a little later), else the
/// last value read.
pub async fn metric_reaching(gw: &Gatehouse, prefix: &str, want: f64) -> Option<f64> {
    let mut now = metric(gw, prefix).await;
    for _ in 0..100 {
        if now == Some(want) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        now = metric(gw, prefix).await;
    }
    now
}

/// `POST` to an admin endpoint with the test token.
pub async fn admin_post(gw: &Gatehouse, path: &str) -> reqwest::Response {
    client()
        .post(gw.admin_url(path))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("admin request")
}

/// `GET` an admin endpoint with the test token.
pub async fn admin_get(gw: &Gatehouse, path: &str) -> reqwest::Response {
    client()
        .get(gw.admin_url(path))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("admin request")
}
