//! Builds and runs the Pingora server from a validated configuration: process settings,
//! the proxy service with its listeners, and the health-check background service.

use pingora::apps::HttpServerOptions;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::background_service;

use crate::cli::Cli;
use crate::config::Config;
use crate::proxy::Gateway;
use crate::snapshot::{Snapshot, SnapshotStore};
use crate::upstream::health::HealthService;

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
        // With --daemon, return only once the new process is ready (see the README's upgrade
        // section for why this order matters).
        daemon_wait_for_ready: true,
        ..ServerConf::default()
    }
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
    server.bootstrap();

    let listen = config.server.listen.clone();
    let threads = config.server.threads;
    let store = SnapshotStore::new(Snapshot::build(config, None));

    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        Gateway::new(store.clone()),
        "gatehouse proxy",
    );
    for addr in &listen {
        proxy.add_tcp(&addr.to_string());
    }
    proxy.threads = Some(threads);
    if let Some(app) = proxy.app_logic_mut() {
        let mut options = HttpServerOptions::default();
        options.h2c = true;
        app.server_options = Some(options);
    }

    let health = background_service("health checks", HealthService::new(store));
    server.add_service(proxy);
    server.add_service(health);
    log::info!(
        "gatehouse {} listening on {:?}",
        env!("CARGO_PKG_VERSION"),
        listen
    );
    server.run_forever()
}
