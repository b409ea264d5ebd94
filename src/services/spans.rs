//! Span export (with `[tracing] otlp_endpoint`): takes the finished traces the request path
//! queued ([`crate::trace::export`]) and sends them to the collector over OTLP/HTTP (protobuf),
//! in batches of whatever has accumulated (up to 512 requests) while the previous export ran.
//! The exporter is built here, in the serving process's runtime (so after Pingora daemonises:
//! threads made before that are lost), and the queue exists only once it runs. A collector
//! that is down or slow costs requests nothing: the queue fills, and what does not fit is
//! dropped and counted in `gatehouse_tracing_spans_total{result="dropped"}`; failed exports
//! are counted as `failed` and logged once per incident.

use async_trait::async_trait;
use opentelemetry::InstrumentationScope;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::SpanExporter as _;
use opentelemetry_sdk::Resource;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::IntCounter;

use crate::config::tracing::TracingSettings;
use crate::trace::export::{self, FinishedTrace};

/// Requests per export call at most.
const BATCH: usize = 512;

/// The span exporter.
pub struct SpanExportService {
    settings: TracingSettings,
    /// `[exported, failed]`.
    counters: [IntCounter; 2],
    queue: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<FinishedTrace>>>,
}

impl SpanExportService {
    /// An exporter for `settings`, when they name an endpoint: installs the process's queue
    /// at once (before Pingora daemonises, so that the first request is recorded), with
    /// `counters` `[exported, dropped, failed]`.
    pub fn new(settings: TracingSettings, counters: [IntCounter; 3]) -> Option<Self> {
        settings.otlp_endpoint.as_ref()?;
        let [exported, dropped, failed] = counters;
        let queue = export::install(settings.max_queue, dropped)?;
        Some(SpanExportService {
            settings,
            counters: [exported, failed],
            queue: std::sync::Mutex::new(Some(queue)),
        })
    }
}

#[async_trait]
impl BackgroundService for SpanExportService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(endpoint) = &self.settings.otlp_endpoint else {
            return;
        };
        let [exported, failed] = self.counters.clone();
        let Some(mut queue) = self.queue.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let url = format!("{endpoint}/v1/traces");
        let client = match reqwest::Client::builder()
            .no_proxy()
            .timeout(self.settings.export_timeout)
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                log::error!("tracing: cannot build the HTTP client, spans are not exported: {e}");
                return;
            }
        };
        let mut exporter = match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_endpoint(url.clone())
            .with_protocol(Protocol::HttpBinary)
            .with_timeout(self.settings.export_timeout)
            .build()
        {
            Ok(e) => e,
            Err(e) => {
                log::error!("tracing: cannot build the OTLP exporter, spans are not exported: {e}");
                return;
            }
        };
        exporter.set_resource(
            &Resource::builder_empty()
                .with_service_name(self.settings.service_name.clone())
                .with_attribute(opentelemetry::KeyValue::new(
                    "service.version",
                    env!("CARGO_PKG_VERSION"),
                ))
                .build(),
        );
        let scope = InstrumentationScope::builder("gatehouse")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        log::info!(
            "tracing: exporting sampled spans to {url} (sample_ratio {})",
            self.settings.sample_ratio
        );
        let mut failing = false;
        let mut batch: Vec<FinishedTrace> = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                first = queue.recv() => match first {
                    Some(t) => batch.push(t),
                    None => return,
                },
                _ = shutdown.changed() => {
                    // What is queued now goes out before the process stops.
                    while let Ok(t) = queue.try_recv() {
                        batch.push(t);
                    }
                    if !batch.is_empty() {
                        let spans = batch.drain(..).flat_map(|t| export::span_data(t, &scope)).collect::<Vec<_>>();
                        let n = spans.len() as u64;
                        match tokio::time::timeout(self.settings.export_timeout, exporter.export(spans)).await {
                            Ok(Ok(())) => exported.inc_by(n),
                            _ => failed.inc_by(n),
                        }
                    }
                    return;
                }
            }
            while batch.len() < BATCH {
                match queue.try_recv() {
                    Ok(t) => batch.push(t),
                    Err(_) => break,
                }
            }
            let spans: Vec<_> = batch
                .drain(..)
                .flat_map(|t| export::span_data(t, &scope))
                .collect();
            let n = spans.len() as u64;
            let result =
                tokio::time::timeout(self.settings.export_timeout, exporter.export(spans)).await;
            match result {
                Ok(Ok(())) => {
                    exported.inc_by(n);
                    if failing {
                        failing = false;
                        log::info!("tracing: exporting to {url} again");
                    }
                }
                Ok(Err(e)) => {
                    failed.inc_by(n);
                    if !failing {
                        failing = true;
                        log::warn!("tracing: export to {url} failed, dropping spans until it works again: {e}");
                    }
                }
                Err(_) => {
                    failed.inc_by(n);
                    if !failing {
                        failing = true;
                        log::warn!("tracing: export to {url} timed out, dropping spans until it works again");
                    }
                }
            }
        }
    }
}
