//! The limiting arithmetic, free of I/O and clocks: a token bucket (`burst` capacity refilled
//! at `rps`) plus admitted-request counters per UTC day and calendar month. Time is passed in,
//! so tests control it; the Redis Lua script implements the same rules on the server's clock.

use time::{Date, Month, OffsetDateTime};

/// A tier's limits, as numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Tokens per second.
    pub rps: f64,
    /// Bucket capacity.
    pub burst: f64,
    /// Admitted requests per UTC day.
    pub daily: Option<u64>,
    /// Admitted requests per UTC month.
    pub monthly: Option<u64>,
}

/// One key's counters.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct State {
    /// Tokens left at `ts_ms`.
    pub tokens: f64,
    /// When `tokens` was computed (milliseconds on the store's clock).
    pub ts_ms: u64,
    /// Day number (days since 1970-01-01 UTC) of `day_count`.
    pub day: u64,
    /// Requests admitted on `day`.
    pub day_count: u64,
    /// Month number (year × 12 + month − 1) of `month_count`.
    pub month: u64,
    /// Requests admitted in `month`.
    pub month_count: u64,
    /// Whether the state was ever written (a fresh key starts with a full bucket).
    pub initialised: bool,
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// The token bucket is empty.
    Burst,
    /// The daily quota is used up.
    Daily,
    /// The monthly quota is used up.
    Monthly,
}

/// The result of taking tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    /// Tokens granted (0 when refused).
    pub granted: u32,
    /// Tokens left in the bucket afterwards.
    pub tokens: f64,
    /// Requests admitted today, afterwards.
    pub day_count: u64,
    /// Requests admitted this month, afterwards.
    pub month_count: u64,
    /// What limited the grant below what was wanted, if anything.
    pub limited_by: Option<Limited>,
    /// Seconds until the next UTC midnight.
    pub secs_to_day_end: u64,
    /// Seconds until the next UTC month.
    pub secs_to_month_end: u64,
}

/// Calendar position of a Unix time: (day number, month number, seconds to next day, seconds
/// to next month), all UTC.
pub fn calendar(unix_secs: u64) -> (u64, u64, u64, u64) {
    let day = unix_secs / 86_400;
    let secs_to_day_end = 86_400 - unix_secs % 86_400;
    let dt =
        OffsetDateTime::from_unix_timestamp(unix_secs as i64).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let (year, month) = (dt.year(), dt.month());
    let month_no = year as u64 * 12 + (month as u64 - 1);
    let next = match month {
        Month::December => Date::from_calendar_date(year + 1, Month::January, 1),
        m => Date::from_calendar_date(year, m.next(), 1),
    };
    let next_secs = next.map_or(unix_secs + secs_to_day_end, |d| {
        d.midnight().assume_utc().unix_timestamp() as u64
    });
    (
        day,
        month_no,
        secs_to_day_end,
        next_secs.saturating_sub(unix_secs),
    )
}

/// Takes up to `want` tokens at time `now_ms` (store clock) / `unix_secs` (calendar). Never
/// takes anything a refused request would have consumed: the grant is all-or-less, and a
/// request that is refused leaves counters as they were (apart from the refill).
pub fn take(state: &mut State, limits: &Limits, now_ms: u64, unix_secs: u64, want: u32) -> Outcome {
    if !state.initialised {
        *state = State {
            tokens: limits.burst,
            ts_ms: now_ms,
            initialised: true,
            ..State::default()
        };
    }
    if now_ms > state.ts_ms {
        state.tokens =
            (state.tokens + (now_ms - state.ts_ms) as f64 * limits.rps / 1000.0).min(limits.burst);
        state.ts_ms = now_ms;
    }
    state.tokens = state.tokens.min(limits.burst);
    let (day, month, secs_to_day_end, secs_to_month_end) = calendar(unix_secs);
    if state.day != day {
        state.day = day;
        state.day_count = 0;
    }
    if state.month != month {
        state.month = month;
        state.month_count = 0;
    }
    let mut grant = want as u64;
    let mut limited_by = None;
    let by_tokens = state.tokens.floor().max(0.0) as u64;
    if by_tokens < grant {
        grant = by_tokens;
        limited_by = Some(Limited::Burst);
    }
    if let Some(d) = limits.daily {
        let left = d.saturating_sub(state.day_count);
        if left < grant || (left == 0 && want > 0) {
            grant = grant.min(left);
            limited_by = Some(Limited::Daily);
        }
    }
    if let Some(m) = limits.monthly {
        let left = m.saturating_sub(state.month_count);
        if left < grant || (left == 0 && want > 0) {
            grant = grant.min(left);
            limited_by = Some(Limited::Monthly);
        }
    }
    state.tokens -= grant as f64;
    state.day_count += grant;
    state.month_count += grant;
    Outcome {
        granted: grant as u32,
        tokens: state.tokens,
        day_count: state.day_count,
        month_count: state.month_count,
        limited_by,
        secs_to_day_end,
        secs_to_month_end,
    }
}

/// A balance of `tokens` at `ts_ms`, refilled to `now_ms` (capped at the burst).
pub fn refilled(tokens: f64, ts_ms: u64, limits: &Limits, now_ms: u64) -> f64 {
    let gained = now_ms.saturating_sub(ts_ms) as f64 * limits.rps / 1000.0;
    (tokens + gained).min(limits.burst)
}

/// Gives back `tokens` (and quota units, if still the same day/month) from an unused
/// reservation.
pub fn give_back(state: &mut State, limits: &Limits, tokens: u32, day: u64, month: u64) {
    state.tokens = (state.tokens + tokens as f64).min(limits.burst);
    if state.day == day {
        state.day_count = state.day_count.saturating_sub(tokens as u64);
    }
    if state.month == month {
        state.month_count = state.month_count.saturating_sub(tokens as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        rps: 10.0,
        burst: 20.0,
        daily: None,
        monthly: None,
    };
    // 2027-01-31T23:59:58Z
    const JAN31_LATE: u64 = 1_801_439_998;

    #[test]
    fn burst_then_refill_exactly() {
        let mut s = State::default();
        let admitted = (0..25)
            .filter(|_| take(&mut s, &LIMITS, 1_000, 0, 1).granted == 1)
            .count();
        assert_eq!(admitted, 20);
        // 0.5 s later, 5 tokens are back.
        let admitted = (0..10)
            .filter(|_| take(&mut s, &LIMITS, 1_500, 0, 1).granted == 1)
            .count();
        assert_eq!(admitted, 5);
        assert_eq!(
            take(&mut s, &LIMITS, 1_500, 0, 1).limited_by,
            Some(Limited::Burst)
        );
    }

    #[test]
    fn refused_requests_consume_nothing() {
        let limits = Limits {
            daily: Some(3),
            ..LIMITS
        };
        let mut s = State::default();
        for _ in 0..3 {
            assert_eq!(take(&mut s, &limits, 0, 100, 1).granted, 1);
        }
        for _ in 0..50 {
            assert_eq!(
                take(&mut s, &limits, 0, 100, 1).limited_by,
                Some(Limited::Daily)
            );
        }
        assert_eq!(s.day_count, 3);
        assert_eq!(s.tokens, 17.0);
    }

    #[test]
    fn quotas_reset_at_the_utc_day_and_month_boundary() {
        let limits = Limits {
            daily: Some(2),
            monthly: Some(3),
            ..LIMITS
        };
        let mut s = State::default();
        let mut now_ms = 0;
        let mut at = |s: &mut State, unix: u64| {
            now_ms += 10_000;
            take(s, &limits, now_ms, unix, 1)
        };
        assert_eq!(at(&mut s, JAN31_LATE).granted, 1);
        assert_eq!(at(&mut s, JAN31_LATE + 1).granted, 1);
        let refused = at(&mut s, JAN31_LATE + 1);
        assert_eq!(refused.limited_by, Some(Limited::Daily));
        assert_eq!(refused.secs_to_day_end, 1);
        assert_eq!(refused.secs_to_month_end, 1);
        // 2027-02-01T00:00:00Z: a new day and a new month.
        let feb = at(&mut s, JAN31_LATE + 2);
        assert_eq!(feb.granted, 1);
        assert_eq!((feb.day_count, feb.month_count), (1, 1));
        assert_eq!(feb.secs_to_month_end, 28 * 86_400);
        assert_eq!(at(&mut s, JAN31_LATE + 3).granted, 1);
        // Feb 2: the day resets but the month is still counted.
        let next_day = JAN31_LATE + 2 + 86_400;
        assert_eq!(at(&mut s, next_day).granted, 1);
        assert_eq!(at(&mut s, next_day).limited_by, Some(Limited::Monthly));
    }

    #[test]
    fn calendar_handles_leap_years_and_december() {
        // 2028-02-28T12:00:00Z: leap year, 1.5 days to March.
        assert_eq!(calendar(1_835_352_000).3, 86_400 + 43_200);
        // 2026-12-31T00:00:00Z: one day to January.
        let (_, month, _, to_next) = calendar(1_798_675_200);
        assert_eq!(to_next, 86_400);
        assert_eq!(month, 2026 * 12 + 11);
    }

    #[test]
    fn give_back_restores_tokens_and_quota() {
        let limits = Limits {
            daily: Some(100),
            ..LIMITS
        };
        let mut s = State::default();
        let out = take(&mut s, &limits, 0, 0, 10);
        assert_eq!(out.granted, 10);
        let (day, month) = (s.day, s.month);
        give_back(&mut s, &limits, 4, day, month);
        assert_eq!(s.tokens, 14.0);
        assert_eq!(s.day_count, 6);
    }
}
