//! The access log's request side (domain layer): one JSON object per line with flat keys,
//! formatted on the request path and handed over a bounded channel (never blocking on I/O) to
//! the writer service ([`crate::services::access_log`]). When the writer falls behind, lines
//! are dropped and counted rather than slowing requests down.

use std::path::PathBuf;
use std::time::SystemTime;

use prometheus::IntCounter;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::AccessLogSettings;

/// Lines buffered between the request path and the writer.
const BUFFER_LINES: usize = 16 * 1024;

/// One access log record. Credentials never appear here: only configured names, the client
/// address and request line fields.
#[derive(Serialize)]
pub struct Entry<'a> {
    /// RFC 3339 UTC with milliseconds (see [`Clock`]).
    pub time: &'a str,
    /// The request id.
    pub request_id: &'a str,
    /// W3C trace id (32 hex digits): the caller's, or a new one.
    pub trace_id: &'a str,
    /// The gateway's span id in that trace (16 hex digits).
    pub span_id: &'a str,
    /// Client IP after trusted-proxy resolution.
    pub client_ip: Option<&'a str>,
    /// Request method.
    pub method: &'a str,
    /// Host header or authority.
    pub host: Option<&'a str>,
    /// Path, without the query unless `include_query`.
    pub path: &'a str,
    /// Matched route name.
    pub route: Option<&'a str>,
    /// Upstream name.
    pub upstream: Option<&'a str>,
    /// Backend address of the last attempt.
    pub backend: Option<&'a str>,
    /// Status sent to the client (0 if none).
    pub status: u16,
    /// Total time in milliseconds.
    pub duration_ms: f64,
    /// Time from backend choice to response header, in milliseconds.
    pub upstream_ms: Option<f64>,
    /// Response body bytes sent.
    pub bytes_sent: usize,
    /// The authenticated consumer, if any.
    pub consumer: Option<&'a str>,
    /// The provider that authenticated it (`jwt:NAME`, `api_key:NAME`).
    pub auth_method: Option<&'a str>,
    /// The rate-limit tier applied, on limited routes.
    pub tier: Option<&'a str>,
    /// Whether the request was refused by the rate limit (on limited routes).
    pub rate_limited: Option<bool>,
    /// The `grpc-status` of a gRPC answer the gateway wrote itself (its `status` is then the
    /// HTTP status that answer stands for, although HTTP 200 went on the wire).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<&'static str>,
    /// On a caching route, what the cache did: `HIT`, `MISS`, `STALE` or `REVALIDATED` (the
    /// `X-Cache` header sent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<&'static str>,
}

/// The request-path side of the access log.
#[derive(Clone)]
pub struct AccessLog {
    tx: Option<mpsc::Sender<String>>,
    include_query: bool,
    dropped: IntCounter,
}

/// The lines queued for the writer, and where they go (`None`: stdout).
pub struct Lines {
    /// The queue.
    pub rx: mpsc::Receiver<String>,
    /// The file to append to.
    pub path: Option<PathBuf>,
}

/// Builds the access log and, when enabled, the queue its writer drains.
pub fn new(settings: &AccessLogSettings, dropped: IntCounter) -> (AccessLog, Option<Lines>) {
    if !settings.enabled {
        return (
            AccessLog {
                tx: None,
                include_query: false,
                dropped,
            },
            None,
        );
    }
    let (tx, rx) = mpsc::channel(BUFFER_LINES);
    (
        AccessLog {
            tx: Some(tx),
            include_query: settings.include_query,
            dropped,
        },
        Some(Lines {
            rx,
            path: settings.path.clone(),
        }),
    )
}

impl AccessLog {
    /// Whether lines are being written at all.
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Whether the query string is logged.
    pub fn include_query(&self) -> bool {
        self.include_query
    }

    /// Queues one record; never waits.
    pub fn log(&self, entry: &Entry<'_>) {
        let Some(tx) = &self.tx else { return };
        // One allocation, sized for a typical line (serialising into a growing `String`
        // reallocated it several times).
        let mut line = Vec::with_capacity(LINE_CAPACITY);
        match serde_json::to_writer(&mut line, entry) {
            Ok(()) => {
                // serde_json writes UTF-8 only.
                let line = String::from_utf8(line).unwrap_or_default();
                if tx.try_send(line).is_err() {
                    self.dropped.inc();
                }
            }
            Err(e) => log::error!("access log entry not serialisable: {e}"),
        }
    }
}

/// Room for a typical line: one allocation per line.
const LINE_CAPACITY: usize = 512;

/// The current time in the log's format (RFC 3339, UTC, milliseconds), written into a
/// per-thread buffer: the date and time are formatted once per second, the milliseconds
/// per line.
pub struct Clock {
    second: u64,
    text: [u8; 24],
}

impl Clock {
    /// The current time as text, valid until the next call on this thread.
    pub fn with_now<R>(f: impl FnOnce(&str) -> R) -> R {
        thread_local! {
            static CLOCK: std::cell::RefCell<Clock> =
                const { std::cell::RefCell::new(Clock { second: u64::MAX, text: [0; 24] }) };
        }
        let now = SystemTime::now();
        CLOCK.with_borrow_mut(|c| f(c.render(now)))
    }

    fn render(&mut self, now: SystemTime) -> &str {
        let since = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let second = since.as_secs();
        if second != self.second {
            // "2026-12-01T22:10:33.123Z": humantime writes the whole stamp; keep the seconds.
            let full = humantime::format_rfc3339_millis(now).to_string();
            if full.len() != self.text.len() {
                // Outside years 0000-9999: not cached.
                self.second = u64::MAX;
                let n = full.len().min(self.text.len());
                self.text[..n].copy_from_slice(&full.as_bytes()[..n]);
                return std::str::from_utf8(&self.text[..n]).unwrap_or("");
            }
            self.text.copy_from_slice(full.as_bytes());
            self.second = second;
        }
        let ms = since.subsec_millis();
        // Always ASCII digits: ".mmmZ" at the end.
        self.text[20] = b'0' + (ms / 100) as u8;
        self.text[21] = b'0' + (ms / 10 % 10) as u8;
        self.text[22] = b'0' + (ms % 10) as u8;
        std::str::from_utf8(&self.text).unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_clock_writes_what_humantime_writes() {
        let mut clock = Clock {
            second: u64::MAX,
            text: [0; 24],
        };
        let start = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_163_033_007);
        // Within one second (cached date), across seconds, minutes and a day.
        for offset_ms in [0, 1, 99, 993, 1_000, 59_999, 60_000, 86_400_123, 86_400_124] {
            let t = start + Duration::from_millis(offset_ms);
            let want = humantime::format_rfc3339_millis(t).to_string();
            assert_eq!(clock.render(t), want);
        }
    }

    #[test]
    fn entries_serialise_as_one_json_object() {
        let entry = Entry {
            time: "2026-12-01T22:10:33.123Z",
            request_id: "id-1",
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736",
            span_id: "00f067aa0ba902b7",
            client_ip: Some("192.0.2.1"),
            method: "GET",
            host: Some("api.example.com"),
            path: "/a\"b",
            route: Some("r"),
            upstream: Some("u"),
            backend: Some("127.0.0.1:9001"),
            status: 200,
            duration_ms: 1.5,
            upstream_ms: None,
            bytes_sent: 10,
            consumer: None,
            auth_method: None,
            tier: None,
            rate_limited: None,
            grpc_status: None,
            cache: None,
        };
        let line = serde_json::to_string(&entry).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["path"], "/a\"b");
        assert_eq!(v["client_ip"], "192.0.2.1");
        assert_eq!(v["backend"], "127.0.0.1:9001");
        assert_eq!(v["time"], "2026-12-01T22:10:33.123Z");
    }
}
