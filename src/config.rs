//! `rules.json` (schema v1) parsed once into validated types.
//!
//! Every check runs inside deserialisation, so every error carries the line and column where
//! serde_json was when it failed: `rules.json:7:35: invalid value: ...`. A typo never drops a
//! rule silently: unknown keys, duplicate names and malformed values are all errors.

use crate::rules::{Pattern, Rule, Rules, Upstream};
use ipnet::IpNet;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Unexpected, Visitor};
use serde::Deserialize;
use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// A validated configuration. The running relay only ever holds whole ones.
#[derive(Debug, Clone)]
pub struct Config {
    /// Addresses to accept connections on.
    pub listen: Vec<SocketAddr>,
    /// Port for names that have no pinned upstream.
    pub upstream_port: u16,
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
}

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

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Validates `text`; `path` only names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let file: File = serde_json::from_str(text).map_err(|e| {
            let full = e.to_string();
            // serde_json appends " at line L column C"; the position goes up front instead.
            let message = match full.rfind(" at line ") {
                Some(at) => full[..at].to_owned(),
                None => full,
            };
            ConfigError::Invalid {
                path: path.to_owned(),
                line: e.line(),
                column: e.column(),
                message,
            }
        })?;
        Ok(Config {
            listen: file.listen.0,
            upstream_port: file.upstream_port.0 as u16,
            rules: file.allow.0,
            timeouts: Timeouts {
                hello: Duration::from_millis(file.timeouts.hello_ms.0),
                connect: Duration::from_millis(file.timeouts.connect_ms.0),
                idle: Duration::from_secs(file.timeouts.idle_s.0),
                drain: Duration::from_secs(file.timeouts.drain_s.0),
            },
            max_hello_bytes: file.max_hello_bytes.0 as usize,
            nameservers: file.resolver.nameservers.map(|list| list.0),
            private_destinations: file.private_destinations.into_iter().map(|n| n.0).collect(),
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default = "default_listen")]
    listen: AddrList<Listen>,
    #[serde(default = "default_upstream_port")]
    upstream_port: Bounded<1, 65535>,
    allow: AllowList,
    #[serde(default)]
    timeouts: TimeoutsFile,
    #[serde(default = "default_max_hello")]
    max_hello_bytes: Bounded<512, 1_048_576>,
    #[serde(default)]
    resolver: ResolverFile,
    #[serde(default)]
    private_destinations: Vec<Network>,
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
}

impl Default for TimeoutsFile {
    fn default() -> Self {
        TimeoutsFile {
            hello_ms: default_hello_ms(),
            connect_ms: default_connect_ms(),
            idle_s: default_idle_s(),
            drain_s: default_drain_s(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ResolverFile {
    nameservers: Option<AddrList<Nameserver>>,
}

fn default_listen() -> AddrList<Listen> {
    AddrList(vec![SocketAddr::from(([0, 0, 0, 0], 443))], Default::default())
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

/// An integer in `MIN..=MAX`, with an error that says so.
struct Bounded<const MIN: u64, const MAX: u64>(u64);

impl<'de, const MIN: u64, const MAX: u64> Deserialize<'de> for Bounded<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let expected = format!("an integer from {MIN} to {MAX}");
        let value = u64::deserialize(d).map_err(|_| de::Error::custom(format!("expected {expected}")))?;
        if !(MIN..=MAX).contains(&value) {
            return Err(de::Error::invalid_value(Unexpected::Unsigned(value), &expected.as_str()));
        }
        Ok(Bounded(value))
    }
}

/// Parses a JSON string with `FromStr`, naming what was expected on failure.
fn from_json_str<'de, D, T>(d: D, expected: &'static str) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
{
    let text = String::deserialize(d)?;
    text.parse()
        .map_err(|_| de::Error::invalid_value(Unexpected::Str(&text), &expected))
}

/// What one kind of address list holds.
trait AddrKind {
    const EXPECTED: &'static str;
    const WHAT: &'static str;
    fn parse(text: &str) -> Option<SocketAddr>;
}

#[derive(Default)]
struct Listen;
impl AddrKind for Listen {
    const EXPECTED: &'static str = "a listen address like \"0.0.0.0:443\" or \"[::]:443\"";
    const WHAT: &'static str = "listen";
    fn parse(text: &str) -> Option<SocketAddr> {
        text.parse().ok()
    }
}

#[derive(Default)]
struct Nameserver;
impl AddrKind for Nameserver {
    const EXPECTED: &'static str = "a DNS server like \"8.8.8.8:53\" or \"8.8.8.8\"";
    const WHAT: &'static str = "resolver.nameservers";
    fn parse(text: &str) -> Option<SocketAddr> {
        text.parse()
            .ok()
            .or_else(|| text.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)))
    }
}

/// A non-empty list of distinct socket addresses.
struct AddrList<K>(Vec<SocketAddr>, std::marker::PhantomData<K>);

impl<'de, K: AddrKind> Deserialize<'de> for AddrList<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Addr<K>(SocketAddr, std::marker::PhantomData<K>);
        impl<'de, K: AddrKind> Deserialize<'de> for Addr<K> {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                K::parse(&text)
                    .map(|a| Addr(a, Default::default()))
                    .ok_or_else(|| de::Error::invalid_value(Unexpected::Str(&text), &K::EXPECTED))
            }
        }
        let list = Vec::<Addr<K>>::deserialize(d)?;
        if list.is_empty() {
            return Err(de::Error::custom(format!("{} must list at least one address", K::WHAT)));
        }
        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(list.len());
        for Addr(addr, _) in list {
            if !seen.insert(addr) {
                return Err(de::Error::custom(format!("{} lists {addr} twice", K::WHAT)));
            }
            out.push(addr);
        }
        Ok(AddrList(out, Default::default()))
    }
}

/// A CIDR network (a bare address means just that host), with host bits clear.
struct Network(IpNet);

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const EXPECTED: &str = "a network like \"10.20.0.0/16\" or \"fd00::/8\"";
        let text = String::deserialize(d)?;
        let net = text
            .parse::<IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| de::Error::invalid_value(Unexpected::Str(&text), &EXPECTED))?;
        if net.trunc() != net {
            return Err(de::Error::custom(format!(
                "network \"{text}\" has host bits set; did you mean \"{}\"?",
                net.trunc()
            )));
        }
        Ok(Network(net))
    }
}

/// The `allow` array: names, wildcards and `{name, upstream}` objects, no duplicates.
struct AllowList(Rules);

impl<'de> Deserialize<'de> for AllowList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = AllowList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of rules")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<AllowList, A::Error> {
                let mut rules = Rules::default();
                while let Some(RuleFile(rule)) = seq.next_element()? {
                    rules.push(rule).map_err(de::Error::custom)?;
                }
                Ok(AllowList(rules))
            }
        }
        d.deserialize_seq(ListVisitor)
    }
}

const PATTERN_EXPECTED: &str = "a host name like \"api.example.com\" or a wildcard like \"*.example.com\"";
const UPSTREAM_EXPECTED: &str = "host:port or ip:port, like \"private.googleapis.com:443\"";

/// One rule: a bare pattern string, or `{ "name": ..., "upstream": ... }`.
struct RuleFile(Rule);

impl<'de> Deserialize<'de> for RuleFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RuleVisitor;
        impl<'de> Visitor<'de> for RuleVisitor {
            type Value = RuleFile;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a name string or an object {\"name\": ..., \"upstream\": ...}")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<RuleFile, E> {
                let pattern = text
                    .parse()
                    .map_err(|_| E::invalid_value(Unexpected::Str(text), &PATTERN_EXPECTED))?;
                Ok(RuleFile(Rule {
                    pattern,
                    upstream: None,
                }))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RuleFile, A::Error> {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Object {
                    #[serde(deserialize_with = "pattern")]
                    name: Pattern,
                    #[serde(default, deserialize_with = "upstream")]
                    upstream: Option<Upstream>,
                }
                let obj = Object::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RuleFile(Rule {
                    pattern: obj.name,
                    upstream: obj.upstream,
                }))
            }
        }
        d.deserialize_any(RuleVisitor)
    }
}

fn pattern<'de, D: Deserializer<'de>>(d: D) -> Result<Pattern, D::Error> {
    from_json_str(d, PATTERN_EXPECTED)
}

fn upstream<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Upstream>, D::Error> {
    from_json_str(d, UPSTREAM_EXPECTED).map(Some)
}
