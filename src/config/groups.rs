//! The `groups` array: client groups, each with its own names and mode.
//!
//! ```json
//! "groups": [{ "name": "tts", "clients": ["10.1.0.0/16"], "users": ["app1"],
//!              "allow": ["texttospeech.googleapis.com"], "mode": "enforce" }]
//! ```
//!
//! A group matches a client by source network and/or proxy user; the first group that
//! matches decides, with the file's `allow` (shared by every group) plus its own.

use super::allow::AllowList;
use super::values::{Mode, Network, invalid, parse_string};
use crate::rules::{Pattern, Rules};
use ipnet::IpNet;
use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

/// One group of clients.
#[derive(Debug, Clone)]
pub struct Group {
    /// Its name: a log field and a metrics label.
    pub name: Arc<str>,
    /// Source networks it takes; empty: any (then `users` decides).
    pub clients: Vec<IpNet>,
    /// Proxy users it takes; empty: any (then `clients` decides).
    pub users: Vec<String>,
    /// Its mode, over the listener's and the file's.
    pub mode: Option<Mode>,
    /// Its own rules, as written.
    pub own: Rules,
    /// What it allows: the file's `allow` and its own, where its own rule for a pattern
    /// replaces the shared one (built by [`Group::with_shared`]).
    pub rules: Rules,
}

impl Group {
    /// Gives the group the shared rules: every shared rule whose pattern its own list does
    /// not also have, then its own.
    pub fn with_shared(mut self, shared: &Rules) -> Group {
        let own: HashSet<&Pattern> = self.own.iter().map(|rule| &rule.pattern).collect();
        let mut rules = Rules::default();
        let kept = shared.iter().filter(|rule| !own.contains(&rule.pattern));
        for rule in kept.chain(self.own.iter()) {
            // Patterns are unique in each list, and a shared one this group's list repeats
            // was left out: nothing here is a duplicate.
            let _ = rules.push(rule.clone());
        }
        self.rules = rules;
        self
    }
}

impl PartialEq for Group {
    fn eq(&self, other: &Group) -> bool {
        self.name == other.name
            && self.clients == other.clients
            && self.users == other.users
            && self.mode == other.mode
            && self.own.iter().eq(other.own.iter())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupFile {
    name: GroupName,
    #[serde(default)]
    clients: Vec<Network>,
    #[serde(default)]
    users: Vec<String>,
    allow: AllowList,
    mode: Option<Mode>,
}

/// 1 to 32 lowercase letters, digits, `-` and `_`: a metrics label value.
struct GroupName(Arc<str>);

impl<'de> Deserialize<'de> for GroupName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const EXPECTED: &str =
            "a group name of 1 to 32 lowercase letters, digits, '-' and '_', like \"tts\"";
        parse_string(d, EXPECTED, |text| {
            let valid = (1..=32).contains(&text.len())
                && text.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                });
            match valid {
                true => Ok(GroupName(text.into())),
                false => Err(invalid(text, EXPECTED)),
            }
        })
    }
}

/// The validated `groups` array: no name twice, every user named once per group.
#[derive(Default)]
pub(super) struct GroupList(pub(super) Vec<Group>);

impl<'de> Deserialize<'de> for GroupList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = GroupList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "an array of groups like {\"name\": \"tts\", \"clients\": [\"10.1.0.0/16\"], \"allow\": [...]}",
                )
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<GroupList, A::Error> {
                let mut list: Vec<Group> = Vec::new();
                while let Some(group) = seq.next_element::<GroupFile>()? {
                    let name = group.name.0;
                    if list.iter().any(|g| g.name == name) {
                        return Err(de::Error::custom(format!("groups lists {name} twice")));
                    }
                    if let Some(bad) = group.users.iter().find(|u| u.is_empty() || u.contains(':'))
                    {
                        return Err(de::Error::custom(format!(
                            "group {name}: {bad:?} is not a user name (non-empty, no ':')"
                        )));
                    }
                    list.push(Group {
                        name,
                        clients: group.clients.into_iter().map(|n| n.0).collect(),
                        users: group.users,
                        mode: group.mode,
                        own: group.allow.0,
                        rules: Rules::default(),
                    });
                }
                Ok(GroupList(list))
            }
        }
        d.deserialize_seq(ListVisitor)
    }
}
