//! The hand-off from requests to the exporter: a bounded queue of finished request traces
//! (one entry per request, whatever its number of spans), and their conversion to
//! OpenTelemetry span data. A full queue drops the request's spans and counts them; nothing on
//! the request path waits for the collector.

use std::borrow::Cow;
use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::trace::{SpanContext, SpanKind, Status, TraceFlags, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use prometheus::IntCounter;
use tokio::sync::mpsc;

use super::context::{SpanId, TraceId};
use super::span::{ChildSpan, Kind, RequestTrace, Value};

/// A request whose trace is complete.
#[derive(Debug)]
pub struct FinishedTrace {
    /// Ids and recorded children.
    pub trace: RequestTrace,
    /// The server span's end, from the request's start.
    pub end: Duration,
    /// The server span's name.
    pub name: String,
    /// The server span's attributes.
    pub attributes: Vec<(&'static str, Value)>,
    /// The server span's error status, if the answer was a server error.
    pub error: Option<String>,
}

impl FinishedTrace {
    /// Spans it holds (the server span and its children).
    pub fn span_count(&self) -> usize {
        1 + self
            .trace
            .recording
            .as_ref()
            .map_or(0, |r| r.children.len())
    }
}

/// Where finished traces go.
pub struct Sink {
    tx: mpsc::Sender<FinishedTrace>,
    dropped: IntCounter,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Installs the process's sink (the exporter service does, once it runs); returns the
/// receiving end, or `None` if one was installed already.
pub fn install(capacity: usize, dropped: IntCounter) -> Option<mpsc::Receiver<FinishedTrace>> {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    SINK.set(Sink { tx, dropped }).ok().map(|()| rx)
}

/// Whether spans are exported (so sampled requests record them).
pub fn exporting() -> bool {
    SINK.get().is_some()
}

/// Queues a finished trace for export; when the queue is full its spans are dropped and
/// counted.
pub fn submit(trace: FinishedTrace) {
    if let Some(sink) = SINK.get() {
        if let Err(e) = sink.tx.try_send(trace) {
            let lost = match &e {
                mpsc::error::TrySendError::Full(t) | mpsc::error::TrySendError::Closed(t) => {
                    t.span_count()
                }
            };
            sink.dropped.inc_by(lost as u64);
        }
    }
}

/// The OpenTelemetry span data of a finished trace: the server span, then its children.
pub fn span_data(t: FinishedTrace, scope: &InstrumentationScope) -> Vec<SpanData> {
    let Some(rec) = t.trace.recording else {
        return Vec::new();
    };
    let trace_id = t.trace.trace_id;
    let mut out = Vec::with_capacity(1 + rec.children.len());
    out.push(SpanData {
        span_context: context(trace_id, t.trace.span_id),
        parent_span_id: t
            .trace
            .parent
            .map_or(opentelemetry::trace::SpanId::INVALID, otel_span_id),
        parent_span_is_remote: t.trace.parent.is_some(),
        span_kind: SpanKind::Server,
        name: Cow::Owned(t.name),
        start_time: rec.start,
        end_time: rec.start + t.end,
        attributes: key_values(t.attributes),
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: status(t.error),
        instrumentation_scope: scope.clone(),
    });
    for c in rec.children {
        let ChildSpan {
            span_id,
            parent,
            name,
            kind,
            start,
            end,
            attributes,
            error,
        } = c;
        out.push(SpanData {
            span_context: context(trace_id, span_id),
            parent_span_id: otel_span_id(parent),
            parent_span_is_remote: false,
            span_kind: match kind {
                Kind::Internal => SpanKind::Internal,
                Kind::Client => SpanKind::Client,
            },
            name: Cow::Borrowed(name),
            start_time: rec.start + start,
            end_time: rec.start + end.unwrap_or(t.end),
            attributes: key_values(attributes),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: status(error),
            instrumentation_scope: scope.clone(),
        });
    }
    out
}

fn context(trace: TraceId, span: SpanId) -> SpanContext {
    SpanContext::new(
        opentelemetry::trace::TraceId::from_bytes(trace.0),
        otel_span_id(span),
        TraceFlags::SAMPLED,
        false,
        TraceState::default(),
    )
}

fn otel_span_id(span: SpanId) -> opentelemetry::trace::SpanId {
    opentelemetry::trace::SpanId::from_bytes(span.0)
}

fn status(error: Option<String>) -> Status {
    match error {
        Some(e) => Status::error(e),
        None => Status::Unset,
    }
}

fn key_values(attributes: Vec<(&'static str, Value)>) -> Vec<KeyValue> {
    attributes
        .into_iter()
        .map(|(k, v)| match v {
            Value::Str(s) => KeyValue::new(k, s),
            Value::Static(s) => KeyValue::new(k, s),
            Value::Int(i) => KeyValue::new(k, i),
            Value::Bool(b) => KeyValue::new(k, b),
        })
        .collect()
}
