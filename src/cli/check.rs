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
        (None, Pattern::Wildcard(_) | Pattern::Label(_)) => {
            format!("the requested name:{upstream_port} (DNS)")
        }
    };
    match rule.send_proxy {
        Some(crate::proxy::Version::V1) => format!("{to}, PROXY v1 header first"),
        Some(crate::proxy::Version::V2) => format!("{to}, PROXY v2 header first"),
        None => to,
    }
}

/// The next broader rule that allows every name `rule` allows: the one that would take
/// them if `rule` were gone.
fn broader<'a>(config: &'a Config, rule: &Rule) -> Option<&'a Rule> {
    let rules = &config.rules;
    match &rule.pattern {
        Pattern::Exact(name) => rules
            .find_label(name.as_str(), usize::MAX)
            .or_else(|| rules.find_wildcard(name.parent_suffixes())),
        Pattern::Wildcard(suffix) => rules.find_wildcard(suffix.parent_suffixes()),
        // A shorter tail that ends this one, or a wildcard over the parent.
        Pattern::Label(label) => rules
            .find_label(&format!("a{}", label.key()), label.tail().len())
            .or_else(|| {
                let parent = label.parent();
                let above = parent.match_indices('.').map(|(dot, _)| &parent[dot + 1..]);
                rules.find_wildcard(std::iter::once(parent).chain(above))
            }),
    }
}

/// Rules that change nothing: a name or pattern already allowed by a broader one with the
/// same destination.
pub fn redundant(config: &Config) -> Vec<String> {
    overlaps(config, true)
}

/// Rules that shadow a broader one: the names both allow go where the narrower one says,
/// not where the broader one would send them.
pub fn shadowing(config: &Config) -> Vec<String> {
    overlaps(config, false)
}

fn overlaps(config: &Config, same: bool) -> Vec<String> {
    let mut notes = Vec::new();
    for rule in config.rules.iter() {
        let Some(broader) = broader(config, rule) else {
            continue;
        };
        let alike = broader.upstream == rule.upstream
            && broader.send_proxy == rule.send_proxy
            && broader.tcp == rule.tcp;
        if alike && same {
            notes.push(format!(
                "\"{}\" is already allowed by \"{}\" with the same destination",
                rule.pattern, broader.pattern
            ));
        } else if !alike && !same {
            notes.push(format!(
                "\"{}\" shadows \"{}\": the names both allow go to {}",
                rule.pattern,
                broader.pattern,
                destination(rule, config.upstream_port)
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
        let parent = match &rule.pattern {
            Pattern::Wildcard(suffix) => Some(suffix.as_str()),
            Pattern::Label(label) => Some(label.parent()),
            Pattern::Exact(_) => None,
        };
        if parent.is_some_and(|parent| !parent.contains('.')) {
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
    warnings.extend(crate::cli::groups::warnings(config));
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
    if let Some(audit) = &config.audit_log {
        text.push_str(&format!("  audit log: {}\n", audit.display()));
    }
    text.push_str(&crate::cli::edge::summary(config));
    text.push_str("  effective rules, in the order a name is matched (exact names, then label patterns and wildcards, longest first):\n");
    for rule in match_order(config) {
        let to = destination(rule, config.upstream_port);
        text.push_str(&format!("    {} -> {to}\n", rule.pattern));
    }
    for note in redundant(config) {
        text.push_str(&format!("  redundant: {note}\n"));
    }
    for note in shadowing(config) {
        text.push_str(&format!("  shadows: {note}\n"));
    }
    text.push_str(&crate::cli::groups::summary(config));
    text
}

/// The rules as matching consults them: exact names (alphabetically: at most one can
/// match), then label patterns from the longest tail to the shortest, then wildcards from
/// the longest suffix to the shortest (the longest match wins).
fn match_order(config: &Config) -> Vec<&crate::rules::Rule> {
    let mut rules: Vec<_> = config.rules.iter().collect();
    rules.sort_by_key(|rule| match &rule.pattern {
        Pattern::Exact(name) => (0, 0, name.as_str().to_owned()),
        Pattern::Label(label) => (1, usize::MAX - label.tail().len(), label.key().to_owned()),
        Pattern::Wildcard(suffix) => (
            2,
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
    let labels = config
        .rules
        .iter()
        .filter(|r| matches!(r.pattern, Pattern::Label(_)))
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
        "{path}: ok\n  rules: {total} ({exact} exact, {wildcards} wildcard{labels}; of which {pinned} pinned to an upstream)\n  \
         listen: {listen}\n  upstream port: {port}\n  \
         timeouts: hello {hello} ms, connect {connect} ms, idle {idle} s, drain {drain} s, lb grace {grace} s\n  \
         max hello bytes: {max}\n  resolver: {resolver}\n  private destinations: {private}\n  mode: {mode}\n",
        path = path.display(),
        total = config.rules.len(),
        exact = config.rules.len() - wildcards - labels,
        labels = match labels {
            0 => String::new(),
            n => format!(", {n} label pattern"),
        },
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
    fn label_patterns_are_redundant_or_shadow_like_the_other_kinds() {
        let c = config(
            r#"{"allow": ["*.googleapis.com", "*platform.googleapis.com",
                {"name": "*-aiplatform.googleapis.com", "upstream": "10.0.0.1:443"},
                {"name": "us-aiplatform.googleapis.com", "upstream": "10.0.0.1:443"},
                "eu-aiplatform.googleapis.com"]}"#,
        );
        assert_eq!(
            redundant(&c),
            [
                "\"*platform.googleapis.com\" is already allowed by \"*.googleapis.com\" with the same destination",
                "\"us-aiplatform.googleapis.com\" is already allowed by \"*-aiplatform.googleapis.com\" with the same destination",
            ]
        );
        assert_eq!(
            shadowing(&c),
            [
                "\"*-aiplatform.googleapis.com\" shadows \"*platform.googleapis.com\": the names both allow go to 10.0.0.1:443 (pinned)",
                "\"eu-aiplatform.googleapis.com\" shadows \"*-aiplatform.googleapis.com\": the names both allow go to eu-aiplatform.googleapis.com:443 (DNS)",
            ]
        );
        let text = summary(Path::new("t.json"), &c);
        assert!(
            text.contains("rules: 5 (2 exact, 1 wildcard, 2 label pattern;"),
            "{text}"
        );
        let order: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("    ")?.split(" -> ").next())
            .collect();
        assert_eq!(
            order,
            [
                "eu-aiplatform.googleapis.com",
                "us-aiplatform.googleapis.com",
                "*-aiplatform.googleapis.com",
                "*platform.googleapis.com",
                "*.googleapis.com"
            ]
        );
        assert!(warnings(&config(r#"{"allow": ["*-a.com"]}"#))[0].contains("top-level domain"));
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
