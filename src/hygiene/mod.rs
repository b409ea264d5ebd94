//! Request hygiene at the edge (domain layer): what the gateway refuses or rewrites before
//! routing, whatever the route (`[server.limits]`). [`request_line`] scans the raw head bytes
//! as they arrive (the stream wrapper in `proxy::listener` feeds it); [`check`] and
//! [`sanitize`] run first in `request_filter`; [`path`] normalises the path so that routing,
//! authentication and the upstream see the same one.
//!
//! Limits that sit before every hook (Pingora answers a bare 400 itself): more than 256
//! headers, a head over 1 MiB, a request target over about 64 KiB, and a head that does not
//! parse at all.

pub mod path;
pub mod request_line;

use http::{HeaderName, Version};
use pingora::http::RequestHeader;

use crate::config::{Limits, Underscores};
use crate::refusal::{BadRequest, Refusal};

/// Checks the head of a request against the limits. `head_len` is the size of the head in
/// bytes (raw for HTTP/1, as encoded for HTTP/2).
pub fn check(req: &RequestHeader, head_len: usize, limits: &Limits) -> Result<(), Refusal> {
    if req.raw_path().len() as u64 > limits.max_request_line {
        return Err(Refusal::UriTooLong);
    }
    if req.headers.len() as u64 > limits.max_headers || head_len as u64 > limits.max_header_bytes {
        return Err(Refusal::HeaderFieldsTooLarge);
    }
    if req.version == Version::HTTP_11 {
        // RFC 9112 §3.2: exactly one Host.
        let mut hosts = req.headers.get_all(http::header::HOST).iter();
        match (hosts.next(), hosts.next()) {
            (None, _) => return Err(Refusal::BadRequest(BadRequest::MissingHost)),
            (Some(_), Some(_)) => return Err(Refusal::BadRequest(BadRequest::MultipleHost)),
            _ => {}
        }
    }
    if limits.underscores_in_headers == Underscores::Reject
        && req.headers.keys().any(|k| k.as_str().contains('_'))
    {
        return Err(Refusal::BadRequest(BadRequest::UnderscoreInHeader));
    }
    Ok(())
}

/// The size of a request head as HTTP/1 would encode it (for HTTP/2 requests).
pub fn encoded_head_len(req: &RequestHeader) -> usize {
    let line = req.method.as_str().len() + req.raw_path().len() + 11;
    req.headers
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

/// Drops header names with `_` (when configured) and normalises the path, in place.
pub fn sanitize(req: &mut RequestHeader, limits: &Limits) -> Result<(), Refusal> {
    if limits.underscores_in_headers == Underscores::Drop {
        let dropped: Vec<HeaderName> = req
            .headers
            .keys()
            .filter(|k| k.as_str().contains('_'))
            .cloned()
            .collect();
        for name in &dropped {
            req.remove_header(name);
        }
    }
    let normalized = path::normalize(req.uri.path(), limits.merge_slashes, limits.encoded_slash)
        .map_err(|_| Refusal::BadRequest(BadRequest::EncodedSlash))?;
    if let Some(p) = normalized {
        let target = match req.uri.query() {
            Some(q) => format!("{p}?{q}"),
            None => p,
        };
        let uri =
            with_target(&req.uri, &target).ok_or(Refusal::BadRequest(BadRequest::InvalidTarget))?;
        req.set_uri(uri);
    }
    Ok(())
}

/// `uri` with its path and query replaced by `target`, scheme and authority kept (an HTTP/2
/// request carries its authority in the URI, and an HTTP/2 upstream needs it).
pub fn with_target(uri: &http::Uri, target: &str) -> Option<http::Uri> {
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(target.parse().ok()?);
    http::Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(head: &[(&str, &str)], version: Version) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/a/../b?x=1", None).unwrap();
        r.set_version(version);
        for (k, v) in head {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn http11_needs_exactly_one_host() {
        let l = Limits::default();
        assert!(check(&req(&[("host", "a")], Version::HTTP_11), 100, &l).is_ok());
        assert!(matches!(
            check(&req(&[], Version::HTTP_11), 100, &l),
            Err(Refusal::BadRequest(BadRequest::MissingHost))
        ));
        assert!(matches!(
            check(
                &req(&[("host", "a"), ("host", "b")], Version::HTTP_11),
                100,
                &l
            ),
            Err(Refusal::BadRequest(BadRequest::MultipleHost))
        ));
        assert!(check(&req(&[], Version::HTTP_10), 100, &l).is_ok());
    }

    #[test]
    fn sizes_are_limited() {
        let l = Limits {
            max_headers: 2,
            ..Limits::default()
        };
        let three = req(
            &[("host", "a"), ("x-a", "1"), ("x-b", "2")],
            Version::HTTP_11,
        );
        assert!(matches!(
            check(&three, 100, &l),
            Err(Refusal::HeaderFieldsTooLarge)
        ));
        let l = Limits::default();
        let one = req(&[("host", "a")], Version::HTTP_11);
        assert!(matches!(
            check(&one, 40 * 1024, &l),
            Err(Refusal::HeaderFieldsTooLarge)
        ));
    }

    #[test]
    fn underscores_are_dropped_and_the_path_normalised() {
        let mut r = req(
            &[("host", "a"), ("x_consumer_id", "evil"), ("x-ok", "1")],
            Version::HTTP_11,
        );
        sanitize(&mut r, &Limits::default()).unwrap();
        assert!(r.headers.get("x_consumer_id").is_none());
        assert!(r.headers.get("x-ok").is_some());
        assert_eq!(r.uri.path(), "/b");
        assert_eq!(r.uri.query(), Some("x=1"));
        let l = Limits {
            underscores_in_headers: Underscores::Reject,
            ..Limits::default()
        };
        assert!(matches!(
            check(
                &req(&[("host", "a"), ("x_y", "1")], Version::HTTP_11),
                10,
                &l
            ),
            Err(Refusal::BadRequest(BadRequest::UnderscoreInHeader))
        ));
    }
}
