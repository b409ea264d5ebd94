//! gRPC at the edge (domain layer): recognising gRPC and gRPC-Web requests, the status code a
//! gateway answer maps to, `grpc-message` encoding and the `grpc-timeout` header.
//!
//! gRPC answers the gateway writes itself are "trailers-only": HTTP 200 with `content-type:
//! application/grpc`, `grpc-status` and `grpc-message` in the one header block, no body.

use std::time::Duration;

use http::HeaderMap;

/// What kind of gRPC a request is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Kind {
    /// Not gRPC.
    #[default]
    None,
    /// `application/grpc*` (HTTP/2).
    Native,
    /// `application/grpc-web` or `application/grpc-web+proto` (bridged to gRPC by Pingora's
    /// `GrpcWebBridge` on routes with `grpc_web = true`).
    Web,
    /// `application/grpc-web-text` (base64): not bridged.
    WebText,
}

impl Kind {
    /// Whether the request is gRPC of any kind (its answers must be gRPC-shaped).
    pub fn is_grpc(self) -> bool {
        self != Kind::None
    }
}

/// The kind of a request with this `Content-Type` value.
pub fn kind(content_type: Option<&[u8]>) -> Kind {
    let Some(ct) = content_type else {
        return Kind::None;
    };
    let starts =
        |prefix: &[u8]| ct.len() >= prefix.len() && ct[..prefix.len()].eq_ignore_ascii_case(prefix);
    if starts(b"application/grpc-web-text") {
        Kind::WebText
    } else if starts(b"application/grpc-web") {
        Kind::Web
    } else if starts(b"application/grpc") {
        // `application/grpc`, `application/grpc+proto`, `application/grpc+json`, ...
        match ct.get(16) {
            None | Some(b'+') | Some(b';') => Kind::Native,
            _ => Kind::None,
        }
    } else {
        Kind::None
    }
}

/// gRPC status codes the gateway answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    /// 3
    InvalidArgument = 3,
    /// 4
    DeadlineExceeded = 4,
    /// 7
    PermissionDenied = 7,
    /// 8
    ResourceExhausted = 8,
    /// 12
    Unimplemented = 12,
    /// 13
    Internal = 13,
    /// 14
    Unavailable = 14,
    /// 16
    Unauthenticated = 16,
}

impl Code {
    /// The code for an answer the gateway would give with HTTP `status`.
    pub fn for_status(status: u16) -> Code {
        match status {
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 | 405 | 501 => Code::Unimplemented,
            429 => Code::ResourceExhausted,
            400 | 411 | 413 | 414 | 415 | 431 => Code::InvalidArgument,
            502 | 503 | 421 | 308 => Code::Unavailable,
            504 => Code::DeadlineExceeded,
            _ => Code::Internal,
        }
    }

    /// The decimal value, as `grpc-status` carries it.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidArgument => "3",
            Code::DeadlineExceeded => "4",
            Code::PermissionDenied => "7",
            Code::ResourceExhausted => "8",
            Code::Unimplemented => "12",
            Code::Internal => "13",
            Code::Unavailable => "14",
            Code::Unauthenticated => "16",
        }
    }
}

/// `grpc-message` encoding: percent-encodes `%` and every byte outside printable ASCII.
pub fn encode_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `grpc-timeout` header: at most 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
/// Malformed values are ignored (as gRPC servers do), not refused.
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.as_bytes();
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_the_content_type() {
        assert_eq!(kind(Some(b"application/grpc")), Kind::Native);
        assert_eq!(kind(Some(b"application/grpc+proto")), Kind::Native);
        assert_eq!(kind(Some(b"Application/GRPC;charset=x")), Kind::Native);
        assert_eq!(kind(Some(b"application/grpc-web+proto")), Kind::Web);
        assert_eq!(kind(Some(b"application/grpc-web")), Kind::Web);
        assert_eq!(kind(Some(b"application/grpc-web-text")), Kind::WebText);
        assert_eq!(kind(Some(b"application/grpcx")), Kind::None);
        assert_eq!(kind(Some(b"application/json")), Kind::None);
        assert_eq!(kind(None), Kind::None);
    }

    #[test]
    fn statuses_map_to_codes() {
        assert_eq!(Code::for_status(401).as_str(), "16");
        assert_eq!(Code::for_status(403).as_str(), "7");
        assert_eq!(Code::for_status(404).as_str(), "12");
        assert_eq!(Code::for_status(429).as_str(), "8");
        assert_eq!(Code::for_status(502).as_str(), "14");
        assert_eq!(Code::for_status(503).as_str(), "14");
        assert_eq!(Code::for_status(504).as_str(), "4");
        assert_eq!(Code::for_status(413).as_str(), "3");
        assert_eq!(Code::for_status(500).as_str(), "13");
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(encode_message("rate limit: 100%"), "rate limit: 100%25");
        assert_eq!(encode_message("é\n"), "%C3%A9%0A");
    }

    #[test]
    fn timeouts_parse_units_and_ignore_garbage() {
        let t = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("grpc-timeout", v.parse().unwrap());
            timeout(&h)
        };
        assert_eq!(t("250m"), Some(Duration::from_millis(250)));
        assert_eq!(t("2S"), Some(Duration::from_secs(2)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("5000000u"), Some(Duration::from_secs(5)));
        assert_eq!(t("123456789m"), None);
        assert_eq!(t("m"), None);
        assert_eq!(t("10x"), None);
        assert_eq!(t("-1S"), None);
    }
}
