//! `POST /admin/cache/purge` with `{"route": "NAME", "path_prefix": "/x"}`: every response
//! the route cached for a path under the prefix (`/x`, `/x/…`; all of the route without
//! `path_prefix`), in every `Vary` variant and for every consumer, is refetched from the
//! upstream the next time it is asked for (see [`crate::cache::purge`]).

use http::{Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::views;
use crate::cache::Cache;
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;

/// Largest request body accepted.
pub const MAX_BODY: usize = 4096;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Purge {
    route: String,
    #[serde(default = "root")]
    path_prefix: String,
}

fn root() -> String {
    "/".to_string()
}

/// Handles one purge request with body `body`.
pub fn purge(
    snapshot: &Snapshot,
    cache: &Cache,
    metrics: &Metrics,
    body: &[u8],
) -> Response<Vec<u8>> {
    let request: Purge = match serde_json::from_slice(body) {
        Ok(p) => p,
        Err(e) => {
            return views::error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "expected a JSON body {{\"route\": \"NAME\", \"path_prefix\": \"/path\"}}: {e}"
                ),
            )
        }
    };
    if !request.path_prefix.starts_with('/') {
        return views::error(StatusCode::BAD_REQUEST, "path_prefix must start with /");
    }
    let Some((id, _)) = snapshot
        .config()
        .route_ids()
        .find(|(_, r)| r.name == request.route)
    else {
        return views::error(
            StatusCode::NOT_FOUND,
            &format!("no route named \"{}\"", request.route),
        );
    };
    let Some(caching) = snapshot.caching(id) else {
        return views::error(
            StatusCode::CONFLICT,
            &format!("route \"{}\" does not cache responses", request.route),
        );
    };
    let at = cache.purges().add(
        &request.route,
        &request.path_prefix,
        caching.policy.longest_life(),
    );
    metrics.cache_purge(&request.route);
    log::info!(
        "cache purge: route {} under {}",
        request.route,
        request.path_prefix
    );
    views::json(
        StatusCode::OK,
        json!({
            "result": "purged",
            "route": request.route,
            "path_prefix": request.path_prefix,
            "purged_at": humantime::format_rfc3339_millis(at).to_string(),
        }),
    )
}
