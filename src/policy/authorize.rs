//! Authorisation: the authenticated identity must hold one of `require_roles` and all of
//! `require_scopes`; otherwise 403 (`Refusal::Denied` with a forbidden reason). Counts the
//! route's authentication outcome (success or the refusal) in `gatehouse_auth_total`.

use std::sync::Arc;

use pingora::http::RequestHeader;

use super::{Phases, Policy, RequestState};
use crate::auth::{authorize, AuthCounters, Denial, Reason};
use crate::config::RouteSpec;
use crate::refusal::Refusal;

/// The authorisation step of a route.
pub struct Authorize {
    roles: Box<[String]>,
    scopes: Box<[String]>,
    counters: Arc<AuthCounters>,
}

impl Authorize {
    /// The step for route `spec`, if it requires roles or scopes.
    pub fn new(spec: &RouteSpec, counters: &Arc<AuthCounters>) -> Option<Self> {
        if spec.require_roles.is_empty() && spec.require_scopes.is_empty() {
            return None;
        }
        Some(Authorize {
            roles: spec.require_roles.clone().into_boxed_slice(),
            scopes: spec.require_scopes.clone().into_boxed_slice(),
            counters: Arc::clone(counters),
        })
    }
}

impl Policy for Authorize {
    const PHASES: Phases = Phases::REQUEST;

    async fn on_request(
        &self,
        _req: &RequestHeader,
        state: &mut RequestState,
    ) -> Result<(), Refusal> {
        let Some(identity) = &state.identity else {
            // Authentication runs first and refuses without an identity; never admit here.
            let denial = Denial::new(Reason::Missing, "credentials required");
            self.counters.record(None, Some(denial.reason));
            return Err(Refusal::Denied(denial));
        };
        match authorize(&self.roles, &self.scopes, identity) {
            Ok(()) => {
                self.counters.record(Some(identity.provider), None);
                Ok(())
            }
            Err(denial) => {
                self.counters.record(denial.provider, Some(denial.reason));
                Err(Refusal::Denied(denial))
            }
        }
    }
}
