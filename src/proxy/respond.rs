//! The one writer of responses the gateway makes itself, and the mapping from failures to
//! status codes. A [`Refusal`] decides its status, headers and JSON body here and nowhere else;
//! every such response is JSON `{"error": ..., "request_id": ...}` (plus fields the refusal
//! adds), carries `X-Request-Id`, and goes through the route's `on_response` policies (so a 429
//! or a 502 on a limited route carries the rate-limit headers).
//!
//! A gRPC request gets the same answer gRPC-shaped instead ([`grpc_shaped`]): HTTP 200,
//! trailers-only, `grpc-status` mapped from the HTTP status and `grpc-message`, the other
//! headers (request id, `Retry-After`, rate-limit headers) kept.

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType};

use super::ctx::RequestCtx;
use crate::auth::Denial;
use crate::ratelimit::bucket::Limited;
use crate::ratelimit::Decision;
use crate::refusal::Refusal;

/// Header carrying the request id, both ways.
pub const REQUEST_ID: &str = "x-request-id";
/// The same, as a header name.
pub const REQUEST_ID_NAME: http::HeaderName = http::HeaderName::from_static(REQUEST_ID);
/// W3C Trace Context headers.
pub const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
/// See [`TRACEPARENT`].
pub const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// The status for a failure, or 0 when the client is gone and nothing can be written.
pub fn status_for(e: &Error) -> u16 {
    if let Some(refusal) = Refusal::of(e) {
        return refusal.status();
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

/// The message in the JSON body of a failure that is not a refusal.
fn message_for(status: u16) -> &'static str {
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

/// Answers a refused request (before any upstream is involved); the connection stays usable.
pub async fn refuse(
    session: &mut Session,
    ctx: &mut RequestCtx,
    refusal: &Refusal,
) -> pingora::Result<()> {
    if let Some(reason) = refusal.edge_reason() {
        ctx.snapshot.edge_refusal(reason);
    }
    let (resp, body) = answer(session.req_header(), ctx, refusal)?;
    if crate::signals::draining() || refusal.closes_connection() {
        session.set_keepalive(None);
    }
    if ctx.state.grpc.is_grpc() {
        ctx.grpc_answer = Some((refusal.status(), refusal.grpc_code()));
        let resp = grpc_shaped(
            &resp,
            ctx.state.grpc,
            refusal.grpc_code(),
            &refusal.to_string(),
        )?;
        return write_grpc(session, ctx.state.grpc, resp).await;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

/// `resp` as a gRPC trailers-only answer: 200, `grpc-status: code`, `grpc-message`, the
/// content type of the request's kind; other headers kept, body dropped.
fn grpc_shaped(
    resp: &ResponseHeader,
    kind: crate::grpc::Kind,
    code: crate::grpc::Code,
    message: &str,
) -> pingora::Result<ResponseHeader> {
    let mut out = ResponseHeader::build(200, Some(resp.headers.len() + 3))?;
    for (name, value) in resp.headers.iter() {
        if name != http::header::CONTENT_TYPE
            && name != http::header::CONTENT_LENGTH
            && name != http::header::CONNECTION
        {
            out.append_header(name.clone(), value.clone())?;
        }
    }
    // The gRPC-Web bridge turns application/grpc into application/grpc-web on the way out.
    let content_type = match kind {
        crate::grpc::Kind::WebText => "application/grpc-web-text",
        _ => "application/grpc",
    };
    out.insert_header(http::header::CONTENT_TYPE, content_type)?;
    out.insert_header("grpc-status", code.as_str())?;
    out.insert_header("grpc-message", crate::grpc::encode_message(message))?;
    Ok(out)
}

/// Writes a gRPC answer: on HTTP/2 one HEADERS frame that ends the stream (trailers-only, as
/// gRPC clients expect); otherwise (gRPC-Web over HTTP/1.1) headers and an empty body, through
/// the downstream modules so the gRPC-Web bridge sees them.
async fn write_grpc(
    session: &mut Session,
    kind: crate::grpc::Kind,
    mut resp: ResponseHeader,
) -> pingora::Result<()> {
    if kind == crate::grpc::Kind::Native {
        if let pingora::protocols::http::ServerSession::H2(h2) = session.as_downstream_mut() {
            return h2.write_response_header(Box::new(resp), true);
        }
    }
    if session.as_downstream().is_http2() {
        resp.remove_header(&http::header::CONTENT_LENGTH);
    } else {
        resp.insert_header(http::header::CONTENT_LENGTH, "0")?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(None, true).await
}

/// Writes the error response for a failed proxy attempt (`status` from [`status_for`]) if the
/// client can still take one.
pub async fn fail(session: &mut Session, ctx: &mut RequestCtx, e: &Error, status: u16) {
    if status == 0 {
        return;
    }
    let refusal = Refusal::of(e);
    if let Some(reason) = refusal.and_then(Refusal::edge_reason) {
        ctx.snapshot.edge_refusal(reason);
    }
    if session.response_written().is_some() {
        return;
    }
    let req = session.req_header();
    let built = match refusal {
        Some(refusal) => answer(req, ctx, refusal),
        None => finish(
            req,
            ctx,
            status,
            plain_body(message_for(status), ctx.state.request_id.as_str()),
            // Every 503 the gateway writes says when to come back.
            if status == 503 {
                &[("retry-after", "1")]
            } else {
                &[]
            },
        ),
    };
    let (resp, body) = match built {
        Ok(b) => b,
        Err(e) => {
            log::debug!("could not build error response: {e}");
            return;
        }
    };
    if ctx.state.grpc.is_grpc() {
        let (code, message) = match refusal {
            Some(r) => (r.grpc_code(), r.to_string()),
            None => (
                crate::grpc::Code::for_status(status),
                message_for(status).to_string(),
            ),
        };
        session.set_keepalive(None);
        ctx.grpc_answer = Some((status, code));
        let written = grpc_shaped(&resp, ctx.state.grpc, code, &message);
        if let Err(e) = match written {
            Ok(resp) => write_grpc(session, ctx.state.grpc, resp).await,
            Err(e) => Err(e),
        } {
            log::debug!("could not send error response: {e}");
        }
        return;
    }
    if let Err(e) = session.write_error_response(resp, body).await {
        log::debug!("could not send error response: {e}");
    }
}

/// The status, headers and body answering `refusal`.
fn answer(
    req: &RequestHeader,
    ctx: &mut RequestCtx,
    refusal: &Refusal,
) -> pingora::Result<(ResponseHeader, Bytes)> {
    let id = ctx.state.request_id;
    let id = id.as_str();
    let status = refusal.status();
    match refusal {
        Refusal::BadRequest(reason) => finish(
            req,
            ctx,
            status,
            Bytes::from(
                serde_json::json!({
                    "error": reason.message(),
                    "reason": reason.as_str(),
                    "request_id": id,
                })
                .to_string(),
            ),
            &[("connection", "close")],
        ),
        Refusal::UriTooLong => finish(
            req,
            ctx,
            status,
            plain_body("URI too long: the request line exceeds the limit", id),
            &[("connection", "close")],
        ),
        Refusal::HeaderFieldsTooLarge => finish(
            req,
            ctx,
            status,
            plain_body(
                "request header fields too large: too many header fields or bytes",
                id,
            ),
            &[("connection", "close")],
        ),
        Refusal::PayloadTooLarge { limit } => finish(
            req,
            ctx,
            status,
            Bytes::from(
                serde_json::json!({
                    "error": "payload too large: the request body exceeds the limit",
                    "limit": limit,
                    "request_id": id,
                })
                .to_string(),
            ),
            &[("connection", "close")],
        ),
        Refusal::Preflight(headers) => {
            // 204: no body, no Content-Length; the CORS answer is complete as built.
            let mut resp = ResponseHeader::build(204, Some(headers.len() + 1))?;
            for (name, value) in headers.iter() {
                resp.append_header(name.clone(), value.clone())?;
            }
            resp.insert_header(REQUEST_ID, id)?;
            Ok((resp, Bytes::new()))
        }
        Refusal::CorsDenied(_) => {
            // Without any CORS header: the browser must not expose this answer to the page.
            let body = plain_body(&refusal.to_string(), id);
            let mut resp = ResponseHeader::build(status, Some(4))?;
            resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
            resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
            resp.insert_header(REQUEST_ID, id)?;
            // Every response of a CORS route varies by origin, this one included.
            resp.insert_header(http::header::VARY, "Origin")?;
            Ok((resp, body))
        }
        Refusal::Redirect(location) => finish(
            req,
            ctx,
            status,
            plain_body("moved to HTTPS", id),
            &[("location", location)],
        ),
        Refusal::Misdirected => finish(req, ctx, status, plain_body(&refusal.to_string(), id), &[]),
        Refusal::NotFound => finish(req, ctx, status, plain_body(&refusal.to_string(), id), &[]),
        Refusal::MethodNotAllowed(allowed) => {
            let allow = allowed.allow_header();
            finish(
                req,
                ctx,
                status,
                plain_body(&refusal.to_string(), id),
                &[("allow", &allow)],
            )
        }
        Refusal::Denied(denial) if denial.reason == crate::auth::Reason::Unavailable => finish(
            req,
            ctx,
            status,
            denial_body(denial, id),
            &[("retry-after", "1")],
        ),
        Refusal::Denied(denial) => {
            let challenge = challenge(denial);
            finish(
                req,
                ctx,
                status,
                denial_body(denial, id),
                &[("www-authenticate", &challenge)],
            )
        }
        Refusal::RateLimited(decision) => {
            let retry = decision.retry_after.to_string();
            let body = rate_limited_body(ctx, decision, id);
            finish(req, ctx, status, body, &[("retry-after", &retry)])
        }
        Refusal::RateLimitStoreUnavailable => finish(
            req,
            ctx,
            status,
            plain_body("service unavailable: rate limit store unavailable", id),
            &[("retry-after", "1")],
        ),
        Refusal::NoHealthyBackend { retry_after } => {
            let retry = retry_after.to_string();
            finish(
                req,
                ctx,
                status,
                plain_body("service unavailable: no healthy backend", id),
                &[("retry-after", &retry)],
            )
        }
        Refusal::CircuitOpen { retry_after } => {
            let retry = retry_after.to_string();
            finish(
                req,
                ctx,
                status,
                plain_body("service unavailable: every backend's circuit is open", id),
                &[("retry-after", &retry)],
            )
        }
        Refusal::Overloaded => finish(
            req,
            ctx,
            status,
            plain_body("service unavailable: upstream at its concurrency limit", id),
            &[("retry-after", "1")],
        ),
        Refusal::DeadlineExceeded => finish(
            req,
            ctx,
            status,
            plain_body("gateway timeout: the route deadline passed", id),
            &[],
        ),
        Refusal::GrpcNeedsHttp2 | Refusal::GrpcWebUnsupported(_) | Refusal::UpgradeNotAllowed => {
            finish(req, ctx, status, plain_body(&refusal.to_string(), id), &[])
        }
    }
}

/// The response header for `body`, with the route's response policies applied.
fn finish(
    req: &RequestHeader,
    ctx: &mut RequestCtx,
    status: u16,
    body: Bytes,
    extra: &[(&'static str, &str)],
) -> pingora::Result<(ResponseHeader, Bytes)> {
    let mut resp = ResponseHeader::build(status, Some(4 + extra.len()))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(REQUEST_ID, ctx.state.request_id_value())?;
    for (name, value) in extra {
        resp.insert_header(*name, *value)?;
    }
    if let Some(route) = ctx.state.route {
        let RequestCtx {
            snapshot, state, ..
        } = ctx;
        state.gateway_response = true;
        snapshot
            .pipeline(route)
            .on_response(req, &mut resp, state)?;
    }
    Ok((resp, body))
}

/// `{"error": message, "request_id": id}`.
fn plain_body(message: &str, request_id: &str) -> Bytes {
    Bytes::from(serde_json::json!({ "error": message, "request_id": request_id }).to_string())
}

/// The RFC 6750 challenge for a denial. The credential itself never appears.
fn challenge(denial: &Denial) -> String {
    let description = denial.description.replace(['"', '\\'], "'");
    if denial.reason == crate::auth::Reason::Missing {
        "Bearer realm=\"gatehouse\"".to_string()
    } else if denial.reason.is_forbidden() {
        format!("Bearer realm=\"gatehouse\", error=\"insufficient_scope\", error_description=\"{description}\"")
    } else {
        format!("Bearer realm=\"gatehouse\", error=\"invalid_token\", error_description=\"{description}\"")
    }
}

/// `{"error", "reason", "detail", "request_id"}` for a 401/403.
fn denial_body(denial: &Denial, request_id: &str) -> Bytes {
    let error = if denial.reason == crate::auth::Reason::Missing {
        "authentication required"
    } else if denial.reason == crate::auth::Reason::Unavailable {
        "service unavailable: the token could not be checked"
    } else if denial.reason.is_forbidden() {
        "forbidden"
    } else {
        "invalid credentials"
    };
    Bytes::from(
        serde_json::json!({
            "error": error,
            "reason": denial.reason.as_str(),
            "detail": denial.description,
            "request_id": request_id,
        })
        .to_string(),
    )
}

/// `{"error": "rate limit exceeded", "tier", "limit", "policy", "retry_after", "upgrade_url",
/// "request_id"}` for a 429.
fn rate_limited_body(ctx: &RequestCtx, d: &Decision, request_id: &str) -> Bytes {
    let limiter = ctx.snapshot.ratelimit();
    Bytes::from(
        serde_json::json!({
            "error": "rate limit exceeded",
            "tier": limiter.tier_name(d.tier),
            "limit": d.refusing_limit(),
            "policy": match d.limited_by {
                Some(Limited::Daily) => "daily",
                Some(Limited::Monthly) => "monthly",
                _ => "burst",
            },
            "retry_after": d.retry_after,
            "upgrade_url": limiter.upgrade_url(d.tier),
            "request_id": request_id,
        })
        .to_string(),
    )
}
