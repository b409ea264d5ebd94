//! OAuth2 token introspection (RFC 7662) through the real binary, against an introspection
//! endpoint in the harness that counts calls: active tokens and what they carry, caching
//! (never beyond `exp`; inactive answers shorter), single flight, inactive / expired / wrong
//! audience / wrong issuer, scopes feeding `require_scopes`, and an endpoint that is slow or
//! down (503, or 401 with `on_error = "deny"`; never cached, never a hang).

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use common::introspection::IntrospectionServer;
use common::{client, free_port, json, metric, Gatehouse, TestBackend, ADMIN_TOKEN};
use serde_json::json;

const SECRET: &str = "introspection-client-secret";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A gateway with provider `idp` on `url`, `extra` lines in its table, and a route `/api`
/// needing it (and scope orders:read).
fn gateway(url: &str, extra: &str, backend: &TestBackend) -> Gatehouse {
    Gatehouse::builder()
        .admin(Some(ADMIN_TOKEN))
        .access_log_file()
        .env("TEST_INTROSPECTION_SECRET", SECRET)
        .start(&format!(
            r#"
[auth.introspection.idp]
url = "{url}"
client_id = "gatehouse"
client_secret_env = "TEST_INTROSPECTION_SECRET"
tier_claim = "tier"
roles_claim = "roles"
{extra}

[upstreams.b]
backends = [{{ addr = "{backend}" }}]

[[routes]]
name = "api"
path_prefix = "/api"
upstream = "b"
auth = ["introspection:idp"]
require_scopes = ["orders:read"]
"#,
            backend = backend.addr
        ))
}

async fn get(gw: &Gatehouse, token: &str) -> reqwest::Response {
    client()
        .get(gw.url("/api/x"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_active_token_is_accepted_cached_and_asked_about_once() {
    let idp = IntrospectionServer::start();
    let backend = TestBackend::start("b");
    idp.answer(
        "opaque alice/1+",
        json!({"active": true, "sub": "alice", "scope": "orders:read orders:write",
               "exp": now() + 3600, "tier": "pro", "roles": ["admin"], "client_id": "app"}),
    );
    let gw = gateway(&idp.url(), "", &backend);

    let resp = get(&gw, "opaque alice/1+").await;
    assert_eq!(resp.status(), 200);
    let seen = json(resp).await;
    let h = &seen["headers"];
    assert_eq!(h["x-consumer-id"], "alice");
    assert_eq!(h["x-consumer-tier"], "pro");
    assert_eq!(h["x-auth-method"], "introspection:idp");
    assert_eq!(h["x-auth-scopes"], "orders:read orders:write");
    assert_eq!(h["x-auth-roles"], "admin");
    // RFC 7662 §2.1: a form POST with the token, the client authenticated by HTTP Basic.
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("gatehouse:{SECRET}"));
    assert_eq!(idp.last_authorization(), Some(format!("Basic {basic}")));
    assert_eq!(
        idp.last_form().as_deref(),
        Some("token=opaque%20alice%2F1%2B&token_type_hint=access_token")
    );

    for _ in 0..5 {
        assert_eq!(get(&gw, "opaque alice/1+").await.status(), 200);
    }
    assert_eq!(idp.calls(), 1, "answers are cached");
    assert_eq!(
        metric(
            &gw,
            "gatehouse_introspection_requests_total{provider=\"idp\",result=\"active\"}"
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        metric(
            &gw,
            "gatehouse_auth_total{method=\"introspection:idp\",result=\"success\",route=\"api\"}"
        )
        .await,
        Some(6.0)
    );
    common::access_log_lines(&gw, 6).await;
    let log = gw.access_log();
    assert!(
        log.contains("\"auth_method\":\"introspection:idp\""),
        "{log}"
    );
    assert!(!log.contains("opaque"), "the token is never logged");

    // The token's scope feeds require_scopes.
    idp.answer(
        "no-scope",
        json!({"active": true, "sub": "bob", "scope": "profile", "exp": now() + 3600}),
    );
    let r = get(&gw, "no-scope").await;
    assert_eq!(r.status(), 403);
    assert_eq!(json(r).await["reason"], "insufficient_scope");
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_tokens_get_401_with_the_reason() {
    let idp = IntrospectionServer::start();
    let backend = TestBackend::start("b");
    let gw = gateway(
        &idp.url(),
        "issuer = \"https://idp.test/\"\naudiences = [\"api.test\"]\ninactive_cache_ttl = \"1s\"",
        &backend,
    );
    let base = json!({"active": true, "sub": "carol", "scope": "orders:read",
                      "iss": "https://idp.test/", "aud": ["other", "api.test"], "exp": now() + 3600});
    let with = |k: &str, v: serde_json::Value| {
        let mut a = base.clone();
        a[k] = v;
        a
    };
    idp.answer("good", base.clone());
    idp.answer("revoked", json!({"active": false}));
    idp.answer("expired", with("exp", json!(now() - 120)));
    idp.answer("elsewhere", with("aud", json!("other")));
    idp.answer("foreign", with("iss", json!("https://evil.test/")));
    assert_eq!(get(&gw, "good").await.status(), 200);
    for (token, reason) in [
        ("revoked", "inactive_token"),
        ("unknown-to-the-idp", "inactive_token"),
        ("expired", "expired"),
        ("elsewhere", "wrong_audience"),
        ("foreign", "wrong_issuer"),
    ] {
        let r = get(&gw, token).await;
        assert_eq!(r.status(), 401, "{token}");
        let challenge = r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
        assert_eq!(json(r).await["reason"], reason, "{token}");
    }
    // An inactive answer is cached, but only for inactive_cache_ttl (1 s here).
    let calls = idp.calls();
    assert_eq!(get(&gw, "revoked").await.status(), 401);
    assert_eq!(idp.calls(), calls, "inactive answer cached");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(get(&gw, "revoked").await.status(), 401);
    assert_eq!(idp.calls(), calls + 1, "and asked again once it is stale");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_active_answer_is_never_cached_beyond_the_tokens_exp() {
    let idp = IntrospectionServer::start();
    let backend = TestBackend::start("b");
    let gw = gateway(&idp.url(), "cache_ttl = \"60s\"", &backend);
    // exp in 2 s: the answer is kept 2 s, not 60.
    idp.answer(
        "short",
        json!({"active": true, "sub": "dave", "scope": "orders:read", "exp": now() + 2}),
    );
    assert_eq!(get(&gw, "short").await.status(), 200);
    assert_eq!(get(&gw, "short").await.status(), 200);
    assert_eq!(idp.calls(), 1);
    // Revoked meanwhile: once the cached answer is past exp, the endpoint is asked again.
    idp.answer("short", json!({"active": false}));
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let r = get(&gw, "short").await;
    assert_eq!(r.status(), 401);
    assert_eq!(idp.calls(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_with_one_token_share_one_call() {
    let idp = IntrospectionServer::start();
    let backend = TestBackend::start("b");
    let gw = gateway(&idp.url(), "timeout = \"2s\"", &backend);
    idp.answer(
        "popular",
        json!({"active": true, "sub": "erin", "scope": "orders:read", "exp": now() + 3600}),
    );
    idp.set_delay(Duration::from_millis(300));
    let requests: Vec<_> = (0..20)
        .map(|_| {
            let url = gw.url("/api/x");
            tokio::spawn(async move {
                client()
                    .get(url)
                    .bearer_auth("popular")
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    for r in requests {
        assert_eq!(r.await.unwrap(), 200);
    }
    assert_eq!(idp.calls(), 1, "one call for 20 concurrent requests");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_or_down_endpoint_gives_503_or_401_and_is_not_cached() {
    let idp = IntrospectionServer::start();
    let backend = TestBackend::start("b");
    idp.answer(
        "fine",
        json!({"active": true, "sub": "frank", "scope": "orders:read", "exp": now() + 3600}),
    );
    let gw = gateway(&idp.url(), "timeout = \"300ms\"", &backend);

    // Slower than the 300 ms timeout: 503 at the timeout, not when the endpoint answers.
    idp.set_delay(Duration::from_secs(3));
    let started = Instant::now();
    let r = get(&gw, "fine").await;
    let took = started.elapsed();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(json(r).await["reason"], "unavailable");
    assert!(took < Duration::from_millis(2500), "no hang: {took:?}");
    // An endpoint error (500) is no answer either.
    idp.set_delay(Duration::ZERO);
    idp.set_status(500);
    assert_eq!(get(&gw, "fine").await.status(), 503);
    assert_eq!(
        metric(
            &gw,
            "gatehouse_introspection_requests_total{provider=\"idp\",result=\"error\"}"
        )
        .await,
        Some(2.0)
    );
    // Failures are not cached: once it answers, the same token passes.
    idp.set_status(200);
    assert_eq!(get(&gw, "fine").await.status(), 200);
    let log = gw.stderr();
    assert_eq!(
        log.matches("introspection:idp: introspection endpoint")
            .count(),
        1,
        "logged once per incident: {log}"
    );

    // on_error = "deny": a provider whose endpoint is down answers 401.
    let closed = format!("http://127.0.0.1:{}/introspect", free_port());
    let deny = gateway(&closed, "on_error = \"deny\"", &backend);
    let r = get(&deny, "fine").await;
    assert_eq!(r.status(), 401);
    assert_eq!(json(r).await["reason"], "unverified");
}

#[test]
fn configuration_problems_are_reported() {
    let (code, stderr, _) = common::check_config(
        r#"
[auth.introspection.idp]
url = "ftp://idp"
client_id = "a:b"
client_secret_env = "SURELY_UNSET_INTROSPECTION_SECRET"
timeout = "0s"
on_error = "maybe"
[upstreams.b]
backends = [{ addr = "127.0.0.1:1" }]
[[routes]]
name = "r"
path_prefix = "/"
upstream = "b"
auth = ["introspection:other"]
"#,
    );
    assert_eq!(code, 1);
    for needle in [
        "auth.introspection.idp.url: invalid URL",
        "auth.introspection.idp.client_id: client_id must be non-empty and hold no ':'",
        "auth.introspection.idp.client_secret_env: $SURELY_UNSET_INTROSPECTION_SECRET must hold",
        "auth.introspection.idp.timeout: duration must be greater than zero",
        "auth.introspection.idp.on_error: on_error must be",
        "routes[0].auth[0]: unknown auth provider \"introspection:other\"",
    ] {
        assert!(stderr.contains(needle), "{needle}\n{stderr}");
    }
}
