//! JWKS key sets fetched over HTTP(S). A set is shared by every snapshot that uses the same
//! provider and URL, refreshed by a background service, and refetched on demand when a token
//! names an unknown `kid` (single flight, at most once per `min_refetch_interval`), so a token
//! signed with a freshly rotated key verifies the first time. A failed fetch keeps the last
//! good keys.
//!
//! When the endpoint is down at start, the set is empty: tokens are refused with 401
//! `unknown_key` (public routes are unaffected), `gatehouse_jwks_keys` is 0, the background
//! service retries every `min_refetch_interval`, and keys appear as soon as a fetch succeeds.
//! The refresh loop itself is [`crate::services::jwks`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey};
use prometheus::{IntCounter, IntGauge};

tokio::task_local! {
    /// Set by an on-demand refetch a request waited for, when the request is traced.
    static REFETCH: std::cell::Cell<Option<(Duration, bool)>>;
}

/// Runs `fut` (an authentication), and reports the on-demand JWKS refetch it waited for, if
/// any: how long it waited, and whether the key was found afterwards (for the trace).
pub async fn observe_refetch<F: std::future::Future>(
    fut: F,
) -> (F::Output, Option<(Duration, bool)>) {
    REFETCH
        .scope(std::cell::Cell::new(None), async {
            let out = fut.await;
            (out, REFETCH.with(|c| c.get()))
        })
        .await
}

fn report_refetch(took: Duration, found: bool) {
    let _ = REFETCH.try_with(|c| c.set(Some((took, found))));
}

/// How long a request waits for an on-demand refetch.
pub const REFETCH_WAIT: Duration = Duration::from_secs(2);
/// Budget of one background fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest accepted JWKS document.
const MAX_DOCUMENT: usize = 1024 * 1024;

/// A verification key with the algorithm its JWK pins, if any.
#[derive(Clone)]
pub struct JwkKey {
    /// The key.
    pub key: DecodingKey,
    /// The JWK's `alg`, when it names one.
    pub alg: Option<Algorithm>,
}

/// Keys by `kid`.
pub type KeyMap = HashMap<String, Arc<JwkKey>>;

/// Builds the key map of a JWKS document, skipping keys without `kid` or unusable ones.
pub fn key_map(set: &JwkSet) -> KeyMap {
    set.keys
        .iter()
        .filter_map(|jwk| {
            let kid = jwk.common.key_id.clone()?;
            let key = DecodingKey::from_jwk(jwk).ok()?;
            let alg = jwk
                .common
                .key_algorithm
                .and_then(|a| a.to_string().parse::<Algorithm>().ok());
            Some((kid, Arc::new(JwkKey { key, alg })))
        })
        .collect()
}

/// Why a JWKS fetch failed (the last good keys are kept).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The request could not be made or its body not read.
    #[error("request failed: {0}")]
    Request(#[from] reqwest::Error),
    /// The endpoint answered with a non-success status.
    #[error("status {0}")]
    Status(reqwest::StatusCode),
    /// The document exceeds the size limit.
    #[error("document larger than {MAX_DOCUMENT} bytes")]
    TooLarge,
    /// The body is not a JWKS document.
    #[error("not a JWKS document: {0}")]
    NotJwks(#[from] serde_json::Error),
}

/// Metric handles of one key set.
pub struct JwksMetrics {
    /// Keys currently held.
    pub keys: IntGauge,
    /// Successful fetches.
    pub fetch_ok: IntCounter,
    /// Failed fetches.
    pub fetch_failed: IntCounter,
    /// Unix time of the last successful fetch.
    pub last_success: IntGauge,
}

/// A JWKS endpoint's current keys and fetch state.
pub struct JwksSet {
    provider: String,
    url: String,
    refresh: Duration,
    min_refetch: Duration,
    keys: ArcSwap<KeyMap>,
    generation: AtomicU64,
    fetch_lock: tokio::sync::Mutex<()>,
    last_attempt: Mutex<Option<Instant>>,
    last_on_demand: Mutex<Option<Instant>>,
    last_success: Mutex<Option<Instant>>,
    client: OnceLock<reqwest::Client>,
    metrics: JwksMetrics,
}

impl JwksSet {
    /// An empty set for `url`; the first fetch happens in the background service.
    pub fn new(
        provider: &str,
        url: &str,
        refresh: Duration,
        min_refetch: Duration,
        metrics: JwksMetrics,
    ) -> Arc<Self> {
        Arc::new(JwksSet {
            provider: provider.to_string(),
            url: url.to_string(),
            refresh,
            min_refetch,
            keys: ArcSwap::from_pointee(KeyMap::new()),
            generation: AtomicU64::new(0),
            fetch_lock: tokio::sync::Mutex::new(()),
            last_attempt: Mutex::new(None),
            last_on_demand: Mutex::new(None),
            last_success: Mutex::new(None),
            client: OnceLock::new(),
            metrics,
        })
    }

    /// The endpoint.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The provider name.
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// `(refresh, min_refetch_interval)`.
    pub fn settings(&self) -> (Duration, Duration) {
        (self.refresh, self.min_refetch)
    }

    /// Changes whenever a fetch replaces the keys.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The key for `kid`, if currently known.
    pub fn get(&self, kid: &str) -> Option<Arc<JwkKey>> {
        self.keys.load().get(kid).cloned()
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.keys.load().len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key for `kid`, refetching once if it is unknown and the last attempt is older than
    /// `min_refetch_interval`. Concurrent callers share one fetch.
    pub async fn get_or_refetch(&self, kid: &str) -> Option<Arc<JwkKey>> {
        if let Some(k) = self.get(kid) {
            return Some(k);
        }
        let waited = Instant::now();
        let seen = self.generation.load(Ordering::Acquire);
        let _one_fetch = tokio::time::timeout(REFETCH_WAIT, self.fetch_lock.lock())
            .await
            .ok()?;
        if self.generation.load(Ordering::Acquire) != seen {
            // Someone else fetched while we waited.
            let key = self.get(kid);
            report_refetch(waited.elapsed(), key.is_some());
            return key;
        }
        // Only on-demand refetches count against min_refetch_interval: a key rotated in just
        // after a scheduled refresh must still be fetched.
        {
            let Ok(mut last) = self.last_on_demand.lock() else {
                return None;
            };
            if last.is_some_and(|t| t.elapsed() < self.min_refetch) {
                return None;
            }
            *last = Some(Instant::now());
        }
        log::info!("JWKS {}: unknown kid, refetching", self.url);
        let _ = tokio::time::timeout(REFETCH_WAIT, self.fetch_locked()).await;
        let key = self.get(kid);
        report_refetch(waited.elapsed(), key.is_some());
        key
    }

    fn attempted_within(&self, d: Duration) -> bool {
        self.last_attempt
            .lock()
            .map(|t| t.is_some_and(|t| t.elapsed() < d))
            .unwrap_or(false)
    }

    /// Fetches now unless a fetch is already running; keeps the old keys on failure.
    pub async fn fetch(&self) -> Option<Result<usize, FetchError>> {
        let _one_fetch = self.fetch_lock.try_lock().ok()?;
        Some(self.fetch_locked().await)
    }

    async fn fetch_locked(&self) -> Result<usize, FetchError> {
        if let Ok(mut t) = self.last_attempt.lock() {
            *t = Some(Instant::now());
        }
        let result = self.download().await;
        match &result {
            Ok(map) => {
                let n = map.len();
                self.keys.store(Arc::new(map.clone()));
                self.generation.fetch_add(1, Ordering::AcqRel);
                if let Ok(mut t) = self.last_success.lock() {
                    *t = Some(Instant::now());
                }
                self.metrics.keys.set(n as i64);
                self.metrics.fetch_ok.inc();
                let unix = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                self.metrics.last_success.set(unix as i64);
            }
            Err(e) => {
                self.metrics.fetch_failed.inc();
                log::warn!(
                    "JWKS {}: fetch failed, keeping {} known keys: {e}",
                    self.url,
                    self.len()
                );
            }
        }
        result.map(|m| m.len())
    }

    async fn download(&self) -> Result<KeyMap, FetchError> {
        let client = self.client.get_or_init(|| {
            reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                .no_proxy()
                .build()
                .unwrap_or_default()
        });
        let resp = client.get(&self.url).send().await?;
        if !resp.status().is_success() {
            return Err(FetchError::Status(resp.status()));
        }
        let body = resp.bytes().await?;
        if body.len() > MAX_DOCUMENT {
            return Err(FetchError::TooLarge);
        }
        let set: JwkSet = serde_json::from_slice(&body)?;
        Ok(key_map(&set))
    }

    /// Whether the background refresh should fetch now: every `refresh` after a success,
    /// every `min_refetch_interval` while failing.
    pub fn due(&self) -> bool {
        let last_success = self.last_success.lock().ok().and_then(|t| *t);
        match last_success {
            Some(t) if t.elapsed() < self.refresh => false,
            _ => !self.attempted_within(self.min_refetch.min(self.refresh)),
        }
    }
}
