//! The status page served at `GET /` on the admin listener: one self-contained HTML document
//! (`status.html`, embedded in the binary, no external assets) whose inline script reads
//! `/health`, `/ready` and, with the operator's token, `/admin/summary` and `/admin/upstreams`.
//!
//! The page renders every value as text (never as HTML), and its Content-Security-Policy
//! allows only its own inline script (by hash) and requests to the admin listener itself, so
//! that a value that slipped through unescaped still could not run.

use std::sync::LazyLock;

use base64::Engine;
use http::{Response, StatusCode};
use sha2::Digest;

const PAGE: &str = include_str!("status.html");

/// The page's Content-Security-Policy, with the hash of its one inline script.
static CSP: LazyLock<String> = LazyLock::new(|| {
    let script = inline_script(PAGE);
    let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(script));
    format!(
        "default-src 'none'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; \
         connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    )
});

/// The text between the page's `<script>` and `</script>` (what a CSP hash covers).
fn inline_script(page: &str) -> &str {
    let start = page.find("<script>").map_or(0, |i| i + "<script>".len());
    let end = page[start..]
        .find("</script>")
        .map_or(page.len(), |i| start + i);
    &page[start..end]
}

/// `GET /`: the status page.
pub fn status() -> Response<Vec<u8>> {
    Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header(http::header::CONTENT_LENGTH, PAGE.len())
        .header(http::header::CONTENT_SECURITY_POLICY, CSP.as_str())
        .header(http::header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(http::header::X_FRAME_OPTIONS, "DENY")
        .header(http::header::REFERRER_POLICY, "no-referrer")
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(PAGE.as_bytes().to_vec())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_one_inline_script_and_no_external_resource() {
        assert_eq!(PAGE.matches("<script").count(), 1);
        let script = inline_script(PAGE);
        assert!(script.contains("sessionStorage"));
        for external in ["src=", "http://", "https://", "@import", "url("] {
            assert!(!PAGE.contains(external), "{external}");
        }
        // The only link is the empty inline icon (so that browsers ask for no favicon).
        assert_eq!(PAGE.matches("href=").count(), 1);
        assert!(PAGE.contains(r#"<link rel="icon" href="data:,">"#));
        // Values are rendered as text only.
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!script.contains(sink), "{sink}");
        }
    }

    #[test]
    fn csp_allows_exactly_the_inline_script() {
        let resp = status();
        let csp = resp.headers()[http::header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(
            csp.starts_with("default-src 'none'; script-src 'sha256-"),
            "{csp}"
        );
        assert!(!csp.contains("unsafe-eval") && !csp.contains("script-src 'unsafe-inline'"));
    }
}
