//! The admin listener: open probes (/health, /ready, /metrics), token-protected /admin/*,
//! upstream state, drain/enable, and the redacted effective config.

mod common;
use std::time::Duration;

use common::{check_config, client, json, Gatehouse, TestBackend, ADMIN_TOKEN};

fn body(a: &TestBackend, b: &TestBackend, health: bool) -> String {
    let hc = if health {
        "[upstreams.svc.health_check]\ninterval = \"200ms\"\ntimeout = \"100ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 1\n"
    } else {
        ""
    };
    format!(
        r#"
[upstreams.svc]
backends = [{{ addr = "{}" }}, {{ addr = "{}" }}]
{hc}
[[routes]]
name = "all"
path_prefix = "/"
upstream = "svc"
"#,
        a.addr_str(),
        b.addr_str()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn probes_need_no_token() {
    let (a, b) = (TestBackend::start("a"), TestBackend::start("b"));
    let gw = Gatehouse::builder()
        .admin(Some(ADMIN_TOKEN))
        .start(&body(&a, &b, false));
    let c = client();
    let health = c.get(gw.admin_url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(json(health).await["pid"], gw.pid());
    assert_eq!(
        c.get(gw.admin_url("/ready")).send().await.unwrap().status(),
        200
    );
    let metrics = c.get(gw.admin_url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(metrics
        .text()
        .await
        .unwrap()
        .contains("gatehouse_build_info"));
    // Probes may use HEAD (no body); other methods get 405 with Allow, as RFC 9110 asks.
    for path in ["/health", "/ready", "/metrics"] {
        let head = c.head(gw.admin_url(path)).send().await.unwrap();
        assert_eq!(head.status(), 200, "{path}");
        assert!(head.bytes().await.unwrap().is_empty(), "{path}");
        let post = c.post(gw.admin_url(path)).send().await.unwrap();
        assert_eq!(post.status(), 405, "{path}");
        assert_eq!(post.headers()["allow"], "GET, HEAD", "{path}");
        assert!(json(post).await["request_id"].is_string());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ready_is_503_with_the_list_when_an_upstream_has_no_healthy_backend() {
    let (a, b) = (TestBackend::start("a"), TestBackend::start("b"));
    let gw = Gatehouse::builder()
        .admin(Some(ADMIN_TOKEN))
        .start(&body(&a, &b, true));
    a.set_healthy(false);
    b.set_healthy(false);
    // Ejected after unhealthy_threshold failed checks: poll (bounded) rather than guess
    // how long a loaded machine takes.
    let mut resp = client().get(gw.admin_url("/ready")).send().await.unwrap();
    for _ in 0..100 {
        if resp.status() == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        resp = client().get(gw.admin_url("/ready")).send().await.unwrap();
    }
    assert_eq!(resp.status(), 503);
    assert_eq!(
        json(resp).await["upstreams_without_available_backend"][0],
        "svc"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_endpoints_require_the_bearer_token() {
    let (a, b) = (TestBackend::start("a"), TestBackend::start("b"));
    let gw = Gatehouse::builder()
        .admin(Some(ADMIN_TOKEN))
        .start(&body(&a, &b, false));
    let c = client();
    let none = c
        .get(gw.admin_url("/admin/upstreams"))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 401);
    assert!(none.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    // Like the proxy's refusals: an id in the header and in the JSON error body.
    let id = none.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 32, "{id}");
    let body = json(none).await;
    assert_eq!(body["request_id"], id.as_str(), "{body}");
    assert_eq!(body["error"], "missing or invalid admin token");
    // A well-formed id from the caller is kept; unknown endpoints answer with one too.
    let unknown = c
        .get(gw.admin_url("/admin/nope"))
        .bearer_auth(ADMIN_TOKEN)
        .header("x-request-id", "ops-42")
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(unknown.headers()["x-request-id"], "ops-42");
    assert_eq!(json(unknown).await["request_id"], "ops-42");
    let wrong = c
        .get(gw.admin_url("/admin/upstreams"))
        .bearer_auth("not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let prefix = c
        .get(gw.admin_url("/admin/upstreams"))
        .bearer_auth(&ADMIN_TOKEN[..10])
        .send()
        .await
        .unwrap();
    assert_eq!(prefix.status(), 401);
    let ok = common::admin_get(&gw, "/admin/upstreams").await;
    assert_eq!(ok.status(), 200);
    let body = json(ok).await;
    let backends = &body["upstreams"][0]["backends"];
    assert_eq!(backends.as_array().unwrap().len(), 2);
    assert_eq!(backends[0]["addr"], a.addr_str());
    assert_eq!(backends[0]["weight"], 1);
    assert_eq!(backends[0]["healthy"], true);
    assert_eq!(backends[0]["inflight"], 0);
    assert_eq!(backends[0]["drained"], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_token_admin_endpoints_answer_403() {
    let (a, b) = (TestBackend::start("a"), TestBackend::start("b"));
    let gw = Gatehouse::builder().admin(None).start(&body(&a, &b, false));
    let resp = client()
        .get(gw.admin_url("/admin/upstreams"))
        .bearer_auth("anything")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(json(resp).await["error"], "admin token not configured");
    // Probes still work.
    assert_eq!(
        client()
            .get(gw.admin_url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[test]
fn non_loopback_admin_without_token_is_refused_at_start() {
    let (code, stderr, _) = check_config(
        "[admin]\nlisten = \"0.0.0.0:9901\"\ntoken_env = \"GATEHOUSE_SURELY_UNSET_VAR\"\n",
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("needs a token"), "{stderr}");
    let (code, stderr, _) = check_config("[admin]\nlisten = \"0.0.0.0:9901\"\n");
    assert_eq!(code, 1);
    assert!(stderr.contains("needs a token"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn draining_takes_a_backend_out_and_enable_brings_it_back() {
    let (a, b) = (TestBackend::start("a"), TestBackend::start("b"));
    let gw = Gatehouse::builder()
        .admin(Some(ADMIN_TOKEN))
        .start(&body(&a, &b, false));
    let c = client();
    let drain = c
        .post(gw.admin_url(&format!(
            "/admin/upstreams/svc/backends/{}/drain",
            a.addr_str()
        )))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(drain.status(), 200);
    let before = a.hits();
    for _ in 0..10 {
        assert_eq!(c.get(gw.url("/x")).send().await.unwrap().status(), 200);
    }
    assert_eq!(a.hits(), before, "a drained backend gets no new requests");
    let state = json(common::admin_get(&gw, "/admin/upstreams").await).await;
    assert_eq!(state["upstreams"][0]["backends"][0]["drained"], true);

    let enable = c
        .post(gw.admin_url(&format!(
            "/admin/upstreams/svc/backends/{}/enable",
            a.addr_str()
        )))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(enable.status(), 200);
    for _ in 0..10 {
        c.get(gw.url("/x")).send().await.unwrap();
    }
    assert!(
        a.hits() >= before + 4,
        "enabled backend is back in rotation"
    );

    let unknown = common::admin_post(&gw, "/admin/upstreams/svc/backends/127.0.0.1:1/drain").await;
    assert_eq!(unknown.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_backend_drained_answers_503_with_retry_after() {
    let (a, b) = (TestBackend::start("a"), TestBackend::start("b"));
    let gw = Gatehouse::builder()
        .admin(Some(ADMIN_TOKEN))
        .start(&body(&a, &b, false));
    for backend in [&a, &b] {
        let path = format!("/admin/upstreams/svc/backends/{}/drain", backend.addr_str());
        assert_eq!(common::admin_post(&gw, &path).await.status(), 200);
    }
    let resp = client().get(gw.url("/x")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    // No active health check on this upstream: only an operator brings a backend back, so
    // clients are asked to wait 5 s rather than 1.
    assert_eq!(resp.headers()["retry-after"], "5");
    let body = json(resp).await;
    assert_eq!(body["error"], "service unavailable: no healthy backend");
}

#[tokio::test(flavor = "multi_thread")]
async fn draining_lets_in_flight_requests_finish() {
    let slow = TestBackend::slow("slow", Duration::from_millis(800));
    let gw = Gatehouse::builder().admin(Some(ADMIN_TOKEN)).start(&format!(
        "[upstreams.svc]\nbackends = [{{ addr = \"{}\" }}]\n[[routes]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"svc\"\n",
        slow.addr_str()
    ));
    let c = client();
    let url = gw.url("/slow");
    let in_flight = tokio::spawn({
        let c = c.clone();
        async move { c.get(url).send().await.unwrap().status() }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let drain = c
        .post(gw.admin_url(&format!(
            "/admin/upstreams/svc/backends/{}/drain",
            slow.addr_str()
        )))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(drain.status(), 200);
    assert_eq!(in_flight.await.unwrap(), 200);
    // With its only backend drained, the upstream has nothing to offer.
    assert_eq!(c.get(gw.url("/x")).send().await.unwrap().status(), 503);
}

#[tokio::test(flavor = "multi_thread")]
async fn effective_config_is_served_with_secrets_redacted() {
    let (a, b) = (TestBackend::start("a"), TestBackend::start("b"));
    let gw = Gatehouse::builder()
        .admin(Some(ADMIN_TOKEN))
        .start(&body(&a, &b, false));
    let resp = common::admin_get(&gw, "/admin/config").await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(!text.contains(ADMIN_TOKEN), "token leaked: {text}");
    let cfg: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(cfg["admin"]["token"], "<redacted>");
    assert_eq!(cfg["admin"]["token_env"], "GATEHOUSE_TEST_ADMIN_TOKEN");
    assert_eq!(cfg["routes"][0]["path_prefix"], "/");
    assert_eq!(cfg["upstreams"][0]["backends"][1]["addr"], b.addr_str());
    assert!(
        !gw.stderr().contains(ADMIN_TOKEN),
        "token in the process log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn summary_counts_generations_and_reloads_and_drain_takes_encoded_addresses() {
    let a = TestBackend::start("a");
    let b = TestBackend::start("b");
    let gw = Gatehouse::builder()
        .admin(Some(ADMIN_TOKEN))
        .start(&body(&a, &b, false));
    let http = client();
    let summary = || async { json(common::admin_get(&gw, "/admin/summary").await).await };
    // The summary needs the token like every /admin/* endpoint.
    let anonymous = http
        .get(gw.admin_url("/admin/summary"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    for _ in 0..3 {
        http.get(gw.url("/svc/x")).send().await.unwrap();
    }

    // Requests are counted in Pingora's logging phase, after the response went out: wait
    // (bounded) for the third.
    let mut s = summary().await;
    for _ in 0..100 {
        if s["routes"][0]["requests"] == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        s = summary().await;
    }
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["pid"], gw.pid());
    assert_eq!(s["config"]["generation"], 1);
    assert!(s["config"]["last_reload"].is_null(), "{s}");
    let routes = s["routes"].as_array().unwrap();
    let all = &routes[0];
    assert_eq!(all["name"], "all");
    assert_eq!(all["requests"], 3, "{s}");
    assert_eq!(all["client_errors"], 0, "{s}");
    assert_eq!(routes.last().unwrap()["name"], "none");
    let buckets = all["latency_buckets"].as_array().unwrap();
    assert_eq!(buckets.last().unwrap()[1], 3, "{s}");

    // An applied reload: generation 2, result applied, and what needs an upgrade.
    let mut text = std::fs::read_to_string(gw.config_path()).unwrap();
    text = text.replace("threads = 2", "threads = 3");
    gw.write_raw_config(&text);
    let r = common::admin_post(&gw, "/admin/reload").await;
    assert_eq!(r.status(), 200);
    let s = summary().await;
    assert_eq!(s["config"]["generation"], 2);
    assert_eq!(s["config"]["reloads"]["success"], 1);
    let last = &s["config"]["last_reload"];
    assert_eq!(last["result"], "applied", "{s}");
    assert_eq!(last["needs_upgrade"], serde_json::json!(["server.threads"]));
    assert!(last["at"].as_f64().unwrap() >= s["started_at"].as_f64().unwrap());

    // A rejected one keeps the generation and lists every error.
    gw.write_raw_config(&text.replace("upstream = \"svc\"", "upstream = \"nope\""));
    let r = common::admin_post(&gw, "/admin/reload").await;
    assert_eq!(r.status(), 422);
    let s = summary().await;
    assert_eq!(s["config"]["generation"], 2);
    assert_eq!(s["config"]["last_reload"]["result"], "rejected");
    let errors = s["config"]["last_reload"]["errors"].as_array().unwrap();
    assert!(
        errors.len() == 1
            && errors[0]
                .as_str()
                .unwrap()
                .contains("unknown upstream \"nope\""),
        "{s}"
    );

    // The page's drain call sends the address percent-encoded.
    let encoded = a.addr.to_string().replace(':', "%3A");
    let r = common::admin_post(
        &gw,
        &format!("/admin/upstreams/svc/backends/{encoded}/drain"),
    )
    .await;
    assert_eq!(r.status(), 200);
    let ups = json(common::admin_get(&gw, "/admin/upstreams").await).await;
    assert_eq!(ups["upstreams"][0]["backends"][0]["drained"], true);
}
