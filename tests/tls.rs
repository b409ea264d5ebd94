//! TLS termination through the real binary with real clients: Python `ssl` (SNI picks the
//! certificate, no SNI gets the default, strict SNI), `curl --http2` (ALPN h2), certificates
//! rotated by reload while a keep-alive connection stays up, key pairs checked by `-t`,
//! mTLS with the client's subject sent upstream, redirects from plain HTTP, and 421.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::pki::Pki;
use common::{free_port, Gatehouse, TestBackend};

/// A Python client: connects with `sni` (None: no SNI), prints the certificate's SAN names
/// and the HTTP status of `GET /tls`, as JSON; with a client certificate when given.
const CLIENT: &str = r#"
import json, socket, ssl, sys
port, sni, ca = int(sys.argv[1]), sys.argv[2], sys.argv[3]
cert, key = (sys.argv[4], sys.argv[5]) if len(sys.argv) > 5 else (None, None)
ctx = ssl.create_default_context(cafile=ca)
if sni == "-":
    ctx.check_hostname = False
    sni = None
if cert:
    ctx.load_cert_chain(cert, key)
out = {}
try:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=sni) as s:
            c = s.getpeercert()
            out["names"] = [v for k, v in c.get("subjectAltName", ()) if k == "DNS"]
            out["serial"] = c.get("serialNumber")
            out["version"] = s.version()
            host = sys.argv[6] if len(sys.argv) > 6 else (sni or "a.test")
            s.sendall(f"GET /tls HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            out["status"] = int(head.split()[1])
            out["body"] = body.decode(errors="replace")
except Exception as e:
    out["error"] = f"{type(e).__name__}: {e}"
print(json.dumps(out))
"#;

fn python(args: &[&str]) -> serde_json::Value {
    let out = Command::new("python3")
        .arg("-c")
        .arg(CLIENT)
        .args(args)
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("{e}: {text} {}", String::from_utf8_lossy(&out.stderr)))
}

struct Env {
    gw: Gatehouse,
    tls_port: u16,
    pki: Pki,
    _b: TestBackend,
}

fn tls_section(port: u16, pki: &Pki, extra: &str) -> String {
    let (a_cert, a_key) = pki.server("a", &["a.test"], 90);
    let (b_cert, b_key) = pki.server("b", &["b.test", "*.wild.test"], 90);
    format!(
        "[server.tls]\nlisten = [\"127.0.0.1:{port}\"]\n{extra}\n\
         [[server.tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\n\
         [[server.tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\n",
        a_cert.display(),
        a_key.display(),
        b_cert.display(),
        b_key.display()
    )
}

fn start(extra: &str) -> Env {
    let pki = Pki::new("test");
    let b = TestBackend::start("b");
    let tls_port = free_port();
    let gw = Gatehouse::builder()
        .admin(Some(common::ADMIN_TOKEN))
        .server(&tls_section(tls_port, &pki, extra))
        .start(&format!(
            "[upstreams.u]\nbackends = [{{ addr = \"{}\" }}]\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\n",
            b.addr_str()
        ));
    wait_for(tls_port);
    Env {
        gw,
        tls_port,
        pki,
        _b: b,
    }
}

fn wait_for(port: u16) {
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("TLS listener {port} did not come up");
}

fn ca(e: &Env) -> String {
    e.pki.ca_path("test").display().to_string()
}

#[test]
fn sni_picks_the_certificate_and_no_sni_gets_the_first() {
    let e = start("");
    let port = e.tls_port.to_string();
    let a = python(&[&port, "a.test", &ca(&e)]);
    assert_eq!(a["names"], serde_json::json!(["a.test"]), "{a}");
    assert_eq!(a["status"], 200);
    let echo: serde_json::Value = serde_json::from_str(a["body"].as_str().unwrap()).unwrap();
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https");
    let b = python(&[&port, "b.test", &ca(&e)]);
    assert_eq!(
        b["names"],
        serde_json::json!(["b.test", "*.wild.test"]),
        "{b}"
    );
    let w = python(&[&port, "x.wild.test", &ca(&e)]);
    assert_eq!(w["names"][0], "b.test", "wildcard: {w}");
    let none = python(&[&port, "-", &ca(&e)]);
    assert_eq!(
        none["names"],
        serde_json::json!(["a.test"]),
        "default: {none}"
    );
    let unknown = python(&[&port, "-", &ca(&e), "", "", "other.test"]);
    assert_eq!(unknown["status"], 200, "not strict: {unknown}");
}

#[test]
fn strict_sni_refuses_unknown_names_and_mismatched_hosts() {
    let e = start("strict_sni = true");
    let port = e.tls_port.to_string();
    // An unknown name fails the handshake (the client checks no hostname, so only the server
    // can refuse).
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            "import socket, ssl, sys\nctx = ssl.create_default_context()\nctx.check_hostname = False\nctx.verify_mode = ssl.CERT_NONE\ntry:\n    ctx.wrap_socket(socket.create_connection(('127.0.0.1', int(sys.argv[1]))), server_hostname='unknown.test')\n    print('connected')\nexcept ssl.SSLError as e:\n    print('refused', e)\n",
        )
        .arg(&port)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("refused"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // A known name whose Host names another site gets 421.
    let r = python(&[&port, "a.test", &ca(&e), "", "", "b.test"]);
    assert_eq!(r["status"], 421, "{r}");
    let r = python(&[&port, "a.test", &ca(&e), "", "", "a.test:8443"]);
    assert_eq!(r["status"], 200, "the port does not matter: {r}");
}

#[test]
fn curl_gets_http2_over_tls_through_alpn() {
    let e = start("");
    let out = Command::new("curl")
        .args([
            "--http2",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
            "--cacert",
            &ca(&e),
            "--resolve",
            &format!("a.test:{}:127.0.0.1", e.tls_port),
            &format!("https://a.test:{}/h2", e.tls_port),
        ])
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2 200");
}

#[test]
fn min_version_13_refuses_tls12_clients() {
    let e = start("min_version = \"1.3\"");
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            "import socket, ssl, sys\nctx = ssl.create_default_context(cafile=sys.argv[2])\nctx.maximum_version = ssl.TLSVersion.TLSv1_2\ntry:\n    ctx.wrap_socket(socket.create_connection(('127.0.0.1', int(sys.argv[1]))), server_hostname='a.test')\n    print('connected')\nexcept ssl.SSLError as e:\n    print('refused')\n",
        )
        .arg(e.tls_port.to_string())
        .arg(ca(&e))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "refused");
    assert_eq!(
        python(&[&e.tls_port.to_string(), "a.test", &ca(&e)])["version"],
        "TLSv1.3"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_rotates_certificates_while_open_connections_continue() {
    let e = start("");
    // Keep a TLS keep-alive connection open across the reload.
    let script = r#"
import json, socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[2])
def conn():
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1]))), server_hostname="a.test")
    return s, s.getpeercert()["serialNumber"]
def get(s):
    s.sendall(b"GET /k HTTP/1.1\r\nHost: a.test\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
    while len(body) < length:
        body += s.recv(65536)
    return int(head.split()[1])
s, first = conn()
print(json.dumps({"serial": first, "status": get(s)}), flush=True)
sys.stdin.readline()
after = get(s)
s2, second = conn()
print(json.dumps({"old_connection": after, "serial": second, "status": get(s2)}), flush=True)
"#;
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(e.tls_port.to_string())
        .arg(ca(&e))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let before: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(before["status"], 200);
    // New certificate files for the same names, then a reload.
    let (cert, key) = e.pki.server("a2", &["a.test"], 90);
    let config = std::fs::read_to_string(e.gw.config_path()).unwrap();
    let a_cert = e.pki.dir.path().join("a.pem").display().to_string();
    let a_key = e.pki.dir.path().join("a.key").display().to_string();
    std::fs::write(
        e.gw.config_path(),
        config
            .replace(&a_cert, &cert.display().to_string())
            .replace(&a_key, &key.display().to_string()),
    )
    .unwrap();
    let resp = common::admin_post(&e.gw, "/admin/reload").await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let after: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(
        after["old_connection"], 200,
        "the open connection continues"
    );
    assert_eq!(after["status"], 200);
    assert_ne!(
        after["serial"], before["serial"],
        "new handshakes get the new certificate"
    );
    let _ = child.wait();
}

#[test]
fn mismatched_or_expired_certificates_are_rejected_by_t_with_file_names() {
    let pki = Pki::new("t");
    let (a_cert, _) = pki.server("a", &["a.test"], 90);
    let (_, b_key) = pki.server("b", &["b.test"], 90);
    let (old_cert, old_key) = pki.server("old", &["old.test"], -1);
    let (soon_cert, soon_key) = pki.server("soon", &["soon.test"], 5);
    let section = |cert: &Path, key: &Path| {
        format!(
            "[server.tls]\nlisten = [\"127.0.0.1:1\"]\n[[server.tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        )
    };
    let (code, stderr, _) = common::check_config(&section(&a_cert, &b_key));
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!(
            "{} does not fit {}",
            b_key.display(),
            a_cert.display()
        )),
        "{stderr}"
    );
    let (code, stderr, _) = common::check_config(&section(&old_cert, &old_key));
    assert_eq!(code, 1);
    assert!(stderr.contains("expired"), "{stderr}");
    let (code, stderr, _) = common::check_config(&section(&soon_cert, &soon_key));
    assert_eq!(code, 0, "a warning only: {stderr}");
    assert!(
        stderr.contains("warning:") && stderr.contains("expires in"),
        "{stderr}"
    );
}

#[test]
fn mtls_sends_the_client_subject_upstream_and_strips_forged_ones() {
    let pki = Pki::new("test");
    let clients = Pki::new("clients");
    let (c_cert, c_key) = clients.client("alice", "alice", "Acme");
    let b = TestBackend::start("b");
    let tls_port = free_port();
    let extra = format!(
        "[server.tls.client_auth]\nca = \"{}\"\nrequired = false\n",
        clients.ca_path("clients").display()
    );
    let gw = Gatehouse::builder()
        .server(&(tls_section(tls_port, &pki, "") + &extra))
        .start(&format!(
            "[upstreams.u]\nbackends = [{{ addr = \"{}\" }}]\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\n",
            b.addr_str()
        ));
    wait_for(tls_port);
    let port = tls_port.to_string();
    let ca = pki.ca_path("test").display().to_string();
    let r = python(&[
        &port,
        "a.test",
        &ca,
        &c_cert.display().to_string(),
        &c_key.display().to_string(),
    ]);
    let echo: serde_json::Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
    let subject = echo["headers"]["x-client-cert-subject"]
        .as_str()
        .unwrap_or("");
    assert!(
        subject.contains("CN=alice") && subject.contains("O=Acme"),
        "{echo}"
    );
    // Without a certificate (allowed: required = false) nothing is sent, whatever the client
    // claims.
    let forged = Command::new("curl")
        .args([
            "-s",
            "--cacert",
            &ca,
            "-H",
            "X-Client-Cert-Subject: CN=admin",
            "--resolve",
            &format!("a.test:{tls_port}:127.0.0.1"),
            &format!("https://a.test:{tls_port}/x"),
        ])
        .output()
        .unwrap();
    let echo: serde_json::Value = serde_json::from_slice(&forged.stdout).unwrap();
    assert!(
        echo["headers"].get("x-client-cert-subject").is_none(),
        "{echo}"
    );
    drop(gw);
}

#[test]
fn plain_listeners_redirect_to_https_when_configured() {
    let e = start("redirect_http = true");
    let r = common::raw::exchange(
        e.gw.addr,
        b"GET /some/where?x=1 HTTP/1.1\r\nHost: a.test:8080\r\n\r\n",
    );
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some(format!("https://a.test:{}/some/where?x=1", e.tls_port))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn handshake_failures_and_expiry_are_exported() {
    let e = start("strict_sni = true");
    let _ = Command::new("python3")
        .arg("-c")
        .arg("import socket, ssl, sys\nctx = ssl.create_default_context()\nctx.check_hostname = False\nctx.verify_mode = ssl.CERT_NONE\ntry:\n    ctx.wrap_socket(socket.create_connection(('127.0.0.1', int(sys.argv[1]))), server_hostname='nope.test')\nexcept Exception:\n    pass\n")
        .arg(e.tls_port.to_string())
        .output()
        .unwrap();
    // Counted when the handshake future fails, just after the alert went out: bounded wait.
    let failures = "gatehouse_tls_handshake_failures_total{reason=\"unknown_sni\"}";
    assert_eq!(
        common::metric_reaching(&e.gw, failures, 1.0).await,
        Some(1.0),
        "{}",
        common::metrics_text(&e.gw).await
    );
    let expiry = common::metric(
        &e.gw,
        "gatehouse_tls_certificate_expiry_timestamp_seconds{name=\"a.test\"}",
    )
    .await
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    assert!(expiry > now + 80.0 * 86_400.0 && expiry < now + 91.0 * 86_400.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_resume_across_a_reload() {
    let e = start("");
    let script = r#"
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[2])
def conn(session=None):
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1]))), server_hostname="a.test", session=session)
    s.sendall(b"GET /r HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
    while s.recv(65536):
        pass
    return s
first = conn()
print("ready", flush=True)
sys.stdin.readline()
second = conn(first.session)
print("reused" if second.session_reused else "full handshake", flush=True)
"#;
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(e.tls_port.to_string())
        .arg(ca(&e))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let resp = common::admin_post(&e.gw, "/admin/reload").await;
    assert_eq!(resp.status(), 200);
    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "reused");
    let _ = child.wait();
}
