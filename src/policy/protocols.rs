//! Protocol admission, first in every pipeline: what a route accepts besides plain HTTP.
//!
//! - A gRPC request (any `application/grpc*`) on a route whose upstream speaks HTTP/1.1 is
//!   refused with gRPC status 14 UNAVAILABLE and a message naming the fix: gRPC needs HTTP/2
//!   to the backend (trailers).
//! - A gRPC-Web request is bridged only on routes with `grpc_web = true`; elsewhere, and in the
//!   text (base64) encoding which Pingora's bridge does not decode, it gets 12 UNIMPLEMENTED.
//! - A WebSocket upgrade (`Upgrade: websocket`) on a route with `websocket = false` gets 400.
//! - A gRPC request goes upstream with `te: trailers` (gRPC requires it; Pingora strips `TE`
//!   as a hop-by-hop header when it turns an HTTP/1.1 request, e.g. a bridged gRPC-Web one,
//!   into HTTP/2).

use pingora::http::RequestHeader;

use super::{Phases, Policy, RequestState};
use crate::config::{Protocol, RouteSpec};
use crate::grpc::Kind;
use crate::refusal::Refusal;

/// The protocol admission step of a route.
pub struct ProtocolGate {
    upstream_http1: bool,
    grpc_web: bool,
    websocket: bool,
}

impl ProtocolGate {
    /// The step for route `spec`, whose upstream speaks `protocol`.
    pub fn new(spec: &RouteSpec, protocol: Protocol) -> Self {
        ProtocolGate {
            upstream_http1: protocol == Protocol::Http1,
            grpc_web: spec.grpc_web,
            websocket: spec.websocket,
        }
    }

    fn check(&self, req: &RequestHeader, state: &RequestState) -> Result<(), Refusal> {
        match state.grpc {
            Kind::None => {}
            Kind::WebText => {
                return Err(Refusal::GrpcWebUnsupported(
                    "the gRPC-Web text encoding is not supported: use application/grpc-web+proto",
                ))
            }
            Kind::Web if !self.grpc_web => {
                return Err(Refusal::GrpcWebUnsupported(
                    "gRPC-Web is not enabled on this route",
                ))
            }
            Kind::Web if state.grpc_web_unbridged => {
                return Err(Refusal::GrpcWebUnsupported(
                    "gRPC-Web was enabled by a reload: it takes effect after an upgrade",
                ))
            }
            Kind::Web | Kind::Native if self.upstream_http1 => return Err(Refusal::GrpcNeedsHttp2),
            Kind::Web | Kind::Native => {}
        }
        if !self.websocket && is_websocket_upgrade(req) {
            return Err(Refusal::UpgradeNotAllowed);
        }
        Ok(())
    }
}

impl Policy for ProtocolGate {
    const PHASES: Phases = Phases::REQUEST.union(Phases::UPSTREAM_REQUEST);

    fn on_upstream_request(
        &self,
        _req: &RequestHeader,
        upstream: &mut RequestHeader,
        state: &RequestState,
    ) -> pingora::Result<()> {
        if state.grpc.is_grpc() {
            upstream.insert_header(http::header::TE, "trailers")?;
        }
        Ok(())
    }

    fn on_request(
        &self,
        req: &RequestHeader,
        state: &mut RequestState,
    ) -> impl std::future::Future<Output = Result<(), Refusal>> + Send {
        std::future::ready(self.check(req, state))
    }
}

/// Whether `req` asks to upgrade to WebSocket (`Upgrade: websocket`, any case).
pub fn is_websocket_upgrade(req: &RequestHeader) -> bool {
    req.headers.get_all(http::header::UPGRADE).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|p| p.trim_ascii().eq_ignore_ascii_case(b"websocket"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(http1: bool, grpc_web: bool, websocket: bool) -> ProtocolGate {
        ProtocolGate {
            upstream_http1: http1,
            grpc_web,
            websocket,
        }
    }

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/x", None).unwrap();
        for (k, v) in headers {
            r.insert_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn grpc_needs_an_http2_upstream() {
        let mut state = RequestState {
            grpc: Kind::Native,
            ..Default::default()
        };
        let r = req(&[]);
        assert!(matches!(
            gate(true, false, true).check(&r, &state),
            Err(Refusal::GrpcNeedsHttp2)
        ));
        assert!(gate(false, false, true).check(&r, &state).is_ok());
        state.grpc = Kind::Web;
        assert!(matches!(
            gate(false, false, true).check(&r, &state),
            Err(Refusal::GrpcWebUnsupported(_))
        ));
        assert!(gate(false, true, true).check(&r, &state).is_ok());
        state.grpc = Kind::WebText;
        assert!(gate(false, true, true).check(&r, &state).is_err());
    }

    #[test]
    fn upgrades_are_refused_where_disallowed() {
        let state = RequestState::default();
        let ws = req(&[("upgrade", "WebSocket"), ("connection", "upgrade")]);
        assert!(matches!(
            gate(true, false, false).check(&ws, &state),
            Err(Refusal::UpgradeNotAllowed)
        ));
        assert!(gate(true, false, true).check(&ws, &state).is_ok());
        assert!(gate(true, false, false).check(&req(&[]), &state).is_ok());
    }
}
