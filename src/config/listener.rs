//! The `listen` array: each entry an address string, or an object that also says whether
//! the listener takes the PROXY protocol and from which balancers, and whether its clients
//! open with a TLS hello or an HTTP CONNECT request.

use super::values::{AbsolutePath, Bounded, Mode, Network, invalid, parse_string};
use crate::http_connect::DEFAULT_MAX_REQUEST;
use crate::proxy::Accept as ProxyVersions;
use crate::tcp_options::Tcp;
use ipnet::IpNet;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// One listening address and how connections on it begin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// Where to accept.
    pub addr: SocketAddr,
    /// Under socket activation, the `FileDescriptorName=` of the socket this entry takes.
    pub name: Option<String>,
    /// `Some` when every connection starts with a PROXY protocol header from a balancer.
    pub proxy: Option<ProxyProtocol>,
    /// This listener's own mode, over the file's.
    pub mode: Option<Mode>,
    /// TCP settings of its client-facing sockets.
    pub tcp: Tcp,
    /// What its clients open with.
    pub accept: Accept,
}

impl Listener {
    /// A listener for TLS clients directly, as a bare address in the file means.
    pub fn plain(addr: SocketAddr) -> Listener {
        Listener {
            addr,
            name: None,
            proxy: None,
            mode: None,
            tcp: Tcp::default(),
            accept: Accept::Tls,
        }
    }
}

/// What a listener's clients open with (`"accept"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accept {
    /// The TLS ClientHello, its server name chosen by the client's DNS or hosts file.
    Tls,
    /// An HTTP CONNECT request naming the host (`https_proxy`), then the hello.
    Connect(Tunnel),
}

/// A CONNECT listener's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunnel {
    /// The ports a CONNECT request may name (`"connect_ports"`, default 443).
    pub ports: Vec<u16>,
    /// The largest request head read (`"max_request_bytes"`, default 8 KiB).
    pub max_request: usize,
    /// `"users_file"`: when set, a request must carry `Proxy-Authorization: Basic` for a
    /// user in this htpasswd-style file (read at start-up and at each reload).
    pub users_file: Option<PathBuf>,
}

/// The PROXY protocol settings of a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyProtocol {
    /// Which versions are accepted.
    pub accept: ProxyVersions,
    /// Peers allowed to send a header; any other peer is closed before a byte is read.
    pub trusted: Vec<IpNet>,
    /// How long a connection may stay silent before its header, when set: an edge relay's
    /// ready connections wait for a client. The hello deadline then starts at the header.
    /// Unset, the header and the hello share the hello deadline from accept.
    pub header_wait: Option<Duration>,
}

const ADDR_EXPECTED: &str = "a listen address like \"0.0.0.0:443\" or \"[::]:443\"";

/// The validated `listen` array: not empty, no address twice.
pub(super) struct ListenList(pub(super) Vec<Listener>);

impl<'de> Deserialize<'de> for ListenList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = ListenList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of listen addresses or listener objects")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ListenList, A::Error> {
                let mut list: Vec<Listener> = Vec::new();
                while let Some(Entry(listener)) = seq.next_element()? {
                    if list.iter().any(|l| l.addr == listener.addr) {
                        return Err(de::Error::custom(format!(
                            "listen lists {} twice",
                            listener.addr
                        )));
                    }
                    list.push(listener);
                }
                if list.is_empty() {
                    return Err(de::Error::custom("listen must list at least one address"));
                }
                Ok(ListenList(list))
            }
        }
        d.deserialize_seq(ListVisitor)
    }
}

/// One entry: `"0.0.0.0:443"` or `{ "addr": ..., "accept": ..., "proxy_protocol": ..., "trusted_proxies": [...], "proxy_header_wait_s": ..., "mode": ... }`.
struct Entry(Listener);

impl<'de> Deserialize<'de> for Entry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(EntryVisitor)
    }
}

struct EntryVisitor;

impl<'de> Visitor<'de> for EntryVisitor {
    type Value = Entry;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(
            "a listen address like \"0.0.0.0:443\" or an object {\"addr\": ..., \"accept\": ..., \"proxy_protocol\": ..., \"trusted_proxies\": [...], \"mode\": ..., \"tcp\": {...}}",
        )
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Entry, E> {
        parse_addr(text)
            .map(|addr| Entry(Listener::plain(addr)))
            .map_err(E::custom)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Entry, A::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Object {
            #[serde(deserialize_with = "addr")]
            addr: SocketAddr,
            name: Option<FdName>,
            proxy_protocol: Option<VersionsWord>,
            trusted_proxies: Option<Vec<Network>>,
            mode: Option<Mode>,
            #[serde(default)]
            tcp: Tcp,
            proxy_header_wait_s: Option<Bounded<1, 3_600>>,
            accept: Option<AcceptWord>,
            connect_ports: Option<Vec<Bounded<1, 65_535>>>,
            max_request_bytes: Option<Bounded<256, 65_536>>,
            users_file: Option<AbsolutePath>,
        }
        let obj = Object::deserialize(de::value::MapAccessDeserializer::new(map))?;
        let accept = match obj.accept {
            None | Some(AcceptWord::Tls) => {
                if obj.connect_ports.is_some()
                    || obj.max_request_bytes.is_some()
                    || obj.users_file.is_some()
                {
                    return Err(de::Error::custom(format!(
                        "listener {}: connect_ports, max_request_bytes and users_file are for a CONNECT listener; add \"accept\": \"connect\"",
                        obj.addr
                    )));
                }
                Accept::Tls
            }
            Some(AcceptWord::Connect) => {
                let ports: Vec<u16> = match obj.connect_ports {
                    None => vec![443],
                    Some(ports) => ports.iter().map(|&Bounded(p)| p as u16).collect(),
                };
                if ports.is_empty() {
                    return Err(de::Error::custom(format!(
                        "listener {}: connect_ports is empty, so every request would be refused; list the ports clients may ask for, like [443]",
                        obj.addr
                    )));
                }
                Accept::Connect(Tunnel {
                    ports,
                    max_request: obj
                        .max_request_bytes
                        .map_or(DEFAULT_MAX_REQUEST, |Bounded(n)| n as usize),
                    users_file: obj.users_file.map(|f| f.0),
                })
            }
        };
        let header_wait = obj
            .proxy_header_wait_s
            .map(|Bounded(s)| Duration::from_secs(s));
        let proxy = match (obj.proxy_protocol, obj.trusted_proxies) {
            (None, None) if header_wait.is_some() => {
                return Err(de::Error::custom(format!(
                    "listener {}: proxy_header_wait_s is how long a trusted edge relay's ready connection may wait for its PROXY header; add \"proxy_protocol\" and \"trusted_proxies\" (the edges' networks)",
                    obj.addr
                )));
            }
            (None, None) => None,
            (Some(VersionsWord(accept)), Some(trusted)) if !trusted.is_empty() => {
                Some(ProxyProtocol {
                    accept,
                    trusted: trusted.into_iter().map(|n| n.0).collect(),
                    header_wait,
                })
            }
            (Some(_), _) => {
                return Err(de::Error::custom(format!(
                    "listener {}: proxy_protocol needs trusted_proxies, the balancers' networks (a header from anyone else would let them claim any client address)",
                    obj.addr
                )));
            }
            (None, Some(_)) => {
                return Err(de::Error::custom(format!(
                    "listener {}: trusted_proxies without proxy_protocol has no effect; add \"proxy_protocol\": \"v2\" (or \"v1\", \"any\")",
                    obj.addr
                )));
            }
        };
        Ok(Entry(Listener {
            addr: obj.addr,
            name: obj.name.map(|n| n.0),
            proxy,
            mode: obj.mode,
            tcp: obj.tcp,
            accept,
        }))
    }
}

fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| invalid(text, ADDR_EXPECTED))
}

fn addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    parse_string(d, ADDR_EXPECTED, parse_addr)
}

/// A systemd `FileDescriptorName=`: 1 to 255 printable ASCII characters, no colon.
struct FdName(String);

impl<'de> Deserialize<'de> for FdName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const EXPECTED: &str =
            "a FileDescriptorName= like \"balancer\" (1 to 255 printable characters, no colon)";
        parse_string(d, EXPECTED, |text| {
            let valid = (1..=255).contains(&text.len())
                && text.bytes().all(|b| b.is_ascii_graphic() && b != b':');
            if valid {
                Ok(FdName(text.to_owned()))
            } else {
                Err(invalid(text, EXPECTED))
            }
        })
    }
}

/// `"v1"`, `"v2"` or `"any"`.
struct VersionsWord(ProxyVersions);

impl<'de> Deserialize<'de> for VersionsWord {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const EXPECTED: &str = "\"v1\", \"v2\" or \"any\"";
        parse_string(d, EXPECTED, |text| match text {
            "v1" => Ok(VersionsWord(ProxyVersions::V1)),
            "v2" => Ok(VersionsWord(ProxyVersions::V2)),
            "any" => Ok(VersionsWord(ProxyVersions::Any)),
            _ => Err(invalid(text, EXPECTED)),
        })
    }
}

/// `"tls"` or `"connect"`.
enum AcceptWord {
    Tls,
    Connect,
}

impl<'de> Deserialize<'de> for AcceptWord {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const EXPECTED: &str =
            "\"tls\" (a ClientHello first) or \"connect\" (an HTTP CONNECT request first)";
        parse_string(d, EXPECTED, |text| match text {
            "tls" => Ok(AcceptWord::Tls),
            "connect" => Ok(AcceptWord::Connect),
            _ => Err(invalid(text, EXPECTED)),
        })
    }
}

impl fmt::Display for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.addr)?;
        if let Some(proxy) = &self.proxy {
            let version = match proxy.accept {
                ProxyVersions::V1 => "v1",
                ProxyVersions::V2 => "v2",
                ProxyVersions::Any => "v1 or v2",
            };
            let trusted: Vec<String> = proxy.trusted.iter().map(|n| n.to_string()).collect();
            write!(f, " (PROXY {version} from {}", trusted.join(", "))?;
            if let Some(wait) = proxy.header_wait {
                write!(f, ", waiting up to {}s for it", wait.as_secs())?;
            }
            f.write_str(")")?;
        }
        if let Accept::Connect(tunnel) = &self.accept {
            let ports: Vec<String> = tunnel.ports.iter().map(|p| p.to_string()).collect();
            write!(f, " (HTTP CONNECT to port {}", ports.join(", "))?;
            if let Some(users) = &tunnel.users_file {
                write!(f, ", users from {}", users.display())?;
            }
            f.write_str(")")?;
        }
        if let Some(mode) = self.mode {
            write!(f, " ({} mode)", mode.word())?;
        }
        Ok(())
    }
}
