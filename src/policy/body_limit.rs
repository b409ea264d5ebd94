//! Request body size limit (`max_body` on the route, else `[server] max_body`): a declared
//! `Content-Length` above it gets 413 before any byte is read or forwarded, and before
//! authentication (an unauthenticated client cannot make the gateway read a large body); a
//! body without a declared length (chunked, HTTP/2) is counted as it streams, and the chunk that
//! crosses the limit ends the request: 413 if no response has started, otherwise the upstream
//! request is aborted and the connection closed.

use pingora::http::RequestHeader;

use super::{Phases, Policy, RequestState};
use crate::refusal::Refusal;

/// The body-limit step (present in every pipeline).
pub struct BodyLimit {
    limit: u64,
}

impl BodyLimit {
    /// A limit of `limit` bytes.
    pub fn new(limit: u64) -> Self {
        BodyLimit { limit }
    }
}

impl Policy for BodyLimit {
    const PHASES: Phases = Phases::REQUEST.union(Phases::REQUEST_BODY);

    async fn on_request(
        &self,
        req: &RequestHeader,
        _state: &mut RequestState,
    ) -> Result<(), Refusal> {
        let declared = req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        match declared {
            Some(len) if len > self.limit => Err(Refusal::PayloadTooLarge { limit: self.limit }),
            _ => Ok(()),
        }
    }

    fn on_request_body(
        &self,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        state: &mut RequestState,
    ) -> Result<(), Refusal> {
        if let Some(chunk) = body {
            state.body_bytes += chunk.len() as u64;
            if state.body_bytes > self.limit {
                return Err(Refusal::PayloadTooLarge { limit: self.limit });
            }
        }
        Ok(())
    }
}
