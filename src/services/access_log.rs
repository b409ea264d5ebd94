//! Writes access log lines queued by the request path ([`crate::access_log`]) to stdout or a
//! file, in batches, on its own runtime thread.

use std::io::Write;
use std::sync::Mutex;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::access_log::Lines;

/// The background service that writes lines out.
pub struct AccessLogWriter {
    lines: Mutex<Option<Lines>>,
}

impl AccessLogWriter {
    /// A writer draining `lines`.
    pub fn new(lines: Lines) -> Self {
        AccessLogWriter {
            lines: Mutex::new(Some(lines)),
        }
    }
}

#[async_trait]
impl BackgroundService for AccessLogWriter {
    async fn start(&self, _shutdown: ShutdownWatch) {
        // Shutdown is deliberately not watched: requests keep finishing (and being logged)
        // through the grace period, and every batch is flushed as soon as it is written.
        let Some(Lines { mut rx, path }) = self.lines.lock().ok().and_then(|mut l| l.take()) else {
            return;
        };
        let mut out: Box<dyn Write + Send> = match &path {
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
