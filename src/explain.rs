//! `gatehouse explain`: how a configuration would treat one request, without starting a
//! server — every route in precedence order and why it did or did not match, the chosen
//! route with its policies (every key the route sets, as `/admin/config` renders them), and
//! its upstream with policy and backends. Routing is the gateway's own ([`Router::explain`]
//! walks the same table in the same order as the request path's lookup), after the same path
//! normalisation.

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use serde_json::{json, Value};

use crate::config::{Config, PathMatch, RouteSpec};
use crate::routing::{RequestView, Router, Verdict};

/// The request to explain.
pub struct Request {
    /// Method.
    pub method: Method,
    /// Absolute URL (`http://host/path?query`) or an origin-form path with `-H 'Host: …'`.
    pub url: String,
    /// Extra headers, `Name: value`.
    pub headers: Vec<String>,
}

/// The explanation as JSON (`--json`), or an error in the request given.
pub fn explain(config: &Config, req: &Request) -> Result<Value, String> {
    let uri: Uri = req
        .url
        .parse()
        .map_err(|e| format!("invalid URL \"{}\": {e}", req.url))?;
    let mut headers = HeaderMap::new();
    for h in &req.headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| format!("-H {h}: expected 'Name: value'"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("-H {h}: invalid header name"))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| format!("-H {h}: invalid header value"))?;
        headers.append(name, value);
    }
    let host = headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| uri.authority().map(|a| a.as_str().to_string()));
    let limits = &config.server.limits;
    let raw_path = uri.path();
    let path = match crate::hygiene::path::normalize(
        raw_path,
        limits.merge_slashes,
        limits.encoded_slash,
    ) {
        Ok(Some(p)) => p,
        Ok(None) => raw_path.to_string(),
        Err(_) => {
            return Ok(json!({
                "request": { "method": req.method.as_str(), "host": host, "path": raw_path },
                "refused": "400: the path holds an encoded / or \\ ([server.limits] encoded_slash = \"reject\")",
            }))
        }
    };
    let router = Router::new(&config.routes);
    let view = RequestView {
        method: &req.method,
        host: host.as_deref(),
        path: &path,
        headers: &headers,
    };
    let verdicts = router.explain(&view);
    let considered: Vec<Value> = verdicts
        .iter()
        .map(|(id, verdict)| {
            let route = config.route(*id);
            json!({
                "route": route.name,
                "match": matcher(route),
                "priority": route.priority,
                "result": describe(route, *verdict),
            })
        })
        .collect();
    let chosen = verdicts
        .iter()
        .find(|(_, v)| *v == Verdict::Matches)
        .map(|(id, _)| config.route(*id));
    let outcome = match chosen {
        Some(route) => {
            let upstream = config.upstream(route.upstream.id);
            let mut policies = serde_json::to_value(route).unwrap_or(Value::Null);
            if let Value::Object(map) = &mut policies {
                // What matched is listed above; what remains is what the route does.
                for key in [
                    "name",
                    "host",
                    "path_exact",
                    "path_prefix",
                    "path_regex",
                    "methods",
                    "headers",
                    "priority",
                    "upstream",
                ] {
                    map.remove(key);
                }
                map.retain(|_, v| !is_unset(v));
            }
            // A rate-limited route: the tiers a client may be in, with their limits.
            if route.rate_limit.is_some() {
                if let Value::Object(map) = &mut policies {
                    map.insert(
                        "rate_limit_tiers".into(),
                        serde_json::to_value(&config.rate_limit.tiers).unwrap_or(Value::Null),
                    );
                }
            }
            let order: Vec<String> = policies
                .as_object()
                .map(|p| ordered(p).into_iter().map(str::to_string).collect())
                .unwrap_or_default();
            json!({
                "route": route.name,
                "policy_order": order,
                "policies": policies,
                "upstream": serde_json::to_value(upstream).unwrap_or(Value::Null),
            })
        }
        None if verdicts.iter().any(|(_, v)| *v == Verdict::Method) => {
            json!({ "refused": "405: a route matches everything but the method" })
        }
        None => json!({ "refused": "404: no route matches" }),
    };
    let mut out = json!({
        "request": { "method": req.method.as_str(), "host": host, "path": path },
        "routes": considered,
    });
    if let (Value::Object(o), Value::Object(extra)) = (&mut out, outcome) {
        o.extend(extra);
    }
    Ok(out)
}

/// The order in which a request meets a route's policies (the pipeline's order): what is set
/// is listed in this order, then anything else the route sets.
const POLICY_ORDER: &[&str] = &[
    "cors",
    "max_body",
    "auth",
    "hide_credentials",
    "require_roles",
    "require_scopes",
    "rate_limit",
    "rate_limit_tiers",
    "adaptive_limit",
    "cache",
    "request_headers",
    "request_body",
    "strip_prefix",
    "sticky",
    "timeout",
    "response_headers",
    "response_body",
    "websocket",
    "websocket_idle_timeout",
];

/// The keys of `policies` in the order a request meets them.
fn ordered(policies: &serde_json::Map<String, Value>) -> Vec<&str> {
    let mut keys: Vec<&str> = POLICY_ORDER
        .iter()
        .copied()
        .filter(|k| policies.contains_key(*k))
        .collect();
    keys.extend(
        policies
            .keys()
            .map(String::as_str)
            .filter(|k| !POLICY_ORDER.contains(k)),
    );
    keys
}

fn is_unset(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

fn matcher(route: &RouteSpec) -> String {
    let mut m = match &route.path {
        PathMatch::Exact(p) => format!("path = {p}"),
        PathMatch::Prefix(p) => format!("path prefix {p}"),
        PathMatch::Regex(r) => format!("path regex {}", r.as_str()),
    };
    if let Some(h) = &route.host {
        m.push_str(&format!(
            ", host {}",
            serde_json::to_value(h)
                .unwrap_or_default()
                .as_str()
                .unwrap_or("?")
        ));
    }
    if let Some(methods) = &route.methods {
        let names: Vec<&str> = methods.iter().map(Method::as_str).collect();
        m.push_str(&format!(", methods {}", names.join("/")));
    }
    for (name, value) in &route.headers {
        m.push_str(&format!(
            ", header {name}: {}",
            value.to_str().unwrap_or("?")
        ));
    }
    m
}

fn describe(route: &RouteSpec, verdict: Verdict) -> String {
    match verdict {
        Verdict::Matches => "matches: chosen".to_string(),
        Verdict::Path => "path does not match".to_string(),
        Verdict::Host => "host does not match".to_string(),
        Verdict::Header(i) => {
            let (name, value) = &route.headers[i];
            format!(
                "header {name}: {} absent or different",
                value.to_str().unwrap_or("?")
            )
        }
        Verdict::Method => "everything but the method matches".to_string(),
        Verdict::NotReached => "not reached (an earlier route matched)".to_string(),
    }
}

/// The explanation for people.
pub fn render_text(v: &Value) -> String {
    let mut out = String::new();
    let req = &v["request"];
    out.push_str(&format!(
        "{} {} (host {})\n",
        req["method"].as_str().unwrap_or("?"),
        req["path"].as_str().unwrap_or("?"),
        req["host"].as_str().unwrap_or("none")
    ));
    if let Some(routes) = v["routes"].as_array() {
        out.push_str("routes, in precedence order:\n");
        for (i, r) in routes.iter().enumerate() {
            out.push_str(&format!(
                "  {:>2}. {} ({}, priority {}): {}\n",
                i + 1,
                r["route"].as_str().unwrap_or("?"),
                r["match"].as_str().unwrap_or("?"),
                r["priority"],
                r["result"].as_str().unwrap_or("?")
            ));
        }
    }
    if let Some(refused) = v["refused"].as_str() {
        out.push_str(&format!("answer: {refused}\n"));
        return out;
    }
    out.push_str(&format!(
        "chosen route: {}\n",
        v["route"].as_str().unwrap_or("?")
    ));
    if let Some(policies) = v["policies"].as_object() {
        out.push_str("  policies, in the order a request meets them:\n");
        for key in ordered(policies) {
            out.push_str(&format!("    {key}: {}\n", policies[key]));
        }
    }
    let u = &v["upstream"];
    out.push_str(&format!(
        "upstream: {} ({}, {})\n",
        u["name"].as_str().unwrap_or("?"),
        u["balance"]
            .as_str()
            .map_or_else(|| u["balance"].to_string(), str::to_string),
        u["protocol"].as_str().unwrap_or("http1")
    ));
    if let Some(backends) = u["backends"].as_array() {
        for b in backends {
            out.push_str(&format!(
                "  backend {} (weight {})\n",
                b["addr"].as_str().unwrap_or("?"),
                b["weight"]
            ));
        }
    }
    for key in [
        "health_check",
        "circuit_breaker",
        "retry",
        "max_inflight",
        "timeouts",
    ] {
        if !is_unset(&u[key]) && u[key] != json!(0) {
            out.push_str(&format!("  {key}: {}\n", u[key]));
        }
    }
    out
}
