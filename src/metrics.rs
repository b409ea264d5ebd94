//! Prometheus metrics (the layer above the domain modules): the registry, and the handle
//! structs it fills. A domain module defines the small handle struct it records into
//! ([`AuthCounters`], [`DecisionCounters`], [`StoreCounters`], [`BreakerCounters`],
//! [`JwksMetrics`]); handles the proxy records into ([`RouteMetrics`], [`UpstreamMetrics`])
//! are defined here. Handles are resolved once per snapshot so that recording is a few atomic
//! adds. Gauges that read live state (backend health, in-flight, circuit state, adaptive
//! factor) are a collector over the snapshot store ([`crate::snapshot::gauges`]), registered
//! once through [`Metrics::register`]. Labels come only from configured names.

use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::auth::jwks::JwksMetrics;
use crate::auth::{AuthCounters, Reason};
use crate::cache::StorageMetrics;
use crate::config::{FailureKind, ProviderId, UpstreamSpec};
use crate::policy::template::{SkipCounters, SKIP_REASONS};
use crate::policy::PolicyMetrics;
use crate::ratelimit::{DecisionCounters, StoreCounters};
use crate::refusal::EDGE_REASONS;
use crate::upstream::BreakerCounters;

/// Label used for requests that matched no route (and so no upstream).
pub const NO_ROUTE: &str = "none";

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Status classes used as the `status` label, indexed by [`status_class`].
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

/// Index into per-class counters: 0..=4 for 1xx..5xx, 5 when no response was sent.
pub fn status_class(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100 - 1),
        _ => 5,
    }
}

/// All of the gateway's metrics, in one registry.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    upstream_duration: HistogramVec,
    /// Downstream connections currently open.
    pub connections_active: IntGauge,
    reloads: IntCounterVec,
    /// Access log lines dropped because the writer fell behind.
    pub access_log_dropped: IntCounter,
    auth: IntCounterVec,
    ratelimit_decisions: IntCounterVec,
    ratelimit_store: StoreCounters,
    circuit_transitions: IntCounterVec,
    retries: IntCounterVec,
    retry_budget_exhausted: IntCounterVec,
    jwks_keys: IntGaugeVec,
    edge: EdgeCounters,
    cors_preflights: IntCounterVec,
    tls_failures: IntCounterVec,
    transform_skipped: IntCounterVec,
    /// Connections closed because a request head did not arrive within
    /// `request_head_timeout`.
    pub edge_head_timeouts: IntCounter,
    jwks_fetches: IntCounterVec,
    jwks_last_success: IntGaugeVec,
    websockets_active: IntGaugeVec,
    websockets: IntCounterVec,
    tracing_spans: IntCounterVec,
    introspection: IntCounterVec,
    /// Breakers opened because another instance opened its own.
    pub circuit_peer_transitions: IntCounterVec,
    /// Failed Redis operations of the shared breakers.
    pub circuit_shared_errors: IntCounter,
    cache_requests: IntCounterVec,
    cache_storage: StorageMetrics,
    cache_purges: IntCounterVec,
}

/// `gatehouse_cache_requests_total` of one caching route, by [`CACHE_RESULTS`].
pub type CacheResults = [IntCounter; 4];

/// What became of a request that used the cache (the `X-Cache` values, lowercase).
pub const CACHE_RESULTS: [&str; 4] = ["hit", "miss", "stale", "revalidated"];

/// `gatehouse_edge_refusals_total`, by reason ([`EDGE_REASONS`]).
#[derive(Clone)]
pub struct EdgeCounters([IntCounter; EDGE_REASONS.len()]);

impl EdgeCounters {
    /// Counts an edge refusal ([`Refusal::edge_reason`](crate::refusal::Refusal::edge_reason)).
    pub fn record(&self, reason: usize) {
        if let Some(c) = self.0.get(reason) {
            c.inc();
        }
    }
}

/// Pre-resolved handles for one route.
pub struct RouteMetrics {
    requests: [IntCounter; 6],
    duration: Histogram,
    websockets_active: IntGauge,
    websockets: IntCounter,
}

/// Keeps one upgraded WebSocket connection counted in
/// `gatehouse_websocket_connections_active` until dropped.
pub struct WebSocketGuard(IntGauge);

impl Drop for WebSocketGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Pre-resolved handles for one upstream.
pub struct UpstreamMetrics {
    duration: Histogram,
    /// With a retry policy: retries by reason (connect, timeout, reset) and refusals by the
    /// budget. Upstreams without one have no such series.
    retries: Option<([IntCounter; 3], IntCounter)>,
}

impl RouteMetrics {
    /// Counts a WebSocket connection upgraded on this route; it stays active until the guard
    /// is dropped.
    pub fn websocket_opened(&self) -> WebSocketGuard {
        self.websockets.inc();
        self.websockets_active.inc();
        WebSocketGuard(self.websockets_active.clone())
    }

    /// Records one finished request.
    pub fn record(&self, status: u16, seconds: f64) {
        self.requests[status_class(status)].inc();
        self.duration.observe(seconds);
    }
}

impl UpstreamMetrics {
    /// Records the time from sending a request upstream to its response header.
    pub fn record(&self, seconds: f64) {
        self.duration.observe(seconds);
    }

    /// Counts a retry sent after a failure of `kind` (upstreams with a retry policy).
    pub fn retry(&self, kind: FailureKind) {
        let i = match kind {
            FailureKind::Connect => 0,
            FailureKind::Timeout => 1,
            FailureKind::Reset | FailureKind::Status5xx => 2,
        };
        if let Some((by_reason, _)) = &self.retries {
            by_reason[i].inc();
        }
    }

    /// Counts a retry refused by the budget (upstreams with a retry policy).
    pub fn retry_budget_exhausted(&self) {
        if let Some((_, exhausted)) = &self.retries {
            exhausted.inc();
        }
    }
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Metric names and label sets are constants checked by the unit test below.
    r.unwrap_or_else(|e| panic!("metric definition: {e}"))
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        let requests = must(IntCounterVec::new(
            Opts::new(
                "gatehouse_requests_total",
                "Requests answered, by route, upstream and status class.",
            ),
            &["route", "upstream", "status"],
        ));
        let request_duration = must(HistogramVec::new(
            HistogramOpts::new(
                "gatehouse_request_duration_seconds",
                "Time from request start to the end of the response.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        ));
        let upstream_duration = must(HistogramVec::new(
            HistogramOpts::new(
                "gatehouse_upstream_duration_seconds",
                "Time from choosing a backend to its response header.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["upstream"],
        ));
        let connections_active = must(IntGauge::new(
            "gatehouse_connections_active",
            "Downstream connections currently open.",
        ));
        let reloads = must(IntCounterVec::new(
            Opts::new(
                "gatehouse_config_reloads_total",
                "Configuration reloads, by result.",
            ),
            &["result"],
        ));
        let access_log_dropped = must(IntCounter::new(
            "gatehouse_access_log_dropped_total",
            "Access log lines dropped because the writer could not keep up.",
        ));
        let auth = must(IntCounterVec::new(
            Opts::new(
                "gatehouse_auth_total",
                "Authentication outcomes by route, provider and result.",
            ),
            &["route", "method", "result"],
        ));
        let ratelimit_decisions = must(IntCounterVec::new(
            Opts::new(
                "gatehouse_ratelimit_decisions_total",
                "Rate-limit decisions by route, tier and decision.",
            ),
            &["route", "tier", "decision"],
        ));
        let ratelimit_store = StoreCounters {
            store_errors: must(IntCounter::new(
                "gatehouse_ratelimit_store_errors_total",
                "Rate-limit store calls that failed or timed out.",
            )),
            evictions: must(IntCounter::new(
                "gatehouse_ratelimit_evictions_total",
                "Local rate-limit keys evicted because max_keys was reached.",
            )),
            lease_evictions: must(IntCounter::new(
                "gatehouse_ratelimit_lease_evictions_total",
                "Batched reservations evicted because max_keys was reached; their unspent tokens are given back to Redis.",
            )),
        };
        let circuit_transitions = must(IntCounterVec::new(
            Opts::new(
                "gatehouse_circuit_transitions_total",
                "Circuit breaker state changes, by new state.",
            ),
            &["upstream", "backend", "to"],
        ));
        let retries = must(IntCounterVec::new(
            Opts::new(
                "gatehouse_retries_total",
                "Retries sent, by upstream and reason.",
            ),
            &["upstream", "reason"],
        ));
        let retry_budget_exhausted = must(IntCounterVec::new(
            Opts::new(
                "gatehouse_retry_budget_exhausted_total",
                "Retries refused because the retry budget was spent.",
            ),
            &["upstream"],
        ));
        let jwks_keys = must(IntGaugeVec::new(
            Opts::new(
                "gatehouse_jwks_keys",
                "Keys currently held for a JWKS provider (0: none fetched yet).",
            ),
            &["provider"],
        ));
        let jwks_fetches = must(IntCounterVec::new(
            Opts::new(
                "gatehouse_jwks_fetches_total",
                "JWKS fetches by provider and result.",
            ),
            &["provider", "result"],
        ));
        let jwks_last_success = must(IntGaugeVec::new(
            Opts::new(
                "gatehouse_jwks_last_success_timestamp_seconds",
                "Unix time of the last successful JWKS fetch (0: never).",
            ),
            &["provider"],
        ));
        let edge_refusals = must(IntCounterVec::new(
            Opts::new(
                "gatehouse_edge_refusals_total",
                "Requests refused at the edge (request hygiene and body limits), by reason.",
            ),
            &["reason"],
        ));
        let edge = EdgeCounters(EDGE_REASONS.map(|r| edge_refusals.with_label_values(&[r])));
        let edge_head_timeouts = must(IntCounter::new(
            "gatehouse_edge_head_timeouts_total",
            "Connections closed because a request head did not arrive within request_head_timeout.",
        ));
        let cors_preflights = must(IntCounterVec::new(
            Opts::new(
                "gatehouse_cors_preflights_total",
                "CORS preflights answered by the gateway, by route and result (allowed, denied).",
            ),
            &["route", "result"],
        ));
        let transform_skipped = must(IntCounterVec::new(
            Opts::new(
                "gatehouse_transform_skipped_total",
                "Transformations skipped (the message passed unchanged), by route and reason.",
            ),
            &["route", "reason"],
        ));
        let tls_failures = must(IntCounterVec::new(
            Opts::new(
                "gatehouse_tls_handshake_failures_total",
                "TLS handshakes that failed, by reason.",
            ),
            &["reason"],
        ));
        let websockets_active = must(IntGaugeVec::new(
            Opts::new(
                "gatehouse_websocket_connections_active",
                "Upgraded WebSocket connections currently open, by route.",
            ),
            &["route"],
        ));
        let websockets = must(IntCounterVec::new(
            Opts::new(
                "gatehouse_websocket_connections_total",
                "WebSocket connections upgraded, by route.",
            ),
            &["route"],
        ));
        let introspection = must(IntCounterVec::new(
            Opts::new(
                "gatehouse_introspection_requests_total",
                "Calls to token introspection endpoints, by provider and what they said: active, inactive, error (no usable answer).",
            ),
            &["provider", "result"],
        ));
        let circuit_peer_transitions = must(IntCounterVec::new(
            Opts::new(
                "gatehouse_circuit_peer_transitions_total",
                "Shared circuit breakers opened here because another gateway instance opened its own.",
            ),
            &["upstream", "backend"],
        ));
        let circuit_shared_errors = must(IntCounter::new(
            "gatehouse_circuit_shared_errors_total",
            "Failed Redis connections or operations of the shared circuit breakers.",
        ));
        let tracing_spans = must(IntCounterVec::new(
            Opts::new(
                "gatehouse_tracing_spans_total",
                "Spans of sampled requests, by what became of them: exported, dropped (export queue full), failed (the collector refused or did not answer).",
            ),
            &["result"],
        ));
        let cache_requests = must(IntCounterVec::new(
            Opts::new(
                "gatehouse_cache_requests_total",
                "Requests that used the response cache, by route and result: hit, miss (fetched from the upstream, stored or not), stale (served stale), revalidated (the upstream confirmed the stored response).",
            ),
            &["route", "result"],
        ));
        let cache_storage = StorageMetrics {
            evictions: must(IntCounter::new(
                "gatehouse_cache_evictions_total",
                "Cached responses removed to keep the cache within [cache] max_size.",
            )),
            too_large: must(IntCounter::new(
                "gatehouse_cache_too_large_total",
                "Responses not cached because their body exceeded [cache] max_object_size.",
            )),
            entries: must(IntGauge::new(
                "gatehouse_cache_entries",
                "Responses in the cache.",
            )),
            bytes: must(IntGauge::new(
                "gatehouse_cache_stored_bytes",
                "Bytes of cached responses (bodies, headers and a fixed allowance per entry).",
            )),
        };
        let cache_purges = must(IntCounterVec::new(
            Opts::new(
                "gatehouse_cache_purges_total",
                "Purges requested through the admin API, by route.",
            ),
            &["route"],
        ));
        let build_info = must(IntGaugeVec::new(
            Opts::new("gatehouse_build_info", "Build information."),
            &["version"],
        ));
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for result in ["success", "failure"] {
            reloads.with_label_values(&[result]);
        }
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(requests.clone()),
            Box::new(request_duration.clone()),
            Box::new(upstream_duration.clone()),
            Box::new(connections_active.clone()),
            Box::new(reloads.clone()),
            Box::new(access_log_dropped.clone()),
            Box::new(auth.clone()),
            Box::new(ratelimit_decisions.clone()),
            Box::new(ratelimit_store.store_errors.clone()),
            Box::new(ratelimit_store.evictions.clone()),
            Box::new(ratelimit_store.lease_evictions.clone()),
            Box::new(circuit_transitions.clone()),
            Box::new(retries.clone()),
            Box::new(retry_budget_exhausted.clone()),
            Box::new(jwks_keys.clone()),
            Box::new(jwks_fetches.clone()),
            Box::new(jwks_last_success.clone()),
            Box::new(edge_refusals),
            Box::new(cors_preflights.clone()),
            Box::new(tls_failures.clone()),
            Box::new(transform_skipped.clone()),
            Box::new(edge_head_timeouts.clone()),
            Box::new(websockets_active.clone()),
            Box::new(websockets.clone()),
            Box::new(tracing_spans.clone()),
            Box::new(introspection.clone()),
            Box::new(circuit_peer_transitions.clone()),
            Box::new(circuit_shared_errors.clone()),
            Box::new(cache_requests.clone()),
            Box::new(cache_storage.evictions.clone()),
            Box::new(cache_storage.too_large.clone()),
            Box::new(cache_storage.entries.clone()),
            Box::new(cache_storage.bytes.clone()),
            Box::new(cache_purges.clone()),
            Box::new(build_info),
        ];
        for c in collectors {
            must(registry.register(c));
        }
        Arc::new(Metrics {
            registry,
            requests,
            request_duration,
            upstream_duration,
            connections_active,
            reloads,
            access_log_dropped,
            auth,
            ratelimit_decisions,
            ratelimit_store,
            circuit_transitions,
            retries,
            retry_budget_exhausted,
            jwks_keys,
            edge,
            cors_preflights,
            tls_failures,
            transform_skipped,
            edge_head_timeouts,
            jwks_fetches,
            jwks_last_success,
            websockets_active,
            websockets,
            tracing_spans,
            introspection,
            circuit_peer_transitions,
            circuit_shared_errors,
            cache_requests,
            cache_storage,
            cache_purges,
        })
    }

    /// The cache result counters of a caching route (pre-created at zero).
    pub fn cache_results(&self, route: &str) -> CacheResults {
        CACHE_RESULTS.map(|r| self.cache_requests.with_label_values(&[route, r]))
    }

    /// The cache storage's counters and gauges.
    pub fn cache_storage(&self) -> StorageMetrics {
        self.cache_storage.clone()
    }

    /// Counts a purge of `route`.
    pub fn cache_purge(&self, route: &str) {
        self.cache_purges.with_label_values(&[route]).inc();
    }

    /// Handles for a route (use [`NO_ROUTE`] for both names when nothing matched).
    pub fn route(&self, route: &str, upstream: &str) -> RouteMetrics {
        RouteMetrics {
            requests: CLASSES
                .map(|class| self.requests.with_label_values(&[route, upstream, class])),
            duration: self.request_duration.with_label_values(&[route]),
            websockets_active: self.websockets_active.with_label_values(&[route]),
            websockets: self.websockets.with_label_values(&[route]),
        }
    }

    /// Authentication counters for `route`, which accepts `providers` (id and label).
    pub fn auth(&self, route: &str, providers: &[(ProviderId, &str)]) -> AuthCounters {
        let results: Vec<&str> = std::iter::once("success")
            .chain(Reason::ALL.iter().map(|r| r.as_str()))
            .collect();
        let rows = providers
            .iter()
            .map(|(_, label)| *label)
            .chain(std::iter::once("none"))
            .map(|m| std::array::from_fn(|i| self.auth.with_label_values(&[route, m, results[i]])))
            .collect();
        AuthCounters::new(providers.iter().map(|(id, _)| *id).collect(), rows)
    }

    /// Decision counters (`[allowed, rejected]`) of a route and tier.
    pub fn ratelimit_decisions(&self, route: &str, tier: &str) -> DecisionCounters {
        ["allowed", "rejected"].map(|d| {
            self.ratelimit_decisions
                .with_label_values(&[route, tier, d])
        })
    }

    /// TLS handshake failure counters, by
    /// [`FAILURE_REASONS`](crate::tls::FAILURE_REASONS) (pre-created at zero).
    pub fn tls_handshake_failures(&self) -> [IntCounter; 5] {
        crate::tls::FAILURE_REASONS.map(|r| self.tls_failures.with_label_values(&[r]))
    }

    /// The edge refusal counters.
    pub fn edge(&self) -> &EdgeCounters {
        &self.edge
    }

    /// The rate limiter's process-wide counters.
    pub fn ratelimit_store(&self) -> &StoreCounters {
        &self.ratelimit_store
    }

    /// Transition counters of a backend, indexed by new state (closed, open, half-open).
    pub fn breaker(&self, upstream: &str, backend: &str) -> BreakerCounters {
        ["closed", "open", "half_open"].map(|to| {
            self.circuit_transitions
                .with_label_values(&[upstream, backend, to])
        })
    }

    /// Handles of a JWKS provider.
    pub fn jwks(&self, provider: &str) -> JwksMetrics {
        JwksMetrics {
            keys: self.jwks_keys.with_label_values(&[provider]),
            fetch_ok: self.jwks_fetches.with_label_values(&[provider, "success"]),
            fetch_failed: self.jwks_fetches.with_label_values(&[provider, "failure"]),
            last_success: self.jwks_last_success.with_label_values(&[provider]),
        }
    }

    /// Handles for an upstream.
    pub fn upstream(&self, spec: &UpstreamSpec) -> UpstreamMetrics {
        let name = spec.name.as_str();
        UpstreamMetrics {
            duration: self.upstream_duration.with_label_values(&[name]),
            retries: spec.retry.as_ref().map(|_| {
                (
                    ["connect", "timeout", "reset"]
                        .map(|reason| self.retries.with_label_values(&[name, reason])),
                    self.retry_budget_exhausted.with_label_values(&[name]),
                )
            }),
        }
    }

    /// Registers a collector (the live gauges over the snapshot store), once.
    pub fn register(&self, collector: Box<dyn prometheus::core::Collector>) {
        must(self.registry.register(collector));
    }

    /// The span export counters: `[exported, dropped, failed]` (pre-created at zero: with
    /// tracing on, a zero `dropped` is worth seeing).
    pub fn tracing_spans(&self) -> [IntCounter; 3] {
        ["exported", "dropped", "failed"].map(|r| self.tracing_spans.with_label_values(&[r]))
    }

    /// Every metric family's current values (for the admin status summary).
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
    }

    /// Counts a reload attempt.
    pub fn config_reload(&self, success: bool) {
        self.reloads
            .with_label_values(&[if success { "success" } else { "failure" }])
            .inc();
    }

    /// The text exposition of every metric.
    ///
    /// Series are pre-created so that the request path only increments counters it holds, but
    /// not every pre-created series is shown: the failure reasons of `gatehouse_auth_total` (a
    /// route × provider × 12 reasons, almost all zero forever) appear with their first count.
    /// The rule: a series whose zero tells an operator something (successes, per-backend
    /// gauges, rate-limit decisions per tier, requests without credentials) is exposed from
    /// the start, so that `rate()` over it is right from the first scrape; a series that only
    /// enumerates ways of failing is exposed once it is not zero.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8192);
        let mut families = self.registry.gather();
        for family in &mut families {
            if family.name() == "gatehouse_auth_total" {
                family.mut_metric().retain(|m| {
                    let shown_at_zero = m.get_label().iter().any(|l| {
                        l.name() == "result" && matches!(l.value(), "success" | "missing")
                    });
                    shown_at_zero || m.get_counter().get_value() != 0.0
                });
            }
        }
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            log::error!("metrics encoding failed: {e}");
        }
        out
    }
}

impl crate::auth::ProviderMetrics for Metrics {
    fn jwks(&self, provider: &str) -> JwksMetrics {
        Metrics::jwks(self, provider)
    }

    fn introspection(&self, provider: &str) -> crate::auth::introspection::IntrospectionCounters {
        let c = |result| self.introspection.with_label_values(&[provider, result]);
        crate::auth::introspection::IntrospectionCounters {
            active: c("active"),
            inactive: c("inactive"),
            error: c("error"),
        }
    }
}

impl PolicyMetrics for Metrics {
    fn auth(&self, route: &str, providers: &[(ProviderId, &str)]) -> AuthCounters {
        Metrics::auth(self, route, providers)
    }

    fn ratelimit_decisions(&self, route: &str, tier: &str) -> DecisionCounters {
        Metrics::ratelimit_decisions(self, route, tier)
    }

    fn cors_preflights(&self, route: &str) -> [IntCounter; 2] {
        ["allowed", "denied"].map(|r| self.cors_preflights.with_label_values(&[route, r]))
    }

    fn transform_skipped(&self, route: &str) -> SkipCounters {
        SkipCounters(SKIP_REASONS.map(|r| self.transform_skipped.with_label_values(&[route, r])))
    }
}

/// Counts one open downstream connection for as long as it lives. Shared (`Arc`) between the
/// requests of a keep-alive connection, so it drops when the connection does.
#[derive(Debug)]
pub struct ConnectionGuard(IntGauge);

impl ConnectionGuard {
    /// Counts a new connection.
    pub fn new(metrics: &Metrics) -> Arc<Self> {
        metrics.connections_active.inc();
        Arc::new(ConnectionGuard(metrics.connections_active.clone()))
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_register_and_classes_map() {
        let m = Metrics::new();
        m.route("r", "u").record(204, 0.01);
        m.route(NO_ROUTE, NO_ROUTE).record(404, 0.001);
        assert_eq!(status_class(101), 0);
        assert_eq!(status_class(599), 4);
        assert_eq!(status_class(0), 5);
    }
}
