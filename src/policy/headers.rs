//! Header transformation: `request_headers` change what goes upstream, `response_headers` what
//! the client gets (the gateway's own answers included). `remove`, then `set` (replaces), then
//! `add` (appends). A rendered value that is not a valid header value skips that header and is
//! counted; framing, connection and identity headers cannot be named (checked at load), and the
//! identity step runs after this one.

use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};

use super::template::{render, Names, SkipCounters, INVALID_HEADER};
use super::{Phases, Policy, RequestState};
use crate::config::transform::HeaderTransform;

/// The header-transformation step of a route.
pub struct HeaderRules {
    request: Option<HeaderTransform>,
    response: Option<HeaderTransform>,
    names: Names,
    skipped: SkipCounters,
}

impl HeaderRules {
    /// The step for a route with these transforms (`None` when it has neither).
    pub fn new(
        request: Option<&HeaderTransform>,
        response: Option<&HeaderTransform>,
        names: Names,
        skipped: SkipCounters,
    ) -> Option<Self> {
        (request.is_some() || response.is_some()).then(|| HeaderRules {
            request: request.cloned(),
            response: response.cloned(),
            names,
            skipped,
        })
    }

    /// Applies `rules` to `target`.
    fn apply<H: Headers>(
        &self,
        rules: &HeaderTransform,
        req: &RequestHeader,
        state: &RequestState,
        target: &mut H,
    ) -> pingora::Result<()> {
        for name in &rules.remove {
            target.remove(name);
        }
        let mut buf = Vec::new();
        for (append, list) in [(false, &rules.set), (true, &rules.add)] {
            for (name, template) in list {
                render(template, req, state, &self.names, &mut buf);
                match HeaderValue::from_bytes(&buf) {
                    Ok(v) => target.put(name, v, append)?,
                    Err(_) => self.skipped.skipped(INVALID_HEADER),
                }
            }
        }
        Ok(())
    }
}

/// Request and response headers alike.
trait Headers {
    fn remove(&mut self, name: &HeaderName);
    fn put(&mut self, name: &HeaderName, value: HeaderValue, append: bool) -> pingora::Result<()>;
}

macro_rules! headers_impl {
    ($t:ty) => {
        impl Headers for $t {
            fn remove(&mut self, name: &HeaderName) {
                self.remove_header(name);
            }

            fn put(
                &mut self,
                name: &HeaderName,
                value: HeaderValue,
                append: bool,
            ) -> pingora::Result<()> {
                if append {
                    self.append_header(name.clone(), value).map(|_| ())
                } else {
                    self.insert_header(name.clone(), value)
                }
            }
        }
    };
}

headers_impl!(RequestHeader);
headers_impl!(ResponseHeader);

impl Policy for HeaderRules {
    const PHASES: Phases = Phases::UPSTREAM_REQUEST.union(Phases::RESPONSE);

    fn on_upstream_request(
        &self,
        req: &RequestHeader,
        upstream: &mut RequestHeader,
        state: &RequestState,
    ) -> pingora::Result<()> {
        match &self.request {
            Some(rules) => self.apply(rules, req, state, upstream),
            None => Ok(()),
        }
    }

    fn on_response(
        &self,
        req: &RequestHeader,
        resp: &mut ResponseHeader,
        state: &mut RequestState,
    ) -> pingora::Result<()> {
        match &self.response {
            Some(rules) => self.apply(rules, req, state, resp),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::transform::template;
    use prometheus::IntCounter;

    #[test]
    fn a_value_that_is_no_valid_header_skips_the_header_and_is_counted() {
        let counters = SkipCounters(std::array::from_fn(|_| IntCounter::new("s", "s").unwrap()));
        let rules = HeaderTransform {
            // Configurations cannot hold such a literal; the request path still guards.
            set: vec![
                (HeaderName::from_static("x-bad"), template("a\nb").unwrap()),
                (
                    HeaderName::from_static("x-good"),
                    template("${route}").unwrap(),
                ),
            ],
            ..HeaderTransform::default()
        };
        let names = Names {
            route: "r".into(),
            upstream: "u".into(),
            tiers: vec![],
        };
        let step = HeaderRules::new(Some(&rules), None, names, counters.clone()).unwrap();
        let req = RequestHeader::build("GET", b"/", None).unwrap();
        let mut upstream = req.clone();
        step.on_upstream_request(&req, &mut upstream, &RequestState::default())
            .unwrap();
        assert!(upstream.headers.get("x-bad").is_none());
        assert_eq!(upstream.headers["x-good"], "r");
        assert_eq!(counters.0[INVALID_HEADER].get(), 1);
    }
}
