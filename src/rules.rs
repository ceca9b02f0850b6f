//! The allowlist: which server names may pass, and where each goes. Pure and hash-based, so
//! deciding a name costs the same with five rules or a hundred thousand.

use crate::hostname::{Hostname, HostnameError};
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

/// A rule's name: exact, `*.suffix` (any depth below `suffix`, not `suffix` itself), or
/// `*tail.parent` (one label that ends in `tail` and is longer than it, directly under
/// `parent`: `*-aiplatform.googleapis.com` takes `us-central1-aiplatform.googleapis.com`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// Matches this name only.
    Exact(Hostname),
    /// Holds the suffix of `*.suffix`.
    Wildcard(Hostname),
    /// `*tail.parent`: holds `tail.parent`, the pattern without its `*`.
    Label(LabelPattern),
}

/// The `tail.parent` of a `*tail.parent` pattern, in normal form (a host name's rules: the
/// pattern with any letter in place of the `*` is a valid host name).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LabelPattern(Box<str>);

impl LabelPattern {
    /// `tail.parent`, the text a name's end must equal.
    pub fn key(&self) -> &str {
        &self.0
    }

    /// The part of the leftmost label the pattern fixes (`-aiplatform`).
    pub fn tail(&self) -> &str {
        self.0.split_once('.').map_or(&self.0, |(tail, _)| tail)
    }

    /// The name the matched names sit directly under (`googleapis.com`).
    pub fn parent(&self) -> &str {
        self.0.split_once('.').map_or("", |(_, parent)| parent)
    }

    /// Whether `name` is one label ending in the tail (and longer) under the parent.
    pub fn matches(&self, name: &str) -> bool {
        let first = name.find('.').unwrap_or(name.len());
        first > self.tail().len() && name.ends_with(self.key())
    }
}

impl FromStr for Pattern {
    type Err = HostnameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(suffix) = s.strip_prefix("*.") {
            return suffix.parse().map(Pattern::Wildcard);
        }
        let Some(rest) = s.strip_prefix('*') else {
            return s.parse().map(Pattern::Exact);
        };
        // `*tail.parent`: valid when `a` in the star's place makes a host name with a dot.
        if !rest.contains('.') || rest.starts_with('.') {
            return Err(HostnameError::BadByte(b'*'));
        }
        let name: Hostname = format!("a{rest}").parse()?;
        Ok(Pattern::Label(LabelPattern(name.as_str()[1..].into())))
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Exact(name) => write!(f, "{name}"),
            Pattern::Wildcard(suffix) => write!(f, "*.{suffix}"),
            Pattern::Label(label) => write!(f, "*{}", label.key()),
        }
    }
}

/// A host the operator named as an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// Resolved through DNS (or a `--resolve` pin) when a connection needs it.
    Name(Hostname),
    /// Used as it is.
    Ip(IpAddr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(name) => write!(f, "{name}"),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// A rule's pinned upstream: `host:port`, `ip:port` or `[ipv6]:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Where to connect.
    pub host: Host,
    /// Which port.
    pub port: u16,
}

impl FromStr for Upstream {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Upstream {
                host: Host::Ip(addr.ip()),
                port: addr.port(),
            });
        }
        let (host, port) = s.rsplit_once(':').ok_or(())?;
        let port: u16 = port.parse().map_err(|_| ())?;
        let host: Hostname = host.parse().map_err(|_| ())?;
        if port == 0 {
            return Err(());
        }
        Ok(Upstream {
            host: Host::Name(host),
            port,
        })
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            ref host => write!(f, "{host}:{}", self.port),
        }
    }
}

/// One allowlist entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Which names it lets through.
    pub pattern: Pattern,
    /// Where they go instead of the name itself.
    pub upstream: Option<Upstream>,
    /// A PROXY protocol header to send ahead of the connection, naming the real client.
    pub send_proxy: Option<crate::proxy::Version>,
    /// TCP settings of its upstream sockets, over the file's `upstream_tcp`.
    pub tcp: Option<crate::tcp_options::Tcp>,
    /// The pattern as written, made once by [`Rule::new`]: each connection the rule allows
    /// shares it (in its log line and metrics labels) instead of formatting its own.
    pub label: Arc<str>,
}

impl Rule {
    /// The rule for `pattern`.
    pub fn new(
        pattern: Pattern,
        upstream: Option<Upstream>,
        send_proxy: Option<crate::proxy::Version>,
    ) -> Rule {
        Rule {
            label: pattern.to_string().into(),
            pattern,
            upstream,
            send_proxy,
            tcp: None,
        }
    }
}

/// The same pattern listed twice.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("duplicate rule \"{0}\"")]
pub struct DuplicateRule(pub Pattern);

/// Where an allowed connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route<'a> {
    /// The rule that allowed it; `None` for a name forwarded in monitor mode.
    pub rule: Option<&'a Rule>,
    /// The host to connect to.
    pub host: Host,
    /// The port to connect to.
    pub port: u16,
    /// The operator chose the host (a pinned upstream), so its addresses are exempt from
    /// the destination policy; otherwise the client chose it through the SNI.
    pub pinned: bool,
}

/// A validated allowlist with constant-time lookups.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    rules: Vec<Rule>,
    exact: HashMap<Box<str>, usize>,
    wildcard: HashMap<Box<str>, usize>,
    /// Label patterns by `tail.parent`.
    label: HashMap<Box<str>, usize>,
    /// Bit `n` set: some label pattern has a tail of `n` bytes (1 to 62), so a name is
    /// looked up once per tail length in use, never once per byte of its first label.
    tail_lengths: u64,
}

impl Rules {
    /// Indexes `rules`; a pattern listed twice is an error, never a silent override.
    pub fn new(rules: Vec<Rule>) -> Result<Self, DuplicateRule> {
        let mut set = Rules::default();
        for rule in rules {
            set.push(rule)?;
        }
        Ok(set)
    }

    /// Adds one rule, refusing a duplicate pattern.
    pub fn push(&mut self, rule: Rule) -> Result<(), DuplicateRule> {
        let (map, key) = match &rule.pattern {
            Pattern::Exact(name) => (&mut self.exact, name.as_str()),
            Pattern::Wildcard(suffix) => (&mut self.wildcard, suffix.as_str()),
            Pattern::Label(label) => (&mut self.label, label.key()),
        };
        if map.contains_key(key) {
            return Err(DuplicateRule(rule.pattern));
        }
        map.insert(key.into(), self.rules.len());
        if let Pattern::Label(label) = &rule.pattern {
            self.tail_lengths |= 1 << label.tail().len();
        }
        self.rules.push(rule);
        Ok(())
    }

    /// The rule for `name`, the most specific first: an exact rule, then a label pattern
    /// (the longest tail first), then wildcards (the longest suffix first). Costs one hash
    /// lookup per label of `name` and one per tail length in use.
    pub fn find(&self, name: &Hostname) -> Option<&Rule> {
        if let Some(index) = self.exact.get(name.as_str()) {
            return Some(&self.rules[*index]);
        }
        self.find_label(name.as_str(), usize::MAX)
            .or_else(|| self.find_wildcard(name.parent_suffixes()))
    }

    /// The label pattern with the longest tail shorter than `below` bytes that matches
    /// `name`.
    pub fn find_label(&self, name: &str, below: usize) -> Option<&Rule> {
        let first = name.find('.')?;
        let mut lengths = self.tail_lengths;
        while lengths != 0 {
            let tail = 63 - lengths.leading_zeros() as usize;
            lengths &= !(1 << tail);
            if tail < first
                && tail < below
                && let Some(index) = self.label.get(&name[first - tail..])
            {
                return Some(&self.rules[*index]);
            }
        }
        None
    }

    /// The longest wildcard rule whose suffix is among `suffixes` (given longest first).
    pub fn find_wildcard<'a>(&self, mut suffixes: impl Iterator<Item = &'a str>) -> Option<&Rule> {
        let index = suffixes.find_map(|s| self.wildcard.get(s))?;
        Some(&self.rules[*index])
    }

    /// Where `name` goes, or `None` when no rule allows it.
    pub fn route(&self, name: &Hostname, upstream_port: u16) -> Option<Route<'_>> {
        let rule = self.find(name)?;
        Some(match &rule.upstream {
            Some(up) => Route {
                rule: Some(rule),
                host: up.host.clone(),
                port: up.port,
                pinned: true,
            },
            None => Route {
                rule: Some(rule),
                host: Host::Name(name.clone()),
                port: upstream_port,
                pinned: false,
            },
        })
    }

    /// The rules in the order they were written.
    pub fn iter(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter()
    }

    /// How many rules there are.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// No rule at all: every connection is refused.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// What a reload from `self` to `next` changes, by pattern, each list in `next`'s (or,
    /// for removals, `self`'s) order. Pure.
    pub fn diff(&self, next: &Rules) -> RuleDiff {
        let before: HashMap<&Pattern, &Rule> = self.iter().map(|r| (&r.pattern, r)).collect();
        let after: HashMap<&Pattern, &Rule> = next.iter().map(|r| (&r.pattern, r)).collect();
        let mut diff = RuleDiff::default();
        for rule in next.iter() {
            match before.get(&rule.pattern) {
                None => diff.added.push(rule.pattern.to_string()),
                Some(old) if *old != rule => diff.changed.push(rule.pattern.to_string()),
                Some(_) => {}
            }
        }
        for rule in self.iter().filter(|r| !after.contains_key(&r.pattern)) {
            diff.removed.push(rule.pattern.to_string());
        }
        diff
    }
}

/// The patterns a reload adds, removes, or keeps with another upstream or PROXY setting.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RuleDiff {
    /// New patterns.
    pub added: Vec<String>,
    /// Patterns gone.
    pub removed: Vec<String>,
    /// Patterns whose upstream or `send_proxy` changed.
    pub changed: Vec<String>,
}

#[cfg(test)]
mod tests;
