//! What client machines are pointed at: the relay's addresses, and the names in the rules.
//! Shared by `snirelay hosts` and the DNS server formats. Pure.

use crate::config::Config;
use crate::rules::Pattern;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The relay as clients reach it: an IPv4 address, and the IPv6 address that answers AAAA
/// queries (its own, or the IPv4-mapped form, which a dual-stack client reaches over IPv4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayAddrs {
    /// For A answers.
    pub v4: Ipv4Addr,
    /// For AAAA answers.
    pub v6: Ipv6Addr,
}

impl RelayAddrs {
    /// From the `--relay` addresses: one IPv4 and at most one IPv6.
    pub fn from_given(given: &[IpAddr]) -> Result<RelayAddrs, String> {
        let mut v4 = None;
        let mut v6 = None;
        for ip in given {
            let twice = match ip {
                IpAddr::V4(ip) => v4.replace(*ip).is_some(),
                IpAddr::V6(ip) => v6.replace(*ip).is_some(),
            };
            if twice {
                return Err(
                    "--relay takes one address per family: an IPv4 one, and optionally an IPv6 one"
                        .to_owned(),
                );
            }
        }
        let v4 = v4.ok_or(
            "--relay needs the relay's IPv4 address: clients asking for an A record must get the relay too, or they go around it",
        )?;
        Ok(RelayAddrs {
            v4,
            v6: v6.unwrap_or_else(|| v4.to_ipv6_mapped()),
        })
    }
}

/// The exact names and the wildcard suffixes of `config`'s rules, in rule order.
pub(super) fn names(config: &Config) -> (Vec<String>, Vec<String>) {
    let (mut exact, mut wildcards) = (Vec::new(), Vec::new());
    for rule in config.rules.iter() {
        match &rule.pattern {
            Pattern::Exact(name) => exact.push(name.to_string()),
            Pattern::Wildcard(suffix) => wildcards.push(suffix.to_string()),
            Pattern::Label(_) => {}
        }
    }
    (exact, wildcards)
}

/// The label patterns (`*-aiplatform.googleapis.com`) of `config`'s rules, in rule order.
pub(super) fn labels(config: &Config) -> Vec<&crate::rules::LabelPattern> {
    config
        .rules
        .iter()
        .filter_map(|rule| match &rule.pattern {
            Pattern::Label(label) => Some(label),
            _ => None,
        })
        .collect()
}

/// What a format that cannot match part of a label says for each label pattern, as
/// comment lines starting with `comment`.
pub(super) fn label_notes(out: &mut String, comment: &str, config: &Config) {
    for label in labels(config) {
        out.push_str(&format!(
            "{comment} *{key}: this format cannot match part of a label; list the names you use
             {comment}   (like example{key}), or point clients at a CONNECT listener instead
",
            key = label.key()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(given: &[&str]) -> Result<RelayAddrs, String> {
        RelayAddrs::from_given(&given.iter().map(|s| s.parse().unwrap()).collect::<Vec<_>>())
    }

    #[test]
    fn the_ipv6_address_is_the_relays_own_or_the_mapped_form() {
        let mapped = relay(&["10.20.0.5"]).unwrap();
        assert_eq!(mapped.v6.to_string(), "::ffff:10.20.0.5");
        let both = relay(&["fd00::5", "10.20.0.5"]).unwrap();
        assert_eq!(
            (both.v4.to_string(), both.v6.to_string()),
            ("10.20.0.5".into(), "fd00::5".into())
        );
        assert!(relay(&["fd00::5"]).unwrap_err().contains("IPv4"));
        assert!(
            relay(&["10.0.0.1", "10.0.0.2"])
                .unwrap_err()
                .contains("one address per family")
        );
    }
}
