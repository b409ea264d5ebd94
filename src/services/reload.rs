//! In-process reload: re-read the configuration file and, when it is valid, swap in a new
//! snapshot atomically (requests in flight keep the snapshot they started with). Triggered by
//! SIGHUP ([`SighupService`]) and `POST /admin/reload`. Settings that only a restart or upgrade
//! can change are reported as such rather than silently ignored.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::{self, Config, ConfigErrors};
use crate::metrics::Metrics;
use crate::snapshot::{Snapshot, SnapshotStore};

/// What a reload did.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// The new snapshot is live. Lists the changed settings that still need an upgrade.
    Applied {
        /// Keys whose new values take effect only after a restart or upgrade.
        needs_upgrade: Vec<&'static str>,
    },
    /// The file is invalid; the running snapshot is unchanged.
    Rejected(ConfigErrors),
}

/// The result of the last reload attempt, as the admin status shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LastReload {
    /// When it was attempted.
    #[serde(serialize_with = "unix_seconds")]
    pub at: std::time::SystemTime,
    /// `applied` or `rejected`.
    pub result: &'static str,
    /// Every problem of a rejected file (`FILE:LINE:COL: key: message`).
    pub errors: Vec<String>,
    /// Changed keys of an applied file that take effect only after an upgrade.
    pub needs_upgrade: Vec<&'static str>,
}

fn unix_seconds<S: serde::Serializer>(t: &std::time::SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    s.serialize_f64(secs)
}

/// Re-reads the configuration file into the snapshot store.
pub struct Reloader {
    path: PathBuf,
    store: SnapshotStore,
    metrics: Arc<Metrics>,
    /// The process-level settings the process started with.
    started_with: Config,
    /// Serialises reloads, and holds the last one's result.
    last: Mutex<Option<LastReload>>,
}

impl Reloader {
    /// A reloader for the file at `path`; `started_with` is the configuration the process was
    /// started with.
    pub fn new(
        path: PathBuf,
        store: SnapshotStore,
        metrics: Arc<Metrics>,
        started_with: Config,
    ) -> Self {
        Reloader {
            path,
            store,
            metrics,
            started_with,
            last: Mutex::new(None),
        }
    }

    /// The result of the last reload attempt since the process started, if any.
    pub fn last(&self) -> Option<LastReload> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reloads now. Concurrent calls are serialised.
    pub fn reload(&self) -> ReloadOutcome {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let outcome = self.reload_serialised();
        *last = Some(LastReload {
            at: std::time::SystemTime::now(),
            result: match outcome {
                ReloadOutcome::Applied { .. } => "applied",
                ReloadOutcome::Rejected(_) => "rejected",
            },
            errors: match &outcome {
                ReloadOutcome::Rejected(errors) => {
                    errors.0.iter().map(ToString::to_string).collect()
                }
                ReloadOutcome::Applied { .. } => Vec::new(),
            },
            needs_upgrade: match &outcome {
                ReloadOutcome::Applied { needs_upgrade } => needs_upgrade.clone(),
                ReloadOutcome::Rejected(_) => Vec::new(),
            },
        });
        outcome
    }

    fn reload_serialised(&self) -> ReloadOutcome {
        match config::load(&self.path) {
            Err(errors) => {
                self.metrics.config_reload(false);
                log::error!("reload rejected, keeping the running configuration:\n{errors}");
                ReloadOutcome::Rejected(errors)
            }
            Ok(new) => {
                for w in &new.warnings {
                    log::warn!("{w}");
                }
                let needs_upgrade = fixed_settings_changed(&self.started_with, &new);
                if !needs_upgrade.is_empty() {
                    log::warn!(
                        "reload: {} changed; these take effect only after an upgrade or restart",
                        needs_upgrade.join(", ")
                    );
                }
                let old = self.store.load();
                let snapshot = Snapshot::build(new, Some(&old), &self.metrics);
                self.store.store(snapshot);
                self.metrics.config_reload(true);
                log::info!("configuration reloaded from {}", self.path.display());
                ReloadOutcome::Applied { needs_upgrade }
            }
        }
    }
}

fn fixed_settings_changed(old: &Config, new: &Config) -> Vec<&'static str> {
    let (a, b) = (&old.server, &new.server);
    let mut changed = Vec::new();
    if a.listen != b.listen {
        changed.push("server.listen");
    }
    if a.threads != b.threads {
        changed.push("server.threads");
    }
    if a.pid_file != b.pid_file {
        changed.push("server.pid_file");
    }
    if a.upgrade_sock != b.upgrade_sock {
        changed.push("server.upgrade_sock");
    }
    if a.grace_period != b.grace_period {
        changed.push("server.grace_period");
    }
    if a.graceful_shutdown_timeout != b.graceful_shutdown_timeout {
        changed.push("server.graceful_shutdown_timeout");
    }
    let grpc_web = |c: &Config| c.routes.iter().any(|r| r.grpc_web);
    if !grpc_web(old) && grpc_web(new) {
        changed.push("routes.grpc_web (the gRPC-Web bridge is installed at start)");
    }
    if a.http2 != b.http2 {
        changed.push("server.http2");
    }
    let export = |c: &Config| {
        let t = &c.tracing;
        (
            t.otlp_endpoint.clone(),
            t.service_name.clone(),
            t.max_queue,
            t.export_timeout,
        )
    };
    let sharing = |c: &Config| {
        c.upstreams
            .iter()
            .filter_map(|u| u.circuit_breaker.as_ref())
            .find(|b| b.shared)
            .and_then(|b| b.redis_url.clone())
    };
    if sharing(old) != sharing(new) {
        // The sharing connection is made at start (per-upstream `shared` flags apply).
        changed.push("circuit_breaker.shared Redis (shared breakers on a new Redis)");
    }
    if export(old) != export(new) {
        // The exporter is built at start; sample_ratio applies on reload.
        changed.push("tracing (all but sample_ratio)");
    }
    if a.read_buffer != b.read_buffer {
        changed.push("server.read_buffer");
    }
    if old.cache != new.cache {
        // The storage, its eviction manager and the cache lock are built once, at start.
        changed.push("cache (max_size, max_object_size, lock_timeout)");
    }
    if a.limits.max_header_bytes != b.limits.max_header_bytes
        || a.limits.max_headers != b.limits.max_headers
    {
        // Also tied to the HTTP/2 header list size, which is fixed at listener start.
        changed.push("server.http2 (header list size from server.limits)");
    }
    let tls = |c: &Config| {
        c.server.tls.as_ref().map(|t| {
            (
                t.listen.clone(),
                t.min_version,
                t.alpn.clone(),
                t.client_auth.clone(),
                t.read_buffer,
            )
        })
    };
    match (tls(old), tls(new)) {
        (None, None) => {}
        (Some(_), None) | (None, Some(_)) => changed.push("server.tls"),
        (Some((la, va, aa, ca, ra)), Some((lb, vb, ab, cb, rb))) => {
            if ra != rb {
                changed.push("server.tls.read_buffer");
            }
            if la != lb {
                changed.push("server.tls.listen");
            }
            if va != vb {
                changed.push("server.tls.min_version");
            }
            if aa != ab {
                changed.push("server.tls.alpn");
            }
            if ca != cb {
                changed.push("server.tls.client_auth");
            }
        }
    }
    if old.admin.as_ref().map(|x| x.listen) != new.admin.as_ref().map(|x| x.listen) {
        changed.push("admin.listen");
    }
    if old.access_log != new.access_log {
        changed.push("access_log");
    }
    changed
}

/// Background service that performs a reload whenever SIGHUP was received.
pub struct SighupService {
    reloader: Arc<Reloader>,
}

impl SighupService {
    /// A service reloading through `reloader`.
    pub fn new(reloader: Arc<Reloader>) -> Self {
        SighupService { reloader }
    }
}

#[async_trait]
impl BackgroundService for SighupService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            if crate::signals::take_reload_request() {
                log::info!("SIGHUP received: reloading");
                let reloader = Arc::clone(&self.reloader);
                // Loading reads a file and may resolve names: keep it off the async workers.
                let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
            }
        }
    }
}

/// Background service behind `[server] watch_config = true`: reloads when the configuration
/// file, or a file it refers to (API keys files, JWKS files, TLS certificates and keys),
/// changes on disk. Files are polled (modification time, size, inode) every
/// [`WATCH_EVERY`]: that works the same for editors that rewrite in place, for atomic renames and
/// for symlink swaps (Kubernetes ConfigMaps), with no watcher limits; a change is applied once
/// it has been stable for one more poll (debounce), through the same path as SIGHUP, so an
/// invalid edit is logged and counted and changes nothing (and is not retried until the files
/// change again).
pub struct WatchService {
    reloader: Arc<Reloader>,
    store: SnapshotStore,
}

/// How often watched files are looked at.
pub const WATCH_EVERY: Duration = Duration::from_millis(500);

/// What the watched files look like: path, and (mtime, size, inode) when it exists.
type Fingerprint = Vec<(PathBuf, Option<(std::time::SystemTime, u64, u64)>)>;

impl WatchService {
    /// A watcher reloading through `reloader`, watching the files of what `store` holds.
    pub fn new(reloader: Arc<Reloader>, store: SnapshotStore) -> Self {
        WatchService { reloader, store }
    }

    fn fingerprint(&self, config: &Config) -> Fingerprint {
        use std::os::unix::fs::MetadataExt;
        let mut paths = vec![self.reloader.path.clone()];
        for p in &config.auth.providers {
            match &p.kind {
                config::ProviderKind::ApiKey(k) => paths.push(k.keys_file.clone()),
                config::ProviderKind::Jwt(j) => match &j.keys {
                    config::JwtKeys::JwksFile { path, .. }
                    | config::JwtKeys::PublicKey { path, .. } => paths.push(path.clone()),
                    _ => {}
                },
                config::ProviderKind::Introspection(_) => {}
            }
        }
        if let Some(tls) = &config.server.tls {
            for c in &tls.certificates {
                paths.push(c.cert.clone());
                paths.push(c.key.clone());
            }
        }
        paths
            .into_iter()
            .map(|p| {
                // Following symlinks: a swapped link target is a change.
                let meta = std::fs::metadata(&p)
                    .ok()
                    .and_then(|m| Some((m.modified().ok()?, m.len(), m.ino())));
                (p, meta)
            })
            .collect()
    }
}

#[async_trait]
impl BackgroundService for WatchService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(WATCH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut applied = self.fingerprint(self.store.load().config());
        let mut pending: Option<Fingerprint> = None;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let snapshot = self.store.load();
            if !snapshot.config().server.watch_config {
                pending = None;
                applied = self.fingerprint(snapshot.config());
                continue;
            }
            let now = self.fingerprint(snapshot.config());
            if now == applied {
                pending = None;
                continue;
            }
            if pending.as_ref() != Some(&now) {
                // Changed since the last look: wait one more poll for the writes to settle.
                pending = Some(now);
                continue;
            }
            log::info!("configuration files changed on disk: reloading");
            let reloader = Arc::clone(&self.reloader);
            let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
            // The reload may have changed which files are watched: look again from there.
            applied = self.fingerprint(self.store.load().config());
            pending = None;
        }
    }
}
