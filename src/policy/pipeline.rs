//! A route's ordered policies and the static dispatch of each phase over them.

use std::sync::Arc;

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};

use prometheus::IntCounter;

use super::authenticate::Authenticate;
use super::authorize::Authorize;
use super::body_limit::BodyLimit;
use super::cors::Cors;
use super::headers::HeaderRules;
use super::identity::IdentityHeaders;
use super::json_body::JsonBody;
use super::protocols::ProtocolGate;
use super::rate_limit::RateLimit;
use super::rewrite::RewritePath;
use super::sticky::Sticky;
use super::strip_prefix::StripPrefix;
use super::template::{Names, SkipCounters};
use super::{Phases, Policy, RequestState};
use crate::auth::{AuthCounters, Authenticator};
use crate::config::{ProviderId, RouteSpec};
use crate::ratelimit::{DecisionCounters, RateLimiter};
use crate::refusal::Refusal;
use crate::upstream::Cluster;

/// One policy of a pipeline.
pub enum Step {
    /// See [`super::protocols`].
    ProtocolGate(ProtocolGate),
    /// See [`super::cors`].
    Cors(Cors),
    /// See [`super::body_limit`].
    BodyLimit(BodyLimit),
    /// See [`super::authenticate`].
    Authenticate(Authenticate),
    /// See [`super::authorize`].
    Authorize(Authorize),
    /// See [`super::rate_limit`].
    RateLimit(RateLimit),
    /// See [`super::headers`].
    HeaderRules(HeaderRules),
    /// See [`super::rewrite`].
    Rewrite(RewritePath),
    /// See [`super::strip_prefix`].
    StripPrefix(StripPrefix),
    /// See [`super::json_body`].
    JsonBody(JsonBody),
    /// See [`super::sticky`].
    Sticky(Sticky),
    /// See [`super::identity`].
    IdentityHeaders(IdentityHeaders),
}

/// Runs `$body` with `$p` bound to the policy inside `$step`, and `$P` to its type.
macro_rules! each {
    ($step:expr, $p:ident : $P:ident => $body:expr) => {
        match $step {
            Step::ProtocolGate($p) => {
                type $P = ProtocolGate;
                $body
            }
            Step::Sticky($p) => {
                type $P = Sticky;
                $body
            }
            Step::Cors($p) => {
                type $P = Cors;
                $body
            }
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
            Step::HeaderRules($p) => {
                type $P = HeaderRules;
                $body
            }
            Step::Rewrite($p) => {
                type $P = RewritePath;
                $body
            }
            Step::StripPrefix($p) => {
                type $P = StripPrefix;
                $body
            }
            Step::JsonBody($p) => {
                type $P = JsonBody;
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

/// The metric handles policies record into, filled by the metrics registry.
pub trait PolicyMetrics {
    /// `gatehouse_auth_total` of a route accepting `providers` (id, label).
    fn auth(&self, route: &str, providers: &[(ProviderId, &str)]) -> AuthCounters;
    /// `gatehouse_ratelimit_decisions_total` of (route, tier).
    fn ratelimit_decisions(&self, route: &str, tier: &str) -> DecisionCounters;
    /// `gatehouse_cors_preflights_total` of a route, `[allowed, denied]`.
    fn cors_preflights(&self, route: &str) -> [IntCounter; 2];
    /// `gatehouse_transform_skipped_total` of a route.
    fn transform_skipped(&self, route: &str) -> SkipCounters;
}

/// What the policies of a snapshot share: built once per snapshot, before the pipelines.
pub struct Parts<'a> {
    /// The snapshot's authentication providers.
    pub auth: &'a Arc<Authenticator>,
    /// The snapshot's rate limiter.
    pub limiter: &'a Arc<RateLimiter>,
    /// The route's upstream (its protocol, stickiness and live state for adaptive limits).
    pub cluster: &'a Arc<Cluster>,
    /// `[server] max_body`, for routes without their own.
    pub max_body: u64,
    /// The route's upstream name (for templates).
    pub upstream_name: &'a str,
    /// Tier names, by tier id (for templates).
    pub tiers: &'a [String],
}

/// A route's policies, in the fixed order of the [module documentation](super).
pub struct Pipeline {
    steps: Box<[Step]>,
    phases: Phases,
}

impl Pipeline {
    /// The pipeline of route `spec`, in the fixed order of the [module documentation](super).
    pub fn build(spec: &RouteSpec, parts: &Parts<'_>, metrics: &dyn PolicyMetrics) -> Self {
        let names = || Names {
            route: spec.name.clone(),
            upstream: parts.upstream_name.to_string(),
            tiers: parts.tiers.to_vec(),
        };
        let mut steps = vec![Step::ProtocolGate(ProtocolGate::new(
            spec,
            parts.cluster.spec().protocol,
        ))];
        if let Some(cors) = &spec.cors {
            steps.push(Step::Cors(Cors::new(
                cors,
                spec.methods.as_deref(),
                metrics.cors_preflights(&spec.name),
            )));
        }
        steps.push(Step::BodyLimit(BodyLimit::new(
            spec.max_body.unwrap_or(parts.max_body),
        )));
        if !spec.auth.is_empty() {
            let providers: Vec<_> = spec.auth.iter().map(|a| (a.id, a.name.as_str())).collect();
            let counters = Arc::new(metrics.auth(&spec.name, &providers));
            let authorize = Authorize::new(spec, &counters);
            steps.push(Step::Authenticate(Authenticate::new(
                spec,
                parts.auth,
                Arc::clone(&counters),
                authorize.is_none(),
            )));
            steps.extend(authorize.map(Step::Authorize));
        }
        if let Some(route) = parts
            .limiter
            .route(spec, |r, t| metrics.ratelimit_decisions(r, t))
        {
            steps.push(Step::RateLimit(RateLimit::new(
                parts.limiter,
                route,
                spec.adaptive_limit
                    .then(|| Arc::clone(&parts.cluster.state)),
            )));
        }
        let skipped = || metrics.transform_skipped(&spec.name);
        if spec.request_headers.is_some() || spec.response_headers.is_some() {
            steps.extend(
                HeaderRules::new(
                    spec.request_headers.as_ref(),
                    spec.response_headers.as_ref(),
                    names(),
                    skipped(),
                )
                .map(Step::HeaderRules),
            );
        }
        steps.extend(
            spec.rewrite
                .as_ref()
                .map(|r| Step::Rewrite(RewritePath::new(r))),
        );
        steps.extend(StripPrefix::new(spec).map(Step::StripPrefix));
        if spec.request_body.is_some() || spec.response_body.is_some() {
            steps.extend(
                JsonBody::new(
                    spec.request_body.as_ref(),
                    spec.response_body.as_ref(),
                    names(),
                    skipped(),
                )
                .map(Step::JsonBody),
            );
        }
        steps.extend(Sticky::new(parts.cluster.spec()).map(Step::Sticky));
        steps.push(Step::IdentityHeaders(IdentityHeaders));
        Pipeline::new(steps)
    }

    /// Whether this route answers CORS preflights.
    pub fn handles_preflight(&self) -> bool {
        self.steps.iter().any(|s| matches!(s, Step::Cors(_)))
    }

    /// Whether the proxy should read `req`'s whole body before choosing the upstream, and
    /// hand it to [`Pipeline::prefetched_body`].
    pub fn prefetch_body(&self, req: &RequestHeader) -> bool {
        self.steps.iter().any(|s| match s {
            Step::JsonBody(j) => j.prefetch(req),
            _ => false,
        })
    }

    /// The body to send upstream instead of `body` (read whole by the proxy).
    pub fn prefetched_body(
        &self,
        req: &RequestHeader,
        body: Bytes,
        state: &RequestState,
    ) -> Result<Bytes, Refusal> {
        for step in self.steps.iter() {
            if let Step::JsonBody(j) = step {
                return j.transform_request(req, &body, state);
            }
        }
        Ok(body)
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
