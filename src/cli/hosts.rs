//! `snirelay hosts`: what points client machines at the relay, as /etc/hosts lines or as
//! configuration for a DNS server the clients use. Pure.
//!
//! Every format answers both A and AAAA for every name. A client resolver that gets only an
//! IPv4 answer from the relay's entries asks for AAAA elsewhere (gRPC's c-ares does, even
//! with an /etc/hosts line; dnsmasq forwards AAAA queries for names it has only IPv4
//! `address=` lines for), gets Google's real IPv6 address and goes around the relay.

use super::dns;
use super::targets::{RelayAddrs, label_notes, labels, names};
use crate::config::Config;
use std::fmt::Write;

/// The output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// /etc/hosts lines.
    Hosts,
    /// dnsmasq configuration.
    Dnsmasq,
    /// An unbound `server:` clause.
    Unbound,
    /// A BIND response-policy (RPZ) zone file.
    Bind,
    /// A CoreDNS server block.
    Coredns,
    /// The names and addresses as JSON, for other tools.
    Json,
}

/// `config`'s names in `format`, pointing at `relay`; `source` names the rules file.
pub fn render(config: &Config, relay: RelayAddrs, format: Format, source: &str) -> String {
    match format {
        Format::Hosts => hosts_block(config, relay, source),
        Format::Dnsmasq => dns::dnsmasq(config, relay, source),
        Format::Unbound => dns::unbound(config, relay, source),
        Format::Bind => dns::bind_rpz(config, relay, source),
        Format::Coredns => dns::coredns(config, relay, source),
        Format::Json => json(config, relay),
    }
}

/// The /etc/hosts block for the client machines: an IPv4 and an IPv6 line per exact name;
/// wildcards become comments, since /etc/hosts cannot express them.
pub fn hosts_block(config: &Config, relay: RelayAddrs, source: &str) -> String {
    let RelayAddrs { v4, v6 } = relay;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# snirelay: names served through the relay at {v4} and {v6}"
    );
    let _ = writeln!(
        out,
        "# Generated from {source} by `snirelay hosts`; add to /etc/hosts on each client."
    );
    let _ = writeln!(
        out,
        "# The IPv6 lines keep gRPC clients here: they ask DNS for AAAA records otherwise."
    );
    let (exact, wildcards) = names(config);
    for name in exact {
        let _ = writeln!(out, "{v4} {name}\n{v6} {name}");
    }
    for suffix in wildcards {
        let _ = writeln!(
            out,
            "# *.{suffix}: /etc/hosts has no wildcards; add the names you use, like\n#   {v4} example.{suffix}\n#   {v6} example.{suffix}\n#   or serve them from DNS (snirelay hosts --format dnsmasq, unbound, bind, coredns)"
        );
    }
    label_notes(&mut out, "#", config);
    out
}

fn json(config: &Config, relay: RelayAddrs) -> String {
    let (exact, wildcards) = names(config);
    let value = serde_json::json!({
        "relay": { "ipv4": relay.v4.to_string(), "ipv6": relay.v6.to_string() },
        "names": exact,
        "wildcards": wildcards.iter().map(|s| format!("*.{s}")).collect::<Vec<_>>(),
        "patterns": labels(config).iter().map(|l| format!("*{}", l.key())).collect::<Vec<_>>(),
    });
    format!("{value:#}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config() -> Config {
        Config::parse(
            r#"{"allow": ["a.example.com", "*.example.org", {"name": "b.example.com", "upstream": "10.0.0.1:443"}]}"#,
            Path::new("t.json"),
        )
        .unwrap()
    }

    fn relay(given: &[&str]) -> Result<RelayAddrs, String> {
        RelayAddrs::from_given(&given.iter().map(|s| s.parse().unwrap()).collect::<Vec<_>>())
    }

    #[test]
    fn hosts_has_both_families_per_exact_name_and_explains_wildcards() {
        let block = hosts_block(&config(), relay(&["10.20.0.5"]).unwrap(), "rules.json");
        let lines: Vec<&str> = block.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                "10.20.0.5 a.example.com",
                "::ffff:10.20.0.5 a.example.com",
                "10.20.0.5 b.example.com",
                "::ffff:10.20.0.5 b.example.com"
            ]
        );
        assert!(block.contains("# *.example.org: /etc/hosts has no wildcards"));
    }

    #[test]
    fn json_lists_names_wildcards_and_both_addresses() {
        let out = render(
            &config(),
            relay(&["10.20.0.5", "fd00::5"]).unwrap(),
            Format::Json,
            "r",
        );
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(value["relay"]["ipv6"], "fd00::5");
        assert_eq!(
            value["names"],
            serde_json::json!(["a.example.com", "b.example.com"])
        );
        assert_eq!(value["wildcards"], serde_json::json!(["*.example.org"]));
    }
}
