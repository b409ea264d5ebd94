//! Why the gateway answers a request itself instead of (or after failing at) proxying it: one
//! typed enum (domain layer) for policies, routing and upstream selection. A refusal travels as
//! a value (`Err(Refusal)` from a policy) or as the cause of a Pingora error (from
//! `upstream_peer`); [`crate::proxy::respond`] is the one place that turns it into a status,
//! headers and a JSON body.

use crate::auth::Denial;
use crate::ratelimit::Decision;
use crate::routing::MethodSet;

/// A request the gateway answers itself.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    /// No route matches (404).
    #[error("no route matches this request")]
    NotFound,
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
    /// Every backend of the route's upstream is unhealthy or drained (503).
    #[error("no healthy backend")]
    NoHealthyBackend,
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
}

impl Refusal {
    /// The HTTP status of the answer.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::NotFound => 404,
            Refusal::MethodNotAllowed(_) => 405,
            Refusal::Denied(d) if d.reason.is_forbidden() => 403,
            Refusal::Denied(_) => 401,
            Refusal::RateLimited(_) => 429,
            Refusal::RateLimitStoreUnavailable
            | Refusal::NoHealthyBackend
            | Refusal::CircuitOpen { .. }
            | Refusal::Overloaded => 503,
            Refusal::DeadlineExceeded => 504,
        }
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
