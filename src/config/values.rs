//! The value types of `rules.json`, each checked as serde reads it, so every error carries
//! the line and column of the value that is wrong.

use ipnet::IpNet;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Unexpected, Visitor};
use std::collections::HashSet;
use std::fmt;
use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};

/// A JSON object only: serde's derive would also take an array as positional fields, so a
/// misplaced `[...]` would be read silently instead of refused.
#[derive(Default)]
pub(super) struct Object<T>(pub(super) T);

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
#[derive(Default)]
pub(super) struct Bounded<const MIN: u64, const MAX: u64>(pub(super) u64);

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
pub(super) fn parse_string<'de, D, T>(
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
pub(super) fn invalid(text: &str, expected: &str) -> String {
    format!("invalid value: string {text:?}, expected {expected}")
}

/// What one kind of address list holds.
pub(super) trait AddrKind {
    const EXPECTED: &'static str;
    const WHAT: &'static str;
    fn parse(text: &str) -> Option<SocketAddr>;
}

pub(super) struct Nameserver;
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
pub(super) struct AdminAddr(pub(super) SocketAddr);

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
pub(super) struct AddrList<K>(pub(super) Vec<SocketAddr>, pub(super) PhantomData<K>);

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
pub(super) struct Network(pub(super) IpNet);

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

/// What happens to a name no rule allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Refused (`not_allowed`).
    #[default]
    Enforce,
    /// Forwarded to the name itself anyway and logged as `would_refuse`: for learning what
    /// an application needs before enforcing.
    Monitor,
}

impl Mode {
    /// The word the file and the logs use.
    pub fn word(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Monitor => "monitor",
        }
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const EXPECTED: &str = "\"enforce\" or \"monitor\"";
        parse_string(d, EXPECTED, |text| match text {
            "enforce" => Ok(Mode::Enforce),
            "monitor" => Ok(Mode::Monitor),
            _ => Err(invalid(text, EXPECTED)),
        })
    }
}

/// An absolute path: the relay may run from any directory.
pub(super) struct AbsolutePath(pub(super) std::path::PathBuf);

impl<'de> Deserialize<'de> for AbsolutePath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const EXPECTED: &str = "an absolute path, like \"/etc/snirelay/users\"";
        parse_string(d, EXPECTED, |text| {
            let path = std::path::PathBuf::from(text);
            match path.is_absolute() {
                true => Ok(AbsolutePath(path)),
                false => Err(invalid(text, EXPECTED)),
            }
        })
    }
}
