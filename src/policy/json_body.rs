//! JSON body transformation (`request_body`, `response_body`): JSON Pointer `set`, `remove` and
//! `rename` on bodies whose `Content-Type` is `application/json` or `*/*+json`.
//!
//! Requests. Pingora writes the upstream request head before the body and replays a body only
//! from its 64 KiB retry buffer. So a body with a declared length up to 64 KiB is read before
//! the upstream is chosen (by the proxy, [`JsonBody::prefetch`]), transformed, and sent with its
//! new `Content-Length` on every attempt (retries replay the transformed body). A larger or
//! chunked one, up to `max_size`, is buffered as it streams and sent chunked once complete; it
//! is not retried once sent. Above `max_size`: 413. Malformed JSON: 400.
//!
//! Responses. A JSON response within `max_size` (by `Content-Length`, or as it streams) is
//! buffered, transformed and sent chunked. A response that is not JSON, is compressed, turns
//! out larger than `max_size` or does not parse passes through unchanged and is counted in
//! `gatehouse_transform_skipped_total{route,reason}`.

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use pingora::http::{RequestHeader, ResponseHeader};
use serde_json::Value;

use super::json_doc::Node;
use super::template::{render, Names, SkipCounters, COMPRESSED, INVALID_JSON, NOT_JSON, TOO_LARGE};
use super::{Phases, Policy, RequestState};
use crate::config::transform::{BodyTransform, BodyValue};
use crate::refusal::{BadRequest, Refusal};

/// Largest request body read before the upstream is chosen (Pingora's retry buffer).
pub const PREFETCH_LIMIT: u64 = 64 * 1024;

/// Whether a `Content-Type` is JSON (`application/json`, `application/*+json`).
pub fn is_json(content_type: Option<&http::HeaderValue>) -> bool {
    let Some(ct) = content_type.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = ct.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
        || essence
            .rsplit_once('+')
            .is_some_and(|(_, suffix)| suffix.eq_ignore_ascii_case("json"))
}

fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// The JSON-body step of a route.
pub struct JsonBody {
    request: Option<BodyTransform>,
    response: Option<BodyTransform>,
    names: Names,
    skipped: SkipCounters,
}

impl JsonBody {
    /// The step for a route with these transforms (`None` when it has neither).
    pub fn new(
        request: Option<&BodyTransform>,
        response: Option<&BodyTransform>,
        names: Names,
        skipped: SkipCounters,
    ) -> Option<Self> {
        (request.is_some() || response.is_some()).then(|| JsonBody {
            request: request.cloned(),
            response: response.cloned(),
            names,
            skipped,
        })
    }

    /// Whether the proxy should read `req`'s body before choosing the upstream (a JSON body
    /// with a declared length up to [`PREFETCH_LIMIT`]).
    pub fn prefetch(&self, req: &RequestHeader) -> bool {
        self.request.is_some()
            && is_json(req.headers.get(CONTENT_TYPE))
            && declared_length(&req.headers).is_some_and(|n| n > 0 && n <= PREFETCH_LIMIT)
    }

    /// Transforms a complete request body.
    pub fn transform_request(
        &self,
        req: &RequestHeader,
        body: &[u8],
        state: &RequestState,
    ) -> Result<Bytes, Refusal> {
        let Some(rules) = &self.request else {
            return Ok(Bytes::copy_from_slice(body));
        };
        let mut doc = Node::parse(body).ok_or(Refusal::BadRequest(BadRequest::MalformedJson))?;
        let values = values(rules, req, state, &self.names);
        apply(rules, &mut doc, &values);
        let mut out = Vec::with_capacity(body.len() + 64);
        doc.write(&mut out);
        Ok(Bytes::from(out))
    }
}

/// The values `rules.set` writes, rendered for this request (in `set` order).
pub fn values(
    rules: &BodyTransform,
    req: &RequestHeader,
    state: &RequestState,
    names: &Names,
) -> Vec<Value> {
    let mut buf = Vec::new();
    rules
        .set
        .iter()
        .map(|(_, value)| match value {
            BodyValue::Json(v) => v.clone(),
            BodyValue::Text(t) => {
                render(t, req, state, names, &mut buf);
                Value::String(String::from_utf8_lossy(&buf).into_owned())
            }
        })
        .collect()
}

/// Applies `rules` to `doc`: removals, then renames, then sets (with `values`, from
/// [`values`]).
pub fn apply(rules: &BodyTransform, doc: &mut Node, values: &[Value]) {
    for p in &rules.remove {
        doc.take(p);
    }
    for (from, to) in &rules.rename {
        if let Some(v) = doc.take(from) {
            doc.put(to, v);
        }
    }
    for ((p, _), v) in rules.set.iter().zip(values) {
        doc.put(p, Node::Value(v.clone()));
    }
}

impl Policy for JsonBody {
    const PHASES: Phases = Phases::REQUEST
        .union(Phases::REQUEST_BODY)
        .union(Phases::UPSTREAM_REQUEST)
        .union(Phases::RESPONSE)
        .union(Phases::RESPONSE_BODY);

    async fn on_request(
        &self,
        req: &RequestHeader,
        state: &mut RequestState,
    ) -> Result<(), Refusal> {
        let Some(rules) = &self.request else {
            return Ok(());
        };
        if !is_json(req.headers.get(CONTENT_TYPE)) || self.prefetch(req) {
            return Ok(());
        }
        match declared_length(&req.headers) {
            Some(0) => return Ok(()),
            Some(n) if n > rules.max_size => {
                return Err(Refusal::PayloadTooLarge {
                    limit: rules.max_size,
                })
            }
            _ => {}
        }
        // Streamed: buffered in on_request_body, sent chunked once complete.
        state.body.request_values = values(rules, req, state, &self.names);
        state.body.request = Some(BytesMut::new());
        Ok(())
    }

    fn on_request_body(
        &self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        state: &mut RequestState,
    ) -> Result<(), Refusal> {
        let (Some(rules), Some(buffer)) = (&self.request, state.body.request.as_mut()) else {
            return Ok(());
        };
        if let Some(chunk) = body.take() {
            buffer.extend_from_slice(&chunk);
        }
        if buffer.len() as u64 > rules.max_size {
            return Err(Refusal::PayloadTooLarge {
                limit: rules.max_size,
            });
        }
        if !end_of_stream {
            // Nothing goes upstream until the body is complete (an empty chunk is not sent).
            *body = Some(Bytes::new());
            return Ok(());
        }
        state.body_not_replayable = true;
        let whole = state.body.request.take().unwrap_or_default().freeze();
        let mut doc = Node::parse(&whole).ok_or(Refusal::BadRequest(BadRequest::MalformedJson))?;
        apply(
            rules,
            &mut doc,
            &std::mem::take(&mut state.body.request_values),
        );
        let mut out = Vec::with_capacity(whole.len() + 64);
        doc.write(&mut out);
        *body = Some(Bytes::from(out));
        Ok(())
    }

    fn on_upstream_request(
        &self,
        _req: &RequestHeader,
        upstream: &mut RequestHeader,
        state: &RequestState,
    ) -> pingora::Result<()> {
        if state.body.request.is_some() {
            // The transformed body's length is known only at its end.
            upstream.remove_header(&CONTENT_LENGTH);
            upstream.insert_header(TRANSFER_ENCODING, "chunked")?;
        }
        Ok(())
    }

    fn on_response(
        &self,
        req: &RequestHeader,
        resp: &mut ResponseHeader,
        state: &mut RequestState,
    ) -> pingora::Result<()> {
        let Some(rules) = &self.response else {
            return Ok(());
        };
        let no_body = req.method == http::Method::HEAD
            || matches!(resp.status.as_u16(), 100..=199 | 204 | 304);
        if state.gateway_response || no_body {
            return Ok(());
        }
        if !is_json(resp.headers.get(CONTENT_TYPE)) {
            self.skipped.skipped(NOT_JSON);
            return Ok(());
        }
        let encoded = resp
            .headers
            .get(CONTENT_ENCODING)
            .is_some_and(|e| !e.as_bytes().eq_ignore_ascii_case(b"identity"));
        if encoded {
            self.skipped.skipped(COMPRESSED);
            return Ok(());
        }
        if declared_length(&resp.headers).is_some_and(|n| n > rules.max_size) {
            self.skipped.skipped(TOO_LARGE);
            return Ok(());
        }
        state.body.response_values = values(rules, req, state, &self.names);
        state.body.response = Some(BytesMut::new());
        resp.remove_header(&CONTENT_LENGTH);
        Ok(())
    }

    fn on_response_body(
        &self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        state: &mut RequestState,
    ) -> pingora::Result<()> {
        let (Some(rules), Some(buffer)) = (&self.response, state.body.response.as_mut()) else {
            return Ok(());
        };
        if let Some(chunk) = body.take() {
            buffer.extend_from_slice(&chunk);
        }
        if buffer.len() as u64 > rules.max_size {
            // Too large after all: what was held back goes out unchanged, the rest streams.
            self.skipped.skipped(TOO_LARGE);
            *body = state.body.response.take().map(BytesMut::freeze);
            return Ok(());
        }
        if !end_of_stream {
            return Ok(());
        }
        let whole = state.body.response.take().unwrap_or_default().freeze();
        let values = std::mem::take(&mut state.body.response_values);
        let transformed = Node::parse(&whole).map(|mut doc| {
            apply(rules, &mut doc, &values);
            let mut out = Vec::with_capacity(whole.len() + 64);
            doc.write(&mut out);
            out
        });
        *body = Some(match transformed {
            Some(t) => Bytes::from(t),
            None => {
                self.skipped.skipped(INVALID_JSON);
                whole
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::transform::{pointer, template};

    fn rules() -> BodyTransform {
        BodyTransform {
            set: vec![
                (
                    pointer("/meta/source").unwrap(),
                    BodyValue::Text(template("gateway").unwrap()),
                ),
                (pointer("/meta/n").unwrap(), BodyValue::Json(2.into())),
            ],
            remove: vec![pointer("/internal").unwrap(), pointer("/list/0").unwrap()],
            rename: vec![(
                pointer("/userName").unwrap(),
                pointer("/user_name").unwrap(),
            )],
            max_size: 1024,
        }
    }

    #[test]
    fn set_remove_and_rename_follow_json_pointers() {
        let mut doc =
            Node::parse(br#"{"userName":"jo","internal":{"x":1},"list":[1,2],"keep":true}"#)
                .unwrap();
        let req = RequestHeader::build("POST", b"/", None).unwrap();
        let names = Names {
            route: "r".into(),
            upstream: "u".into(),
            tiers: vec![],
        };
        let values = values(&rules(), &req, &RequestState::default(), &names);
        apply(&rules(), &mut doc, &values);
        let mut out = Vec::new();
        doc.write(&mut out);
        let doc: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            doc,
            serde_json::json!({"user_name":"jo","list":[2],"keep":true,"meta":{"source":"gateway","n":2}})
        );
    }

    #[test]
    fn json_content_types_are_recognised() {
        let v = |s: &'static str| http::HeaderValue::from_static(s);
        assert!(is_json(Some(&v("application/json"))));
        assert!(is_json(Some(&v("Application/JSON; charset=utf-8"))));
        assert!(is_json(Some(&v("application/problem+json"))));
        assert!(!is_json(Some(&v("text/plain"))));
        assert!(!is_json(None));
    }
}
