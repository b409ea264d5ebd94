//! API keys through the real gateway and the real `gatehouse keys` command: valid, unknown,
//! revoked, expired and disabled keys, scopes, hide_credentials, and rotation by reload.

mod common;
use std::process::Command;

use common::{client, json, Gatehouse, TestBackend};

/// Runs `gatehouse keys new ...` and returns the printed key (stdout must hold only the key).
fn new_key(file: &std::path::Path, consumer: &str, extra: &[&str]) -> String {
    let out = Command::new(Gatehouse::binary())
        .args(["keys", "new", "--consumer", consumer, "--file"])
        .arg(file)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "stdout holds the key alone: {stdout:?}");
    assert!(lines[0].starts_with("ghk_") && lines[0].len() >= 4 + 43);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("key_"), "the id goes to stderr: {stderr}");
    let text = std::fs::read_to_string(file).unwrap();
    assert!(
        !text.contains(lines[0]),
        "the file never holds the plain key"
    );
    lines[0].to_string()
}

fn key_id_of(file: &std::path::Path, consumer: &str) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let records: toml::Table = text.parse().unwrap();
    records["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["consumer"].as_str() == Some(consumer))
        .map(|k| k["id"].as_str().unwrap().to_string())
        .unwrap()
}

fn config(backend: &TestBackend, keys: &std::path::Path) -> String {
    format!(
        r#"
[auth.api_keys.partners]
keys_file = "{}"
header = "X-API-Key"

[upstreams.svc]
backends = [{{ addr = "{}" }}]

[[routes]]
name = "orders"
path_prefix = "/orders"
upstream = "svc"
auth = ["api_key:partners"]

[[routes]]
name = "write"
path_prefix = "/write"
upstream = "svc"
auth = ["api_key:partners"]
require_scopes = ["orders:write"]

[[routes]]
name = "hidden"
path_prefix = "/hidden"
upstream = "svc"
auth = ["api_key:partners"]
hide_credentials = true
"#,
        keys.display(),
        backend.addr_str()
    )
}

async fn get(gw: &Gatehouse, path: &str, key: Option<&str>) -> (u16, serde_json::Value) {
    let mut req = client().get(gw.url(path));
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, json(resp).await)
}

#[tokio::test(flavor = "multi_thread")]
async fn valid_unknown_revoked_expired_and_disabled_keys() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.toml");
    std::fs::write(&file, "").unwrap();
    let acme = new_key(
        &file,
        "acme",
        &["--tier", "pro", "--scopes", "orders:read,orders:write"],
    );
    let revoked = new_key(&file, "gone", &[]);
    let expiring = new_key(&file, "brief", &["--expires", "1s"]);
    let disabled = new_key(&file, "off", &[]);
    let id = key_id_of(&file, "gone");
    let out = Command::new(Gatehouse::binary())
        .args(["keys", "revoke", &id, "--file"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success());
    // A hand-edited record disabled by an operator.
    let text = std::fs::read_to_string(&file).unwrap();
    let off_id = key_id_of(&file, "off");
    let mut doc: toml_edit::DocumentMut = text.parse().unwrap();
    for t in doc["keys"].as_array_of_tables_mut().unwrap().iter_mut() {
        if t["id"].as_str() == Some(off_id.as_str()) {
            t["disabled"] = toml_edit::value(true);
        }
    }
    std::fs::write(&file, doc.to_string()).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));

    let backend = TestBackend::start("svc");
    let gw = Gatehouse::start(&config(&backend, &file));
    let (status, body) = get(&gw, "/orders", Some(&acme)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["headers"]["x-consumer-id"], "acme");
    assert_eq!(body["headers"]["x-consumer-tier"], "pro");
    assert_eq!(body["headers"]["x-auth-method"], "api_key:partners");
    assert_eq!(body["headers"]["x-auth-scopes"], "orders:read orders:write");
    assert_eq!(
        body["headers"]["x-api-key"],
        acme.as_str(),
        "forwarded without hide_credentials"
    );

    for (key, reason) in [
        (Some("ghk_not-a-real-key"), "unknown_key"),
        (Some(revoked.as_str()), "revoked_key"),
        (Some(expiring.as_str()), "expired_key"),
        (Some(disabled.as_str()), "revoked_key"),
        (None, "missing"),
    ] {
        let (status, body) = get(&gw, "/orders", key).await;
        assert_eq!(status, 401, "{reason}");
        assert_eq!(body["reason"], reason);
        if let Some(k) = key {
            assert!(!body.to_string().contains(k));
        }
    }
    let huge = "k".repeat(9000);
    assert_eq!(
        get(&gw, "/orders", Some(&huge)).await.1["reason"],
        "malformed"
    );
    assert!(!gw.stderr().contains(&acme), "key in the process log");
}

#[tokio::test(flavor = "multi_thread")]
async fn scopes_and_hide_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.toml");
    let reader = new_key(&file, "reader", &["--scopes", "orders:read"]);
    let writer = new_key(&file, "writer", &["--scopes", "orders:read,orders:write"]);
    let backend = TestBackend::start("svc");
    let gw = Gatehouse::start(&config(&backend, &file));
    let (status, body) = get(&gw, "/write", Some(&reader)).await;
    assert_eq!(status, 403);
    assert_eq!(body["reason"], "insufficient_scope");
    assert_eq!(get(&gw, "/write", Some(&writer)).await.0, 200);
    let (status, body) = get(&gw, "/hidden", Some(&writer)).await;
    assert_eq!(status, 200);
    assert!(body["headers"].get("x-api-key").is_none(), "{body}");
    assert_eq!(body["headers"]["x-consumer-id"], "writer");
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_rotate_through_reload_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.toml");
    let old = new_key(&file, "acme", &[]);
    let backend = TestBackend::start("svc");
    let gw = Gatehouse::start(&config(&backend, &file));
    let pid = gw.pid();
    assert_eq!(get(&gw, "/orders", Some(&old)).await.0, 200);

    // Rotate: issue a new key, revoke the old one, reload.
    let new = new_key(&file, "acme-2", &[]);
    assert_eq!(
        get(&gw, "/orders", Some(&new)).await.1["reason"],
        "unknown_key",
        "not before reload"
    );
    let id = key_id_of(&file, "acme");
    assert!(Command::new(Gatehouse::binary())
        .args(["keys", "revoke", &id, "--file"])
        .arg(&file)
        .status()
        .unwrap()
        .success());
    gw.signal("HUP");
    let mut ok = false;
    for _ in 0..40 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        if get(&gw, "/orders", Some(&new)).await.0 == 200 {
            ok = true;
            break;
        }
    }
    assert!(ok, "new key accepted after reload");
    assert_eq!(
        get(&gw, "/orders", Some(&old)).await.1["reason"],
        "revoked_key"
    );
    assert_eq!(gw.pid(), pid);
}

#[test]
fn invalid_keys_file_is_reported_with_its_own_position() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.toml");
    std::fs::write(
        &file,
        "[[keys]]\nid = \"k1\"\nhash = \"sha256:zz\"\nconsumer = \"a\"\n",
    )
    .unwrap();
    let (code, stderr, _) = common::check_config(&format!(
        "[auth.api_keys.p]\nkeys_file = \"{}\"\n",
        file.display()
    ));
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!("{}:3:8: keys[0].hash", file.display())),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_watch_config_a_new_key_works_without_a_reload_signal() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.toml");
    let first = new_key(&file, "acme", &[]);
    let backend = TestBackend::start("svc");
    let gw = Gatehouse::builder()
        .server("watch_config = true")
        .start(&config(&backend, &file));
    assert_eq!(get(&gw, "/orders", Some(&first)).await.0, 200);
    // The keys file changes on disk: the watcher reloads it (no SIGHUP).
    let second = new_key(&file, "acme-2", &[]);
    let mut ok = false;
    for _ in 0..50 {
        if get(&gw, "/orders", Some(&second)).await.0 == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ok, "the new key was not picked up: {}", gw.stderr());
}
