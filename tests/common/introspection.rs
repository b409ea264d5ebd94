//! A small OAuth2 token introspection endpoint (RFC 7662) for tests: answers per token from a
//! table the test fills, counts calls, records the client authentication and form it got, and
//! can be made slow or take errors.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{json, Value};

#[derive(Default)]
struct State {
    answers: Mutex<HashMap<String, Value>>,
    calls: AtomicUsize,
    delay_ms: AtomicU64,
    status: AtomicU16,
    last_authorization: Mutex<Option<String>>,
    last_form: Mutex<Option<String>>,
}

/// The endpoint.
#[derive(Clone)]
pub struct IntrospectionServer {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl IntrospectionServer {
    /// Starts it on a free loopback port; unknown tokens are inactive.
    pub fn start() -> Self {
        let state = Arc::new(State::default());
        state.status.store(200, Ordering::SeqCst);
        let serve = Arc::clone(&state);
        let addr = super::serve::serve(move |req| handle(Arc::clone(&serve), req));
        IntrospectionServer { addr, state }
    }

    /// `http://ADDR/introspect`.
    pub fn url(&self) -> String {
        format!("http://{}/introspect", self.addr)
    }

    /// Sets what the endpoint says about `token`.
    pub fn answer(&self, token: &str, answer: Value) {
        self.state
            .answers
            .lock()
            .unwrap()
            .insert(token.to_string(), answer);
    }

    /// Calls received.
    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    /// Delays every answer.
    pub fn set_delay(&self, d: Duration) {
        self.state
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// Answers with this status (200: normally).
    pub fn set_status(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }

    /// The `Authorization` header of the last call.
    pub fn last_authorization(&self) -> Option<String> {
        self.state.last_authorization.lock().unwrap().clone()
    }

    /// The form body of the last call.
    pub fn last_form(&self) -> Option<String> {
        self.state.last_form.lock().unwrap().clone()
    }
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    state.calls.fetch_add(1, Ordering::SeqCst);
    *state.last_authorization.lock().unwrap() = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let form_type = req
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes() == b"application/x-www-form-urlencoded");
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let form = String::from_utf8_lossy(&body).to_string();
    *state.last_form.lock().unwrap() = Some(form.clone());
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status = state.status.load(Ordering::SeqCst);
    let token = form
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
        .map(percent_decode)
        .unwrap_or_default();
    let answer = if !form_type || token.is_empty() {
        json!({"error": "invalid_request"})
    } else {
        state
            .answers
            .lock()
            .unwrap()
            .get(&token)
            .cloned()
            .unwrap_or_else(|| json!({"active": false}))
    };
    Ok(Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(answer.to_string())))
        .unwrap())
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}
