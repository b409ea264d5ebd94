//! Resilience settings of an upstream: `[upstreams.NAME.circuit_breaker]` and
//! `[upstreams.NAME.retry]`. Absent sections leave the feature off.

use std::time::Duration;

use http::Method;
use serde::Serialize;

use super::reader::{Node, Reader};
use super::ser;

/// What counts as a failure for a circuit breaker, or as retryable for retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureKind {
    /// The connection could not be made (nothing was sent).
    Connect,
    /// A connect, read or write timeout.
    Timeout,
    /// The connection was reset or closed mid-exchange.
    Reset,
    /// The upstream answered 5xx.
    #[serde(rename = "5xx")]
    Status5xx,
}

impl FailureKind {
    /// The name used in the configuration and in traces.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Connect => "connect",
            FailureKind::Timeout => "timeout",
            FailureKind::Reset => "reset",
            FailureKind::Status5xx => "5xx",
        }
    }
}

/// A validated circuit breaker.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BreakerSpec {
    /// Open after this many consecutive failures.
    pub consecutive_failures: u32,
    /// ... or when the failure ratio over `window` exceeds this ...
    pub failure_ratio: f64,
    /// ... with at least this many requests in the window.
    pub min_requests: u32,
    /// The ratio window.
    #[serde(serialize_with = "ser::duration")]
    pub window: Duration,
    /// How long an open breaker stays open before half-opening.
    #[serde(serialize_with = "ser::duration")]
    pub open_for: Duration,
    /// Concurrent trial requests while half-open; all must succeed to close.
    pub half_open_probes: u32,
    /// Which outcomes count as failures.
    pub failure_on: Vec<FailureKind>,
    /// Share transitions to open with the other gateway instances through Redis.
    pub shared: bool,
    /// The Redis of shared breakers, when not `[rate_limit] redis_url` (resolved at load:
    /// `Some` whenever `shared`).
    #[serde(serialize_with = "ser::opt_url")]
    pub redis_url: Option<String>,
}

/// A validated retry policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetrySpec {
    /// Extra attempts after the first.
    pub attempts: u32,
    /// Error kinds that are retried.
    pub on: Vec<FailureKind>,
    /// Methods retried after bytes may have reached the upstream (idempotent only).
    #[serde(serialize_with = "ser::methods")]
    pub methods: Vec<Method>,
    /// Base of the exponential backoff (with jitter).
    #[serde(serialize_with = "ser::duration")]
    pub backoff: Duration,
    /// Retries may add at most this share to the upstream's request rate ...
    pub budget_ratio: f64,
    /// ... but at least this many retries per second are always allowed.
    pub min_retries_per_sec: u32,
}

const IDEMPOTENT: &[&str] = &["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"];

fn kinds(r: &mut Reader<'_>, n: &Node<'_, '_>, allowed: &[&str]) -> Option<Vec<FailureKind>> {
    let items = r.strings(n)?;
    let mut out = Vec::new();
    for (text, span, path) in items {
        let kind = match text {
            "connect" => FailureKind::Connect,
            "timeout" => FailureKind::Timeout,
            "reset" => FailureKind::Reset,
            "5xx" => FailureKind::Status5xx,
            _ => {
                r.error_at(
                    span,
                    &path,
                    format!(
                        "unknown outcome \"{text}\" (expected one of {})",
                        allowed.join(", ")
                    ),
                );
                continue;
            }
        };
        if !allowed.contains(&text) {
            r.error_at(
                span,
                &path,
                format!(
                    "\"{text}\" is not allowed here (expected one of {})",
                    allowed.join(", ")
                ),
            );
            continue;
        }
        if !out.contains(&kind) {
            out.push(kind);
        }
    }
    Some(out)
}

/// Reads `[circuit_breaker]`.
pub fn read_breaker(r: &mut Reader<'_>, n: &Node<'_, '_>) -> Option<BreakerSpec> {
    let t = r.table(n)?;
    let before = r.error_count();
    let int = |r: &mut Reader<'_>, key: &'static str, default: u32, max: i64| match t.get(key) {
        None => Some(default),
        Some(n) => r.integer(&n, 1, max).map(|v| v as u32),
    };
    let consecutive_failures = int(r, "consecutive_failures", 5, 1_000_000);
    let min_requests = int(r, "min_requests", 20, 1_000_000);
    let half_open_probes = int(r, "half_open_probes", 3, 10_000);
    let failure_ratio = match t.get("failure_ratio") {
        None => Some(0.5),
        Some(n) => match n.value() {
            toml::de::DeValue::Float(f) => match f.as_str().parse::<f64>() {
                Ok(v) if v > 0.0 && v <= 1.0 => Some(v),
                _ => {
                    r.error(&n, "failure_ratio must be in (0, 1]");
                    None
                }
            },
            toml::de::DeValue::Integer(_) => r.integer(&n, 1, 1).map(|v| v as f64),
            _ => {
                r.type_error(&n, "a number");
                None
            }
        },
    };
    let duration = |r: &mut Reader<'_>, key: &'static str, default: Duration| match t.get(key) {
        None => Some(default),
        Some(n) => r.duration(&n),
    };
    let window = duration(r, "window", Duration::from_secs(10));
    let open_for = duration(r, "open_for", Duration::from_secs(30));
    let failure_on = match t.get("failure_on") {
        None => Some(vec![
            FailureKind::Connect,
            FailureKind::Timeout,
            FailureKind::Status5xx,
        ]),
        Some(n) => kinds(r, &n, &["connect", "timeout", "reset", "5xx"]),
    };
    let shared = match t.get("shared") {
        None => Some(false),
        Some(n) => r.boolean(&n),
    };
    let redis_url = t.get("redis_url").and_then(|n| {
        let text = r.string(&n)?;
        let ok = (text.starts_with("redis://") || text.starts_with("rediss://"))
            && ::redis::Client::open(text).is_ok();
        if !ok {
            r.error(&n, "invalid Redis URL (redis:// or rediss://)");
            return None;
        }
        Some(text.to_string())
    });
    if r.error_count() > before {
        return None;
    }
    Some(BreakerSpec {
        shared: shared?,
        redis_url,
        consecutive_failures: consecutive_failures?,
        failure_ratio: failure_ratio?,
        min_requests: min_requests?,
        window: window?,
        open_for: open_for?,
        half_open_probes: half_open_probes?,
        failure_on: failure_on?,
    })
}

/// Reads `[retry]`.
pub fn read_retry(r: &mut Reader<'_>, n: &Node<'_, '_>) -> Option<RetrySpec> {
    let t = r.table(n)?;
    let before = r.error_count();
    let attempts = match t.get("attempts") {
        None => Some(2),
        Some(n) => r.integer(&n, 0, 10).map(|v| v as u32),
    };
    let on = match t.get("on") {
        None => Some(vec![
            FailureKind::Connect,
            FailureKind::Timeout,
            FailureKind::Reset,
        ]),
        Some(n) => kinds(r, &n, &["connect", "timeout", "reset"]),
    };
    let methods = match t.get("methods") {
        None => Some(IDEMPOTENT.iter().filter_map(|m| Method::from_bytes(m.as_bytes()).ok()).collect()),
        Some(n) => r.strings(&n).map(|items| {
            let mut out = Vec::new();
            for (text, span, path) in items {
                let upper = text.to_ascii_uppercase();
                if IDEMPOTENT.contains(&upper.as_str()) {
                    out.extend(Method::from_bytes(upper.as_bytes()).ok());
                } else {
                    r.error_at(
                        span,
                        &path,
                        format!("{text} is not idempotent and cannot be retried once sent (connect errors retry any method)"),
                    );
                }
            }
            out
        }),
    };
    let backoff = match t.get("backoff") {
        None => Some(Duration::from_millis(25)),
        Some(n) => r.duration(&n),
    };
    let budget_ratio = match t.get("budget_ratio") {
        None => Some(0.2),
        Some(n) => match n.value() {
            toml::de::DeValue::Float(f) => match f.as_str().parse::<f64>() {
                Ok(v) if (0.0..=10.0).contains(&v) => Some(v),
                _ => {
                    r.error(&n, "budget_ratio must be between 0 and 10");
                    None
                }
            },
            _ => r.integer(&n, 0, 10).map(|v| v as f64),
        },
    };
    let min_retries_per_sec = match t.get("min_retries_per_sec") {
        None => Some(10),
        Some(n) => r.integer(&n, 0, 1_000_000).map(|v| v as u32),
    };
    if r.error_count() > before {
        return None;
    }
    Some(RetrySpec {
        attempts: attempts?,
        on: on?,
        methods: methods?,
        backoff: backoff?,
        budget_ratio: budget_ratio?,
        min_retries_per_sec: min_retries_per_sec?,
    })
}
