//! `snirelay check`: what a valid configuration does, and what to look at twice. Pure.

use crate::config::{Config, Mode};
use crate::rules::{Host, Pattern, Rule};
use std::net::SocketAddr;
use std::path::Path;

/// Where a rule sends its connections, in words.
pub fn destination(rule: &Rule, upstream_port: u16) -> String {
    let to = match (&rule.upstream, &rule.pattern) {
        (Some(up), _) => format!("{up} (pinned)"),
        (None, Pattern::Exact(name)) => format!("{name}:{upstream_port} (DNS)"),
        (None, Pattern::Wildcard(_)) => format!("the requested name:{upstream_port} (DNS)"),
    };
    match rule.send_proxy {
        Some(crate::proxy::Version::V1) => format!("{to}, PROXY v1 header first"),
        Some(crate::proxy::Version::V2) => format!("{to}, PROXY v2 header first"),
        None => to,
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
            && broader.send_proxy == rule.send_proxy
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
    let monitored: Vec<String> = config
        .listen
        .iter()
        .filter(|l| l.mode.unwrap_or(config.mode) == Mode::Monitor)
        .map(|l| l.addr.to_string())
        .collect();
    if !monitored.is_empty() {
        warnings.push(format!(
            "monitor mode on {}: names no rule allows are forwarded (logged as would_refuse), not refused; set \"mode\": \"enforce\" once the allowlist is complete",
            monitored.join(", ")
        ));
    }
    if config.rules.is_empty() && monitored.is_empty() {
        warnings.push(
            "allow is empty: every connection will be refused (not_allowed), and /readyz answers 503"
                .to_owned(),
        );
    }
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
                let l = l.addr;
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
    warnings.extend(crate::cli::edge::warnings(config));
    if config.limits.max_connections_per_client > config.limits.max_connections {
        warnings.push(
            "max_connections_per_client is above max_connections, so it never applies".to_owned(),
        );
    }
    warnings
}

/// What `snirelay check` prints for a valid file: the settings, where each rule sends its
/// connections, and the rules that change nothing.
pub fn summary(path: &Path, config: &Config) -> String {
    let mut text = overview(path, config);
    let clients: Vec<String> = config.clients.iter().map(|n| n.to_string()).collect();
    let limits = config.limits;
    let admin = config
        .admin
        .map_or_else(|| "off".to_owned(), |a| a.to_string());
    text.push_str(&format!(
        "  clients: {}\n  limits: {} connections, {} per client, {} waiting for a hello\n  admin: {admin}\n",
        clients.join(", "),
        limits.max_connections,
        limits.max_connections_per_client,
        limits.max_pending_hellos,
    ));
    text.push_str(&crate::cli::edge::summary(config));
    text.push_str("  effective rules, in the order a name is matched (exact names, then wildcards, longest first):\n");
    for rule in match_order(config) {
        let to = destination(rule, config.upstream_port);
        text.push_str(&format!("    {} -> {to}\n", rule.pattern));
    }
    for note in redundant(config) {
        text.push_str(&format!("  redundant: {note}\n"));
    }
    text
}

/// The rules as matching consults them: exact names (alphabetically: at most one can
/// match), then wildcards from the longest suffix to the shortest (the longest match wins).
fn match_order(config: &Config) -> Vec<&crate::rules::Rule> {
    let mut rules: Vec<_> = config.rules.iter().collect();
    rules.sort_by_key(|rule| match &rule.pattern {
        Pattern::Exact(name) => (0, 0, name.as_str().to_owned()),
        Pattern::Wildcard(suffix) => (
            1,
            usize::MAX - suffix.as_str().len(),
            suffix.as_str().to_owned(),
        ),
    });
    rules
}

fn overview(path: &Path, config: &Config) -> String {
    let wildcards = config
        .rules
        .iter()
        .filter(|r| matches!(r.pattern, Pattern::Wildcard(_)))
        .count();
    let pinned = config.rules.iter().filter(|r| r.upstream.is_some()).count();
    let list = |addrs: &[SocketAddr]| {
        addrs
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let t = config.timeouts;
    let resolver = match &config.nameservers {
        Some(servers) => list(servers),
        None => "system (/etc/resolv.conf)".to_owned(),
    };
    let private: Vec<String> = config
        .private_destinations
        .iter()
        .map(|n| n.to_string())
        .collect();
    let private = if private.is_empty() {
        "none".to_owned()
    } else {
        private.join(", ")
    };
    format!(
        "{path}: ok\n  rules: {total} ({exact} exact, {wildcards} wildcard; of which {pinned} pinned to an upstream)\n  \
         listen: {listen}\n  upstream port: {port}\n  \
         timeouts: hello {hello} ms, connect {connect} ms, idle {idle} s, drain {drain} s, lb grace {grace} s\n  \
         max hello bytes: {max}\n  resolver: {resolver}\n  private destinations: {private}\n  mode: {mode}\n",
        path = path.display(),
        total = config.rules.len(),
        exact = config.rules.len() - wildcards,
        listen = config
            .listen
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        port = config.upstream_port,
        hello = t.hello.as_millis(),
        connect = t.connect.as_millis(),
        idle = t.idle.as_secs(),
        drain = t.drain.as_secs(),
        grace = t.lb_grace.as_secs(),
        max = config.max_hello_bytes,
        mode = config.mode.word(),
    )
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
}
