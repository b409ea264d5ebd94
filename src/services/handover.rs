//! Local rate-limit state across a graceful upgrade: the old process hands its counters to the
//! new one through a file beside the upgrade socket, and the new one merges them.
//!
//! - Keys: both processes hash with the seed kept in `UPGRADE_SOCK.ratelimit-seed` (created
//!   0600 at the first start, read by every later one), so a key means the same in both.
//! - The old process, from the moment it receives SIGQUIT (Pingora's
//!   `GracefulUpgradeTransferringFds` phase), writes its whole local store to
//!   `UPGRADE_SOCK.ratelimit-handover` (0600, written to a temporary file and renamed) every
//!   250 ms while it still accepts connections (every second during its drain), and a last
//!   time, marked final, after its last request has finished (when Pingora's `run` returns),
//!   so nothing it admitted is left out.
//! - The new process (started with `-u`) polls that file from its start (every 25 ms until the
//!   first hand-over, then every 100 ms) and merges each hand-over it has not seen: quota
//!   counts add what the old process admitted since the previous hand-over, token balances
//!   take the lower of the two. It stops at the final one (and removes the file), or after
//!   10 minutes.
//! - A missing, stale (written before this process started), foreign (another seed), oversized
//!   or corrupt hand-over is logged once and ignored, never fatal.
//!
//! The error accepted: while both processes admit (the 5 s in which the old one still accepts
//! connections, and its drain), each limits with what it knows. The new process learns what
//! the old one admitted within about 350 ms (250 ms between hand-overs, 100 ms between polls;
//! 1.1 s during the drain, when the old process only finishes what its connections already
//! sent); the old one never learns what the new one admitted. So a key can be admitted beyond
//! its limit by at most what the old process admits for it in those last moments, plus
//! what the new one admits in the few milliseconds between taking over the sockets and its
//! first merge. Nothing is lost: once the old process has exited, the new one has counted every
//! request the old one admitted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use pingora::server::{ExecutionPhase, ShutdownWatch};
use pingora::services::background::BackgroundService;
use tokio::sync::broadcast;

use crate::ratelimit::handover::{self, Header, Merged};
use crate::ratelimit::KeySeed;
use crate::snapshot::SnapshotStore;

/// How often the old process rewrites the hand-over while it still runs.
const WRITE_EVERY: Duration = Duration::from_millis(250);
/// How long the new process looks for hand-overs.
const LISTEN_FOR: Duration = Duration::from_secs(600);

/// The files beside the upgrade socket.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The key seed.
    pub seed: PathBuf,
    /// The hand-over.
    pub handover: PathBuf,
}

impl Paths {
    /// The files beside `upgrade_sock`.
    pub fn beside(upgrade_sock: &Path) -> Self {
        let with = |suffix: &str| {
            let mut name = upgrade_sock.as_os_str().to_owned();
            name.push(suffix);
            PathBuf::from(name)
        };
        Paths {
            seed: with(".ratelimit-seed"),
            handover: with(".ratelimit-handover"),
        }
    }
}

/// The key seed in `path`, created (0600) when missing or unreadable as a seed. Errors are
/// logged: the process then runs with a fresh seed, and an upgrade from it starts its
/// counters over.
pub fn load_or_create_seed(path: &Path) -> KeySeed {
    if let Ok(bytes) = std::fs::read(path) {
        if let Ok(seed) = KeySeed::try_from(bytes.as_slice()) {
            return seed;
        }
        log::warn!(
            "{}: not a rate-limit key seed ({} bytes); making a new one",
            path.display(),
            bytes.len()
        );
    }
    let mut seed = KeySeed::default();
    if let Err(e) = getrandom::fill(&mut seed) {
        log::warn!("cannot read the OS random generator for the rate-limit key seed: {e}");
    }
    if let Err(e) = write_private(path, &seed) {
        log::warn!(
            "cannot write the rate-limit key seed {}: {e}; local rate-limit counters will not survive an upgrade",
            path.display()
        );
    }
    seed
}

/// Writes `bytes` to `path` readable only by this user, atomically (temporary file + rename).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The old process's side: writes hand-overs of the current snapshot's local store.
pub struct Writer {
    store: SnapshotStore,
    path: PathBuf,
    seq: AtomicU64,
    upgrading: AtomicBool,
    serial: Mutex<()>,
}

impl Writer {
    /// A writer of `store`'s counters to `path`.
    pub fn new(store: SnapshotStore, path: PathBuf) -> Self {
        Writer {
            store,
            path,
            seq: AtomicU64::new(0),
            upgrading: AtomicBool::new(false),
            serial: Mutex::new(()),
        }
    }

    /// Whether a graceful upgrade (SIGQUIT) has started in this process.
    pub fn upgrading(&self) -> bool {
        self.upgrading.load(Ordering::Relaxed)
    }

    /// Writes one hand-over (`last`: the final one, after the last request).
    pub fn write(&self, last: bool) {
        let _serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        let snapshot = self.store.load();
        let shared = snapshot.ratelimit().shared();
        let entries = shared.local().export(shared.now_ms());
        let header = Header {
            pid: std::process::id(),
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            last,
            written_at_ms: unix_ms(SystemTime::now()),
            seed_fingerprint: shared.seed_fingerprint(),
        };
        match write_private(&self.path, &handover::encode(&header, &entries)) {
            Ok(()) if last => log::info!(
                "rate-limit hand-over: final state of {} keys written to {}",
                entries.len(),
                self.path.display()
            ),
            Ok(()) => log::debug!(
                "rate-limit hand-over #{}: {} keys",
                header.seq,
                entries.len()
            ),
            Err(e) => log::warn!(
                "cannot write the rate-limit hand-over {}: {e}",
                self.path.display()
            ),
        }
    }
}

/// The new process's side: merges the hand-overs of the process it replaces.
pub struct Reader {
    store: SnapshotStore,
    path: PathBuf,
    started_ms: u64,
    /// Size and modification time of the file last looked at.
    seen: Option<(u64, SystemTime)>,
    /// The writer merged from, its last sequence, and what was merged per key.
    writer: Option<(u32, u64)>,
    merged: HashMap<u64, Merged>,
    /// Whether anything was merged yet (polls faster until then).
    pub merged_any: bool,
    /// The final hand-over was merged.
    pub done: bool,
}

impl Reader {
    /// A reader of `path` into `store`, for a process that started at `started`.
    pub fn new(store: SnapshotStore, path: PathBuf, started: SystemTime) -> Self {
        Reader {
            store,
            path,
            started_ms: unix_ms(started),
            seen: None,
            writer: None,
            merged: HashMap::new(),
            merged_any: false,
            done: false,
        }
    }

    /// Looks at the file once; merges it if it is a new, valid hand-over.
    pub fn poll(&mut self) {
        let Ok(meta) = std::fs::metadata(&self.path) else {
            return;
        };
        let stamp = (meta.len(), meta.modified().unwrap_or(UNIX_EPOCH));
        if self.seen == Some(stamp) {
            return;
        }
        self.seen = Some(stamp);
        let Ok(bytes) = std::fs::read(&self.path) else {
            return;
        };
        let snapshot = self.store.load();
        let shared = snapshot.ratelimit().shared();
        let max_entries = snapshot.config().rate_limit.max_keys.saturating_mul(2) + 1024;
        let (header, entries) = match handover::decode(&bytes, max_entries) {
            Ok(h) => h,
            Err(e) => {
                log::warn!(
                    "ignoring the rate-limit hand-over {}: {e}",
                    self.path.display()
                );
                return;
            }
        };
        if header.pid == std::process::id() {
            return;
        }
        // Written before this process started: left over from an earlier upgrade.
        if header.written_at_ms + 2_000 < self.started_ms {
            log::warn!(
                "ignoring a stale rate-limit hand-over {} (written by pid {} before this process started)",
                self.path.display(),
                header.pid
            );
            return;
        }
        if header.seed_fingerprint != shared.seed_fingerprint() {
            log::warn!(
                "ignoring the rate-limit hand-over {} of pid {}: its key seed differs from this process's",
                self.path.display(),
                header.pid
            );
            return;
        }
        match self.writer {
            Some((pid, seq)) if pid == header.pid && header.seq <= seq => return,
            Some((pid, _)) if pid == header.pid => {}
            _ => self.merged.clear(),
        }
        self.writer = Some((header.pid, header.seq));
        let transit_ms = unix_ms(SystemTime::now()).saturating_sub(header.written_at_ms);
        let now_ms = shared.now_ms();
        let local = shared.local();
        for e in &entries {
            let before = self.merged.get(&e.key).copied().unwrap_or_default();
            let after = local.merge(e, transit_ms, now_ms, before);
            self.merged.insert(e.key, after);
        }
        self.merged_any = true;
        log::info!(
            "rate-limit hand-over #{} from pid {}: {} keys merged{}",
            header.seq,
            header.pid,
            entries.len(),
            if header.last { " (final)" } else { "" }
        );
        if header.last {
            self.done = true;
            self.merged = HashMap::new();
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Runs both sides: in a process started with `-u`, reads the hand-overs of the one it
/// replaces; in any process, writes hand-overs from SIGQUIT on.
pub struct HandoverService {
    writer: Arc<Writer>,
    reader: Mutex<Option<Reader>>,
    phases: Mutex<Option<broadcast::Receiver<ExecutionPhase>>>,
}

impl HandoverService {
    /// `reader` is `Some` in a process started with `-u`; `phases` is the server's execution
    /// phase feed.
    pub fn new(
        writer: Arc<Writer>,
        reader: Option<Reader>,
        phases: broadcast::Receiver<ExecutionPhase>,
    ) -> Self {
        HandoverService {
            writer,
            reader: Mutex::new(reader),
            phases: Mutex::new(Some(phases)),
        }
    }
}

#[async_trait]
impl BackgroundService for HandoverService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut reader = self.reader.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(mut phases) = self.phases.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let listen_until = Instant::now() + LISTEN_FOR;
        let mut shutting_down = false;
        let mut phases_open = true;
        loop {
            let reading = reader
                .as_ref()
                .is_some_and(|r| !r.done && Instant::now() < listen_until);
            let wait = match (&reader, self.writer.upgrading()) {
                // Once the old process stops accepting (its keep-alive connections close
                // after their next response), admissions are rare: the final hand-over after
                // the last request catches them, so a slower pace suffices.
                (_, true) if shutting_down => WRITE_EVERY * 4,
                (_, true) => WRITE_EVERY,
                (Some(r), false) if reading && !r.merged_any => Duration::from_millis(25),
                (Some(_), false) if reading => Duration::from_millis(100),
                _ => Duration::from_secs(3600),
            };
            tokio::select! {
                phase = phases.recv(), if phases_open => match phase {
                    Ok(ExecutionPhase::GracefulUpgradeTransferringFds) => {
                        self.writer.upgrading.store(true, Ordering::Relaxed);
                        reader = None;
                        let w = Arc::clone(&self.writer);
                        let _ = tokio::task::spawn_blocking(move || w.write(false)).await;
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => phases_open = false,
                },
                _ = shutdown.changed(), if !shutting_down => {
                    shutting_down = true;
                    // An upgrading process keeps handing over until its last request; any
                    // other stops here.
                    if !self.writer.upgrading() {
                        return;
                    }
                }
                _ = tokio::time::sleep(wait) => {
                    if self.writer.upgrading() {
                        let w = Arc::clone(&self.writer);
                        let _ = tokio::task::spawn_blocking(move || w.write(false)).await;
                    } else if let Some(r) = reader.as_mut().filter(|_| reading) {
                        r.poll();
                    }
                }
            }
        }
    }
}
