//! Background services (the layer above the snapshot): the loops that keep live state fresh
//! while requests are served. Each is a Pingora `BackgroundService` started by
//! [`crate::server`] (so it runs in the serving process, after daemonising) and each works on
//! whatever the current snapshot holds, so a reload needs no new service. The work itself lives
//! in the domain modules; these only schedule it.
//!
//! | service | does | domain module |
//! |---|---|---|
//! | [`health`] | active health check rounds; adaptive limit factors | [`crate::upstream`] |
//! | [`incidents`] | ends quiet incidents (runs of refusals logged once) | [`crate::upstream::incidents`] |
//! | [`jwks`] | JWKS refresh | [`crate::auth::jwks`] |
//! | [`ratelimit`] | local key sweeps, Redis connection, lease returns | [`crate::ratelimit`] |
//! | [`access_log`] | writes queued access log lines | [`crate::access_log`] |
//! | [`reload`] | SIGHUP and admin reloads: new snapshot, swapped atomically | [`crate::snapshot`] |
//! | [`breakers`] | shares circuit breaker openings with the other instances through Redis | [`crate::upstream::shared`] |
//! | [`spans`] | exports sampled requests' spans over OTLP/HTTP | [`crate::trace`] |
//! | [`handover`] | local rate-limit counters handed to the new process of an upgrade | [`crate::ratelimit::handover`] |

pub mod access_log;
pub mod breakers;
pub mod handover;
pub mod health;
pub mod incidents;
pub mod jwks;
pub mod ratelimit;
pub mod reload;
pub mod spans;
