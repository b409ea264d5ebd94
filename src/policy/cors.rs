//! CORS: preflights (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) are answered
//! by the gateway, 204 with the allowed origin, methods, headers and max-age, before
//! authentication and rate limiting and without the upstream; a preflight whose origin, method
//! or headers are not allowed gets 403 without CORS headers. Every other response of the route,
//! the gateway's own refusals and failures included, gets `Access-Control-Allow-Origin` (the
//! origin itself when credentials are allowed), `-Allow-Credentials` and `-Expose-Headers` for
//! an allowed origin, none for another one, and `Vary: Origin` always.

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderName, HeaderValue, Method};
use pingora::http::{RequestHeader, ResponseHeader};
use prometheus::IntCounter;

use super::{Phases, Policy, RequestState};
use crate::config::cors::{CorsSpec, OriginPattern};
use crate::refusal::Refusal;
use crate::routing::MethodSet;

const REQUEST_PRIVATE_NETWORK: HeaderName =
    HeaderName::from_static("access-control-request-private-network");
const ALLOW_PRIVATE_NETWORK: HeaderName =
    HeaderName::from_static("access-control-allow-private-network");
const DEFAULT_METHODS: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

/// Whether `req` is a CORS preflight, and the method it asks about.
pub fn preflight_method(req: &RequestHeader) -> Option<Method> {
    if req.method != Method::OPTIONS || !req.headers.contains_key(ORIGIN) {
        return None;
    }
    let m = req.headers.get(ACCESS_CONTROL_REQUEST_METHOD)?;
    Method::from_bytes(m.as_bytes()).ok()
}

/// The CORS step of a route.
pub struct Cors {
    origins: Vec<OriginPattern>,
    any_origin: bool,
    credentials: bool,
    methods: MethodSet,
    methods_value: HeaderValue,
    any_header: bool,
    headers: Vec<String>,
    headers_value: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
    private_network: bool,
    /// Preflights `[allowed, denied]`.
    preflights: [IntCounter; 2],
}

fn joined(items: impl Iterator<Item = String>) -> Option<HeaderValue> {
    let text = items.collect::<Vec<_>>().join(", ");
    (!text.is_empty())
        .then(|| HeaderValue::from_str(&text).ok())
        .flatten()
}

impl Cors {
    /// The step for `spec` on a route allowing `route_methods` (`None`: all).
    pub fn new(
        spec: &CorsSpec,
        route_methods: Option<&[Method]>,
        preflights: [IntCounter; 2],
    ) -> Self {
        let methods: Vec<Method> = spec
            .allow_methods
            .clone()
            .or_else(|| route_methods.map(<[Method]>::to_vec))
            .unwrap_or_else(|| DEFAULT_METHODS.to_vec());
        let any_header = spec.allow_headers.iter().any(|h| h == "*");
        Cors {
            any_origin: spec.allow_origins.contains(&OriginPattern::Any),
            origins: spec.allow_origins.clone(),
            credentials: spec.allow_credentials,
            methods: MethodSet::of(&methods),
            methods_value: joined(methods.iter().map(|m| m.as_str().to_string()))
                .unwrap_or(HeaderValue::from_static("GET")),
            any_header,
            headers_value: joined(spec.allow_headers.iter().filter(|h| *h != "*").cloned()),
            headers: spec.allow_headers.clone(),
            expose: joined(spec.expose_headers.iter().map(|h| h.as_str().to_string())),
            max_age: spec.max_age.map(|d| HeaderValue::from(d.as_secs())),
            private_network: spec.allow_private_network,
            preflights,
        }
    }

    fn origin_allowed(&self, origin: &HeaderValue) -> bool {
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        self.any_origin || self.origins.iter().any(|p| p.matches(origin))
    }

    /// The `Access-Control-Allow-Origin` value for an allowed `origin`.
    fn allow_origin(&self, origin: &HeaderValue) -> HeaderValue {
        if self.any_origin && !self.credentials {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        }
    }

    fn preflight(&self, req: &RequestHeader, origin: &HeaderValue) -> Result<(), Refusal> {
        if !self.origin_allowed(origin) {
            return Err(Refusal::CorsDenied("origin not allowed"));
        }
        let method_ok = req
            .headers
            .get(ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
            .is_some_and(|m| self.methods.contains(&m));
        if !method_ok {
            return Err(Refusal::CorsDenied("method not allowed"));
        }
        let requested = req
            .headers
            .get(ACCESS_CONTROL_REQUEST_HEADERS)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let headers_ok = self.any_header
            || requested
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .all(|h| self.headers.iter().any(|a| a.eq_ignore_ascii_case(h)));
        if !headers_ok {
            return Err(Refusal::CorsDenied("header not allowed"));
        }
        let mut answer = Vec::with_capacity(8);
        answer.push((ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin(origin)));
        answer.push((ACCESS_CONTROL_ALLOW_METHODS, self.methods_value.clone()));
        let allow_headers = if self.any_header && !requested.is_empty() {
            HeaderValue::from_str(requested).ok()
        } else {
            self.headers_value.clone()
        };
        if let Some(h) = allow_headers {
            answer.push((ACCESS_CONTROL_ALLOW_HEADERS, h));
        }
        if self.credentials {
            answer.push((
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            ));
        }
        if let Some(age) = &self.max_age {
            answer.push((ACCESS_CONTROL_MAX_AGE, age.clone()));
        }
        if self.private_network
            && req
                .headers
                .get(REQUEST_PRIVATE_NETWORK)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
        {
            answer.push((ALLOW_PRIVATE_NETWORK, HeaderValue::from_static("true")));
        }
        answer.push((
            VARY,
            HeaderValue::from_static(
                "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
            ),
        ));
        Err(Refusal::Preflight(Box::new(answer)))
    }
}

/// Adds `Origin` to `Vary` unless it is there already (or `Vary: *`).
fn vary_origin(resp: &mut ResponseHeader) -> pingora::Result<()> {
    let present = resp.headers.get_all(VARY).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim() == "*" || t.trim().eq_ignore_ascii_case("origin"))
        })
    });
    if !present {
        resp.append_header(VARY, HeaderValue::from_static("Origin"))?;
    }
    Ok(())
}

impl Policy for Cors {
    const PHASES: Phases = Phases::REQUEST.union(Phases::RESPONSE);

    async fn on_request(
        &self,
        req: &RequestHeader,
        _state: &mut RequestState,
    ) -> Result<(), Refusal> {
        if preflight_method(req).is_none() {
            return Ok(());
        }
        let Some(origin) = req.headers.get(ORIGIN) else {
            return Ok(());
        };
        let outcome = self.preflight(req, origin);
        let allowed = matches!(outcome, Err(Refusal::Preflight(_)));
        self.preflights[usize::from(!allowed)].inc();
        outcome
    }

    fn on_response(
        &self,
        req: &RequestHeader,
        resp: &mut ResponseHeader,
        _state: &mut RequestState,
    ) -> pingora::Result<()> {
        vary_origin(resp)?;
        let Some(origin) = req.headers.get(ORIGIN) else {
            return Ok(());
        };
        if !self.origin_allowed(origin) {
            return Ok(());
        }
        resp.insert_header(ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin(origin))?;
        if self.credentials {
            resp.insert_header(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            )?;
        }
        if let Some(expose) = &self.expose {
            resp.insert_header(ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone())?;
        }
        Ok(())
    }
}
