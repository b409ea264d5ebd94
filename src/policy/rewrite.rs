//! Path rewrite: `rewrite = { regex, to }` runs the regex (compiled once) on the normalised
//! path; when it matches, the upstream gets `to` with the groups filled in, normalised again
//! (dot-segments, slashes), query kept. A path the regex does not match goes upstream as it is.

use http::Uri;
use pingora::http::RequestHeader;

use super::{Phases, Policy, RequestState};
use crate::config::transform::Rewrite;
use crate::config::EncodedSlash;

/// The rewrite step of a route.
pub struct RewritePath {
    regex: regex::Regex,
    /// `to`, with `$` that does not start a `${group}` escaped for `Captures::expand`.
    replacement: String,
}

impl RewritePath {
    /// The step for `rewrite`.
    pub fn new(rewrite: &Rewrite) -> Self {
        let mut replacement = String::with_capacity(rewrite.to.len());
        let mut chars = rewrite.to.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '$' && chars.peek() != Some(&'{') {
                replacement.push_str("$$");
            } else {
                replacement.push(c);
            }
        }
        RewritePath {
            regex: rewrite.regex.clone(),
            replacement,
        }
    }

    /// The rewritten path and query of `uri`, if the regex matches its path.
    pub fn rewrite(&self, uri: &Uri) -> Option<Uri> {
        let caps = self.regex.captures(uri.path())?;
        let mut path = String::new();
        caps.expand(&self.replacement, &mut path);
        let path = crate::hygiene::path::normalize(&path, true, EncodedSlash::Keep)
            .ok()
            .flatten()
            .unwrap_or(path);
        let target = match uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        crate::hygiene::with_target(uri, &target)
    }
}

impl Policy for RewritePath {
    const PHASES: Phases = Phases::UPSTREAM_REQUEST;

    fn on_upstream_request(
        &self,
        _req: &RequestHeader,
        upstream: &mut RequestHeader,
        _state: &RequestState,
    ) -> pingora::Result<()> {
        if let Some(uri) = self.rewrite(&upstream.uri) {
            upstream.set_uri(uri);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw(regex: &str, to: &str) -> RewritePath {
        RewritePath::new(&Rewrite {
            regex: regex::Regex::new(regex).unwrap(),
            to: to.to_string(),
        })
    }

    #[test]
    fn groups_fill_the_target_and_the_query_stays() {
        let r = rw("^/v1/(?P<rest>.*)$", "/api/${rest}");
        let uri: Uri = "/v1/users/7?x=1".parse().unwrap();
        assert_eq!(r.rewrite(&uri).unwrap(), "/api/users/7?x=1");
        let uri: Uri = "/v2/users".parse().unwrap();
        assert!(r.rewrite(&uri).is_none());
        let r = rw("^/a/(\\d+)$", "/b/${1}/$x");
        assert_eq!(r.rewrite(&"/a/42".parse().unwrap()).unwrap(), "/b/42/$x");
    }

    #[test]
    fn a_rewrite_cannot_climb_out_with_dot_segments() {
        let r = rw("^/files/(?P<p>.*)$", "/store/${p}");
        assert_eq!(
            r.rewrite(&"/files/a/../../etc".parse().unwrap()).unwrap(),
            "/etc"
        );
    }
}
