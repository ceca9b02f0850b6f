//! `rules.json` (schema v1) parsed once into validated types.
//!
//! Every check runs inside deserialisation, so every error carries the line and column where
//! serde_json was when it failed: `rules.json:7:35: invalid value: ...`. A typo never drops a
//! rule silently: unknown keys, duplicate names and malformed values are all errors.

use crate::rules::{Pattern, Rule, Rules, Upstream};
use ipnet::IpNet;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Unexpected, Visitor};
use std::collections::HashSet;
use std::fmt;
use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
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
    /// Networks clients may connect from.
    pub clients: Vec<IpNet>,
    /// Connection limits.
    pub limits: Limits,
    /// Where to serve /metrics, /healthz and /readyz; off when `None`.
    pub admin: Option<SocketAddr>,
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
        let Object(file): Object<File> = serde_json::from_str(text).map_err(|e| {
            let full = e.to_string();
            // serde_json appends " at line L column C"; the position goes up front instead.
            let message = match full.rfind(" at line ") {
                Some(at) => full[..at].to_owned(),
                None => full,
            };
            ConfigError::Invalid {
                path: path.to_owned(),
                line: e.line(),
                // serde_json says column 0 for an error before the first character.
                column: e.column().max(1),
                message,
            }
        })?;
        Ok(Config {
            listen: file.listen.0,
            upstream_port: file.upstream_port.0 as u16,
            rules: file.allow.0,
            timeouts: Timeouts {
                hello: Duration::from_millis(file.timeouts.0.hello_ms.0),
                connect: Duration::from_millis(file.timeouts.0.connect_ms.0),
                idle: Duration::from_secs(file.timeouts.0.idle_s.0),
                drain: Duration::from_secs(file.timeouts.0.drain_s.0),
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
    AddrList(vec![SocketAddr::from(([0, 0, 0, 0], 443))], PhantomData)
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

/// A JSON object only: serde's derive would also take an array as positional fields, so a
/// misplaced `[...]` would be read silently instead of refused.
#[derive(Default)]
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
            type Value = Object<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object { ... }")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Object<T>, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Object)
            }
        }
        d.deserialize_map(ObjectVisitor(PhantomData))
    }
}

/// An integer in `MIN..=MAX`, with an error that says so.
struct Bounded<const MIN: u64, const MAX: u64>(u64);

impl<'de, const MIN: u64, const MAX: u64> Deserialize<'de> for Bounded<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RangeVisitor<const MIN: u64, const MAX: u64>;
        impl<const MIN: u64, const MAX: u64> Visitor<'_> for RangeVisitor<MIN, MAX> {
            type Value = Bounded<MIN, MAX>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "an integer from {MIN} to {MAX}")
            }
            // Validating inside the visitor lets serde_json place the error on the value.
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
                if (MIN..=MAX).contains(&value) {
                    Ok(Bounded(value))
                } else {
                    Err(E::invalid_value(Unexpected::Unsigned(value), &self))
                }
            }
        }
        d.deserialize_u64(RangeVisitor::<MIN, MAX>)
    }
}

/// Deserialises a JSON string through `parse`; errors are raised inside the visitor, so
/// serde_json reports them at the string itself.
fn parse_string<'de, D, T>(
    d: D,
    expected: &'static str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    struct StrVisitor<F> {
        expected: &'static str,
        parse: F,
    }
    impl<T, F: FnOnce(&str) -> Result<T, String>> Visitor<'_> for StrVisitor<F> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(self.expected)
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
            (self.parse)(text).map_err(E::custom)
        }
    }
    d.deserialize_str(StrVisitor { expected, parse })
}

/// The standard "invalid value" message for a string that did not parse.
fn invalid(text: &str, expected: &str) -> String {
    format!("invalid value: string {text:?}, expected {expected}")
}

/// What one kind of address list holds.
trait AddrKind {
    const EXPECTED: &'static str;
    const WHAT: &'static str;
    fn parse(text: &str) -> Option<SocketAddr>;
}

struct Listen;
impl AddrKind for Listen {
    const EXPECTED: &'static str = "a listen address like \"0.0.0.0:443\" or \"[::]:443\"";
    const WHAT: &'static str = "listen";
    fn parse(text: &str) -> Option<SocketAddr> {
        text.parse().ok()
    }
}

struct Nameserver;
impl AddrKind for Nameserver {
    const EXPECTED: &'static str = "a DNS server like \"8.8.8.8:53\" or \"8.8.8.8\"";
    const WHAT: &'static str = "resolver.nameservers";
    fn parse(text: &str) -> Option<SocketAddr> {
        text.parse().ok().or_else(|| {
            text.parse::<IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, 53))
        })
    }
}

/// The admin endpoint's address.
struct AdminAddr(SocketAddr);

impl<'de> Deserialize<'de> for AdminAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const EXPECTED: &str = "an address like \"127.0.0.1:9901\"";
        parse_string(d, EXPECTED, |text| {
            text.parse()
                .map(AdminAddr)
                .map_err(|_| invalid(text, EXPECTED))
        })
    }
}

/// A non-empty list of distinct socket addresses.
struct AddrList<K>(Vec<SocketAddr>, PhantomData<K>);

impl<'de, K: AddrKind> Deserialize<'de> for AddrList<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Addr<K>(SocketAddr, PhantomData<K>);
        impl<'de, K: AddrKind> Deserialize<'de> for Addr<K> {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                parse_string(d, K::EXPECTED, |text| {
                    K::parse(text).ok_or_else(|| invalid(text, K::EXPECTED))
                })
                .map(|addr| Addr(addr, PhantomData))
            }
        }
        let list = Vec::<Addr<K>>::deserialize(d)?;
        if list.is_empty() {
            return Err(de::Error::custom(format!(
                "{} must list at least one address",
                K::WHAT
            )));
        }
        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(list.len());
        for Addr(addr, _) in list {
            if !seen.insert(addr) {
                return Err(de::Error::custom(format!("{} lists {addr} twice", K::WHAT)));
            }
            out.push(addr);
        }
        Ok(AddrList(out, PhantomData))
    }
}

/// A CIDR network (a bare address means just that host), with host bits clear.
struct Network(IpNet);

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const EXPECTED: &str = "a network like \"10.20.0.0/16\" or \"fd00::/8\"";
        parse_string(d, EXPECTED, |text| {
            let net = text
                .parse::<IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| invalid(text, EXPECTED))?;
            if net.trunc() != net {
                return Err(format!(
                    "network \"{text}\" has host bits set; did you mean \"{}\"?",
                    net.trunc()
                ));
            }
            Ok(Network(net))
        })
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
                while seq.next_element_seed(RuleSeed(&mut rules))?.is_some() {}
                Ok(AllowList(rules))
            }
        }
        d.deserialize_seq(ListVisitor)
    }
}

const PATTERN_EXPECTED: &str =
    "a host name like \"api.example.com\" or a wildcard like \"*.example.com\"";
const UPSTREAM_EXPECTED: &str = "host:port or ip:port, like \"private.googleapis.com:443\"";

/// Reads one rule (a pattern string, or `{ "name": ..., "upstream": ... }`) into the
/// rules being built, so a duplicate is reported at the rule that repeats.
struct RuleSeed<'a>(&'a mut Rules);

impl<'de> DeserializeSeed<'de> for RuleSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for RuleSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a name string or an object {\"name\": ..., \"upstream\": ...}")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<(), E> {
        let pattern = parse_pattern(text).map_err(E::custom)?;
        self.0
            .push(Rule {
                pattern,
                upstream: None,
            })
            .map_err(E::custom)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Object {
            #[serde(deserialize_with = "pattern")]
            name: Pattern,
            #[serde(default, deserialize_with = "upstream")]
            upstream: Option<Upstream>,
        }
        let obj = Object::deserialize(de::value::MapAccessDeserializer::new(map))?;
        self.0
            .push(Rule {
                pattern: obj.name,
                upstream: obj.upstream,
            })
            .map_err(de::Error::custom)
    }
}

fn parse_pattern(text: &str) -> Result<Pattern, String> {
    text.parse().map_err(|_| invalid(text, PATTERN_EXPECTED))
}

fn pattern<'de, D: Deserializer<'de>>(d: D) -> Result<Pattern, D::Error> {
    parse_string(d, PATTERN_EXPECTED, parse_pattern)
}

fn upstream<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Upstream>, D::Error> {
    parse_string(d, UPSTREAM_EXPECTED, |text| {
        text.parse()
            .map(Some)
            .map_err(|()| invalid(text, UPSTREAM_EXPECTED))
    })
}
