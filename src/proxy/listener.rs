//! The traffic listener's application: a `ServerApp` around Pingora's HTTP proxy that wraps
//! each accepted connection in a [`HeadGuard`] and runs the HTTP/1 keep-alive loop itself, so
//! the edge limits Pingora has no option for are enforced without patching it:
//!
//! - **Request head deadline.** A head must arrive whole within `request_head_timeout`,
//!   counted from the accept for a connection's first request and from the first byte of the
//!   head for the next ones; a client trickling bytes is closed then (Pingora's own timeout
//!   applies per read, so one byte every 59 s would keep a connection forever). Idle time
//!   between requests is governed by `keepalive_timeout` (Pingora's keep-alive timeout, which
//!   this loop sets).
//! - **Raw request line.** Pingora re-encodes invalid characters in the request target before
//!   any hook sees it; the guard scans the raw bytes as they pass ([`HeadScan`]) and the
//!   `request_filter` hook reads its verdict ([`raw_line_verdict`]) to answer 400 or 414.
//!
//! HTTP/2 connections (h2c prior knowledge, recognised from the first bytes, or ALPN) are
//! handed to Pingora with the guard switched off: frames have their own framing and limits.
//! The prior-knowledge check reads only as many bytes as it needs to tell (Pingora's own peek
//! waits for 24 bytes, so a shorter complete HTTP/1 request would wait for the timeout). Between two requests of a keep-alive connection the previous one is
//! complete (its body drained), so re-arming the guard there is exact; Pingora's pipelining is
//! off, so no bytes of the next head are buffered ahead.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
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

use super::Gateway;
use crate::hygiene::request_line::{HeadScan, Verdict};
use crate::snapshot::SnapshotStore;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a head; the deadline runs.
    Head,
    /// Between requests: the deadline starts with the next byte.
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
    /// Bytes read while telling HTTP/2 from HTTP/1, served again before the stream's.
    replay: Vec<u8>,
    replay_pos: usize,
    scan: HeadScan,
    phase: Phase,
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
    rearm: AtomicBool,
    verdict: AtomicU8,
    timeouts: IntCounter,
}

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
            replay: Vec::new(),
            replay_pos: 0,
            scan: HeadScan::new(max_line),
            phase: Phase::Head,
            timeout,
            deadline: Box::pin(tokio::time::sleep_until((accepted + timeout).into())),
            rearm: AtomicBool::new(false),
            verdict: AtomicU8::new(FINE),
            timeouts,
        }
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
        self.replay = got;
        self.replay_pos = 0;
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

    /// The previous request is complete: watch the next head.
    pub fn next_request(&self) {
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
        if this.rearm.swap(false, Ordering::AcqRel) {
            this.scan = HeadScan::new(this.scan.max_line());
            this.phase = Phase::AwaitingHead;
        }
        if this.phase == Phase::Head && this.deadline.is_elapsed() {
            return Poll::Ready(this.expired());
        }
        if this.replay_pos < this.replay.len() {
            let n = (this.replay.len() - this.replay_pos).min(buf.remaining());
            let start = this.replay_pos;
            buf.put_slice(&this.replay[start..start + n]);
            this.replay_pos += n;
            let replayed = std::mem::take(&mut this.replay);
            this.observe(&replayed[start..start + n]);
            this.replay = replayed;
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.observe(&buf.filled()[before..]);
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if this.phase == Phase::Head && this.deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(this.expired());
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl AsyncWrite for HeadGuard {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
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

/// The traffic listener's application (see the module documentation).
pub struct EdgeApp {
    proxy: Arc<HttpProxy<Gateway>>,
    store: SnapshotStore,
    head_timeouts: IntCounter,
    tls: Option<super::tls::TlsEntry>,
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
            Some(tls) => tls.accept(stream, limits.request_head_timeout).await?,
            None => stream,
        };
        let mut guard = HeadGuard::new(
            stream,
            accepted,
            limits.request_head_timeout,
            limits.max_request_line,
            self.head_timeouts.clone(),
        );
        if self
            .is_h2(&mut guard, accepted + limits.request_head_timeout)
            .await?
        {
            guard.switch_off();
            return ServerApp::process_new(&self.proxy, Box::new(guard), shutdown).await;
        }
        let options = self.proxy.server_options();
        let mut session = ServerSession::new_http1(Box::new(guard));
        let mut first = true;
        loop {
            if *shutdown.borrow() {
                // Stop the client from reusing the connection: this service stops soon.
                session.set_keepalive(None);
            } else {
                let keepalive = self.store.load().config().server.limits.keepalive_timeout;
                session.set_keepalive(Some(keepalive.as_secs().max(1)));
            }
            if first {
                session.set_keepalive_reuses_remaining(
                    options.and_then(|o| o.keepalive_request_limit),
                );
                first = false;
            }
            let reused = self.proxy.process_new_http(session, shutdown).await?;
            let (stream, settings) = reused.consume();
            if let Some(g) = stream.as_any().downcast_ref::<HeadGuard>() {
                g.next_request();
            }
            session = ServerSession::new_http1(stream);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
        }
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}
