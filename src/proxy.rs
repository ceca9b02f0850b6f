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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tlvs {
    /// Alibaba Cloud's `0xE1` (VPC id and endpoint id): text where printable, else hex.
    pub alibaba_privatelink: Option<Box<str>>,
    /// AWS's `0xEA` VPC endpoint id.
    pub aws_vpce_id: Option<Box<str>>,
}

/// A complete header and how many bytes it took; what follows is the client's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
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
pub fn parse(received: &[u8], accept: Accept) -> Result<Option<Parsed>, ProxyError> {
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

fn parse_v2(received: &[u8]) -> Result<Option<Parsed>, ProxyError> {
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
        return Ok(Some(Parsed {
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
            (TLV_ALIBABA_PRIVATELINK, _) => tlvs.alibaba_privatelink = Some(text(&tlv.value)),
            (TLV_AWS, Some((&AWS_SUBTYPE_VPCE_ID, id))) => tlvs.aws_vpce_id = Some(text(id)),
            _ => {}
        }
    }
    Ok(Some(Parsed {
        header: Header::Proxy { source, tlvs },
        len,
    }))
}

fn parse_v1(received: &[u8]) -> Result<Option<Parsed>, ProxyError> {
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
    Ok(Some(Parsed {
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v2_with_tlvs(source: SocketAddr, destination: SocketAddr, tlvs: &[(u8, &[u8])]) -> Vec<u8> {
        let mut builder = v2::Builder::with_addresses(
            v2::Version::Two | Command::Proxy,
            Protocol::Stream,
            (source, destination),
        );
        for (kind, value) in tlvs {
            builder = builder.write_tlv(*kind, value).unwrap();
        }
        builder.build().unwrap()
    }

    /// Every prefix is incomplete, the whole header (with any bytes after it) gives the
    /// same answer: how the header was split over reads cannot matter.
    fn assert_every_prefix(header: &[u8], accept: Accept) -> Parsed {
        for cut in 0..header.len() {
            assert_eq!(
                parse(&header[..cut], accept),
                Ok(None),
                "prefix of {cut} bytes"
            );
        }
        let whole = parse(header, accept).unwrap().unwrap();
        assert_eq!(whole.len, header.len());
        let mut longer = header.to_vec();
        longer.extend_from_slice(&[0x16, 0x03, 0x01, 0x02, 0x00]);
        assert_eq!(parse(&longer, accept).unwrap().unwrap(), whole);
        whole
    }

    #[test]
    fn v1_tcp4_tcp6_and_unknown_on_every_prefix() {
        let cases: [(&[u8], Option<&str>); 3] = [
            (
                b"PROXY TCP4 192.0.2.7 10.20.0.5 51000 443\r\n",
                Some("192.0.2.7:51000"),
            ),
            (
                b"PROXY TCP6 2001:db8::7 2001:db8::5 51000 443\r\n",
                Some("[2001:db8::7]:51000"),
            ),
            (b"PROXY UNKNOWN\r\n", None),
        ];
        for (header, source) in cases {
            for accept in [Accept::V1, Accept::Any] {
                let parsed = assert_every_prefix(header, accept);
                assert_eq!(
                    parsed.header,
                    Header::Proxy {
                        source: source.map(|s| s.parse().unwrap()),
                        tlvs: Tlvs::default()
                    }
                );
            }
        }
    }

    #[test]
    fn v2_proxy_and_local_on_every_prefix_with_cloud_tlvs() {
        let source: SocketAddr = "192.0.2.7:51000".parse().unwrap();
        let destination: SocketAddr = "10.20.0.5:443".parse().unwrap();
        let header = v2_with_tlvs(
            source,
            destination,
            &[
                (0x04, b"\0\0"),
                (0xE1, b"vpc-2ze0abc ep-2zei123"),
                (0xEA, b"\x01vpce-08d2bf15fac5001c9"),
            ],
        );
        let parsed = assert_every_prefix(&header, Accept::V2);
        assert_eq!(
            parsed.header,
            Header::Proxy {
                source: Some(source),
                tlvs: Tlvs {
                    alibaba_privatelink: Some("vpc-2ze0abc ep-2zei123".into()),
                    aws_vpce_id: Some("vpce-08d2bf15fac5001c9".into()),
                }
            }
        );
        // An AWS TLV of another subtype, and a binary Alibaba value, are handled safely.
        let other = v2_with_tlvs(
            source,
            destination,
            &[(0xEA, b"\x02x"), (0xE1, b"\x00\xff")],
        );
        let Header::Proxy { tlvs, .. } = parse(&other, Accept::Any).unwrap().unwrap().header else {
            panic!("not a PROXY header");
        };
        assert_eq!(tlvs.aws_vpce_id, None);
        assert_eq!(tlvs.alibaba_privatelink.as_deref(), Some("00ff"));

        let local = v2::Builder::with_addresses(
            v2::Version::Two | Command::Local,
            Protocol::Unspecified,
            v2::Addresses::Unspecified,
        )
        .build()
        .unwrap();
        assert_eq!(
            assert_every_prefix(&local, Accept::Any).header,
            Header::Local
        );
    }

    #[test]
    fn refusals_name_what_is_wrong() {
        let hello = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01];
        assert_eq!(parse(&hello, Accept::Any), Err(ProxyError::Missing));
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\n", Accept::V1),
            Err(ProxyError::Missing)
        );
        assert_eq!(parse(b"PRONTO", Accept::V1), Err(ProxyError::Missing));
        let v2 = encode(
            Version::V2,
            "192.0.2.7:1".parse().unwrap(),
            "10.0.0.1:443".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(parse(&v2, Accept::V1), Err(ProxyError::WrongVersion("v2")));
        assert_eq!(
            parse(b"PROXY TCP4", Accept::V2),
            Err(ProxyError::WrongVersion("v1"))
        );
        // Bounds: a v1 line without CRLF, and a v2 length beyond the cap, fail at once.
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert_eq!(parse(&long, Accept::V1), Err(ProxyError::TooLong(V1_MAX)));
        let mut big = v2[..16].to_vec();
        big[14..16].copy_from_slice(&((V2_MAX - 16 + 1) as u16).to_be_bytes());
        assert_eq!(parse(&big, Accept::V2), Err(ProxyError::TooLong(V2_MAX)));
        assert_eq!(
            parse(b"PROXY TCP4 nope\r\n", Accept::V1),
            Err(ProxyError::Malformed("v1"))
        );
        // A TLV whose length runs past the header's end: the last TLV is type, length (2
        // bytes), value "ab"; its length becomes 9.
        let mut bad_tlv = v2_with_tlvs(
            "192.0.2.7:1".parse().unwrap(),
            "10.0.0.1:443".parse().unwrap(),
            &[(0x04, b"ab")],
        );
        let n = bad_tlv.len();
        bad_tlv[n - 4..n - 2].copy_from_slice(&9u16.to_be_bytes());
        assert_eq!(
            parse(&bad_tlv, Accept::V2),
            Err(ProxyError::Malformed("tlv"))
        );
        // UDP is not something a TCP relay can use.
        let udp = v2::Builder::with_addresses(
            v2::Version::Two | Command::Proxy,
            Protocol::Datagram,
            (
                "192.0.2.7:1".parse::<SocketAddr>().unwrap(),
                "10.0.0.1:443".parse::<SocketAddr>().unwrap(),
            ),
        )
        .build()
        .unwrap();
        assert_eq!(parse(&udp, Accept::V2), Err(ProxyError::NotTcp));
    }

    #[test]
    fn encode_sends_mixed_families_as_ipv6() {
        let v4: SocketAddr = "192.0.2.7:51000".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::5]:443".parse().unwrap();
        assert_eq!(
            encode(Version::V1, v4, v6).unwrap(),
            b"PROXY TCP6 ::ffff:192.0.2.7 2001:db8::5 51000 443\r\n"
        );
        let mapped: SocketAddr = "[::ffff:192.0.2.7]:51000".parse().unwrap();
        assert_eq!(
            encode(Version::V1, mapped, "10.0.0.1:443".parse().unwrap()).unwrap(),
            b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 443\r\n"
        );
    }

    fn any_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
            (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        ]
    }

    proptest! {
        /// What the relay sends, the relay reads back: the source it was given (in its
        /// canonical form), whatever the version and however the bytes are split.
        #[test]
        fn encoded_headers_parse_back_on_any_split(
            version in prop_oneof![Just(Version::V1), Just(Version::V2)],
            source in any_addr(),
            destination in any_addr(),
            split in any::<prop::sample::Index>(),
        ) {
            let header = encode(version, source, destination).unwrap();
            let cut = split.index(header.len());
            prop_assert_eq!(parse(&header[..cut], Accept::Any), Ok(None));
            let parsed = parse(&header, Accept::Any).unwrap().unwrap();
            prop_assert_eq!(parsed.len, header.len());
            let Header::Proxy { source: Some(got), .. } = parsed.header else {
                return Err(TestCaseError::fail("no source"));
            };
            prop_assert_eq!(got.ip().to_canonical(), source.ip().to_canonical());
            prop_assert_eq!(got.port(), source.port());
        }

        /// Arbitrary bytes never panic, and an answer never changes with more bytes.
        #[test]
        fn arbitrary_bytes_are_answered_consistently(
            start in prop_oneof![Just(&b""[..]), Just(V2_SIGNATURE), Just(&b"PROXY "[..])],
            rest in prop::collection::vec(any::<u8>(), 0..600),
        ) {
            let bytes = [start, &rest].concat();
            let whole = parse(&bytes, Accept::Any);
            for cut in 0..bytes.len() {
                match parse(&bytes[..cut], Accept::Any) {
                    Ok(None) => {}
                    earlier => prop_assert_eq!(earlier, whole.clone()),
                }
            }
        }
    }
}
