//! The shipped systemd unit: `systemd-analyze verify` accepts it, and it performs the upgrade
//! in the safe order (validate, start the new process, then SIGQUIT the old one).

use std::process::Command;

const UNIT: &str = include_str!("../systemd/gatehouse.service");

#[test]
fn unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    // verify checks that ExecStart binaries exist: point them at the binary under test.
    let unit = UNIT.replace("/usr/local/bin/gatehouse", env!("CARGO_BIN_EXE_gatehouse"));
    let path = dir.path().join("gatehouse.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (scripts/install-deps.sh installs systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("gatehouse.service:"),
        "warnings about the unit: {stderr}"
    );
}

fn directive(name: &str) -> Vec<&'static str> {
    UNIT.lines()
        .filter_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
        .collect()
}

#[test]
fn reload_validates_then_starts_the_new_process_then_quits_the_old() {
    let reload = directive("ExecReload");
    assert_eq!(reload.len(), 3);
    assert!(reload[0].contains("--test"));
    assert!(reload[1].contains("--daemon") && reload[1].contains("--upgrade"));
    assert_eq!(reload[2], "/bin/kill -QUIT $MAINPID");
    assert!(directive("ExecStartPre")[0].contains("--test"));
    assert_eq!(directive("Type"), ["forking"]);
    assert_eq!(directive("PIDFile"), ["/run/gatehouse/gatehouse.pid"]);
    assert_eq!(directive("RuntimeDirectory"), ["gatehouse"]);
}

#[test]
fn stop_timeout_exceeds_the_default_drain() {
    // Defaults: grace_period 30 s + graceful_shutdown_timeout 5 s + 5 s margin.
    let timeout: u64 = directive("TimeoutStopSec")[0].parse().unwrap();
    assert!(timeout > 30 + 5 + 5);
    for hardening in [
        "NoNewPrivileges",
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "AmbientCapabilities",
        "LimitNOFILE",
        "User",
    ] {
        assert_eq!(directive(hardening).len(), 1, "{hardening}");
    }
}
