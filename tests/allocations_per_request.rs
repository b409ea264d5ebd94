//! Heap allocations per proxied request, whole request path: the real gateway
//! (`gatehouse::server::run`, Pingora and all) runs in this test process under a counting
//! global allocator, a plain-`std` backend answers on loopback, and a plain-`std` client sends
//! keep-alive requests; neither allocates per request, so the count is the gateway's.
//!
//! The figures are deterministic (same code, same requests), unlike timings on these VMs, so
//! a regression shows here without a benchmark run. Budgets are the measured counts plus a
//! small margin; the bare Pingora reference proxy makes 75 per request
//! (`BARE=… scripts/instructions-per-request.sh`, same requests), and the README has the
//! history. One test function: the gateway runs until the process exits.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::in_process::{fixed_backend, read_fixed_response, start_gateway};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Sends `request` `n` times on one keep-alive connection; every answer must be a 200.
fn send(port: u16, request: &[u8], n: usize) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for _ in 0..n {
        s.write_all(request).unwrap();
        read_fixed_response(&mut s);
    }
}

fn allocations_per_request(port: u16, request: &[u8]) -> f64 {
    const N: usize = 2000;
    send(port, request, 200);
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    send(port, request, N);
    let after = ALLOCATIONS.load(Ordering::Relaxed);
    (after - before) as f64 / N as f64
}

#[test]
fn allocations_per_request_stay_within_budget() {
    let backend_port = fixed_backend();
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let secret = "allocation-test-hmac-secret-of-32-bytes";
    let config = format!(
        r#"[server]
listen = ["127.0.0.1:{port}"]
threads = 1
pid_file = "{d}/gatehouse.pid"
upgrade_sock = "{d}/upgrade.sock"
[access_log]
enabled = false
[auth.jwt.j]
algorithms = ["HS256"]
secret_env = "ALLOCATION_TEST_SECRET"
tier_claim = "tier"
[rate_limit.tiers.big]
rps = 10000000
burst = 100000000
[upstreams.b]
backends = [{{ addr = "127.0.0.1:{backend_port}" }}]
[[routes]]
name = "plain"
path_prefix = "/plain"
upstream = "b"
[[routes]]
name = "jwt"
path_prefix = "/jwt"
upstream = "b"
auth = ["jwt:j"]
rate_limit = {{ key = "consumer", default_tier = "big" }}
"#,
        d = dir.path().display()
    );
    // SAFETY of the environment: set before any other thread of this process reads it.
    unsafe { std::env::set_var("ALLOCATION_TEST_SECRET", secret) };
    start_gateway(dir.path(), &config, port);

    let token = common::jwt::sign_hmac(
        secret.as_bytes(),
        &serde_json::json!({"sub": "bench", "tier": "big", "exp": 4_000_000_000u64}),
    );
    let plain =
        b"GET /plain HTTP/1.1\r\nHost: gw\r\nUser-Agent: allocations\r\nAccept: */*\r\n\r\n";
    let jwt = format!(
        "GET /jwt HTTP/1.1\r\nHost: gw\r\nUser-Agent: allocations\r\nAccept: */*\r\n\
         Authorization: Bearer {token}\r\n\r\n"
    );
    let routing = allocations_per_request(port, plain);
    let jwt_rl = allocations_per_request(port, jwt.as_bytes());
    println!(
        "allocations per request: routing only {routing:.1}, JWT HS256 + rate limit {jwt_rl:.1}"
    );
    // Budgets: measured 2026-12-01 plus 3 (timer buckets and pooled buffers make ±1).
    assert!(
        routing <= ROUTING_BUDGET,
        "routing only: {routing:.1} allocations per request"
    );
    assert!(
        jwt_rl <= JWT_RL_BUDGET,
        "JWT + rate limit: {jwt_rl:.1} allocations per request"
    );
}

const ROUTING_BUDGET: f64 = 89.0;
const JWT_RL_BUDGET: f64 = 96.0;
