//! gRPC through the real binary with real grpcio clients and servers
//! (`tests/tools/grpc_peer.py`): unary and server streaming with trailers intact over h2c and
//! over TLS (h2, verified against a CA and an SNI name, with a client certificate for mTLS to
//! the backend), API-key metadata, the gateway's own
//! answers gRPC-shaped (rate limit → RESOURCE_EXHAUSTED, backend down → UNAVAILABLE, deadlines
//! → DEADLINE_EXCEEDED, an HTTP/1 upstream → UNAVAILABLE), `grpc-timeout`, gRPC health checks
//! and gRPC-Web through Pingora's bridge.

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use common::pki::Pki;
use common::python::{run_json, PyServer};
use common::{free_port, Gatehouse, TestBackend, ADMIN_TOKEN};

fn new_key(file: &std::path::Path, consumer: &str) -> String {
    let out = Command::new(Gatehouse::binary())
        .args(["keys", "new", "--consumer", consumer, "--file"])
        .arg(file)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// One call through the gateway: (code, details, responses, trailing metadata).
fn call(gw: &Gatehouse, method: &str, payload: &str, extra: &[&str]) -> serde_json::Value {
    let target = gw.addr.to_string();
    let mut args = vec!["client", target.as_str(), method, payload];
    args.extend_from_slice(extra);
    run_json("grpc_peer.py", &args)
}

/// A route serving `service` (e.g. `secure.Echo`) by the backend's `test.Echo`.
fn route(name: &str, service: &str, upstream: &str, extra: &str) -> String {
    format!(
        "[[routes]]\nname = \"{name}\"\npath_prefix = \"/{service}/\"\nupstream = \"{upstream}\"\n\
         grpc = true\nrewrite = {{ regex = \"^/{service}/(?P<m>.*)$\", to = \"/test.Echo/${{m}}\" }}\n{extra}\n"
    )
}

struct Env {
    gw: Gatehouse,
    key: String,
    _grpc: PyServer,
    _http: TestBackend,
    _dir: tempfile::TempDir,
}

fn env() -> Env {
    let grpc = PyServer::start("grpc_peer.py", &["server", "--name", "b1"]);
    let http = TestBackend::start("plain");
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    let key = new_key(&keys, "acme");
    let down = free_port();
    let mut body = format!(
        r#"
[auth.api_keys.k]
keys_file = "{keys}"
header = "x-api-key"

[rate_limit]
store = "local"
[rate_limit.tiers.free]
rps = 1
burst = 100
daily_quota = 2

[upstreams.grpc]
protocol = "h2c"
backends = [{{ addr = "{grpc}" }}]

[upstreams.down]
protocol = "h2c"
backends = [{{ addr = "127.0.0.1:{down}" }}]

[upstreams.plain]
backends = [{{ addr = "{http}" }}]

[[routes]]
name = "echo"
path_prefix = "/test.Echo/"
upstream = "grpc"
grpc = true
"#,
        keys = keys.display(),
        grpc = grpc.addr(),
        http = http.addr_str(),
    );
    body.push_str(&route(
        "secure",
        "secure.Echo",
        "grpc",
        "auth = [\"api_key:k\"]",
    ));
    body.push_str(&route(
        "limited",
        "limited.Echo",
        "grpc",
        "rate_limit = { key = \"client_ip\", default_tier = \"free\" }",
    ));
    body.push_str(&route("down", "down.Echo", "down", ""));
    body.push_str(&route("plain", "plain.Echo", "plain", ""));
    body.push_str(&route("tight", "tight.Echo", "grpc", "timeout = \"300ms\""));
    let gw = Gatehouse::builder().access_log_file().start(&body);
    Env {
        gw,
        key,
        _grpc: grpc,
        _http: http,
        _dir: dir,
    }
}

#[test]
fn unary_and_streaming_calls_pass_with_trailers() {
    let e = env();
    let r = call(
        &e.gw,
        "/test.Echo/Unary",
        "hello",
        &["--meta", "x-request-id=rid-1"],
    );
    assert_eq!(r["code"], "OK", "{r}");
    assert_eq!(r["responses"][0], "b1:hello");
    // Trailing metadata written by the backend arrives: trailers pass intact.
    assert_eq!(r["trailing"]["seen-x-request-id"], "rid-1", "{r}");
    assert_eq!(r["trailing"]["seen-x-forwarded-for"], "127.0.0.1", "{r}");

    let r = call(&e.gw, "/test.Echo/Stream", "", &["--count", "5"]);
    assert_eq!(r["code"], "OK", "{r}");
    let got: Vec<&str> = r["responses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(got, ["b1:0", "b1:1", "b1:2", "b1:3", "b1:4"]);

    // A status the backend sets passes through as it is.
    let r = call(&e.gw, "/test.Echo/Fail", "x", &[]);
    assert_eq!(r["code"], "PERMISSION_DENIED", "{r}");
    assert_eq!(r["details"], "backend says no");
}

#[test]
fn api_key_metadata_authenticates() {
    let e = env();
    let r = call(&e.gw, "/secure.Echo/Unary", "x", &[]);
    assert_eq!(r["code"], "UNAUTHENTICATED", "{r}");
    assert!(r["details"].as_str().unwrap().contains("credential"), "{r}");
    // The gateway's answer carries the request id like every other answer.
    assert!(r["trailing"]["x-request-id"].is_string(), "{r}");
    let r = call(
        &e.gw,
        "/secure.Echo/Unary",
        "x",
        &["--meta", "x-api-key=ghk_wrong"],
    );
    assert_eq!(r["code"], "UNAUTHENTICATED", "{r}");
    let meta = format!("x-api-key={}", e.key);
    let r = call(&e.gw, "/secure.Echo/Unary", "x", &["--meta", &meta]);
    assert_eq!(r["code"], "OK", "{r}");
    assert_eq!(r["responses"][0], "b1:x");
}

#[test]
fn rate_limit_answers_resource_exhausted() {
    let e = env();
    // A daily quota of 2: deterministic however slowly the clients start.
    let codes: Vec<String> = (0..2)
        .map(|_| {
            call(&e.gw, "/limited.Echo/Unary", "x", &[])["code"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(codes, ["OK", "OK"]);
    let r = call(&e.gw, "/limited.Echo/Unary", "x", &[]);
    assert_eq!(r["code"], "RESOURCE_EXHAUSTED", "{r}");
    assert_eq!(r["details"], "rate limit exceeded");
    assert!(r["trailing"]["retry-after"].is_string(), "{r}");
}

#[test]
fn failures_behind_the_gateway_are_unavailable_or_deadline_exceeded() {
    let e = env();
    let r = call(&e.gw, "/down.Echo/Unary", "x", &[]);
    assert_eq!(r["code"], "UNAVAILABLE", "{r}");

    let r = call(&e.gw, "/plain.Echo/Unary", "x", &[]);
    assert_eq!(r["code"], "UNAVAILABLE", "{r}");
    assert!(
        r["details"].as_str().unwrap().contains("HTTP/1.1"),
        "the message says why: {r}"
    );

    // The route deadline (300 ms) passes while the backend sleeps 2 s; the client allows 10 s.
    let started = Instant::now();
    let r = call(&e.gw, "/tight.Echo/Slow", "x", &["--timeout", "10"]);
    assert_eq!(r["code"], "DEADLINE_EXCEEDED", "{r}");
    assert!(
        r["details"].as_str().unwrap().contains("gateway"),
        "the gateway's own answer: {r}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// A raw HTTP/2 call with curl (which does not enforce `grpc-timeout` itself): returns the
/// response headers as text.
fn curl_grpc(gw: &Gatehouse, path: &str, headers: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let frame = dir.path().join("frame");
    std::fs::write(&frame, [0u8, 0, 0, 0, 1, b'x']).unwrap();
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "-o",
        "/dev/null",
        "-D",
        "-",
        "--http2-prior-knowledge",
    ])
    .args(["-H", "content-type: application/grpc", "-H", "te: trailers"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd
        .arg("--data-binary")
        .arg(format!("@{}", frame.display()))
        .arg(gw.url(path))
        .output()
        .unwrap();
    format!(
        "{}{}{}",
        String::from_utf8_lossy(&out.stdout).to_lowercase(),
        String::from_utf8_lossy(&out.stderr),
        if out.status.success() {
            String::new()
        } else {
            format!(" ({})", out.status)
        }
    )
}

#[test]
fn grpc_timeout_shortens_the_deadline_and_answers_are_trailers_only() {
    let e = env();
    let started = Instant::now();
    let head = curl_grpc(&e.gw, "/test.Echo/Slow", &["grpc-timeout: 300m"]);
    assert!(started.elapsed() < Duration::from_millis(1800), "{head}");
    assert!(head.starts_with("http/2 200"), "{head}");
    // Trailers-only: the status is in the one header block.
    assert!(head.contains("grpc-status: 4\r\n"), "{head}");
    assert!(
        head.contains("content-type: application/grpc\r\n"),
        "{head}"
    );
    assert!(head.contains("grpc-message: "), "{head}");

    // No route: 404 → UNIMPLEMENTED (through grpcio: curl treats the stream reset that
    // follows an answer given before its upload finished as an error).
    let r = call(&e.gw, "/nothing.Here/Call", "x", &[]);
    assert_eq!(r["code"], "UNIMPLEMENTED", "{r}");
    // A malformed grpc-timeout is ignored, as gRPC servers do.
    let head = curl_grpc(&e.gw, "/test.Echo/Unary", &["grpc-timeout: soon"]);
    assert!(head.starts_with("http/2 200"), "{head}");
    assert!(!head.contains("grpc-status: 4"), "{head}");
}

#[test]
fn config_check_warns_about_grpc_on_an_http1_upstream() {
    let (code, err, _path) = common::check_config(
        "[upstreams.u]\nbackends = [{ addr = \"127.0.0.1:9\" }]\n\
         [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\ngrpc = true\n",
    );
    assert_eq!(code, 0, "a warning, not an error: {err}");
    assert!(err.contains("warning"), "{err}");
    assert!(err.contains("routes[0].grpc"), "{err}");
    assert!(err.contains("HTTP/1.1"), "{err}");
}

#[test]
fn upstream_tls_with_h2_verifies_the_backend() {
    let pki = Pki::new("grpc");
    let (cert, key) = pki.server("backend", &["backend.test"], 30);
    let tls_grpc = PyServer::start(
        "grpc_peer.py",
        &[
            "server",
            "--name",
            "secure",
            "--tls",
            cert.to_str().unwrap(),
            key.to_str().unwrap(),
        ],
    );
    let ca = pki.ca_path("grpc");
    let body = format!(
        r#"
[upstreams.good]
protocol = "h2"
tls = true
sni = "backend.test"
ca_file = "{ca}"
h2_streams_per_connection = 10
backends = [{{ addr = "{addr}" }}]

[upstreams.wrong_name]
protocol = "h2"
tls = true
sni = "other.test"
ca_file = "{ca}"
backends = [{{ addr = "{addr}" }}]

[upstreams.unverified]
protocol = "h2"
tls = true
verify = false
backends = [{{ addr = "{addr}" }}]
{good}{wrong}{unverified}"#,
        ca = ca.display(),
        addr = tls_grpc.addr(),
        good = route("good", "test.Echo", "good", ""),
        wrong = route("wrong", "wrong.Echo", "wrong_name", ""),
        unverified = route("unverified", "unverified.Echo", "unverified", ""),
    );
    let gw = Gatehouse::start(&body);
    let r = call(&gw, "/test.Echo/Unary", "over-tls", &[]);
    assert_eq!(r["code"], "OK", "{r}");
    assert_eq!(r["responses"][0], "secure:over-tls");
    let r = call(&gw, "/test.Echo/Stream", "", &["--count", "3"]);
    assert_eq!(r["responses"].as_array().unwrap().len(), 3, "{r}");
    // A certificate that does not match the name is refused: 502 → UNAVAILABLE.
    let r = call(&gw, "/wrong.Echo/Unary", "x", &[]);
    assert_eq!(r["code"], "UNAVAILABLE", "{r}");
    // verify = false accepts it (the operator asked for it).
    let r = call(&gw, "/unverified.Echo/Unary", "x", &[]);
    assert_eq!(r["code"], "OK", "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_health_checks_follow_the_serving_status() {
    let serving = PyServer::start("grpc_peer.py", &["server", "--name", "up"]);
    let not_serving = PyServer::start(
        "grpc_peer.py",
        &["server", "--name", "down", "--health", "NOT_SERVING"],
    );
    let body = format!(
        r#"
[upstreams.g]
protocol = "h2c"
backends = [{{ addr = "{a}" }}, {{ addr = "{b}" }}]
health_check = {{ type = "grpc", interval = "200ms", timeout = "1s", unhealthy_threshold = 1, healthy_threshold = 1 }}
{r}"#,
        a = serving.addr(),
        b = not_serving.addr(),
        r = route("echo", "test.Echo", "g", ""),
    );
    let gw = Gatehouse::builder().admin(Some(ADMIN_TOKEN)).start(&body);
    // Wait (bounded) until the gateway's checks have marked the NOT_SERVING backend down.
    let down = not_serving.addr().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = common::json(common::admin_get(&gw, "/admin/upstreams").await).await;
        let backends = state["upstreams"][0]["backends"].as_array().unwrap();
        let healthy = |addr: &str| {
            backends
                .iter()
                .find(|b| b["addr"] == addr)
                .map(|b| b["healthy"].clone())
        };
        if healthy(&down) == Some(serde_json::Value::Bool(false)) {
            assert_eq!(
                healthy(&serving.addr().to_string()),
                Some(serde_json::Value::Bool(true)),
                "{state}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "never marked down: {state}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..6 {
        let r = call(&gw, "/test.Echo/Unary", "x", &[]);
        assert_eq!(r["responses"][0], "up:x", "only the SERVING backend: {r}");
    }
}

/// Sends one gRPC-Web call over HTTP/1.1 and returns (head, body).
fn grpc_web(gw: &Gatehouse, path: &str, content_type: &str) -> (String, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let frame = [0u8, 0, 0, 0, 3, b'w', b'e', b'b'];
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Type: {content_type}\r\nX-Grpc-Web: 1\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        frame.len()
    )
    .unwrap();
    s.write_all(&frame).unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&all[..split]).to_lowercase();
    let mut body = all[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = common::raw::dechunk(&body);
    }
    (head, body)
}

#[test]
fn grpc_web_is_bridged_on_routes_that_allow_it() {
    let grpc = PyServer::start("grpc_peer.py", &["server", "--name", "w"]);
    let body = format!(
        r#"
[upstreams.g]
protocol = "h2c"
backends = [{{ addr = "{a}" }}]
{web}{native}"#,
        a = grpc.addr(),
        web = route("web", "test.Echo", "g", "grpc_web = true"),
        native = route("native", "native.Echo", "g", ""),
    );
    let gw = Gatehouse::start(&body);
    let (head, body) = grpc_web(&gw, "/test.Echo/Unary", "application/grpc-web+proto");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("content-type: application/grpc-web"),
        "{head}"
    );
    // One message frame, then the trailers frame (flag 0x80) with grpc-status 0.
    assert_eq!(&body[..5], &[0, 0, 0, 0, 5], "{body:?}");
    assert_eq!(&body[5..10], b"w:web");
    assert_eq!(body[10], 0x80, "{body:?}");
    let trailers = String::from_utf8_lossy(&body[15..]).to_lowercase();
    assert!(trailers.contains("grpc-status:0"), "{trailers}");

    // Not enabled on this route: a gRPC-shaped UNIMPLEMENTED, not the backend.
    let (head, _) = grpc_web(&gw, "/native.Echo/Unary", "application/grpc-web+proto");
    assert!(head.contains("grpc-status: 12"), "{head}");
    assert!(
        head.contains("content-type: application/grpc-web"),
        "{head}"
    );
    // The text encoding is not bridged.
    let (head, _) = grpc_web(&gw, "/test.Echo/Unary", "application/grpc-web-text");
    assert!(head.contains("grpc-status: 12"), "{head}");
}

/// The bridge module is installed only when a route of the starting configuration uses it (it
/// costs every request a few allocations); a reload that enables gRPC-Web says it needs an
/// upgrade, and until then its requests get a gRPC-shaped UNIMPLEMENTED naming why.
#[tokio::test(flavor = "multi_thread")]
async fn grpc_web_enabled_by_a_reload_waits_for_an_upgrade() {
    let grpc = PyServer::start("grpc_peer.py", &["server", "--name", "w"]);
    let body = format!(
        "\n[upstreams.g]\nprotocol = \"h2c\"\nbackends = [{{ addr = \"{a}\" }}]\n{web}",
        a = grpc.addr(),
        web = route("web", "test.Echo", "g", ""),
    );
    let gw = Gatehouse::builder()
        .admin(Some(common::ADMIN_TOKEN))
        .start(&body);
    let (head, _) = grpc_web(&gw, "/test.Echo/Unary", "application/grpc-web+proto");
    assert!(head.contains("grpc-status: 12"), "{head}");

    let text = std::fs::read_to_string(gw.config_path()).unwrap();
    gw.write_raw_config(&text.replace("grpc = true\n", "grpc = true\ngrpc_web = true\n"));
    let r = common::json(common::admin_post(&gw, "/admin/reload").await).await;
    assert_eq!(r["result"], "applied", "{r}");
    let needs = r["needs_upgrade"].as_array().unwrap();
    assert!(
        needs
            .iter()
            .any(|n| n.as_str().unwrap().starts_with("routes.grpc_web")),
        "{r}"
    );
    let (head, _) = grpc_web(&gw, "/test.Echo/Unary", "application/grpc-web+proto");
    assert!(head.contains("grpc-status: 12"), "{head}");
    assert!(
        head.contains("grpc-message: grpc-web was enabled by a reload"),
        "{head}"
    );
}

#[test]
fn grpc_over_tls_to_the_gateway_negotiates_h2() {
    let grpc = PyServer::start("grpc_peer.py", &["server", "--name", "t"]);
    let pki = Pki::new("edge");
    let (cert, key) = pki.server("gw", &["gw.test"], 30);
    let tls_port = free_port();
    let gw = Gatehouse::builder()
        .server(&format!(
            "[server.tls]\nlisten = [\"127.0.0.1:{tls_port}\"]\n\
             [[server.tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        ))
        .start(&format!(
            "[upstreams.g]\nprotocol = \"h2c\"\nbackends = [{{ addr = \"{}\" }}]\n{}",
            grpc.addr(),
            route("echo", "test.Echo", "g", "")
        ));
    let ca = pki.ca_path("edge");
    let target = format!("127.0.0.1:{tls_port}");
    let r = run_json(
        "grpc_peer.py",
        &[
            "client",
            &target,
            "/test.Echo/Stream",
            "",
            "--count",
            "2",
            "--tls",
            ca.to_str().unwrap(),
            "gw.test",
        ],
    );
    assert_eq!(r["code"], "OK", "{r}");
    assert_eq!(r["responses"], serde_json::json!(["t:0", "t:1"]));
    drop(gw);
}

#[test]
fn upstream_mtls_presents_the_configured_client_certificate() {
    let pki = Pki::new("internal");
    let (cert, key) = pki.server("backend", &["backend.test"], 30);
    let ca = pki.ca_path("internal");
    let (client_cert, client_key) = pki.client("gateway", "gatehouse", "Acme");
    let backend = PyServer::start(
        "grpc_peer.py",
        &[
            "server",
            "--name",
            "m",
            "--tls",
            cert.to_str().unwrap(),
            key.to_str().unwrap(),
            "--client-ca",
            ca.to_str().unwrap(),
        ],
    );
    let upstream = |name: &str, client: &str| {
        format!(
            "[upstreams.{name}]\nprotocol = \"h2\"\ntls = true\nsni = \"backend.test\"\n\
             ca_file = \"{}\"\nbackends = [{{ addr = \"{}\" }}]\n{client}\n",
            ca.display(),
            backend.addr()
        )
    };
    let body = format!(
        "{}{}{}{}",
        upstream(
            "with_cert",
            &format!(
                "client_cert = \"{}\"\nclient_key = \"{}\"",
                client_cert.display(),
                client_key.display()
            )
        ),
        upstream("without_cert", ""),
        route("with", "test.Echo", "with_cert", ""),
        route("without", "without.Echo", "without_cert", ""),
    );
    let gw = Gatehouse::start(&body);
    let r = call(&gw, "/test.Echo/Unary", "mtls", &[]);
    assert_eq!(r["code"], "OK", "{r}");
    assert_eq!(r["responses"][0], "m:mtls");
    // The backend refuses a gateway without a client certificate.
    let r = call(&gw, "/without.Echo/Unary", "x", &[]);
    assert_eq!(r["code"], "UNAVAILABLE", "{r}");
}
