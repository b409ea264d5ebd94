//! WebSockets through the real binary with the Python `websockets` client and server
//! (`tests/tools/ws_peer.py`): echo, routes that refuse upgrades, the connection metrics,
//! sticky sessions by cookie across reconnects, the idle timeout that replaces the per-read
//! timeouts, and a graceful upgrade (SIGQUIT) under an open WebSocket: the client and the
//! upstream each get a close frame 1001 from the old process, and a reconnect reaches the new
//! one.

mod common;

use std::time::{Duration, Instant};

use common::python::{run_json, PyServer};
use common::{metric, metric_reaching, Gatehouse, ADMIN_TOKEN};

fn ws_url(gw: &Gatehouse, path: &str) -> String {
    format!("ws://{}{path}", gw.addr)
}

fn client(url: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["client", url];
    args.extend_from_slice(extra);
    run_json("ws_peer.py", &args)
}

fn upstream(name: &str, servers: &[&PyServer], extra: &str) -> String {
    let backends: Vec<String> = servers
        .iter()
        .map(|s| format!("{{ addr = \"{}\" }}", s.addr()))
        .collect();
    format!(
        "[upstreams.{name}]\nbackends = [{}]\n{extra}\n",
        backends.join(", ")
    )
}

fn route(name: &str, prefix: &str, upstream: &str, extra: &str) -> String {
    format!(
        "[[routes]]\nname = \"{name}\"\npath_prefix = \"{prefix}\"\nupstream = \"{upstream}\"\n{extra}\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn echo_metrics_and_routes_that_refuse_upgrades() {
    let echo = PyServer::start("ws_peer.py", &["server", "--name", "e"]);
    let body = format!(
        "{}{}{}",
        upstream("ws", &[&echo], ""),
        route("chat", "/chat", "ws", ""),
        route("no_ws", "/plain", "ws", "websocket = false"),
    );
    let gw = Gatehouse::builder().admin(Some(ADMIN_TOKEN)).start(&body);

    let r = client(&ws_url(&gw, "/chat"), &["--send", "hi", "--send", "again"]);
    assert_eq!(r["status"], 101, "{r}");
    assert_eq!(r["answers"], serde_json::json!(["e:hi", "e:again"]));

    // An open connection is counted while it lasts.
    let url = ws_url(&gw, "/chat");
    let open = std::thread::spawn(move || client(&url, &["--send", "x", "--idle", "4"]));
    let active = "gatehouse_websocket_connections_active{route=\"chat\"}";
    assert_eq!(metric_reaching(&gw, active, 1.0).await, Some(1.0));
    assert_eq!(open.join().unwrap()["alive"], true);
    assert_eq!(metric_reaching(&gw, active, 0.0).await, Some(0.0));
    assert_eq!(
        metric(&gw, "gatehouse_websocket_connections_total{route=\"chat\"}").await,
        Some(2.0)
    );

    // A route that does not allow upgrades answers 400 with a JSON body.
    let r = client(&ws_url(&gw, "/plain"), &["--send", "x"]);
    assert_eq!(r["status"], 400, "{r}");
    let body: serde_json::Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("WebSocket"),
        "{body}"
    );
    assert!(body["request_id"].is_string());
}

#[test]
fn sticky_cookie_keeps_reconnects_on_one_backend() {
    let a = PyServer::start("ws_peer.py", &["server", "--name", "a"]);
    let b = PyServer::start("ws_peer.py", &["server", "--name", "b"]);
    let body = format!(
        "{}{}",
        upstream(
            "chat",
            &[&a, &b],
            "[upstreams.chat.sticky]\ncookie = \"gh_affinity\"\nttl = \"1h\"\nsecret_env = \"STICKY_KEY\"\n"
        ),
        route("chat", "/", "chat", ""),
    );
    let gw = Gatehouse::builder()
        .env("STICKY_KEY", "0123456789abcdef0123456789abcdef-test")
        .start(&body);
    let url = ws_url(&gw, "/room");

    let first = client(&url, &["--send", "m"]);
    let set = first["set_cookie"]
        .as_str()
        .expect("a cookie on the 101")
        .to_string();
    assert!(set.starts_with("gh_affinity="), "{set}");
    for attr in ["Path=/", "HttpOnly", "SameSite=Lax", "Max-Age=3600"] {
        assert!(set.contains(attr), "{attr} in {set}");
    }
    assert!(!set.contains("Secure"), "plain listener: {set}");
    let cookie = set.split(';').next().unwrap().to_string();
    let value = cookie.trim_start_matches("gh_affinity=");
    for addr in [a.addr(), b.addr()] {
        let port = addr.rsplit(':').next().unwrap();
        assert!(
            !value.contains(port) && !value.contains("127"),
            "opaque: {value}"
        );
    }
    let backend = first["answers"][0].as_str().unwrap()[..1].to_string();

    // Reconnects with the cookie stay; no new cookie is set.
    for _ in 0..6 {
        let r = client(&url, &["--cookie", &cookie, "--send", "m"]);
        assert_eq!(r["answers"][0].as_str().unwrap()[..1], backend, "{r}");
        assert!(r["set_cookie"].is_null(), "{r}");
    }
    // Without it the balancer alternates.
    let seen: std::collections::HashSet<String> = (0..4)
        .map(|_| {
            client(&url, &["--send", "m"])["answers"][0]
                .as_str()
                .unwrap()[..1]
                .to_string()
        })
        .collect();
    assert_eq!(seen.len(), 2, "{seen:?}");
    // A forged or foreign value is ignored and replaced.
    let r = client(&url, &["--cookie", "gh_affinity=127.0.0.1", "--send", "m"]);
    assert!(
        r["set_cookie"]
            .as_str()
            .unwrap()
            .starts_with("gh_affinity="),
        "{r}"
    );

    // The same secret in another instance (or after an upgrade) honours the cookie.
    let other = Gatehouse::builder()
        .env("STICKY_KEY", "0123456789abcdef0123456789abcdef-test")
        .start(&body);
    for _ in 0..3 {
        let r = client(
            &ws_url(&other, "/room"),
            &["--cookie", &cookie, "--send", "m"],
        );
        assert_eq!(r["answers"][0].as_str().unwrap()[..1], backend, "{r}");
    }

    // Its backend gone, the cookie's holder moves and gets a new cookie.
    let (mut gone, stays) = if backend == "a" { (a, b) } else { (b, a) };
    gone.kill();
    let r = client(&url, &["--cookie", &cookie, "--send", "m"]);
    let moved_to = stays.addr();
    assert_ne!(
        r["answers"][0].as_str().unwrap()[..1],
        backend,
        "{r} (now {moved_to})"
    );
    let renewed = r["set_cookie"].as_str().expect("rebound");
    assert_ne!(renewed.split(';').next().unwrap(), cookie);
}

#[test]
fn idle_timeout_replaces_the_per_read_timeouts() {
    let sink = PyServer::start("ws_peer.py", &["server", "--mode", "sink"]);
    let push = PyServer::start("ws_peer.py", &["server", "--mode", "push", "--name", "p"]);
    let body = format!(
        "{}{}{}{}",
        upstream("sink", &[&sink], "read_timeout = \"1s\""),
        upstream("push", &[&push], "read_timeout = \"1s\""),
        route(
            "sink",
            "/sink",
            "sink",
            "websocket_idle_timeout = \"2s\"\ntimeout = \"1s\""
        ),
        route("push", "/push", "push", "websocket_idle_timeout = \"2s\""),
    );
    let gw = Gatehouse::start(&body);

    // The client talks for 4 s to a backend that never answers: the upstream read timeout
    // (1 s) and the route deadline (1 s) no longer apply once upgraded.
    let r = client(&ws_url(&gw, "/sink"), &["--every", "0.4", "--for", "4"]);
    assert_eq!(r["alive"], true, "{r}");
    // The backend pushes for 4 s while the client stays silent: idle counts both ways.
    let r = client(&ws_url(&gw, "/push"), &["--idle", "4"]);
    assert!(r["close_code"].is_null(), "{r}");
    assert_eq!(
        r["unexpected"], "a message while idle",
        "frames arrive: {r}"
    );

    // Nothing either way for 2 s: the gateway closes the connection.
    let started = Instant::now();
    let r = client(&ws_url(&gw, "/sink"), &["--wait-close", "6"]);
    let after = r["closed_after"].as_f64().expect("closed by the gateway");
    assert!((1.5..5.0).contains(&after), "{r}");
    assert!(started.elapsed() < Duration::from_secs(6));
}

#[test]
fn graceful_upgrade_sends_going_away_to_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events");
    let raw = PyServer::start(
        "ws_peer.py",
        &[
            "raw-server",
            "--events",
            events.to_str().unwrap(),
            "--name",
            "r",
        ],
    );
    let body = format!(
        "{}{}",
        upstream("raw", &[&raw], ""),
        route("chat", "/", "raw", ""),
    );
    let mut old = Gatehouse::builder().grace_period("10s").start(&body);
    let old_pid = old.pid();
    let url = ws_url(&old, "/live");
    let waiting = {
        let url = url.clone();
        std::thread::spawn(move || client(&url, &["--send", "before", "--wait-close", "30"]))
    };
    std::thread::sleep(Duration::from_millis(800));

    let new = common::start_daemon(
        &old.config_path(),
        true,
        &old.dir().join("gatehouse.pid"),
        &[],
        &old.dir().join("new.log"),
    );
    let new_pid = new.pid;
    assert_ne!(new_pid, old_pid);
    let quit_at = Instant::now();
    old.signal("QUIT");

    let r = waiting.join().unwrap();
    assert_eq!(r["answers"][0], "r:before", "{r}");
    // The old process's close, 1001 going away (the upstream answers 1000, never 1001).
    assert_eq!(r["close_code"], 1001, "{r}");
    assert!(
        quit_at.elapsed() < Duration::from_secs(10),
        "within the grace period: {r}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let log = std::fs::read_to_string(&events).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.first(), Some(&"text before"), "{log}");
    assert_eq!(
        lines.get(1),
        Some(&"close 1001"),
        "the upstream's next frame: {log}"
    );

    // A reconnect reaches the new process.
    let r = client(&url, &["--send", "after"]);
    assert_eq!(r["answers"][0], "r:after", "{r}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while old.exited().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(old.exited().is_some(), "the old process is gone");
    let r = client(&url, &["--send", "later"]);
    assert_eq!(r["answers"][0], "r:later", "served by the new process: {r}");
}
