//! The `gatehouse` binary: install the SIGHUP handler, parse the command line, load the
//! configuration, run.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use gatehouse::cli::Cli;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // First: SIGHUP's default action would kill the process.
    if let Err(e) = gatehouse::signals::install() {
        eprintln!("cannot install signal handlers: {e}");
        return ExitCode::from(1);
    }
    let cli = Cli::parse();
    if let Some(command) = &cli.command {
        return ExitCode::from(gatehouse::cli::run_command(command, &cli.config));
    }
    // rustls logs every client that sends an IP address as SNI (common: wrk, some SDKs) at
    // WARN: one line per handshake is a log flood an attacker can drive, so its messages
    // about client input are kept to errors unless RUST_LOG names rustls::msgs itself.
    let mut logger = env_logger::Builder::new();
    logger.filter_level(log::LevelFilter::Info);
    logger.filter_module("rustls::msgs", log::LevelFilter::Error);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        logger.parse_filters(&spec);
    }
    logger.init();
    let config = match gatehouse::config::load(&cli.config) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "{}: configuration is invalid ({} problem{})",
                cli.config.display(),
                errors.0.len(),
                if errors.0.len() == 1 { "" } else { "s" }
            );
            return ExitCode::from(1);
        }
    };
    for w in &config.warnings {
        eprintln!("warning: {w}");
    }
    if cli.test {
        println!("{}: configuration is valid", cli.config.display());
        return ExitCode::SUCCESS;
    }
    gatehouse::server::run(config, &cli)
}
