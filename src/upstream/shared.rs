//! Circuit breakers shared across gateway instances (`circuit_breaker.shared = true`): the
//! messages and keys, and the outbox through which a breaker that opens here is announced
//! (the Redis side runs in [`crate::services::breakers`]).
//!
//! When a shared breaker opens in this instance, the transition is announced: a state key
//! `{prefix}breaker:{upstream}:{backend}` set for `open_for` (so that an instance that connects
//! later learns it), and a message on `{prefix}breaker-events`. Every other instance opens its
//! own breaker for the remaining time without paying for failures itself; half-open probing
//! stays local (each instance tries the backend again when its own breaker half-opens).

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// A breaker that opened (here or in another instance).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Opened {
    /// The instance where it opened.
    pub instance: String,
    /// Upstream name.
    pub upstream: String,
    /// Backend address, as configured.
    pub backend: String,
    /// How much longer it stays open, in milliseconds.
    pub remaining_ms: u64,
}

static OUTBOX: OnceLock<mpsc::Sender<Opened>> = OnceLock::new();
static INSTANCE: OnceLock<String> = OnceLock::new();

/// This process's instance id (random, 16 hex digits).
pub fn instance() -> &'static str {
    INSTANCE.get_or_init(|| hex::encode(rand::random::<[u8; 8]>()))
}

/// Installs the outbox (the sharing service does, once); returns its receiving end.
pub fn install(capacity: usize) -> Option<mpsc::Receiver<Opened>> {
    let (tx, rx) = mpsc::channel(capacity);
    OUTBOX.set(tx).ok().map(|()| rx)
}

/// Announces that a shared breaker opened here (dropped when the outbox is full or absent:
/// the others then pay for their own failures, as without sharing).
pub fn announce(upstream: &str, backend: &str, remaining_ms: u64) {
    if let Some(tx) = OUTBOX.get() {
        let _ = tx.try_send(Opened {
            instance: instance().to_string(),
            upstream: upstream.to_string(),
            backend: backend.to_string(),
            remaining_ms,
        });
    }
}

/// The pub/sub channel.
pub fn channel(prefix: &str) -> String {
    format!("{prefix}breaker-events")
}

/// The state key of one backend's breaker.
pub fn key(prefix: &str, upstream: &str, backend: &str) -> String {
    format!("{prefix}breaker:{upstream}:{backend}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let m = Opened {
            instance: instance().to_string(),
            upstream: "svc".into(),
            backend: "10.0.0.1:80".into(),
            remaining_ms: 29_000,
        };
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Opened>(&text).unwrap(), m);
        assert_eq!(instance().len(), 16);
        assert_eq!(
            key("gh:", "svc", "10.0.0.1:80"),
            "gh:breaker:svc:10.0.0.1:80"
        );
    }
}
