//! The admin listener (serving layer, beside the proxy): a separate Pingora listening service (so its socket is handed over on
//! upgrade like the traffic listeners). `/health`, `/ready` and `/metrics` are open to probes;
//! every `/admin/*` endpoint needs `Authorization: Bearer <token>`. `GET /` is the status page
//! (`status.html`, embedded), which asks for the token and reads `/admin/*` with it.

mod page;
mod purge;
mod summary;
mod views;

use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::cache::Cache;
use crate::metrics::Metrics;
use crate::request_id::RequestId;
use crate::services::reload::{ReloadOutcome, Reloader};
use crate::snapshot::SnapshotStore;

/// The admin HTTP application.
pub struct AdminApp {
    store: SnapshotStore,
    metrics: Arc<Metrics>,
    reloader: Arc<Reloader>,
    cache: &'static Cache,
    started: std::time::SystemTime,
}

impl AdminApp {
    /// An admin app over the live snapshot, metrics, reloader and response cache.
    pub fn new(
        store: SnapshotStore,
        metrics: Arc<Metrics>,
        reloader: Arc<Reloader>,
        cache: &'static Cache,
    ) -> Self {
        AdminApp {
            store,
            metrics,
            reloader,
            cache,
            started: std::time::SystemTime::now(),
        }
    }

    /// `None` when the request may use `/admin/*`, else the refusal to send.
    fn refuse_unauthorised(&self, session: &ServerSession) -> Option<Response<Vec<u8>>> {
        let snapshot = self.store.load();
        let Some(token) = snapshot
            .config()
            .admin
            .as_ref()
            .and_then(|a| a.token.as_ref())
        else {
            return Some(views::error(
                StatusCode::FORBIDDEN,
                "admin token not configured",
            ));
        };
        let presented = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        match presented {
            Some(p) if token.matches(p) => None,
            _ => {
                let mut resp =
                    views::error(StatusCode::UNAUTHORIZED, "missing or invalid admin token");
                resp.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer realm=\"gatehouse-admin\""),
                );
                Some(resp)
            }
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let id = RequestId::from_client_or_new(
            session
                .req_header()
                .headers
                .get("x-request-id")
                .map(http::HeaderValue::as_bytes),
        );
        let mut resp = self.route(session).await;
        views::stamp(&mut resp, &id);
        resp
    }
}

impl AdminApp {
    /// The response of the endpoint the request names.
    async fn route(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        // Segments are percent-decoded, so that a backend address may be sent encoded
        // (`127.0.0.1%3A9001`, `%5B%3A%3A1%5D%3A80`) as the status page does.
        let decoded: Vec<std::borrow::Cow<'_, str>> = path
            .trim_matches('/')
            .split('/')
            .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy())
            .collect();
        let segments: Vec<&str> = decoded.iter().map(|s| s.as_ref()).collect();
        match (method, segments.as_slice()) {
            (Method::GET | Method::HEAD, [""]) => page::status(),
            (Method::GET | Method::HEAD, ["health"]) => {
                views::json(StatusCode::OK, views::health())
            }
            (Method::GET | Method::HEAD, ["ready"]) => views::ready(&self.store.load()),
            (Method::GET | Method::HEAD, ["metrics"]) => views::metrics(self.metrics.render()),
            (_, ["admin", ..]) => {
                if let Some(refusal) = self.refuse_unauthorised(session) {
                    return refusal;
                }
                if segments[1..] == ["cache", "purge"]
                    && session.req_header().method == Method::POST
                {
                    let body = match read_body(session, purge::MAX_BODY).await {
                        Ok(body) => body,
                        Err(response) => return response,
                    };
                    return purge::purge(&self.store.load(), self.cache, &self.metrics, &body);
                }
                self.admin(session.req_header().method.clone(), &segments[1..])
                    .await
            }
            (_, ["" | "health" | "ready" | "metrics"]) => views::method_not_allowed("GET, HEAD"),
            _ => views::error(StatusCode::NOT_FOUND, "no such admin endpoint"),
        }
    }

    async fn admin(&self, method: Method, rest: &[&str]) -> Response<Vec<u8>> {
        match (method, rest) {
            (Method::GET | Method::HEAD, ["upstreams"]) => {
                views::json(StatusCode::OK, views::upstreams(&self.store.load()))
            }
            (
                Method::POST,
                ["upstreams", name, "backends", addr, action @ ("drain" | "enable")],
            ) => views::set_drained(&self.store.load(), name, addr, *action == "drain"),
            (Method::GET | Method::HEAD, ["summary"]) => {
                let families = self.metrics.gather();
                views::json(
                    StatusCode::OK,
                    summary::summary(
                        &self.store.load(),
                        &families,
                        self.reloader.last(),
                        self.started,
                    ),
                )
            }
            (Method::GET | Method::HEAD, ["config"]) => {
                views::json(StatusCode::OK, self.store.load().config().render())
            }
            (Method::POST, ["reload"]) => {
                let reloader = Arc::clone(&self.reloader);
                match tokio::task::spawn_blocking(move || reloader.reload()).await {
                    Ok(ReloadOutcome::Applied { needs_upgrade }) => views::json(
                        StatusCode::OK,
                        serde_json::json!({ "result": "applied", "needs_upgrade": needs_upgrade }),
                    ),
                    Ok(ReloadOutcome::Rejected(errors)) => views::json(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        serde_json::json!({
                            "result": "rejected",
                            "errors": errors.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
                        }),
                    ),
                    Err(_) => views::error(StatusCode::INTERNAL_SERVER_ERROR, "reload task failed"),
                }
            }
            (_, ["upstreams"] | ["summary"] | ["config"]) => views::method_not_allowed("GET, HEAD"),
            (
                _,
                ["reload"]
                | ["cache", "purge"]
                | ["upstreams", _, "backends", _, "drain" | "enable"],
            ) => views::method_not_allowed("POST"),
            _ => views::error(StatusCode::NOT_FOUND, "no such admin endpoint"),
        }
    }
}

/// The request body, at most `max` bytes (else the response to send: 413, or 400 when the
/// body could not be read).
async fn read_body(session: &mut ServerSession, max: usize) -> Result<Vec<u8>, Response<Vec<u8>>> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > max {
                    return Err(views::error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        &format!("request body over {max} bytes"),
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(_) => {
                return Err(views::error(
                    StatusCode::BAD_REQUEST,
                    "cannot read the request body",
                ))
            }
        }
    }
}
