//! The one writer of responses the gateway makes itself, and the mapping from failures to
//! status codes. Every such response is JSON `{"error": ..., "request_id": ...}`.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType};

use super::ctx::{Refusal, RequestCtx};

/// Header carrying the request id, both ways.
pub const REQUEST_ID: &str = "x-request-id";

/// The status for a failure, or 0 when the client is gone and nothing can be written.
pub fn status_for(e: &Error, ctx: &RequestCtx) -> u16 {
    match ctx.refusal {
        Some(Refusal::NoHealthyBackend | Refusal::CircuitOpen(_) | Refusal::Overloaded) => {
            return 503
        }
        Some(Refusal::DeadlineExceeded) => return 504,
        None => {}
    }
    use ErrorType::*;
    match e.etype() {
        HTTPStatus(code) => *code,
        ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout => {
            if e.esource() == &ErrorSource::Downstream {
                0
            } else {
                504
            }
        }
        _ => match e.esource() {
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => match e.etype() {
                WriteError | ReadError | ConnectionClosed => 0,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    }
}

/// The message in the JSON body for `status`.
pub fn message_for(status: u16) -> &'static str {
    match status {
        400 => "bad request",
        404 => "no route matches this request",
        405 => "method not allowed on this route",
        502 => "bad gateway: the upstream refused, reset or broke the connection",
        503 => "service unavailable: no healthy backend",
        504 => "gateway timeout: the upstream did not answer in time",
        _ => "internal error",
    }
}

/// The JSON error body.
pub fn body(message: &str, request_id: &str) -> Bytes {
    Bytes::from(serde_json::json!({ "error": message, "request_id": request_id }).to_string())
}

/// Builds the header of a JSON error response.
pub fn error_header(
    status: u16,
    len: usize,
    request_id: &str,
    extra: &[(&'static str, &str)],
) -> pingora::Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(status, Some(4 + extra.len()))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(http::header::CONTENT_LENGTH, len.to_string())?;
    resp.insert_header(REQUEST_ID, request_id)?;
    for (name, value) in extra {
        resp.insert_header(*name, *value)?;
    }
    Ok(resp)
}

/// Answers the request from the gateway (before any upstream is involved); the connection
/// stays usable.
pub async fn reject(
    session: &mut Session,
    ctx: &RequestCtx,
    status: u16,
    extra: &[(&'static str, &str)],
) -> pingora::Result<()> {
    reject_with(session, ctx, status, message_for(status), extra).await
}

/// Like [`reject`], with a specific message.
pub async fn reject_with(
    session: &mut Session,
    ctx: &RequestCtx,
    status: u16,
    message: &str,
    extra: &[(&'static str, &str)],
) -> pingora::Result<()> {
    let payload = body(message, ctx.request_id.as_str());
    let resp = error_header(status, payload.len(), ctx.request_id.as_str(), extra)?;
    if crate::signals::draining() {
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(payload), true).await?;
    Ok(())
}

/// Writes the error response for a failed proxy attempt if the client can still take one.
pub async fn fail(session: &mut Session, ctx: &RequestCtx, status: u16) {
    if status == 0 {
        return;
    }
    let (message, retry_after) = match ctx.refusal {
        Some(Refusal::CircuitOpen(secs)) => (
            "service unavailable: every backend's circuit is open",
            Some(secs),
        ),
        Some(Refusal::Overloaded) => (
            "service unavailable: upstream at its concurrency limit",
            Some(1),
        ),
        Some(Refusal::DeadlineExceeded) => ("gateway timeout: the route deadline passed", None),
        _ => (message_for(status), None),
    };
    let payload = body(message, ctx.request_id.as_str());
    let retry = retry_after.map(|s| s.to_string());
    let extra: Vec<(&'static str, &str)> =
        retry.iter().map(|r| ("retry-after", r.as_str())).collect();
    let Ok(mut resp) = error_header(status, payload.len(), ctx.request_id.as_str(), &extra) else {
        return;
    };
    if let Some(d) = &ctx.ratelimit {
        let _ = crate::ratelimit::headers::apply(
            &mut resp,
            d,
            ctx.snapshot.ratelimit().tier_name(d.tier),
        );
    }
    if let Err(e) = session.write_error_response(resp, payload).await {
        log::debug!("could not send error response: {e}");
    }
}

/// Refuses a request that failed authentication (401) or authorisation (403), with an RFC 6750
/// `WWW-Authenticate` challenge and a JSON body naming the reason. The credential itself never
/// appears.
pub async fn deny(
    session: &mut Session,
    ctx: &RequestCtx,
    denial: &crate::auth::Denial,
) -> pingora::Result<()> {
    use crate::auth::Reason;
    let description = denial.description.replace(['"', '\\'], "'");
    let (status, error, challenge) = match denial.reason {
        Reason::Missing => (401, "authentication required", "Bearer realm=\"gatehouse\"".to_string()),
        r if r.is_forbidden() => (
            403,
            "forbidden",
            format!("Bearer realm=\"gatehouse\", error=\"insufficient_scope\", error_description=\"{description}\""),
        ),
        _ => (
            401,
            "invalid credentials",
            format!("Bearer realm=\"gatehouse\", error=\"invalid_token\", error_description=\"{description}\""),
        ),
    };
    let payload = Bytes::from(
        serde_json::json!({
            "error": error,
            "reason": denial.reason.as_str(),
            "detail": denial.description,
            "request_id": ctx.request_id.as_str(),
        })
        .to_string(),
    );
    let resp = error_header(
        status,
        payload.len(),
        ctx.request_id.as_str(),
        &[("www-authenticate", &challenge)],
    )?;
    if crate::signals::draining() {
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(payload), true).await?;
    Ok(())
}

/// Refuses a request over its rate limit: 429 with `Retry-After`, every rate-limit header, and
/// `{"error": "rate limit exceeded", "tier", "limit", "retry_after", "upgrade_url", "request_id"}`.
pub async fn rate_limited(
    session: &mut Session,
    ctx: &RequestCtx,
    d: &crate::ratelimit::Decision,
    limiter: &crate::ratelimit::RateLimiter,
) -> pingora::Result<()> {
    let tier = limiter.tier_name(d.tier);
    let payload = Bytes::from(
        serde_json::json!({
            "error": "rate limit exceeded",
            "tier": tier,
            "limit": d.refusing_limit(),
            "policy": match d.limited_by {
                Some(crate::ratelimit::bucket::Limited::Daily) => "daily",
                Some(crate::ratelimit::bucket::Limited::Monthly) => "monthly",
                _ => "burst",
            },
            "retry_after": d.retry_after,
            "upgrade_url": limiter.upgrade_url(d.tier),
            "request_id": ctx.request_id.as_str(),
        })
        .to_string(),
    );
    let retry = d.retry_after.to_string();
    let mut resp = error_header(
        429,
        payload.len(),
        ctx.request_id.as_str(),
        &[("retry-after", &retry)],
    )?;
    crate::ratelimit::headers::apply(&mut resp, d, tier)?;
    if crate::signals::draining() {
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(payload), true).await?;
    Ok(())
}
