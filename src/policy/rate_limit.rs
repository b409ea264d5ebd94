//! Rate limiting: checks the route's tiered limit for the caller (429 when over it, 503 when
//! the shared store is down and `on_store_error = "deny"`), with the tier's rate scaled by the
//! upstream's health on `adaptive_limit` routes, and adds the rate-limit headers to every
//! response of the route (allowed, refused or failed).

use std::sync::Arc;

use pingora::http::{RequestHeader, ResponseHeader};

use super::{Phases, Policy, RequestState};
use crate::ratelimit::{RateLimiter, RouteLimiter};
use crate::refusal::Refusal;
use crate::trace::{Kind, Value};
use crate::upstream::UpstreamState;

/// The rate-limit step of a route.
pub struct RateLimit {
    limiter: Arc<RateLimiter>,
    route: RouteLimiter,
    adaptive: Option<Arc<UpstreamState>>,
}

impl RateLimit {
    /// The step for `route`; `adaptive` is the upstream's state on `adaptive_limit` routes.
    pub fn new(
        limiter: &Arc<RateLimiter>,
        route: RouteLimiter,
        adaptive: Option<Arc<UpstreamState>>,
    ) -> Self {
        RateLimit {
            limiter: Arc::clone(limiter),
            route,
            adaptive,
        }
    }
}

impl Policy for RateLimit {
    const PHASES: Phases = Phases::REQUEST.union(Phases::RESPONSE);

    async fn on_request(
        &self,
        req: &RequestHeader,
        state: &mut RequestState,
    ) -> Result<(), Refusal> {
        let factor = self.adaptive.as_ref().map_or(1.0, |u| u.factor());
        let span = state.trace.open("rate_limit", Kind::Internal);
        let decision = self
            .limiter
            .check(
                &self.route,
                state.identity.as_deref(),
                state.client_ip,
                &req.headers,
                factor,
            )
            .await;
        if span.is_some() {
            state.trace.close(
                span,
                [
                    ("ratelimit.store", Value::Static(self.limiter.store_name())),
                    (
                        "ratelimit.tier",
                        Value::Str(self.limiter.tier_name(decision.tier).to_string()),
                    ),
                    ("ratelimit.allowed", Value::Bool(decision.allowed)),
                ],
                decision
                    .store_unavailable
                    .then(|| "rate-limit store unavailable".to_string()),
            );
        }
        if decision.store_unavailable {
            // on_store_error = allow / deny: there is no state worth reporting in headers.
            return if decision.allowed {
                Ok(())
            } else {
                Err(Refusal::RateLimitStoreUnavailable)
            };
        }
        state.ratelimit = Some(decision);
        if decision.allowed {
            Ok(())
        } else {
            Err(Refusal::RateLimited(Box::new(decision)))
        }
    }

    fn on_response(
        &self,
        _req: &RequestHeader,
        resp: &mut ResponseHeader,
        state: &mut RequestState,
    ) -> pingora::Result<()> {
        if let Some(d) = &state.ratelimit {
            self.limiter.apply_headers(resp, d)?;
        }
        Ok(())
    }
}
