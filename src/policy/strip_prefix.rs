//! Path rewrite: `strip_prefix` is removed from the front of the path (at a segment boundary,
//! query kept) before the request goes upstream.

use http::Uri;
use pingora::http::RequestHeader;

use super::{Phases, Policy, RequestState};
use crate::config::RouteSpec;

/// The strip-prefix step of a route.
pub struct StripPrefix {
    prefix: String,
}

impl StripPrefix {
    /// The step for route `spec`, if it strips a prefix.
    pub fn new(spec: &RouteSpec) -> Option<Self> {
        spec.strip_prefix
            .as_ref()
            .map(|p| StripPrefix { prefix: p.clone() })
    }
}

impl Policy for StripPrefix {
    const PHASES: Phases = Phases::UPSTREAM_REQUEST;

    fn on_upstream_request(
        &self,
        _req: &RequestHeader,
        upstream: &mut RequestHeader,
        _state: &RequestState,
    ) -> pingora::Result<()> {
        if let Some(uri) = strip_prefix(&upstream.uri, &self.prefix) {
            upstream.set_uri(uri);
        }
        Ok(())
    }
}

/// The URI with `prefix` removed from the front of its path, query kept. `None` when the path
/// does not start with the prefix at a segment boundary.
fn strip_prefix(uri: &Uri, prefix: &str) -> Option<Uri> {
    let path = uri.path();
    if !crate::routing::prefix_matches(prefix, path) {
        return None;
    }
    let rest = &path[prefix.len()..];
    let rest = if rest.is_empty() { "/" } else { rest };
    let rewritten = match uri.query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_string(),
    };
    crate::hygiene::with_target(uri, &rewritten)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_prefix_keeps_the_query() {
        let uri: Uri = "/api/v1/users/7?x=1&y=2".parse().unwrap();
        assert_eq!(strip_prefix(&uri, "/api/v1").unwrap(), "/users/7?x=1&y=2");
        let uri: Uri = "/api/v1?q".parse().unwrap();
        assert_eq!(strip_prefix(&uri, "/api/v1").unwrap(), "/?q");
        let uri: Uri = "/api/v10".parse().unwrap();
        assert!(strip_prefix(&uri, "/api/v1").is_none());
    }
}
