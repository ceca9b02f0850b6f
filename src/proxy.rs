//! The PROXY protocol (v1 text, v2 binary), as a load balancer prepends it: pure functions
//! over the bytes received so far, like the ClientHello reader. `ppp` parses; this module
//! decides when a header is incomplete, bounds it, and keeps what the relay uses.

use ppp::v2::{self, Command, Protocol};
use ppp::{HeaderResult, v1};
use std::net::{IpAddr, SocketAddr};

/// Longest v1 header, CRLF included (the spec's worst case).
pub const V1_MAX: usize = 107;
/// Longest v2 header accepted: the 16-byte preamble, the largest address block (216 bytes
/// for UNIX sockets) and room for TLVs, as HAProxy bounds it.
pub const V2_MAX: usize = 536;
const V2_SIGNATURE: &[u8] = v2::PROTOCOL_PREFIX;
const V2_PREAMBLE: usize = 16;
const V1_PREFIX: &[u8] = b"PROXY ";
/// Alibaba Cloud PrivateLink: the consumer's VPC and endpoint.
const TLV_ALIBABA_PRIVATELINK: u8 = 0xE1;
/// The subtypes Alibaba Cloud puts first in each `0xE1` TLV, one TLV per id.
const ALIBABA_SUBTYPE_VPC_ID: u8 = 0x01;
const ALIBABA_SUBTYPE_ENDPOINT_ID: u8 = 0x02;
const ALIBABA_SUBTYPE_ENDPOINT_SERVICE_ID: u8 = 0x03;
/// AWS PrivateLink: subtype 0x01 carries the VPC endpoint id.
const TLV_AWS: u8 = 0xEA;
const AWS_SUBTYPE_VPCE_ID: u8 = 0x01;

/// Which versions a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// Text headers only.
    V1,
    /// Binary headers only.
    V2,
    /// Either, told apart by the first byte.
    Any,
}

/// A version to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Text.
    V1,
    /// Binary.
    V2,
}

/// What a complete header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Header {
    /// v2 `LOCAL`: the balancer's own connection, a health check. Nothing is relayed.
    Local,
    /// A relayed connection. `source` is `None` for v1 `UNKNOWN` and v2 `AF_UNSPEC`,
    /// where the spec says to use the connection's own addresses.
    Proxy {
        /// The real client.
        source: Option<SocketAddr>,
        /// The TLVs the relay logs.
        tlvs: Tlvs,
    },
}

/// The TLVs worth a log field; every other TLV is skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tlvs {
    /// Every Alibaba Cloud `0xE1` TLV, in order, separated by spaces: each as text where
    /// printable, else hex (its subtype byte included).
    pub alibaba_privatelink: Option<Box<str>>,
    /// Alibaba Cloud's `0xE1` subtype `0x01`: the client's VPC id.
    pub alibaba_vpc_id: Option<Box<str>>,
    /// Alibaba Cloud's `0xE1` subtype `0x02`: the PrivateLink endpoint id.
    pub alibaba_endpoint_id: Option<Box<str>>,
    /// Alibaba Cloud's `0xE1` subtype `0x03`: the endpoint service id.
    pub alibaba_endpoint_service_id: Option<Box<str>>,
    /// AWS's `0xEA` subtype `0x01`: the VPC endpoint id (the one subtype AWS defines).
    pub aws_vpce_id: Option<Box<str>>,
}

/// A complete header and how many bytes it took; what follows is the client's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedHeader {
    /// The header.
    pub header: Header,
    /// Its length in bytes.
    pub len: usize,
}

/// Why a PROXY header was refused. The reason word is always `bad_proxy_header`;
/// `detail()` narrows it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The bytes do not start a PROXY header (a client that connected directly?).
    #[error("no PROXY protocol header")]
    Missing,
    /// A header of a version this listener does not accept.
    #[error("PROXY protocol {0} header on a listener that does not accept it")]
    WrongVersion(&'static str),
    /// Longer than the bound for its version.
    #[error("PROXY protocol header longer than {0} bytes")]
    TooLong(usize),
    /// Not a valid header.
    #[error("malformed PROXY protocol header ({0})")]
    Malformed(&'static str),
    /// A header for a UNIX socket or UDP, which a TCP relay cannot use.
    #[error("PROXY protocol header for a transport other than TCP")]
    NotTcp,
}

impl ProxyError {
    /// A stable word for the log's detail field.
    pub fn detail(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::WrongVersion(_) => "wrong_version",
            Self::TooLong(_) => "too_long",
            Self::Malformed(_) => "malformed",
            Self::NotTcp => "not_tcp",
        }
    }
}

/// Parses the header at the start of `received`. `Ok(None)`: read more. The answer depends
/// only on the bytes, never on how they were split.
pub fn parse(received: &[u8], accept: Accept) -> Result<Option<ParsedHeader>, ProxyError> {
    let Some(&first) = received.first() else {
        return Ok(None);
    };
    if first == V2_SIGNATURE[0] {
        if accept == Accept::V1 {
            return Err(ProxyError::WrongVersion("v2"));
        }
        parse_v2(received)
    } else if first == V1_PREFIX[0] {
        if accept == Accept::V2 {
            return Err(ProxyError::WrongVersion("v1"));
        }
        parse_v1(received)
    } else {
        Err(ProxyError::Missing)
    }
}

fn parse_v2(received: &[u8]) -> Result<Option<ParsedHeader>, ProxyError> {
    let known = received.len().min(V2_SIGNATURE.len());
    if received[..known] != V2_SIGNATURE[..known] {
        return Err(ProxyError::Missing);
    }
    if received.len() < V2_PREAMBLE {
        return Ok(None);
    }
    let len = V2_PREAMBLE + usize::from(u16::from_be_bytes([received[14], received[15]]));
    if len > V2_MAX {
        return Err(ProxyError::TooLong(V2_MAX));
    }
    if received.len() < len {
        return Ok(None);
    }
    let header = match HeaderResult::parse(&received[..len]) {
        HeaderResult::V2(Ok(header)) => header,
        _ => return Err(ProxyError::Malformed("v2")),
    };
    if header.command == Command::Local {
        return Ok(Some(ParsedHeader {
            header: Header::Local,
            len,
        }));
    }
    let source = match header.addresses {
        v2::Addresses::Unspecified => None,
        v2::Addresses::IPv4(a) if header.protocol == Protocol::Stream => {
            Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
        }
        v2::Addresses::IPv6(a) if header.protocol == Protocol::Stream => {
            Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
        }
        _ => return Err(ProxyError::NotTcp),
    };
    let mut tlvs = Tlvs::default();
    for tlv in header.tlvs() {
        let tlv = tlv.map_err(|_| ProxyError::Malformed("tlv"))?;
        match (tlv.kind, tlv.value.split_first()) {
            (TLV_ALIBABA_PRIVATELINK, subtyped) => {
                let all = match tlvs.alibaba_privatelink.take() {
                    Some(before) => format!("{before} {}", text(&tlv.value)).into(),
                    None => text(&tlv.value),
                };
                tlvs.alibaba_privatelink = Some(all);
                let field = match subtyped {
                    Some((&ALIBABA_SUBTYPE_VPC_ID, id)) => Some((&mut tlvs.alibaba_vpc_id, id)),
                    Some((&ALIBABA_SUBTYPE_ENDPOINT_ID, id)) => {
                        Some((&mut tlvs.alibaba_endpoint_id, id))
                    }
                    Some((&ALIBABA_SUBTYPE_ENDPOINT_SERVICE_ID, id)) => {
                        Some((&mut tlvs.alibaba_endpoint_service_id, id))
                    }
                    _ => None,
                };
                if let Some((field, id)) = field {
                    *field = Some(text(id));
                }
            }
            (TLV_AWS, Some((&AWS_SUBTYPE_VPCE_ID, id))) => tlvs.aws_vpce_id = Some(text(id)),
            _ => {}
        }
    }
    Ok(Some(ParsedHeader {
        header: Header::Proxy { source, tlvs },
        len,
    }))
}

fn parse_v1(received: &[u8]) -> Result<Option<ParsedHeader>, ProxyError> {
    let known = received.len().min(V1_PREFIX.len());
    if received[..known] != V1_PREFIX[..known] {
        return Err(ProxyError::Missing);
    }
    let window = &received[..received.len().min(V1_MAX)];
    let Some(cr) = window.windows(2).position(|w| w == b"\r\n") else {
        return if received.len() >= V1_MAX {
            Err(ProxyError::TooLong(V1_MAX))
        } else {
            Ok(None)
        };
    };
    let len = cr + 2;
    let header = v1::Header::try_from(&received[..len]).map_err(|_| ProxyError::Malformed("v1"))?;
    let source = match header.addresses {
        v1::Addresses::Unknown => None,
        v1::Addresses::Tcp4(a) => {
            Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
        }
        v1::Addresses::Tcp6(a) => {
            Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
        }
    };
    Ok(Some(ParsedHeader {
        header: Header::Proxy {
            source,
            tlvs: Tlvs::default(),
        },
        len,
    }))
}

/// A TLV value for a log field: as text when it is printable ASCII, else as hex.
fn text(value: &[u8]) -> Box<str> {
    if !value.is_empty() && value.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        String::from_utf8_lossy(value).into()
    } else {
        value
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
            .into()
    }
}

/// The header a relay sends ahead of a connection from `source` to `destination`. Mixed
/// families are sent as IPv6, the IPv4 side mapped. Fails only where `ppp`'s builder would
/// (a payload over 64 KiB, which two addresses never are).
pub fn encode(
    version: Version,
    source: SocketAddr,
    destination: SocketAddr,
) -> std::io::Result<Vec<u8>> {
    let (source, destination) = same_family(source, destination);
    match version {
        Version::V1 => {
            let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
            Ok(format!(
                "PROXY {family} {} {} {} {}\r\n",
                source.ip(),
                destination.ip(),
                source.port(),
                destination.port()
            )
            .into_bytes())
        }
        Version::V2 => v2::Builder::with_addresses(
            v2::Version::Two | Command::Proxy,
            Protocol::Stream,
            (source, destination),
        )
        .build(),
    }
}

/// Both addresses in one family: IPv4 when both are (IPv4-mapped IPv6 counts as IPv4),
/// else both IPv6.
fn same_family(source: SocketAddr, destination: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let (source, destination) = (canonical(source), canonical(destination));
    if source.is_ipv4() == destination.is_ipv4() {
        return (source, destination);
    }
    let v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    (v6(source), v6(destination))
}
