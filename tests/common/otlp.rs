//! A small OTLP/HTTP trace receiver: accepts `POST /v1/traces` (protobuf), decodes each
//! export with the `opentelemetry-proto` types and keeps the spans for the test to inspect.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

/// A received span with the `service.name` of its resource.
#[derive(Debug, Clone)]
pub struct Received {
    /// The exporting service.
    pub service: String,
    /// The span.
    pub span: Span,
}

impl Received {
    /// The trace id, as hex.
    pub fn trace_id(&self) -> String {
        hex::encode(&self.span.trace_id)
    }

    /// The span id, as hex.
    pub fn span_id(&self) -> String {
        hex::encode(&self.span.span_id)
    }

    /// The parent span id, as hex ("" for a root).
    pub fn parent_id(&self) -> String {
        hex::encode(&self.span.parent_span_id)
    }

    /// An attribute's value as text (numbers and flags formatted).
    pub fn attr(&self, key: &str) -> Option<String> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
            .map(|v| match v {
                AnyValue::StringValue(s) => s.clone(),
                AnyValue::IntValue(i) => i.to_string(),
                AnyValue::BoolValue(b) => b.to_string(),
                AnyValue::DoubleValue(d) => d.to_string(),
                other => format!("{other:?}"),
            })
    }
}

/// The receiver.
#[derive(Clone)]
pub struct Collector {
    /// Where it listens.
    pub addr: SocketAddr,
    spans: Arc<Mutex<Vec<Received>>>,
    posts: Arc<Mutex<usize>>,
}

impl Collector {
    /// Starts a receiver on a free loopback port.
    pub fn start() -> Self {
        let mut c = Collector {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            spans: Arc::default(),
            posts: Arc::default(),
        };
        let serve = c.clone();
        c.addr = super::serve::serve(move |req| serve.clone().handle(req));
        c
    }

    /// `http://ADDR` (the gateway appends `/v1/traces`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn handle(self, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
        let ok_path = req.uri().path() == "/v1/traces";
        let protobuf = req
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes() == b"application/x-protobuf");
        let body = req.into_body().collect().await.map(|b| b.to_bytes());
        let decoded = body
            .ok()
            .filter(|_| ok_path && protobuf)
            .and_then(|b| ExportTraceServiceRequest::decode(b).ok());
        let Some(export) = decoded else {
            return Ok(Response::builder()
                .status(400)
                .body(Full::new(Bytes::new()))
                .unwrap());
        };
        *self.posts.lock().unwrap() += 1;
        let mut spans = self.spans.lock().unwrap();
        for rs in export.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    AnyValue::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    spans.push(Received {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
        let reply = ExportTraceServiceResponse::default().encode_to_vec();
        Ok(Response::builder()
            .header("content-type", "application/x-protobuf")
            .body(Full::new(Bytes::from(reply)))
            .unwrap())
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }

    /// The spans of trace `trace_id` (hex), once `count` of them have arrived (at most 10 s).
    pub async fn trace(&self, trace_id: &str, count: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let spans: Vec<Received> = self
                .spans()
                .into_iter()
                .filter(|s| s.trace_id() == trace_id)
                .collect();
            if spans.len() >= count || Instant::now() > deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
