//! Why the gateway answers a request itself instead of (or after failing at) proxying it: one
//! typed enum (domain layer) for policies, routing and upstream selection. A refusal travels as
//! a value (`Err(Refusal)` from a policy) or as the cause of a Pingora error (from
//! `upstream_peer`); [`crate::proxy::respond`] is the one place that turns it into a status,
//! headers and a JSON body.

use crate::auth::Denial;
use crate::ratelimit::Decision;
use crate::routing::MethodSet;

/// The labels of `gatehouse_edge_refusals_total{reason}`.
pub const EDGE_REASONS: [&str; 9] = [
    "missing_host",
    "multiple_host",
    "invalid_target",
    "encoded_slash",
    "underscore_in_header",
    "malformed_json",
    "uri_too_long",
    "header_fields_too_large",
    "payload_too_large",
];

/// Why a request is malformed (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadRequest {
    /// An HTTP/1.1 request without `Host` (RFC 9112 §3.2).
    MissingHost,
    /// More than one `Host`.
    MultipleHost,
    /// The request target holds characters RFC 9112/3986 do not allow, or the request line
    /// is malformed.
    InvalidTarget,
    /// An encoded `/` or `\` in the path (`encoded_slash = "reject"`).
    EncodedSlash,
    /// A header name with `_` (`underscores_in_headers = "reject"`).
    UnderscoreInHeader,
    /// A JSON body that does not parse (on routes that transform it).
    MalformedJson,
}

impl BadRequest {
    /// The reason, as a metric label and in the JSON body.
    pub fn as_str(self) -> &'static str {
        match self {
            BadRequest::MissingHost => "missing_host",
            BadRequest::MultipleHost => "multiple_host",
            BadRequest::InvalidTarget => "invalid_target",
            BadRequest::EncodedSlash => "encoded_slash",
            BadRequest::UnderscoreInHeader => "underscore_in_header",
            BadRequest::MalformedJson => "malformed_json",
        }
    }

    /// What is wrong, in words.
    pub fn message(self) -> &'static str {
        match self {
            BadRequest::MissingHost => "bad request: HTTP/1.1 requests need a Host header",
            BadRequest::MultipleHost => "bad request: more than one Host header",
            BadRequest::InvalidTarget => {
                "bad request: the request target holds characters that are not allowed"
            }
            BadRequest::EncodedSlash => "bad request: encoded / or \\ in the path",
            BadRequest::UnderscoreInHeader => "bad request: header names must not contain _",
            BadRequest::MalformedJson => "bad request: the body is not valid JSON",
        }
    }
}

/// A request the gateway answers itself.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    /// The request is malformed (400); the connection is closed.
    #[error("{}", .0.message())]
    BadRequest(BadRequest),
    /// The request line is longer than `max_request_line` (414).
    #[error("URI too long")]
    UriTooLong,
    /// The head has more header bytes or fields than allowed (431).
    #[error("request header fields too large")]
    HeaderFieldsTooLarge,
    /// The body is larger than the route's `max_body` (413).
    #[error("payload too large")]
    PayloadTooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// No route matches (404).
    #[error("no route matches this request")]
    NotFound,
    /// A CORS preflight the route's CORS settings allow: answered 204 with these headers (not
    /// an error; the gateway answers it without the upstream).
    #[error("CORS preflight")]
    Preflight(Box<Vec<(http::HeaderName, http::HeaderValue)>>),
    /// A CORS preflight whose origin, method or headers are not allowed (403, without CORS
    /// headers).
    #[error("CORS preflight refused: {0}")]
    CorsDenied(&'static str),
    /// A plain-HTTP request on a gateway that redirects to HTTPS (308 to this location).
    #[error("redirect to HTTPS")]
    Redirect(String),
    /// A TLS request whose `Host` is not the SNI name, with `strict_sni` (421).
    #[error("misdirected request: the Host does not match the TLS server name")]
    Misdirected,
    /// A route matches everything but the method (405 with `Allow`).
    #[error("method not allowed on this route")]
    MethodNotAllowed(MethodSet),
    /// Authentication (401) or authorisation (403, for [`Denial::reason`]s that are
    /// forbidden) failed.
    #[error("{}", .0.description)]
    Denied(Denial),
    /// Over the rate limit (429).
    #[error("rate limit exceeded")]
    RateLimited(Box<Decision>),
    /// The shared rate-limit store failed and `on_store_error = "deny"` (503).
    #[error("rate limit store unavailable")]
    RateLimitStoreUnavailable,
    /// Every backend of the route's upstream is unhealthy or drained (503, `Retry-After` in
    /// seconds: the upstream's health-check interval, when a check could bring one back).
    #[error("no healthy backend")]
    NoHealthyBackend {
        /// Seconds a client should wait before trying again.
        retry_after: u64,
    },
    /// Every available backend's circuit is open (503, `Retry-After` in seconds).
    #[error("every circuit is open")]
    CircuitOpen {
        /// Seconds until a breaker half-opens.
        retry_after: u64,
    },
    /// The upstream is at `max_inflight` (503, `Retry-After: 1`).
    #[error("upstream at max_inflight")]
    Overloaded,
    /// The route deadline passed before an attempt could start (504).
    #[error("route deadline passed")]
    DeadlineExceeded,
    /// A gRPC request on a route whose upstream speaks HTTP/1.1 (502; gRPC 14 UNAVAILABLE).
    #[error(
        "this route's upstream speaks HTTP/1.1 and cannot carry gRPC (it needs protocol h2 or h2c)"
    )]
    GrpcNeedsHttp2,
    /// A gRPC-Web request on a route without `grpc_web = true`, or in the text encoding
    /// (415; gRPC 12 UNIMPLEMENTED).
    #[error("{0}")]
    GrpcWebUnsupported(&'static str),
    /// A WebSocket upgrade on a route with `websocket = false` (400).
    #[error("WebSocket upgrades are not allowed on this route")]
    UpgradeNotAllowed,
}

impl Refusal {
    /// The HTTP status of the answer.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::BadRequest(_) => 400,
            Refusal::UriTooLong => 414,
            Refusal::HeaderFieldsTooLarge => 431,
            Refusal::PayloadTooLarge { .. } => 413,
            Refusal::NotFound => 404,
            Refusal::Preflight(_) => 204,
            Refusal::Redirect(_) => 308,
            Refusal::Misdirected => 421,
            Refusal::CorsDenied(_) => 403,
            Refusal::MethodNotAllowed(_) => 405,
            Refusal::Denied(d) if d.reason.is_forbidden() => 403,
            Refusal::Denied(d) if d.reason == crate::auth::Reason::Unavailable => 503,
            Refusal::Denied(_) => 401,
            Refusal::RateLimited(_) => 429,
            Refusal::RateLimitStoreUnavailable
            | Refusal::NoHealthyBackend { .. }
            | Refusal::CircuitOpen { .. }
            | Refusal::Overloaded => 503,
            Refusal::DeadlineExceeded => 504,
            Refusal::GrpcNeedsHttp2 => 502,
            Refusal::GrpcWebUnsupported(_) => 415,
            Refusal::UpgradeNotAllowed => 400,
        }
    }

    /// The gRPC status of this refusal's answer to a gRPC request.
    pub fn grpc_code(&self) -> crate::grpc::Code {
        match self {
            Refusal::GrpcWebUnsupported(_) => crate::grpc::Code::Unimplemented,
            other => crate::grpc::Code::for_status(other.status()),
        }
    }

    /// Whether the connection must be closed after the answer (the rest of the request cannot
    /// be trusted or would have to be read).
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            Refusal::BadRequest(_)
                | Refusal::UriTooLong
                | Refusal::HeaderFieldsTooLarge
                | Refusal::PayloadTooLarge { .. }
        )
    }

    /// The position in [`EDGE_REASONS`] of an edge refusal (hygiene and body limits), `None`
    /// for other refusals.
    pub fn edge_reason(&self) -> Option<usize> {
        let label = match self {
            Refusal::BadRequest(b) => b.as_str(),
            Refusal::UriTooLong => "uri_too_long",
            Refusal::HeaderFieldsTooLarge => "header_fields_too_large",
            Refusal::PayloadTooLarge { .. } => "payload_too_large",
            _ => return None,
        };
        EDGE_REASONS.iter().position(|r| *r == label)
    }

    /// This refusal as a Pingora error (the form `upstream_peer` returns), typed
    /// `HTTPStatus(status)` with the refusal as its cause.
    pub fn into_error(self) -> Box<pingora::Error> {
        let status = self.status();
        pingora::Error::because(
            pingora::ErrorType::HTTPStatus(status),
            "refused by the gateway",
            self,
        )
    }

    /// The refusal a Pingora error carries, if it is one.
    pub fn of(e: &pingora::Error) -> Option<&Refusal> {
        e.root_cause().downcast_ref::<Refusal>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_survives_the_trip_through_a_pingora_error() {
        let e = Refusal::CircuitOpen { retry_after: 3 }.into_error();
        assert_eq!(e.etype(), &pingora::ErrorType::HTTPStatus(503));
        assert!(matches!(
            Refusal::of(&e),
            Some(Refusal::CircuitOpen { retry_after: 3 })
        ));
        assert!(Refusal::of(&pingora::Error::new(pingora::ErrorType::ReadError)).is_none());
    }
}
