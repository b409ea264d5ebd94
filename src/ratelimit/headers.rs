//! Rate-limit response headers: the de-facto `X-RateLimit-*` set and the IETF
//! `RateLimit-Policy` / `RateLimit` structured fields (draft-ietf-httpapi-ratelimit-headers),
//! one policy item per limit: `"burst"` (the token bucket: `q` = burst, `w` = seconds to
//! refill from empty), `"daily"` and `"monthly"` (calendar quotas, `w` = the period's length).
//! `[rate_limit] headers` chooses the families sent ([`Families`]).
//!
//! On the request path: what is fixed per tier (the limits, the tier name, the whole
//! `RateLimit-Policy` value) is rendered once per tier and shared ([`TierHeaders`]); only the
//! per-request numbers are formatted, without `format!`.

use std::io::Write;
use std::sync::OnceLock;

use http::{HeaderName, HeaderValue};
use pingora::http::ResponseHeader;

use super::decision::QuotaState;
use super::Decision;

pub use crate::config::HeaderFamilies as Families;

impl Families {
    fn x(self) -> bool {
        matches!(self, Families::Both | Families::XRatelimit)
    }

    fn ietf(self) -> bool {
        matches!(self, Families::Both | Families::Ietf)
    }
}

/// The values of one tier that do not change from request to request, rendered once.
pub struct TierHeaders {
    key: Key,
    limit: HeaderValue,
    tier: HeaderValue,
    policy: HeaderValue,
    daily_limit: Option<HeaderValue>,
    monthly_limit: Option<HeaderValue>,
}

/// What the fixed values were rendered from; a decision with other values (an adaptive
/// limit's scaled burst, a new month's length) is rendered afresh.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key {
    burst: u32,
    burst_window_secs: u64,
    daily: Option<(u64, u64)>,
    monthly: Option<(u64, u64)>,
}

impl Key {
    fn of(d: &Decision) -> Self {
        let q = |q: &Option<QuotaState>| q.map(|q| (q.limit, q.window_secs));
        Key {
            burst: d.burst,
            burst_window_secs: d.burst_window_secs,
            daily: q(&d.daily),
            monthly: q(&d.monthly),
        }
    }
}

impl TierHeaders {
    fn render(key: Key, tier: &str) -> Self {
        let mut policy = Vec::with_capacity(96);
        let _ = write!(
            policy,
            "\"burst\";q={};w={}",
            key.burst, key.burst_window_secs
        );
        for (name, q) in [("daily", key.daily), ("monthly", key.monthly)] {
            if let Some((limit, window)) = q {
                let _ = write!(policy, ", \"{name}\";q={limit};w={window}");
            }
        }
        TierHeaders {
            key,
            limit: HeaderValue::from(key.burst),
            tier: HeaderValue::from_str(tier).unwrap_or(HeaderValue::from_static("-")),
            policy: HeaderValue::from_bytes(&policy).unwrap_or(HeaderValue::from_static("")),
            daily_limit: key.daily.map(|(l, _)| HeaderValue::from(l)),
            monthly_limit: key.monthly.map(|(l, _)| HeaderValue::from(l)),
        }
    }
}

/// A tier's [`TierHeaders`], rendered from its first decision.
#[derive(Default)]
pub struct TierCache(OnceLock<TierHeaders>);

impl TierCache {
    fn get(&self, d: &Decision, tier: &str) -> Option<&TierHeaders> {
        let key = Key::of(d);
        let cached = self.0.get_or_init(|| TierHeaders::render(key, tier));
        (cached.key == key).then_some(cached)
    }
}

/// A header name built once, and its spelling on the wire.
type Name = (HeaderName, &'static str);

const fn name(text: &'static str) -> Name {
    (HeaderName::from_static(text), text)
}

const X_LIMIT: Name = name("x-ratelimit-limit");
const X_REMAINING: Name = name("x-ratelimit-remaining");
const X_RESET: Name = name("x-ratelimit-reset");
const X_TIER: Name = name("x-ratelimit-tier");
const QUOTA_NAMES: [[Name; 3]; 2] = [
    [
        name("x-ratelimit-daily-limit"),
        name("x-ratelimit-daily-remaining"),
        name("x-ratelimit-daily-reset"),
    ],
    [
        name("x-ratelimit-monthly-limit"),
        name("x-ratelimit-monthly-remaining"),
        name("x-ratelimit-monthly-reset"),
    ],
];
const POLICY: Name = name("ratelimit-policy");
const STATE: Name = name("ratelimit");

fn set(resp: &mut ResponseHeader, (name, text): &Name, value: HeaderValue) {
    resp.insert_header_static(name, text, value);
}

/// Adds the rate-limit headers of `families` for `d` (tier named `tier`, its fixed values
/// cached in `cache`) to `resp`.
pub fn apply(
    resp: &mut ResponseHeader,
    d: &Decision,
    tier: &str,
    cache: &TierCache,
    families: Families,
) -> pingora::Result<()> {
    if families == Families::None {
        return Ok(());
    }
    let fresh;
    let fixed = match cache.get(d, tier) {
        Some(f) => f,
        None => {
            fresh = TierHeaders::render(Key::of(d), tier);
            &fresh
        }
    };
    let quotas = [
        (&d.daily, &fixed.daily_limit),
        (&d.monthly, &fixed.monthly_limit),
    ];
    if families.x() {
        set(resp, &X_LIMIT, fixed.limit.clone());
        set(resp, &X_REMAINING, HeaderValue::from(d.remaining));
        set(resp, &X_RESET, HeaderValue::from(d.reset_secs));
        set(resp, &X_TIER, fixed.tier.clone());
        for (names, (q, limit)) in QUOTA_NAMES.iter().zip(quotas) {
            if let (Some(q), Some(limit)) = (q, limit) {
                set(resp, &names[0], limit.clone());
                set(resp, &names[1], HeaderValue::from(q.remaining));
                set(resp, &names[2], HeaderValue::from(q.reset_secs));
            }
        }
    }
    if families.ietf() {
        set(resp, &POLICY, fixed.policy.clone());
        let mut state = [0u8; 160];
        let mut w = std::io::Cursor::new(&mut state[..]);
        let _ = write!(w, "\"burst\";r={};t={}", d.remaining, d.reset_secs);
        for (name, q) in [("daily", &d.daily), ("monthly", &d.monthly)] {
            if let Some(q) = q {
                let _ = write!(w, ", \"{name}\";r={};t={}", q.remaining, q.reset_secs);
            }
        }
        let len = w.position() as usize;
        if let Ok(v) = HeaderValue::from_bytes(&state[..len]) {
            set(resp, &STATE, v);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TierId;

    fn decision(burst: u32) -> Decision {
        Decision {
            allowed: true,
            tier: TierId::new(0),
            burst,
            burst_window_secs: 10,
            remaining: 7,
            reset_secs: 3,
            retry_after: 0,
            limited_by: None,
            daily: Some(QuotaState {
                limit: 1000,
                remaining: 990,
                reset_secs: 3600,
                window_secs: 86_400,
            }),
            monthly: None,
            store_unavailable: false,
        }
    }

    fn headers(families: Families, d: &Decision, cache: &TierCache) -> Vec<(String, String)> {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        apply(&mut resp, d, "free", cache, families).unwrap();
        let mut out: Vec<(String, String)> = resp
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn families_choose_what_is_sent() {
        let cache = TierCache::default();
        let d = decision(10);
        let both = headers(Families::Both, &d, &cache);
        let get = |h: &[(String, String)], k: &str| {
            h.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        };
        assert_eq!(get(&both, "x-ratelimit-limit").as_deref(), Some("10"));
        assert_eq!(get(&both, "x-ratelimit-remaining").as_deref(), Some("7"));
        assert_eq!(
            get(&both, "x-ratelimit-daily-limit").as_deref(),
            Some("1000")
        );
        assert_eq!(get(&both, "x-ratelimit-tier").as_deref(), Some("free"));
        assert_eq!(
            get(&both, "ratelimit-policy").as_deref(),
            Some("\"burst\";q=10;w=10, \"daily\";q=1000;w=86400")
        );
        assert_eq!(
            get(&both, "ratelimit").as_deref(),
            Some("\"burst\";r=7;t=3, \"daily\";r=990;t=3600")
        );
        assert_eq!(both.len(), 9);
        let ietf = headers(Families::Ietf, &d, &cache);
        assert_eq!(ietf.len(), 2);
        let x = headers(Families::XRatelimit, &d, &cache);
        assert_eq!(x.len(), 7);
        assert!(headers(Families::None, &d, &cache).is_empty());
    }

    #[test]
    fn a_scaled_burst_is_rendered_afresh() {
        let cache = TierCache::default();
        let _ = headers(Families::Both, &decision(10), &cache);
        let scaled = headers(Families::Both, &decision(4), &cache);
        assert!(scaled.contains(&("x-ratelimit-limit".into(), "4".into())));
        assert!(scaled
            .iter()
            .any(|(k, v)| k == "ratelimit-policy" && v.starts_with("\"burst\";q=4;")));
    }
}
