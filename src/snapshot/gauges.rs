//! The live gauges: backend health, in-flight count, drained flag and circuit state per
//! backend, the adaptive limit factor per route, and TLS certificate expiry. They are read from the current snapshot
//! at scrape time by one `prometheus` [`Collector`], registered once, so nothing is reset or
//! refilled under a lock and removed backends disappear with their snapshot.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, IntGaugeVec, Opts};

use super::SnapshotStore;

/// The collector of the live gauges.
pub struct LiveGauges {
    store: SnapshotStore,
    descs: Vec<Desc>,
}

fn backend_gauge(name: &str, help: &str) -> IntGaugeVec {
    // Names and labels are constants; a failure here is a programming error caught by tests.
    IntGaugeVec::new(Opts::new(name, help), &["upstream", "backend"])
        .unwrap_or_else(|e| panic!("gauge {name}: {e}"))
}

fn expiry_gauge() -> IntGaugeVec {
    IntGaugeVec::new(
        Opts::new(
            "gatehouse_tls_certificate_expiry_timestamp_seconds",
            "When each TLS certificate expires (Unix time), by its first name.",
        ),
        &["name"],
    )
    .unwrap_or_else(|e| panic!("gauge gatehouse_tls_certificate_expiry_timestamp_seconds: {e}"))
}

fn vecs() -> ([IntGaugeVec; 4], GaugeVec) {
    (
        [
            backend_gauge(
                "gatehouse_upstream_backend_healthy",
                "1 when the backend may receive traffic by health checks (1 without checks).",
            ),
            backend_gauge(
                "gatehouse_upstream_backend_inflight",
                "Requests in flight to the backend.",
            ),
            backend_gauge(
                "gatehouse_upstream_backend_drained",
                "1 when an operator drained the backend.",
            ),
            backend_gauge(
                "gatehouse_circuit_state",
                "Circuit breaker state: 0 closed, 1 open, 2 half-open.",
            ),
        ],
        GaugeVec::new(
            Opts::new(
                "gatehouse_adaptive_limit_factor",
                "Factor applied to the rate limits of adaptive routes.",
            ),
            &["route"],
        )
        .unwrap_or_else(|e| panic!("gauge gatehouse_adaptive_limit_factor: {e}")),
    )
}

impl LiveGauges {
    /// Gauges over whatever `store` holds at each scrape.
    pub fn new(store: SnapshotStore) -> Self {
        let (backend, factor) = vecs();
        let expiry = expiry_gauge();
        let descs = backend
            .iter()
            .flat_map(|v| v.desc())
            .chain(factor.desc())
            .chain(expiry.desc())
            .cloned()
            .collect();
        LiveGauges { store, descs }
    }
}

impl Collector for LiveGauges {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let snapshot = self.store.load();
        let ([healthy, inflight, drained, circuit], factor) = vecs();
        for cluster in snapshot.clusters() {
            for (i, m) in cluster.members().iter().enumerate() {
                let addr = m.addr.to_string();
                let labels = [cluster.name(), addr.as_str()];
                healthy
                    .with_label_values(&labels)
                    .set(i64::from(m.state.is_healthy()));
                inflight
                    .with_label_values(&labels)
                    .set(m.state.inflight() as i64);
                drained
                    .with_label_values(&labels)
                    .set(i64::from(m.state.is_drained()));
                circuit
                    .with_label_values(&labels)
                    .set(cluster.circuit(i) as i64);
            }
        }
        for (id, spec) in snapshot.config().route_ids() {
            if spec.adaptive_limit {
                factor
                    .with_label_values(&[spec.name.as_str()])
                    .set(snapshot.cluster_of(id).state.factor());
            }
        }
        let expiry = expiry_gauge();
        if let Some(certs) = snapshot.certs() {
            for (name, at) in certs.expiry() {
                expiry.with_label_values(&[name.as_str()]).set(*at);
            }
        }
        [healthy, inflight, drained, circuit, expiry]
            .iter()
            .flat_map(|v| v.collect())
            .chain(factor.collect())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_follow_the_live_snapshot() {
        let src =
            "[upstreams.u]\nbackends = [{ addr = \"127.0.0.1:1\" }, { addr = \"127.0.0.1:2\" }]\n\
                   [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\n";
        let cfg = crate::config::parse(std::path::Path::new("t.toml"), src).unwrap();
        let metrics = crate::metrics::Metrics::new();
        let store = SnapshotStore::new(super::super::Snapshot::build(cfg, None, &metrics));
        metrics.register(Box::new(LiveGauges::new(store.clone())));
        store.load().clusters()[0].members()[1]
            .state
            .set_drained(true);
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(text.contains(
            "gatehouse_upstream_backend_drained{backend=\"127.0.0.1:2\",upstream=\"u\"} 1"
        ));
        assert!(text.contains(
            "gatehouse_upstream_backend_healthy{backend=\"127.0.0.1:1\",upstream=\"u\"} 1"
        ));
    }
}
