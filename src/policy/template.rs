//! Rendering of transformation templates (parsed once at load, [`crate::config::transform`]):
//! the request path copies bytes into one buffer, looking variables up in the client's
//! request and the request state.

use std::io::Write;

use pingora::http::RequestHeader;
use prometheus::IntCounter;

use super::RequestState;
use crate::config::transform::{Piece, Template, Var};

/// Why a transformation was skipped, as `gatehouse_transform_skipped_total{reason}`.
pub const SKIP_REASONS: [&str; 5] = [
    "invalid_header",
    "not_json",
    "compressed",
    "too_large",
    "invalid_json",
];

/// A transformation skipped because the header value would be invalid.
pub const INVALID_HEADER: usize = 0;
/// A response body that is not JSON.
pub const NOT_JSON: usize = 1;
/// A compressed response body.
pub const COMPRESSED: usize = 2;
/// A response body larger than `max_size`.
pub const TOO_LARGE: usize = 3;
/// A response body that does not parse as JSON.
pub const INVALID_JSON: usize = 4;

/// `gatehouse_transform_skipped_total` of one route, by [`SKIP_REASONS`].
#[derive(Clone)]
pub struct SkipCounters(pub [IntCounter; SKIP_REASONS.len()]);

impl SkipCounters {
    /// Counts a skip for reason number `reason`.
    pub fn skipped(&self, reason: usize) {
        if let Some(c) = self.0.get(reason) {
            c.inc();
        }
    }
}

/// What templates of one route can refer to besides the request.
pub struct Names {
    /// The route's name.
    pub route: String,
    /// The upstream's name.
    pub upstream: String,
    /// Tier names, by tier id.
    pub tiers: Vec<String>,
}

/// The first value of query parameter `name` in `query`, raw.
fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// Renders `template` into `out` (cleared first).
pub fn render(
    template: &Template,
    req: &RequestHeader,
    state: &RequestState,
    names: &Names,
    out: &mut Vec<u8>,
) {
    out.clear();
    for piece in &template.pieces {
        match piece {
            Piece::Literal(s) => out.extend_from_slice(s.as_bytes()),
            Piece::Var(v) => match v {
                Var::RequestId => out.extend_from_slice(state.request_id.as_str().as_bytes()),
                Var::ClientIp => {
                    if let Some(ip) = state.client_ip {
                        let _ = write!(out, "{ip}");
                    }
                }
                Var::Route => out.extend_from_slice(names.route.as_bytes()),
                Var::Upstream => out.extend_from_slice(names.upstream.as_bytes()),
                Var::Consumer => {
                    if let Some(id) = &state.identity {
                        out.extend_from_slice(id.consumer.as_bytes());
                    }
                }
                Var::Tier => {
                    let tier = state
                        .ratelimit
                        .and_then(|d| names.tiers.get(d.tier.index()).map(String::as_str))
                        .or_else(|| state.identity.as_ref().and_then(|i| i.tier.as_deref()));
                    if let Some(t) = tier {
                        out.extend_from_slice(t.as_bytes());
                    }
                }
                Var::AuthMethod => {
                    if let Some(id) = &state.identity {
                        out.extend_from_slice(id.method.as_bytes());
                    }
                }
                Var::Header(name) => {
                    if let Some(v) = req.headers.get(name) {
                        out.extend_from_slice(v.as_bytes());
                    }
                }
                Var::Query(name) => {
                    if let Some(v) = req.uri.query().and_then(|q| query_param(q, name)) {
                        out.extend_from_slice(v.as_bytes());
                    }
                }
                Var::Path => out.extend_from_slice(req.uri.path().as_bytes()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::transform::template;

    #[test]
    fn variables_come_from_the_request_and_the_state() {
        let mut req = RequestHeader::build("GET", b"/a/b?x=1&name=jo%20e&y", None).unwrap();
        req.insert_header("x-client", "cli").unwrap();
        let state = RequestState {
            client_ip: Some("192.0.2.7".parse().unwrap()),
            ..RequestState::default()
        };
        let names = Names {
            route: "r".into(),
            upstream: "u".into(),
            tiers: vec![],
        };
        let mut out = Vec::new();
        let t = template("${route}/${upstream} ${client_ip} ${header.x-client} ${query.name} ${path} [${consumer}] ${query.y}").unwrap();
        render(&t, &req, &state, &names, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "r/u 192.0.2.7 cli jo%20e /a/b [] "
        );
    }
}
