//! Path normalisation before routing, so that routing, authentication and the upstream all see
//! the same path: percent-encoded unreserved characters are decoded (so `%2e%2e` is `..`),
//! other percent-encodings get upper-case hex, runs of `/` are merged (when configured, first,
//! as nginx does), and dot-segments are removed (RFC 3986 §5.2.4; never above the root). An
//! encoded `/` or `\` is refused, or kept encoded (opaque, never a separator) when configured.

use crate::config::EncodedSlash;

/// The path holds an encoded `/` or `\` and `encoded_slash = "reject"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodedSeparator;

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|s| s == "." || s == "..")
}

/// The normalised form of `path` (an origin-form path, without the query), or `None` when it
/// is already normal. Paths that do not start with `/` are left alone.
pub fn normalize(
    path: &str,
    merge_slashes: bool,
    encoded_slash: EncodedSlash,
) -> Result<Option<String>, EncodedSeparator> {
    if !path.starts_with('/') {
        return Ok(None);
    }
    let needs_work =
        path.contains('%') || (merge_slashes && path.contains("//")) || has_dot_segment(path);
    if !needs_work {
        return Ok(None);
    }
    // 1. Percent-decoding of unreserved characters (and upper-case hex elsewhere).
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                let v = h * 16 + l;
                if unreserved(v) {
                    decoded.push(v as char);
                } else if v == b'/' || v == b'\\' {
                    if encoded_slash == EncodedSlash::Reject {
                        return Err(EncodedSeparator);
                    }
                    decoded.push_str(if v == b'/' { "%2F" } else { "%5C" });
                } else {
                    decoded.push('%');
                    decoded.push(bytes[i + 1].to_ascii_uppercase() as char);
                    decoded.push(bytes[i + 2].to_ascii_uppercase() as char);
                }
                i += 3;
                continue;
            }
        }
        // Targets were checked for valid characters already; anything else is copied.
        decoded.push(b as char);
        i += 1;
    }
    // 2. Merging slashes.
    let merged = if merge_slashes && decoded.contains("//") {
        let mut m = String::with_capacity(decoded.len());
        let mut last_slash = false;
        for c in decoded.chars() {
            if c == '/' && last_slash {
                continue;
            }
            last_slash = c == '/';
            m.push(c);
        }
        m
    } else {
        decoded
    };
    // 3. Removing dot-segments.
    let result = if has_dot_segment(&merged) {
        let mut out: Vec<&str> = Vec::new();
        let segments: Vec<&str> = merged[1..].split('/').collect();
        let last = segments.len() - 1;
        let mut trailing_slash = false;
        for (n, seg) in segments.iter().enumerate() {
            match *seg {
                "." => trailing_slash = n == last,
                ".." => {
                    out.pop();
                    trailing_slash = n == last;
                }
                s => {
                    out.push(s);
                    trailing_slash = false;
                }
            }
        }
        let mut r = String::with_capacity(merged.len());
        r.push('/');
        r.push_str(&out.join("/"));
        if trailing_slash && !out.is_empty() {
            r.push('/');
        }
        r
    } else {
        merged
    };
    Ok((result != path).then_some(result))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> String {
        normalize(p, true, EncodedSlash::Reject)
            .unwrap()
            .unwrap_or_else(|| p.to_string())
    }

    #[test]
    fn normal_paths_are_left_alone() {
        for p in ["/", "/api/v1/users", "/a/b/", "/a.b/c..d/.e", "*"] {
            assert_eq!(normalize(p, true, EncodedSlash::Reject), Ok(None), "{p}");
        }
    }

    #[test]
    fn dot_segments_are_removed_even_when_encoded() {
        assert_eq!(norm("/a/./b"), "/a/b");
        assert_eq!(norm("/a/../b"), "/b");
        assert_eq!(norm("/a/b/.."), "/a/");
        assert_eq!(norm("/a/b/."), "/a/b/");
        assert_eq!(norm("/../../etc/passwd"), "/etc/passwd");
        assert_eq!(norm("/public/%2e%2e/admin"), "/admin");
        assert_eq!(norm("/public/%2E./admin"), "/admin");
        assert_eq!(norm("/.."), "/");
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_upper_cased() {
        assert_eq!(norm("/%41%62c%7e"), "/Abc~");
        assert_eq!(norm("/a%3fb%c3%a9"), "/a%3Fb%C3%A9");
    }

    #[test]
    fn slashes_merge_before_dots_like_nginx() {
        assert_eq!(norm("//a///b"), "/a/b");
        assert_eq!(norm("/a//../b"), "/b");
        assert_eq!(
            normalize("/a//b", false, EncodedSlash::Reject),
            Ok(None),
            "merging off"
        );
    }

    #[test]
    fn encoded_separators_are_refused_or_kept_opaque() {
        assert_eq!(
            normalize("/a%2fb", true, EncodedSlash::Reject),
            Err(EncodedSeparator)
        );
        assert_eq!(
            normalize("/a%5Cb", true, EncodedSlash::Reject),
            Err(EncodedSeparator)
        );
        assert_eq!(
            normalize("/a%2f..%2fb/../c", true, EncodedSlash::Keep),
            Ok(Some("/c".to_string()))
        );
        assert_eq!(
            normalize("/a%2fb", true, EncodedSlash::Keep),
            Ok(Some("/a%2Fb".to_string()))
        );
    }
}
