//! Route choice through the real gateway: host (exact, wildcard), exact/prefix/regex paths,
//! methods, headers, priority, segment boundaries, strip_prefix, 404 and 405.

mod common;
use common::{client, json, Gatehouse, TestBackend};

fn upstream(name: &str, b: &TestBackend) -> String {
    format!(
        "[upstreams.{name}]\nbackends = [{{ addr = \"{}\" }}]\n",
        b.addr_str()
    )
}

struct Setup {
    gw: Gatehouse,
}

/// One backend per route, each named after its route, so the answer says which route won.
fn setup() -> Setup {
    let names = [
        "exact",
        "prefix_short",
        "prefix_long",
        "regex",
        "wild",
        "host",
        "beta",
        "prio",
        "strip",
        "getonly",
    ];
    let mut config = String::new();
    for n in names {
        config.push_str(&upstream(n, &TestBackend::start(n)));
    }
    config.push_str(
        r#"
[[routes]]
name = "regex"
path_regex = "^/api/v[0-9]+/items/[0-9]+$"
upstream = "regex"

[[routes]]
name = "prefix_short"
path_prefix = "/api"
upstream = "prefix_short"

[[routes]]
name = "prefix_long"
path_prefix = "/api/v1/users"
upstream = "prefix_long"

[[routes]]
name = "exact"
path_exact = "/api/v1/users/me"
upstream = "exact"

[[routes]]
name = "wild"
host = "*.example.com"
path_prefix = "/site"
upstream = "wild"

[[routes]]
name = "host"
host = "shop.example.com"
path_prefix = "/site"
upstream = "host"

[[routes]]
name = "beta"
path_prefix = "/feature"
headers = { "X-Beta" = "true" }
upstream = "beta"

[[routes]]
name = "prio"
path_prefix = "/feature"
priority = -1
upstream = "prio"

[[routes]]
name = "strip"
path_prefix = "/svc/orders"
strip_prefix = "/svc"
upstream = "strip"

[[routes]]
name = "getonly"
path_prefix = "/readonly"
methods = ["GET", "HEAD"]
upstream = "getonly"
"#,
    );
    Setup {
        gw: Gatehouse::start(&config),
    }
}

async fn backend_for(
    s: &Setup,
    method: &str,
    host: Option<&str>,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, serde_json::Value) {
    let mut req = client().request(method.parse().unwrap(), s.gw.url(path));
    if let Some(h) = host {
        req = req.header("host", h);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    (status, json(resp).await)
}

async fn route_of(s: &Setup, host: Option<&str>, path: &str) -> String {
    let (status, body) = backend_for(s, "GET", host, path, &[]).await;
    assert_eq!(status, 200, "{path}: {body}");
    body["backend"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn exact_beats_prefix_beats_regex_and_longest_prefix_wins() {
    let s = setup();
    assert_eq!(route_of(&s, None, "/api/v1/users/me").await, "exact");
    assert_eq!(route_of(&s, None, "/api/v1/users/7").await, "prefix_long");
    assert_eq!(route_of(&s, None, "/api/v1/users").await, "prefix_long");
    // The regex matches, but any prefix route outranks a regex route.
    assert_eq!(route_of(&s, None, "/api/v2/items/9").await, "prefix_short");
}

#[tokio::test(flavor = "multi_thread")]
async fn regex_routes_match_when_no_prefix_does() {
    let config = {
        let b = TestBackend::start("regex");
        format!(
            "{}\n[[routes]]\nname = \"r\"\npath_regex = \"^/v[0-9]+/items/[0-9]+$\"\nupstream = \"regex\"\n",
            upstream("regex", &b)
        )
    };
    let gw = Gatehouse::start(&config);
    let ok = client().get(gw.url("/v3/items/12")).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    let miss = client().get(gw.url("/v3/items/x")).send().await.unwrap();
    assert_eq!(miss.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn prefixes_match_only_on_segment_boundaries() {
    let s = setup();
    // "/api/v1/usersX" is not under "/api/v1/users", so the shorter "/api" prefix takes it.
    assert_eq!(route_of(&s, None, "/api/v1/usersX").await, "prefix_short");
    let (status, body) = backend_for(&s, "GET", None, "/apix", &[]).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "no route matches this request");
    assert!(body["request_id"].as_str().is_some_and(|id| !id.is_empty()));
}

#[tokio::test(flavor = "multi_thread")]
async fn exact_host_beats_wildcard_only_by_declaration_and_wildcard_needs_a_subdomain() {
    let s = setup();
    // Same priority and same prefix length: declaration order decides ("wild" first).
    assert_eq!(
        route_of(&s, Some("shop.example.com"), "/site/a").await,
        "wild"
    );
    assert_eq!(
        route_of(&s, Some("A.B.Example.COM:8080"), "/site/a").await,
        "wild"
    );
    let (status, _) = backend_for(&s, "GET", Some("example.com"), "/site/a", &[]).await;
    assert_eq!(status, 404);
    let (status, _) = backend_for(&s, "GET", Some("other.org"), "/site/a", &[]).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn exact_host_route_with_higher_priority_wins() {
    let a = TestBackend::start("exact_host");
    let b = TestBackend::start("wildcard");
    let config = format!(
        "{}{}\n[[routes]]\nname = \"w\"\nhost = \"*.example.com\"\npath_prefix = \"/\"\nupstream = \"wildcard\"\n\n[[routes]]\nname = \"e\"\nhost = \"shop.example.com\"\npath_prefix = \"/\"\npriority = 10\nupstream = \"exact_host\"\n",
        upstream("exact_host", &a),
        upstream("wildcard", &b)
    );
    let gw = Gatehouse::start(&config);
    let get = |host: &'static str| {
        let url = gw.url("/x");
        async move {
            let r = client().get(url).header("host", host).send().await.unwrap();
            json(r).await["backend"].as_str().unwrap().to_string()
        }
    };
    assert_eq!(get("shop.example.com").await, "exact_host");
    assert_eq!(get("blog.example.com").await, "wildcard");
}

#[tokio::test(flavor = "multi_thread")]
async fn header_matchers_and_priority_decide_between_equal_paths() {
    let s = setup();
    let (_, body) = backend_for(&s, "GET", None, "/feature/x", &[("x-beta", "true")]).await;
    assert_eq!(body["backend"], "beta");
    let (_, body) = backend_for(&s, "GET", None, "/feature/x", &[("x-beta", "false")]).await;
    assert_eq!(body["backend"], "prio");
    let (_, body) = backend_for(&s, "GET", None, "/feature/x", &[]).await;
    assert_eq!(body["backend"], "prio");
}

#[tokio::test(flavor = "multi_thread")]
async fn strip_prefix_rewrites_the_path_and_keeps_the_query() {
    let s = setup();
    let (status, body) =
        backend_for(&s, "GET", None, "/svc/orders/42?expand=items&x=%20y", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(body["backend"], "strip");
    assert_eq!(body["path"], "/orders/42?expand=items&x=%20y");
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_method_gets_405_with_allow() {
    let s = setup();
    let resp = client()
        .delete(s.gw.url("/readonly/doc"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "GET, HEAD");
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body = json(resp).await;
    assert_eq!(body["error"], "method not allowed on this route");
    let head = client()
        .head(s.gw.url("/readonly/doc"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    let get = client()
        .get(s.gw.url("/readonly/doc"))
        .send()
        .await
        .unwrap();
    assert_eq!(json(get).await["backend"], "getonly");
}

/// Runs `gatehouse explain --json -c FILE ARGS` on `config`; returns the JSON.
fn explain(config: &str, args: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gatehouse.toml");
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(Gatehouse::binary())
        .args(["explain", "--json", "-c"])
        .arg(&path)
        .args(args)
        .output()
        .expect("gatehouse explain");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

const EXPLAINED: &str = r#"
[auth.jwt.main]
algorithms = ["RS256"]
public_key_file = "tests/fixtures/keys/rsa1.pub"
[upstreams.svc]
backends = [{ addr = "127.0.0.1:9001", weight = 2 }, { addr = "127.0.0.1:9002" }]
[[routes]]
name = "api"
path_prefix = "/api"
upstream = "svc"
[[routes]]
name = "api_v2"
path_prefix = "/api/v2"
upstream = "svc"
auth = ["jwt:main"]
require_roles = ["admin"]
timeout = "2s"
[[routes]]
name = "beta"
path_prefix = "/api"
headers = { "x-beta" = "1" }
priority = 10
upstream = "svc"
[[routes]]
name = "exact"
path_exact = "/api/v2/health"
methods = ["GET"]
upstream = "svc"
[[routes]]
name = "other_host"
host = "admin.example.com"
path_prefix = "/"
upstream = "svc"
"#;

#[test]
fn explain_lists_routes_in_precedence_order_with_reasons() {
    // Paths in the file are relative to it: point the key at this repository's fixture.
    let key = format!(
        "{}/tests/fixtures/keys/rsa1.pub",
        env!("CARGO_MANIFEST_DIR")
    );
    let config = &EXPLAINED.replace("tests/fixtures/keys/rsa1.pub", &key);
    let v = explain(config, &["GET", "http://api.example.com/api/v2/orders"]);
    let order: Vec<&str> = v["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["route"].as_str().unwrap())
        .collect();
    // Priority first, then exact before prefix, longer prefix before shorter.
    assert_eq!(
        order,
        ["beta", "exact", "api_v2", "api", "other_host"],
        "{v}"
    );
    let result = |name: &str| {
        v["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["route"] == name)
            .unwrap()["result"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(result("beta").starts_with("header x-beta: 1"), "{v}");
    assert_eq!(result("exact"), "path does not match");
    assert_eq!(result("api_v2"), "matches: chosen");
    assert!(result("api").starts_with("not reached"));
    assert_eq!(v["route"], "api_v2");
    assert_eq!(v["policies"]["require_roles"], serde_json::json!(["admin"]));
    assert_eq!(v["policies"]["timeout"], "2s");
    assert_eq!(v["policies"]["auth"], serde_json::json!(["jwt:main"]));
    // Policies in the order a request meets them.
    assert_eq!(
        v["policy_order"],
        serde_json::json!([
            "auth",
            "require_roles",
            "timeout",
            "websocket",
            "websocket_idle_timeout"
        ]),
        "{v}"
    );
    assert_eq!(v["upstream"]["name"], "svc");
    assert_eq!(v["upstream"]["backends"][0]["weight"], 2);

    // The header makes the higher-priority route win.
    let v = explain(
        config,
        &[
            "-H",
            "X-Beta: 1",
            "GET",
            "http://api.example.com/api/v2/orders",
        ],
    );
    assert_eq!(v["route"], "beta");

    // Host routing, from -H Host over the URL's.
    let v = explain(
        config,
        &["-H", "Host: admin.example.com", "GET", "/anything"],
    );
    assert_eq!(v["route"], "other_host", "{v}");

    // 405: the exact route matches all but the method (and nothing after it matches).
    let v = explain(config, &["POST", "http://x.example.com/api/v2/health"]);
    assert_eq!(v["route"], "api_v2", "a prefix route still takes POST: {v}");
    let only_exact = "[upstreams.svc]\nbackends = [{ addr = \"127.0.0.1:9001\" }]\n\
                      [[routes]]\nname = \"exact\"\npath_exact = \"/h\"\nmethods = [\"GET\"]\nupstream = \"svc\"\n";
    let v = explain(only_exact, &["POST", "http://x/h"]);
    assert!(v["refused"].as_str().unwrap().starts_with("405"), "{v}");
    assert_eq!(
        v["routes"][0]["result"],
        "everything but the method matches"
    );

    // 404, after the path is normalised as the gateway does.
    let v = explain(only_exact, &["GET", "http://x/a/../nothing"]);
    assert!(v["refused"].as_str().unwrap().starts_with("404"), "{v}");
    assert_eq!(v["request"]["path"], "/nothing");
}
