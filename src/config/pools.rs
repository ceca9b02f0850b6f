//! The `pools` array: ready connections an edge relay keeps to a pinned upstream (the far
//! relay), so a new client connection does not pay the long leg's TCP handshake.
//!
//! ```json
//! "pools": [{ "upstream": "10.20.0.5:443", "size": 8, "max_idle_s": 30 }]
//! ```

use super::values::{Bounded, invalid, parse_string};
use crate::rules::Upstream;
use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use std::fmt;
use std::time::Duration;

/// Ready connections to one upstream. A rule whose `upstream` is the same takes its
/// connections from here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    /// The far relay, by address or by name (resolved as a pinned rule's would be).
    pub upstream: Upstream,
    /// How many connections to keep established.
    pub size: usize,
    /// A connection unused this long is closed and replaced; shorter than the far side's
    /// `proxy_header_wait_s`, or the far side closes it first.
    pub max_idle: Duration,
}

/// The far side's default, and so the longest a pooled connection may wait by default.
pub const DEFAULT_MAX_IDLE_S: u64 = 30;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolFile {
    #[serde(deserialize_with = "upstream")]
    upstream: Upstream,
    size: Bounded<1, 1024>,
    #[serde(default = "default_max_idle")]
    max_idle_s: Bounded<1, 3_600>,
}

fn default_max_idle() -> Bounded<1, 3_600> {
    Bounded(DEFAULT_MAX_IDLE_S)
}

fn upstream<'de, D: Deserializer<'de>>(d: D) -> Result<Upstream, D::Error> {
    const EXPECTED: &str = "the far relay's address or name and its port, like \"10.20.0.5:443\" or \"far.example.com:443\"";
    parse_string(d, EXPECTED, |text| {
        text.parse().map_err(|()| invalid(text, EXPECTED))
    })
}

/// The validated `pools` array: no upstream twice.
#[derive(Default)]
pub(super) struct PoolList(pub(super) Vec<PoolSpec>);

impl<'de> Deserialize<'de> for PoolList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = PoolList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "an array of pools like {\"upstream\": \"10.20.0.5:443\", \"size\": 8, \"max_idle_s\": 30}",
                )
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PoolList, A::Error> {
                let mut list: Vec<PoolSpec> = Vec::new();
                while let Some(pool) = seq.next_element::<PoolFile>()? {
                    let upstream = pool.upstream;
                    if list.iter().any(|p| p.upstream == upstream) {
                        return Err(de::Error::custom(format!("pools lists {upstream} twice")));
                    }
                    list.push(PoolSpec {
                        upstream,
                        size: pool.size.0 as usize,
                        max_idle: Duration::from_secs(pool.max_idle_s.0),
                    });
                }
                Ok(PoolList(list))
            }
        }
        d.deserialize_seq(ListVisitor)
    }
}
