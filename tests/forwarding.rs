//! What the upstream is told about the client, and the request id both ways.

mod common;
use common::{client, json, Gatehouse, TestBackend};

fn body(b: &TestBackend) -> String {
    format!(
        r#"
[upstreams.svc]
backends = [{{ addr = "{}" }}]
[[routes]]
name = "all"
path_prefix = "/"
upstream = "svc"
"#,
        b.addr_str()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn untrusted_peer_cannot_forge_forwarding_headers() {
    let b = TestBackend::start("b");
    let gw = Gatehouse::start(&body(&b));
    let resp = client()
        .get(gw.url("/x"))
        .header("host", "api.example.com")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "evil.example")
        .send()
        .await
        .unwrap();
    let echo = json(resp).await;
    let h = &echo["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "api.example.com");
    assert_eq!(h["host"], "api.example.com");
}

#[tokio::test(flavor = "multi_thread")]
async fn trusted_proxy_chain_is_extended() {
    let b = TestBackend::start("b");
    let gw = Gatehouse::start_with_server("trusted_proxies = [\"127.0.0.0/8\"]", &body(&b));
    let resp = client()
        .get(gw.url("/x"))
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    let echo = json(resp).await;
    assert_eq!(echo["headers"]["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https");
}

#[tokio::test(flavor = "multi_thread")]
async fn well_formed_request_id_is_kept_and_echoed() {
    let b = TestBackend::start("b");
    let gw = Gatehouse::start(&body(&b));
    let resp = client()
        .get(gw.url("/x"))
        .header("x-request-id", "abc-123_x.y")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "abc-123_x.y");
    assert_eq!(json(resp).await["headers"]["x-request-id"], "abc-123_x.y");
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_or_malformed_request_id_is_replaced() {
    let b = TestBackend::start("b");
    let gw = Gatehouse::start(&body(&b));
    let c = client();
    for sent in [None, Some("has space"), Some(&*"x".repeat(129))] {
        let mut req = c.get(gw.url("/x"));
        if let Some(s) = sent {
            req = req.header("x-request-id", s);
        }
        let resp = req.send().await.unwrap();
        let echoed = resp.headers()["x-request-id"].to_str().unwrap().to_string();
        assert_eq!(echoed.len(), 32, "generated id: {echoed}");
        assert!(echoed.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(json(resp).await["headers"]["x-request-id"], echoed.as_str());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn h2c_prior_knowledge_is_served() {
    let b = TestBackend::start("b");
    let gw = Gatehouse::start(&body(&b));
    let c = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = c.get(gw.url("/h2")).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await["path"], "/h2");
}
