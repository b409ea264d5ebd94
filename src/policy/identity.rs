//! Identity headers, on every route (public ones too): copies of `X-Consumer-Id`,
//! `X-Consumer-Tier`, `X-Auth-Method`, `X-Auth-Roles`, `X-Auth-Scopes` and
//! `X-Client-Cert-Subject` sent by the client are removed, and the caller's are set (from
//! authentication, and from the TLS client certificate with mTLS), so an upstream can trust
//! them.

use pingora::http::RequestHeader;

use super::{Phases, Policy, RequestState};
use crate::auth::{IDENTITY_HEADERS, IDENTITY_HEADER_TEXT};

/// The identity-header step (present in every pipeline).
pub struct IdentityHeaders;

impl Policy for IdentityHeaders {
    const PHASES: Phases = Phases::UPSTREAM_REQUEST;

    fn on_upstream_request(
        &self,
        _req: &RequestHeader,
        req: &mut RequestHeader,
        state: &RequestState,
    ) -> pingora::Result<()> {
        for name in &IDENTITY_HEADERS {
            // Most requests carry none: a look-up is cheaper than a removal.
            if req.headers.contains_key(name) {
                req.remove_header(name);
            }
        }
        if let Some(id) = &state.identity {
            for (i, value) in &id.headers {
                req.insert_header_static(
                    &IDENTITY_HEADERS[*i],
                    IDENTITY_HEADER_TEXT[*i],
                    value.clone(),
                );
            }
        }
        if let Some(subject) = &state.client_cert_subject {
            if let Ok(v) = http::HeaderValue::from_str(subject) {
                req.insert_header_static(&IDENTITY_HEADERS[5], IDENTITY_HEADER_TEXT[5], v);
            }
        }
        Ok(())
    }
}
