//! Rate-limit response headers: the de-facto `X-RateLimit-*` set and the IETF
//! `RateLimit-Policy` / `RateLimit` structured fields (draft-ietf-httpapi-ratelimit-headers),
//! one policy item per limit: `"burst"` (the token bucket: `q` = burst, `w` = seconds to
//! refill from empty), `"daily"` and `"monthly"` (calendar quotas, `w` = the period's length).

use pingora::http::ResponseHeader;

use super::Decision;

fn secs(v: u64) -> String {
    v.to_string()
}

/// Adds every rate-limit header for `d` (tier named `tier`) to `resp`.
pub fn apply(resp: &mut ResponseHeader, d: &Decision, tier: &str) -> pingora::Result<()> {
    resp.insert_header("x-ratelimit-limit", secs(u64::from(d.burst)))?;
    resp.insert_header("x-ratelimit-remaining", secs(d.remaining))?;
    resp.insert_header("x-ratelimit-reset", secs(d.reset_secs))?;
    resp.insert_header("x-ratelimit-tier", tier)?;
    let mut policy = format!("\"burst\";q={};w={}", d.burst, d.burst_window_secs);
    let mut state = format!("\"burst\";r={};t={}", d.remaining, d.reset_secs);
    for (name, q, prefix) in [
        ("daily", &d.daily, "x-ratelimit-daily"),
        ("monthly", &d.monthly, "x-ratelimit-monthly"),
    ] {
        if let Some(q) = q {
            resp.insert_header(format!("{prefix}-limit"), secs(q.limit))?;
            resp.insert_header(format!("{prefix}-remaining"), secs(q.remaining))?;
            resp.insert_header(format!("{prefix}-reset"), secs(q.reset_secs))?;
            policy.push_str(&format!(", \"{name}\";q={};w={}", q.limit, q.window_secs));
            state.push_str(&format!(
                ", \"{name}\";r={};t={}",
                q.remaining, q.reset_secs
            ));
        }
    }
    resp.insert_header("ratelimit-policy", policy)?;
    resp.insert_header("ratelimit", state)?;
    Ok(())
}
