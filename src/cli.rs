//! Command line: where the configuration is, whether to only validate it, and the Pingora
//! process options (daemon, upgrade).

use std::path::PathBuf;

use clap::Parser;

/// Gatehouse: an API gateway on Pingora, configured by one TOML file.
#[derive(Debug, Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "Gatehouse API gateway",
    long_about = "Gatehouse API gateway: routing, load balancing and active health checks on \
Cloudflare's Pingora, configured by one TOML file.\n\n\
Exit status: 0 on success (or a valid file with --test), 1 when the configuration is invalid \
(every problem is printed as FILE:LINE:COLUMN: KEY.PATH: MESSAGE), 2 on command-line misuse.\n\n\
Zero-downtime upgrade: start the new process with --daemon --upgrade (it waits for the old \
process's listening sockets on [server] upgrade_sock), then send SIGQUIT to the old process."
)]
pub struct Cli {
    /// Configuration file.
    #[arg(
        short = 'c',
        long = "config",
        value_name = "FILE",
        default_value = "/etc/gatehouse/gatehouse.toml"
    )]
    pub config: PathBuf,

    /// Validate the configuration file, print every problem, and exit (0 valid, 1 invalid).
    #[arg(short = 't', long = "test")]
    pub test: bool,

    /// Run in the background (Pingora daemon mode; writes [server] pid_file and returns once the
    /// daemon is ready).
    #[arg(short = 'd', long = "daemon")]
    pub daemon: bool,

    /// Take the listening sockets over from a running gatehouse through [server] upgrade_sock
    /// (Pingora graceful upgrade); the old process is then sent SIGQUIT.
    #[arg(short = 'u', long = "upgrade")]
    pub upgrade: bool,
}
