//! Writes access log lines queued by the request path ([`crate::access_log`]) to stdout or a
//! file, in batches, on its own runtime thread, without the request path ever waking it.

use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use tokio::sync::mpsc::error::TryRecvError;

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

/// How often queued lines are written out. The request path never wakes the writer: it only
/// queues, and the writer looks every `FLUSH_EVERY` (no syscall, wake-up or context switch
/// per line; one write per batch).
const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// Where lines go, and the lines not written yet. Dropping it (when the runtime shuts down at
/// the end of a graceful shutdown or upgrade) writes whatever is still queued.
struct Sink {
    rx: tokio::sync::mpsc::Receiver<String>,
    out: Box<dyn Write + Send>,
    buf: Vec<u8>,
}

impl Sink {
    /// Writes every queued line; false once the request path has gone away.
    fn drain(&mut self) -> bool {
        let open = loop {
            match self.rx.try_recv() {
                Ok(line) => {
                    self.buf.extend_from_slice(line.as_bytes());
                    self.buf.push(b'\n');
                    if self.buf.len() > 256 * 1024 {
                        self.write();
                    }
                }
                Err(TryRecvError::Empty) => break true,
                Err(TryRecvError::Disconnected) => break false,
            }
        };
        self.write();
        open
    }

    fn write(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        // This service runs on its own runtime: a blocking write here never delays requests.
        if let Err(e) = self.out.write_all(&self.buf).and_then(|_| self.out.flush()) {
            log::error!("access log write failed: {e}");
        }
        self.buf.clear();
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.drain();
    }
}

#[async_trait]
impl BackgroundService for AccessLogWriter {
    async fn start(&self, _shutdown: ShutdownWatch) {
        // Shutdown is deliberately not watched: requests keep finishing (and being logged)
        // through the grace period; what is queued when the runtime stops is written by
        // `Sink::drop`.
        let Some(Lines { rx, path }) = self.lines.lock().ok().and_then(|mut l| l.take()) else {
            return;
        };
        let out: Box<dyn Write + Send> = match &path {
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
        let mut sink = Sink {
            rx,
            out,
            buf: Vec::with_capacity(64 * 1024),
        };
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !sink.drain() {
                break;
            }
        }
    }
}
