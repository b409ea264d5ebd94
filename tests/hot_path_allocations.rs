//! Route lookup and backend selection allocate nothing: counted with a global allocator
//! wrapper over the calling thread only.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;

use gatehouse::config::RouteId;
use gatehouse::routing::{RequestView, RouteMatch, Router};
use gatehouse::snapshot::Snapshot;
use http::{HeaderMap, Method};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

/// 100 routes: exact, prefix (with hosts and headers) and regex, over three upstreams.
fn config() -> String {
    let mut c = String::from(
        "[upstreams.rr]\nbackends = [{ addr = \"127.0.0.1:1\", weight = 3 }, { addr = \"127.0.0.1:2\" }]\n\
         [upstreams.lc]\nbalance = \"least_conn\"\nbackends = [{ addr = \"127.0.0.1:1\" }, { addr = \"127.0.0.1:2\" }]\n\
         [upstreams.ch]\nbalance = \"consistent_hash\"\nhash_key = \"header:x-user\"\nbackends = [{ addr = \"127.0.0.1:1\" }, { addr = \"127.0.0.1:2\" }, { addr = \"127.0.0.1:3\" }]\n",
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

#[test]
fn route_lookup_allocates_nothing() {
    let cfg = gatehouse::config::parse(Path::new("bench.toml"), &config()).expect("valid");
    let router = Router::new(&cfg.routes);
    let mut headers = HeaderMap::new();
    headers.insert("x-tenant", "t98".parse().unwrap());
    let requests = [
        (Some("a.example.com"), "/svc97/deep/path"),
        (None, "/svc98/v1/x"),
        (None, "/svc99/items/42"),
        (None, "/svc96/exact"),
        (None, "/nothing/here"),
    ];
    let lookup = |host: Option<&str>, path: &str| {
        router.lookup(&RequestView {
            method: &Method::GET,
            host,
            path,
            headers: &headers,
        })
    };
    // Warm-up: the regex engine sets up its per-thread cache on first use.
    for (h, p) in requests {
        lookup(h, p);
    }
    let mut results = Vec::with_capacity(5000);
    let n = allocations_during(|| {
        for _ in 0..1000 {
            for (h, p) in requests {
                results.push(lookup(h, p));
            }
        }
    });
    assert_eq!(n, 0, "lookups allocated {n} times");
    assert_eq!(results[0], RouteMatch::Found(RouteId::new(97)));
    assert_eq!(results[1], RouteMatch::Found(RouteId::new(98)));
    assert_eq!(results[2], RouteMatch::Found(RouteId::new(99)));
    assert_eq!(results[3], RouteMatch::Found(RouteId::new(96)));
    assert_eq!(results[4], RouteMatch::NotFound);
}

#[test]
fn backend_selection_allocates_nothing() {
    let cfg = gatehouse::config::parse(Path::new("bench.toml"), &config()).expect("valid");
    let snapshot = Snapshot::build(cfg, None, &gatehouse::metrics::Metrics::new());
    let clusters = snapshot.clusters();
    let mut picks = Vec::with_capacity(3000);
    for c in clusters {
        let _ = c.pick(Some(b"user-1"), 0, 0);
    }
    let n = allocations_during(|| {
        for i in 0..1000u32 {
            let key = i.to_le_bytes();
            for c in clusters {
                picks.push(c.pick(Some(&key), 0, 0).ok().map(|(i, _)| i));
            }
        }
    });
    assert_eq!(n, 0, "selection allocated {n} times");
    assert!(picks.iter().all(Option::is_some));
}

#[test]
fn the_counter_sees_allocations() {
    let n = allocations_during(|| {
        std::hint::black_box(vec![1u8; 16]);
    });
    assert!(n >= 1);
}

#[test]
fn local_rate_limit_check_allocates_nothing() {
    let src = "[rate_limit.tiers.free]\nrps = 1000\nburst = 100000\ndaily_quota = 100000000\n\
               [upstreams.u]\nbackends = [{ addr = \"127.0.0.1:1\" }]\n\
               [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\nrate_limit = { key = \"client_ip\", default_tier = \"free\" }\n";
    let cfg = gatehouse::config::parse(Path::new("bench.toml"), src).expect("valid");
    let snapshot = Snapshot::build(cfg, None, &gatehouse::metrics::Metrics::new());
    let limiter = snapshot.ratelimit();
    // The first check of a key inserts it into its shard.
    limiter.check_local_for_bench("consumer-1", 0);
    let mut allowed = 0;
    let n = allocations_during(|| {
        for _ in 0..1000 {
            allowed += usize::from(limiter.check_local_for_bench("consumer-1", 0).allowed);
        }
    });
    assert_eq!(n, 0, "local checks allocated {n} times");
    assert_eq!(allowed, 1000);
}

#[test]
fn a_public_routes_pipeline_allocates_nothing() {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    use gatehouse::policy::RequestState;
    use pingora::http::{RequestHeader, ResponseHeader};

    let src = "[upstreams.u]\nbackends = [{ addr = \"127.0.0.1:1\" }]\n\
               [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\n";
    let cfg = gatehouse::config::parse(Path::new("bench.toml"), src).expect("valid");
    let snapshot = Snapshot::build(cfg, None, &gatehouse::metrics::Metrics::new());
    let pipeline = snapshot.pipeline(RouteId::new(0));
    let mut req = RequestHeader::build("GET", b"/users/7", None).unwrap();
    req.insert_header("host", "api.example.com").unwrap();
    let mut upstream = req.clone();
    let mut resp = ResponseHeader::build(200, None).unwrap();
    let mut state = RequestState::default();
    let mut cx = Context::from_waker(Waker::noop());
    let mut ready = 0;
    let n = allocations_during(|| {
        for _ in 0..1000 {
            {
                let fut = std::pin::pin!(pipeline.on_request(&req, &mut state));
                ready += usize::from(matches!(fut.poll(&mut cx), Poll::Ready(Ok(()))));
            }
            pipeline
                .on_upstream_request(&req, &mut upstream, &state)
                .unwrap();
            pipeline.on_response(&req, &mut resp, &mut state).unwrap();
        }
    });
    assert_eq!(n, 0, "the pipeline allocated {n} times");
    assert_eq!(ready, 1000);
}
