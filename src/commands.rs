//! The operator commands besides `run`, as the binary runs them: load, compute (in the
//! library's `cli` modules), print, and choose the exit code. Part of the binary, not the
//! library.

use crate::cli::probe::Via;
use snirelay::cli;
use snirelay::config::Config;
use snirelay::net::transport;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

pub fn suggest(logs: &[PathBuf], merge: Option<&Path>) -> ExitCode {
    use cli::suggest::{Seen, propose, report};
    let mut seen = Seen::default();
    let read = if logs.is_empty() {
        seen.read(std::io::stdin().lock())
            .map_err(|e| format!("standard input: {e}"))
    } else {
        logs.iter().try_for_each(|path| {
            let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let gz = path.extension().is_some_and(|e| e == "gz");
            let reader: Box<dyn std::io::Read> = if gz {
                Box::new(flate2::read::MultiGzDecoder::new(file))
            } else {
                Box::new(file)
            };
            seen.read(std::io::BufReader::new(reader))
                .map_err(|e| format!("{}: {e}", path.display()))
        })
    };
    if let Err(e) = read {
        eprintln!("{e}");
        return ExitCode::from(2);
    }
    let lines = seen.used + seen.skipped;
    if seen.used == 0 {
        eprintln!(
            "read {lines} lines, none a connection line with a name: nothing to suggest from. \
             Feed it the relay's log: under systemd `journalctl -u snirelay -o cat | snirelay suggest`, \
             else the relay's standard error (text or --log-format json)"
        );
        return ExitCode::FAILURE;
    }
    eprintln!("read {lines} lines, {} of them connection lines", seen.used);
    let Some(path) = merge else {
        let proposed = propose(&seen, None);
        let _ = std::io::stdout().write_all(report(&seen, &proposed).as_bytes());
        return ExitCode::SUCCESS;
    };
    let merged = Config::read(path).and_then(|text| Ok((Config::parse(&text, path)?, text)));
    let (config, text) = match merged {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let proposed = propose(&seen, Some(&config.rules));
    eprint!("{}", report(&seen, &proposed));
    match cli::suggest::merge(&text, path, &proposed) {
        Ok(merged) => {
            let _ = std::io::stdout().write_all(merged.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

pub fn hosts(
    relay: &[IpAddr],
    path: &Path,
    format: cli::hosts::Format,
    group: Option<&str>,
) -> ExitCode {
    let relay = match cli::targets::RelayAddrs::from_given(relay) {
        Ok(relay) => relay,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match Config::load(path) {
        Ok(mut config) => {
            let mut source = path.display().to_string();
            if let Some(name) = group {
                let Some(found) = config.groups.iter().find(|g| &*g.name == name) else {
                    let known: Vec<&str> = config.groups.iter().map(|g| &*g.name).collect();
                    eprintln!(
                        "{}: no group {name}; its groups: {}",
                        path.display(),
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    );
                    return ExitCode::from(2);
                };
                config.rules = found.rules.clone();
                source = format!("{source}, group {name}");
            }
            let text = cli::hosts::render(&config, relay, format, &source);
            let _ = std::io::stdout().write_all(text.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

/// A runtime for the one-shot commands.
fn small_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("snirelay: cannot start the runtime: {e}");
            ExitCode::from(1)
        })
}

/// `probe --all`: every exact name in the rules, one line each; fails if any fails.
pub fn probe_all(config: &Path, via: &Via, cacert: Option<&Path>, limit: Duration) -> ExitCode {
    let config = match Config::load(config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match small_runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let lines = runtime.block_on(cli::probe::probe_all(&config.rules, via, cacert, limit));
    let mut out = String::new();
    let mut failed = false;
    for (name, line) in lines {
        failed |= line.is_err();
        out.push_str(&format!("{name}: {}\n", line.unwrap_or_else(|e| e)));
    }
    let _ = std::io::stdout().write_all(out.as_bytes());
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

pub fn probe(name: &str, via: &Via, cacert: Option<&Path>, limit: Duration) -> ExitCode {
    let runtime = match small_runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match runtime.block_on(cli::probe::probe(name, via, cacert, limit)) {
        Ok(answer) => {
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            let tunnel = answer
                .tunnel
                .map(|t| format!("  CONNECT answered 200 in {:.1} ms\n", ms(t)))
                .unwrap_or_default();
            let relay = via.addr();
            let report = format!(
                "{name} via {relay}: ok\n  TCP connected in {:.1} ms\n{tunnel}  {} handshake in {:.1} ms, ALPN: {}\n  \
                 subject: {}\n  issuer: {}\n  valid: {} to {}\n",
                ms(answer.connect),
                answer.version,
                ms(answer.handshake),
                answer.alpn.as_deref().unwrap_or("none"),
                answer.subject,
                answer.issuer,
                answer.not_before,
                answer.not_after,
            );
            let _ = std::io::stdout().write_all(report.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{name} via {}: {e}", via.addr());
            ExitCode::from(1)
        }
    }
}

/// The other end of an edge relay's long leg, for `check` to compare with.
pub enum Other {
    /// The far relay's rules file: the checked one is the edge's.
    Far(PathBuf),
    /// An edge relay's rules file: the checked one is the far relay's.
    Edge(PathBuf),
}

pub fn check(path: &Path, other: Option<&Other>) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            let mismatched = other.is_some_and(|other| check_pair(path, &config, other));
            // A closed stdout (`snirelay check | head -1`) is not an error worth a panic.
            let _ = std::io::stdout().write_all(cli::check::summary(path, &config).as_bytes());
            for warning in cli::check::warnings(&config) {
                eprintln!("warning: {warning}");
            }
            for gap in transport::fast_open_gaps(&config) {
                eprintln!("warning: {gap}");
            }
            let default = transport::CLIENT_CONGESTION;
            let defaulted = config.listen.iter().any(|l| l.tcp.congestion.is_none());
            if let (true, Err(refused)) = (defaulted, transport::usable(default)) {
                eprintln!(
                    "warning: client-facing sockets would keep the kernel's default congestion control instead of {default}: {refused}"
                );
            }
            let mut refused = transport::refusals(&config);
            if let Err(users) = snirelay::users::load_all(&config) {
                refused.push(users);
            }
            for refusal in &refused {
                eprintln!("{}: {refusal}", path.display());
            }
            if refused.is_empty() && !mismatched {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            }
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

/// The rules at `path` against the other end's: says what does not fit, and whether
/// anything did not.
fn check_pair(path: &Path, config: &Config, other: &Other) -> bool {
    let (Other::Far(file) | Other::Edge(file)) = other;
    let theirs = match Config::load(file) {
        Ok(theirs) => theirs,
        Err(e) => {
            eprintln!("{e}");
            return true;
        }
    };
    let problems = match other {
        Other::Far(_) => cli::edge::pair(config, &theirs),
        Other::Edge(_) => cli::edge::pair(&theirs, config),
    };
    for problem in &problems {
        eprintln!("{} with {}: {problem}", path.display(), file.display());
    }
    !problems.is_empty()
}

pub fn doctor(proc: &Path, strict: bool, sysctl: bool) -> ExitCode {
    let findings = cli::doctor::diagnose(proc);
    let text = if sysctl {
        cli::doctor::sysctl_file(&findings)
    } else {
        cli::doctor::report(&findings)
    };
    let _ = std::io::stdout().write_all(text.as_bytes());
    if strict && findings.iter().any(|f| !f.ok) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
