//! Zero-downtime upgrade, reproduced as the systemd unit performs it: validate with `-t`, start
//! the new process with `-d -u` (returns once it is ready and waiting for the sockets), then
//! SIGQUIT the old one, all under load. An upgrade with an invalid config fails cleanly.

mod common;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{client, json, Gatehouse, TestBackend, ADMIN_TOKEN};

fn body(fast: &TestBackend, slow: &TestBackend) -> String {
    format!(
        r#"
[upstreams.fast]
backends = [{{ addr = "{}" }}]
[upstreams.slow]
backends = [{{ addr = "{}" }}]
[[routes]]
name = "fast"
path_prefix = "/fast"
upstream = "fast"
[[routes]]
name = "slow"
path_prefix = "/slow"
upstream = "slow"
"#,
        fast.addr_str(),
        slow.addr_str()
    )
}

/// Kills the daemonised new process when the test ends, whatever happens.
struct Daemon(Option<u32>);
impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
        }
    }
}

fn read_pid(path: &std::path::Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn upgrade_under_load_loses_nothing() {
    let fast = TestBackend::start("fast");
    let slow = TestBackend::slow("slow", Duration::from_secs(3));
    let mut old = Gatehouse::builder()
        .admin(Some(ADMIN_TOKEN))
        .grace_period("5s")
        .env("GATEHOUSE_TEST_ADMIN_TOKEN", ADMIN_TOKEN)
        .start(&body(&fast, &slow));
    let old_pid = old.pid();
    let config = old.config_path();

    // Keep-alive clients with reqwest's ordinary behaviour (a request on a pooled connection the
    // server closed before reading it is retried), running until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut fast_clients = Vec::new();
    for _ in 0..6 {
        let (stop, ok, errors, url, c) = (
            stop.clone(),
            ok.clone(),
            errors.clone(),
            old.url("/fast"),
            client(),
        );
        fast_clients.push(tokio::spawn(async move {
            // Bounded: at most 60 000 requests per client.
            for _ in 0..60_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match c.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => errors
                        .lock()
                        .unwrap()
                        .push(format!("status {}", r.status())),
                    Err(e) => errors.lock().unwrap().push(format!("error {e:?}")),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Slow requests in flight on the old process when it is told to quit.
    let slow_started = Instant::now();
    let slow_requests: Vec<_> = (0..4)
        .map(|_| {
            let (url, c) = (old.url("/slow"), client());
            tokio::spawn(async move {
                let r = c.get(&url).send().await;
                (
                    r.map(|r| r.status().as_u16()).map_err(|e| format!("{e:?}")),
                    Instant::now(),
                )
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 1. validate, 2. start the new process, which returns once it waits for the sockets.
    let test = Command::new(Gatehouse::binary())
        .arg("-t")
        .arg("-c")
        .arg(&config)
        .status()
        .unwrap();
    assert!(test.success());
    let new_log = std::fs::File::create(old.dir().join("new.log")).unwrap();
    let started = Command::new(Gatehouse::binary())
        .args(["-d", "-u", "-c"])
        .arg(&config)
        .env("GATEHOUSE_TEST_ADMIN_TOKEN", ADMIN_TOKEN)
        .stdout(Stdio::null())
        .stderr(new_log)
        .status()
        .unwrap();
    let new_pid = read_pid(&old.dir().join("gatehouse.pid"));
    let _guard = Daemon(new_pid);
    assert!(
        started.success(),
        "new process failed: {}",
        std::fs::read_to_string(old.dir().join("new.log")).unwrap()
    );
    let new_pid = new_pid.expect("pid file of the new process");
    assert_ne!(new_pid, old_pid);

    // 3. SIGQUIT the old process; load continues until it has exited.
    old.signal("QUIT");
    let quit_at = Instant::now();
    let deadline = quit_at + Duration::from_secs(20);
    let old_status = loop {
        if let Some(status) = old.exited() {
            break status;
        }
        assert!(Instant::now() < deadline, "old process did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let drained_in = quit_at.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in fast_clients {
        t.await.unwrap();
    }

    for r in slow_requests {
        let (result, finished) = r.await.unwrap();
        assert_eq!(result, Ok(200), "in-flight slow request");
        assert!(
            finished - slow_started < Duration::from_secs(3 + 5),
            "slow request finished within the grace period"
        );
    }
    let errors = errors.lock().unwrap().clone();
    assert!(
        errors.is_empty(),
        "{} failures of {}: {:?}",
        errors.len(),
        ok.load(Ordering::Relaxed),
        &errors[..errors.len().min(10)]
    );
    assert!(
        ok.load(Ordering::Relaxed) > 500,
        "load ran: {}",
        ok.load(Ordering::Relaxed)
    );
    assert!(old_status.success(), "old process exit status {old_status}");
    assert!(
        drained_in >= Duration::from_secs(2),
        "the old process drained before exiting ({drained_in:?})"
    );

    // The new process owns both listeners now.
    let health = json(client().get(old.admin_url("/health")).send().await.unwrap()).await;
    assert_eq!(
        health["pid"], new_pid,
        "admin listener moved to the new process"
    );
    assert_eq!(
        client()
            .get(old.url("/fast"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upgrade_with_an_invalid_config_fails_and_the_old_process_keeps_serving() {
    let fast = TestBackend::start("fast");
    let slow = TestBackend::start("slow");
    let old = Gatehouse::builder()
        .admin(Some(ADMIN_TOKEN))
        .start(&body(&fast, &slow));
    let good = std::fs::read_to_string(old.config_path()).unwrap();
    old.write_raw_config(&good.replace("upstream = \"fast\"", "upstream = \"missing\""));

    let test = Command::new(Gatehouse::binary())
        .arg("-t")
        .arg("-c")
        .arg(old.config_path())
        .output()
        .unwrap();
    assert_eq!(test.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&test.stderr).contains("unknown upstream \"missing\""));
    // Even if an operator skips the check, the new process refuses before touching anything.
    let start = Command::new(Gatehouse::binary())
        .args(["-d", "-u", "-c"])
        .arg(old.config_path())
        .output()
        .unwrap();
    assert_eq!(start.status.code(), Some(1));
    assert!(
        !old.dir().join("gatehouse.pid").exists(),
        "no new daemon was started"
    );

    for _ in 0..5 {
        assert_eq!(
            client()
                .get(old.url("/fast"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let health = json(client().get(old.admin_url("/health")).send().await.unwrap()).await;
    assert_eq!(health["pid"], old.pid());
}
