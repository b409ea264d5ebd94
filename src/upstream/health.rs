//! Active health checks: a cluster's probe (Pingora's `HttpHealthCheck` or `TcpHealthCheck`),
//! its schedule and one round of checks. Thresholds are ours, so that health state lives in
//! [`BackendState`](super::backend::BackendState) and survives reloads. The background service
//! that runs due rounds for whatever the current snapshot holds is
//! [`crate::services::health`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use tokio::task::JoinSet;

use super::Cluster;
use crate::config::{HealthCheckKind, HealthCheckSpec};

/// A cluster's health check: the probe, its settings and its schedule.
pub struct Checker {
    probe: Arc<dyn HealthCheck + Send + Sync>,
    spec: HealthCheckSpec,
    running: AtomicBool,
    next_round: Mutex<Option<Instant>>,
}

impl Checker {
    /// Builds the probe for `spec`.
    pub fn new(spec: &HealthCheckSpec) -> Self {
        let probe: Arc<dyn HealthCheck + Send + Sync> = match &spec.kind {
            HealthCheckKind::Http { path, host } => {
                let mut check = HttpHealthCheck::new(host, false);
                // The path was validated at load; were it not, the probe would keep "/".
                if let Ok(uri) = http::Uri::try_from(path.as_str()) {
                    check.req.set_uri(uri);
                }
                check.peer_template.options.connection_timeout = Some(spec.timeout);
                check.peer_template.options.read_timeout = Some(spec.timeout);
                check.peer_template.options.write_timeout = Some(spec.timeout);
                Arc::new(check)
            }
            HealthCheckKind::Tcp => {
                let mut check = TcpHealthCheck::new();
                check.peer_template.options.connection_timeout = Some(spec.timeout);
                Arc::from(check as Box<dyn HealthCheck + Send + Sync>)
            }
        };
        Checker {
            probe,
            spec: spec.clone(),
            running: AtomicBool::new(false),
            next_round: Mutex::new(None),
        }
    }

    /// Claims the next round if it is due; the caller must then run it ([`run_round`]).
    pub fn claim_round(&self, now: Instant) -> bool {
        let Ok(mut next) = self.next_round.lock() else {
            return false;
        };
        if next.is_some_and(|t| now < t) || self.running.swap(true, Ordering::AcqRel) {
            return false;
        }
        *next = Some(now + self.spec.interval);
        true
    }
}

/// Probes every backend of `cluster` once, concurrently, and records the results.
pub async fn run_round(cluster: Arc<Cluster>) {
    let Some(checker) = cluster.health.as_ref() else {
        return;
    };
    let mut probes = JoinSet::new();
    for (i, member) in cluster.members().iter().enumerate() {
        let probe = Arc::clone(&checker.probe);
        let target = member.check_target.clone();
        let timeout = checker.spec.timeout;
        probes.spawn(async move {
            let ok = matches!(
                tokio::time::timeout(timeout, probe.check(&target)).await,
                Ok(Ok(()))
            );
            (i, ok)
        });
    }
    while let Some(joined) = probes.join_next().await {
        let Ok((i, ok)) = joined else { continue };
        let member = &cluster.members()[i];
        let spec = &checker.spec;
        match member
            .state
            .observe(ok, spec.healthy_threshold, spec.unhealthy_threshold)
        {
            Some(true) => log::info!(
                "upstream {} backend {} is healthy again",
                cluster.name(),
                member.addr
            ),
            Some(false) => log::warn!(
                "upstream {} backend {} is unhealthy",
                cluster.name(),
                member.addr
            ),
            None => {}
        }
    }
    checker.running.store(false, Ordering::Release);
}
