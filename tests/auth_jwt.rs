//! JWT authentication through the real gateway, with real keys of every family: valid tokens,
//! every refusal reason, JWKS rotation and outage, identity headers, roles and scopes.

mod common;
use std::time::Duration;

use common::jwt::{self, claims, jwk, now, sign, sign_hmac, unsigned, JwksServer};
use common::{client, json, Gatehouse, TestBackend, ADMIN_TOKEN};
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

const HMAC_SECRET: &str = "an-hmac-secret-of-at-least-32-bytes!!";

fn provider(name: &str, algs: &str, source: &str) -> String {
    format!(
        r#"
[auth.jwt.{name}]
algorithms = [{algs}]
{source}
issuer = "https://idp.test/"
audiences = ["api.test"]
leeway = "5s"
consumer_claim = "sub"
tier_claim = "tier"
roles_claim = "roles"
"#
    )
}

fn route(name: &str, auth: &str, extra: &str) -> String {
    format!("[[routes]]\nname = \"{name}\"\npath_prefix = \"/{name}\"\nupstream = \"svc\"\nauth = [{auth}]\n{extra}\n")
}

fn config(backend: &TestBackend, jwks: &JwksServer) -> String {
    let mut c = String::new();
    c.push_str(&provider(
        "rsa",
        "\"RS256\"",
        &format!("public_key_file = \"{}\"", jwt::key_path("rsa1.pub")),
    ));
    c.push_str(&provider(
        "ec",
        "\"ES256\"",
        &format!("public_key_file = \"{}\"", jwt::key_path("ec1.pub")),
    ));
    c.push_str(&provider(
        "ed",
        "\"EdDSA\"",
        &format!("public_key_file = \"{}\"", jwt::key_path("ed1.pub")),
    ));
    c.push_str(&provider(
        "hmac",
        "\"HS256\"",
        "secret_env = \"GATEHOUSE_TEST_HMAC\"",
    ));
    c.push_str(&provider(
        "idp",
        "\"RS256\", \"ES256\"",
        &format!(
            "jwks_url = \"{}\"\njwks_refresh = \"10m\"\nmin_refetch_interval = \"1s\"",
            jwks.url()
        ),
    ));
    c.push_str(&format!(
        "[upstreams.svc]\nbackends = [{{ addr = \"{}\" }}]\n",
        backend.addr_str()
    ));
    c.push_str(&route("rsa", "\"jwt:rsa\"", ""));
    c.push_str(&route("ec", "\"jwt:ec\"", ""));
    c.push_str(&route("ed", "\"jwt:ed\"", ""));
    c.push_str(&route("hmac", "\"jwt:hmac\"", ""));
    c.push_str(&route("idp", "\"jwt:idp\"", ""));
    c.push_str(&route(
        "admin",
        "\"jwt:rsa\"",
        "require_roles = [\"admin\", \"owner\"]",
    ));
    c.push_str(&route(
        "write",
        "\"jwt:rsa\"",
        "require_scopes = [\"orders:read\", \"orders:write\"]",
    ));
    c.push_str(&route("hidden", "\"jwt:rsa\"", "hide_credentials = true"));
    c.push_str(&route(
        "either",
        "\"jwt:hmac\", \"jwt:ec\", \"jwt:rsa\"",
        "",
    ));
    c.push_str("[[routes]]\nname = \"public\"\npath_prefix = \"/public\"\nupstream = \"svc\"\n");
    c
}

struct Setup {
    gw: Gatehouse,
    jwks: JwksServer,
}

fn setup() -> Setup {
    let backend = TestBackend::start("svc");
    let jwks = JwksServer::start(vec![jwk("rsa1", Algorithm::RS256, "k1")]);
    let gw = Gatehouse::builder()
        .admin(Some(ADMIN_TOKEN))
        .access_log_file()
        .env("GATEHOUSE_TEST_HMAC", HMAC_SECRET)
        .start(&config(&backend, &jwks));
    Setup { gw, jwks }
}

async fn call(s: &Setup, path: &str, token: Option<&str>) -> (u16, Value, Option<String>) {
    let mut req = client().get(s.gw.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    (status, json(resp).await, challenge)
}

async fn refused(s: &Setup, path: &str, token: &str, reason: &str) {
    let (status, body, challenge) = call(s, path, Some(token)).await;
    assert_eq!(status, 401, "{path} {reason}: {body}");
    assert_eq!(body["reason"], reason, "{body}");
    assert_eq!(body["error"], "invalid credentials");
    assert!(body["request_id"].as_str().is_some_and(|r| !r.is_empty()));
    let challenge = challenge.expect("WWW-Authenticate");
    assert!(
        challenge.starts_with("Bearer realm=\"gatehouse\", error=\"invalid_token\""),
        "{challenge}"
    );
    assert!(
        !body.to_string().contains(token),
        "token echoed in the body"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn valid_tokens_of_every_family_pass_with_identity_headers() {
    let s = setup();
    let c = claims("alice");
    let tokens = [
        ("/rsa", sign("rsa1", Algorithm::RS256, None, &c), "jwt:rsa"),
        ("/ec", sign("ec1", Algorithm::ES256, None, &c), "jwt:ec"),
        ("/ed", sign("ed1", Algorithm::EdDSA, None, &c), "jwt:ed"),
        ("/hmac", sign_hmac(HMAC_SECRET.as_bytes(), &c), "jwt:hmac"),
        (
            "/idp",
            sign("rsa1", Algorithm::RS256, Some("k1"), &c),
            "jwt:idp",
        ),
    ];
    for (path, token, method) in tokens {
        let (status, body, _) = call(&s, path, Some(&token)).await;
        assert_eq!(status, 200, "{path}: {body}");
        let h = &body["headers"];
        assert_eq!(h["x-consumer-id"], "alice");
        assert_eq!(h["x-consumer-tier"], "pro");
        assert_eq!(h["x-auth-method"], method);
        assert_eq!(h["x-auth-roles"], "reader");
        assert_eq!(h["x-auth-scopes"], "orders:read profile");
        // Without hide_credentials the token is forwarded.
        assert!(h["authorization"].as_str().unwrap().starts_with("Bearer "));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_credentials_get_401_with_a_bare_challenge() {
    let s = setup();
    let (status, body, challenge) = call(&s, "/rsa", None).await;
    assert_eq!(status, 401);
    assert_eq!(body["reason"], "missing");
    assert_eq!(body["error"], "authentication required");
    assert_eq!(challenge.as_deref(), Some("Bearer realm=\"gatehouse\""));
    let basic = client()
        .get(s.gw.url("/rsa"))
        .basic_auth("u", Some("p"))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 401);
    assert_eq!(json(basic).await["reason"], "missing");
}

#[tokio::test(flavor = "multi_thread")]
async fn time_claims_are_enforced() {
    let s = setup();
    let mut c = claims("a");
    c["exp"] = json!(now() - 60);
    refused(
        &s,
        "/rsa",
        &sign("rsa1", Algorithm::RS256, None, &c),
        "expired",
    )
    .await;
    let mut c = claims("a");
    c["nbf"] = json!(now() + 600);
    refused(
        &s,
        "/rsa",
        &sign("rsa1", Algorithm::RS256, None, &c),
        "not_yet_valid",
    )
    .await;
    let mut c = claims("a");
    c["iat"] = json!(now() + 600);
    refused(
        &s,
        "/rsa",
        &sign("rsa1", Algorithm::RS256, None, &c),
        "not_yet_valid",
    )
    .await;
    let mut c = claims("a");
    c.as_object_mut().unwrap().remove("exp");
    refused(
        &s,
        "/rsa",
        &sign("rsa1", Algorithm::RS256, None, &c),
        "malformed",
    )
    .await;
    // Within the 5 s leeway, an expired token still passes.
    let mut c = claims("a");
    c["exp"] = json!(now() - 2);
    assert_eq!(
        call(&s, "/rsa", Some(&sign("rsa1", Algorithm::RS256, None, &c)))
            .await
            .0,
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn issuer_and_audience_are_required_and_checked() {
    let s = setup();
    let mut c = claims("a");
    c["iss"] = json!("https://evil.test/");
    refused(
        &s,
        "/rsa",
        &sign("rsa1", Algorithm::RS256, None, &c),
        "wrong_issuer",
    )
    .await;
    let mut c = claims("a");
    c.as_object_mut().unwrap().remove("iss");
    refused(
        &s,
        "/rsa",
        &sign("rsa1", Algorithm::RS256, None, &c),
        "wrong_issuer",
    )
    .await;
    let mut c = claims("a");
    c["aud"] = json!("other.test");
    refused(
        &s,
        "/rsa",
        &sign("rsa1", Algorithm::RS256, None, &c),
        "wrong_audience",
    )
    .await;
    let mut c = claims("a");
    c.as_object_mut().unwrap().remove("aud");
    refused(
        &s,
        "/rsa",
        &sign("rsa1", Algorithm::RS256, None, &c),
        "wrong_audience",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_and_confused_tokens_are_refused() {
    let s = setup();
    let c = claims("a");
    // Tampered payload: swap the claims segment of a valid token.
    let good = sign("rsa1", Algorithm::RS256, None, &c);
    let other = sign("rsa1", Algorithm::RS256, None, &claims("mallory"));
    let parts: Vec<&str> = good.split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        other.split('.').nth(1).unwrap(),
        parts[2]
    );
    refused(&s, "/rsa", &forged, "bad_signature").await;
    // Signed by another key.
    refused(
        &s,
        "/rsa",
        &sign("rsa2", Algorithm::RS256, None, &c),
        "bad_signature",
    )
    .await;
    // alg: none.
    refused(&s, "/rsa", &unsigned(&c), "algorithm_not_allowed").await;
    // HS256 with the RSA public key as the HMAC secret.
    let public_pem = std::fs::read(jwt::key_path("rsa1.pub")).unwrap();
    refused(
        &s,
        "/rsa",
        &sign_hmac(&public_pem, &c),
        "algorithm_not_allowed",
    )
    .await;
    // A real RSA signature, but with an algorithm the provider does not list.
    refused(
        &s,
        "/rsa",
        &sign("rsa1", Algorithm::RS384, None, &c),
        "algorithm_not_allowed",
    )
    .await;
    // Garbage and oversized credentials.
    refused(&s, "/rsa", "not.a.jwt", "malformed").await;
    let huge = format!(
        "{}.{}.{}",
        "a".repeat(3000),
        "b".repeat(3000),
        "c".repeat(3000)
    );
    refused(&s, "/rsa", &huge, "malformed").await;
    // A route with several providers names the refusal of the provider the token was meant
    // for (its algorithm and key fit), not the first provider's "algorithm not allowed".
    refused(
        &s,
        "/either",
        &sign("rsa2", Algorithm::RS256, None, &c),
        "bad_signature",
    )
    .await;
    let mut expired = claims("a");
    expired["exp"] = serde_json::json!(jwt::now() - 3600);
    refused(
        &s,
        "/either",
        &sign("ec1", Algorithm::ES256, None, &expired),
        "expired",
    )
    .await;
    refused(
        &s,
        "/either",
        &sign("rsa1", Algorithm::RS384, None, &c),
        "algorithm_not_allowed",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_key_headers_never_select_a_key() {
    let s = setup();
    // A token signed by an attacker's key that embeds that key (jwk) and points jku at it.
    let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
    header.jwk = Some(jwk("rsa2", Algorithm::RS256, "evil"));
    header.jku = Some(s.jwks.url());
    header.kid = Some("k1".to_string());
    let token = jsonwebtoken::encode(
        &header,
        &claims("mallory"),
        &jwt::encoding_key("rsa2", Algorithm::RS256),
    )
    .unwrap();
    refused(&s, "/idp", &token, "bad_signature").await;
    refused(&s, "/rsa", &token, "bad_signature").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_kid_triggers_exactly_one_refetch_then_rotation_succeeds() {
    let s = setup();
    // Wait for the initial background fetch.
    for _ in 0..100 {
        if call(
            &s,
            "/idp",
            Some(&sign("rsa1", Algorithm::RS256, Some("k1"), &claims("a"))),
        )
        .await
        .0 == 200
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = s.jwks.fetches();
    // The IdP rotates in a new EC key; the first token signed with it verifies at once.
    s.jwks.set_keys(vec![
        jwk("rsa1", Algorithm::RS256, "k1"),
        jwk("ec1", Algorithm::ES256, "k2"),
    ]);
    let rotated = sign("ec1", Algorithm::ES256, Some("k2"), &claims("bob"));
    let (status, body, _) = call(&s, "/idp", Some(&rotated)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["headers"]["x-consumer-id"], "bob");
    assert_eq!(s.jwks.fetches(), before + 1, "exactly one refetch");
    // A burst of tokens with an unknown kid causes at most one more fetch (single flight,
    // min_refetch_interval 1 s), and they are refused.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = s.jwks.fetches();
    let unknown = sign("rsa2", Algorithm::RS256, Some("nope"), &claims("c"));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (url, t) = (s.gw.url("/idp"), unknown.clone());
        tasks.push(tokio::spawn(async move {
            let r = client().get(url).bearer_auth(t).send().await.unwrap();
            (
                r.status().as_u16(),
                json(r).await["reason"].as_str().unwrap().to_string(),
            )
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), (401, "unknown_key".to_string()));
    }
    assert_eq!(s.jwks.fetches(), before + 1, "no refetch stampede");
}

#[tokio::test(flavor = "multi_thread")]
async fn jwks_outage_keeps_the_last_good_keys() {
    let s = setup();
    let token = sign("rsa1", Algorithm::RS256, Some("k1"), &claims("a"));
    for _ in 0..100 {
        if call(&s, "/idp", Some(&token)).await.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.jwks.set_up(false);
    // An unknown kid forces a (failing) fetch; the known key keeps working.
    refused(
        &s,
        "/idp",
        &sign("rsa2", Algorithm::RS256, Some("k9"), &claims("a")),
        "unknown_key",
    )
    .await;
    assert_eq!(call(&s, "/idp", Some(&token)).await.0, 200);
    let metrics = common::metrics_text(&s.gw).await;
    assert!(
        metrics.contains("gatehouse_jwks_keys{provider=\"idp\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gatehouse_jwks_fetches_total{provider=\"idp\",result=\"failure\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn jwks_down_at_start_refuses_tokens_until_it_comes_up() {
    let backend = TestBackend::start("svc");
    let jwks = JwksServer::start(vec![jwk("rsa1", Algorithm::RS256, "k1")]);
    jwks.set_up(false);
    let gw = Gatehouse::builder()
        .admin(Some(ADMIN_TOKEN))
        .env("GATEHOUSE_TEST_HMAC", HMAC_SECRET)
        .start(&config(&backend, &jwks));
    let s = Setup { gw, jwks };
    let token = sign("rsa1", Algorithm::RS256, Some("k1"), &claims("a"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    refused(&s, "/idp", &token, "unknown_key").await;
    // Public routes are unaffected.
    assert_eq!(
        client()
            .get(s.gw.url("/public"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let metrics = common::metrics_text(&s.gw).await;
    assert!(
        metrics.contains("gatehouse_jwks_keys{provider=\"idp\"} 0"),
        "{metrics}"
    );
    // The endpoint comes back: the background retry (every min_refetch_interval) loads keys.
    s.jwks.set_up(true);
    let mut status = 0;
    for _ in 0..60 {
        status = call(&s, "/idp", Some(&token)).await.0;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn roles_and_scopes_are_enforced_with_403() {
    let s = setup();
    let reader = sign("rsa1", Algorithm::RS256, None, &claims("a"));
    let resp = client()
        .get(s.gw.url("/admin"))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert!(resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("error=\"insufficient_scope\""));
    assert_eq!(json(resp).await["reason"], "missing_role");
    let mut c = claims("a");
    c["roles"] = json!(["owner"]);
    assert_eq!(
        call(
            &s,
            "/admin",
            Some(&sign("rsa1", Algorithm::RS256, None, &c))
        )
        .await
        .0,
        200
    );

    let resp = client()
        .get(s.gw.url("/write"))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(json(resp).await["reason"], "insufficient_scope");
    let mut c = claims("a");
    c["scope"] = json!("orders:read orders:write");
    assert_eq!(
        call(
            &s,
            "/write",
            Some(&sign("rsa1", Algorithm::RS256, None, &c))
        )
        .await
        .0,
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hide_credentials_strips_the_token_before_forwarding() {
    let s = setup();
    let token = sign("rsa1", Algorithm::RS256, None, &claims("a"));
    let (status, body, _) = call(&s, "/hidden", Some(&token)).await;
    assert_eq!(status, 200);
    assert!(body["headers"].get("authorization").is_none(), "{body}");
    assert_eq!(body["headers"]["x-consumer-id"], "a");
}

#[tokio::test(flavor = "multi_thread")]
async fn spoofed_identity_headers_are_stripped_everywhere() {
    let s = setup();
    let spoof = |req: reqwest::RequestBuilder| {
        req.header("x-consumer-id", "admin")
            .header("x-consumer-tier", "enterprise")
            .header("x-auth-method", "jwt:rsa")
            .header("x-auth-roles", "admin")
            .header("x-auth-scopes", "everything")
    };
    let public = json(
        spoof(client().get(s.gw.url("/public")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    for h in [
        "x-consumer-id",
        "x-consumer-tier",
        "x-auth-method",
        "x-auth-roles",
        "x-auth-scopes",
    ] {
        assert!(
            public["headers"].get(h).is_none(),
            "{h} passed on a public route"
        );
    }
    let token = sign("rsa1", Algorithm::RS256, None, &claims("alice"));
    let protected = json(
        spoof(client().get(s.gw.url("/rsa")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(protected["headers"]["x-consumer-id"], "alice");
    assert_eq!(protected["headers"]["x-consumer-tier"], "pro");
    assert_eq!(protected["headers"]["x-auth-roles"], "reader");
    assert_eq!(protected["headers"]["x-auth-scopes"], "orders:read profile");
}

#[tokio::test(flavor = "multi_thread")]
async fn outcomes_are_counted_and_logged_without_credentials() {
    let s = setup();
    let token = sign("rsa1", Algorithm::RS256, None, &claims("alice"));
    call(&s, "/rsa", Some(&token)).await;
    call(&s, "/rsa", None).await;
    let mut c = claims("a");
    c["exp"] = json!(now() - 600);
    let expired = sign("rsa1", Algorithm::RS256, None, &c);
    call(&s, "/rsa", Some(&expired)).await;
    let metrics = common::metrics_text(&s.gw).await;
    for line in [
        "gatehouse_auth_total{method=\"jwt:rsa\",result=\"success\",route=\"rsa\"} 1",
        "gatehouse_auth_total{method=\"none\",result=\"missing\",route=\"rsa\"} 1",
        "gatehouse_auth_total{method=\"jwt:rsa\",result=\"expired\",route=\"rsa\"} 1",
    ] {
        assert!(metrics.contains(line), "missing {line}");
    }
    // Failure reasons that never happened are not exposed; successes are, even at zero.
    assert!(
        !metrics.contains("result=\"bad_signature\",route=\"rsa\""),
        "zero failure series exposed"
    );
    assert!(
        metrics
            .contains("gatehouse_auth_total{method=\"jwt:ec\",result=\"success\",route=\"ec\"} 0"),
        "success series missing at zero"
    );
    // The log writer drains its queue on a timer: wait (bounded) for alice's line.
    let alice = |log: &str| {
        log.lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .find(|l| l["consumer"] == "alice")
    };
    let mut log = s.gw.access_log();
    for _ in 0..100 {
        if alice(&log).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        log = s.gw.access_log();
    }
    let line = alice(&log).expect("log line with consumer");
    assert_eq!(line["auth_method"], "jwt:rsa");
    for secret in [&token, &expired] {
        let signature = secret.rsplit('.').next().unwrap();
        assert!(
            !log.contains(signature) && !s.gw.stderr().contains(signature),
            "token logged"
        );
    }
}

/// Runs `gatehouse token ARGS -c <the gateway's config>`; returns (exit code, stdout, stderr).
fn token_command(s: &Setup, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(Gatehouse::binary())
        .arg("token")
        .args(args)
        .arg("-c")
        .arg(s.gw.config_path())
        .env("GATEHOUSE_TEST_HMAC", HMAC_SECRET)
        .output()
        .expect("gatehouse token");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn gatehouse_token_mints_tokens_the_gateway_accepts() {
    let s = setup();
    // HMAC provider: signed with its secret, iss and aud from its configuration.
    let (code, token, err) = token_command(
        &s,
        &[
            "--provider",
            "hmac",
            "--sub",
            "alice",
            "--claim",
            "tier=pro",
            "--ttl",
            "10m",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let (status, body, _) = call(&s, "/hmac", Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["headers"]["x-consumer-id"], "alice", "{body}");
    assert_eq!(body["headers"]["x-consumer-tier"], "pro", "{body}");
    // A public-key provider needs the private key ...
    let (code, _, err) = token_command(&s, &["--provider", "rsa", "--sub", "bob"]);
    assert_eq!(code, 1);
    assert!(err.contains("--key"), "{err}");
    // ... and with it, JSON claims (roles) reach the authorisation checks.
    let key = jwt::key_path("rsa1.key");
    let (code, token, err) = token_command(
        &s,
        &[
            "--provider",
            "rsa",
            "--sub",
            "bob",
            "--key",
            &key,
            "--claim",
            "roles=[\"admin\"]",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let (status, body, _) = call(&s, "/admin", Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    // An unknown provider is named with the known ones.
    let (code, _, err) = token_command(&s, &["--provider", "nope", "--sub", "x"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no JWT provider \"nope\"") && err.contains("hmac"),
        "{err}"
    );
}
