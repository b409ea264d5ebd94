//! For tests that run the gateway inside the test process (under a counting global
//! allocator): a plain-`std` keep-alive backend and client that allocate nothing per request,
//! so that what the allocator counts is the gateway's, and the in-process start itself.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use clap::Parser;

/// What [`fixed_backend`] answers to every request.
pub const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 22\r\nContent-Type: text/plain\r\n\r\nhello from the backend";

/// The body of [`RESPONSE`]: every answer ends with it.
const BODY: &[u8] = b"hello from the backend";

/// A keep-alive backend that answers every request head with [`RESPONSE`], allocation-free;
/// returns its port.
pub fn fixed_backend() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                let mut filled = 0;
                loop {
                    match conn.read(&mut buf[filled..]) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => filled += n,
                    }
                    while let Some(end) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
                        if conn.write_all(RESPONSE).is_err() {
                            return;
                        }
                        buf.copy_within(end + 4..filled, 0);
                        filled -= end + 4;
                    }
                }
            });
        }
    });
    port
}

/// Reads one answer from [`fixed_backend`] through the gateway, allocation-free; it must be a
/// 200.
pub fn read_fixed_response(s: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    let mut filled = 0;
    loop {
        let got = s.read(&mut buf[filled..]).unwrap();
        assert!(got > 0, "connection closed");
        filled += got;
        if buf[..filled].ends_with(BODY) {
            break;
        }
    }
    assert!(
        buf.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..filled])
    );
}

/// Writes `config` to `dir`, runs the gateway on it in a thread of this process (it runs
/// until the process exits) and waits until `port` accepts connections.
pub fn start_gateway(dir: &std::path::Path, config: &str, port: u16) {
    let path = dir.join("gatehouse.toml");
    std::fs::write(&path, config).unwrap();
    let cli = gatehouse::cli::Cli::parse_from(["gatehouse", "-c", path.to_str().unwrap()]);
    let loaded = gatehouse::config::load(&cli.config).expect("valid configuration");
    std::thread::spawn(move || gatehouse::server::run(loaded, &cli));
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "gateway did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
