//! Active health checks: a cluster's probe (Pingora's `HttpHealthCheck` or `TcpHealthCheck`, or
//! our [`GrpcHealthCheck`]), speaking the upstream's protocol and TLS, its schedule and one
//! round of checks. Thresholds are ours, so that health state lives in
//! [`BackendState`](super::backend::BackendState) and survives reloads. The background service
//! that runs due rounds for whatever the current snapshot holds is
//! [`crate::services::health`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::connectors::http::Connector as HttpConnector;
use pingora::http::RequestHeader;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::Backend;
use pingora::protocols::http::client::HttpSession;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};
use tokio::task::JoinSet;

use super::Cluster;
use crate::config::{HealthCheckKind, HealthCheckSpec, UpstreamSpec};

/// A cluster's health check: the probe, its settings and its schedule.
pub struct Checker {
    probe: Arc<dyn HealthCheck + Send + Sync>,
    spec: HealthCheckSpec,
    running: AtomicBool,
    next_round: Mutex<Option<Instant>>,
}

impl Checker {
    /// Builds the probe for `spec`, speaking `upstream`'s protocol and TLS.
    pub fn new(spec: &HealthCheckSpec, upstream: &UpstreamSpec) -> Self {
        let template = || {
            let mut peer = super::peer_template(upstream, std::net::SocketAddr::from(([0; 4], 1)));
            peer.options.connection_timeout = Some(spec.timeout);
            peer.options.read_timeout = Some(spec.timeout);
            peer.options.write_timeout = Some(spec.timeout);
            // Probes must not ride on a pooled connection: they check that new ones work.
            peer.options.max_h2_streams = 1;
            peer
        };
        let probe: Arc<dyn HealthCheck + Send + Sync> = match &spec.kind {
            HealthCheckKind::Http { path, host } => {
                let mut check = HttpHealthCheck::new(host, false);
                // The path was validated at load; were it not, the probe would keep "/".
                if let Ok(uri) = http::Uri::try_from(path.as_str()) {
                    check.req.set_uri(uri);
                }
                check.peer_template = template();
                Arc::new(check)
            }
            HealthCheckKind::Grpc { service } => {
                Arc::new(GrpcHealthCheck::new(template(), service))
            }
            HealthCheckKind::Tcp => {
                let mut check = TcpHealthCheck::new();
                check.peer_template.options.connection_timeout = Some(spec.timeout);
                Arc::from(check as Box<dyn HealthCheck + Send + Sync>)
            }
        };
        Checker {
            probe,
            spec: spec.clone(),
            running: AtomicBool::new(false),
            next_round: Mutex::new(None),
        }
    }

    /// Claims the next round if it is due; the caller must then run it ([`run_round`]).
    pub fn claim_round(&self, now: Instant) -> bool {
        let Ok(mut next) = self.next_round.lock() else {
            return false;
        };
        if next.is_some_and(|t| now < t) || self.running.swap(true, Ordering::AcqRel) {
            return false;
        }
        *next = Some(now + self.spec.interval);
        true
    }
}

/// Probes every backend of `cluster` once, concurrently, and records the results.
pub async fn run_round(cluster: Arc<Cluster>) {
    let Some(checker) = cluster.health.as_ref() else {
        return;
    };
    let mut probes = JoinSet::new();
    for (i, member) in cluster.members().iter().enumerate() {
        let probe = Arc::clone(&checker.probe);
        let target = member.check_target.clone();
        let timeout = checker.spec.timeout;
        probes.spawn(async move {
            let ok = match tokio::time::timeout(timeout, probe.check(&target)).await {
                Ok(Ok(())) => true,
                Ok(Err(e)) => {
                    log::debug!("health probe of {:?} failed: {e}", target.addr);
                    false
                }
                Err(_) => {
                    log::debug!("health probe of {:?} timed out", target.addr);
                    false
                }
            };
            (i, ok)
        });
    }
    while let Some(joined) = probes.join_next().await {
        let Ok((i, ok)) = joined else { continue };
        let member = &cluster.members()[i];
        let spec = &checker.spec;
        match member
            .state
            .observe(ok, spec.healthy_threshold, spec.unhealthy_threshold)
        {
            Some(true) => log::info!(
                "upstream {} backend {} is healthy again",
                cluster.name(),
                member.addr
            ),
            Some(false) => log::warn!(
                "upstream {} backend {} is unhealthy",
                cluster.name(),
                member.addr
            ),
            None => {}
        }
    }
    checker.running.store(false, Ordering::Release);
}

/// `grpc.health.v1.Health/Check` over HTTP/2: healthy when the answer is `grpc-status: 0` with
/// status `SERVING`.
pub struct GrpcHealthCheck {
    peer_template: HttpPeer,
    connector: HttpConnector,
    request: RequestHeader,
    body: Bytes,
}

impl GrpcHealthCheck {
    /// A probe asking about `service` (empty: the server as a whole).
    pub fn new(peer_template: HttpPeer, service: &str) -> Self {
        let mut request = RequestHeader::build("POST", b"/grpc.health.v1.Health/Check", None)
            .expect("static request");
        for (name, value) in [
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("user-agent", "gatehouse-health"),
        ] {
            request.insert_header(name, value).expect("static header");
        }
        GrpcHealthCheck {
            peer_template,
            connector: HttpConnector::new(None),
            request,
            body: grpc_frame(&health_request(service)),
        }
    }
}

/// `HealthCheckRequest { service = 1 }` in protobuf.
fn health_request(service: &str) -> Vec<u8> {
    let mut msg = Vec::with_capacity(service.len() + 3);
    if !service.is_empty() {
        msg.push(0x0a);
        let mut len = service.len();
        while len >= 0x80 {
            msg.push((len as u8) | 0x80);
            len >>= 7;
        }
        msg.push(len as u8);
        msg.extend_from_slice(service.as_bytes());
    }
    msg
}

/// One uncompressed gRPC length-prefixed message.
fn grpc_frame(msg: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(5 + msg.len());
    frame.extend_from_slice(&[0]);
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(msg);
    frame.freeze()
}

/// The `status` of a `HealthCheckResponse` frame (field 1, varint); `SERVING` is 1.
fn serving_status(frame: &[u8]) -> Option<u64> {
    let msg = frame.get(5..)?;
    let mut i = 0;
    while i < msg.len() {
        let tag = msg[i];
        i += 1;
        let mut value = 0u64;
        let mut shift = 0;
        match tag & 7 {
            0 => loop {
                let b = *msg.get(i)?;
                i += 1;
                value |= u64::from(b & 0x7f) << shift;
                shift += 7;
                if b & 0x80 == 0 {
                    break;
                }
            },
            _ => return None,
        }
        if tag == 0x08 {
            return Some(value);
        }
    }
    // Proto3 omits the default: an empty message is UNKNOWN (0).
    Some(0)
}

fn fail(why: &'static str) -> Box<Error> {
    Error::explain(ErrorType::CustomCode("grpc health", 0), why)
}

#[async_trait]
impl HealthCheck for GrpcHealthCheck {
    fn health_threshold(&self, _success: bool) -> usize {
        // Thresholds are ours (BackendState::observe).
        1
    }

    async fn check(&self, target: &Backend) -> Result<()> {
        let mut peer = self.peer_template.clone();
        peer._address = target.addr.clone();
        let (session, _) = self.connector.get_http_session(&peer).await?;
        let HttpSession::H2(mut session) = session else {
            return Err(fail("the backend did not speak HTTP/2"));
        };
        let mut request = Box::new(self.request.clone());
        // HTTP/2 needs an authority: the TLS name when there is one, else the address.
        let authority = match peer.sni.as_str() {
            "" => target.addr.to_string(),
            sni => sni.to_string(),
        };
        request.insert_header(http::header::HOST, authority)?;
        session.write_request_header(request, false)?;
        session.write_request_body(self.body.clone(), true).await?;
        session.read_response_header().await?;
        let header = session
            .response_header()
            .ok_or_else(|| fail("no response"))?;
        if header.status != 200 {
            return Err(fail("HTTP status is not 200"));
        }
        let trailers_only = header.headers.get("grpc-status").cloned();
        let mut body = BytesMut::new();
        while let Some(chunk) = session.read_response_body().await? {
            body.extend_from_slice(&chunk);
            if body.len() > 64 * 1024 {
                return Err(fail("oversized health response"));
            }
        }
        let status = match trailers_only {
            Some(s) => Some(s),
            None => session
                .read_trailers()
                .await?
                .and_then(|t| t.get("grpc-status").cloned()),
        };
        if status.as_ref().map(|s| s.as_bytes()) != Some(b"0") {
            return Err(fail("grpc-status is not 0"));
        }
        match serving_status(&body) {
            Some(1) => Ok(()),
            _ => Err(fail("the service is not SERVING")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_request_encodes_the_service_name() {
        assert!(health_request("").is_empty());
        assert_eq!(health_request("a.B"), b"\x0a\x03a.B");
        assert_eq!(&grpc_frame(b"xy")[..], b"\x00\x00\x00\x00\x02xy");
    }

    #[test]
    fn serving_status_reads_field_one() {
        assert_eq!(serving_status(b"\x00\x00\x00\x00\x02\x08\x01"), Some(1));
        assert_eq!(serving_status(b"\x00\x00\x00\x00\x02\x08\x02"), Some(2));
        assert_eq!(serving_status(b"\x00\x00\x00\x00\x00"), Some(0));
        assert_eq!(serving_status(b"\x00"), None);
    }
}
