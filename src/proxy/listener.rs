//! The traffic listener's application: a `ServerApp` around Pingora's HTTP proxy that wraps
//! each accepted connection in a [`HeadGuard`] and runs the HTTP/1 keep-alive loop itself, so
//! the edge limits Pingora has no option for are enforced without patching it:
//!
//! - **Request head deadline.** A head must arrive whole within `request_head_timeout`,
//!   counted from the accept for a connection's first request and from the first byte of the
//!   head for the next ones; a client trickling bytes is closed then (Pingora's own timeout
//!   applies per read, so one byte every 59 s would keep a connection forever).
//! - **Keep-alive idle timeout.** Between two requests the same timer waits at most
//!   `keepalive_timeout` for the next head's first byte; then the guard ends the stream (a
//!   quiet close, as Pingora's own keep-alive timeout does). Pingora's keep-alive wait is set
//!   to unbounded, so a request costs no timer registration for it: the guard's one timer is
//!   reset in place (see the README's benchmark section).
//! - **Raw request line.** Pingora re-encodes invalid characters in the request target before
//!   any hook sees it; the guard scans the raw bytes as they pass ([`HeadScan`]) and the
//!   `request_filter` hook reads its verdict ([`raw_line_verdict`]) to answer 400 or 414.
//!
//! HTTP/2 connections (h2c prior knowledge, recognised from the first bytes, or ALPN) are
//! handed to Pingora with the guard switched off: frames have their own framing and limits.
//! The prior-knowledge check reads only as many bytes as it needs to tell (Pingora's own peek
//! waits for 24 bytes, so a shorter complete HTTP/1 request would wait for the timeout). Between
//! two requests of a keep-alive connection the previous one is complete (its body drained), so
//! re-arming the guard there is exact.
//! - **Idle connections hold only their stream.** The loop waits for the next head's first
//!   bytes itself and reads them ahead ([`HeadGuard::poll_next_head`], a pooled buffer served
//!   before the stream), and only then calls Pingora's `process_new_http`, whose per-request
//!   state (a boxed future of about 15 KB and a 4 KB head buffer) would otherwise live as long
//!   as the connection idles (README, "Memory per connection").
//! - **Upgraded WebSockets.** Once `response_filter` lets a 101 through, the guard follows
//!   the connection's frames: idle timeout and the going-away close (see [`super::websocket`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use super::websocket::{Closing, Upgraded, CLOSE_GOING_AWAY};
use super::Gateway;
use crate::hygiene::request_line::{HeadScan, Verdict};
use crate::snapshot::SnapshotStore;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a head; the deadline runs.
    Head,
    /// Between requests: the keep-alive idle deadline runs until the next head's first byte.
    AwaitingHead,
    /// Reading a body or an upgraded stream: nothing to check.
    Body,
    /// HTTP/2: never checks.
    Off,
}

const FINE: u8 = 0;
const INVALID: u8 = 1;
const TOO_LONG: u8 = 2;

/// A connection as the proxy sees it, watching each request head go by.
pub struct HeadGuard {
    inner: Stream,
    /// Bytes read ahead (while telling HTTP/2 from HTTP/1, or waiting for the next head),
    /// served again before the stream's.
    replay: BytesMut,
    replay_pos: usize,
    /// The replayed bytes have been through [`HeadGuard::observe`] already (read ahead by
    /// [`HeadGuard::poll_next_head`]), so serving them must not scan them twice.
    replay_observed: bool,
    scan: HeadScan,
    phase: Phase,
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
    rearm: AtomicBool,
    /// The keep-alive idle timeout (ms) for the wait that `next_request` starts.
    idle_ms: AtomicU64,
    verdict: AtomicU8,
    timeouts: IntCounter,
    /// Set (to the idle timeout, in ms) when a 101 for a WebSocket is about to be written.
    ws_pending: AtomicU64,
    ws: Option<Box<WebSocketConn>>,
    shutdown: Option<ShutdownWatch>,
}

/// An upgraded WebSocket connection's state in the guard.
struct WebSocketConn {
    frames: Upgraded,
    /// Bytes of the 101 response head still being written (`\r\n\r\n` not seen yet), and how
    /// much of that terminator the last write ended with.
    in_response_head: bool,
    crlf_seen: u8,
    last_activity: Instant,
    /// Wakes the reader for the idle timeout and for a look at the shutdown flag.
    tick: Pin<Box<Sleep>>,
}

/// How often an upgraded connection looks whether the process is going away.
const SHUTDOWN_CHECK: Duration = Duration::from_secs(1);

impl std::fmt::Debug for HeadGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadGuard")
            .field("inner", &self.inner)
            .field("phase", &self.phase)
            .finish()
    }
}

impl HeadGuard {
    /// Wraps a connection accepted at `accepted`: its first head must be complete by
    /// `accepted + timeout`, and request lines may be `max_line` bytes long.
    pub fn new(
        inner: Stream,
        accepted: Instant,
        timeout: Duration,
        max_line: u64,
        timeouts: IntCounter,
    ) -> Self {
        HeadGuard {
            inner,
            replay: BytesMut::new(),
            replay_pos: 0,
            replay_observed: false,
            scan: HeadScan::new(max_line),
            phase: Phase::Head,
            timeout,
            deadline: Box::pin(tokio::time::sleep_until((accepted + timeout).into())),
            rearm: AtomicBool::new(false),
            idle_ms: AtomicU64::new(0),
            verdict: AtomicU8::new(FINE),
            timeouts,
            ws_pending: AtomicU64::new(0),
            ws: None,
            shutdown: None,
        }
    }

    /// Watches `shutdown` for upgraded connections (to send them a going-away close).
    pub fn with_shutdown(mut self, shutdown: &ShutdownWatch) -> Self {
        self.shutdown = Some(shutdown.clone());
        self
    }

    /// The response about to be written is a 101 to a WebSocket: from then on the connection
    /// carries frames and closes after `idle` without any.
    pub fn upgrade_to_websocket(&self, idle: Duration) {
        let ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX).max(1);
        self.ws_pending.store(ms, Ordering::Release);
    }

    fn pick_up_upgrade(&mut self) {
        let ms = self.ws_pending.swap(0, Ordering::AcqRel);
        if ms == 0 || self.ws.is_some() {
            return;
        }
        let idle = Duration::from_millis(ms);
        let now = Instant::now();
        self.phase = Phase::Off;
        self.ws = Some(Box::new(WebSocketConn {
            frames: Upgraded::new(idle),
            in_response_head: true,
            crlf_seen: 0,
            last_activity: now,
            tick: Box::pin(tokio::time::sleep_until(
                (now + idle.min(SHUTDOWN_CHECK)).into(),
            )),
        }));
    }

    fn going_away(&self) -> bool {
        self.shutdown.as_ref().is_some_and(|s| *s.borrow())
    }

    /// Reads the first bytes, as few as needed, to tell whether they are the HTTP/2 connection
    /// preface; they are served again to whoever reads next.
    async fn sniff_h2(&mut self) -> std::io::Result<bool> {
        use tokio::io::AsyncReadExt;
        let mut got = Vec::with_capacity(H2_PREFACE.len());
        let mut chunk = [0u8; H2_PREFACE.len()];
        while got.len() < H2_PREFACE.len() {
            let want = H2_PREFACE.len() - got.len();
            let n = self.inner.read(&mut chunk[..want]).await?;
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
            if !H2_PREFACE.starts_with(&got) {
                break;
            }
        }
        let h2 = got == H2_PREFACE;
        self.replay = BytesMut::from(&got[..]);
        self.replay_pos = 0;
        self.replay_observed = false;
        Ok(h2)
    }

    /// Stops checking anything (HTTP/2).
    fn switch_off(&mut self) {
        self.phase = Phase::Off;
    }

    /// Notes `new` bytes of the connection passing by.
    fn observe(&mut self, new: &[u8]) {
        if new.is_empty() || matches!(self.phase, Phase::Body | Phase::Off) {
            return;
        }
        if self.phase == Phase::AwaitingHead {
            self.phase = Phase::Head;
            let at = tokio::time::Instant::now() + self.timeout;
            self.deadline.as_mut().reset(at);
        }
        self.scan.feed(new);
        let verdict = match self.scan.verdict() {
            Verdict::Fine => FINE,
            Verdict::Invalid => INVALID,
            Verdict::TooLong => TOO_LONG,
        };
        self.verdict.store(verdict, Ordering::Release);
        if self.scan.done() {
            self.phase = Phase::Body;
        }
    }

    /// The previous request is complete: wait at most `idle` for the next head, then watch
    /// it.
    pub fn next_request(&self, idle: Duration) {
        let ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX).max(1);
        self.idle_ms.store(ms, Ordering::Release);
        self.rearm.store(true, Ordering::Release);
        self.verdict.store(FINE, Ordering::Release);
    }

    /// What the scan of the current request's line concluded.
    pub fn verdict(&self) -> Verdict {
        match self.verdict.load(Ordering::Acquire) {
            INVALID => Verdict::Invalid,
            TOO_LONG => Verdict::TooLong,
            _ => Verdict::Fine,
        }
    }

    /// Waits for the first bytes of the next request and reads what is there (at most
    /// [`read_ahead::SIZE`] bytes, through the usual checks: head and idle deadlines, the raw
    /// line scan) into a buffer that is served before the stream's. Ready with `true` when
    /// there are bytes to read, `false` at end of stream or when the idle wait expired.
    ///
    /// Reading ahead, rather than only waiting for readiness, keeps the syscalls per request
    /// as they were (the one read Pingora would make is this one), and the buffer comes from
    /// a small per-thread pool, so a connection holds it only while its head is in flight.
    pub fn poll_next_head(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<bool>> {
        if self.replay_pos < self.replay.len() {
            return Poll::Ready(Ok(true));
        }
        let mut ahead = read_ahead::take();
        match tokio_util::io::poll_read_buf(Pin::new(&mut *self), cx, &mut ahead) {
            Poll::Ready(Ok(n)) if n > 0 => {
                self.replay = ahead;
                self.replay_pos = 0;
                self.replay_observed = true;
                Poll::Ready(Ok(true))
            }
            other => {
                read_ahead::give_back(ahead);
                other.map_ok(|_| false)
            }
        }
    }

    fn expired(&mut self) -> std::io::Result<()> {
        self.timeouts.inc();
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "request head not received within request_head_timeout",
        ))
    }
}

impl AsyncRead for HeadGuard {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        this.pick_up_upgrade();
        if this.ws.is_some() {
            return this.poll_read_websocket(cx, buf);
        }
        if this.rearm.swap(false, Ordering::AcqRel) {
            this.scan = HeadScan::new(this.scan.max_line());
            this.phase = Phase::AwaitingHead;
            let idle = Duration::from_millis(this.idle_ms.load(Ordering::Acquire));
            let at = tokio::time::Instant::now() + idle;
            this.deadline.as_mut().reset(at);
        }
        if this.deadline.is_elapsed() {
            match this.phase {
                Phase::Head => return Poll::Ready(this.expired()),
                // Idle past the keep-alive timeout: end of stream, a quiet close.
                Phase::AwaitingHead => return Poll::Ready(Ok(())),
                Phase::Body | Phase::Off => {}
            }
        }
        if this.replay_pos < this.replay.len() {
            let n = (this.replay.len() - this.replay_pos).min(buf.remaining());
            let start = this.replay_pos;
            buf.put_slice(&this.replay[start..start + n]);
            this.replay_pos += n;
            if !this.replay_observed {
                let replayed = std::mem::take(&mut this.replay);
                this.observe(&replayed[start..start + n]);
                this.replay = replayed;
            }
            if this.replay_pos == this.replay.len() {
                // Nothing is kept between requests: the buffer goes back to the thread's spares.
                read_ahead::give_back(std::mem::take(&mut this.replay));
                this.replay_pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.observe(&buf.filled()[before..]);
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if matches!(this.phase, Phase::Head | Phase::AwaitingHead)
                    && this.deadline.as_mut().poll(cx).is_ready()
                {
                    if this.phase == Phase::AwaitingHead {
                        return Poll::Ready(Ok(()));
                    }
                    return Poll::Ready(this.expired());
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl HeadGuard {
    /// Writes the going-away close to the client once the upstream's frames are at a boundary.
    /// Ready when it is sent (or cannot be yet for want of a boundary).
    fn drive_client_close(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let Some(ws) = self.ws.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        if ws.frames.client_close == Closing::No {
            if ws.in_response_head || !ws.frames.to_client.at_boundary() {
                return Poll::Ready(Ok(()));
            }
            ws.frames.client_close = Closing::Sending(0);
        }
        while let Closing::Sending(done) = ws.frames.client_close {
            if done == CLOSE_GOING_AWAY.len() {
                std::task::ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
                ws.frames.client_close = Closing::Sent;
                break;
            }
            let n = std::task::ready!(
                Pin::new(&mut self.inner).poll_write(cx, &CLOSE_GOING_AWAY[done..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            ws.frames.client_close = Closing::Sending(done + n);
        }
        Poll::Ready(Ok(()))
    }

    fn poll_read_websocket(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            let going_away = self.going_away();
            let ws = self.ws.as_mut().expect("websocket mode");
            if going_away && !ws.frames.going_away {
                ws.frames.going_away = true;
            }
            if ws.frames.going_away {
                if let Poll::Ready(Err(e)) = self.drive_client_close(cx) {
                    return Poll::Ready(Err(e));
                }
                let ws = self.ws.as_mut().expect("websocket mode");
                if ws.frames.upstream_close == Closing::No && ws.frames.from_client.at_boundary() {
                    // As if the client had sent it: the proxy forwards it to the upstream.
                    let frame = super::websocket::masked_close_going_away(rand::random());
                    if buf.remaining() >= frame.len() {
                        buf.put_slice(&frame);
                        ws.frames.upstream_close = Closing::Sent;
                        return Poll::Ready(Ok(()));
                    }
                }
            }
            let ws = self.ws.as_mut().expect("websocket mode");
            if ws.frames.upstream_close == Closing::Sent {
                // The upstream has its close: what the client sends now is dropped.
                let mut scratch = [0u8; 2048];
                let mut sink = ReadBuf::new(&mut scratch);
                match Pin::new(&mut self.inner).poll_read(cx, &mut sink) {
                    Poll::Ready(Ok(())) if sink.filled().is_empty() => return Poll::Ready(Ok(())),
                    Poll::Ready(Ok(())) => continue,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            } else {
                let before = buf.filled().len();
                match Pin::new(&mut self.inner).poll_read(cx, buf) {
                    Poll::Ready(Ok(())) => {
                        let ws = self.ws.as_mut().expect("websocket mode");
                        let new = &buf.filled()[before..];
                        if !new.is_empty() {
                            ws.last_activity = Instant::now();
                        }
                        if ws.frames.going_away {
                            // Nothing of the client's past the frame it is in goes upstream.
                            let mut probe = ws.frames.from_client.clone();
                            if let Some(cut) = probe.feed(new) {
                                let keep = before + cut;
                                ws.frames.from_client.feed(&buf.filled()[before..keep]);
                                buf.set_filled(keep);
                                return Poll::Ready(Ok(()));
                            }
                        }
                        ws.frames.from_client.feed(&buf.filled()[before..]);
                        return Poll::Ready(Ok(()));
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            }
            // Nothing to read: the idle timeout and the shutdown check.
            let going_away = self.going_away();
            let ws = self.ws.as_mut().expect("websocket mode");
            if ws.tick.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            let idle_at = ws.last_activity + ws.frames.idle_timeout;
            if now >= idle_at {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "websocket idle timeout",
                )));
            }
            let next = idle_at.min(now + SHUTDOWN_CHECK);
            ws.tick.as_mut().reset(next.into());
            if going_away == ws.frames.going_away {
                // Nothing changed: poll the re-armed timer.
                if ws.tick.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
        }
    }

    fn poll_write_websocket(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let ws = self.ws.as_mut().expect("websocket mode");
        ws.last_activity = Instant::now();
        if ws.in_response_head {
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
            let ws = self.ws.as_mut().expect("websocket mode");
            for (i, b) in buf[..n].iter().enumerate() {
                let want = if ws.crlf_seen.is_multiple_of(2) {
                    b'\r'
                } else {
                    b'\n'
                };
                ws.crlf_seen = if *b == want {
                    ws.crlf_seen + 1
                } else if *b == b'\r' {
                    1
                } else {
                    0
                };
                if ws.crlf_seen == 4 {
                    ws.in_response_head = false;
                    ws.frames.to_client.feed(&buf[i + 1..n]);
                    break;
                }
            }
            return Poll::Ready(Ok(n));
        }
        if ws.frames.going_away || self.going_away() {
            self.ws.as_mut().expect("websocket mode").frames.going_away = true;
            std::task::ready!(self.drive_client_close(cx))?;
        }
        let ws = self.ws.as_mut().expect("websocket mode");
        match ws.frames.client_close {
            // The client has its close: the upstream's frames are dropped.
            Closing::Sent => Poll::Ready(Ok(buf.len())),
            Closing::Sending(_) => Poll::Pending,
            Closing::No => {
                let mut len = buf.len();
                if ws.frames.going_away {
                    // Up to the end of the frame in progress; the close goes after it.
                    let mut probe = ws.frames.to_client.clone();
                    if let Some(cut) = probe.feed(buf) {
                        len = cut;
                    }
                }
                let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &buf[..len]))?;
                let ws = self.ws.as_mut().expect("websocket mode");
                ws.frames.to_client.feed(&buf[..n]);
                Poll::Ready(Ok(n))
            }
        }
    }
}

impl AsyncWrite for HeadGuard {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        this.pick_up_upgrade();
        if this.ws.is_some() {
            return this.poll_write_websocket(cx, buf);
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        this.pick_up_upgrade();
        if this.ws.is_some() {
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &b[..]);
            return this.poll_write_websocket(cx, first);
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for HeadGuard {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for HeadGuard {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeadGuard {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeadGuard {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeadGuard {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: pingora::protocols::raw_connect::ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for HeadGuard {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for HeadGuard {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        // Only asked after `sniff_h2` found the HTTP/2 preface, which it kept.
        let kept = &self.replay[self.replay_pos..];
        if kept.len() < buf.len() {
            return Ok(false);
        }
        buf.copy_from_slice(&kept[..buf.len()]);
        Ok(true)
    }
}

/// What the guard of `session`'s connection concluded about the current request line
/// (`Fine` on HTTP/2, where there is no request line).
pub fn raw_line_verdict(session: &pingora::proxy::Session) -> Verdict {
    session
        .as_downstream()
        .stream()
        .and_then(|s| s.as_any().downcast_ref::<HeadGuard>())
        .map_or(Verdict::Fine, HeadGuard::verdict)
}

/// Tells the guard of `session`'s connection that the response about to be written upgrades
/// it to a WebSocket with idle timeout `idle` (HTTP/1 only).
pub fn mark_websocket(session: &pingora::proxy::Session, idle: Duration) -> bool {
    match session
        .as_downstream()
        .stream()
        .and_then(|s| s.as_any().downcast_ref::<HeadGuard>())
    {
        Some(guard) => {
            guard.upgrade_to_websocket(idle);
            true
        }
        None => false,
    }
}

/// The traffic listener's application (see the module documentation).
pub struct EdgeApp {
    proxy: Arc<HttpProxy<Gateway>>,
    store: SnapshotStore,
    head_timeouts: IntCounter,
    tls: Option<super::tls::TlsEntry>,
}

/// Buffers for reading a request's first bytes ahead ([`HeadGuard::poll_next_head`]): taken
/// when the bytes arrive, given back once Pingora has read them, kept per worker thread so
/// that the request path allocates none in the steady state.
mod read_ahead {
    use std::cell::RefCell;

    use bytes::BytesMut;

    /// Bytes read ahead at most: Pingora's first read of a head asks for as much.
    pub const SIZE: usize = 4096;
    /// Spare buffers kept per thread (beyond that, given-back buffers are freed).
    const SPARES: usize = 64;

    thread_local! {
        static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    }

    /// An empty buffer with room for [`SIZE`] bytes.
    pub fn take() -> BytesMut {
        SPARE
            .with(|s| s.borrow_mut().pop())
            .unwrap_or_else(|| BytesMut::with_capacity(SIZE))
    }

    /// Returns a buffer from [`take`] (others, e.g. the HTTP/2 sniff's, are just dropped).
    pub fn give_back(mut buf: BytesMut) {
        if buf.capacity() < SIZE {
            return;
        }
        buf.clear();
        SPARE.with(|s| {
            let mut spare = s.borrow_mut();
            if spare.len() < SPARES {
                spare.push(buf);
            }
        });
    }
}

impl EdgeApp {
    /// Serves `proxy` with the limits of whatever `store` holds when a connection arrives;
    /// closed heads are counted in `head_timeouts`. With `tls`, connections start with its
    /// handshake (a TLS listener).
    pub fn new(
        proxy: HttpProxy<Gateway>,
        store: SnapshotStore,
        head_timeouts: IntCounter,
        tls: Option<super::tls::TlsEntry>,
    ) -> Self {
        EdgeApp {
            proxy: Arc::new(proxy),
            store,
            head_timeouts,
            tls,
        }
    }

    /// Waits for the next request's first bytes on `guard`'s connection, holding nothing but
    /// the connection: Pingora's per-request state (its boxed `process_new_http` future, about
    /// 15 KB, and its 4 KB head buffer) is created only once they are there, so an idle
    /// keep-alive connection costs its stream alone ([`HeadGuard::poll_next_head`] reads
    /// them ahead). `false` when the connection ended, failed (e.g. its first head's deadline
    /// passed) or went idle past the keep-alive timeout, or the service is stopping.
    async fn await_head(&self, guard: &mut HeadGuard) -> bool {
        let stopping = self.proxy.await_shutdown();
        tokio::pin!(stopping);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = guard.poll_next_head(cx) {
                return Poll::Ready(matches!(result, Ok(true)));
            }
            // Polled after the connection: a request already there is served.
            stopping.as_mut().poll(cx).map(|()| false)
        })
        .await
    }

    /// Whether the connection speaks HTTP/2 (ALPN, or h2c prior knowledge when enabled).
    /// `None` when the client closed, or sent too little before `deadline`.
    async fn is_h2(&self, guard: &mut HeadGuard, deadline: Instant) -> Option<bool> {
        if matches!(guard.selected_alpn_proto(), Some(ALPN::H2)) {
            return Some(true);
        }
        let h2c = self.proxy.server_options().is_some_and(|o| o.h2c);
        if !h2c || guard.get_ssl_digest().is_some() {
            return Some(false);
        }
        match tokio::time::timeout_at(deadline.into(), guard.sniff_h2()).await {
            Ok(Ok(h2)) => Some(h2),
            Ok(Err(_)) => None,
            Err(_) => {
                self.head_timeouts.inc();
                None
            }
        }
    }
}

#[async_trait]
impl ServerApp for EdgeApp {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let accepted = Instant::now();
        let limits = self.store.load().config().server.limits;
        let stream = match &self.tls {
            // The handshake counts against the first head's deadline.
            // Boxed: the handshake's state is large and needed only until it completes, so
            // it does not size this connection-long future.
            Some(tls) => Box::pin(tls.accept(stream, limits.request_head_timeout)).await?,
            None => stream,
        };
        let mut guard = HeadGuard::new(
            stream,
            accepted,
            limits.request_head_timeout,
            limits.max_request_line,
            self.head_timeouts.clone(),
        )
        .with_shutdown(shutdown);
        if self
            .is_h2(&mut guard, accepted + limits.request_head_timeout)
            .await?
        {
            guard.switch_off();
            return ServerApp::process_new(&self.proxy, Box::new(guard), shutdown).await;
        }
        let options = self.proxy.server_options();
        let mut guard = Box::new(guard);
        let mut settings: Option<HttpPersistentSettings> = None;
        let mut first = true;
        loop {
            if !self.await_head(&mut guard).await {
                return None;
            }
            let mut session = ServerSession::new_http1(guard);
            if let Some(settings) = settings.take() {
                settings.apply_to_session(&mut session);
            }
            if *shutdown.borrow() {
                // Stop the client from reusing the connection: this service stops soon.
                session.set_keepalive(None);
            } else {
                // Keep-alive with no Pingora timer: the guard times the idle wait.
                session.set_keepalive(Some(0));
            }
            if first {
                session.set_keepalive_reuses_remaining(
                    options.and_then(|o| o.keepalive_request_limit),
                );
                first = false;
            }
            let reused = self.proxy.process_new_http(session, shutdown).await?;
            let stream;
            (stream, settings) = reused.consume();
            // The stream given to the session is this guard, boxed: take it back as such.
            guard = stream.into_any().downcast::<HeadGuard>().ok()?;
            let keepalive = self.store.load().config().server.limits.keepalive_timeout;
            guard.next_request(keepalive.max(Duration::from_secs(1)));
        }
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}
