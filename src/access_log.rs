//! The access log's request side (domain layer): one JSON object per line with flat keys,
//! formatted on the request path and handed over a bounded channel (never blocking on I/O) to
//! the writer service ([`crate::services::access_log`]). When the writer falls behind, lines
//! are dropped and counted rather than slowing requests down.

use std::net::IpAddr;
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
    /// The `grpc-status` of a gRPC answer the gateway wrote itself (its `status` is then the
    /// HTTP status that answer stands for, although HTTP 200 went on the wire).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<&'static str>,
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
