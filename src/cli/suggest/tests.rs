use super::*;
use std::path::Path;

fn line(sni: &str, outcome: &str, reason: &str, rule: Option<&str>) -> String {
    let mut value = serde_json::json!({
        "message": "connection", "sni": sni, "outcome": outcome, "reason": reason,
    });
    if let Some(rule) = rule {
        value["rule"] = rule.into();
    }
    value.to_string()
}

fn seen(lines: &[String]) -> Seen {
    let mut seen = Seen::default();
    seen.read(lines.join("\n").as_bytes()).unwrap();
    seen
}

fn sample() -> Seen {
    seen(&[
        line(
            "translation.googleapis.com",
            "forwarded",
            "closed",
            Some("translation.googleapis.com"),
        ),
        line(
            "translation.googleapis.com",
            "forwarded",
            "client_reset",
            Some("translation.googleapis.com"),
        ),
        line(
            "storage.googleapis.com",
            "forwarded",
            "closed",
            Some("storage.googleapis.com"),
        ),
        line("a.storage.googleapis.com", "rejected", "not_allowed", None),
        line(
            "b.storage.googleapis.com",
            "forwarded",
            "would_refuse",
            Some("(unlisted)"),
        ),
        line("www.example.org", "rejected", "not_allowed", None),
        line("one.appspot.com", "rejected", "not_allowed", None),
        line("two.appspot.com", "rejected", "not_allowed", None),
        line("x.com", "rejected", "not_allowed", None),
        line("y.com", "rejected", "not_allowed", None),
        "not json".to_owned(),
        r#"{"message": "listening", "addr": "0.0.0.0:443"}"#.to_owned(),
    ])
}

#[test]
fn names_are_grouped_by_registrable_domain_with_their_decisions() {
    let seen = sample();
    assert_eq!(seen.skipped, 2);
    let report = report(&seen, &[]);
    // googleapis.com and appspot.com are public suffixes (the list's private section): each
    // name under them is its own registrable domain.
    assert!(
        report.contains("storage.googleapis.com\n  a.storage.googleapis.com: 1 not_allowed\n  b.storage.googleapis.com: 1 would_refuse\n  storage.googleapis.com: 1 forwarded\n"),
        "{report}"
    );
    assert!(
        report.contains("translation.googleapis.com\n  translation.googleapis.com: 2 forwarded\n"),
        "{report}"
    );
    assert!(
        report.contains("one.appspot.com\n  one.appspot.com: 1 not_allowed\n"),
        "{report}"
    );
}

#[test]
fn a_wildcard_only_under_an_allowed_domain_and_never_a_public_suffix() {
    let proposed = propose(&sample(), None);
    assert_eq!(
        proposed,
        [
            "www.example.org",
            "one.appspot.com",
            "*.storage.googleapis.com",
            "two.appspot.com",
            "x.com",
            "y.com"
        ]
    );
}

#[test]
fn names_the_rules_already_allow_are_not_proposed_and_the_merge_loads() {
    let text = r#"{"allow": ["a.storage.googleapis.com", "example.org", "*.com.example"]}"#;
    let path = Path::new("rules.json");
    let config = Config::parse(text, path).unwrap();
    let proposed = propose(&sample(), Some(&config.rules));
    assert!(
        !proposed
            .iter()
            .any(|p| p == "a.storage.googleapis.com" || p.starts_with("*.storage"))
    );
    // www.example.org alone under an allowed domain: an exact name, not a wildcard.
    assert!(proposed.iter().any(|p| p == "www.example.org"));
    let merged = merge(text, path, &proposed).unwrap();
    let merged = Config::parse(&merged, path).unwrap();
    assert_eq!(merged.rules.len(), 3 + proposed.len());
}

/// A name the log once saw forwarded and later refused: against the rules in force, it is
/// proposed again, beside the wildcard for its children (which does not cover it). Every
/// name the log shows refused or only monitored is allowed by the merged file, as the real
/// matcher decides.
#[test]
fn with_the_rules_in_force_every_refused_name_is_allowed_by_the_merge() {
    let log = seen(&[
        line(
            "storage.googleapis.com",
            "forwarded",
            "closed",
            Some("storage.googleapis.com"),
        ),
        line("storage.googleapis.com", "rejected", "not_allowed", None),
        line(
            "storage.googleapis.com",
            "forwarded",
            "would_refuse",
            Some("(unlisted)"),
        ),
        line(
            "logs-a.storage.googleapis.com",
            "forwarded",
            "would_refuse",
            Some("(unlisted)"),
        ),
        line(
            "logs-b.storage.googleapis.com",
            "forwarded",
            "would_refuse",
            Some("(unlisted)"),
        ),
    ]);
    let text = r#"{"allow": ["translation.googleapis.com"]}"#;
    let path = Path::new("rules.json");
    let rules = Config::parse(text, path).unwrap().rules;
    let proposed = propose(&log, Some(&rules));
    let merged = Config::parse(&merge(text, path, &proposed).unwrap(), path).unwrap();
    for name in [
        "storage.googleapis.com",
        "logs-a.storage.googleapis.com",
        "logs-b.storage.googleapis.com",
    ] {
        assert!(
            merged.rules.route(&name.parse().unwrap(), 443).is_some(),
            "{name} still refused after merging {proposed:?}"
        );
    }
}

#[test]
fn the_relays_text_lines_are_read_as_its_json_lines_are() {
    let text = [
        r#"2026-12-07T12:00:00.000000Z  INFO snirelay::connection: connection client=10.10.0.7:51234 listener=0.0.0.0:443 sni="A.Example.org" alpn="h2" tls="1.3" ech=false outcome="rejected" reason="not_allowed" side="client" error="name not on the allowlist" hello_ms=0.2 total_ms=0.3"#,
        r#"2026-12-07T12:00:00.100000Z  INFO snirelay::connection: connection client=10.10.0.7:51235 listener=0.0.0.0:443 sni="b.example.org" rule="b.example.org" upstream="192.0.2.1:443" outcome="forwarded" reason="closed" bytes_up=10"#,
        r#"2026-12-07T12:00:00.200000Z  INFO snirelay::connection: connection client=10.10.0.7:51236 listener=0.0.0.0:443 outcome="rejected" reason="client_denied" side="client" error="a \"quoted\" word""#,
        "2026-12-07T12:00:00.300000Z  INFO snirelay::tcp::server: listening addr=0.0.0.0:443",
    ];
    let read = seen(&text.map(str::to_owned));
    // The line without a name (refused before its hello) and the listening line are skipped.
    assert_eq!((read.used, read.skipped), (2, 2));
    assert_eq!(propose(&read, None), ["a.example.org"]);
    let report = report(&read, &[]);
    assert!(report.contains("a.example.org: 1 not_allowed"), "{report}");
    assert!(report.contains("b.example.org: 1 forwarded"), "{report}");
}

/// Two hosts of one customer on API Gateway, Cloud Run and Cloud Functions: their parents
/// are public suffixes, shared by every customer, so each host is proposed on its own and
/// never a wildcard that would reach anyone's API.
#[test]
fn no_wildcard_over_the_shared_domains_of_customer_apis() {
    let mut lines = Vec::new();
    for host in [
        "orders-api-3x9k2q7f.uc.gateway.dev",
        "billing-api-8p2m4k1z.uc.gateway.dev",
        "orders-7qk3xv2p4a-ew.a.run.app",
        "billing-7qk3xv2p4a-ew.a.run.app",
        "europe-west2-example-prod.cloudfunctions.net",
        "europe-west2-example-dev.cloudfunctions.net",
    ] {
        lines.push(line(host, "rejected", "not_allowed", None));
    }
    // Something under each is allowed already, which would otherwise invite a wildcard.
    for host in ["x.uc.gateway.dev", "x-ew.a.run.app", "x.cloudfunctions.net"] {
        lines.push(line(host, "forwarded", "closed", Some(host)));
    }
    let proposed = propose(&seen(&lines), None);
    assert_eq!(proposed.len(), 6, "{proposed:?}");
    assert!(
        !proposed.iter().any(|p| p.starts_with("*.")),
        "{proposed:?}"
    );
}

#[test]
fn fingerprints_are_summed_by_rule_most_seen_first() {
    let mut lines = Vec::new();
    for (sni, rule, ja4) in [
        (
            "a.example.com",
            Some("*.example.com"),
            "t13d1517h2_8daaf6152771_61307d0e143d",
        ),
        (
            "b.example.com",
            Some("*.example.com"),
            "t13d3112h2_e8f1e7e78f70_b26ce05bbdd6",
        ),
        (
            "c.example.com",
            Some("*.example.com"),
            "t13d3112h2_e8f1e7e78f70_b26ce05bbdd6",
        ),
        (
            "refused.example.org",
            None,
            "t13d1011h2_61a7ad8aa9b6_0d308c48d2a3",
        ),
    ] {
        let mut value: serde_json::Value =
            serde_json::from_str(&line(sni, "forwarded", "closed", rule)).unwrap();
        value["ja4"] = ja4.into();
        lines.push(value.to_string());
    }
    // The text format carries it too.
    lines.push(
        "2026-12-07T19:00:00Z  INFO snirelay::connection: connection client=10.0.0.1:5 sni=\"d.example.com\" ja4=t13d1517h2_8daaf6152771_61307d0e143d rule=\"*.example.com\" outcome=\"forwarded\" reason=\"closed\"".to_owned(),
    );
    let text = report(&seen(&lines), &[]);
    assert!(
        text.contains(
            "\nclient fingerprints (JA4), by rule (or name, where none allowed it):\n\
             \x20 *.example.com: t13d1517h2_8daaf6152771_61307d0e143d (2), t13d3112h2_e8f1e7e78f70_b26ce05bbdd6 (2)\n\
             \x20 refused.example.org: t13d1011h2_61a7ad8aa9b6_0d308c48d2a3 (1)\n"
        ),
        "{text}"
    );
    assert!(!report(&sample(), &[]).contains("fingerprints"));
}
