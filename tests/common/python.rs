//! Real third-party peers written in Python (grpcio, websockets), run as child processes:
//! servers print `PORT <n>` when listening and run until dropped; clients print one JSON line.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// The path of a script in `tests/tools`.
pub fn tool(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/tools")
        .join(name)
}

/// A Python server process, killed when dropped.
pub struct PyServer {
    child: Child,
    /// The loopback port it listens on.
    pub port: u16,
}

impl PyServer {
    /// Runs `tests/tools/{script}` with `args` and waits for its `PORT <n>` line.
    pub fn start(script: &str, args: &[&str]) -> Self {
        let mut child = Command::new("python3")
            .arg("-u")
            .arg(tool(script))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let port = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(p) = line.strip_prefix("PORT ") {
                        break p.trim().parse().expect("port");
                    }
                }
                _ => {
                    let _ = child.kill();
                    panic!("{script} {args:?} did not start");
                }
            }
        };
        // Keep draining its stdout so that it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        PyServer { child, port }
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops it now.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `tests/tools/{script}` with `args` to completion and parses its last stdout line.
pub fn run_json(script: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new("python3")
        .arg(tool(script))
        .args(args)
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| {
        panic!(
            "{script} {args:?}: {e}: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}
