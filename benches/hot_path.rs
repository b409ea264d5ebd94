//! Hot-path micro-benchmarks: route lookup over 100 routes, backend selection for each
//! balancing policy, the local rate-limit check, and the policy pipeline's phases on a public
//! route (what a route without policies pays). Goals (README): lookup well under 1 µs,
//! selection under 200 ns.

use std::path::Path;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use gatehouse::routing::{RequestView, Router};
use gatehouse::snapshot::Snapshot;
use http::{HeaderMap, Method};

fn config() -> String {
    let mut c = String::from(
        "[upstreams.rr]\nbackends = [{ addr = \"127.0.0.1:1\", weight = 3 }, { addr = \"127.0.0.1:2\" }, { addr = \"127.0.0.1:3\" }, { addr = \"127.0.0.1:4\" }]\n\
         [upstreams.lc]\nbalance = \"least_conn\"\nbackends = [{ addr = \"127.0.0.1:1\" }, { addr = \"127.0.0.1:2\" }, { addr = \"127.0.0.1:3\" }, { addr = \"127.0.0.1:4\" }]\n\
         [upstreams.ch]\nbalance = \"consistent_hash\"\nhash_key = \"header:x-user\"\nbackends = [{ addr = \"127.0.0.1:1\" }, { addr = \"127.0.0.1:2\" }, { addr = \"127.0.0.1:3\" }, { addr = \"127.0.0.1:4\" }]\n",
    );
    for i in 0..100 {
        let matcher = match i % 4 {
            0 => format!("path_exact = \"/svc{i}/exact\""),
            1 => format!("path_prefix = \"/svc{i}\"\nhost = \"*.example.com\""),
            2 => format!("path_prefix = \"/svc{i}/v1\"\nheaders = {{ \"x-tenant\" = \"t{i}\" }}"),
            _ => format!("path_regex = \"^/svc{i}/items/[0-9]+$\""),
        };
        c.push_str(&format!(
            "[[routes]]\nname = \"r{i}\"\n{matcher}\nupstream = \"rr\"\n"
        ));
    }
    c
}

fn routing(c: &mut Criterion) {
    let cfg = gatehouse::config::parse(Path::new("bench.toml"), &config()).expect("valid");
    let router = Router::new(&cfg.routes);
    let mut headers = HeaderMap::new();
    headers.insert("x-tenant", "t98".parse().unwrap());
    headers.insert("user-agent", "bench".parse().unwrap());
    let mut g = c.benchmark_group("route_lookup_100_routes");
    for (name, host, path) in [
        ("prefix_last", Some("a.example.com"), "/svc97/deep/path"),
        ("header_prefix", None, "/svc98/v1/x"),
        ("regex_last", None, "/svc99/items/42"),
        ("exact_last", None, "/svc96/exact"),
        ("no_match", None, "/nothing/here"),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                router.lookup(black_box(&RequestView {
                    method: &Method::GET,
                    host,
                    path,
                    headers: &headers,
                }))
            })
        });
    }
    g.finish();
}

fn selection(c: &mut Criterion) {
    let cfg = gatehouse::config::parse(Path::new("bench.toml"), &config()).expect("valid");
    let snapshot = Snapshot::build(cfg, None, &gatehouse::metrics::Metrics::new());
    let mut g = c.benchmark_group("backend_select_4_backends");
    for (name, cluster) in ["round_robin", "least_conn", "consistent_hash"]
        .into_iter()
        .zip(snapshot.clusters())
    {
        g.bench_function(name, |b| {
            b.iter(|| cluster.pick(black_box(Some(b"user-12345")), 0, 0))
        });
    }
    g.finish();
}

fn rate_limit(c: &mut Criterion) {
    let src = "[rate_limit.tiers.free]\nrps = 1000000\nburst = 1000000\ndaily_quota = 1000000000000\n\
               [upstreams.u]\nbackends = [{ addr = \"127.0.0.1:1\" }]\n\
               [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\nrate_limit = { key = \"consumer\", default_tier = \"free\" }\nauth = [\"api_key:k\"]\n\
               [auth.api_keys.k]\nkeys_file = \"/dev/null\"\n";
    let cfg = gatehouse::config::parse(Path::new("bench.toml"), src).expect("valid");
    let snapshot = Snapshot::build(cfg, None, &gatehouse::metrics::Metrics::new());
    let limiter = snapshot.ratelimit();
    c.bench_function("ratelimit_local_check", |b| {
        b.iter(|| limiter.check_local_for_bench(black_box("consumer-12345"), 0))
    });
}

/// The pipeline phases of a public route: `on_request` and `on_response` find no policy (one
/// bit test); `on_upstream_request` strips client copies of the identity headers.
fn pipeline(c: &mut Criterion) {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    use gatehouse::config::RouteId;
    use gatehouse::policy::RequestState;
    use pingora::http::{RequestHeader, ResponseHeader};

    let src = "[upstreams.u]\nbackends = [{ addr = \"127.0.0.1:1\" }]\n\
               [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\n";
    let cfg = gatehouse::config::parse(Path::new("bench.toml"), src).expect("valid");
    let snapshot = Snapshot::build(cfg, None, &gatehouse::metrics::Metrics::new());
    let pipeline = snapshot.pipeline(RouteId::new(0));
    let mut req = RequestHeader::build("GET", b"/users/7", None).expect("request");
    req.insert_header("host", "api.example.com")
        .expect("header");
    req.insert_header("user-agent", "bench").expect("header");
    let mut resp = ResponseHeader::build(200, None).expect("response");
    let mut state = RequestState::default();
    let mut cx = Context::from_waker(Waker::noop());
    let mut g = c.benchmark_group("pipeline_public_route");
    g.bench_function("on_request", |b| {
        b.iter(|| {
            let fut = std::pin::pin!(pipeline.on_request(black_box(&req), &mut state));
            matches!(fut.poll(&mut cx), Poll::Ready(Ok(())))
        })
    });
    let mut upstream = req.clone();
    g.bench_function("on_upstream_request", |b| {
        b.iter(|| pipeline.on_upstream_request(&req, black_box(&mut upstream), &state))
    });
    g.bench_function("on_response", |b| {
        b.iter(|| pipeline.on_response(&req, black_box(&mut resp), &mut state))
    });
    g.finish();
}

criterion_group!(benches, routing, selection, rate_limit, pipeline);
criterion_main!(benches);
