//! What `snirelay check` and `snirelay hosts` say about a configuration. Pure.

use crate::config::Config;
use crate::rules::{Host, Pattern, Rule};
use std::fmt::Write;
use std::net::IpAddr;

/// Where a rule sends its connections, in words.
pub fn destination(rule: &Rule, upstream_port: u16) -> String {
    match (&rule.upstream, &rule.pattern) {
        (Some(up), _) => format!("{up} (pinned)"),
        (None, Pattern::Exact(name)) => format!("{name}:{upstream_port} (DNS)"),
        (None, Pattern::Wildcard(_)) => format!("the requested name:{upstream_port} (DNS)"),
    }
}

/// Rules that change nothing: a name or wildcard already allowed by a broader wildcard with
/// the same destination.
pub fn redundant(config: &Config) -> Vec<String> {
    let mut notes = Vec::new();
    for rule in config.rules.iter() {
        let covered_by = match &rule.pattern {
            Pattern::Exact(name) => config.rules.find_wildcard(name.parent_suffixes()),
            Pattern::Wildcard(suffix) => config.rules.find_wildcard(suffix.parent_suffixes()),
        };
        if let Some(broader) = covered_by
            && broader.upstream == rule.upstream
        {
            notes.push(format!(
                "\"{}\" is already allowed by \"{}\" with the same destination",
                rule.pattern, broader.pattern
            ));
        }
    }
    notes
}

/// Settings an operator should look at twice.
pub fn warnings(config: &Config) -> Vec<String> {
    let mut warnings = Vec::new();
    let everyone: Vec<String> = config
        .clients
        .iter()
        .filter(|net| net.prefix_len() == 0)
        .map(|net| net.to_string())
        .collect();
    if !everyone.is_empty() {
        warnings.push(format!(
            "clients includes {}: anyone who can reach the listeners can use the relay for the allowed names",
            everyone.join(" and ")
        ));
    }
    for rule in config.rules.iter() {
        if let Pattern::Wildcard(suffix) = &rule.pattern
            && !suffix.as_str().contains('.')
        {
            warnings.push(format!(
                "\"{}\" allows every name under a top-level domain",
                rule.pattern
            ));
        }
        if let Some(up) = &rule.upstream
            && let Host::Ip(ip) = up.host
            && config.listen.iter().any(|l| {
                l.port() == up.port && (l.ip() == ip || l.ip().is_unspecified() && ip.is_loopback())
            })
        {
            warnings.push(format!(
                "\"{}\" is pinned to {up}, which is this relay's own listener: a loop",
                rule.pattern
            ));
        }
    }
    if let Some(admin) = config.admin
        && !admin.ip().is_loopback()
    {
        warnings.push(format!(
            "admin listens on {admin}: metrics are readable by anyone who can reach it; prefer 127.0.0.1"
        ));
    }
    if config.limits.max_connections_per_client > config.limits.max_connections {
        warnings.push(
            "max_connections_per_client is above max_connections, so it never applies".to_owned(),
        );
    }
    warnings
}

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

    fn config(text: &str) -> Config {
        Config::parse(text, Path::new("t.json")).unwrap()
    }

    #[test]
    fn redundant_rules_are_found_only_with_the_same_destination() {
        let c = config(
            r#"{"allow": ["*.example.com", "a.example.com", "*.deep.example.com",
                {"name": "b.example.com", "upstream": "10.0.0.1:443"}, "other.org"]}"#,
        );
        assert_eq!(
            redundant(&c),
            [
                "\"a.example.com\" is already allowed by \"*.example.com\" with the same destination",
                "\"*.deep.example.com\" is already allowed by \"*.example.com\" with the same destination",
            ]
        );
    }

    #[test]
    fn warnings_name_open_relays_broad_wildcards_loops_and_exposed_admin() {
        let c = config(
            r#"{"listen": ["0.0.0.0:443"], "clients": ["0.0.0.0/0", "::/0"],
                "allow": ["*.com", {"name": "a.example.com", "upstream": "127.0.0.1:443"}],
                "admin": "0.0.0.0:9901", "max_connections": 10, "max_connections_per_client": 20}"#,
        );
        let w = warnings(&c);
        assert_eq!(w.len(), 5, "{w:#?}");
        assert!(w[0].starts_with("clients includes 0.0.0.0/0 and ::/0"));
        assert!(w[1].contains("\"*.com\""));
        assert!(w[2].contains("a loop"));
        assert!(w[3].contains("admin listens on 0.0.0.0:9901"));
        assert!(w[4].contains("max_connections_per_client"));
        assert!(warnings(&config(r#"{"allow": ["a.example.com"]}"#)).is_empty());
    }

    #[test]
    fn hosts_lists_exact_names_and_explains_wildcards() {
        let c = config(
            r#"{"allow": ["a.example.com", "*.example.org", {"name": "b.example.com", "upstream": "10.0.0.1:443"}]}"#,
        );
        let block = hosts_block(&c, "10.20.0.5".parse().unwrap(), "rules.json");
        let lines: Vec<&str> = block.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            ["10.20.0.5 a.example.com", "10.20.0.5 b.example.com"]
        );
        assert!(block.contains("# *.example.org: /etc/hosts has no wildcards"));
    }
}
