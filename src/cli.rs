//! Command line (process layer): where the configuration is, whether to only validate it, and the Pingora
//! process options (daemon, upgrade).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Gatehouse: an API gateway on Pingora, configured by one TOML file.
#[derive(Debug, Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "Gatehouse API gateway",
    long_about = "Gatehouse API gateway on Cloudflare's Pingora, configured by one TOML file: \
routing; JWT, API-key and OAuth2 introspection authentication; tiered rate limits and quotas \
(local, kept across upgrades, or shared through Redis); CORS, request and response transforms, \
body limits and request hygiene; load balancing with health checks, circuit breakers (optionally \
shared across instances) and retries; TLS, HTTP/2, gRPC and WebSockets; Prometheus metrics, W3C \
trace context and OpenTelemetry span export, a JSON access log, and an admin API with a live \
status page.\n\n\
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
        default_value = "/etc/gatehouse/gatehouse.toml",
        global = true
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
    /// (Pingora graceful upgrade). Nothing signals the old process: send it SIGQUIT yourself
    /// once this one is ready (with --daemon, when this command returns).
    #[arg(short = 'u', long = "upgrade")]
    pub upgrade: bool,

    /// Maintenance commands (instead of running the gateway).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Maintenance commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage API keys in a keys file (reload the gateway afterwards to apply).
    Keys {
        /// What to do.
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Print a JWT that a configured provider accepts (signed with its HMAC secret, or with
    /// --key for public-key providers; iss and aud from its configuration). A test tool: real
    /// tokens come from your identity provider.
    Token(TokenArgs),
    /// Show how the configuration would treat a request, without starting a server: every
    /// route in precedence order and why it did or did not match, the chosen route's
    /// policies, its upstream and backends.
    Explain {
        /// Request header, 'Name: value' (repeatable); Host here overrides the URL's.
        #[arg(short = 'H', long = "header", value_name = "HEADER")]
        headers: Vec<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Request method, e.g. GET.
        method: String,
        /// URL, e.g. http://api.example.com/orders/42 (or a path with -H 'Host: …').
        url: String,
    },
}

/// Test-token options (`gatehouse token`).
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// The JWT provider (its name in [auth.jwt.NAME]).
    #[arg(long)]
    pub provider: String,
    /// Subject (`sub`, and the provider's consumer claim).
    #[arg(long)]
    pub sub: String,
    /// Extra claim NAME=VALUE (repeatable); JSON values (numbers, arrays, booleans) are
    /// taken as JSON, anything else as a string, e.g. --claim tier=pro --claim 'roles=["admin"]'.
    #[arg(long = "claim", value_name = "NAME=VALUE")]
    pub claims: Vec<String>,
    /// Lifetime (exp = now + TTL), e.g. 15m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: std::time::Duration,
    /// PEM private key, for providers that verify RSA, EC or EdDSA signatures.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
}

/// API key file operations.
#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Generate a key from the OS CSPRNG, append its SHA-256 record to FILE, and print the key
    /// (alone, on stdout; shown only this once). The key id goes to stderr.
    New {
        /// Consumer the key belongs to.
        #[arg(long)]
        consumer: String,
        /// Rate-limit tier.
        #[arg(long)]
        tier: Option<String>,
        /// Scopes, comma-separated (e.g. orders:read,orders:write).
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
        /// Lifetime, e.g. 90d or 12h; default: no expiry.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires: Option<std::time::Duration>,
        /// Keys file (created if missing).
        #[arg(long)]
        file: PathBuf,
    },
    /// Disable the key with this id (the record stays, marked disabled and revoked_at).
    Revoke {
        /// Key id, as printed by `keys new` (key_...).
        id: String,
        /// Keys file.
        #[arg(long)]
        file: PathBuf,
    },
}

/// Runs a maintenance command (`config` is the -c file, for commands that read it); returns
/// the process exit code.
pub fn run_command(command: &Command, config: &std::path::Path) -> u8 {
    use crate::config::keys_file;
    match command {
        Command::Token(args) => token(args, config),
        Command::Explain {
            headers,
            json,
            method,
            url,
        } => explain(config, method, url, headers, *json),
        Command::Keys {
            action:
                KeysAction::New {
                    consumer,
                    tier,
                    scopes,
                    expires,
                    file,
                },
        } => {
            let scopes: Vec<String> = scopes
                .iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            let key = match keys_file::generate(consumer, tier.as_deref(), &scopes, *expires) {
                Ok(k) => k,
                Err(e) => {
                    eprintln!("cannot read the OS random generator: {e}");
                    return 1;
                }
            };
            if let Err(e) = keys_file::append(file, &key.record) {
                eprintln!("{e}");
                return 1;
            }
            println!("{}", key.plain);
            eprintln!(
                "created {} for consumer {consumer} in {}; the key above is shown only once; reload gatehouse to apply",
                key.record.id,
                file.display()
            );
            0
        }
        Command::Keys {
            action: KeysAction::Revoke { id, file },
        } => match keys_file::revoke(file, id) {
            Ok(()) => {
                eprintln!(
                    "revoked {id} in {}; reload gatehouse to apply",
                    file.display()
                );
                0
            }
            Err(e) => {
                eprintln!("{e}");
                1
            }
        },
    }
}

/// `gatehouse token`.
fn token(args: &TokenArgs, config: &std::path::Path) -> u8 {
    let config = match crate::config::load(config) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return 1;
        }
    };
    let Some(spec) = config.auth.jwt().find(|j| j.name == args.provider) else {
        let known: Vec<&str> = config.auth.jwt().map(|j| j.name.as_str()).collect();
        eprintln!(
            "no JWT provider \"{}\" in the configuration (known: {})",
            args.provider,
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        );
        return 1;
    };
    let key = match &args.key {
        Some(path) => match std::fs::read(path) {
            Ok(k) => Some(k),
            Err(e) => {
                eprintln!("cannot read {}: {e}", path.display());
                return 1;
            }
        },
        None => None,
    };
    let request = crate::auth::mint::Request {
        subject: &args.sub,
        claims: &args.claims,
        ttl: args.ttl,
        private_key: key.as_deref(),
    };
    match crate::auth::mint::mint(spec, &request) {
        Ok(token) => {
            println!("{token}");
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

/// `gatehouse explain`.
fn explain(
    config: &std::path::Path,
    method: &str,
    url: &str,
    headers: &[String],
    json: bool,
) -> u8 {
    let config = match crate::config::load(config) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return 1;
        }
    };
    let Ok(method) = http::Method::from_bytes(method.to_ascii_uppercase().as_bytes()) else {
        eprintln!("invalid method \"{method}\"");
        return 2;
    };
    let request = crate::explain::Request {
        method,
        url: url.to_string(),
        headers: headers.to_vec(),
    };
    match crate::explain::explain(&config, &request) {
        Ok(v) if json => {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            0
        }
        Ok(v) => {
            print!("{}", crate::explain::render_text(&v));
            0
        }
        Err(e) => {
            eprintln!("{e}");
            2
        }
    }
}
