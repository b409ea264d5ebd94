//! Gatehouse: an API gateway on Cloudflare's Pingora.
//!
//! One TOML file is read into a validated [`config::Config`], from which a
//! [`snapshot::Snapshot`] (route table, clusters, each route's policy pipeline) is built once
//! and swapped atomically. The [`proxy::Gateway`] serves requests from the current snapshot and
//! only dispatches: each route's [`policy::Pipeline`] runs authentication, authorisation, rate
//! limiting, path rewriting and identity headers in a fixed order.
//!
//! Layers, each importing only from layers below it (checked by `tests/layers.rs`):
//!
//! | layer | modules |
//! |---|---|
//! | process primitives | [`clock`], [`signals`] |
//! | configuration | [`config`] |
//! | domain | [`bounded`], [`routing`], [`forwarding`], [`grpc`], [`hygiene`], [`tls`], [`request_id`], [`trace`], [`auth`], [`ratelimit`], [`upstream`], [`refusal`], [`policy`], [`cache`], [`access_log`] |
//! | metrics registry | [`metrics`] |
//! | snapshot | [`snapshot`] |
//! | background services | [`services`] |
//! | serving | [`proxy`], [`admin`] |
//! | process | [`server`], [`cli`] |
//!
//! | Pingora phase | what happens | module |
//! |---|---|---|
//! | `early_request_filter` | counts the downstream connection | [`metrics`] |
//! | `request_filter` | request id, client IP, route match (404/405), the pipeline's `on_request` (401/403/429/503) | [`request_id`], [`forwarding`], [`routing`], [`policy`] |
//! | `upstream_peer` | deadline, concurrency cap, backend choice among healthy backends with closed breakers (503/504) | [`upstream`], [`proxy`] |
//! | `fail_to_connect`, `error_while_proxy` | outcome recording and retry decisions | [`proxy`], [`upstream`] |
//! | `upstream_response_filter` | outcome (5xx or success) for the breaker | [`upstream`] |
//! | `request_cache_filter`, `cache_key_callback`, `cache_hit_filter`, `response_cache_filter`, `cache_vary_filter` | the route's response cache: key, purge records, what is stored, variants | [`cache`], [`proxy`] |
//! | `upstream_request_filter` | the pipeline's `on_upstream_request` (credentials hidden, `strip_prefix`, identity headers), `X-Forwarded-*`, `X-Request-Id` | [`policy`], [`forwarding`] |
//! | `response_filter` | `X-Request-Id` echoed, the pipeline's `on_response` (rate-limit headers), `X-Cache` | [`policy`], [`proxy`] |
//! | `response_body_filter` | the pipeline's `on_response_body` | [`policy`] |
//! | `fail_to_proxy` | 502/503/504 JSON answers | [`proxy::respond`] |
//! | `logging` | metrics, the pipeline's `on_log`, the access log | [`metrics`], [`access_log`] |

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod access_log;
pub mod admin;
pub mod auth;
pub mod bounded;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod config;
pub mod explain;
pub mod forwarding;
pub mod grpc;
pub mod hygiene;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod ratelimit;
pub mod refusal;
pub mod request_id;
pub mod routing;
pub mod server;
pub mod services;
pub mod signals;
pub mod snapshot;
pub mod tls;
pub mod trace;
pub mod upstream;
