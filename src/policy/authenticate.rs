//! Authentication: the route's providers verify the request's credentials (any one suffices);
//! the identity goes into the request state for the policies after it. Refuses with 401
//! (`Refusal::Denied`). With `hide_credentials`, the credential headers are removed before the
//! request goes upstream. Outcomes are counted in `gatehouse_auth_total`; when an
//! [`authorize`](super::authorize) step follows, it counts the success instead.

use std::sync::Arc;

use http::HeaderName;
use pingora::http::RequestHeader;

use super::{Phases, Policy, RequestState};
use crate::auth::{AuthCounters, Authenticator};
use crate::config::{ProviderId, RouteSpec};
use crate::refusal::Refusal;
use crate::trace::{Kind, Value};

/// The authentication step of a route.
pub struct Authenticate {
    auth: Arc<Authenticator>,
    providers: Box<[ProviderId]>,
    counters: Arc<AuthCounters>,
    counts_success: bool,
    hide: Box<[HeaderName]>,
}

impl Authenticate {
    /// The step for route `spec` (which has `auth`); `counts_success` when no authorisation
    /// step follows.
    pub fn new(
        spec: &RouteSpec,
        auth: &Arc<Authenticator>,
        counters: Arc<AuthCounters>,
        counts_success: bool,
    ) -> Self {
        let providers: Box<[ProviderId]> = spec.auth.iter().map(|a| a.id).collect();
        let mut hide: Vec<HeaderName> = Vec::new();
        if spec.hide_credentials {
            for &p in providers.iter() {
                let h = auth.credential_header(p);
                if !hide.contains(&h) {
                    hide.push(h);
                }
            }
        }
        Authenticate {
            auth: Arc::clone(auth),
            providers,
            counters,
            counts_success,
            hide: hide.into_boxed_slice(),
        }
    }
}

impl Policy for Authenticate {
    const PHASES: Phases = Phases::REQUEST.union(Phases::UPSTREAM_REQUEST);

    async fn on_request(
        &self,
        req: &RequestHeader,
        state: &mut RequestState,
    ) -> Result<(), Refusal> {
        let span = state.trace.open("auth", Kind::Internal);
        let result = if span.is_some() {
            // A JWKS refetch the check waits for becomes a child span of this one.
            let (result, refetch) = crate::auth::jwks::observe_refetch(
                self.auth.authenticate(&self.providers, &req.headers),
            )
            .await;
            if let (Some(parent), Some((took, ok))) = (span, refetch) {
                state.trace.record_child(
                    parent,
                    "jwks refetch",
                    took,
                    vec![("jwks.refetch.ok", Value::Bool(ok))],
                );
            }
            result
        } else {
            self.auth.authenticate(&self.providers, &req.headers).await
        };
        match result {
            Ok(identity) => {
                if self.counts_success {
                    self.counters.record(Some(identity.provider), None);
                }
                if span.is_some() {
                    state.trace.close(
                        span,
                        [
                            ("auth.method", Value::Str(identity.method.clone())),
                            ("consumer", Value::Str(identity.consumer.clone())),
                        ],
                        None,
                    );
                }
                state.identity = Some(identity);
                Ok(())
            }
            Err(denial) => {
                self.counters.record(denial.provider, Some(denial.reason));
                if span.is_some() {
                    state.trace.close(
                        span,
                        [("auth.result", Value::Static(denial.reason.as_str()))],
                        Some(denial.reason.as_str().to_string()),
                    );
                }
                Err(Refusal::Denied(denial))
            }
        }
    }

    fn on_upstream_request(
        &self,
        _req: &RequestHeader,
        upstream: &mut RequestHeader,
        _state: &RequestState,
    ) -> pingora::Result<()> {
        for name in self.hide.iter() {
            upstream.remove_header(name);
        }
        Ok(())
    }
}
