//! Zero-downtime upgrade, reproduced as the systemd unit performs it: validate with `-t`, start
//! the new process with `-d -u` (returns once it is ready and waiting for the sockets), then
//! SIGQUIT the old one, all under load. An upgrade with an invalid config fails cleanly.

mod common;
use std::process::Command;
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
    let (_guard, new_pid) = start_successor(&old);
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

/// Starts the new process of an upgrade of `old` (`-d -u`, as the systemd unit does), with
/// its log in `new.log`; returns it with its pid, killed when dropped.
fn start_successor(old: &Gatehouse) -> (common::Daemon, u32) {
    let new = common::start_daemon(
        &old.config_path(),
        true,
        &old.dir().join("gatehouse.pid"),
        &[
            ("GATEHOUSE_TEST_ADMIN_TOKEN", ADMIN_TOKEN),
            ("RUST_LOG", "info"),
        ],
        &old.dir().join("new.log"),
    );
    assert_ne!(new.pid, old.pid());
    let pid = new.pid;
    (new, pid)
}

/// Waits (at most 20 s) for `old` to exit after a signal.
async fn wait_exit(old: &mut Gatehouse) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = old.exited() {
            return status;
        }
        assert!(Instant::now() < deadline, "old process did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One keep-alive request on `conn`; returns (status, value of `header`).
fn raw_get(conn: &mut std::net::TcpStream, path: &str, header: &str) -> (u16, String) {
    use std::io::Write;
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes())
        .unwrap();
    let r = common::raw::read_response(conn).expect("a response");
    (r.status, r.header(header).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn local_rate_limits_survive_an_upgrade() {
    let backend = TestBackend::start("b");
    let addr = backend.addr_str();
    let route = |name: &str| {
        format!(
            "[[routes]]\nname = \"{name}\"\npath_prefix = \"/{name}\"\nupstream = \"b\"\nrate_limit = {{ key = \"client_ip\", default_tier = \"{name}\" }}\n"
        )
    };
    let body = format!(
        r#"
[rate_limit.tiers.quota]
rps = 100
burst = 100
daily_quota = 5
[rate_limit.tiers.bucket]
rps = 0.01
burst = 5
[rate_limit.tiers.drain]
rps = 100
burst = 100
daily_quota = 1000

[upstreams.b]
backends = [{{ addr = "{addr}" }}]
{}{}{}"#,
        route("quota"),
        route("bucket"),
        route("drain"),
    );
    let mut old = Gatehouse::builder()
        .admin(Some(ADMIN_TOKEN))
        .grace_period("2s")
        .env("GATEHOUSE_TEST_ADMIN_TOKEN", ADMIN_TOKEN)
        .start(&body);
    let http = client();
    let base = old.url("");
    let get = |path: &'static str| {
        let (http, url) = (
            http.clone(),
            format!("{}{path}", base.trim_end_matches('/')),
        );
        async move { http.get(url).send().await.unwrap() }
    };
    // Before: the daily quota used up, the bucket down to 2 of 5 tokens.
    for _ in 0..5 {
        assert_eq!(get("/quota").await.status(), 200);
    }
    let refused = get("/quota").await;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["x-ratelimit-daily-remaining"], "0");
    for _ in 0..3 {
        assert_eq!(get("/bucket").await.status(), 200);
    }
    let mut first = common::raw::connect(old.addr);
    let (status, daily) = raw_get(&mut first, "/drain", "x-ratelimit-daily-remaining");
    assert_eq!((status, daily.as_str()), (200, "999"));

    let (_guard, new_pid) = start_successor(&old);
    // A corrupt hand-over (as a crash mid-write of some other program could leave) is
    // ignored with a warning; the real one replaces it.
    let handover = old.dir().join("upgrade.sock.ratelimit-handover");
    std::fs::write(&handover, b"GHRLHO01 but then garbage").unwrap();
    // The new process polls the file every 100 ms: wait (bounded) until it has read (and
    // reported) the corrupt one, so the real one written at SIGQUIT does not replace it first.
    let log_path = old.dir().join("new.log");
    let logged = |needle: &str| {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .contains(needle)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !logged("ignoring the rate-limit hand-over") && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Connections the old process accepted before SIGQUIT: their requests are its to serve,
    // whenever they come (after SIGQUIT it answers each with Connection: close).
    let mut old_conns: Vec<_> = (0..10).map(|_| common::raw::connect(old.addr)).collect();
    tokio::time::sleep(Duration::from_millis(100)).await;

    old.signal("QUIT");
    // Admitted by the old process after SIGQUIT: 10 more.
    for (i, conn) in old_conns.iter_mut().enumerate() {
        let (status, daily) = raw_get(conn, "/drain", "x-ratelimit-daily-remaining");
        assert_eq!((status, daily), (200, (998 - i).to_string()));
    }
    drop(old_conns);
    assert!(wait_exit(&mut old).await.success());
    // The new process polls the hand-over file every 100 ms: the final one (written after
    // the old process's last request, just before it exits) is merged within that.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !logged("keys merged (final)") && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Now only the new process serves.
    let health = json(client().get(old.admin_url("/health")).send().await.unwrap()).await;
    assert_eq!(health["pid"], new_pid);
    let refused = get("/quota").await;
    assert_eq!(
        refused.status(),
        429,
        "the used-up daily quota stays used up"
    );
    assert_eq!(refused.headers()["x-ratelimit-daily-remaining"], "0");
    // 2 tokens (+ 0.01/s) left: one more request leaves 1, not the 4 of a fresh bucket.
    let r = get("/bucket").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ratelimit-remaining"], "1");
    assert_eq!(get("/bucket").await.status(), 200);
    assert_eq!(get("/bucket").await.status(), 429);
    // 1 before the upgrade + 10 during the old process's drain + this one.
    let r = get("/drain").await;
    assert_eq!(r.headers()["x-ratelimit-daily-remaining"], "988");

    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("ignoring the rate-limit hand-over"),
        "the corrupt file was reported:\n{log}"
    );
    assert!(log.contains("keys merged (final)"), "{log}");
    assert!(!handover.exists(), "the final hand-over was consumed");
}

#[tokio::test(flavor = "multi_thread")]
async fn batched_reservations_go_back_to_redis_at_shutdown() {
    let redis = common::redis::RedisServer::start();
    let backend = TestBackend::start("b");
    let mut gw = Gatehouse::start(&format!(
        r#"
[rate_limit]
store = "redis"
redis_url = "{}"
sync = "batched"
batch_size = 10
lease = "60s"

[rate_limit.tiers.t]
rps = 0.001
burst = 100

[upstreams.b]
backends = [{{ addr = "{}" }}]

[[routes]]
name = "api"
path_prefix = "/api"
upstream = "b"
rate_limit = {{ key = "header:X-Client", default_tier = "t" }}
"#,
        redis.url(),
        backend.addr_str()
    ));
    let tokens = || -> f64 {
        let v: Option<String> =
            redis.query(redis::cmd("HGET").arg("gatehouse:{api:h:k}").arg("tk"));
        v.and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
    };
    // The gateway connects to Redis in the background: retry until it has reserved.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = client()
            .get(gw.url("/api/x"))
            .header("x-client", "k")
            .send()
            .await
            .unwrap();
        let status = r.status();
        assert_eq!(status, 200, "{}", r.text().await.unwrap());
        if tokens() < 95.0 || Instant::now() > deadline {
            break;
        }
    }
    let reserved = tokens();
    assert!((89.0..91.0).contains(&reserved), "10 reserved: {reserved}");
    gw.signal("TERM");
    assert!(wait_exit(&mut gw).await.success());
    let after = tokens();
    // Every request spent one token; the other 9 of the reservation are back.
    assert!(
        after > reserved + 8.5,
        "unspent reservation given back: {reserved} -> {after}"
    );
}
