//! The `allow` array: names, wildcards, label patterns and `{name, upstream}` objects, no
//! duplicates.

use super::values::{invalid, parse_string};
use crate::proxy::Version;
use crate::rules::{Pattern, Rule, Rules, Upstream};
use crate::tcp_options::Tcp;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// The `allow` array: names, wildcards and `{name, upstream}` objects, no duplicates.
pub(super) struct AllowList(pub(super) Rules);

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

const PATTERN_EXPECTED: &str = "a host name like \"api.example.com\", a wildcard like \"*.example.com\" or a label pattern like \"*-api.example.com\"";
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
        f.write_str(
            "a name string or an object {\"name\": ..., \"upstream\": ..., \"send_proxy\": ..., \"tcp\": {...}}",
        )
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<(), E> {
        let pattern = parse_pattern(text).map_err(E::custom)?;
        self.0
            .push(Rule::new(pattern, None, None))
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
            #[serde(default, deserialize_with = "send_proxy")]
            send_proxy: Option<Version>,
            tcp: Option<Tcp>,
        }
        let obj = Object::deserialize(de::value::MapAccessDeserializer::new(map))?;
        let rule = Rule {
            tcp: obj.tcp,
            ..Rule::new(obj.name, obj.upstream, obj.send_proxy)
        };
        self.0.push(rule).map_err(de::Error::custom)
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

fn send_proxy<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Version>, D::Error> {
    const EXPECTED: &str = "\"v1\" or \"v2\"";
    parse_string(d, EXPECTED, |text| match text {
        "v1" => Ok(Some(Version::V1)),
        "v2" => Ok(Some(Version::V2)),
        _ => Err(invalid(text, EXPECTED)),
    })
}
