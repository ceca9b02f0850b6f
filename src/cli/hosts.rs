//! `snirelay hosts`: the lines that point client machines at the relay. Pure.

use crate::config::Config;
use crate::rules::Pattern;
use std::fmt::Write;
use std::net::IpAddr;

/// The /etc/hosts block for the client machines: one line per exact name; wildcards become
/// comments, since /etc/hosts cannot express them.
pub fn hosts_block(config: &Config, relay: IpAddr, source: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# snirelay: names served through the relay at {relay}");
    let _ = writeln!(
        out,
        "# Generated from {source} by `snirelay hosts`; add to /etc/hosts on each client."
    );
    for rule in config.rules.iter() {
        match &rule.pattern {
            Pattern::Exact(name) => {
                let _ = writeln!(out, "{relay} {name}");
            }
            Pattern::Wildcard(suffix) => {
                let _ = writeln!(
                    out,
                    "# {}: /etc/hosts has no wildcards; add one line per name, like\n#   {relay} example.{suffix}",
                    rule.pattern
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn hosts_lists_exact_names_and_explains_wildcards() {
        let c = Config::parse(
            r#"{"allow": ["a.example.com", "*.example.org", {"name": "b.example.com", "upstream": "10.0.0.1:443"}]}"#,
            Path::new("t.json"),
        )
        .unwrap();
        let block = hosts_block(&c, "10.20.0.5".parse().unwrap(), "rules.json");
        let lines: Vec<&str> = block.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            ["10.20.0.5 a.example.com", "10.20.0.5 b.example.com"]
        );
        assert!(block.contains("# *.example.org: /etc/hosts has no wildcards"));
    }
}
