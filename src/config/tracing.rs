//! `[tracing]`: OpenTelemetry span export. W3C Trace Context propagation happens whatever this
//! says; without `otlp_endpoint` no span is recorded or exported.

use std::time::Duration;

use serde::Serialize;

use super::reader::{Node, Reader};

/// The `[tracing]` settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TracingSettings {
    /// Base URL of an OTLP/HTTP collector (`/v1/traces` is appended); `None`: no export.
    pub otlp_endpoint: Option<String>,
    /// Share of root traces (requests without a sampled parent) that are recorded.
    pub sample_ratio: f64,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Finished requests waiting for export at most; beyond it their spans are dropped (and
    /// counted).
    pub max_queue: usize,
    /// Budget of one export call.
    #[serde(serialize_with = "super::ser::duration")]
    pub export_timeout: Duration,
}

impl Default for TracingSettings {
    fn default() -> Self {
        TracingSettings {
            otlp_endpoint: None,
            sample_ratio: 1.0,
            service_name: "gatehouse".to_string(),
            max_queue: 2048,
            export_timeout: Duration::from_secs(3),
        }
    }
}

/// Reads `[tracing]`.
pub fn read(r: &mut Reader<'_>, node: Option<&Node<'_, '_>>) -> TracingSettings {
    let mut s = TracingSettings::default();
    let Some(node) = node else { return s };
    let Some(t) = r.table(node) else { return s };
    if let Some(n) = t.get("otlp_endpoint") {
        if let Some(text) = r.string(&n) {
            let ok = (text.starts_with("http://") || text.starts_with("https://"))
                && reqwest::Url::parse(text).is_ok_and(|u| u.host().is_some());
            if ok {
                s.otlp_endpoint = Some(text.trim_end_matches('/').to_string());
            } else {
                r.error(
                    &n,
                    format!(
                        "invalid URL \"{text}\" (http:// or https://, e.g. http://127.0.0.1:4318)"
                    ),
                );
            }
        }
    }
    if let Some(n) = t.get("sample_ratio") {
        let value = match n.value() {
            toml::de::DeValue::Float(f) => f.as_str().replace('_', "").parse::<f64>().ok(),
            toml::de::DeValue::Integer(i) => i.as_str().parse::<f64>().ok(),
            _ => None,
        };
        match value {
            Some(v) if (0.0..=1.0).contains(&v) => s.sample_ratio = v,
            _ => r.error(&n, "sample_ratio must be a number from 0 to 1"),
        }
    }
    if let Some(n) = t.get("service_name") {
        match r.string(&n) {
            Some("") => r.error(&n, "service_name must not be empty"),
            Some(name) => s.service_name = name.to_string(),
            None => {}
        }
    }
    if let Some(n) = t.get("max_queue") {
        if let Some(v) = r.integer(&n, 1, 1_000_000) {
            s.max_queue = v as usize;
        }
    }
    if let Some(n) = t.get("export_timeout") {
        // (`Reader::duration` refuses zero.)
        if let Some(d) = r.duration(&n) {
            s.export_timeout = d;
        }
    }
    s
}
