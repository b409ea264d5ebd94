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
    child: Child,
    dir: tempfile::TempDir,
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_gatehouse")
}

impl Gatehouse {
    /// Starts gatehouse with `body` (upstreams and routes) and a generated `[server]` section.
    pub fn start(body: &str) -> Self {
        Self::start_with_server("", body)
    }

    /// Like [`Gatehouse::start`], with extra lines for the `[server]` section.
    pub fn start_with_server(server_extra: &str, body: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let config = format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\nthreads = 2\npid_file = \"{pid}\"\nupgrade_sock = \"{sock}\"\ngrace_period = \"1s\"\ngraceful_shutdown_timeout = \"1s\"\n{server_extra}\n{body}",
            pid = dir.path().join("gatehouse.pid").display(),
            sock = dir.path().join("upgrade.sock").display(),
        );
        let config_path = dir.path().join("gatehouse.toml");
        std::fs::write(&config_path, config).expect("write config");
        let log = std::fs::File::create(dir.path().join("stderr.log")).expect("log file");
        let child = Command::new(binary())
            .arg("-c")
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn gatehouse");
        let mut g = Gatehouse {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
            dir,
        };
        g.wait_ready();
        g
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("gatehouse exited early ({status}):\n{}", self.stderr());
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(100)).is_ok() {
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
