//! The effective configuration as JSON, for `GET /admin/config`. Secrets are redacted; only
//! environment variable names are shown.

use serde_json::{json, Value};

use super::{Balance, Config, HashKey, HealthCheckKind, HostMatch, PathMatch};

/// Renders `config` with secrets redacted.
pub fn to_json(config: &Config) -> Value {
    let s = &config.server;
    json!({
        "source": config.source.display().to_string(),
        "server": {
            "listen": s.listen.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "threads": s.threads,
            "pid_file": s.pid_file.display().to_string(),
            "upgrade_sock": s.upgrade_sock.display().to_string(),
            "grace_period": humantime::format_duration(s.grace_period).to_string(),
            "graceful_shutdown_timeout": humantime::format_duration(s.graceful_shutdown_timeout).to_string(),
            "trusted_proxies": s.trusted_proxies.iter().map(ToString::to_string).collect::<Vec<_>>(),
        },
        "admin": config.admin.as_ref().map(|a| json!({
            "listen": a.listen.to_string(),
            "token_env": a.token_env,
            "token": a.token.as_ref().map(|_| "<redacted>"),
        })),
        "access_log": {
            "enabled": config.access_log.enabled,
            "path": config.access_log.path.as_ref().map(|p| p.display().to_string()),
            "include_query": config.access_log.include_query,
        },
        "upstreams": config.upstreams.iter().map(|u| {
            let (balance, hash_key) = match &u.balance {
                Balance::RoundRobin => ("round_robin", None),
                Balance::LeastConn => ("least_conn", None),
                Balance::ConsistentHash(k) => ("consistent_hash", Some(match k {
                    HashKey::Header(h) => format!("header:{h}"),
                    HashKey::Cookie(c) => format!("cookie:{c}"),
                    HashKey::ClientIp => "client_ip".to_string(),
                    HashKey::Path => "path".to_string(),
                })),
            };
            json!({
                "name": u.name,
                "balance": balance,
                "hash_key": hash_key,
                "backends": u.backends.iter().map(|b| json!({"addr": b.addr.to_string(), "weight": b.weight})).collect::<Vec<_>>(),
                "connect_timeout": humantime::format_duration(u.timeouts.connect).to_string(),
                "read_timeout": humantime::format_duration(u.timeouts.read).to_string(),
                "write_timeout": humantime::format_duration(u.timeouts.write).to_string(),
                "idle_timeout": humantime::format_duration(u.timeouts.idle).to_string(),
                "health_check": u.health_check.as_ref().map(|h| {
                    let (kind, path, host) = match &h.kind {
                        HealthCheckKind::Http { path, host } => ("http", Some(path.clone()), Some(host.clone())),
                        HealthCheckKind::Tcp => ("tcp", None, None),
                    };
                    json!({
                        "type": kind,
                        "path": path,
                        "host": host,
                        "interval": humantime::format_duration(h.interval).to_string(),
                        "timeout": humantime::format_duration(h.timeout).to_string(),
                        "healthy_threshold": h.healthy_threshold,
                        "unhealthy_threshold": h.unhealthy_threshold,
                    })
                }),
            })
        }).collect::<Vec<_>>(),
        "routes": config.routes.iter().map(|r| {
            let (kind, path) = match &r.path {
                PathMatch::Exact(p) => ("path_exact", p.clone()),
                PathMatch::Prefix(p) => ("path_prefix", p.clone()),
                PathMatch::Regex(re) => ("path_regex", re.as_str().to_string()),
            };
            json!({
                "name": r.name,
                "host": r.host.as_ref().map(|h| match h {
                    HostMatch::Exact(h) => h.clone(),
                    HostMatch::Wildcard(suffix) => format!("*{suffix}"),
                }),
                kind: path,
                "methods": r.methods.as_ref().map(|m| m.iter().map(|m| m.as_str().to_string()).collect::<Vec<_>>()),
                "headers": r.headers.iter().map(|(k, v)| (k.as_str().to_string(), Value::from(v.to_str().unwrap_or("")))).collect::<serde_json::Map<_, _>>(),
                "upstream": r.upstream,
                "strip_prefix": r.strip_prefix,
                "priority": r.priority,
            })
        }).collect::<Vec<_>>(),
    })
}
