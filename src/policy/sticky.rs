//! Sticky sessions by cookie (`[upstreams.NAME.sticky]`), for any balance policy.
//!
//! Each backend's cookie value is an opaque id, `base64url(HMAC-SHA256(secret, upstream ‖ 0 ‖
//! address))` cut to 128 bits: it does not reveal the address, a client cannot make one up for
//! a backend of its choosing, and it is the same across reloads, graceful upgrades and every
//! instance sharing the secret for as long as the backend stays in the upstream. `on_request`
//! reads the cookie (on WebSocket upgrade requests too) into
//! [`RequestState::sticky_backend`]; the attempt prefers that backend while it is healthy, not
//! drained and its breaker admits it, and otherwise lets the policy choose and records the
//! choice in [`RequestState::sticky_assigned`]; `on_response` then sets the cookie
//! (`HttpOnly; SameSite=Lax; Path=/`, `Max-Age` from `ttl`, `Secure` on TLS listeners).

use std::collections::HashMap;

use base64::Engine;
use hmac::{Hmac, Mac};
use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};
use sha2::Sha256;

use super::{Phases, Policy, RequestState};
use crate::config::{StickySpec, UpstreamSpec};
use crate::refusal::Refusal;

/// Length of a cookie value: 16 bytes of MAC in unpadded base64url.
const ID_LEN: usize = 22;

/// The sticky-session step of a route whose upstream has `sticky`.
pub struct Sticky {
    cookie: String,
    by_id: HashMap<[u8; ID_LEN], usize>,
    /// `Set-Cookie` value for each backend, by index.
    set_cookie: Box<[HeaderValue]>,
}

impl Sticky {
    /// The step for an upstream, if it is sticky.
    pub fn new(upstream: &UpstreamSpec) -> Option<Self> {
        let spec = upstream.sticky.as_ref()?;
        let mut by_id = HashMap::with_capacity(upstream.backends.len());
        let mut set_cookie = Vec::with_capacity(upstream.backends.len());
        for (i, b) in upstream.backends.iter().enumerate() {
            let id = backend_id(spec, &upstream.name, b.addr);
            by_id.insert(id, i);
            set_cookie.push(cookie_header(spec, &id, false));
        }
        Some(Sticky {
            cookie: spec.cookie.clone(),
            by_id,
            set_cookie: set_cookie.into_boxed_slice(),
        })
    }

    fn lookup(&self, req: &RequestHeader) -> Option<usize> {
        let value = crate::forwarding::cookie(req, &self.cookie)?;
        let id: [u8; ID_LEN] = value.try_into().ok()?;
        self.by_id.get(&id).copied()
    }
}

/// The opaque id of backend `addr` of upstream `name`.
fn backend_id(spec: &StickySpec, name: &str, addr: std::net::SocketAddr) -> [u8; ID_LEN] {
    let mut mac = Hmac::<Sha256>::new_from_slice(spec.secret.expose().as_bytes())
        .expect("HMAC takes any key length");
    mac.update(name.as_bytes());
    mac.update(&[0]);
    mac.update(addr.to_string().as_bytes());
    let tag = mac.finalize().into_bytes();
    let mut id = [0u8; ID_LEN];
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode_slice(&tag[..16], &mut id)
        .expect("16 bytes encode to 22");
    id
}

fn cookie_header(spec: &StickySpec, id: &[u8; ID_LEN], secure: bool) -> HeaderValue {
    let mut v = format!(
        "{}={}; Path=/; HttpOnly; SameSite=Lax",
        spec.cookie,
        std::str::from_utf8(id).expect("base64 is ASCII")
    );
    if let Some(ttl) = spec.ttl {
        v.push_str(&format!("; Max-Age={}", ttl.as_secs()));
    }
    if secure {
        v.push_str("; Secure");
    }
    HeaderValue::from_str(&v).expect("validated cookie name and base64 value")
}

impl Policy for Sticky {
    const PHASES: Phases = Phases::REQUEST.union(Phases::RESPONSE);

    fn on_request(
        &self,
        req: &RequestHeader,
        state: &mut RequestState,
    ) -> impl std::future::Future<Output = Result<(), Refusal>> + Send {
        state.sticky_backend = self.lookup(req);
        std::future::ready(Ok(()))
    }

    fn on_response(
        &self,
        _req: &RequestHeader,
        resp: &mut ResponseHeader,
        state: &mut RequestState,
    ) -> pingora::Result<()> {
        if state.gateway_response {
            return Ok(());
        }
        let Some(value) = state.sticky_assigned.and_then(|i| self.set_cookie.get(i)) else {
            return Ok(());
        };
        if state.tls {
            let mut v = value.as_bytes().to_vec();
            v.extend_from_slice(b"; Secure");
            let v = HeaderValue::from_bytes(&v).expect("valid header bytes");
            resp.append_header(http::header::SET_COOKIE, v)?;
        } else {
            resp.append_header(http::header::SET_COOKIE, value.clone())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BackendSpec, Secret};

    fn upstream(secret: &str, ports: &[u16]) -> UpstreamSpec {
        let mut u: UpstreamSpec = crate::config::upstream::test_spec("chat");
        u.backends = ports
            .iter()
            .map(|p| BackendSpec {
                addr: std::net::SocketAddr::from(([127, 0, 0, 1], *p)),
                weight: 1,
            })
            .collect();
        u.sticky = Some(StickySpec {
            cookie: "gh".into(),
            ttl: Some(std::time::Duration::from_secs(3600)),
            secret_env: "X".into(),
            secret: Secret::new(secret.into()),
        });
        u
    }

    fn req(cookie: &str) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        r.insert_header("cookie", cookie).unwrap();
        r
    }

    #[test]
    fn ids_are_opaque_stable_and_keyed() {
        let a = Sticky::new(&upstream("k".repeat(32).as_str(), &[8001, 8002])).unwrap();
        let b = Sticky::new(&upstream("k".repeat(32).as_str(), &[8002, 8001])).unwrap();
        let other = Sticky::new(&upstream("z".repeat(32).as_str(), &[8001, 8002])).unwrap();
        let v = a.set_cookie[0].to_str().unwrap().to_string();
        assert!(!v.contains("8001") && !v.contains("127.0.0.1"), "{v}");
        assert!(
            v.ends_with("; Path=/; HttpOnly; SameSite=Lax; Max-Age=3600"),
            "{v}"
        );
        let id = v.split(';').next().unwrap().trim_start_matches("gh=");
        // The same backend in another order, in another instance: the same id.
        assert_eq!(b.lookup(&req(&format!("x=1; gh={id}"))), Some(1));
        assert_eq!(a.lookup(&req(&format!("gh={id}"))), Some(0));
        // Another secret does not accept it; made-up values are ignored.
        assert_eq!(other.lookup(&req(&format!("gh={id}"))), None);
        assert_eq!(a.lookup(&req("gh=127.0.0.1:8002")), None);
        assert_eq!(a.lookup(&req("gh=AAAAAAAAAAAAAAAAAAAAAA")), None);
    }
}
