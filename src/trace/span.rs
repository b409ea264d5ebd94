//! One request's trace: the ids it propagates, and — when it is sampled and spans are
//! exported — its recorded spans (the server span's attributes are filled at the end, from
//! what the request state holds; children are recorded as the request goes).

use std::time::{Duration, Instant, SystemTime};

use super::context::{parse_traceparent, sampled_by_ratio, SpanId, TraceId};

/// A span attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Text.
    Str(String),
    /// Text known at compile time.
    Static(&'static str),
    /// A number.
    Int(i64),
    /// A flag.
    Bool(bool),
}

/// Span kinds used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Work inside the gateway (auth, rate limit).
    Internal,
    /// A call to a backend.
    Client,
}

/// A child span of the request's server span.
#[derive(Debug, Clone, PartialEq)]
pub struct ChildSpan {
    /// Its id.
    pub span_id: SpanId,
    /// Its parent: the server span, or another child.
    pub parent: SpanId,
    /// Name.
    pub name: &'static str,
    /// Kind.
    pub kind: Kind,
    /// Start, from the request's start.
    pub start: Duration,
    /// End, from the request's start (`None` while open).
    pub end: Option<Duration>,
    /// Attributes.
    pub attributes: Vec<(&'static str, Value)>,
    /// An error description (the span's status), if it failed.
    pub error: Option<String>,
}

/// What is recorded of a sampled request.
#[derive(Debug)]
pub struct Recording {
    /// Wall-clock start (what spans are stamped with).
    pub start: SystemTime,
    /// Monotonic start (what durations are measured with).
    pub started: Instant,
    /// Child spans in start order.
    pub children: Vec<ChildSpan>,
    /// The open upstream attempt's span (index into `children`).
    pub attempt: Option<usize>,
}

impl Recording {
    fn offset(&self) -> Duration {
        self.started.elapsed()
    }
}

/// The trace context of one request.
#[derive(Debug, Default)]
pub struct RequestTrace {
    /// The trace: the caller's, or a new one.
    pub trace_id: TraceId,
    /// The gateway's server span.
    pub span_id: SpanId,
    /// The caller's span, when the request carried a valid `traceparent`.
    pub parent: Option<SpanId>,
    /// The sampling decision propagated upstream.
    pub sampled: bool,
    /// The request carried a `traceparent` that was not valid (its `tracestate` is then
    /// dropped, as the specification asks).
    pub invalid_parent: bool,
    /// Present when the request is sampled and spans are exported.
    pub recording: Option<Box<Recording>>,
}

impl RequestTrace {
    /// Starts the request's trace from its `traceparent` header (if any): continued when
    /// valid, new otherwise. New traces are sampled by `ratio`, continued ones follow their
    /// parent's decision; spans are recorded only when sampled and `exporting`.
    pub fn start(traceparent: Option<&[u8]>, ratio: f64, exporting: bool) -> Self {
        let parent = traceparent.and_then(parse_traceparent);
        let (trace_id, sampled) = match parent {
            Some(p) => (p.trace_id, p.sampled),
            None => {
                let id = TraceId::random();
                (id, exporting && sampled_by_ratio(&id, ratio))
            }
        };
        RequestTrace {
            trace_id,
            span_id: SpanId::random(),
            parent: parent.map(|p| p.span_id),
            sampled,
            invalid_parent: traceparent.is_some() && parent.is_none(),
            recording: (sampled && exporting).then(|| {
                Box::new(Recording {
                    start: SystemTime::now(),
                    started: Instant::now(),
                    children: Vec::new(),
                    attempt: None,
                })
            }),
        }
    }

    /// Whether spans are being recorded.
    pub fn recording(&self) -> bool {
        self.recording.is_some()
    }

    /// Opens a child span of the server span; returns its index (`None` when not recording).
    pub fn open(&mut self, name: &'static str, kind: Kind) -> Option<usize> {
        let parent = self.span_id;
        let r = self.recording.as_mut()?;
        let start = r.offset();
        r.children.push(ChildSpan {
            span_id: SpanId::random(),
            parent,
            name,
            kind,
            start,
            end: None,
            attributes: Vec::new(),
            error: None,
        });
        Some(r.children.len() - 1)
    }

    /// A finished child of span `parent` (an index from [`Self::open`]) that began `took` ago.
    pub fn record_child(
        &mut self,
        parent: usize,
        name: &'static str,
        took: Duration,
        attributes: Vec<(&'static str, Value)>,
    ) {
        let Some(r) = self.recording.as_mut() else {
            return;
        };
        let Some(parent) = r.children.get(parent).map(|c| c.span_id) else {
            return;
        };
        let end = r.offset();
        r.children.push(ChildSpan {
            span_id: SpanId::random(),
            parent,
            name,
            kind: Kind::Internal,
            start: end.saturating_sub(took),
            end: Some(end),
            attributes,
            error: None,
        });
    }

    /// Closes child `index` with `attributes` and, if it failed, `error`.
    pub fn close(
        &mut self,
        index: Option<usize>,
        attributes: impl IntoIterator<Item = (&'static str, Value)>,
        error: Option<String>,
    ) {
        let (Some(r), Some(i)) = (self.recording.as_mut(), index) else {
            return;
        };
        let end = r.offset();
        if let Some(c) = r.children.get_mut(i) {
            if c.end.is_none() {
                c.end = Some(end);
                c.attributes.extend(attributes);
                c.error = error;
            }
        }
    }

    /// Opens the span of an upstream attempt (closing one left open).
    pub fn open_attempt(&mut self, attributes: Vec<(&'static str, Value)>) {
        if self.recording.is_none() {
            return;
        }
        self.close_attempt(Vec::new(), Some("abandoned".to_string()));
        let index = self.open("upstream", Kind::Client);
        if let (Some(r), Some(i)) = (self.recording.as_mut(), index) {
            r.children[i].attributes = attributes;
            r.attempt = Some(i);
        }
    }

    /// Closes the open attempt's span, if any.
    pub fn close_attempt(&mut self, attributes: Vec<(&'static str, Value)>, error: Option<String>) {
        let index = self.recording.as_mut().and_then(|r| r.attempt.take());
        self.close(index, attributes, error);
    }

    /// The span id to send upstream as the parent: the open attempt's span when recording,
    /// else the server span.
    pub fn upstream_parent(&self) -> SpanId {
        self.recording
            .as_ref()
            .and_then(|r| r.attempt.map(|i| r.children[i].span_id))
            .unwrap_or(self.span_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_parent_is_continued_with_a_new_span() {
        let t = RequestTrace::start(Some(PARENT), 0.0, true);
        assert_eq!(&t.trace_id.hex(), b"4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent.map(|p| p.hex()), Some(*b"00f067aa0ba902b7"));
        assert_ne!(&t.span_id.hex(), b"00f067aa0ba902b7");
        assert!(
            t.sampled,
            "a sampled parent is always recorded (parent-based)"
        );
        assert!(t.recording());
        assert!(!t.invalid_parent);
    }

    #[test]
    fn an_invalid_or_missing_parent_starts_a_trace() {
        let t = RequestTrace::start(Some(b"00-garbage"), 1.0, true);
        assert!(t.parent.is_none() && t.invalid_parent && t.sampled);
        let t = RequestTrace::start(None, 1.0, false);
        assert!(
            !t.sampled && !t.recording(),
            "nothing is sampled without an exporter"
        );
        let t = RequestTrace::start(None, 0.0, true);
        assert!(!t.sampled && !t.recording());
    }

    #[test]
    fn attempts_are_children_and_parents_of_the_upstream_call() {
        let mut t = RequestTrace::start(None, 1.0, true);
        t.open_attempt(vec![("server.port", Value::Int(1))]);
        let first = t.upstream_parent();
        assert_ne!(first, t.span_id);
        t.close_attempt(Vec::new(), Some("connect".into()));
        t.open_attempt(Vec::new());
        assert_ne!(t.upstream_parent(), first);
        t.close_attempt(vec![("http.response.status_code", Value::Int(200))], None);
        let r = t.recording.as_ref().unwrap();
        assert_eq!(r.children.len(), 2);
        assert!(r
            .children
            .iter()
            .all(|c| c.parent == t.span_id && c.end.is_some()));
        assert_eq!(r.children[0].error.as_deref(), Some("connect"));
        assert_eq!(t.upstream_parent(), t.span_id, "no attempt open");
    }
}
