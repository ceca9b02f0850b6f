//! Turning a route into the socket addresses to try, without blocking the runtime.
//!
//! Operator input (an IP in a rule, a `--resolve` pin, a pinned upstream name) is trusted.
//! DNS answers for a client-supplied name pass the destination policy first.

use crate::hostname::Hostname;
use crate::net::local::LocalAddresses;
use crate::policy::{DestinationPolicy, Forbidden};
use crate::rules::{Host, Route};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};

/// A `--resolve NAME=IP[:PORT]` override: this address for this name, instead of DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// The name it overrides.
    pub name: Hostname,
    /// The address used instead of DNS.
    pub ip: IpAddr,
    /// Replaces the route's port when given.
    pub port: Option<u16>,
}

impl FromStr for Override {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage = || {
            format!("expected NAME=IP[:PORT], like translation.googleapis.com=10.1.2.3, got {s:?}")
        };
        let (name, addr) = s.split_once('=').ok_or_else(usage)?;
        let name = name
            .parse()
            .map_err(|e| format!("{name:?} is not a host name: {e}"))?;
        let (ip, port) = match addr.parse::<SocketAddr>() {
            Ok(sa) => (sa.ip(), Some(sa.port())),
            Err(_) => (addr.parse().map_err(|_| usage())?, None),
        };
        Ok(Override { name, ip, port })
    }
}

/// Why no address could be found for a route.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// DNS gave no usable answer.
    #[error("{message}")]
    Dns {
        /// What was looked up.
        name: Hostname,
        /// What happened to each family, and whom the relay asked.
        message: String,
    },
    /// Every address DNS gave is refused by the destination policy.
    #[error("{addr} {why}")]
    Forbidden {
        /// The first refused address.
        addr: SocketAddr,
        /// Why.
        why: Forbidden,
    },
}

impl ResolveError {
    /// The stable reason word.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Dns { .. } => "dns_failed",
            Self::Forbidden { .. } => "forbidden_destination",
        }
    }
}

/// Most names kept in the answer cache; past this, expired entries go, then all of them
/// (a wildcard rule lets clients ask for any number of names).
const CACHE_ENTRIES: usize = 10_000;

/// Name resolution with the operator's pins and nameservers.
pub struct Resolver {
    dns: TokioResolver,
    /// Whom it asks, for messages.
    asked: String,
    pins: HashMap<Hostname, Override>,
    cache: Mutex<HashMap<Hostname, Cached>>,
    /// Which addresses DNS gave are this host's own (for the destination policy).
    local: LocalAddresses,
}

/// Addresses for a name and when they expire (the answer's TTL).
type Cached = (Arc<[IpAddr]>, std::time::Instant);

/// Where a route's addresses came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Source {
    /// Operator input: an IP in the rule, or a `--resolve` pin.
    Operator,
    /// The answer cache, within its TTL.
    Cache,
    /// A DNS query.
    Query,
}

impl Resolver {
    /// Uses `nameservers`, or the system configuration when `None`. Answers are cached for
    /// their TTL, so a burst of connections to one name costs one query.
    pub fn new(nameservers: Option<&[SocketAddr]>, pins: Vec<Override>) -> Result<Self, String> {
        let provider = TokioRuntimeProvider::default();
        let builder = match nameservers {
            Some(servers) => {
                let servers = servers
                    .iter()
                    .map(|server| {
                        let connections = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
                            .into_iter()
                            .map(|mut c| {
                                c.port = server.port();
                                c
                            })
                            .collect();
                        NameServerConfig::new(server.ip(), true, connections)
                    })
                    .collect();
                TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(servers),
                    provider,
                )
            }
            None => TokioResolver::builder(provider).map_err(|e| {
                format!(
                    "cannot read /etc/resolv.conf, the system resolver configuration: {e}; \
                     name the nameservers in rules.json instead: \
                     \"resolver\": {{\"nameservers\": [\"10.0.0.2:53\"]}}"
                )
            })?,
        };
        let dns = builder
            .build()
            .map_err(|e| format!("cannot start the DNS resolver: {e}"))?;
        let pins = pins.into_iter().map(|p| (p.name.clone(), p)).collect();
        let asked = match nameservers {
            Some(servers) => servers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            None => "the nameservers in /etc/resolv.conf".to_owned(),
        };
        Ok(Resolver {
            dns,
            asked,
            pins,
            cache: Mutex::default(),
            local: LocalAddresses::default(),
        })
    }

    /// The addresses to try for `route`, in the order DNS gave them, and where they came
    /// from.
    pub async fn destinations(
        &self,
        route: &Route<'_>,
        policy: &DestinationPolicy,
    ) -> Result<(Vec<SocketAddr>, Source), ResolveError> {
        let name = match &route.host {
            Host::Ip(ip) => return Ok((vec![SocketAddr::new(*ip, route.port)], Source::Operator)),
            Host::Name(name) => name,
        };
        if let Some(pin) = self.pins.get(name) {
            let addr = SocketAddr::new(pin.ip, pin.port.unwrap_or(route.port));
            return Ok((vec![addr], Source::Operator));
        }
        let (ips, source) = match self.cached(name) {
            Some(ips) => (ips, Source::Cache),
            None => (self.query(name).await?, Source::Query),
        };
        let found = ips.iter().map(|ip| SocketAddr::new(*ip, route.port));
        if route.pinned {
            return Ok((found.collect(), source));
        }
        let mut first_refusal = None;
        let now = std::time::Instant::now();
        let is_local = |ip| self.local.is_local(ip, now);
        let allowed: Vec<SocketAddr> = found
            .filter(|addr| match policy.check(*addr, is_local) {
                Ok(()) => true,
                Err(why) => {
                    first_refusal.get_or_insert(ResolveError::Forbidden { addr: *addr, why });
                    false
                }
            })
            .collect();
        match first_refusal {
            Some(refusal) if allowed.is_empty() => Err(refusal),
            _ => Ok((allowed, source)),
        }
    }

    fn cached(&self, name: &Hostname) -> Option<Arc<[IpAddr]>> {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let (ips, valid_until) = cache.get(name)?;
        (std::time::Instant::now() < *valid_until).then(|| ips.clone())
    }

    /// Asks for A and AAAA records at once, as one lookup would, but each on its own, so a
    /// failure can say what happened to each family.
    async fn query(&self, name: &Hostname) -> Result<Arc<[IpAddr]>, ResolveError> {
        // The trailing dot makes the name absolute, so no search domain is ever appended.
        let absolute = format!("{name}.");
        let (v4, v6) = tokio::join!(
            self.dns.ipv4_lookup(absolute.as_str()),
            self.dns.ipv6_lookup(absolute.as_str())
        );
        let mut ips = Vec::new();
        let mut valid_until: Option<std::time::Instant> = None;
        for lookup in [&v4, &v6].into_iter().flatten() {
            ips.extend(
                lookup
                    .answers()
                    .iter()
                    .filter_map(|record| match &record.data {
                        RData::A(a) => Some(IpAddr::V4(a.0)),
                        RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
                        _ => None,
                    }),
            );
            let until = lookup.valid_until();
            valid_until = Some(valid_until.map_or(until, |v| v.min(until)));
        }
        let (Some(valid_until), false) = (valid_until, ips.is_empty()) else {
            return Err(ResolveError::Dns {
                name: name.clone(),
                message: no_address(name, &v4.map(|_| ()), &v6.map(|_| ()), &self.asked),
            });
        };
        let ips: Arc<[IpAddr]> = ips.into();
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= CACHE_ENTRIES {
            let now = std::time::Instant::now();
            cache.retain(|_, (_, valid_until)| *valid_until > now);
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(name.clone(), (ips.clone(), valid_until));
        Ok(ips)
    }
}

/// Why DNS gave no address for `name`: both families alike in one phrase, else each family
/// on its own. Pure.
fn no_address(
    name: &Hostname,
    v4: &Result<(), NetError>,
    v6: &Result<(), NetError>,
    asked: &str,
) -> String {
    let how = |result: &Result<(), NetError>| match result {
        Ok(()) => "no records".to_owned(),
        Err(e) if e.is_nx_domain() => "the name does not exist (NXDOMAIN)".to_owned(),
        Err(e) if e.is_no_records_found() => "no records".to_owned(),
        Err(NetError::Timeout) => "no answer in time".to_owned(),
        Err(NetError::NoConnections) => "no nameserver reachable".to_owned(),
        Err(e) => e.to_string(),
    };
    let (v4, v6) = (how(v4), how(v6));
    if v4 == v6 {
        match v4.as_str() {
            "no records" => format!("no A or AAAA records for {name} (asked {asked})"),
            _ => format!("A and AAAA lookups for {name}: {v4} (asked {asked})"),
        }
    } else {
        format!("no address for {name}: A: {v4}; AAAA: {v6} (asked {asked})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse_like_curl_resolve() {
        let pin: Override = "Translation.googleapis.com=127.0.0.1:8443".parse().unwrap();
        assert_eq!(
            (pin.name.as_str(), pin.ip.to_string(), pin.port),
            ("translation.googleapis.com", "127.0.0.1".into(), Some(8443))
        );
        let pin: Override = "a.example.com=::1".parse().unwrap();
        assert_eq!((pin.ip.to_string(), pin.port), ("::1".into(), None));
        let pin: Override = "a.example.com=[::1]:443".parse().unwrap();
        assert_eq!((pin.ip.to_string(), pin.port), ("::1".into(), Some(443)));
        for bad in [
            "a.example.com",
            "a.example.com=nothost",
            "bad_name=1.2.3.4",
            "a.example.com=1.2.3.4:x",
        ] {
            assert!(bad.parse::<Override>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_failed_lookup_says_what_happened_to_each_family() {
        let name: Hostname = "a.example.com".parse().unwrap();
        assert_eq!(
            no_address(&name, &Ok(()), &Ok(()), "10.0.0.2:53"),
            "no A or AAAA records for a.example.com (asked 10.0.0.2:53)"
        );
        assert_eq!(
            no_address(&name, &Err(NetError::Timeout), &Err(NetError::Timeout), "x"),
            "A and AAAA lookups for a.example.com: no answer in time (asked x)"
        );
        assert_eq!(
            no_address(&name, &Ok(()), &Err(NetError::NoConnections), "x"),
            "no address for a.example.com: A: no records; AAAA: no nameserver reachable (asked x)"
        );
    }

    static PROBES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    fn counted_probe(_: IpAddr) -> bool {
        PROBES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        false
    }

    /// Production's shape: a wildcard listener on 443 and upstreams on 443, so every DNS
    /// answer's addresses need the is-this-host question. Only the first connection asks.
    #[tokio::test]
    async fn connections_to_a_cached_name_make_no_local_address_probe() {
        let mut resolver =
            Resolver::new(Some(&["127.0.0.1:53".parse().unwrap()]), vec![]).expect("resolver");
        resolver.local = LocalAddresses::with_probe(counted_probe);
        let name: Hostname = "translation.googleapis.com".parse().unwrap();
        let ips: Arc<[IpAddr]> = ["142.250.180.10", "2a00:1450:4009:81f::200a"]
            .iter()
            .map(|ip| ip.parse().unwrap())
            .collect();
        let valid_until = std::time::Instant::now() + std::time::Duration::from_secs(300);
        resolver
            .cache
            .lock()
            .unwrap()
            .insert(name.clone(), (ips, valid_until));
        let policy = DestinationPolicy {
            private_allowed: vec![],
            listeners: vec!["0.0.0.0:443".parse().unwrap()],
        };
        let route = Route {
            rule: None,
            host: Host::Name(name),
            port: 443,
            pinned: false,
        };
        for _ in 0..1000 {
            let (addrs, source) = resolver.destinations(&route, &policy).await.unwrap();
            assert_eq!((addrs.len(), source), (2, Source::Cache));
        }
        let probes = PROBES.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(probes, 2, "one probe per address, not per connection");
    }
}
