//! W3C Trace Context (`traceparent`): parsing, ids, the sampling decision and the header value
//! sent upstream.

use http::HeaderValue;

/// A 16-byte trace id (never all zeros).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span id (never all zeros).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    /// A random id.
    pub fn random() -> Self {
        let mut id = [0u8; 16];
        while id == [0; 16] {
            id = rand::random();
        }
        TraceId(id)
    }

    /// Lowercase hex, as in `traceparent` and the access log.
    pub fn hex(&self) -> [u8; 32] {
        hex_into(&self.0)
    }
}

impl SpanId {
    /// A random id.
    pub fn random() -> Self {
        let mut id = [0u8; 8];
        while id == [0; 8] {
            id = rand::random();
        }
        SpanId(id)
    }

    /// Lowercase hex.
    pub fn hex(&self) -> [u8; 16] {
        hex_into(&self.0)
    }
}

fn hex_into<const N: usize, const M: usize>(bytes: &[u8; N]) -> [u8; M] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; M];
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
    }
    out
}

/// The caller's trace context, from a valid `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    /// The trace the request belongs to.
    pub trace_id: TraceId,
    /// The caller's span.
    pub span_id: SpanId,
    /// The caller's sampling decision.
    pub sampled: bool,
}

/// Parses a `traceparent` value (W3C Trace Context level 1 §3.2): version `00` exactly as
/// specified; a higher version is read for its first four fields, as the specification asks;
/// version `ff`, uppercase hex, all-zero ids and wrong lengths are invalid.
pub fn parse_traceparent(value: &[u8]) -> Option<Parent> {
    if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let version = hex_byte(&value[0..2])?;
    if version == 0xff || (version == 0 && value.len() != 55) {
        return None;
    }
    if version > 0 && value.len() > 55 && value[55] != b'-' {
        return None;
    }
    let mut trace = [0u8; 16];
    for (i, b) in trace.iter_mut().enumerate() {
        *b = hex_byte(&value[3 + 2 * i..5 + 2 * i])?;
    }
    let mut span = [0u8; 8];
    for (i, b) in span.iter_mut().enumerate() {
        *b = hex_byte(&value[36 + 2 * i..38 + 2 * i])?;
    }
    let flags = hex_byte(&value[53..55])?;
    if trace == [0; 16] || span == [0; 8] {
        return None;
    }
    Some(Parent {
        trace_id: TraceId(trace),
        span_id: SpanId(span),
        sampled: flags & 1 == 1,
    })
}

/// Two lowercase hex digits.
fn hex_byte(two: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(digit(two[0])? << 4 | digit(two[1])?)
}

/// The sampling decision for a new root trace: the trace id's last 8 bytes, as a number below
/// 2^63, against `ratio` (as OpenTelemetry's `TraceIdRatioBased` does, so that every process
/// deciding on the same trace id decides alike).
pub fn sampled_by_ratio(trace: &TraceId, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let x = u64::from_be_bytes(trace.0[8..16].try_into().unwrap_or_default()) >> 1;
    (x as f64) < ratio * (1u64 << 63) as f64
}

/// `00-TRACE-SPAN-FLAGS`.
pub fn traceparent(trace: &TraceId, span: &SpanId, sampled: bool) -> HeaderValue {
    let mut v = [0u8; 55];
    v[0..3].copy_from_slice(b"00-");
    v[3..35].copy_from_slice(&trace.hex());
    v[35] = b'-';
    v[36..52].copy_from_slice(&span.hex());
    v[52..55].copy_from_slice(if sampled { b"-01" } else { b"-00" });
    HeaderValue::from_bytes(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_specification_example() {
        let p = parse_traceparent(VALID).unwrap();
        assert_eq!(&p.trace_id.hex(), b"4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(&p.span_id.hex(), b"00f067aa0ba902b7");
        assert!(p.sampled);
        let unsampled = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(!parse_traceparent(unsampled).unwrap().sampled);
    }

    #[test]
    fn refuses_what_the_specification_refuses() {
        for bad in [
            &b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"[..],
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
            b"",
        ] {
            assert_eq!(
                parse_traceparent(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // A future version may carry more fields after a dash.
        let future = b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-whatever";
        assert!(parse_traceparent(future).is_some());
    }

    #[test]
    fn formats_what_it_parses() {
        let p = parse_traceparent(VALID).unwrap();
        let v = traceparent(&p.trace_id, &p.span_id, true);
        assert_eq!(v.as_bytes(), VALID);
    }

    #[test]
    fn the_ratio_samples_its_share_of_trace_ids() {
        let n = 20_000;
        let sampled = (0..n)
            .filter(|_| sampled_by_ratio(&TraceId::random(), 0.25))
            .count();
        assert!((4_500..5_500).contains(&sampled), "{sampled}");
        let id = TraceId::random();
        assert!(sampled_by_ratio(&id, 1.0));
        assert!(!sampled_by_ratio(&id, 0.0));
    }
}
