//! Real HTTP backends for tests. Each answers with a JSON echo of what it received
//! (`backend`, `method`, `path`, `headers`, `body`), counts hits, serves `/health` that a test can
//! switch to failing, and takes per-request overrides: `x-test-status`, `x-test-delay-ms`,
//! `x-test-content-type` and `x-test-content-encoding` (response headers), `x-test-body` (the
//! response body instead of the echo).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};

struct State {
    name: String,
    hits: AtomicUsize,
    health_checks: AtomicUsize,
    healthy: AtomicBool,
    delay_ms: AtomicU64,
    status: AtomicU64,
}

/// A running test backend. It stops when the test process exits.
#[derive(Clone)]
pub struct TestBackend {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl TestBackend {
    /// Starts a backend named `name` answering 200 at once.
    pub fn start(name: &str) -> Self {
        let state = Arc::new(State {
            name: name.to_string(),
            hits: AtomicUsize::new(0),
            health_checks: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            delay_ms: AtomicU64::new(0),
            status: AtomicU64::new(200),
        });
        let serve_state = Arc::clone(&state);
        let addr = super::serve::serve(move |req| handle(Arc::clone(&serve_state), req));
        TestBackend { addr, state }
    }

    /// Starts a backend that waits `delay` before every answer.
    pub fn slow(name: &str, delay: Duration) -> Self {
        let b = Self::start(name);
        b.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
        b
    }

    /// Requests served, health checks excluded.
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::Relaxed)
    }

    /// Health checks served.
    pub fn health_checks(&self) -> usize {
        self.state.health_checks.load(Ordering::Relaxed)
    }

    /// Makes `/health` answer 200 (true) or 503 (false).
    pub fn set_healthy(&self, healthy: bool) {
        self.state.healthy.store(healthy, Ordering::Relaxed);
    }

    /// Sets the delay before ordinary answers.
    pub fn set_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// Sets the status of ordinary answers.
    pub fn set_status(&self, status: u16) {
        self.state
            .status
            .store(u64::from(status), Ordering::Relaxed);
    }

    /// `"IP:PORT"` of the backend.
    pub fn addr_str(&self) -> String {
        self.addr.to_string()
    }
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/health" {
        state.health_checks.fetch_add(1, Ordering::Relaxed);
        let status = if state.healthy.load(Ordering::Relaxed) {
            200
        } else {
            503
        };
        return Ok(Response::builder()
            .status(status)
            .body(Full::new(Bytes::from_static(b"health")))
            .expect("response"));
    }
    state.hits.fetch_add(1, Ordering::Relaxed);
    let header_u64 = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let delay = header_u64("x-test-delay-ms").unwrap_or(state.delay_ms.load(Ordering::Relaxed));
    let status = header_u64("x-test-status").unwrap_or(state.status.load(Ordering::Relaxed));
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let header_text = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let content_type =
        header_text("x-test-content-type").unwrap_or_else(|| "application/json".to_string());
    let content_encoding = header_text("x-test-content-encoding");
    let fixed_body = header_text("x-test-body");
    let (parts, incoming) = req.into_parts();
    let received = http_body_util::BodyExt::collect(incoming)
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let req = Request::from_parts(parts, ());
    let mut headers = serde_json::Map::new();
    for (name, value) in req.headers() {
        let v = value.to_str().unwrap_or("<binary>").to_string();
        headers
            .entry(name.as_str().to_string())
            .and_modify(|e| {
                if let serde_json::Value::String(s) = e {
                    s.push_str(", ");
                    s.push_str(&v);
                }
            })
            .or_insert(serde_json::Value::String(v));
    }
    let body = serde_json::json!({
        "backend": state.name,
        "method": req.method().as_str(),
        "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "headers": headers,
        "body": String::from_utf8_lossy(&received),
    });
    let mut resp = Response::builder()
        .status(status as u16)
        .header("content-type", content_type)
        .header("server", "test-backend")
        .header("x-powered-by", "tests");
    if let Some(e) = content_encoding {
        resp = resp.header("content-encoding", e);
    }
    let body = fixed_body.unwrap_or_else(|| body.to_string());
    Ok(resp.body(Full::new(Bytes::from(body))).expect("response"))
}

/// Starts a TCP listener that accepts connections and resets them at once (no HTTP answer).
pub fn resetting_backend() -> SocketAddr {
    counting_resetting_backend().0
}

/// Like [`resetting_backend`], also counting the connections it reset.
pub fn counting_resetting_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&count);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            counter.fetch_add(1, Ordering::SeqCst);
            // Let the request arrive first, so that bytes have reached the upstream.
            std::thread::sleep(Duration::from_millis(5));
            // SO_LINGER 0 turns the close into a RST.
            let sock = socket2::SockRef::from(&stream);
            let _ = sock.set_linger(Some(Duration::from_secs(0)));
            drop(stream);
        }
    });
    (addr, count)
}
