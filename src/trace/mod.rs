//! Distributed tracing (domain layer): W3C Trace Context on every request ([`context`]: a
//! valid `traceparent` is continued with a new span, anything else starts a trace; the
//! upstream gets `traceparent`, the access log `trace_id` and `span_id`), and, with
//! `[tracing] otlp_endpoint`, one server span per sampled request with child spans for
//! authentication (and a JWKS refetch it waited for), the rate-limit check and each upstream
//! attempt ([`span`]), queued for export without waiting ([`export`]). The exporter itself runs
//! in [`crate::services::spans`].

pub mod context;
pub mod export;
pub mod span;

pub use span::{Kind, RequestTrace, Value};
