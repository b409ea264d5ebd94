//! Header, path and JSON body transformation through the real binary: variables, identity
//! headers that transforms cannot forge, rewrites, request bodies (read before the upstream is
//! chosen up to 64 KiB, streamed above, 413 over `max_size`, 400 when malformed, retried with
//! the transformed body) and response bodies (transformed, or passed unchanged and counted).

mod common;

use std::io::Write;

use common::raw::{connect, exchange, read_response};
use common::{client, json, metric, Gatehouse, TestBackend};

fn config(b: &str, keys: &str) -> String {
    format!(
        r#"
[auth.api_keys.k]
keys_file = "{keys}"
[upstreams.svc]
backends = [{{ addr = "{b}" }}]
[[routes]]
name = "api"
path_prefix = "/v1"
upstream = "svc"
auth = ["api_key:k"]
rewrite = {{ regex = "^/v1/(?P<rest>.*)$", to = "/api/${{rest}}" }}
[routes.request_headers]
set = {{ "X-Gateway" = "gatehouse", "X-Consumer" = "${{consumer}}", "X-Route" = "${{route}}", "X-Path" = "${{path}}", "X-Q" = "${{query.q}}", "X-Echo" = "${{header.x-client}}", "X-Bad" = "${{header.x-raw}}" }}
add = {{ "X-Tag" = "edge" }}
remove = ["Cookie", "X-Debug"]
[routes.response_headers]
set = {{ "Strict-Transport-Security" = "max-age=31536000" }}
remove = ["Server", "X-Powered-By"]
[routes.request_body]
set = {{ "/meta/source" = "gateway", "/meta/consumer" = "${{consumer}}", "/meta/version" = 2 }}
remove = ["/internal", "/debug"]
rename = {{ "/userName" = "/user_name" }}
max_size = "256KiB"
[routes.response_body]
remove = ["/headers/x-forwarded-for"]
set = {{ "/via" = "gatehouse" }}
max_size = "4KiB"
"#
    )
}

struct Env {
    gw: Gatehouse,
    b: TestBackend,
    key: String,
    _keys: tempfile::TempDir,
}

fn start() -> Env {
    let b = TestBackend::start("b");
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    let out = std::process::Command::new(Gatehouse::binary())
        .args(["keys", "new", "--consumer", "acme", "--file"])
        .arg(&keys)
        .output()
        .unwrap();
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let gw = Gatehouse::builder()
        .admin(Some(common::ADMIN_TOKEN))
        .start(&config(&b.addr_str(), &keys.display().to_string()));
    Env {
        gw,
        b,
        key,
        _keys: dir,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn headers_are_set_added_and_removed_with_variables() {
    let e = start();
    let resp = client()
        .get(e.gw.url("/v1/users/7?q=a%20b&z=1"))
        .header("x-api-key", &e.key)
        .header("x-client", "cli-1")
        .header("cookie", "session=secret")
        .header("x-debug", "1")
        .header("x-tag", "client")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["strict-transport-security"],
        "max-age=31536000"
    );
    assert!(resp.headers().get("server").is_none());
    assert!(resp.headers().get("x-powered-by").is_none());
    let body = json(resp).await;
    let h = &body["headers"];
    assert_eq!(h["x-gateway"], "gatehouse");
    assert_eq!(h["x-consumer"], "acme");
    assert_eq!(h["x-route"], "api");
    assert_eq!(h["x-path"], "/v1/users/7", "the path before the rewrite");
    assert_eq!(h["x-q"], "a%20b", "raw, not decoded");
    assert_eq!(h["x-echo"], "cli-1");
    assert_eq!(h["x-tag"], "client, edge", "add keeps what was there");
    assert!(h.get("cookie").is_none() && h.get("x-debug").is_none());
    assert_eq!(
        body["path"], "/api/users/7?q=a%20b&z=1",
        "rewritten, query kept"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn identity_headers_cannot_be_forged_through_a_transform() {
    // The configuration refuses transforms that name identity headers...
    let (code, stderr, _) = common::check_config(
        "[upstreams.u]\nbackends = [{ addr = \"127.0.0.1:1\" }]\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\n[routes.request_headers]\nset = { \"X-Consumer-Id\" = \"${header.x-who}\" }\n",
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains(
            "routes[0].request_headers.set.X-Consumer-Id: X-Consumer-Id is managed by the gateway"
        ),
        "{stderr}"
    );
    // ...and what a client sends is still replaced by the real identity.
    let e = start();
    let body = json(
        client()
            .get(e.gw.url("/v1/x"))
            .header("x-api-key", &e.key)
            .header("x-consumer-id", "admin")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(body["headers"]["x-consumer-id"], "acme");
}

#[test]
fn templates_and_names_are_checked_when_the_config_is_loaded() {
    let route = "[upstreams.u]\nbackends = [{ addr = \"127.0.0.1:1\" }]\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\n";
    for (extra, expected) in [
        (
            "[routes.request_headers]\nset = { \"X-A\" = \"${nope}\" }\n",
            "unknown variable ${nope}",
        ),
        (
            "[routes.request_headers]\nset = { \"X-A\" = \"a\\u0001${consumer}\" }\n",
            "invalid header value",
        ),
        (
            "[routes.request_headers]\nremove = [\"Content-Length\"]\n",
            "managed by the gateway",
        ),
        (
            "[routes.request_body]\nremove = [\"internal\"]\n",
            "invalid JSON Pointer",
        ),
        (
            "rewrite = { regex = \"^/(?P<a>.*)$\", to = \"/x/${b}\" }\n",
            "${b} is not a group",
        ),
        (
            "strip_prefix = \"/a\"\nrewrite = { regex = \"^/(.*)$\", to = \"/${1}\" }\n",
            "cannot be combined",
        ),
    ] {
        let (code, stderr, _) = common::check_config(&format!("{route}{extra}"));
        assert_eq!(code, 1, "{extra}");
        assert!(stderr.contains(expected), "{extra}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn small_json_request_bodies_are_transformed_with_a_correct_length() {
    let e = start();
    let resp = client()
        .post(e.gw.url("/v1/users"))
        .header("x-api-key", &e.key)
        .header("content-type", "application/json")
        .body(r#"{"userName":"jo","internal":{"x":1},"debug":true,"keep":[1,2]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = json(resp).await;
    let sent: serde_json::Value = serde_json::from_str(body["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        sent,
        serde_json::json!({"user_name":"jo","keep":[1,2],"meta":{"source":"gateway","consumer":"acme","version":2}})
    );
    assert_eq!(
        body["headers"]["content-length"],
        body["body"].as_str().unwrap().len().to_string()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn non_json_bodies_pass_unchanged() {
    let e = start();
    let resp = client()
        .post(e.gw.url("/v1/upload"))
        .header("x-api-key", &e.key)
        .header("content-type", "text/plain")
        .body("{\"internal\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(json(resp).await["body"], "{\"internal\":1}");
}

#[test]
fn large_and_chunked_json_bodies_are_streamed_then_sent_transformed() {
    let e = start();
    let filler = "x".repeat(100 * 1024);
    let doc = format!(r#"{{"userName":"jo","internal":1,"filler":"{filler}"}}"#);
    let mut s = connect(e.gw.addr);
    s.write_all(
        format!(
            "POST /v1/big HTTP/1.1\r\nHost: a\r\nX-Api-Key: {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
            e.key
        )
        .as_bytes(),
    )
    .unwrap();
    for chunk in doc.as_bytes().chunks(16 * 1024) {
        s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .unwrap();
        s.write_all(chunk).unwrap();
        s.write_all(b"\r\n").unwrap();
    }
    s.write_all(b"0\r\n\r\n").unwrap();
    let r = read_response(&mut s).expect("a response");
    assert_eq!(r.status, 200, "{}", r.body);
    let echo: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let sent: serde_json::Value = serde_json::from_str(echo["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent["user_name"], "jo");
    assert!(sent.get("internal").is_none());
    assert_eq!(sent["filler"].as_str().unwrap().len(), filler.len());
    assert_eq!(sent["meta"]["consumer"], "acme");
}

#[test]
fn request_bodies_over_max_size_get_413_and_malformed_ones_400() {
    let e = start();
    let big = format!("{{\"a\":\"{}\"}}", "x".repeat(300 * 1024));
    let r = exchange(
        e.gw.addr,
        format!(
            "POST /v1/x HTTP/1.1\r\nHost: a\r\nX-Api-Key: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{big}",
            e.key,
            big.len()
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 413, "{}", r.body);
    let r = exchange(
        e.gw.addr,
        format!(
            "POST /v1/x HTTP/1.1\r\nHost: a\r\nX-Api-Key: {}\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n{{\"a\": tru",
            e.key
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let body = r.json();
    assert_eq!(body["reason"], "malformed_json");
    assert!(body["request_id"].is_string());
    assert_eq!(e.b.hits(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_replay_the_transformed_body() {
    // The first backend resets after reading the request; the retry goes to a real one.
    let good = TestBackend::start("good");
    let (resetting, resets) = common::backend::counting_resetting_backend();
    let gw = Gatehouse::start(&format!(
        r#"
[upstreams.svc]
balance = "round_robin"
backends = [{{ addr = "{resetting}" }}, {{ addr = "{good}" }}]
[upstreams.svc.retry]
attempts = 2
on = ["connect", "reset"]
methods = ["PUT"]
[[routes]]
name = "r"
path_prefix = "/"
upstream = "svc"
[routes.request_body]
set = {{ "/stamped" = true }}
"#,
        good = good.addr_str()
    ));
    for _ in 0..4 {
        let resp = client()
            .put(gw.url("/items/1"))
            .header("content-type", "application/json")
            .body(r#"{"name":"n"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body = json(resp).await;
        let sent: serde_json::Value = serde_json::from_str(body["body"].as_str().unwrap()).unwrap();
        assert_eq!(sent, serde_json::json!({"name":"n","stamped":true}));
    }
    assert!(
        resets.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "some attempt was retried"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn json_responses_are_transformed_and_others_pass_unchanged_and_counted() {
    let e = start();
    let get = |headers: &[(&str, &str)]| {
        let mut req = client().get(e.gw.url("/v1/x")).header("x-api-key", &e.key);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send()
    };
    let resp = get(&[]).await.unwrap();
    let body = json(resp).await;
    assert_eq!(body["via"], "gatehouse");
    assert!(body["headers"].get("x-forwarded-for").is_none());

    let resp = get(&[("x-test-content-type", "text/plain")]).await.unwrap();
    let text = resp.text().await.unwrap();
    assert!(text.contains("x-forwarded-for"), "unchanged: {text}");
    let resp = get(&[("x-test-content-encoding", "br")]).await.unwrap();
    let bytes = resp.bytes().await.unwrap_or_default();
    assert!(
        String::from_utf8_lossy(&bytes).contains("x-forwarded-for"),
        "compressed bodies are not touched"
    );
    // A response over max_size (4 KiB) passes unchanged.
    let pad = "p".repeat(6000);
    let resp = get(&[("x-pad", pad.as_str())]).await.unwrap();
    let body = json(resp).await;
    assert!(body.get("via").is_none());
    // A body that is not valid JSON although labelled so passes unchanged.
    let resp = get(&[("x-test-body", "{not json")]).await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "{not json");

    let count = |reason: &'static str| {
        let gw = &e.gw;
        async move {
            metric(
                gw,
                &format!("gatehouse_transform_skipped_total{{reason=\"{reason}\",route=\"api\"}}"),
            )
            .await
            .unwrap_or(0.0)
        }
    };
    assert_eq!(count("not_json").await, 1.0);
    assert_eq!(count("compressed").await, 1.0);
    assert_eq!(count("too_large").await, 1.0);
    assert_eq!(count("invalid_json").await, 1.0);
}
