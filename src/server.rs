//! Builds and runs the Pingora server from a validated configuration (top layer): process
//! settings, the bootstrap (socket handover) service, the proxy and admin listeners, the live
//! gauges, and the background services of [`crate::services`].

use std::sync::Arc;

use pingora::apps::HttpServerOptions;
use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::admin::AdminApp;
use crate::cli::Cli;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::listener::EdgeApp;
use crate::proxy::Gateway;
use crate::services::access_log::AccessLogWriter;
use crate::services::handover::{load_or_create_seed, HandoverService, Paths, Reader, Writer};
use crate::services::health::HealthService;
use crate::services::jwks::JwksService;
use crate::services::ratelimit::RateLimitService;
use crate::services::reload::{Reloader, SighupService, WatchService};
use crate::snapshot::gauges::LiveGauges;
use crate::snapshot::{Snapshot, SnapshotStore};

/// Pingora's settings for our configuration. Durations are rounded up to whole seconds, the
/// unit Pingora takes.
pub fn server_conf(config: &Config, cli: &Cli) -> ServerConf {
    let s = &config.server;
    let ceil_secs = |d: std::time::Duration| d.as_secs() + u64::from(d.subsec_nanos() > 0);
    ServerConf {
        threads: s.threads,
        // One runtime per thread: measured faster for proxying, and no task migration.
        work_stealing: false,
        pid_file: s.pid_file.to_string_lossy().into_owned(),
        upgrade_sock: s.upgrade_sock.to_string_lossy().into_owned(),
        grace_period_seconds: Some(ceil_secs(s.grace_period)),
        graceful_shutdown_timeout_seconds: Some(ceil_secs(s.graceful_shutdown_timeout)),
        daemon: cli.daemon,
        // With --daemon, return only once the new process is ready and waiting for the
        // listening sockets (see the README's upgrade section for why this order matters).
        daemon_wait_for_ready: true,
        ..ServerConf::default()
    }
}

/// A TCP listener on `addr` whose connections keep `read_buffer` bytes of read buffer
/// (Pingora's default is 64 KiB per connection; see `[server] read_buffer`) and Pingora's
/// default write buffer (one MSS, 1 460 bytes), which coalesces a response's head and body
/// into one send.
fn listener(addr: &std::net::SocketAddr, read_buffer: usize) -> ListenerConfig {
    ListenerConfig::tcp(addr.to_string()).l4_buffer(L4BufferSettings::default().read(read_buffer))
}

/// Runs the gateway until it is told to stop. Does not return.
pub fn run(config: Config, cli: &Cli) -> ! {
    let opt = Opt {
        upgrade: cli.upgrade,
        daemon: cli.daemon,
        ..Opt::default()
    };
    let conf = server_conf(&config, cli);
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    // As a service, bootstrap runs after daemonising, so the parent is told "ready" before the
    // new process waits for the old one's sockets; the listeners depend on it.
    let bootstrap = server.bootstrap_as_a_service();

    // Local rate-limit keys hash with a seed kept beside the upgrade socket, so that the new
    // process of an upgrade can take over the old one's counters (services::handover).
    let handover_paths = Paths::beside(&config.server.upgrade_sock);
    crate::ratelimit::set_key_seed(load_or_create_seed(&handover_paths.seed));
    let phases = server.watch_execution_phase();

    let metrics = Metrics::new();
    let store = SnapshotStore::new(Snapshot::build(config.clone(), None, &metrics));
    metrics.register(Box::new(LiveGauges::new(store.clone())));
    let reloader = Arc::new(Reloader::new(
        config.source.clone(),
        store.clone(),
        Arc::clone(&metrics),
        config.clone(),
    ));
    let (access_log, access_log_lines) =
        crate::access_log::new(&config.access_log, metrics.access_log_dropped.clone());

    let cache = crate::cache::Cache::install(&config.cache, metrics.cache_storage());
    let tls_conns = Arc::new(crate::tls::Connections::default());
    let pingora_conf = Arc::clone(&server.configuration);
    let http = |h2c: bool| {
        let mut http = pingora::proxy::http_proxy(
            &pingora_conf,
            Gateway::new(
                store.clone(),
                Arc::clone(&metrics),
                access_log.clone(),
                Arc::clone(&tls_conns),
                cache,
            ),
        );
        let mut options = HttpServerOptions::default();
        options.h2c = h2c;
        let limits = &config.server.limits;
        let h2 = &config.server.http2;
        options.h2_idle_timeout = Some(h2.idle_timeout(limits));
        http.server_options = Some(options);
        http.h2_options = Some(h2_options(h2, limits));
        http
    };
    // The edge app wraps each connection to enforce the head deadline and see raw request
    // lines (see proxy::listener).
    let mut proxy = Service::new(
        "gatehouse proxy".to_string(),
        EdgeApp::new(
            http(true),
            store.clone(),
            metrics.edge_head_timeouts.clone(),
            None,
        ),
    );
    for addr in &config.server.listen {
        proxy.add_listener(listener(addr, config.server.read_buffer));
    }
    proxy.threads = Some(config.server.threads);
    server.add_service(proxy).add_dependency(&bootstrap);
    if let Some(tls) = &config.server.tls {
        // TLS listeners: plain TCP listeners whose app runs the handshake (see proxy::tls).
        let rustls = match crate::proxy::tls::server_config(tls, store.clone()) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("cannot set up TLS: {e}");
                std::process::exit(1);
            }
        };
        let entry = crate::proxy::tls::TlsEntry::new(
            rustls,
            Arc::clone(&tls_conns),
            metrics.tls_handshake_failures(),
        );
        let mut service = Service::new(
            "gatehouse tls".to_string(),
            EdgeApp::new(
                http(false),
                store.clone(),
                metrics.edge_head_timeouts.clone(),
                Some(entry),
            ),
        );
        for addr in &tls.listen {
            service.add_listener(listener(addr, tls.read_buffer));
        }
        service.threads = Some(config.server.threads);
        server.add_service(service).add_dependency(&bootstrap);
    }

    if let Some(admin) = &config.admin {
        let mut service = Service::new(
            "gatehouse admin".to_string(),
            AdminApp::new(
                store.clone(),
                Arc::clone(&metrics),
                Arc::clone(&reloader),
                cache,
            ),
        );
        service.add_listener(listener(&admin.listen, 0));
        service.threads = Some(1);
        server.add_service(service).add_dependency(&bootstrap);
    }

    server.add_service(background_service(
        "health checks",
        HealthService::new(store.clone()),
    ));
    server.add_service(background_service(
        "incident reports",
        crate::services::incidents::IncidentService::new(store.clone()),
    ));
    server.add_service(background_service(
        "jwks refresh",
        JwksService::new(store.clone()),
    ));
    server.add_service(background_service(
        "config watch",
        WatchService::new(Arc::clone(&reloader), store.clone()),
    ));
    let handover = Arc::new(Writer::new(store.clone(), handover_paths.handover.clone()));
    let successor = cli.upgrade.then(|| {
        Reader::new(
            store.clone(),
            handover_paths.handover.clone(),
            std::time::SystemTime::now(),
        )
    });
    server.add_service(background_service(
        "rate limit hand-over",
        HandoverService::new(Arc::clone(&handover), successor, phases),
    ));
    if let Some(breakers) = crate::services::breakers::SharedBreakerService::new(
        &config,
        store.clone(),
        metrics.circuit_peer_transitions.clone(),
        metrics.circuit_shared_errors.clone(),
    ) {
        server.add_service(background_service("shared circuit breakers", breakers));
    }
    if let Some(spans) = crate::services::spans::SpanExportService::new(
        config.tracing.clone(),
        metrics.tracing_spans(),
    ) {
        server.add_service(background_service("span export", spans));
    }
    server.add_service(background_service(
        "rate limit upkeep",
        RateLimitService::new(store),
    ));
    server.add_service(background_service(
        "sighup reload",
        SighupService::new(reloader),
    ));
    if let Some(lines) = access_log_lines {
        server.add_service(background_service(
            "access log",
            AccessLogWriter::new(lines),
        ));
    }
    log::info!(
        "gatehouse {} starting: traffic on {:?}, admin on {:?}",
        env!("CARGO_PKG_VERSION"),
        config.server.listen,
        config.admin.as_ref().map(|a| a.listen)
    );
    server.run(RunArgs::default());
    // Every request has finished: an upgrading process hands its final counters over.
    if handover.upgrading() {
        handover.write(true);
    }
    std::process::exit(0)
}

/// The downstream HTTP/2 settings, starting from Pingora's defaults.
fn h2_options(
    h2: &crate::config::server::Http2Settings,
    limits: &crate::config::Limits,
) -> pingora::protocols::http::v2::server::H2Options {
    let mut options = pingora::protocols::http::v2::server::default_h2_options();
    options
        .max_concurrent_streams(h2.max_concurrent_streams)
        .max_header_list_size(h2.header_list_size(limits))
        .max_pending_accept_reset_streams(h2.max_pending_reset_streams as usize)
        .max_local_error_reset_streams(Some(h2.max_local_error_resets as usize));
    options
}
