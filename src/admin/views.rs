//! Admin responses: JSON bodies for health, readiness and upstream state, and the metrics text.

use http::{Response, StatusCode};
use serde_json::{json, Value};

use crate::request_id::RequestId;
use crate::snapshot::Snapshot;

/// A JSON response.
pub fn json(status: StatusCode, body: Value) -> Response<Vec<u8>> {
    let bytes = body.to_string().into_bytes();
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CONTENT_LENGTH, bytes.len())
        .body(bytes)
        .unwrap_or_default()
}

/// Marks an admin response with the request's id: `X-Request-Id` on every response and, like
/// the proxy's refusals, `request_id` in the body of every JSON error (4xx and 5xx), so that
/// admin errors have the same shape as the proxy's.
pub fn stamp(resp: &mut Response<Vec<u8>>, id: &RequestId) {
    if let Ok(v) = http::HeaderValue::from_str(id.as_str()) {
        resp.headers_mut().insert("x-request-id", v);
    }
    if !(resp.status().is_client_error() || resp.status().is_server_error()) {
        return;
    }
    // Admin errors are rare and small: re-serialising the body costs nothing that matters.
    if let Ok(Value::Object(mut body)) = serde_json::from_slice::<Value>(resp.body()) {
        body.insert("request_id".into(), Value::from(id.as_str()));
        let bytes = Value::Object(body).to_string().into_bytes();
        resp.headers_mut().insert(
            http::header::CONTENT_LENGTH,
            http::HeaderValue::from(bytes.len()),
        );
        *resp.body_mut() = bytes;
    }
}

/// A JSON error response `{"error": ...}` (the request id is added by [`stamp`]).
pub fn error(status: StatusCode, message: &str) -> Response<Vec<u8>> {
    json(status, json!({ "error": message }))
}

/// 405 with the `Allow` header RFC 9110 requires (`allow`: the endpoint's methods).
pub fn method_not_allowed(allow: &'static str) -> Response<Vec<u8>> {
    let mut resp = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    resp.headers_mut()
        .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
    resp
}

/// Liveness: the process answers.
pub fn health() -> Value {
    json!({ "status": "ok", "pid": std::process::id(), "version": env!("CARGO_PKG_VERSION") })
}

/// Readiness: every upstream has at least one backend that may take traffic.
pub fn ready(snapshot: &Snapshot) -> Response<Vec<u8>> {
    let down: Vec<&str> = snapshot
        .clusters()
        .iter()
        .filter(|c| !c.has_available(0, crate::clock::now_ms()))
        .map(|c| c.name())
        .collect();
    if down.is_empty() {
        json(StatusCode::OK, json!({ "ready": true }))
    } else {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "ready": false, "upstreams_without_available_backend": down }),
        )
    }
}

/// The Prometheus text exposition.
pub fn metrics(body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(StatusCode::OK)
        .header(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body)
        .unwrap_or_default()
}

/// Every upstream with its backends' live state.
pub fn upstreams(snapshot: &Snapshot) -> Value {
    let list: Vec<Value> = snapshot
        .clusters()
        .iter()
        .map(|c| {
            let backends: Vec<Value> = c
                .members()
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    json!({
                        "addr": m.addr.to_string(),
                        "weight": m.weight,
                        "healthy": m.state.is_healthy(),
                        "inflight": m.state.inflight(),
                        "drained": m.state.is_drained(),
                        "circuit": c.circuit(i).as_str(),
                    })
                })
                .collect();
            json!({
                "name": c.name(),
                "health_checked": c.spec().health_check.is_some(),
                "inflight": c.state.inflight(),
                "adaptive_factor": c.state.factor(),
                "backends": backends,
            })
        })
        .collect();
    json!({ "upstreams": list })
}

/// Drains or re-enables one backend.
pub fn set_drained(
    snapshot: &Snapshot,
    upstream: &str,
    addr: &str,
    drained: bool,
) -> Response<Vec<u8>> {
    let Some(cluster) = snapshot.clusters().iter().find(|c| c.name() == upstream) else {
        return error(StatusCode::NOT_FOUND, "unknown upstream");
    };
    let Some(member) = cluster
        .members()
        .iter()
        .find(|m| m.addr.to_string() == addr)
    else {
        return error(StatusCode::NOT_FOUND, "unknown backend");
    };
    member.state.set_drained(drained);
    log::info!(
        "admin: upstream {upstream} backend {addr} {}",
        if drained { "drained" } else { "enabled" }
    );
    json(
        StatusCode::OK,
        json!({ "upstream": upstream, "backend": addr, "drained": drained }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_ids_every_response_and_adds_the_id_to_error_bodies_only() {
        let id = RequestId::from_client_or_new(Some(b"ops-1"));
        let mut ok = json(StatusCode::OK, json!({ "ready": true }));
        stamp(&mut ok, &id);
        assert_eq!(ok.headers()["x-request-id"], "ops-1");
        assert_eq!(ok.body(), br#"{"ready":true}"#);

        let mut err = error(StatusCode::NOT_FOUND, "no such admin endpoint");
        stamp(&mut err, &id);
        let body: Value = serde_json::from_slice(err.body()).unwrap();
        assert_eq!(body["request_id"], "ops-1");
        assert_eq!(body["error"], "no such admin endpoint");
        assert_eq!(
            err.headers()[http::header::CONTENT_LENGTH],
            err.body().len().to_string().as_str()
        );
    }
}
