//! A route's ordered policies and the static dispatch of each phase over them.

use std::sync::Arc;

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};

use super::authenticate::Authenticate;
use super::authorize::Authorize;
use super::body_limit::BodyLimit;
use super::identity::IdentityHeaders;
use super::rate_limit::RateLimit;
use super::strip_prefix::StripPrefix;
use super::{Phases, Policy, RequestState};
use crate::auth::{AuthCounters, Authenticator};
use crate::config::RouteSpec;
use crate::ratelimit::{DecisionCounters, RateLimiter};
use crate::refusal::Refusal;
use crate::upstream::UpstreamState;

/// One policy of a pipeline.
pub enum Step {
    /// See [`super::body_limit`].
    BodyLimit(BodyLimit),
    /// See [`super::authenticate`].
    Authenticate(Authenticate),
    /// See [`super::authorize`].
    Authorize(Authorize),
    /// See [`super::rate_limit`].
    RateLimit(RateLimit),
    /// See [`super::strip_prefix`].
    StripPrefix(StripPrefix),
    /// See [`super::identity`].
    IdentityHeaders(IdentityHeaders),
}

/// Runs `$body` with `$p` bound to the policy inside `$step`, and `$P` to its type.
macro_rules! each {
    ($step:expr, $p:ident : $P:ident => $body:expr) => {
        match $step {
            Step::BodyLimit($p) => {
                type $P = BodyLimit;
                $body
            }
            Step::Authenticate($p) => {
                type $P = Authenticate;
                $body
            }
            Step::Authorize($p) => {
                type $P = Authorize;
                $body
            }
            Step::RateLimit($p) => {
                type $P = RateLimit;
                $body
            }
            Step::StripPrefix($p) => {
                type $P = StripPrefix;
                $body
            }
            Step::IdentityHeaders($p) => {
                type $P = IdentityHeaders;
                $body
            }
        }
    };
}

impl Step {
    fn phases(&self) -> Phases {
        each!(self, _p: P => <P as Policy>::PHASES)
    }
}

/// What the policies of a snapshot share: built once per snapshot, before the pipelines.
pub struct Parts<'a> {
    /// The snapshot's authentication providers.
    pub auth: &'a Arc<Authenticator>,
    /// The snapshot's rate limiter.
    pub limiter: &'a Arc<RateLimiter>,
    /// The live state of the route's upstream (for adaptive limits).
    pub upstream: &'a Arc<UpstreamState>,
    /// `[server] max_body`, for routes without their own.
    pub max_body: u64,
}

/// A route's policies, in the fixed order of the [module documentation](super).
pub struct Pipeline {
    steps: Box<[Step]>,
    phases: Phases,
}

impl Pipeline {
    /// The pipeline of route `spec`; `auth_counters` and `decisions` give its metric handles.
    pub fn build(
        spec: &RouteSpec,
        parts: &Parts<'_>,
        auth_counters: impl FnOnce() -> AuthCounters,
        decisions: impl Fn(&str, &str) -> DecisionCounters,
    ) -> Self {
        let mut steps = vec![Step::BodyLimit(BodyLimit::new(
            spec.max_body.unwrap_or(parts.max_body),
        ))];
        if !spec.auth.is_empty() {
            let counters = Arc::new(auth_counters());
            let authorize = Authorize::new(spec, &counters);
            steps.push(Step::Authenticate(Authenticate::new(
                spec,
                parts.auth,
                Arc::clone(&counters),
                authorize.is_none(),
            )));
            steps.extend(authorize.map(Step::Authorize));
        }
        if let Some(route) = parts.limiter.route(spec, decisions) {
            steps.push(Step::RateLimit(RateLimit::new(
                parts.limiter,
                route,
                spec.adaptive_limit.then(|| Arc::clone(parts.upstream)),
            )));
        }
        steps.extend(StripPrefix::new(spec).map(Step::StripPrefix));
        steps.push(Step::IdentityHeaders(IdentityHeaders));
        Pipeline::new(steps)
    }

    /// A pipeline of exactly `steps`, in this order.
    pub fn new(steps: Vec<Step>) -> Self {
        let phases = steps
            .iter()
            .fold(Phases::NONE, |acc, s| acc.union(s.phases()));
        Pipeline {
            steps: steps.into_boxed_slice(),
            phases,
        }
    }

    /// The phases some policy of this pipeline implements.
    pub fn phases(&self) -> Phases {
        self.phases
    }

    /// The policies, in order.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// Runs every `on_request`, in order, until one refuses.
    pub async fn on_request(
        &self,
        req: &RequestHeader,
        state: &mut RequestState,
    ) -> Result<(), Refusal> {
        if !self.phases.contains(Phases::REQUEST) {
            return Ok(());
        }
        for step in self.steps.iter() {
            if step.phases().contains(Phases::REQUEST) {
                each!(step, p: _P => p.on_request(req, state).await)?;
            }
        }
        Ok(())
    }

    /// Runs every `on_request_body`, in order, until one refuses.
    pub fn on_request_body(
        &self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        state: &mut RequestState,
    ) -> Result<(), Refusal> {
        if !self.phases.contains(Phases::REQUEST_BODY) {
            return Ok(());
        }
        for step in self.steps.iter() {
            if step.phases().contains(Phases::REQUEST_BODY) {
                each!(step, p: _P => p.on_request_body(body, end_of_stream, state))?;
            }
        }
        Ok(())
    }

    /// Runs every `on_upstream_request`, in order.
    pub fn on_upstream_request(
        &self,
        req: &RequestHeader,
        upstream: &mut RequestHeader,
        state: &RequestState,
    ) -> pingora::Result<()> {
        if !self.phases.contains(Phases::UPSTREAM_REQUEST) {
            return Ok(());
        }
        for step in self.steps.iter() {
            if step.phases().contains(Phases::UPSTREAM_REQUEST) {
                each!(step, p: _P => p.on_upstream_request(req, upstream, state))?;
            }
        }
        Ok(())
    }

    /// Runs every `on_response`, in order.
    pub fn on_response(
        &self,
        req: &RequestHeader,
        resp: &mut ResponseHeader,
        state: &mut RequestState,
    ) -> pingora::Result<()> {
        if !self.phases.contains(Phases::RESPONSE) {
            return Ok(());
        }
        for step in self.steps.iter() {
            if step.phases().contains(Phases::RESPONSE) {
                each!(step, p: _P => p.on_response(req, resp, state))?;
            }
        }
        Ok(())
    }

    /// Runs every `on_response_body`, in order.
    pub fn on_response_body(
        &self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        state: &mut RequestState,
    ) -> pingora::Result<()> {
        if !self.phases.contains(Phases::RESPONSE_BODY) {
            return Ok(());
        }
        for step in self.steps.iter() {
            if step.phases().contains(Phases::RESPONSE_BODY) {
                each!(step, p: _P => p.on_response_body(body, end_of_stream, state))?;
            }
        }
        Ok(())
    }

    /// Runs every `on_log`, in order.
    pub fn on_log(&self, state: &RequestState, status: u16) {
        if !self.phases.contains(Phases::LOG) {
            return;
        }
        for step in self.steps.iter() {
            if step.phases().contains(Phases::LOG) {
                each!(step, p: _P => p.on_log(state, status));
            }
        }
    }
}
