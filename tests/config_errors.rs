//! Configuration problems are reported all at once, each as FILE:LINE:COLUMN: KEY.PATH:
//! MESSAGE. Each case runs in-process through the library (`config::parse`); a few end-to-end
//! cases run `gatehouse -t` to check the exit codes and the summary line. The shipped
//! configuration files must validate.

mod common;
use common::check_config;

/// The file name the in-process cases pretend to read.
const FILE: &str = "/etc/gatehouse/gatehouse.toml";

/// Asserts that `config` is rejected with a problem `FILE:{at}: {expected}`.
fn rejects(config: &str, at: &str, expected: &str) {
    let errors = match gatehouse::config::parse(std::path::Path::new(FILE), config) {
        Ok(_) => panic!("accepted:\n{config}"),
        Err(e) => e.to_string(),
    };
    let want = format!("{FILE}:{at}: {expected}");
    assert!(
        errors.lines().any(|l| l.starts_with(&want)),
        "expected a line starting with\n  {want}\ngot:\n{errors}"
    );
}

const UPSTREAM: &str = "[upstreams.users]\nbackends = [{ addr = \"127.0.0.1:9001\" }]\n";

#[test]
fn toml_syntax_error() {
    rejects("[server\nlisten = []\n", "1:8", "TOML syntax error");
}

#[test]
fn unknown_key() {
    rejects(
        &format!("{UPSTREAM}[[routes]]\nname = \"a\"\npath_prefix = \"/\"\nupstream = \"users\"\nupstrem = \"x\"\n"),
        "7:1",
        "routes[0].upstrem: unknown key \"upstrem\"",
    );
}

#[test]
fn wrong_type() {
    rejects(
        "[server]\nthreads = \"two\"\n",
        "2:11",
        "server.threads: expected an integer, found string",
    );
}

#[test]
fn unknown_upstream() {
    rejects(
        &format!(
            "{UPSTREAM}[[routes]]\nname = \"a\"\npath_prefix = \"/\"\nupstream = \"payments\"\n"
        ),
        "6:12",
        "routes[0].upstream: unknown upstream \"payments\"",
    );
}

#[test]
fn duplicate_route_name() {
    rejects(
        &format!("{UPSTREAM}[[routes]]\nname = \"a\"\npath_prefix = \"/\"\nupstream = \"users\"\n[[routes]]\nname = \"a\"\npath_prefix = \"/b\"\nupstream = \"users\"\n"),
        "8:8",
        "routes[1].name: duplicate route name \"a\"",
    );
}

#[test]
fn invalid_address_and_cidr() {
    rejects(
        "[server]\nlisten = [\"localhost\"]\n",
        "2:11",
        "server.listen[0]: invalid listen address",
    );
    rejects(
        "[server]\ntrusted_proxies = [\"10.0.0.0/33\"]\n",
        "2:20",
        "server.trusted_proxies[0]: invalid CIDR",
    );
    rejects(
        "[upstreams.u]\nbackends = [{ addr = \"127.0.0.1\" }]\n",
        "2:22",
        "upstreams.u.backends[0].addr: invalid backend address",
    );
}

#[test]
fn weight_zero() {
    rejects(
        "[upstreams.u]\nbackends = [{ addr = \"127.0.0.1:1\", weight = 0 }]\n",
        "2:46",
        "upstreams.u.backends[0].weight: must be an integer from 1 to 1000",
    );
}

#[test]
fn invalid_regex() {
    rejects(
        &format!(
            "{UPSTREAM}[[routes]]\nname = \"a\"\npath_regex = \"([a-z\"\nupstream = \"users\"\n"
        ),
        "5:14",
        "routes[0].path_regex: invalid regex \"([a-z\"",
    );
}

#[test]
fn bad_duration() {
    rejects(
        "[upstreams.u]\nbackends = [{ addr = \"127.0.0.1:1\" }]\nread_timeout = \"30 parsecs\"\n",
        "3:16",
        "upstreams.u.read_timeout: invalid duration \"30 parsecs\"",
    );
}

#[test]
fn route_without_path_matcher() {
    rejects(
        &format!("{UPSTREAM}\n[[routes]]\nname = \"a\"\nupstream = \"users\"\n"),
        "4:1",
        "routes[0]: route has no path matcher",
    );
}

#[test]
fn consistent_hash_without_hash_key() {
    rejects(
        "[upstreams.u]\nbalance = \"consistent_hash\"\nbackends = [{ addr = \"127.0.0.1:1\" }]\n",
        "1:1",
        "upstreams.u: balance = \"consistent_hash\" needs hash_key",
    );
}

#[test]
fn every_problem_is_reported_at_once_in_file_order() {
    let config = r#"[server]
threads = 0
bogus = true

[upstreams.u]
balance = "fastest"
backends = [{ addr = "127.0.0.1:1", weight = 0 }]

[[routes]]
name = "a"
upstream = "nope"
"#;
    let (code, stderr, file) = check_config(config);
    assert_eq!(code, 1);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with(&file) && !l.contains("configuration is invalid"))
        .collect();
    let expected = [
        "2:11: server.threads",
        "3:1: server.bogus",
        "6:11: upstreams.u.balance",
        "7:46: upstreams.u.backends[0].weight",
        "9:1: routes[0]: route has no path matcher",
        "11:12: routes[0].upstream",
    ];
    assert_eq!(lines.len(), expected.len(), "{stderr}");
    for (line, want) in lines.iter().zip(expected) {
        assert!(
            line.starts_with(&format!("{file}:{want}")),
            "{line} vs {want}"
        );
    }
    assert!(
        stderr.contains("configuration is invalid (6 problems)"),
        "{stderr}"
    );
}

#[test]
fn unknown_keys_list_the_keys_the_schema_reads() {
    let errors = gatehouse::config::parse(
        std::path::Path::new(FILE),
        "[upstreams.u]\nbackends = [{ addr = \"127.0.0.1:1\" }]\nread_timout = \"1s\"\n",
    )
    .unwrap_err()
    .to_string();
    let line = errors
        .lines()
        .find(|l| l.contains("upstreams.u.read_timout: unknown key"))
        .unwrap_or_else(|| panic!("{errors}"));
    for known in ["read_timeout", "connect_timeout", "health_check", "retry"] {
        assert!(line.contains(known), "{line}");
    }
}

#[test]
fn a_key_that_does_not_apply_is_reported_not_ignored() {
    rejects(
        "[auth.jwt.a]\nalgorithms = [\"HS256\"]\nsecret_env = \"GATEHOUSE_SURELY_UNSET_SECRET\"\njwks_refresh = \"1m\"\n",
        "4:16",
        "auth.jwt.a.jwks_refresh: jwks_refresh applies only with jwks_url",
    );
}

#[test]
fn valid_file_exits_zero() {
    let (code, stderr, _) = check_config(&format!(
        "{UPSTREAM}[[routes]]\nname = \"a\"\npath_prefix = \"/\"\nupstream = \"users\"\n"
    ));
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn shipped_configuration_files_are_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    // The reference file is validated in place: relative paths in it are relative to conf/.
    let reference = root.join("conf/gatehouse.toml");
    // The demo file refers to the keys file and the secret scripts/demo.sh makes: validated as
    // shipped, from a copy beside an empty keys file at the place it names.
    let demo = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(demo.path().join("conf")).unwrap();
    std::fs::create_dir_all(demo.path().join("target/demo")).unwrap();
    std::fs::write(demo.path().join("target/demo/keys.toml"), "").unwrap();
    let dev = demo.path().join("conf/dev.toml");
    std::fs::copy(root.join("conf/dev.toml"), &dev).unwrap();
    for path in [reference, dev] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .arg("-t")
            .arg("-c")
            .arg(&path)
            .env_remove("GATEHOUSE_ADMIN_TOKEN")
            .env(
                "GATEHOUSE_DEMO_JWT_SECRET",
                "demo-secret-for-local-tests-only-0123456789",
            )
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} is invalid:\n{}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn auth_provider_problems_are_reported() {
    let rsa_pub = format!(
        "{}/tests/fixtures/keys/rsa1.pub",
        env!("CARGO_MANIFEST_DIR")
    );
    rejects(
        "[auth.jwt.a]\nalgorithms = [\"HS256\", \"RS256\"]\nsecret_env = \"X\"\n",
        "2:14",
        "auth.jwt.a.algorithms: HMAC and public-key algorithms cannot be mixed",
    );
    rejects(
        "[auth.jwt.a]\nalgorithms = [\"HS256\"]\nsecret_env = \"GATEHOUSE_SURELY_UNSET_SECRET\"\n",
        "3:14",
        "auth.jwt.a.secret_env: $GATEHOUSE_SURELY_UNSET_SECRET must hold an HMAC secret of at least 32 bytes",
    );
    rejects(
        &format!("[auth.jwt.a]\nalgorithms = [\"ES256\"]\npublic_key_file = \"{rsa_pub}\"\n"),
        "3:19",
        "auth.jwt.a.public_key_file:",
    );
    rejects(
        "[auth.jwt.a]\nalgorithms = [\"RS999\"]\njwks_url = \"https://x/\"\n",
        "2:15",
        "auth.jwt.a.algorithms[0]: unknown algorithm",
    );
    rejects(
        "[auth.jwt.a]\nalgorithms = [\"RS256\"]\n",
        "1:1",
        "auth.jwt.a: set one key source",
    );
    rejects(
        &format!("{UPSTREAM}[[routes]]\nname = \"a\"\npath_prefix = \"/\"\nupstream = \"users\"\nauth = [\"jwt:nope\"]\n"),
        "7:9",
        "routes[0].auth[0]: unknown auth provider \"jwt:nope\"",
    );
    rejects(
        &format!("{UPSTREAM}[[routes]]\nname = \"a\"\npath_prefix = \"/\"\nupstream = \"users\"\nrequire_scopes = [\"x\"]\n"),
        "3:1",
        "routes[0]: require_roles / require_scopes need auth on the route",
    );
}

#[test]
fn rate_limit_problems_are_reported() {
    rejects(
        "[rate_limit]\nstore = \"redis\"\n",
        "1:1",
        "rate_limit: store = \"redis\" needs redis_url or redis_cluster",
    );
    rejects(
        "[rate_limit]\nredis_url = \"http://x\"\n",
        "2:13",
        "rate_limit.redis_url: invalid Redis URL",
    );
    rejects(
        "[rate_limit]\non_store_error = \"panic\"\n",
        "2:18",
        "rate_limit.on_store_error: unknown policy",
    );
    rejects(
        "[rate_limit.tiers.free]\nrps = 0\nburst = 1\n",
        "2:7",
        "rate_limit.tiers.free.rps: must be an integer from 1",
    );
    rejects(
        "[rate_limit.tiers.free]\nrps = 1\n",
        "1:1",
        "rate_limit.tiers.free: missing required key \"burst\"",
    );
    rejects(
        &format!("[rate_limit.tiers.free]\nrps = 1\nburst = 1\n{UPSTREAM}[[routes]]\nname = \"a\"\npath_prefix = \"/\"\nupstream = \"users\"\nrate_limit = {{ key = \"client_ip\", default_tier = \"gold\" }}\n"),
        "10:50",
        "routes[0].rate_limit.default_tier: unknown tier \"gold\"",
    );
    rejects(
        &format!("[rate_limit.tiers.free]\nrps = 1\nburst = 1\n{UPSTREAM}[[routes]]\nname = \"a\"\npath_prefix = \"/\"\nupstream = \"users\"\nrate_limit = {{ key = \"consumer\", default_tier = \"free\" }}\n"),
        "10:22",
        "routes[0].rate_limit.key: key = \"consumer\" needs auth",
    );
}

#[test]
fn resilience_problems_are_reported() {
    rejects(
        "[upstreams.u]\nbackends = [{ addr = \"127.0.0.1:1\" }]\n[upstreams.u.retry]\nmethods = [\"GET\", \"POST\"]\n",
        "4:19",
        "upstreams.u.retry.methods[1]: POST is not idempotent",
    );
    rejects(
        "[upstreams.u]\nbackends = [{ addr = \"127.0.0.1:1\" }]\n[upstreams.u.circuit_breaker]\nfailure_ratio = 1.5\n",
        "4:17",
        "upstreams.u.circuit_breaker.failure_ratio: failure_ratio must be in (0, 1]",
    );
    rejects(
        "[upstreams.u]\nbackends = [{ addr = \"127.0.0.1:1\" }]\n[upstreams.u.retry]\non = [\"5xx\"]\n",
        "4:7",
        "upstreams.u.retry.on[0]: \"5xx\" is not allowed here",
    );
    rejects(
        &format!("{UPSTREAM}[[routes]]\nname = \"a\"\npath_prefix = \"/\"\nupstream = \"users\"\nadaptive_limit = true\n"),
        "3:1",
        "routes[0]: adaptive_limit needs rate_limit on the route",
    );
}

#[test]
fn cache_problems_are_reported() {
    let route =
        format!("{UPSTREAM}[[routes]]\nname = \"a\"\npath_prefix = \"/\"\nupstream = \"users\"\n");
    rejects(
        &format!("{route}[routes.cache]\nmethods = [\"GET\", \"POST\"]\n"),
        "8:19",
        "routes[0].cache.methods[1]: \"POST\" responses are not cached (only GET and HEAD)",
    );
    rejects(
        &format!("{route}[routes.cache]\nstatuses = [200, 500]\n"),
        "8:18",
        "routes[0].cache.statuses[1]: 500 responses are not cached",
    );
    rejects(
        &format!("{route}[routes.cache]\nttl = \"10m\"\nmax_ttl = \"1m\"\n"),
        "9:11",
        "routes[0].cache.max_ttl: ttl must not exceed max_ttl",
    );
    rejects(
        &format!("{route}[routes.cache]\nkey = [\"path\", \"cookie\"]\n"),
        "8:16",
        "routes[0].cache.key[1]: unknown key part \"cookie\"",
    );
    rejects(
        &format!("{route}[routes.cache]\nkey = [\"path\", \"consumer\"]\n"),
        "8:7",
        "routes[0].cache.key: \"consumer\" in the key needs auth on the route",
    );
    rejects(
        &format!("{route}[routes.cache]\nkey = [\"query\"]\n"),
        "8:7",
        "routes[0].cache.key: key must include \"path\"",
    );
    rejects(
        &format!("{route}[routes.cache]\nttl_seconds = 5\n"),
        "8:1",
        "routes[0].cache.ttl_seconds: unknown key",
    );
    rejects(
        "[cache]\nmax_size = \"1MiB\"\nmax_object_size = \"2MiB\"\n",
        "3:19",
        "cache.max_object_size: max_object_size must not exceed max_size",
    );
    // An authenticated route keeps consumers apart unless it says they share.
    let authenticated = format!(
        "[auth.jwt.j]\nalgorithms = [\"RS256\"]\npublic_key_file = \"{}/tests/fixtures/keys/rsa1.pub\"\n{UPSTREAM}[[routes]]\nname = \"a\"\npath_prefix = \"/\"\nupstream = \"users\"\nauth = [\"jwt:j\"]\n[routes.cache]\n",
        env!("CARGO_MANIFEST_DIR")
    );
    rejects(
        &format!("{authenticated}key = [\"path\"]\n"),
        "12:7",
        "routes[0].cache.key: on an authenticated route the key must include \"consumer\"",
    );
    let ok = format!("{authenticated}key = [\"path\"]\nshared = true\n");
    let config = gatehouse::config::parse(std::path::Path::new(FILE), &ok).expect("valid");
    assert!(config.routes[0].cache.as_ref().unwrap().shared);
    let default_key = format!("{authenticated}ttl = \"5s\"\n");
    let config = gatehouse::config::parse(std::path::Path::new(FILE), &default_key).expect("valid");
    assert_eq!(
        config.routes[0].cache.as_ref().unwrap().key,
        [
            gatehouse::config::cache::KeyPart::Path,
            gatehouse::config::cache::KeyPart::Query,
            gatehouse::config::cache::KeyPart::Consumer
        ]
    );
}

#[test]
fn upstream_protocol_problems_are_reported() {
    let u = "[upstreams.u]\nbackends = [{ addr = \"127.0.0.1:9001\" }]\n";
    rejects(
        &format!("{u}protocol = \"h3\"\n"),
        "3:12",
        "upstreams.u.protocol: unknown protocol \"h3\" (expected http1, h2 or h2c)",
    );
    rejects(
        &format!("{u}protocol = \"h2\"\n"),
        "1:1",
        "upstreams.u: protocol = \"h2\" needs tls = true",
    );
    rejects(
        &format!("{u}sni = \"a.internal\"\n"),
        "3:7",
        "upstreams.u.sni: sni applies only with tls = true",
    );
    rejects(
        &format!("{u}protocol = \"h2\"\ntls = true\nca_file = \"/nonexistent/ca.pem\"\n"),
        "5:11",
        "upstreams.u.ca_file: cannot read /nonexistent/ca.pem",
    );
    rejects(
        &format!("{u}tls = true\nclient_cert = \"/x.pem\"\n"),
        "4:15",
        "upstreams.u.client_cert: client_cert and client_key go together",
    );
    rejects(
        &format!("{u}health_check = {{ type = \"grpc\" }}\n"),
        "3:16",
        "upstreams.u.health_check: a grpc health check needs protocol",
    );
    rejects(
        &format!("{u}[upstreams.u.sticky]\ncookie = \"a b\"\nsecret_env = \"GATEHOUSE_UNSET_VAR_FOR_TEST\"\n"),
        "4:10",
        "upstreams.u.sticky.cookie: invalid cookie name \"a b\"",
    );
    rejects(
        &format!("{u}[upstreams.u.sticky]\ncookie = \"ok\"\nsecret_env = \"GATEHOUSE_UNSET_VAR_FOR_TEST\"\n"),
        "5:14",
        "upstreams.u.sticky.secret_env: $GATEHOUSE_UNSET_VAR_FOR_TEST must hold a signing key of at least 32 bytes",
    );
}

#[test]
fn http2_settings_are_checked() {
    rejects(
        "[server.http2]\nmax_concurrent_streams = 0\n",
        "2:26",
        "server.http2.max_concurrent_streams:",
    );
    rejects(
        "[server.http2]\nmax_header_list_size = \"100B\"\n",
        "2:24",
        "server.http2.max_header_list_size: max_header_list_size must be at least 1 KiB",
    );
}

#[test]
fn help_describes_what_the_binary_does_and_that_sigquit_is_sent_by_hand() {
    let out = std::process::Command::new(common::Gatehouse::binary())
        .arg("--help")
        .output()
        .expect("gatehouse --help");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for capability in [
        "authentication",
        "rate limits",
        "CORS",
        "circuit breakers",
        "TLS, HTTP/2, gRPC and WebSockets",
        "admin API",
    ] {
        assert!(
            text.contains(capability),
            "--help lacks {capability}: {text}"
        );
    }
    assert!(text.contains("send it SIGQUIT yourself"), "{text}");
}

#[test]
fn the_rendered_configuration_is_complete_and_redacted() {
    // What /admin/config serves: every section and every key, secrets and URL passwords
    // redacted (the admin test checks the endpoint itself).
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/gatehouse.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("redis_url = \"redis://127.0.0.1:6379/0\""));
    text = text.replacen(
        "redis_url = \"redis://127.0.0.1:6379/0\"",
        "redis_url = \"redis://:hunter2-password@127.0.0.1:6379/0\"",
        1,
    );
    let config = gatehouse::config::parse(&path, &text).expect("valid");
    let rendered = config.render();
    let json = rendered.to_string();
    assert!(
        !json.contains("hunter2-password"),
        "password leaked: {json}"
    );
    for section in [
        "server",
        "auth",
        "rate_limit",
        "upstreams",
        "routes",
        "access_log",
    ] {
        assert!(rendered.get(section).is_some(), "no {section}: {json}");
    }
    let routes = rendered["routes"].as_array().unwrap();
    let has = |key: &str| routes.iter().any(|r| !r[key].is_null());
    for key in ["auth", "require_roles", "rate_limit", "timeout"] {
        assert!(has(key), "no route shows {key}: {json}");
    }
    let upstreams = rendered["upstreams"].as_array().unwrap();
    let has = |key: &str| upstreams.iter().any(|u| !u[key].is_null());
    for key in ["circuit_breaker", "retry", "max_inflight"] {
        assert!(has(key), "no upstream shows {key}: {json}");
    }
}
