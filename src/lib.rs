//! Gatehouse: an API gateway on Cloudflare's Pingora.
//!
//! One TOML file is read into a validated [`config::Config`], from which a
//! [`snapshot::Snapshot`] (route table, clusters) is built once and swapped atomically.
//! The [`proxy::Gateway`] serves requests from the current snapshot:
//!
//! | Pingora phase | what happens | module |
//! |---|---|---|
//! | `early_request_filter` | counts the downstream connection | [`metrics`] |
//! | `request_filter` | request id, client IP, route match (404/405), authentication (401/403), rate limit (429) | [`request_id`], [`forwarding`], [`routing`], [`auth`], [`ratelimit`] |
//! | `upstream_peer` | deadline, concurrency cap, backend choice among healthy backends with closed breakers (503/504) | [`upstream`], [`proxy`] |
//! | `fail_to_connect`, `error_while_proxy` | outcome recording and retry decisions | [`proxy`], [`upstream`] |
//! | `upstream_response_filter` | outcome (5xx or success) for the breaker | [`upstream`] |
//! | `upstream_request_filter` | `strip_prefix`, identity headers, `X-Forwarded-*`, `X-Request-Id` | [`forwarding`], [`auth`] |
//! | `response_filter` | `X-Request-Id` echoed, rate-limit headers | [`proxy`], [`ratelimit`] |
//! | `fail_to_proxy` | 502/503/504 JSON answers | [`proxy::respond`] |
//! | `logging` | metrics and the access log | [`metrics`], [`access_log`] |
//!
//! Background services: active health checks ([`upstream::health`]), JWKS refresh
//! ([`auth::jwks`]), SIGHUP reload
//! ([`reload`]) and the access log writer. The admin listener ([`admin`]) is a separate
//! listening service.

#![warn(missing_docs)]

pub mod access_log;
pub mod admin;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod forwarding;
pub mod metrics;
pub mod proxy;
pub mod ratelimit;
pub mod reload;
pub mod request_id;
pub mod routing;
pub mod server;
pub mod signals;
pub mod snapshot;
pub mod upstream;
