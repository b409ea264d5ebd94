//! In-process reload (SIGHUP and POST /admin/reload): a valid file swaps the snapshot with no
//! failed request, an invalid one changes nothing, health state is carried over, and settings
//! that need an upgrade are reported.

mod common;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{client, json, Gatehouse, TestBackend, ADMIN_TOKEN};

fn routes_to(upstream: &str, a: &TestBackend, b: &TestBackend) -> String {
    format!(
        r#"
[upstreams.blue]
backends = [{{ addr = "{}" }}]
[upstreams.green]
backends = [{{ addr = "{}" }}]
[[routes]]
name = "all"
path_prefix = "/"
upstream = "{upstream}"
"#,
        a.addr_str(),
        b.addr_str()
    )
}

struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Eight keep-alive clients sending requests back to back until stopped (bounded by 2000 each).
fn start_load(gw: &Gatehouse) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let tasks = (0..8)
        .map(|_| {
            let (stop, ok, failed, url, c) = (
                stop.clone(),
                ok.clone(),
                failed.clone(),
                gw.url("/x"),
                client(),
            );
            tokio::spawn(async move {
                for _ in 0..2000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match c.get(&url).send().await {
                        Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    Load {
        stop,
        ok,
        failed,
        tasks,
    }
}

impl Load {
    async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reload_under_load_switches_routing_without_errors() {
    let (blue, green) = (TestBackend::start("blue"), TestBackend::start("green"));
    let gw = Gatehouse::start(&routes_to("blue", &blue, &green));
    let load = start_load(&gw);
    tokio::time::sleep(Duration::from_millis(500)).await;
    gw.rewrite_config(&routes_to("green", &blue, &green));
    gw.signal("HUP");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let green_before_stop = green.hits();
    let (ok, failed) = load.finish().await;
    assert_eq!(failed, 0, "{failed} failed of {}", ok + failed);
    assert!(ok > 100, "load ran ({ok})");
    assert!(
        blue.hits() > 0 && green_before_stop > 0,
        "traffic moved from blue to green"
    );
    let after = json(client().get(gw.url("/x")).send().await.unwrap()).await;
    assert_eq!(after["backend"], "green");
    assert!(gw.stderr().contains("configuration reloaded"));
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_reload_under_load_switches_routing_without_errors() {
    let (blue, green) = (TestBackend::start("blue"), TestBackend::start("green"));
    let gw = Gatehouse::builder()
        .admin(Some(ADMIN_TOKEN))
        .start(&routes_to("blue", &blue, &green));
    let load = start_load(&gw);
    tokio::time::sleep(Duration::from_millis(500)).await;
    gw.rewrite_config(&routes_to("green", &blue, &green));
    let resp = common::admin_post(&gw, "/admin/reload").await;
    assert_eq!(resp.status(), 200);
    let body = json(resp).await;
    assert_eq!(body["result"], "applied");
    assert_eq!(body["needs_upgrade"].as_array().unwrap().len(), 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, failed) = load.finish().await;
    assert_eq!(failed, 0, "{failed} failed of {}", ok + failed);
    assert_eq!(
        json(client().get(gw.url("/x")).send().await.unwrap()).await["backend"],
        "green"
    );
    let metrics = common::metrics_text(&gw).await;
    assert!(
        metrics.contains("gatehouse_config_reloads_total{result=\"success\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_reload_changes_nothing_and_reports_every_error() {
    let (blue, green) = (TestBackend::start("blue"), TestBackend::start("green"));
    let gw = Gatehouse::builder()
        .admin(Some(ADMIN_TOKEN))
        .start(&routes_to("blue", &blue, &green));
    gw.rewrite_config(
        &routes_to("green", &blue, &green)
            .replace("upstream = \"green\"", "upstream = \"purple\"\nbogus = 1"),
    );
    let resp = common::admin_post(&gw, "/admin/reload").await;
    assert_eq!(resp.status(), 422);
    let body = json(resp).await;
    assert_eq!(body["result"], "rejected");
    let errors: Vec<String> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors
        .iter()
        .any(|e| e.contains("routes[0].upstream: unknown upstream \"purple\"")));
    assert!(errors
        .iter()
        .any(|e| e.contains("routes[0].bogus: unknown key")));
    // SIGHUP with the same broken file: logged, process keeps serving the old snapshot.
    // The admin reload above logged the first rejection; wait (bounded) for the second.
    gw.signal("HUP");
    let rejections = || gw.stderr().matches("reload rejected").count();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while rejections() < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rejections(), 2, "{}", gw.stderr());
    for _ in 0..5 {
        assert_eq!(
            json(client().get(gw.url("/x")).send().await.unwrap()).await["backend"],
            "blue"
        );
    }
    let metrics = common::metrics_text(&gw).await;
    assert!(
        metrics.contains("gatehouse_config_reloads_total{result=\"failure\"} 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_keeps_health_state_of_unchanged_backends() {
    let (a, b) = (TestBackend::start("a"), TestBackend::start("b"));
    let body = |extra_route: bool| {
        format!(
            r#"
[upstreams.svc]
backends = [{{ addr = "{}" }}, {{ addr = "{}" }}]
[upstreams.svc.health_check]
interval = "5s"
timeout = "200ms"
unhealthy_threshold = 1
healthy_threshold = 1
[[routes]]
name = "all"
path_prefix = "/"
upstream = "svc"
{}
"#,
            a.addr_str(),
            b.addr_str(),
            if extra_route {
                "[[routes]]\nname = \"extra\"\npath_prefix = \"/extra\"\nupstream = \"svc\"\n"
            } else {
                ""
            }
        )
    };
    // The first check round runs at start; with a 5 s interval the next is far away, so health
    // seen after the reload can only be the carried-over state.
    a.set_healthy(false);
    let gw = Gatehouse::builder()
        .admin(Some(ADMIN_TOKEN))
        .start(&body(false));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = a.hits();
    gw.rewrite_config(&body(true));
    let resp = common::admin_post(&gw, "/admin/reload").await;
    assert_eq!(resp.status(), 200);
    for _ in 0..10 {
        assert_eq!(
            client()
                .get(gw.url("/extra"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    assert_eq!(
        a.hits(),
        before,
        "the unhealthy backend stayed out after the reload"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn settings_that_need_an_upgrade_are_reported_not_ignored() {
    let (blue, green) = (TestBackend::start("blue"), TestBackend::start("green"));
    let gw = Gatehouse::builder()
        .admin(Some(ADMIN_TOKEN))
        .start(&routes_to("blue", &blue, &green));
    let text = std::fs::read_to_string(gw.config_path()).unwrap();
    let other_port = common::free_port();
    let changed = text.replace(&gw.addr.to_string(), &format!("127.0.0.1:{other_port}"));
    gw.write_raw_config(&changed.replace("threads = 2", "threads = 3"));
    let resp = common::admin_post(&gw, "/admin/reload").await;
    assert_eq!(resp.status(), 200);
    let body = json(resp).await;
    assert_eq!(
        body["needs_upgrade"],
        serde_json::json!(["server.listen", "server.threads"])
    );
    // The running listener is unchanged.
    assert_eq!(
        client().get(gw.url("/x")).send().await.unwrap().status(),
        200
    );
}

/// Waits until `/x` is answered by `backend` (or `limit` passes); true if it was.
async fn served_by(gw: &Gatehouse, backend: &str, limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if let Ok(resp) = client().get(gw.url("/x")).send().await {
            if resp.status() == 200 && json(resp).await["backend"] == backend {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_config_reloads_on_edits_and_ignores_invalid_ones() {
    let (blue, green) = (TestBackend::start("blue"), TestBackend::start("green"));
    let gw = Gatehouse::builder()
        .admin(Some(ADMIN_TOKEN))
        .server("watch_config = true")
        .start(&routes_to("blue", &blue, &green));
    assert!(served_by(&gw, "blue", Duration::from_secs(2)).await);
    // An edit, no signal: the new route serves within a few polls.
    gw.rewrite_config(&routes_to("green", &blue, &green));
    assert!(
        served_by(&gw, "green", Duration::from_secs(5)).await,
        "the edit was not applied: {}",
        gw.stderr()
    );
    // An invalid edit: logged and counted once, the running configuration keeps serving.
    gw.rewrite_config(
        &routes_to("blue", &blue, &green).replace("upstream = \"blue\"", "upstream = \"purple\""),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !gw.stderr().contains("reload rejected") && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gw.stderr().contains("reload rejected"), "{}", gw.stderr());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..5 {
        assert_eq!(
            json(client().get(gw.url("/x")).send().await.unwrap()).await["backend"],
            "green"
        );
    }
    let metrics = common::metrics_text(&gw).await;
    assert!(
        metrics.contains("gatehouse_config_reloads_total{result=\"failure\"} 1"),
        "an invalid file is tried once, not on every poll: {metrics}"
    );
    // Fixed again: applied.
    gw.rewrite_config(&routes_to("blue", &blue, &green));
    assert!(served_by(&gw, "blue", Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_watch_config_edits_wait_for_a_reload() {
    let (blue, green) = (TestBackend::start("blue"), TestBackend::start("green"));
    let gw = Gatehouse::builder()
        .admin(Some(ADMIN_TOKEN))
        .start(&routes_to("blue", &blue, &green));
    gw.rewrite_config(&routes_to("green", &blue, &green));
    assert!(
        !served_by(&gw, "green", Duration::from_secs(2)).await,
        "reloaded without being asked"
    );
    gw.signal("HUP");
    assert!(served_by(&gw, "green", Duration::from_secs(3)).await);
}
