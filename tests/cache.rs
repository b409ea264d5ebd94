//! Response caching through the real gateway against a real origin that counts what reaches
//! it: hits and expiry, what is never stored, per-consumer entries, coalescing of concurrent
//! misses, purges (every `Vary` variant), stale and revalidated answers, HEAD and ranges,
//! bounded memory, metrics, the access log and reloads.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::jwt::{claims, sign_hmac};
use common::{client, json, Gatehouse, ADMIN_TOKEN};
use http_body_util::Full;
use hyper::{Request, Response};

const HMAC_SECRET: &str = "an-hmac-secret-of-at-least-32-bytes!!";

/// What the origin was asked, by path and query.
#[derive(Default)]
struct Seen {
    hits: HashMap<String, usize>,
    /// Methods and conditional headers of the requests that reached it, in order.
    requests: Vec<(String, String, Option<String>)>,
    /// When set, every response is a 500 (an origin in trouble).
    failing: bool,
}

/// A real HTTP origin. The query controls the response:
/// `cc=` its `Cache-Control`, `status=`, `vary=`, `cookie=1`, `etag=` (then a matching
/// `If-None-Match` gets a 304), `delay=MS`, `size=N` (a body of N bytes). Every body names
/// the request's number for its path and query (`#1`, `#2` …), the consumer the gateway
/// identified and the request's `Accept-Language`, so a test sees which fetch it got.
struct Origin {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
}

impl Origin {
    fn start() -> Origin {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let state = Arc::clone(&seen);
        let addr = common::serve::serve(move |req: Request<hyper::body::Incoming>| {
            let seen = Arc::clone(&state);
            async move { Ok::<_, Infallible>(respond(&seen, &req).await) }
        });
        Origin { addr, seen }
    }

    fn hits(&self, path_and_query: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .hits
            .get(path_and_query)
            .copied()
            .unwrap_or(0)
    }

    fn set_failing(&self, failing: bool) {
        self.seen.lock().unwrap().failing = failing;
    }

    fn requests(&self) -> Vec<(String, String, Option<String>)> {
        self.seen.lock().unwrap().requests.clone()
    }
}

async fn respond(
    seen: &Mutex<Seen>,
    req: &Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let target = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .map(|q| {
            q.split('&')
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| {
                    let v = v.replace('+', " ");
                    let v = percent_encoding::percent_decode_str(&v).decode_utf8_lossy();
                    (k.to_string(), v.into_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (n, failing) = {
        let mut s = seen.lock().unwrap();
        let n = {
            let count = s.hits.entry(target.clone()).or_default();
            *count += 1;
            *count
        };
        s.requests.push((
            req.method().to_string(),
            target.clone(),
            header("if-none-match"),
        ));
        (n, s.failing)
    };
    if let Some(ms) = query.get("delay").and_then(|d| d.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let mut resp = Response::builder();
    if failing {
        return resp
            .status(500)
            .body(Full::new(Bytes::from_static(b"origin down")))
            .unwrap();
    }
    if let (Some(etag), Some(sent)) = (query.get("etag"), header("if-none-match")) {
        if sent == format!("\"{etag}\"") {
            return resp
                .status(304)
                .header("etag", format!("\"{etag}\""))
                .header(
                    "cache-control",
                    query.get("cc").cloned().unwrap_or_default(),
                )
                .body(Full::new(Bytes::new()))
                .unwrap();
        }
    }
    let status: u16 = query
        .get("status")
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    resp = resp.status(status).header("content-type", "text/plain");
    if let Some(cc) = query.get("cc") {
        resp = resp.header("cache-control", cc);
    }
    if let Some(vary) = query.get("vary") {
        resp = resp.header("vary", vary);
    }
    if query.contains_key("cookie") {
        resp = resp.header("set-cookie", "session=abc");
    }
    if let Some(etag) = query.get("etag") {
        resp = resp.header("etag", format!("\"{etag}\""));
    }
    let body = match query.get("size").and_then(|s| s.parse::<usize>().ok()) {
        Some(size) => {
            let mut b = format!("#{n} ").into_bytes();
            b.resize(size, b'x');
            b
        }
        None => format!(
            "#{n} {target} consumer={} lang={}",
            header("x-consumer-id").unwrap_or_default(),
            header("accept-language").unwrap_or_default()
        )
        .into_bytes(),
    };
    resp.body(Full::new(Bytes::from(body))).unwrap()
}

/// The value of the sample `series` (name and labels as exposed) in a metrics text; -1 when
/// it is absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1.0)
}

struct Answer {
    status: u16,
    x_cache: String,
    age: Option<u64>,
    body: String,
    headers: reqwest::header::HeaderMap,
}

async fn get(gw: &Gatehouse, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = client().get(gw.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    Answer {
        status,
        x_cache: header("x-cache"),
        age: header("age").parse().ok(),
        body: resp.text().await.unwrap_or_default(),
        headers,
    }
}

async fn purge(gw: &Gatehouse, body: serde_json::Value) -> (u16, serde_json::Value) {
    let resp = client()
        .post(gw.admin_url("/admin/cache/purge"))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("purge");
    let status = resp.status().as_u16();
    (status, json(resp).await)
}

fn upstream(origin: &Origin) -> String {
    format!(
        "[upstreams.origin]\nbackends = [{{ addr = \"{}\" }}]\n",
        origin.addr
    )
}

fn route(name: &str, extra: &str, cache: &str) -> String {
    format!(
        "[[routes]]\nname = \"{name}\"\npath_prefix = \"/{name}\"\nupstream = \"origin\"\n{extra}\n[routes.cache]\n{cache}\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn responses_are_served_from_the_cache_until_they_expire() {
    let origin = Origin::start();
    let body = format!(
        "{}{}{}",
        upstream(&origin),
        route("c", "", "ttl = \"1s\"\nmax_ttl = \"3s\""),
        "[[routes]]\nname = \"plain\"\npath_prefix = \"/plain\"\nupstream = \"origin\"\n"
    );
    let gw = Gatehouse::builder()
        .admin(Some(ADMIN_TOKEN))
        .access_log_file()
        .start(&body);

    let first = get(&gw, "/c/a", &[]).await;
    assert_eq!((first.status, first.x_cache.as_str()), (200, "MISS"));
    assert!(first.body.starts_with("#1 "), "{}", first.body);
    let second = get(&gw, "/c/a", &[]).await;
    assert_eq!((second.status, second.x_cache.as_str()), (200, "HIT"));
    assert_eq!(second.body, first.body);
    assert!(second.age.is_some(), "a cached response carries Age");
    assert!(second.headers.contains_key("x-request-id"));
    assert_eq!(origin.hits("/c/a"), 1);
    // The query is part of the key.
    assert_eq!(get(&gw, "/c/a?x=1", &[]).await.x_cache, "MISS");
    assert_eq!(get(&gw, "/c/a?x=1", &[]).await.x_cache, "HIT");
    // A route without a cache table: no X-Cache, every request reaches the origin.
    let plain = get(&gw, "/plain/a", &[]).await;
    assert!(!plain.headers.contains_key("x-cache"));
    get(&gw, "/plain/a", &[]).await;
    assert_eq!(origin.hits("/plain/a"), 2);

    // The upstream's max-age wins over ttl, within max_ttl.
    assert_eq!(
        get(&gw, "/c/long?cc=max-age%3D100", &[]).await.x_cache,
        "MISS"
    );
    // No upstream freshness: the route's ttl (1 s).
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let expired = get(&gw, "/c/a", &[]).await;
    assert_eq!(expired.x_cache, "MISS");
    assert!(expired.body.starts_with("#2 "), "{}", expired.body);
    assert_eq!(
        get(&gw, "/c/long?cc=max-age%3D100", &[]).await.x_cache,
        "HIT"
    );
    // max_ttl (3 s) caps max-age=100.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(
        get(&gw, "/c/long?cc=max-age%3D100", &[]).await.x_cache,
        "MISS"
    );
    assert_eq!(origin.hits("/c/long?cc=max-age%3D100"), 2);

    // Counted by result, and logged. Recorded in the logging phase, after the response: wait
    // for the last one.
    let series =
        |result: &str| format!("gatehouse_cache_requests_total{{result=\"{result}\",route=\"c\"}}");
    let mut text = common::metrics_text(&gw).await;
    for _ in 0..50 {
        if sample(&text, &series("miss")) == 5.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        text = common::metrics_text(&gw).await;
    }
    let count = |result: &str| Some(sample(&text, &series(result)));
    assert_eq!(count("hit"), Some(3.0), "{text}");
    assert_eq!(count("miss"), Some(5.0), "{text}");
    assert!(text.contains("gatehouse_cache_entries "), "{text}");
    let lines = common::access_log_lines(&gw, 10).await;
    let caches: Vec<Option<&str>> = lines.iter().map(|l| l["cache"].as_str()).collect();
    assert_eq!(caches[0], Some("MISS"));
    assert_eq!(caches[1], Some("HIT"));
    assert!(
        caches.contains(&None),
        "the plain route logs no cache field"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn what_must_not_be_stored_is_not() {
    let origin = Origin::start();
    let body = format!(
        "{}{}{}{}",
        upstream(&origin),
        route("c", "", "ttl = \"60s\""),
        route("notfound", "", "ttl = \"60s\"\nstatuses = [200, 404]"),
        route("moved", "", "ttl = \"60s\"\nstatuses = [200, 301]"),
    );
    let gw = Gatehouse::start(&body);
    for path in [
        "/c/x?cc=no-store",
        "/c/x?cc=private%2C+max-age%3D60",
        "/c/x?cookie=1",
        "/c/x?status=500&cc=max-age%3D60",
        "/c/x?status=404",
        "/c/x?vary=*",
    ] {
        for _ in 0..2 {
            let a = get(&gw, path, &[]).await;
            assert_eq!(a.x_cache, "MISS", "{path}");
        }
        assert_eq!(origin.hits(path), 2, "{path} reached the origin each time");
    }
    // `no-cache`: stored, but revalidated (here: fetched again) before each use.
    get(&gw, "/c/nc?cc=no-cache", &[]).await;
    get(&gw, "/c/nc?cc=no-cache", &[]).await;
    assert_eq!(origin.hits("/c/nc?cc=no-cache"), 2);
    // A POST never uses the cache.
    for _ in 0..2 {
        let resp = client()
            .post(gw.url("/c/post"))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.headers().get("x-cache").is_none());
    }
    assert_eq!(origin.hits("/c/post"), 2);
    // A route that lists 404 stores it.
    assert_eq!(
        get(&gw, "/notfound/x?status=404", &[]).await.x_cache,
        "MISS"
    );
    let again = get(&gw, "/notfound/x?status=404", &[]).await;
    assert_eq!((again.status, again.x_cache.as_str()), (404, "HIT"));
    // 301 likewise, only where listed.
    assert_eq!(get(&gw, "/c/x?status=301", &[]).await.x_cache, "MISS");
    assert_eq!(get(&gw, "/c/x?status=301", &[]).await.x_cache, "MISS");
    assert_eq!(get(&gw, "/moved/x?status=301", &[]).await.x_cache, "MISS");
    let moved = get(&gw, "/moved/x?status=301", &[]).await;
    assert_eq!((moved.status, moved.x_cache.as_str()), (301, "HIT"));
    assert_eq!(origin.hits("/moved/x?status=301"), 1);
    // A client's Authorization on a public route: stored only if the response allows it.
    let auth = [("authorization", "Bearer some-token-for-the-origin")];
    get(&gw, "/c/authz", &auth).await;
    assert_eq!(get(&gw, "/c/authz", &auth).await.x_cache, "MISS");
    get(&gw, "/c/authz?cc=public%2C+max-age%3D60", &auth).await;
    assert_eq!(
        get(&gw, "/c/authz?cc=public%2C+max-age%3D60", &auth)
            .await
            .x_cache,
        "HIT"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn consumers_get_their_own_entries_and_auth_and_limits_run_before_a_hit() {
    let origin = Origin::start();
    let body =
        format!(
        r#"
[auth.jwt.hmac]
algorithms = ["HS256"]
secret_env = "GATEHOUSE_TEST_HMAC"
issuer = "https://idp.test/"
audiences = ["api.test"]
consumer_claim = "sub"

[rate_limit.tiers.small]
rps = 0.001
burst = 6

{}{}{}"#,
        upstream(&origin),
        route(
            "mine",
            "auth = [\"jwt:hmac\"]\nrate_limit = { key = \"consumer\", default_tier = \"small\" }",
            "ttl = \"60s\""
        ),
        route("shared", "auth = [\"jwt:hmac\"]", "ttl = \"60s\"\nshared = true"),
    );
    let gw = Gatehouse::builder()
        .env("GATEHOUSE_TEST_HMAC", HMAC_SECRET)
        .start(&body);
    let alice = format!(
        "Bearer {}",
        sign_hmac(HMAC_SECRET.as_bytes(), &claims("alice"))
    );
    let bob = format!(
        "Bearer {}",
        sign_hmac(HMAC_SECRET.as_bytes(), &claims("bob"))
    );
    let as_alice = [("authorization", alice.as_str())];
    let as_bob = [("authorization", bob.as_str())];

    let a1 = get(&gw, "/mine/profile", &as_alice).await;
    assert_eq!(a1.x_cache, "MISS");
    assert!(a1.body.contains("consumer=alice"), "{}", a1.body);
    let b1 = get(&gw, "/mine/profile", &as_bob).await;
    assert_eq!(b1.x_cache, "MISS", "bob never gets alice's entry");
    assert!(b1.body.contains("consumer=bob"), "{}", b1.body);
    let a2 = get(&gw, "/mine/profile", &as_alice).await;
    assert_eq!(
        (a2.x_cache.as_str(), a2.body.as_str()),
        ("HIT", a1.body.as_str())
    );
    assert_eq!(origin.hits("/mine/profile"), 2);

    // Authentication runs before a cached response is served.
    let anonymous = get(&gw, "/mine/profile", &[]).await;
    assert_eq!(anonymous.status, 401);
    assert!(!anonymous.body.contains("consumer=alice"));
    let forged = format!(
        "Bearer {}",
        sign_hmac(b"another-secret-of-at-least-32-bytes!!!", &claims("alice"))
    );
    assert_eq!(
        get(&gw, "/mine/profile", &[("authorization", forged.as_str())])
            .await
            .status,
        401
    );
    // So does rate limiting: hits count, and a used-up burst refuses them.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let a = get(&gw, "/mine/profile", &as_alice).await;
        statuses.push((a.status, a.x_cache));
    }
    assert_eq!(
        statuses[..4],
        vec![(200, "HIT".to_string()); 4][..],
        "{statuses:?}"
    );
    assert_eq!(statuses[4].0, 429, "{statuses:?}");
    assert_eq!(statuses[4].1, "", "a refusal is not a cache answer");
    assert_eq!(origin.hits("/mine/profile"), 2);

    // shared = true: every consumer gets the one entry.
    assert_eq!(get(&gw, "/shared/doc", &as_alice).await.x_cache, "MISS");
    let b = get(&gw, "/shared/doc", &as_bob).await;
    assert_eq!(b.x_cache, "HIT");
    assert!(
        b.body.contains("consumer=alice"),
        "shared means shared: {}",
        b.body
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_misses_reach_the_upstream_once() {
    let origin = Origin::start();
    let body = format!("{}{}", upstream(&origin), route("c", "", "ttl = \"60s\""));
    let gw = Gatehouse::start(&body);
    let path = "/c/slow?delay=600";
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let url = gw.url(path);
            tokio::spawn(async move {
                let resp = client().get(url).send().await.unwrap();
                let x_cache = resp.headers()["x-cache"].to_str().unwrap().to_string();
                (resp.status().as_u16(), x_cache, resp.text().await.unwrap())
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    assert_eq!(
        origin.hits(path),
        1,
        "20 concurrent misses, one upstream fetch"
    );
    assert!(answers
        .iter()
        .all(|(s, _, b)| *s == 200 && b.starts_with("#1 ")));
    let misses = answers.iter().filter(|(_, x, _)| x == "MISS").count();
    assert_eq!(misses, 1, "{answers:?}");
    assert_eq!(answers.iter().filter(|(_, x, _)| x == "HIT").count(), 19);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_purge_refetches_every_variant_under_its_prefix() {
    let origin = Origin::start();
    let body = format!(
        "{}{}{}{}",
        upstream(&origin),
        route("c", "", "ttl = \"60s\"\nvary = [\"Accept-Language\"]"),
        route("other", "", "ttl = \"60s\""),
        "[[routes]]\nname = \"plain\"\npath_prefix = \"/plain\"\nupstream = \"origin\"\n",
    );
    let gw = Gatehouse::builder().admin(Some(ADMIN_TOKEN)).start(&body);
    let en = [("accept-language", "en")];
    let fr = [("accept-language", "fr")];
    // Variants by the route's vary and by the upstream's Vary.
    for path in ["/c/items/1", "/c/items/2?vary=Accept-Encoding", "/c/keep"] {
        for lang in [&en, &fr] {
            assert_eq!(get(&gw, path, lang).await.x_cache, "MISS", "{path}");
        }
    }
    // A route without vary, an origin without Vary: one entry for every language.
    assert_eq!(get(&gw, "/other/items/1", &en).await.x_cache, "MISS");
    assert_eq!(get(&gw, "/other/items/1", &fr).await.x_cache, "HIT");
    let en_hit = get(&gw, "/c/items/1", &en).await;
    assert_eq!(en_hit.x_cache, "HIT");
    assert!(en_hit.body.contains("lang=en"), "{}", en_hit.body);
    let fr_hit = get(&gw, "/c/items/1", &fr).await;
    assert_eq!(fr_hit.x_cache, "HIT");
    assert!(fr_hit.body.contains("lang=fr"), "{}", fr_hit.body);

    let (status, answer) = purge(
        &gw,
        serde_json::json!({"route": "c", "path_prefix": "/c/items"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["route"], "c");
    assert!(answer["purged_at"].as_str().is_some());
    for path in ["/c/items/1", "/c/items/2?vary=Accept-Encoding"] {
        for lang in [&en, &fr] {
            let a = get(&gw, path, lang).await;
            assert_eq!(a.x_cache, "MISS", "{path} {lang:?} was purged");
            assert!(a.body.starts_with("#"), "{}", a.body);
            assert_eq!(
                get(&gw, path, lang).await.x_cache,
                "HIT",
                "{path} stored again"
            );
        }
        assert_eq!(
            origin.hits(path),
            4,
            "{path}: two variants, fetched twice each"
        );
    }
    // Outside the prefix, and on other routes: untouched.
    assert_eq!(get(&gw, "/c/keep", &en).await.x_cache, "HIT");
    assert_eq!(get(&gw, "/other/items/1", &fr).await.x_cache, "HIT");
    // Without a prefix: the whole route.
    let (status, _) = purge(&gw, serde_json::json!({"route": "other"})).await;
    assert_eq!(status, 200);
    assert_eq!(get(&gw, "/other/items/1", &fr).await.x_cache, "MISS");
    assert_eq!(get(&gw, "/c/keep", &en).await.x_cache, "HIT");

    // Clear errors.
    let (status, answer) = purge(&gw, serde_json::json!({"route": "nope"})).await;
    assert_eq!(status, 404, "{answer}");
    let (status, answer) = purge(&gw, serde_json::json!({"route": "plain"})).await;
    assert_eq!(status, 409, "{answer}");
    let (status, answer) = purge(
        &gw,
        serde_json::json!({"route": "c", "path_prefix": "items"}),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = purge(&gw, serde_json::json!({"path_prefix": "/c"})).await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("route"),
        "{answer}"
    );
    assert!(answer["request_id"].is_string(), "{answer}");
    let unauthorised = client()
        .post(gw.admin_url("/admin/cache/purge"))
        .body(r#"{"route": "c"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorised.status(), 401);
    let wrong_method = common::admin_get(&gw, "/admin/cache/purge").await;
    assert_eq!(wrong_method.status(), 405);
    assert_eq!(wrong_method.headers()["allow"], "POST");
    let text = common::metrics_text(&gw).await;
    assert!(
        text.lines()
            .any(|l| l == "gatehouse_cache_purges_total{route=\"c\"} 1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_and_revalidated_answers() {
    let origin = Origin::start();
    let body = format!(
        "{}{}{}",
        upstream(&origin),
        route("c", "", "ttl = \"1s\""),
        route("sie", "", "ttl = \"1s\"\nstale_if_error = \"1h\""),
    );
    let gw = Gatehouse::start(&body);

    // An ETag: once stale, the origin is asked If-None-Match and its 304 keeps the entry.
    let path = "/c/e?etag=v1&cc=max-age%3D1";
    let first = get(&gw, path, &[]).await;
    assert_eq!(first.x_cache, "MISS");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let revalidated = get(&gw, path, &[]).await;
    assert_eq!(revalidated.x_cache, "REVALIDATED");
    assert_eq!(revalidated.body, first.body, "the stored body, confirmed");
    assert_eq!(
        get(&gw, path, &[]).await.x_cache,
        "HIT",
        "fresh again after the 304"
    );
    let conditional: Vec<_> = origin
        .requests()
        .into_iter()
        .filter(|(_, target, _)| target == path)
        .collect();
    assert_eq!(conditional.len(), 2);
    assert_eq!(conditional[1].2.as_deref(), Some("\"v1\""));

    // stale-while-revalidate: the stale entry is served at once and refreshed behind it.
    let swr = "/c/swr?cc=max-age%3D1%2C+stale-while-revalidate%3D60";
    get(&gw, swr, &[]).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let stale = get(&gw, swr, &[]).await;
    assert_eq!(stale.x_cache, "STALE");
    assert!(stale.body.starts_with("#1 "), "{}", stale.body);
    let mut refreshed = get(&gw, swr, &[]).await;
    for _ in 0..50 {
        if refreshed.body.starts_with("#2 ") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        refreshed = get(&gw, swr, &[]).await;
    }
    assert_eq!(refreshed.x_cache, "HIT");
    assert!(refreshed.body.starts_with("#2 "), "{}", refreshed.body);

    // stale_if_error: the origin fails once the entry is stale; the stale entry is served.
    let sie = "/sie/x";
    let good = get(&gw, sie, &[]).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    origin.set_failing(true);
    let served = get(&gw, sie, &[]).await;
    assert_eq!((served.status, served.x_cache.as_str()), (200, "STALE"));
    assert_eq!(served.body, good.body);
    // Without a stale_if_error window (the stored /c/e is stale by now) the failure goes to
    // the client.
    let failed = get(&gw, "/c/e?etag=v1&cc=max-age%3D1", &[]).await;
    origin.set_failing(false);
    assert_eq!(failed.status, 500, "{}", failed.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn head_and_ranges_are_answered_from_a_cached_get() {
    let origin = Origin::start();
    let body = format!("{}{}", upstream(&origin), route("c", "", "ttl = \"60s\""));
    let gw = Gatehouse::start(&body);
    let full = get(&gw, "/c/r", &[]).await;
    let head = client().head(gw.url("/c/r")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["x-cache"], "HIT");
    assert_eq!(
        head.headers()["content-length"].to_str().unwrap(),
        full.body.len().to_string()
    );
    let range = get(&gw, "/c/r", &[("range", "bytes=0-2")]).await;
    assert_eq!((range.status, range.body.as_str()), (206, &full.body[..3]));
    assert_eq!(range.x_cache, "HIT");
    // HTTP/2 (h2c, from curl) shares the entries of HTTP/1.1: the key holds the host without
    // the port, from Host or the authority.
    let h2 = std::process::Command::new("curl")
        .args([
            "-s",
            "--http2-prior-knowledge",
            "-D",
            "-",
            "-o",
            "/dev/null",
        ])
        .arg(gw.url("/c/r"))
        .output()
        .expect("curl");
    let head_text = String::from_utf8_lossy(&h2.stdout).to_ascii_lowercase();
    assert!(head_text.starts_with("http/2 200"), "{head_text}");
    assert!(head_text.contains("x-cache: hit"), "{head_text}");
    assert_eq!(origin.hits("/c/r"), 1);
    // A HEAD miss fetches a GET upstream, so the body it stores serves the next GET.
    let head = client().head(gw.url("/c/h")).send().await.unwrap();
    assert_eq!(head.headers()["x-cache"], "MISS");
    let get_after = get(&gw, "/c/h", &[]).await;
    assert_eq!(get_after.x_cache, "HIT");
    assert!(get_after.body.starts_with("#1 /c/h"), "{}", get_after.body);
    let methods: Vec<String> = origin
        .requests()
        .into_iter()
        .filter(|(_, t, _)| t == "/c/h")
        .map(|(m, _, _)| m)
        .collect();
    assert_eq!(methods, ["GET"]);
    // A client's own conditional request gets a 304 from the cache.
    let etagged = "/c/t?etag=abc&cc=max-age%3D60";
    get(&gw, etagged, &[]).await;
    let not_modified = get(&gw, etagged, &[("if-none-match", "\"abc\"")]).await;
    assert_eq!(not_modified.status, 304);
    assert_eq!(origin.hits(etagged), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_stays_within_max_size() {
    let origin = Origin::start();
    let body = format!(
        "[cache]\nmax_size = \"64KiB\"\nmax_object_size = \"16KiB\"\n{}{}",
        upstream(&origin),
        route("c", "", "ttl = \"60s\""),
    );
    let gw = Gatehouse::builder().admin(Some(ADMIN_TOKEN)).start(&body);
    for i in 0..24 {
        let a = get(&gw, &format!("/c/obj{i}?size=10000"), &[]).await;
        assert_eq!((a.status, a.body.len()), (200, 10000));
    }
    // (Which ones stay is up to the sharded LRU: least recently used within a shard, the
    // shard chosen at random between two, the longer one.)
    // Too large for one entry: passed through whole, never stored.
    for _ in 0..2 {
        let big = get(&gw, "/c/big?size=20000", &[]).await;
        assert_eq!(
            (big.status, big.body.len(), big.x_cache.as_str()),
            (200, 20000, "MISS")
        );
    }
    assert_eq!(origin.hits("/c/big?size=20000"), 2);
    // Evictions run just after the admission that exceeds the limit.
    let mut text = common::metrics_text(&gw).await;
    for _ in 0..50 {
        if sample(&text, "gatehouse_cache_stored_bytes") <= 65536.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        text = common::metrics_text(&gw).await;
    }
    assert!(
        sample(&text, "gatehouse_cache_evictions_total") >= 18.0,
        "{text}"
    );
    assert!(
        sample(&text, "gatehouse_cache_stored_bytes") <= 65536.0,
        "{text}"
    );
    assert!(sample(&text, "gatehouse_cache_entries") <= 6.0, "{text}");
    assert!(
        sample(&text, "gatehouse_cache_too_large_total") >= 1.0,
        "{text}"
    );

    // max_size is fixed at start: a reload that changes it applies the rest and says so.
    gw.rewrite_config(&format!(
        "[cache]\nmax_size = \"128KiB\"\nmax_object_size = \"16KiB\"\n{}{}",
        upstream(&origin),
        route("c", "", "ttl = \"60s\"\nkey = [\"path\"]"),
    ));
    let resp = common::admin_post(&gw, "/admin/reload").await;
    let answer = json(resp).await;
    assert_eq!(answer["result"], "applied", "{answer}");
    let needs = answer["needs_upgrade"].to_string();
    assert!(needs.contains("cache"), "{answer}");
    // The route's new key (no query) applies at once.
    assert_eq!(get(&gw, "/c/k?a=1", &[]).await.x_cache, "MISS");
    assert_eq!(get(&gw, "/c/k?a=2", &[]).await.x_cache, "HIT");
    let config = json(common::admin_get(&gw, "/admin/config").await).await;
    assert_eq!(
        config["routes"][0]["cache"]["key"],
        serde_json::json!(["path"])
    );
}
