//! The Redis store: one atomic Lua script per check ([`SCRIPT`]) evaluates the bucket and the
//! quotas together on the Redis server's clock (`TIME`), so instances with skewed clocks
//! agree. Each key's state is one hash (`{prefix}{route:key}`: the braces are a Cluster hash
//! tag) that expires on its own. Calls go over multiplexed async connections (a
//! `ConnectionManager`, or a cluster connection), as `EVALSHA` with `EVAL` on `NOSCRIPT`, each
//! bounded by `redis_timeout`. The connection is made by the background service, so Redis being
//! down at start never stops the gateway; failures are counted and logged once per incident.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use prometheus::IntCounter;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{ErrorKind, ServerErrorKind, Value};

use super::bucket::{Limited, Limits, Outcome};
use crate::config::Store;

/// The check script.
pub const SCRIPT: &str = include_str!("script.lua");

/// The calendar functions of [`SCRIPT`], for testing them against the Rust implementation.
pub fn calendar_lua() -> &'static str {
    SCRIPT.split("--CALENDAR-END").next().unwrap_or_default()
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// Why a shared-store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No connection has been made yet (the upkeep keeps trying).
    #[error("not connected")]
    NotConnected,
    /// The call took longer than `redis_timeout`.
    #[error("timed out")]
    Timeout,
    /// Redis refused the call or the connection failed.
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    /// The script answered something this version does not understand.
    #[error("unexpected script reply")]
    UnexpectedReply,
    /// The store is not a Redis store.
    #[error("not a Redis store")]
    NotRedis,
}

/// What the script answered.
#[derive(Debug, Clone, Copy)]
pub struct RemoteOutcome {
    /// The outcome, in the same terms as the local store's.
    pub outcome: Outcome,
    /// Day number on the Redis clock (for giving reservations back).
    pub day: u64,
    /// Month number on the Redis clock.
    pub month: u64,
}

/// A connection to the shared store.
pub struct RedisStore {
    target: Store,
    timeout: Duration,
    conn: ArcSwapOption<Conn>,
    sha: String,
    incident: AtomicBool,
    errors: IntCounter,
}

impl RedisStore {
    /// A store for `target` (not yet connected: see [`RedisStore::connect`]).
    pub fn new(target: Store, timeout: Duration, errors: IntCounter) -> Arc<Self> {
        Arc::new(RedisStore {
            target,
            timeout,
            conn: ArcSwapOption::empty(),
            sha: redis::Script::new(SCRIPT).get_hash().to_string(),
            incident: AtomicBool::new(false),
            errors,
        })
    }

    /// The configured target.
    pub fn target(&self) -> &Store {
        &self.target
    }

    /// Whether a connection exists.
    pub fn connected(&self) -> bool {
        self.conn.load().is_some()
    }

    /// Connects (background service). A `ConnectionManager` reconnects by itself afterwards.
    pub async fn connect(&self) -> Result<(), StoreError> {
        let connect_timeout = self.timeout.max(Duration::from_millis(500));
        let conn = match &self.target {
            Store::Redis(url) => {
                let client = redis::Client::open(url.as_str())?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(Some(self.timeout.max(Duration::from_millis(100))))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500));
                Conn::Single(ConnectionManager::new_with_config(client, config).await?)
            }
            Store::RedisCluster(nodes) => {
                let client = redis::cluster::ClusterClient::builder(nodes.clone())
                    .connection_timeout(connect_timeout)
                    .response_timeout(self.timeout.max(Duration::from_millis(100)))
                    .retries(1)
                    .build()?;
                Conn::Cluster(client.get_async_connection().await?)
            }
            Store::Local => return Err(StoreError::NotRedis),
        };
        self.conn.store(Some(Arc::new(conn)));
        log::info!("rate limit store: connected to Redis");
        Ok(())
    }

    /// Runs the check script for `key`: takes up to `want` tokens after giving `give_back`
    /// tokens (reserved on `back_day`/`back_month`) back.
    pub async fn take(
        &self,
        key: &str,
        limits: &Limits,
        want: u32,
        give_back: u32,
        back_day: u64,
        back_month: u64,
    ) -> Result<RemoteOutcome, StoreError> {
        let Some(conn) = self.conn.load_full() else {
            return Err(self.failed(StoreError::NotConnected));
        };
        let args = [
            limits.rps.to_string(),
            limits.burst.to_string(),
            limits.daily.unwrap_or(0).to_string(),
            limits.monthly.unwrap_or(0).to_string(),
            want.to_string(),
            give_back.to_string(),
            back_day.to_string(),
            back_month.to_string(),
        ];
        let call = async {
            match &*conn {
                Conn::Single(c) => self.eval(&mut c.clone(), key, &args).await,
                Conn::Cluster(c) => self.eval(&mut c.clone(), key, &args).await,
            }
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => match parse(&v) {
                Some(out) => {
                    self.recovered();
                    Ok(out)
                }
                None => Err(self.failed(StoreError::UnexpectedReply)),
            },
            Ok(Err(e)) => Err(self.failed(StoreError::Redis(e))),
            Err(_) => Err(self.failed(StoreError::Timeout)),
        }
    }

    async fn eval<C: ConnectionLike>(
        &self,
        conn: &mut C,
        key: &str,
        args: &[String],
    ) -> redis::RedisResult<Value> {
        let mut evalsha = redis::cmd("EVALSHA");
        evalsha.arg(&self.sha).arg(1).arg(key).arg(args);
        match evalsha.query_async(conn).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                let mut eval = redis::cmd("EVAL");
                eval.arg(SCRIPT).arg(1).arg(key).arg(args);
                eval.query_async(conn).await
            }
            other => other,
        }
    }

    /// Counts a failure (logging only the first of an incident) and hands it back.
    fn failed(&self, why: StoreError) -> StoreError {
        self.errors.inc();
        if !self.incident.swap(true, Ordering::Relaxed) {
            log::warn!(
                "rate limit store unavailable ({why}); applying on_store_error until it recovers"
            );
        }
        why
    }

    fn recovered(&self) {
        if self.incident.swap(false, Ordering::Relaxed) {
            log::info!("rate limit store recovered");
        }
    }
}

fn parse(v: &Value) -> Option<RemoteOutcome> {
    let Value::Array(items) = v else { return None };
    let int = |i: usize| match items.get(i)? {
        Value::Int(n) => Some(*n),
        _ => None,
    };
    let tokens = match items.get(1)? {
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse::<f64>().ok()?,
        _ => return None,
    };
    let limited_by = match int(4)? {
        1 => Some(Limited::Burst),
        2 => Some(Limited::Daily),
        3 => Some(Limited::Monthly),
        _ => None,
    };
    Some(RemoteOutcome {
        outcome: Outcome {
            granted: int(0)? as u32,
            tokens,
            day_count: int(2)? as u64,
            month_count: int(3)? as u64,
            limited_by,
            secs_to_day_end: int(5)? as u64,
            secs_to_month_end: int(6)? as u64,
        },
        day: int(7)? as u64,
        month: int(8)? as u64,
    })
}

/// The Redis key of a (route, client key) pair. Bytes outside a safe set are percent-encoded,
/// so a client-chosen key can neither break the hash tag nor collide with another.
pub fn key(prefix: &str, route: &str, client_key: &[u8]) -> String {
    let mut k = String::with_capacity(prefix.len() + route.len() + client_key.len() + 4);
    k.push_str(prefix);
    k.push('{');
    k.push_str(route);
    k.push(':');
    for &b in client_key {
        if b.is_ascii_alphanumeric() || b"._:@-".contains(&b) {
            k.push(b as char);
        } else {
            k.push_str(&format!("%{b:02X}"));
        }
    }
    k.push('}');
    k
}
