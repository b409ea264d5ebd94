//! Rate-limit decisions: what a check concluded and the values its headers report.

use super::bucket::{Limited, Limits, Outcome};
use crate::config::TierId;

/// State kept for a quota in a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaState {
    /// The quota.
    pub limit: u64,
    /// Requests still admissible in the period.
    pub remaining: u64,
    /// Seconds until the period ends.
    pub reset_secs: u64,
    /// The period's length in seconds.
    pub window_secs: u64,
}

/// The outcome of a rate-limit check, with what the headers report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Index of the tier applied.
    pub tier: TierId,
    /// Bucket capacity.
    pub burst: u32,
    /// Seconds to refill an empty bucket.
    pub burst_window_secs: u64,
    /// Whole tokens left.
    pub remaining: u64,
    /// Seconds until the bucket is full again.
    pub reset_secs: u64,
    /// When refused: seconds until a retry can succeed.
    pub retry_after: u64,
    /// What refused the request.
    pub limited_by: Option<Limited>,
    /// Daily quota state, when the tier has one.
    pub daily: Option<QuotaState>,
    /// Monthly quota state, when the tier has one.
    pub monthly: Option<QuotaState>,
    /// The shared store failed and `on_store_error` decided without it (`allow`: admitted
    /// with no state to report; `deny`: refused with 503).
    pub store_unavailable: bool,
}

impl Decision {
    /// The limit that refused the request, for the 429 body.
    pub fn refusing_limit(&self) -> u64 {
        match self.limited_by {
            Some(Limited::Daily) => self.daily.map_or(0, |q| q.limit),
            Some(Limited::Monthly) => self.monthly.map_or(0, |q| q.limit),
            _ => u64::from(self.burst),
        }
    }
}

/// The decision when the shared store failed and the policy is `allow` (admitted) or `deny`.
pub(super) fn unavailable(tier: TierId, limits: &Limits, allow: bool) -> Decision {
    Decision {
        allowed: allow,
        tier,
        burst: limits.burst as u32,
        burst_window_secs: (limits.burst / limits.rps).ceil().max(1.0) as u64,
        remaining: 0,
        reset_secs: 0,
        retry_after: 1,
        limited_by: None,
        daily: None,
        monthly: None,
        store_unavailable: true,
    }
}

/// Turns a bucket outcome into a decision with header values.
pub fn decide(tier: TierId, limits: &Limits, out: &Outcome, unix_secs: u64) -> Decision {
    let allowed = out.granted > 0;
    let missing = (limits.burst - out.tokens).max(0.0);
    let reset_secs = (missing / limits.rps).ceil() as u64;
    let month_len = month_length_secs(unix_secs);
    let quota = |limit: Option<u64>, count: u64, reset: u64, window: u64| {
        limit.map(|l| QuotaState {
            limit: l,
            remaining: l.saturating_sub(count),
            reset_secs: reset,
            window_secs: window,
        })
    };
    let retry_after = match out.limited_by {
        _ if allowed => 0,
        Some(Limited::Daily) => out.secs_to_day_end,
        Some(Limited::Monthly) => out.secs_to_month_end,
        _ => (((1.0 - out.tokens).max(0.0)) / limits.rps).ceil().max(1.0) as u64,
    };
    Decision {
        allowed,
        tier,
        burst: limits.burst as u32,
        burst_window_secs: (limits.burst / limits.rps).ceil().max(1.0) as u64,
        remaining: out.tokens.floor().max(0.0) as u64,
        reset_secs,
        retry_after,
        limited_by: if allowed { None } else { out.limited_by },
        daily: quota(limits.daily, out.day_count, out.secs_to_day_end, 86_400),
        monthly: quota(
            limits.monthly,
            out.month_count,
            out.secs_to_month_end,
            month_len,
        ),
        store_unavailable: false,
    }
}

fn month_length_secs(unix_secs: u64) -> u64 {
    let dt = time::OffsetDateTime::from_unix_timestamp(unix_secs as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    u64::from(time::util::days_in_month(dt.month(), dt.year())) * 86_400
}
