//! The `snirelay` command: argument parsing, logging and exit codes. The relay's life
//! (start-up, signals, shutdown, upgrades) is the library's `lifecycle`; the operator's
//! commands are `commands` over the library's `cli`.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use snirelay::cli;

mod commands;
use snirelay::config::{Config, Listener};
use snirelay::lifecycle::{self, Options};
use snirelay::reload::Fixed;
use snirelay::resolve::Override;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The allocator in use, for `--version`.
const ALLOCATOR_NAME: &str = if cfg!(feature = "mimalloc") {
    "mimalloc"
} else if cfg!(target_env = "musl") {
    "system (musl)"
} else {
    "system (glibc)"
};

/// `snirelay --version`: what was built, from which commit, for which machine.
fn long_version() -> &'static str {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| {
        format!(
            "{} (commit {}, target {}, allocator {ALLOCATOR_NAME})",
            env!("CARGO_PKG_VERSION"),
            env!("SNIRELAY_COMMIT"),
            env!("SNIRELAY_TARGET"),
        )
    })
}

/// SNI-passthrough TCP relay: forwards TLS connections for allowlisted names without
/// terminating TLS.
#[derive(Parser)]
#[command(version = long_version())]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay until SIGINT or SIGTERM.
    Run {
        /// The rules file [default: ./rules.json, else /etc/snirelay/rules.json].
        #[arg(long)]
        config: Option<PathBuf>,
        /// Listen here instead of the config's `listen` (repeatable).
        #[arg(long = "listen", value_name = "ADDR")]
        listen: Vec<SocketAddr>,
        /// Serve /metrics, /healthz and /readyz here instead of the config's `admin`.
        #[arg(long, value_name = "ADDR")]
        admin: Option<SocketAddr>,
        /// Use this address for NAME instead of DNS, like curl's --resolve (repeatable).
        #[arg(long = "resolve", value_name = "NAME=IP[:PORT]")]
        resolve: Vec<Override>,
        /// Log line format.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
        /// Upgrades without systemd: take the listening sockets of the relay serving this
        /// Unix socket, if one is, and offer ours here to the next one.
        #[arg(long, value_name = "PATH")]
        upgrade_socket: Option<PathBuf>,
    },
    /// Validate a rules file; print a summary, the effective rules and any warnings.
    Check {
        /// The rules file [default: ./rules.json, else /etc/snirelay/rules.json].
        #[arg(long)]
        config: Option<PathBuf>,
        /// For an edge relay: the far relay's rules file, to check that its listener waits
        /// longer for a PROXY header than the edge keeps a ready connection.
        #[arg(long, value_name = "FILE", conflicts_with = "edge")]
        far: Option<PathBuf>,
        /// For a far relay: an edge relay's rules file, the same check from this side.
        #[arg(long, value_name = "FILE")]
        edge: Option<PathBuf>,
    },
    /// From a client machine: a TLS handshake through the relay for NAME (or, with --all,
    /// for every exact name in the rules), and who answered.
    Probe {
        /// The server name to ask for.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        name: Option<String>,
        /// Probe every exact name in the rules file instead, one line each.
        #[arg(long)]
        all: bool,
        /// The rules file, for --all [default: ./rules.json, else /etc/snirelay/rules.json].
        #[arg(long, requires = "all")]
        config: Option<PathBuf>,
        /// The relay's TLS listener: IP or host, with an optional port (default 443).
        #[arg(long, value_name = "ADDR[:PORT]", required_unless_present = "proxy")]
        relay: Option<String>,
        /// The relay's CONNECT listener instead: ask it for a tunnel to NAME, then shake
        /// hands through it, as a client with https_proxy does.
        #[arg(long, value_name = "ADDR:PORT", conflicts_with = "relay")]
        proxy: Option<String>,
        /// Trust this PEM CA file instead of the system's CAs.
        #[arg(long, value_name = "FILE")]
        cacert: Option<PathBuf>,
        /// Give up after this many seconds (1 to 3600).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
        timeout_s: u64,
    },
    /// From the relay's JSON log lines: the names clients asked for, by registrable domain,
    /// how each was decided, and the rules that would allow the refused ones.
    Suggest {
        /// A log file (`.gz` too; repeatable); standard input when none is given.
        #[arg(long = "log", value_name = "FILE")]
        logs: Vec<PathBuf>,
        /// Print this rules file with the proposal merged in, validated, instead of the
        /// report (which then goes to standard error) [RULES default: ./rules.json, else
        /// /etc/snirelay/rules.json].
        #[arg(long, value_name = "RULES", num_args = 0..=1)]
        merge: Option<Option<PathBuf>>,
    },
    /// The host settings that decide long-haul behaviour: each one's value, the
    /// recommended one, why, and how to set it. Needs no root.
    Doctor {
        /// Exit 1 when any setting should change.
        #[arg(long)]
        strict: bool,
        /// Print the sysctl settings to change as a file for /etc/sysctl.d/ instead.
        #[arg(long)]
        sysctl: bool,
        /// Read this /proc tree instead of the host's.
        #[arg(long, value_name = "DIR", default_value = "/proc")]
        proc: PathBuf,
    },
    /// Print the proxy settings a client process needs to reach the allowed names through
    /// a CONNECT listener (https_proxy and the rest), instead of hosts lines.
    Env {
        /// The CONNECT listener as the clients reach it, like 10.20.0.5:3128.
        #[arg(long, value_name = "ADDR:PORT")]
        relay: String,
        /// Another name (`.corp.example`), address or network that bypasses the relay
        /// (repeatable), besides this machine and the cloud metadata servers.
        #[arg(long = "no-proxy", value_name = "NAME")]
        no_proxy: Vec<String>,
    },
    /// Print what points the client machines at the relay: /etc/hosts lines, or
    /// configuration for the DNS server they use.
    Hosts {
        /// The relay's address as the clients reach it: its IPv4 address, and optionally
        /// its IPv6 one (given twice; without it, AAAA answers use the IPv4-mapped form).
        #[arg(long, value_name = "IP", required = true)]
        relay: Vec<IpAddr>,
        /// The rules file [default: ./rules.json, else /etc/snirelay/rules.json].
        #[arg(long)]
        config: Option<PathBuf>,
        /// What to print.
        #[arg(long, value_enum, default_value_t = cli::hosts::Format::Hosts)]
        format: cli::hosts::Format,
        /// Only the names this client group may reach (the shared ones and its own).
        #[arg(long, value_name = "NAME")]
        group: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The rules file to read ([`cli::rules_file::choose`]); when none is found, the message
/// and exit code 2.
fn rules_file(given: Option<PathBuf>) -> Result<PathBuf, ExitCode> {
    match cli::rules_file::choose(given, Path::exists) {
        Ok((path, found)) => {
            if found {
                eprintln!(
                    "snirelay: using {} (no --config, no ./rules.json)",
                    path.display()
                );
            }
            Ok(path)
        }
        Err(why) => {
            eprintln!("snirelay: {why}");
            Err(ExitCode::from(2))
        }
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check { config, far, edge } => match rules_file(config) {
            Ok(path) => {
                let other = match (far, edge) {
                    (Some(far), _) => Some(commands::Other::Far(far)),
                    (None, Some(edge)) => Some(commands::Other::Edge(edge)),
                    (None, None) => None,
                };
                commands::check(&path, other.as_ref())
            }
            Err(code) => code,
        },
        Command::Probe {
            name,
            all,
            config,
            relay,
            proxy,
            cacert,
            timeout_s,
        } => {
            let limit = Duration::from_secs(timeout_s);
            let via = match (relay, proxy) {
                (_, Some(proxy)) => cli::probe::Via::Proxy(proxy),
                (relay, None) => cli::probe::Via::Relay(relay.unwrap_or_default()),
            };
            match name {
                Some(name) if !all => commands::probe(&name, &via, cacert.as_deref(), limit),
                _ => match rules_file(config) {
                    Ok(path) => commands::probe_all(&path, &via, cacert.as_deref(), limit),
                    Err(code) => code,
                },
            }
        }
        Command::Hosts {
            relay,
            config,
            format,
            group,
        } => match rules_file(config) {
            Ok(path) => commands::hosts(&relay, &path, format, group.as_deref()),
            Err(code) => code,
        },
        Command::Env { relay, no_proxy } => match cli::env::render(&relay, &no_proxy) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(why) => {
                eprintln!("{why}");
                ExitCode::from(2)
            }
        },
        Command::Suggest { logs, merge } => match merge.map(rules_file).transpose() {
            Ok(merge) => commands::suggest(&logs, merge.as_deref()),
            Err(code) => code,
        },
        Command::Doctor {
            strict,
            sysctl,
            proc,
        } => commands::doctor(&proc, strict, sysctl),
        Command::Run {
            config,
            listen,
            admin,
            resolve,
            log_format,
            upgrade_socket,
        } => {
            if let Some(twice) = repeated(&listen) {
                eprintln!("--listen lists {twice} twice");
                return ExitCode::from(2);
            }
            let path = match rules_file(config) {
                Ok(path) => path,
                Err(code) => return code,
            };
            let logging = init_logging(log_format);
            let loaded =
                Config::read(&path).and_then(|text| Ok((Config::parse(&text, &path)?, text)));
            let (config, text) = match loaded {
                Ok(loaded) => loaded,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            // Read again when the relay starts; here, so a bad file is the config error it is.
            if let Err(e) = snirelay::users::load_all(&config) {
                eprintln!("snirelay: {e}");
                return ExitCode::from(2);
            }
            let overrides = Overrides { listen, admin };
            let result = run(config, text, path, overrides, resolve, upgrade_socket);
            // Every queued line out before the last word.
            drop(logging);
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("snirelay: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// What the command line sets instead of the config file.
struct Overrides {
    listen: Vec<SocketAddr>,
    admin: Option<SocketAddr>,
}

/// The first address given twice, if any.
fn repeated(addrs: &[SocketAddr]) -> Option<SocketAddr> {
    let mut seen = std::collections::HashSet::new();
    addrs.iter().copied().find(|a| !seen.insert(*a))
}

/// Installs the log subscriber; lines are flushed when the returned guard drops.
fn init_logging(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "info,hickory_proto=warn,hickory_resolver=warn,hickory_net=warn",
        )
    });
    // Lines go through a bounded queue to a writer thread, so a slow stderr (a full pipe
    // to journald) never blocks a worker; what a full queue drops is counted in /metrics.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .lossy(true)
        .thread_name("snirelay-log")
        .finish(std::io::stderr());
    snirelay::telemetry::metrics::count_dropped_log_lines(writer.error_counter());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.with_ansi(false).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    guard
}

/// Log lines the writer queue holds before it drops (and counts) new ones.
const LOG_QUEUE_LINES: usize = 16 * 1024;

/// Runs the relay on `config`, parsed from `text`, read from `path`, with the command
/// line's `overrides` put in.
fn run(
    mut config: Config,
    text: String,
    path: PathBuf,
    overrides: Overrides,
    resolve: Vec<Override>,
    upgrade_socket: Option<PathBuf>,
) -> anyhow::Result<()> {
    let fixed = Fixed {
        listen: !overrides.listen.is_empty(),
        admin: overrides.admin.is_some(),
    };
    if fixed.listen {
        config.listen = overrides.listen.into_iter().map(Listener::plain).collect();
    }
    if fixed.admin {
        config.admin = overrides.admin;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let options = Options {
        config,
        text,
        path,
        fixed,
        overrides: resolve,
        upgrade_socket,
    };
    let ran = runtime.block_on(lifecycle::run(options));
    // Once the relay has stopped nothing left is worth waiting for: a blocking read still
    // waiting on a new relay that hung mid-upgrade would otherwise hold the exit for up to
    // its minute of patience.
    runtime.shutdown_background();
    Ok(ran?)
}
