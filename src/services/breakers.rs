//! Shared circuit breakers over Redis (see [`crate::upstream::shared`]): announces the shared
//! breakers that open here (a state key with the remaining time, and a pub/sub message), and
//! opens this instance's breakers when another instance announces one.
//!
//! On every (re)connection the instance syncs: it reads the state keys of every shared backend
//! (so an instance that starts, or comes back after Redis was down, learns what is open), and
//! announces its own open breakers again. While Redis is down each instance keeps its local
//! breakers (logged once, counted in `gatehouse_circuit_shared_errors_total`) and reconnects
//! every second; transitions received from peers are counted in
//! `gatehouse_circuit_peer_transitions_total{upstream,backend}` and logged.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::{IntCounter, IntCounterVec};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::snapshot::SnapshotStore;
use crate::upstream::breaker::CircuitState;
use crate::upstream::shared::{self, Opened};

/// Budget of one Redis operation here.
const REDIS_TIMEOUT: Duration = Duration::from_secs(1);

/// The sharing service (only when some upstream has `circuit_breaker.shared = true`).
pub struct SharedBreakerService {
    store: SnapshotStore,
    url: String,
    prefix: String,
    peer_transitions: IntCounterVec,
    errors: IntCounter,
    outbox: Mutex<Option<mpsc::Receiver<Opened>>>,
}

impl SharedBreakerService {
    /// The service for `config`, if it has shared breakers; installs the outbox.
    pub fn new(
        config: &Config,
        store: SnapshotStore,
        peer_transitions: IntCounterVec,
        errors: IntCounter,
    ) -> Option<Self> {
        let url = config
            .upstreams
            .iter()
            .filter_map(|u| u.circuit_breaker.as_ref())
            .find(|b| b.shared)?
            .redis_url
            .clone()?;
        let outbox = shared::install(1024)?;
        Some(SharedBreakerService {
            store,
            url,
            prefix: config.rate_limit.key_prefix.clone(),
            peer_transitions,
            errors,
            outbox: Mutex::new(Some(outbox)),
        })
    }

    /// Opens this instance's breaker as `m` says (not for our own announcements).
    fn apply(&self, m: &Opened) {
        if m.instance == shared::instance() {
            return;
        }
        let snapshot = self.store.load();
        let Some(cluster) = snapshot.clusters().iter().find(|c| c.name() == m.upstream) else {
            return;
        };
        let Some(i) = cluster
            .members()
            .iter()
            .position(|b| *b.addr_text == *m.backend)
        else {
            return;
        };
        if cluster.open_for_peer(i, m.remaining_ms, &m.instance, crate::clock::now_ms()) {
            self.peer_transitions
                .with_label_values(&[&m.upstream, &m.backend])
                .inc();
        }
    }

    /// Announces `m`: the state key, then the message.
    async fn announce(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
        m: &Opened,
    ) -> redis::RedisResult<()> {
        let payload = serde_json::to_string(m).unwrap_or_default();
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(shared::key(&self.prefix, &m.upstream, &m.backend))
            .arg(&m.instance)
            .arg("PX")
            .arg(m.remaining_ms.max(1))
            .ignore()
            .cmd("PUBLISH")
            .arg(shared::channel(&self.prefix))
            .arg(payload)
            .ignore();
        timed(pipe.query_async::<()>(conn)).await
    }

    /// After a (re)connection: learn what is open elsewhere, announce what is open here.
    async fn sync(&self, conn: &mut redis::aio::MultiplexedConnection) -> redis::RedisResult<()> {
        let snapshot = self.store.load();
        let now = crate::clock::now_ms();
        for cluster in snapshot.clusters() {
            if !cluster
                .spec()
                .circuit_breaker
                .as_ref()
                .is_some_and(|b| b.shared)
            {
                continue;
            };
            for m in cluster.members() {
                let key = shared::key(&self.prefix, cluster.name(), &m.addr_text);
                let (owner, left): (Option<String>, i64) = timed(
                    redis::pipe()
                        .cmd("GET")
                        .arg(&key)
                        .cmd("PTTL")
                        .arg(&key)
                        .query_async(conn),
                )
                .await?;
                let breaker = &m.state.breaker;
                if breaker.state() == CircuitState::Open {
                    let remaining = breaker.retry_after_ms(now);
                    if remaining > 0 && left < remaining as i64 {
                        let ours = Opened {
                            instance: shared::instance().to_string(),
                            upstream: cluster.name().to_string(),
                            backend: m.addr_text.to_string(),
                            remaining_ms: remaining,
                        };
                        self.announce(conn, &ours).await?;
                        continue;
                    }
                }
                if let Some(owner) = owner.filter(|_| left > 0) {
                    self.apply(&Opened {
                        instance: owner,
                        upstream: cluster.name().to_string(),
                        backend: m.addr_text.to_string(),
                        remaining_ms: left as u64,
                    });
                }
            }
        }
        Ok(())
    }
}

async fn timed<T>(
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    tokio::time::timeout(REDIS_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| Err(redis::RedisError::from((redis::ErrorKind::Io, "timed out"))))
}

#[async_trait]
impl BackgroundService for SharedBreakerService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut outbox) = self.outbox.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let client = match redis::Client::open(self.url.as_str()) {
            Ok(c) => c,
            Err(e) => {
                log::error!("shared circuit breakers: invalid Redis URL: {e}");
                return;
            }
        };
        let mut down = false;
        loop {
            let connected = async {
                let conn = timed(client.get_multiplexed_async_connection()).await?;
                let mut pubsub = timed(client.get_async_pubsub()).await?;
                timed(pubsub.subscribe(shared::channel(&self.prefix))).await?;
                Ok::<_, redis::RedisError>((conn, pubsub))
            }
            .await;
            let (mut conn, pubsub) = match connected {
                Ok(c) => c,
                Err(e) => {
                    self.errors.inc();
                    if !down {
                        down = true;
                        log::warn!(
                            "shared circuit breakers: Redis unavailable ({e}); each breaker is local until it returns"
                        );
                    }
                    // Opened meanwhile: nobody to tell (the sync after reconnecting does).
                    while outbox.try_recv().is_ok() {}
                    tokio::select! {
                        _ = shutdown.changed() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            if let Err(e) = self.sync(&mut conn).await {
                self.errors.inc();
                log::debug!("shared circuit breakers: sync failed: {e}");
                continue;
            }
            // `down` stays set until the next loss: it only says whether there was an outage.
            if down {
                log::info!("shared circuit breakers: Redis is back, breakers are shared again");
            }
            let mut messages = pubsub.into_on_message();
            let lost = loop {
                tokio::select! {
                    _ = shutdown.changed() => return,
                    msg = messages.next() => match msg {
                        Some(msg) => {
                            let payload: String = msg.get_payload().unwrap_or_default();
                            match serde_json::from_str::<Opened>(&payload) {
                                Ok(m) => self.apply(&m),
                                Err(_) => log::debug!("shared circuit breakers: ignoring a malformed message"),
                            }
                        }
                        None => break "the subscription ended".to_string(),
                    },
                    opened = outbox.recv() => {
                        let Some(m) = opened else { return };
                        if let Err(e) = self.announce(&mut conn, &m).await {
                            break e.to_string();
                        }
                    }
                }
            };
            self.errors.inc();
            down = true;
            log::warn!(
                "shared circuit breakers: Redis connection lost ({lost}); each breaker is local until it returns"
            );
        }
    }
}
