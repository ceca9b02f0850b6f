//! `rules.json` (schema v1) parsed once into validated types.
//!
//! Every check runs inside deserialisation, so every error carries the line and column where
//! serde_json was when it failed: `rules.json:7:35: invalid value: ...`. A typo never drops a
//! rule silently: unknown keys, duplicate names and malformed values are all errors.

mod allow;
mod groups;
mod listener;
mod pools;
mod transport;
mod values;

pub use crate::tcp_options::{Keepalive, Tcp};
pub use groups::Group;
pub use listener::{Accept, Listener, ProxyProtocol, Tunnel};
pub use pools::PoolSpec;
pub use values::Mode;

use crate::rules::Rules;
use allow::AllowList;
use groups::GroupList;
use ipnet::IpNet;
use listener::ListenList;
use pools::PoolList;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use values::{AbsolutePath, AddrList, AdminAddr, Bounded, Nameserver, Network, Object};

/// A validated configuration. The running relay only ever holds whole ones.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to accept connections, and how they begin.
    pub listen: Vec<Listener>,
    /// Port for names that have no pinned upstream.
    pub upstream_port: u16,
    /// TCP settings of the sockets to upstreams, where a rule's `tcp` does not say.
    pub upstream_tcp: Tcp,
    /// The allowlist.
    pub rules: Rules,
    /// Deadlines.
    pub timeouts: Timeouts,
    /// Largest ClientHello accepted, in record bytes.
    pub max_hello_bytes: usize,
    /// DNS servers to ask; `None` means the system's resolver configuration.
    pub nameservers: Option<Vec<SocketAddr>>,
    /// Networks DNS answers may point into despite the destination policy.
    pub private_destinations: Vec<IpNet>,
    /// Networks clients may connect from.
    pub clients: Vec<IpNet>,
    /// Connection limits.
    pub limits: Limits,
    /// Where to serve /metrics, /healthz and /readyz; off when `None`.
    pub admin: Option<SocketAddr>,
    /// What happens to names no rule allows, where a listener does not say.
    pub mode: Mode,
    /// Ready connections kept to pinned upstreams (an edge relay's, to the far relay).
    pub pools: Vec<PoolSpec>,
    /// Client groups, in the order they are tried; none: every client gets `rules`.
    pub groups: Vec<Group>,
    /// Where the audit log goes, one JSON line per decision; off when `None`.
    pub audit_log: Option<PathBuf>,
}

impl Config {
    /// The settings besides the rules, `listen` and `admin` (which change only on restart)
    /// that differ in `next`, by their key in the file: what a reload's log line names,
    /// since a change of mode, `clients` or a limit matters as much as a rule. Pure.
    pub fn changed_settings(&self, next: &Config) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let mut check = |key, differs: bool| {
            if differs {
                changed.push(key);
            }
        };
        check("mode", self.mode != next.mode);
        check("clients", self.clients != next.clients);
        check("limits", self.limits != next.limits);
        check("timeouts", self.timeouts != next.timeouts);
        check("resolver", self.nameservers != next.nameservers);
        check(
            "private_destinations",
            self.private_destinations != next.private_destinations,
        );
        check("upstream_port", self.upstream_port != next.upstream_port);
        check("upstream_tcp", self.upstream_tcp != next.upstream_tcp);
        check("pools", self.pools != next.pools);
        check("groups", self.groups != next.groups);
        check(
            "max_hello_bytes",
            self.max_hello_bytes != next.max_hello_bytes,
        );
        changed
    }

    /// Whether any listener forwards names no rule allows.
    pub fn monitoring(&self) -> bool {
        self.mode == Mode::Monitor
            || self.listen.iter().any(|l| l.mode == Some(Mode::Monitor))
            || self.groups.iter().any(|g| g.mode == Some(Mode::Monitor))
    }
}

/// Caps on concurrent connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// All connections together.
    pub max_connections: usize,
    /// Connections from one source address.
    pub max_connections_per_client: usize,
    /// Connections still waiting for their ClientHello.
    pub max_pending_hellos: usize,
}

/// Who may connect when `clients` is absent: private and loopback networks only, so a relay
/// bound to a public address is not an open relay by accident.
pub const DEFAULT_CLIENTS: [&str; 7] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "fc00::/7",
    "::1/128",
];

/// Connection deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// The whole ClientHello must arrive within this.
    pub hello: Duration,
    /// All connection attempts to the upstream together.
    pub connect: Duration,
    /// No byte in either direction for this long closes a forwarded connection.
    pub idle: Duration,
    /// How long live connections may finish after SIGINT/SIGTERM.
    pub drain: Duration,
    /// After SIGTERM, how long listeners keep accepting while /readyz says 503, so the
    /// balancer stops sending before connections are refused.
    pub lb_grace: Duration,
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file was read but is not a valid configuration.
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// What was expected.
        message: String,
    },
}

/// The comment opener (`//` or `/*`) where a JSON parser stopped, if that is what it
/// stopped at. `line` and `column` are 1-based, as serde_json gives them. Pure.
fn comment_at(text: &str, line: usize, column: usize) -> Option<&'static str> {
    let rest: String = text
        .lines()
        .nth(line.checked_sub(1)?)?
        .chars()
        .skip(column.saturating_sub(1))
        .collect();
    ["//", "/*"]
        .into_iter()
        .find(|opener| rest.starts_with(opener))
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::parse(&Config::read(path)?, path)
    }

    /// Reads the file at `path`, for a caller that needs the text as well as the rules.
    pub fn read(path: &Path) -> Result<String, ConfigError> {
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })
    }

    /// Validates `text`; `path` only names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let invalid = |line, column, message: &str| ConfigError::Invalid {
            path: path.to_owned(),
            line,
            column,
            message: message.to_owned(),
        };
        if text.starts_with('\u{feff}') {
            return Err(invalid(
                1,
                1,
                "the file starts with a byte-order mark (BOM), which JSON does not allow: save it as UTF-8 without BOM",
            ));
        }
        let Object(file): Object<File> = serde_json::from_str(text).map_err(|e| {
            let full = e.to_string();
            // serde_json appends " at line L column C"; the position goes up front instead.
            let message = match full.rfind(" at line ") {
                Some(at) => full[..at].to_owned(),
                None => full,
            };
            // serde_json says column 0 for an error before the first character.
            let column = e.column().max(1);
            if let Some(comment) = comment_at(text, e.line(), column) {
                return invalid(
                    e.line(),
                    column,
                    &format!("JSON has no comments: remove this `{comment}` comment"),
                );
            }
            ConfigError::Invalid {
                path: path.to_owned(),
                line: e.line(),
                column,
                message,
            }
        })?;
        let rules = file.allow.0;
        let groups = (file.groups.0.into_iter())
            .map(|group| group.with_shared(&rules))
            .collect();
        Ok(Config {
            listen: file.listen.0,
            upstream_port: file.upstream_port.0 as u16,
            upstream_tcp: file.upstream_tcp,
            rules,
            timeouts: Timeouts {
                hello: Duration::from_millis(file.timeouts.0.hello_ms.0),
                connect: Duration::from_millis(file.timeouts.0.connect_ms.0),
                idle: Duration::from_secs(file.timeouts.0.idle_s.0),
                drain: Duration::from_secs(file.timeouts.0.drain_s.0),
                lb_grace: Duration::from_secs(file.timeouts.0.lb_grace_s.0),
            },
            max_hello_bytes: file.max_hello_bytes.0 as usize,
            nameservers: file.resolver.0.nameservers.map(|list| list.0),
            private_destinations: file.private_destinations.into_iter().map(|n| n.0).collect(),
            clients: match file.clients {
                Some(list) => list.into_iter().map(|n| n.0).collect(),
                None => DEFAULT_CLIENTS
                    .iter()
                    .filter_map(|n| n.parse().ok())
                    .collect(),
            },
            limits: Limits {
                max_connections: file.max_connections.0 as usize,
                max_connections_per_client: file.max_connections_per_client.0 as usize,
                max_pending_hellos: file.max_pending_hellos.0 as usize,
            },
            admin: file.admin.map(|a| a.0),
            mode: file.mode.unwrap_or_default(),
            pools: file.pools.0,
            groups,
            audit_log: file.audit_log.map(|p| p.0),
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default = "default_listen")]
    listen: ListenList,
    #[serde(default = "default_upstream_port")]
    upstream_port: Bounded<1, 65535>,
    #[serde(default)]
    upstream_tcp: Tcp,
    allow: AllowList,
    #[serde(default)]
    timeouts: Object<TimeoutsFile>,
    #[serde(default = "default_max_hello")]
    max_hello_bytes: Bounded<512, 1_048_576>,
    #[serde(default)]
    resolver: Object<ResolverFile>,
    #[serde(default)]
    private_destinations: Vec<Network>,
    clients: Option<Vec<Network>>,
    #[serde(default = "default_max_connections")]
    max_connections: Bounded<1, 10_000_000>,
    #[serde(default = "default_max_per_client")]
    max_connections_per_client: Bounded<1, 10_000_000>,
    #[serde(default = "default_max_pending_hellos")]
    max_pending_hellos: Bounded<1, 10_000_000>,
    admin: Option<AdminAddr>,
    mode: Option<Mode>,
    #[serde(default)]
    pools: PoolList,
    #[serde(default)]
    groups: GroupList,
    audit_log: Option<AbsolutePath>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TimeoutsFile {
    #[serde(default = "default_hello_ms")]
    hello_ms: Bounded<1, 600_000>,
    #[serde(default = "default_connect_ms")]
    connect_ms: Bounded<1, 600_000>,
    #[serde(default = "default_idle_s")]
    idle_s: Bounded<1, 604_800>,
    #[serde(default = "default_drain_s")]
    drain_s: Bounded<0, 86_400>,
    #[serde(default)]
    lb_grace_s: Bounded<0, 3_600>,
}

impl Default for TimeoutsFile {
    fn default() -> Self {
        TimeoutsFile {
            hello_ms: default_hello_ms(),
            connect_ms: default_connect_ms(),
            idle_s: default_idle_s(),
            drain_s: default_drain_s(),
            lb_grace_s: Bounded(0),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ResolverFile {
    nameservers: Option<AddrList<Nameserver>>,
}

fn default_listen() -> ListenList {
    ListenList(vec![Listener::plain(SocketAddr::from(([0, 0, 0, 0], 443)))])
}
fn default_max_connections() -> Bounded<1, 10_000_000> {
    Bounded(20_000)
}
fn default_max_per_client() -> Bounded<1, 10_000_000> {
    Bounded(1_000)
}
fn default_max_pending_hellos() -> Bounded<1, 10_000_000> {
    Bounded(2_000)
}
fn default_upstream_port() -> Bounded<1, 65535> {
    Bounded(443)
}
fn default_max_hello() -> Bounded<512, 1_048_576> {
    Bounded(65536)
}
fn default_hello_ms() -> Bounded<1, 600_000> {
    Bounded(10_000)
}
fn default_connect_ms() -> Bounded<1, 600_000> {
    Bounded(5_000)
}
fn default_idle_s() -> Bounded<1, 604_800> {
    Bounded(3_600)
}
fn default_drain_s() -> Bounded<0, 86_400> {
    Bounded(30)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the config fuzz target: an error reported at column 0 (before the first
    /// character of a line) came out at column 0, and a comment later on the line was
    /// blamed for what was an unterminated string.
    #[test]
    fn an_error_before_a_comment_is_not_blamed_on_it() {
        let Err(ConfigError::Invalid {
            line,
            column,
            message,
            ..
        }) = Config::parse("{\n\"h\n /*", Path::new("t.json"))
        else {
            panic!("parsed");
        };
        assert!(line >= 1 && column >= 1, "{line}:{column}");
        assert!(!message.contains("comment"), "{message}");
        assert_eq!(comment_at("{\n  // note\n", 2, 3), Some("//"));
        assert_eq!(comment_at("{\n  // note\n", 2, 1), None);
    }
}
