//! `GET /admin/summary`: what the status page shows, in one JSON document — process, config
//! generation and last reload, per-route traffic (counters, the latency histogram and, on caching
//! routes, the cache's results, so that the page can compute rates, quantiles and hit ratios
//! over its own refresh interval), and rate-limit
//! decisions per tier. Read from the metrics registry on demand: nothing is added to the
//! request path.

use std::collections::BTreeMap;
use std::time::SystemTime;

use prometheus::proto::{MetricFamily, MetricType};
use serde::Serialize;
use serde_json::{json, Value};

use crate::metrics::NO_ROUTE;
use crate::services::reload::LastReload;
use crate::snapshot::Snapshot;

/// Traffic of one route since the process started.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct RouteTraffic {
    /// Route name (`none`: requests no route matched).
    pub name: String,
    /// Upstream name.
    pub upstream: String,
    /// Requests answered.
    pub requests: u64,
    /// Answers with a 4xx status.
    pub client_errors: u64,
    /// Answers with a 5xx status, or none at all.
    pub server_errors: u64,
    /// Request duration histogram: `[upper bound in seconds, cumulative count]`, ascending,
    /// without the +Inf bucket (that is `requests`).
    pub latency_buckets: Vec<(f64, u64)>,
    /// On a caching route: what the cache did, by `X-Cache` result.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheResults>,
}

/// A caching route's answers by what the cache did.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct CacheResults {
    /// Served fresh from the cache.
    pub hit: u64,
    /// Fetched from the upstream.
    pub miss: u64,
    /// Served stale.
    pub stale: u64,
    /// Served after the upstream confirmed it (304).
    pub revalidated: u64,
}

/// Rate-limit decisions of one tier, over every route.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct TierDecisions {
    /// Tier name.
    pub tier: String,
    /// Requests admitted.
    pub allowed: u64,
    /// Requests refused with 429.
    pub rejected: u64,
}

/// The summary document.
pub fn summary(
    snapshot: &Snapshot,
    families: &[MetricFamily],
    last_reload: Option<LastReload>,
    started: SystemTime,
) -> Value {
    let now = SystemTime::now();
    let unix = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    };
    let reloads = counter_by(families, "gatehouse_config_reloads_total", "result");
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "now": unix(now),
        "started_at": unix(started),
        "uptime_seconds": now.duration_since(started).map_or(0, |d| d.as_secs()),
        "config": {
            "generation": snapshot.generation(),
            "loaded_at": unix(snapshot.loaded_at()),
            "reloads": { "success": reloads.get("success").copied().unwrap_or(0),
                         "failure": reloads.get("failure").copied().unwrap_or(0) },
            "last_reload": last_reload,
        },
        "routes": route_traffic(snapshot, families),
        "rate_limit_tiers": tier_decisions(families),
    })
}

/// Per-route traffic, in configuration order, then `none` for requests no route matched.
pub fn route_traffic(snapshot: &Snapshot, families: &[MetricFamily]) -> Vec<RouteTraffic> {
    let mut routes: Vec<RouteTraffic> = snapshot
        .config()
        .routes
        .iter()
        .map(|r| RouteTraffic {
            name: r.name.clone(),
            upstream: r.upstream.name.clone(),
            cache: r.cache.as_ref().map(|_| CacheResults::default()),
            ..RouteTraffic::default()
        })
        .chain(std::iter::once(RouteTraffic {
            name: NO_ROUTE.to_string(),
            upstream: NO_ROUTE.to_string(),
            ..RouteTraffic::default()
        }))
        .collect();
    let index: BTreeMap<String, usize> = routes
        .iter()
        .enumerate()
        .map(|(i, r)| (r.name.clone(), i))
        .collect();
    for family in families {
        match family.name() {
            "gatehouse_requests_total" => {
                for m in family.get_metric() {
                    let Some(&i) = label(m, "route").and_then(|r| index.get(r)) else {
                        continue;
                    };
                    let n = m.get_counter().get_value() as u64;
                    let r = &mut routes[i];
                    r.requests += n;
                    match label(m, "status") {
                        Some("4xx") => r.client_errors += n,
                        Some("5xx" | "none") => r.server_errors += n,
                        _ => {}
                    }
                }
            }
            "gatehouse_cache_requests_total" => {
                for m in family.get_metric() {
                    let Some(&i) = label(m, "route").and_then(|r| index.get(r)) else {
                        continue;
                    };
                    let Some(cache) = routes[i].cache.as_mut() else {
                        continue;
                    };
                    let n = m.get_counter().get_value() as u64;
                    match label(m, "result") {
                        Some("hit") => cache.hit += n,
                        Some("miss") => cache.miss += n,
                        Some("stale") => cache.stale += n,
                        Some("revalidated") => cache.revalidated += n,
                        _ => {}
                    }
                }
            }
            "gatehouse_request_duration_seconds"
                if family.get_field_type() == MetricType::HISTOGRAM =>
            {
                for m in family.get_metric() {
                    let Some(&i) = label(m, "route").and_then(|r| index.get(r)) else {
                        continue;
                    };
                    routes[i].latency_buckets = m
                        .get_histogram()
                        .get_bucket()
                        .iter()
                        .filter(|b| b.upper_bound().is_finite())
                        .map(|b| (b.upper_bound(), b.cumulative_count()))
                        .collect();
                }
            }
            _ => {}
        }
    }
    routes
}

/// Rate-limit decisions summed per tier, tiers in name order.
pub fn tier_decisions(families: &[MetricFamily]) -> Vec<TierDecisions> {
    let mut tiers: BTreeMap<String, TierDecisions> = BTreeMap::new();
    let Some(family) = families
        .iter()
        .find(|f| f.name() == "gatehouse_ratelimit_decisions_total")
    else {
        return Vec::new();
    };
    for m in family.get_metric() {
        let (Some(tier), Some(decision)) = (label(m, "tier"), label(m, "decision")) else {
            continue;
        };
        let entry = tiers
            .entry(tier.to_string())
            .or_insert_with(|| TierDecisions {
                tier: tier.to_string(),
                ..TierDecisions::default()
            });
        let n = m.get_counter().get_value() as u64;
        match decision {
            "allowed" => entry.allowed += n,
            "rejected" => entry.rejected += n,
            _ => {}
        }
    }
    tiers.into_values().collect()
}

fn label<'a>(m: &'a prometheus::proto::Metric, name: &str) -> Option<&'a str> {
    m.get_label()
        .iter()
        .find(|l| l.name() == name)
        .map(|l| l.value())
}

fn counter_by(families: &[MetricFamily], family: &str, by: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for f in families.iter().filter(|f| f.name() == family) {
        for m in f.get_metric() {
            if let Some(v) = label(m, by) {
                *out.entry(v.to_string()).or_insert(0) += m.get_counter().get_value() as u64;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn snapshot(metrics: &Metrics) -> Snapshot {
        let text = "[upstreams.u]\nbackends = [{ addr = \"127.0.0.1:1\" }]\n\
                    [[routes]]\nname = \"a\"\npath_prefix = \"/a\"\nupstream = \"u\"\n\
                    [[routes]]\nname = \"b\"\npath_prefix = \"/b\"\nupstream = \"u\"\n";
        let config = crate::config::parse(std::path::Path::new("t.toml"), text).unwrap();
        Snapshot::build(config, None, metrics)
    }

    #[test]
    fn caching_routes_report_their_cache_results() {
        let metrics = Metrics::new();
        let text = "[upstreams.u]\nbackends = [{ addr = \"127.0.0.1:1\" }]\n\
                    [[routes]]\nname = \"a\"\npath_prefix = \"/a\"\nupstream = \"u\"\n\
                    [routes.cache]\nttl = \"5s\"\n\
                    [[routes]]\nname = \"b\"\npath_prefix = \"/b\"\nupstream = \"u\"\n";
        let config = crate::config::parse(std::path::Path::new("t.toml"), text).unwrap();
        let snap = Snapshot::build(config, None, &metrics);
        let a = snap.caching(crate::config::RouteId::new(0)).unwrap();
        a.results[0].inc_by(3);
        a.results[1].inc();
        a.results[3].inc();
        let routes = route_traffic(&snap, &metrics.gather());
        assert_eq!(
            routes[0].cache,
            Some(CacheResults {
                hit: 3,
                miss: 1,
                stale: 0,
                revalidated: 1
            })
        );
        assert_eq!(
            routes[1].cache, None,
            "a route without a cache table has none"
        );
        let json = serde_json::to_value(&routes[1]).unwrap();
        assert!(json.get("cache").is_none());
    }

    #[test]
    fn routes_sum_status_classes_and_keep_their_histogram() {
        let metrics = Metrics::new();
        let snap = snapshot(&metrics);
        let a = metrics.route("a", "u");
        a.record(200, 0.003);
        a.record(200, 0.040);
        a.record(404, 0.001);
        a.record(503, 0.002);
        metrics.route(NO_ROUTE, NO_ROUTE).record(404, 0.0001);
        let routes = route_traffic(&snap, &metrics.gather());
        let names: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "none"]);
        assert_eq!(
            (
                routes[0].requests,
                routes[0].client_errors,
                routes[0].server_errors
            ),
            (4, 1, 1)
        );
        let le = |b: f64| {
            routes[0]
                .latency_buckets
                .iter()
                .find(|(u, _)| *u == b)
                .map(|(_, c)| *c)
        };
        assert_eq!(le(0.001), Some(1));
        assert_eq!(le(0.005), Some(3));
        assert_eq!(le(0.05), Some(4));
        assert_eq!((routes[1].requests, routes[2].requests), (0, 1));
    }

    #[test]
    fn tiers_sum_over_routes() {
        let metrics = Metrics::new();
        let [a_ok, a_no] = metrics.ratelimit_decisions("a", "free");
        let [b_ok, _] = metrics.ratelimit_decisions("b", "free");
        let [p_ok, _] = metrics.ratelimit_decisions("a", "pro");
        a_ok.inc_by(3);
        b_ok.inc_by(2);
        a_no.inc();
        p_ok.inc();
        assert_eq!(
            tier_decisions(&metrics.gather()),
            [
                TierDecisions {
                    tier: "free".into(),
                    allowed: 5,
                    rejected: 1
                },
                TierDecisions {
                    tier: "pro".into(),
                    allowed: 1,
                    rejected: 0
                },
            ]
        );
    }
}
