//! Starts the real `gatehouse` binary on free loopback ports and stops it when dropped.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running gatehouse process.
pub struct Gatehouse {
    /// Traffic listener.
    pub addr: SocketAddr,
    /// Admin listener, when the builder asked for one.
    pub admin: Option<SocketAddr>,
    child: Child,
    dir: tempfile::TempDir,
    header: String,
}

/// Options for starting gatehouse.
#[derive(Default)]
pub struct Builder {
    server_extra: String,
    admin_token: Option<String>,
    admin: bool,
    env: Vec<(String, String)>,
    access_log_file: bool,
    grace_period: Option<String>,
}

/// The admin token the builder puts in the environment.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

impl Builder {
    /// Extra lines for `[server]`.
    pub fn server(mut self, extra: &str) -> Self {
        self.server_extra = extra.to_string();
        self
    }
    /// Adds an admin listener on a free port, with [`ADMIN_TOKEN`] (or no token with `None`).
    pub fn admin(mut self, token: Option<&str>) -> Self {
        self.admin = true;
        self.admin_token = token.map(str::to_string);
        self
    }
    /// Sets `grace_period` (default "1s").
    pub fn grace_period(mut self, grace: &str) -> Self {
        self.grace_period = Some(grace.to_string());
        self
    }
    /// Runs gatehouse with its wall clock shifted by `offset` (libfaketime syntax, e.g.
    /// "+2d"); monotonic time is left alone.
    pub fn skewed_clock(self, offset: &str) -> Self {
        self.env(
            "LD_PRELOAD",
            "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
        )
        .env("FAKETIME", offset)
        .env("DONT_FAKE_MONOTONIC", "1")
    }
    /// Sets an environment variable for the process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }
    /// Writes the access log to `access.log` in the process's directory.
    pub fn access_log_file(mut self) -> Self {
        self.access_log_file = true;
        self
    }
    /// Starts gatehouse with `body` (upstreams and routes).
    pub fn start(self, body: &str) -> Gatehouse {
        Gatehouse::launch(self, body)
    }
}

/// A gatehouse started with `--daemon` (as the systemd unit starts it), killed when dropped.
pub struct Daemon {
    /// Its pid, from the pid file.
    pub pid: u32,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg(self.pid.to_string())
            .status();
    }
}

/// Runs `gatehouse -d [-u] -c config` with `env` (stderr into `log`) and returns the daemon,
/// whose pid `pid_file` holds once the command has returned. Panics, with the log, if the
/// command fails.
pub fn start_daemon(
    config: &std::path::Path,
    upgrade: bool,
    pid_file: &std::path::Path,
    env: &[(&str, &str)],
    log: &std::path::Path,
) -> Daemon {
    let mut cmd = Command::new(binary());
    cmd.arg("-d");
    if upgrade {
        cmd.arg("-u");
    }
    cmd.arg("-c")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let status = cmd.status().expect("run gatehouse -d");
    let pid = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|t| t.trim().parse().ok());
    // Kill whatever started, even if the command then failed.
    let daemon = pid.map(|pid| Daemon { pid });
    assert!(
        status.success(),
        "gatehouse -d failed ({status}): {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    daemon.expect("pid file of the daemon")
}

/// A loopback port that was free a moment ago.
///
/// Ports come from 20000-31999, below the kernel's ephemeral range (32768-60999), and each
/// at most once per test process: a port the kernel hands out for `bind(:0)` (the test
/// backends) or as a connection's source port can then never be the one a gateway is about
/// to bind, and two gateways of parallel tests never get the same one.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    // Start at a place that depends on the process, so that consecutive test binaries (and
    // the processes they left in TIME_WAIT) do not walk the same ports.
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % COUNT,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..COUNT {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::Relaxed) % COUNT) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}-{}", FIRST + COUNT - 1)
}

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_gatehouse")
}

impl Gatehouse {
    /// Options beyond the defaults.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Starts gatehouse with `body` (upstreams and routes) and a generated `[server]` section.
    pub fn start(body: &str) -> Self {
        Builder::default().start(body)
    }

    /// Like [`Gatehouse::start`], with extra lines for the `[server]` section.
    pub fn start_with_server(server_extra: &str, body: &str) -> Self {
        Builder::default().server(server_extra).start(body)
    }

    fn launch(b: Builder, body: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let mut header = format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\nthreads = 2\npid_file = \"{pid}\"\nupgrade_sock = \"{sock}\"\ngrace_period = \"{grace}\"\ngraceful_shutdown_timeout = \"1s\"\n{extra}\n",
            grace = b.grace_period.as_deref().unwrap_or("1s"),
            pid = dir.path().join("gatehouse.pid").display(),
            sock = dir.path().join("upgrade.sock").display(),
            extra = b.server_extra,
        );
        let admin = b
            .admin
            .then(|| SocketAddr::from(([127, 0, 0, 1], free_port())));
        if let Some(a) = admin {
            header.push_str(&format!(
                "[admin]\nlisten = \"{a}\"\ntoken_env = \"GATEHOUSE_TEST_ADMIN_TOKEN\"\n"
            ));
        }
        if b.access_log_file {
            header.push_str(&format!(
                "[access_log]\npath = \"{}\"\n",
                dir.path().join("access.log").display()
            ));
        }
        let config_path = dir.path().join("gatehouse.toml");
        std::fs::write(&config_path, format!("{header}\n{body}")).expect("write config");
        let log = std::fs::File::create(dir.path().join("stderr.log")).expect("log file");
        let mut cmd = Command::new(binary());
        cmd.arg("-c")
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .env_remove("GATEHOUSE_TEST_ADMIN_TOKEN")
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(token) = &b.admin_token {
            cmd.env("GATEHOUSE_TEST_ADMIN_TOKEN", token);
        }
        for (k, v) in &b.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn gatehouse");
        let mut g = Gatehouse {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            admin,
            child,
            dir,
            header,
        };
        g.wait_ready();
        g
    }

    /// Replaces the upstreams and routes in the configuration file (the `[server]`, `[admin]`
    /// and `[access_log]` sections stay); the running process sees it on reload.
    pub fn rewrite_config(&self, body: &str) {
        std::fs::write(self.config_path(), format!("{}\n{body}", self.header))
            .expect("rewrite config");
    }

    /// Overwrites the whole configuration file.
    pub fn write_raw_config(&self, text: &str) {
        std::fs::write(self.config_path(), text).expect("write config");
    }

    /// The configuration file's path.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("gatehouse.toml")
    }

    /// The process's directory (config, logs, pid file, upgrade socket).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. "HUP", "QUIT") to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// `http://ADMIN{path}`.
    pub fn admin_url(&self, path: &str) -> String {
        format!(
            "http://{}{}",
            self.admin.expect("started with an admin listener"),
            path
        )
    }

    /// The path of the gatehouse binary under test.
    pub fn binary() -> &'static str {
        binary()
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// What the access log file holds so far.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("gatehouse exited early ({status}):\n{}", self.stderr());
            }
            let up =
                |a: &SocketAddr| TcpStream::connect_timeout(a, Duration::from_millis(100)).is_ok();
            if up(&self.addr) && self.admin.as_ref().is_none_or(up) {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!(
            "gatehouse did not listen on {} in time:\n{}",
            self.addr,
            self.stderr()
        );
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }
}

impl Drop for Gatehouse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `gatehouse -t` on `config`; returns (exit code, stderr, the file's path as printed).
pub fn check_config(config: &str) -> (i32, String, String) {
    let mut file = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("tempfile");
    file.write_all(config.as_bytes()).expect("write");
    let path: PathBuf = file.path().to_path_buf();
    let out = Command::new(binary())
        .arg("-t")
        .arg("-c")
        .arg(&path)
        .output()
        .expect("run gatehouse -t");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        path.display().to_string(),
    )
}
