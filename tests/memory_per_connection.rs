//! Heap bytes held per idle keep-alive client connection: the real gateway
//! (`gatehouse::server::run`, Pingora and all) runs in this test process under a global
//! allocator that counts live bytes, a plain-`std` backend answers on loopback, and plain-`std`
//! clients open connections, send one request each and stay idle. The live-byte delta over the
//! connections, divided by their number, is what each idle connection costs the gateway's heap
//! (the kernel's socket buffers are not in it, as they are not in nginx's figures either).
//!
//! Deterministic, unlike RSS on these VMs, so a regression shows in the test suite; the
//! side-by-side figures (RSS, next to nginx and bare Pingora) come from
//! `scripts/proxy-bench.py`. With `MEMORY_SIZES=1` the test also prints the allocation sizes
//! that each idle connection keeps alive, and with `MEMORY_TRACE=1` where allocations of 1 KiB
//! or more are made, to find where the bytes go. One test function: the
//! gateway runs until the process exits.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use common::in_process::{fixed_backend, read_fixed_response, start_gateway};

struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);

/// Live allocations per size class (16-byte classes up to 128 KiB; the last takes the rest).
const CLASSES: usize = 8192;
static BY_SIZE: [AtomicI64; CLASSES] = [const { AtomicI64::new(0) }; CLASSES];

fn class(size: usize) -> usize {
    (size / 16).min(CLASSES - 1)
}

/// With `MEMORY_TRACE=1`: while connections are being measured, the first allocation of each
/// size class of 1 KiB or more prints where it was made (a backtrace, Rust frames only).
static TRACE: AtomicBool = AtomicBool::new(false);
static TRACED: [AtomicBool; CLASSES] = [const { AtomicBool::new(false) }; CLASSES];

thread_local! {
    static TRACING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn trace(size: usize) {
    if size < 1024
        || !TRACE.load(Ordering::Relaxed)
        || TRACED[class(size)].swap(true, Ordering::Relaxed)
    {
        return;
    }
    TRACING.with(|busy| {
        if busy.replace(true) {
            return;
        }
        let text = std::backtrace::Backtrace::force_capture().to_string();
        let frames: Vec<&str> = text
            .lines()
            .filter(|l| {
                !l.contains(" at ")
                    && (l.contains("pingora")
                        || l.contains("gatehouse")
                        || l.contains("h2::")
                        || l.contains("tokio::runtime::task::core::Cell"))
            })
            .take(6)
            .collect();
        eprintln!("{size} B allocated in:\n{}", frames.join("\n"));
        busy.set(false);
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        trace(layout.size());
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        BY_SIZE[class(layout.size())].fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        BY_SIZE[class(layout.size())].fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        BY_SIZE[class(layout.size())].fetch_sub(1, Ordering::Relaxed);
        BY_SIZE[class(new_size)].fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        BY_SIZE[class(layout.size())].fetch_sub(1, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A WebSocket backend: answers every upgrade with 101 and then holds the connection, silent.
fn ws_backend() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut filled = 0;
                while !buf[..filled].windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf[filled..]) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => filled += n,
                    }
                }
                let _ = conn.write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                      Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
                );
                // Hold until the gateway closes.
                while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    port
}

/// What an idle connection made before going quiet.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// One HTTP/1.1 keep-alive request.
    Http1,
    /// HTTP/2 with prior knowledge (h2c): one request on stream 1.
    H2c,
    /// An HTTP/1.1 upgrade to a WebSocket (101), then nothing.
    WebSocket,
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// One connection that makes its request of `kind`, reads the answer and stays open.
fn open_idle(port: u16, kind: Kind) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    match kind {
        Kind::Http1 => {
            s.write_all(b"GET /plain HTTP/1.1\r\nHost: gw\r\nUser-Agent: memory\r\n\r\n")
                .unwrap();
            read_fixed_response(&mut s);
        }
        Kind::WebSocket => {
            s.write_all(
                b"GET /ws HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                  Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            )
            .unwrap();
            let mut buf = [0u8; 1024];
            let mut filled = 0;
            while !buf[..filled].windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf[filled..]).unwrap();
                assert!(n > 0, "connection closed");
                filled += n;
            }
            assert!(
                buf.starts_with(b"HTTP/1.1 101"),
                "{}",
                String::from_utf8_lossy(&buf[..filled])
            );
        }
        Kind::H2c => {
            // HPACK: :method GET, :scheme http (static table), :path and :authority as
            // literals without indexing.
            let mut block = vec![0x82, 0x86, 0x04, 6];
            block.extend_from_slice(b"/plain");
            block.extend_from_slice(&[0x01, 2]);
            block.extend_from_slice(b"gw");
            let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
            out.extend(frame(4, 0, 0, &[]));
            out.extend(frame(1, 0x5, 1, &block));
            s.write_all(&out).unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            'read: loop {
                let n = s.read(&mut chunk).unwrap();
                assert!(n > 0, "connection closed");
                buf.extend_from_slice(&chunk[..n]);
                while buf.len() >= 9 {
                    let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
                    if buf.len() < 9 + len {
                        break;
                    }
                    let (ftype, flags) = (buf[3], buf[4]);
                    if ftype == 4 && flags & 1 == 0 {
                        s.write_all(&frame(4, 1, 0, &[])).unwrap();
                    }
                    assert_ne!(ftype, 7, "GOAWAY from the gateway");
                    buf.drain(..9 + len);
                    if (ftype == 0 || ftype == 1) && flags & 1 != 0 {
                        break 'read;
                    }
                }
            }
        }
    }
    s
}

/// Opens `n` connections of `kind` one after another (so that no more than one request is in
/// flight), and returns them idle.
fn idle_connections(port: u16, n: usize, kind: Kind) -> Vec<TcpStream> {
    (0..n).map(|_| open_idle(port, kind)).collect()
}

fn snapshot() -> Vec<i64> {
    BY_SIZE.iter().map(|c| c.load(Ordering::Relaxed)).collect()
}

/// Live heap bytes per idle connection over `n` connections (after warming up with as many,
/// so that pools, timer wheels and lazily built state exist before the measurement).
fn bytes_per_idle_connection(port: u16, n: usize, kind: Kind) -> f64 {
    drop(idle_connections(port, n, kind));
    std::thread::sleep(Duration::from_millis(300));
    let before = LIVE.load(Ordering::Relaxed);
    let sizes_before = snapshot();
    TRACE.store(
        std::env::var_os("MEMORY_TRACE").is_some(),
        Ordering::Relaxed,
    );
    let conns = idle_connections(port, n, kind);
    TRACE.store(false, Ordering::Relaxed);
    // Let the gateway finish each response and park the connection in its keep-alive wait.
    std::thread::sleep(Duration::from_millis(300));
    let after = LIVE.load(Ordering::Relaxed);
    if std::env::var_os("MEMORY_SIZES").is_some() {
        let sizes_after = snapshot();
        println!("{kind:?}: allocations kept per idle connection, by size:");
        for (i, (a, b)) in sizes_after.iter().zip(&sizes_before).enumerate() {
            let per = (a - b) as f64 / n as f64;
            if per.abs() >= 0.2 {
                println!("  {:>6}-{:<6} B  {per:+.2}", i * 16, i * 16 + 15);
            }
        }
    }
    drop(conns);
    (after - before) as f64 / n as f64
}

#[test]
fn idle_keepalive_connections_stay_within_budget() {
    let backend_port = fixed_backend();
    let ws_port = ws_backend();
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let config = format!(
        r#"[server]
listen = ["127.0.0.1:{port}"]
threads = 1
pid_file = "{d}/gatehouse.pid"
upgrade_sock = "{d}/upgrade.sock"
[access_log]
enabled = false
[upstreams.b]
backends = [{{ addr = "127.0.0.1:{backend_port}" }}]
[upstreams.ws]
backends = [{{ addr = "127.0.0.1:{ws_port}" }}]
[[routes]]
name = "plain"
path_prefix = "/plain"
upstream = "b"
[[routes]]
name = "ws"
path_prefix = "/ws"
upstream = "ws"
"#,
        d = dir.path().display()
    );
    start_gateway(dir.path(), &config, port);

    let plain = bytes_per_idle_connection(port, 200, Kind::Http1);
    let h2c = bytes_per_idle_connection(port, 200, Kind::H2c);
    let ws = bytes_per_idle_connection(port, 100, Kind::WebSocket);
    println!(
        "heap bytes per idle connection: HTTP/1.1 keep-alive {plain:.0}, HTTP/2 (h2c) {h2c:.0}, \
         WebSocket {ws:.0}"
    );
    assert!(
        plain <= HTTP1_BUDGET,
        "HTTP/1.1: {plain:.0} bytes per idle connection"
    );
    assert!(
        h2c <= H2_BUDGET,
        "HTTP/2: {h2c:.0} bytes per idle connection"
    );
    assert!(
        ws <= WS_BUDGET,
        "WebSocket: {ws:.0} bytes per idle connection"
    );
}

// Budgets: measured 2026-12-02 plus a margin. HTTP/1.1: the connection's task, its stream
// wrapper and Pingora's write buffer (README, "Memory per connection"); Pingora's 64 KiB read
// buffer, per-request future and head buffer are no longer held while idle.
const HTTP1_BUDGET: f64 = 8.0 * 1024.0;
const H2_BUDGET: f64 = 64.0 * 1024.0;
const WS_BUDGET: f64 = 192.0 * 1024.0;
