//! Destination policy: where a client-chosen name may lead. Pure.
//!
//! An address that DNS returned for a name the client supplied must be public unicast,
//! unless the operator listed its network in `private_destinations`; and it may never be one
//! of the relay's own listeners (a copied /etc/hosts would otherwise make the relay dial
//! itself forever). Operator input (pinned upstreams, `--resolve`) never comes through here.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Why a destination address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Forbidden {
    /// The address is one of the relay's own listeners.
    #[error("is this relay's own listener")]
    OwnListener,
    /// The address is in a special-purpose range; the range is named.
    #[error("is in a non-public range ({0})")]
    NotPublic(&'static str),
}

/// The rules that apply to DNS answers for client-supplied names.
#[derive(Debug, Clone, Default)]
pub struct DestinationPolicy {
    /// Networks exempt from the public-unicast requirement.
    pub private_allowed: Vec<IpNet>,
    /// The relay's own listening sockets.
    pub listeners: Vec<SocketAddr>,
}

impl DestinationPolicy {
    /// Checks one destination. `is_local` says whether an address belongs to this host; it
    /// is asked only for addresses on a port that a wildcard listener (`0.0.0.0`, `[::]`)
    /// serves.
    pub fn check(
        &self,
        dest: SocketAddr,
        is_local: impl Fn(IpAddr) -> bool,
    ) -> Result<(), Forbidden> {
        let ip = dest.ip().to_canonical();
        // Ports first: `is_local` may be a system call, asked only when the port matches.
        for listener in self.listeners.iter().filter(|l| l.port() == dest.port()) {
            let own_ip = listener.ip().to_canonical();
            if own_ip == ip || (own_ip.is_unspecified() && (ip.is_loopback() || is_local(ip))) {
                return Err(Forbidden::OwnListener);
            }
        }
        if self.private_allowed.iter().any(|net| net.contains(&ip)) {
            return Ok(());
        }
        match special_range(ip) {
            Some(range) => Err(Forbidden::NotPublic(range)),
            None => Ok(()),
        }
    }
}

/// Whether a client at `peer` may connect. A dual-stack listener reports IPv4 clients as
/// IPv4-mapped IPv6 addresses; they are judged as the IPv4 address they are.
pub fn client_allowed(peer: IpAddr, clients: &[IpNet]) -> bool {
    let ip = peer.to_canonical();
    clients.iter().any(|net| net.contains(&ip))
}

/// The special-purpose range `ip` falls in, or `None` for public unicast. IPv4-mapped and
/// IPv4-embedding IPv6 forms are judged by the IPv4 address they carry.
pub fn special_range(ip: IpAddr) -> Option<&'static str> {
    match ip.to_canonical() {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

const V4_RANGES: &[(u32, u8, &str)] = &[
    (0x0000_0000, 8, "this_network"),
    (0x0a00_0000, 8, "private"),
    (0x6440_0000, 10, "shared_cgnat"),
    (0x7f00_0000, 8, "loopback"),
    (0xa9fe_0000, 16, "link_local"),
    (0xac10_0000, 12, "private"),
    (0xc000_0000, 24, "ietf_protocol"),
    (0xc000_0200, 24, "documentation"),
    (0xc058_6300, 24, "relay_anycast"),
    (0xc0a8_0000, 16, "private"),
    (0xc612_0000, 15, "benchmarking"),
    (0xc633_6400, 24, "documentation"),
    (0xcb00_7100, 24, "documentation"),
    (0xe000_0000, 4, "multicast"),
    (0xffff_ffff, 32, "broadcast"),
    (0xf000_0000, 4, "reserved"),
];

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let bits = u32::from(ip);
    V4_RANGES
        .iter()
        .find(|(net, len, _)| bits & mask32(*len) == *net)
        .map(|(_, _, name)| *name)
}

const V6_RANGES: &[(u128, u8, &str)] = &[
    (0x2001_0000_0000_0000_0000_0000_0000_0000, 32, "teredo"),
    (
        0x2001_0db8_0000_0000_0000_0000_0000_0000,
        32,
        "documentation",
    ),
    (
        0x2001_0000_0000_0000_0000_0000_0000_0000,
        23,
        "ietf_protocol",
    ),
    (
        0x3fff_0000_0000_0000_0000_0000_0000_0000,
        20,
        "documentation",
    ),
    (
        0x5f00_0000_0000_0000_0000_0000_0000_0000,
        16,
        "segment_routing",
    ),
];

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let bits = u128::from(ip);
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) reach the IPv4 address they embed.
    if bits >> 32 == 0x0064_ff9b_0000_0000_0000_0000 {
        return special_v4(Ipv4Addr::from(bits as u32));
    }
    if bits >> 112 == 0x2002 {
        return special_v4(Ipv4Addr::from((bits >> 80) as u32));
    }
    let s = ip.segments()[0];
    if s & 0xfe00 == 0xfc00 {
        return Some("unique_local");
    }
    if s & 0xffc0 == 0xfe80 {
        return Some("link_local");
    }
    if s & 0xff00 == 0xff00 {
        return Some("multicast");
    }
    // Only 2000::/3 is allocated as global unicast; everything else is reserved.
    if s & 0xe000 != 0x2000 {
        return Some("reserved");
    }
    V6_RANGES
        .iter()
        .find(|(net, len, _)| bits & mask128(*len) == *net)
        .map(|(_, _, name)| *name)
}

fn mask32(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn mask128(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(s: &str) -> Option<&'static str> {
        special_range(s.parse().unwrap())
    }

    #[test]
    fn public_addresses_pass() {
        for ip in [
            "8.8.8.8",
            "142.250.180.10",
            "2a00:1450:4009:81f::200a",
            "2001:4860:4860::8888",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert_eq!(range(ip), None, "{ip}");
        }
    }

    #[test]
    fn every_special_range_is_refused() {
        let cases = [
            ("0.0.0.0", "this_network"),
            ("10.1.2.3", "private"),
            ("172.31.255.255", "private"),
            ("192.168.0.1", "private"),
            ("100.64.0.1", "shared_cgnat"),
            ("100.127.255.255", "shared_cgnat"),
            ("127.0.0.1", "loopback"),
            ("169.254.169.254", "link_local"),
            ("192.0.2.1", "documentation"),
            ("198.51.100.1", "documentation"),
            ("203.0.113.1", "documentation"),
            ("198.18.0.1", "benchmarking"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("240.0.0.1", "reserved"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.0.0.1", "private"),
            ("64:ff9b::a00:1", "private"),
            ("2002:c0a8:0101::1", "private"),
            ("fd00::1", "unique_local"),
            ("fe80::1", "link_local"),
            ("ff02::1", "multicast"),
            ("2001:db8::1", "documentation"),
            ("3fff::1", "documentation"),
            ("2001:0:4136:e378::1", "teredo"),
            ("100::1", "reserved"),
        ];
        for (ip, want) in cases {
            assert_eq!(range(ip), Some(want), "{ip}");
        }
        assert_eq!(range("100.63.255.255"), None);
        assert_eq!(range("172.32.0.1"), None);
    }

    #[test]
    fn clients_are_matched_by_network_and_mapped_addresses_as_ipv4() {
        let clients: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()];
        let allowed = |s: &str| client_allowed(s.parse().unwrap(), &clients);
        assert!(allowed("10.1.2.3"));
        assert!(allowed("::ffff:10.1.2.3"));
        assert!(allowed("fd12::1"));
        assert!(!allowed("11.0.0.1"));
        assert!(!allowed("::ffff:11.0.0.1"));
        assert!(!allowed("fe80::1"));
        assert!(!client_allowed("10.1.2.3".parse().unwrap(), &[]));
    }

    #[test]
    fn private_destinations_exempt_but_own_listener_never() {
        let policy = DestinationPolicy {
            private_allowed: vec![
                "10.20.0.0/16".parse().unwrap(),
                "127.0.0.0/8".parse().unwrap(),
            ],
            listeners: vec![
                "127.0.0.1:8443".parse().unwrap(),
                "0.0.0.0:443".parse().unwrap(),
            ],
        };
        let never_local = |_| false;
        let check =
            |s: &str, local: &dyn Fn(IpAddr) -> bool| policy.check(s.parse().unwrap(), local);
        assert_eq!(check("10.20.1.1:443", &never_local), Ok(()));
        assert_eq!(
            check("10.21.1.1:443", &never_local),
            Err(Forbidden::NotPublic("private"))
        );
        assert_eq!(check("127.0.0.1:9000", &never_local), Ok(()));
        assert_eq!(
            check("127.0.0.1:8443", &never_local),
            Err(Forbidden::OwnListener)
        );
        assert_eq!(
            check("[::ffff:127.0.0.1]:8443", &never_local),
            Err(Forbidden::OwnListener)
        );
        assert_eq!(
            check("127.0.0.5:443", &never_local),
            Err(Forbidden::OwnListener)
        );
        let this_host = |ip: IpAddr| ip == "10.20.0.5".parse::<IpAddr>().unwrap();
        assert_eq!(
            check("10.20.0.5:443", &this_host),
            Err(Forbidden::OwnListener)
        );
        assert_eq!(check("10.20.0.6:443", &this_host), Ok(()));
        assert_eq!(check("10.20.0.5:444", &this_host), Ok(()));
        let unasked = |ip: IpAddr| panic!("asked whether {ip} is local for another port");
        assert_eq!(check("8.8.8.8:444", &unasked), Ok(()));
    }
}
