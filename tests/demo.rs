//! The demo (`scripts/demo.sh` with `conf/dev.toml`), run as a user would: the script starts,
//! and every command it prints is then run verbatim, in order, in one shell, and shows what
//! its comment promises (200, 401, 403, 404, 405, 429 with headers, 503, admin API, explain).
//!
//! The shipped `conf/dev.toml` listens on fixed ports; the test runs a copy with only the
//! addresses replaced by free loopback ports (the script reads addresses from the file).

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::free_port;

/// The demo script's process group, stopped (SIGTERM to the group) when dropped.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let _ = self.0.wait();
    }
}

/// The output of each printed command, in order, keyed by the command line.
struct Session(Vec<(String, String)>);

impl Session {
    /// The output of the only command that contains `needle`.
    fn output(&self, needle: &str) -> &str {
        let found: Vec<&(String, String)> =
            self.0.iter().filter(|(c, _)| c.contains(needle)).collect();
        assert_eq!(found.len(), 1, "commands containing {needle:?}: {found:?}");
        &found[0].1
    }

    /// The output of the `n`th (from 0) command that contains `needle`.
    fn nth(&self, needle: &str, n: usize) -> &str {
        &self
            .0
            .iter()
            .filter(|(c, _)| c.contains(needle))
            .nth(n)
            .unwrap_or_else(|| panic!("no command {n} containing {needle:?}"))
            .1
    }
}

#[test]
fn demo_script_prints_commands_that_work_verbatim() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("conf")).unwrap();
    let (gw, admin, b1, b2, dead) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let shipped = std::fs::read_to_string(format!("{root}/conf/dev.toml")).unwrap();
    let conf = shipped
        .replace("127.0.0.1:8080", &gw)
        .replace("127.0.0.1:9901", &admin)
        .replace("127.0.0.1:9001", &b1)
        .replace("127.0.0.1:9002", &b2)
        .replace("127.0.0.1:9009", &dead);
    let conf_path = dir.path().join("conf/dev.toml");
    std::fs::write(&conf_path, conf).unwrap();

    let mut child = Command::new("bash")
        .arg("scripts/demo.sh")
        .current_dir(root)
        .env("GATEHOUSE_BIN", env!("CARGO_BIN_EXE_gatehouse"))
        .env("GATEHOUSE_DEMO_CONF", &conf_path)
        .env_remove("GATEHOUSE_ADMIN_TOKEN")
        .env_remove("GATEHOUSE_DEMO_JWT_SECRET")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("bash");
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let demo = Demo(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
        s
    });

    // The script prints its commands once everything is up (a bound, not a timing assertion).
    let mut printed = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(90)) {
            Ok(line) => {
                let done = line.starts_with("Press Ctrl-C");
                printed.push(line);
                if done {
                    break;
                }
            }
            Err(_) => {
                drop(demo);
                panic!(
                    "the demo did not print its commands:\n{}\n{}",
                    printed.join("\n"),
                    errors.join().unwrap()
                );
            }
        }
    }
    let start = printed
        .iter()
        .position(|l| l.starts_with("Paste these"))
        .expect("the 'Paste these' line");
    let commands: Vec<String> = printed[start + 1..printed.len() - 1]
        .iter()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .cloned()
        .collect();
    assert!(commands.len() >= 25, "{commands:#?}");

    // Run them verbatim, in order, in one shell (exports and variables carry over), from the
    // directory the script names.
    let mut script = String::from("exec 2>&1\n");
    for (i, c) in commands.iter().enumerate() {
        script.push_str(&format!("printf '\\n@@@ {i}\\n'\n{c}\n"));
    }
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(root)
        .env_remove("GATEHOUSE_ADMIN_TOKEN")
        .env_remove("GATEHOUSE_DEMO_JWT_SECRET")
        .output()
        .expect("bash");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut outputs = vec![String::new(); commands.len()];
    let mut current = None;
    for line in text.lines() {
        if let Some(i) = line.strip_prefix("@@@ ") {
            current = i.parse::<usize>().ok();
        } else if let Some(i) = current {
            outputs[i].push_str(line);
            outputs[i].push('\n');
        }
    }
    let outputs = outputs.into_iter().map(|o| o.trim_end().to_string());
    let s = Session(commands.into_iter().zip(outputs).collect());
    let transcript: String = s.0.iter().map(|(c, o)| format!("$ {c}\n{o}")).collect();
    let check = |ok: bool, what: &str| assert!(ok, "{what}\n--- transcript ---\n{transcript}");

    // Routing and balancing.
    let users = s.output("/api/v1/users/7?expand=1");
    check(users.starts_with("HTTP/1.1 200"), "users: 200");
    check(
        users.contains(r#""path": "/users/7?expand=1""#),
        "users: prefix rewritten, query kept",
    );
    let balance = s.output("for i in 1 2 3 4 5 6 7 8; do curl -s http");
    check(
        balance.matches(r#""backend": "one""#).count() == 6
            && balance.matches(r#""backend": "two""#).count() == 2,
        "balance: 3:1 over 8 requests",
    );
    let sticky: Vec<&str> = s.output("X-User-Id: alice").lines().collect();
    check(
        sticky.len() == 3 && sticky.iter().all(|l| *l == sticky[0]),
        "sticky: the same backend three times",
    );
    let delete = s.output("-X DELETE");
    check(
        delete.starts_with("HTTP/1.1 405")
            && delete.to_ascii_lowercase().contains("allow: get, post"),
        "405 with Allow",
    );
    let nowhere = s.output("/nowhere");
    check(
        nowhere.starts_with("HTTP/1.1 404") && nowhere.contains("\"request_id\""),
        "404 JSON",
    );

    // Rate limiting: the loop shows 200s, then a 429 with its headers.
    let limited = s.output("/public/hello").to_ascii_lowercase();
    check(
        limited.matches("http/1.1 200").count() >= 3
            && limited.contains("http/1.1 429")
            && limited.contains("retry-after:")
            && limited.contains("x-ratelimit-remaining: 0")
            && limited.contains("x-ratelimit-tier: demo")
            && limited.contains("ratelimit-policy:"),
        "rate limit: 200 x3 then 429 with headers",
    );

    // JWT.
    let anonymous = s.output(&format!("curl -si http://{gw}/orders/42"));
    check(
        anonymous.starts_with("HTTP/1.1 401")
            && anonymous
                .to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
        "JWT: 401 without a token",
    );
    let no_scope = s.nth("Bearer $TOKEN", 0);
    check(
        no_scope.starts_with("HTTP/1.1 403") && no_scope.contains("insufficient_scope"),
        "JWT: 403 without the scope",
    );
    let scoped = s.nth("Bearer $TOKEN", 1).to_ascii_lowercase();
    check(
        scoped.starts_with("http/1.1 200")
            && scoped.contains(r#""x-consumer-id": "alice""#)
            && scoped.contains(r#""x-consumer-tier": "pro""#),
        "JWT: 200 with the scope, identity forwarded",
    );

    // API keys, revoked by the keys file alone (watch_config).
    let key = s.nth("X-API-Key: ghk_", 0).to_ascii_lowercase();
    check(
        key.starts_with("http/1.1 200")
            && key.contains(r#""x-consumer-id": "acme""#)
            && !key.contains("\"x-api-key\""),
        "API key: 200 as acme, key not forwarded",
    );
    check(
        s.output("X-API-Key: ghk_wrong").starts_with("HTTP/1.1 401"),
        "API key: 401 for a wrong key",
    );
    check(s.output("keys revoke").contains("revoked"), "keys revoke");
    check(
        s.output("sleep 2;").starts_with("HTTP/1.1 401"),
        "API key: 401 once revoked",
    );

    // Resilience.
    check(
        s.output("/flaky/x; done").trim() == "200 200 200 200 200 200 200 200",
        "flaky: every request answered 200 through retries",
    );
    check(
        s.output("gatehouse_circuit_state{")
            .lines()
            .any(|l| l.contains(&dead) && l.ends_with(" 1")),
        "flaky: the dead backend's circuit is open",
    );
    let drained = s
        .output(&format!("curl -si http://{gw}/flaky/x"))
        .to_ascii_lowercase();
    check(
        drained.starts_with("http/1.1 503") && drained.contains("retry-after:"),
        "flaky: 503 with Retry-After once the live backend is drained",
    );
    check(
        s.output("%{http_code}\\n").trim() == "200",
        "flaky: 200 again once enabled",
    );

    // Caching.
    let cached = s.output("/cached/item | grep -iE").to_ascii_lowercase();
    let marks: Vec<&str> = cached
        .lines()
        .filter(|l| l.starts_with("x-cache"))
        .collect();
    check(
        marks == ["x-cache: miss", "x-cache: hit"] && cached.contains("age: "),
        "cache: MISS, then HIT with Age",
    );
    check(
        s.output("/admin/cache/purge")
            .contains(r#""result":"purged""#),
        "cache purge",
    );
    check(
        s.output("grep -i '^x-cache'")
            .trim()
            .eq_ignore_ascii_case("x-cache: miss"),
        "cache: MISS after the purge",
    );

    // Operations.
    let upstreams =
        s.0.iter()
            .find(|(c, _)| c.ends_with("/admin/upstreams"))
            .map(|(_, o)| o.clone())
            .unwrap_or_default();
    check(
        upstreams.contains(&dead) && upstreams.contains("\"open\""),
        "admin upstreams: the dead backend, circuit open",
    );
    let config = s.output("/admin/config");
    check(
        config.contains(r#""token": "<redacted>""#)
            && config.contains(r#""secret": "<redacted>""#)
            && !config.contains("demo-secret")
            && !config.contains("demo-token"),
        "admin config: secrets redacted",
    );
    check(
        s.output("grep '^gatehouse_requests_total'")
            .contains(r#"gatehouse_requests_total{route="public",status="4xx",upstream="echo"}"#),
        "metrics",
    );
    check(
        s.output(" explain ").contains("chosen route: orders"),
        "explain",
    );
    check(
        s.output("tail -n 3").contains("\"request_id\""),
        "access log",
    );
    drop(demo);
}
