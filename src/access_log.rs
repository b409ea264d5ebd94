//! The access log: one JSON object per line with flat keys, written by a background service so
//! that the request path only formats a line and hands it over (never blocks on I/O). When the
//! writer falls behind, lines are dropped and counted rather than slowing requests down.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
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
    /// RFC 3339 UTC with milliseconds.
    pub time: String,
    /// The request id.
    pub request_id: &'a str,
    /// Client IP after trusted-proxy resolution.
    pub client_ip: Option<IpAddr>,
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
    pub backend: Option<String>,
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
}

/// The request-path side of the access log.
pub struct AccessLog {
    tx: Option<mpsc::Sender<String>>,
    include_query: bool,
    dropped: IntCounter,
}

/// The background service that writes lines out.
pub struct AccessLogWriter {
    rx: Mutex<Option<mpsc::Receiver<String>>>,
    path: Option<PathBuf>,
}

/// Builds the access log and, when enabled, its writer service.
pub fn new(
    settings: &AccessLogSettings,
    dropped: IntCounter,
) -> (AccessLog, Option<AccessLogWriter>) {
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
        Some(AccessLogWriter {
            rx: Mutex::new(Some(rx)),
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
        match serde_json::to_string(entry) {
            Ok(line) => {
                if tx.try_send(line).is_err() {
                    self.dropped.inc();
                }
            }
            Err(e) => log::error!("access log entry not serialisable: {e}"),
        }
    }
}

/// The current time in the log's format.
pub fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

#[async_trait]
impl BackgroundService for AccessLogWriter {
    async fn start(&self, _shutdown: ShutdownWatch) {
        // Shutdown is deliberately not watched: requests keep finishing (and being logged)
        // through the grace period, and every batch is flushed as soon as it is written.
        let Some(mut rx) = self.rx.lock().ok().and_then(|mut r| r.take()) else {
            return;
        };
        let mut out: Box<dyn Write + Send> = match &self.path {
            None => Box::new(std::io::stdout()),
            Some(path) => match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                Ok(f) => Box::new(f),
                Err(e) => {
                    log::error!(
                        "cannot open access log {}: {e}; access logging is off",
                        path.display()
                    );
                    return;
                }
            },
        };
        let mut buf = Vec::with_capacity(64 * 1024);
        loop {
            let Some(first) = rx.recv().await else { break };
            buf.extend_from_slice(first.as_bytes());
            buf.push(b'\n');
            while let Ok(line) = rx.try_recv() {
                buf.extend_from_slice(line.as_bytes());
                buf.push(b'\n');
                if buf.len() > 256 * 1024 {
                    break;
                }
            }
            // This service runs on its own runtime: a blocking write here never delays requests.
            if let Err(e) = out.write_all(&buf).and_then(|_| out.flush()) {
                log::error!("access log write failed: {e}");
            }
            buf.clear();
        }
    }
}
