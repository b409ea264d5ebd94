//! Downstream HTTP/2 settings (`[server.http2]`), read off the wire: the SETTINGS frame the
//! gateway sends to an h2c client (concurrent streams, header list size tied to
//! `[server.limits]`), the idle timeout closing a connection with GOAWAY, and a reload that
//! changes them reported as needing an upgrade.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{admin_post, json, Gatehouse, TestBackend, ADMIN_TOKEN};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One frame: (type, flags, payload).
fn read_frame(s: &mut TcpStream) -> Option<(u8, u8, Vec<u8>)> {
    let mut head = [0u8; 9];
    s.read_exact(&mut head).ok()?;
    let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).ok()?;
    Some((head[3], head[4], payload))
}

/// Opens an h2c connection and returns it with the server's first SETTINGS, by identifier.
fn settings(gw: &Gatehouse) -> (TcpStream, Vec<(u16, u32)>) {
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(PREFACE).unwrap();
    // An empty SETTINGS frame of our own.
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).unwrap();
    let (kind, _, payload) = read_frame(&mut s).expect("a frame");
    assert_eq!(kind, 4, "the server speaks first with SETTINGS");
    let values = payload
        .chunks(6)
        .map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect();
    (s, values)
}

fn value(settings: &[(u16, u32)], id: u16) -> Option<u32> {
    settings.iter().find(|(i, _)| *i == id).map(|(_, v)| *v)
}

const MAX_CONCURRENT_STREAMS: u16 = 3;
const MAX_HEADER_LIST_SIZE: u16 = 6;

fn body(b: &TestBackend) -> String {
    format!(
        "[upstreams.u]\nbackends = [{{ addr = \"{}\" }}]\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\n",
        b.addr_str()
    )
}

#[test]
fn defaults_keep_pingoras_limits() {
    let b = TestBackend::start("b");
    let gw = Gatehouse::start(&body(&b));
    let (_s, v) = settings(&gw);
    assert_eq!(value(&v, MAX_CONCURRENT_STREAMS), Some(100));
    assert_eq!(value(&v, MAX_HEADER_LIST_SIZE), Some(64 * 1024));
}

#[tokio::test(flavor = "multi_thread")]
async fn settings_idle_timeout_and_reload() {
    let b = TestBackend::start("b");
    let gw = Gatehouse::builder()
        .admin(Some(ADMIN_TOKEN))
        .server(
            "[server.limits]\nmax_header_bytes = \"96KiB\"\nmax_headers = 200\n\
             [server.http2]\nmax_concurrent_streams = 7\nidle_timeout = \"1s\"\n\
             max_pending_reset_streams = 5\n",
        )
        .start(&body(&b));
    let (mut s, v) = settings(&gw);
    assert_eq!(value(&v, MAX_CONCURRENT_STREAMS), Some(7));
    // 96 KiB of header bytes and 32 bytes of HTTP/2 overhead per field.
    assert_eq!(value(&v, MAX_HEADER_LIST_SIZE), Some(96 * 1024 + 32 * 200));

    // No stream for the idle timeout: the connection closes.
    let started = Instant::now();
    let mut kinds = Vec::new();
    while let Some((kind, _, _)) = read_frame(&mut s) {
        kinds.push(kind);
    }
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(700) && after < Duration::from_secs(5),
        "{after:?} {kinds:?}"
    );

    // Changing them takes an upgrade: the reload says so.
    let text = std::fs::read_to_string(gw.config_path()).unwrap();
    gw.write_raw_config(&text.replace("max_concurrent_streams = 7", "max_concurrent_streams = 9"));
    let r = json(admin_post(&gw, "/admin/reload").await).await;
    assert_eq!(r["result"], "applied", "{r}");
    let needs = r["needs_upgrade"].as_array().unwrap();
    assert!(needs.iter().any(|n| n == "server.http2"), "{r}");
}
