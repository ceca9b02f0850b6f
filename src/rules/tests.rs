use super::*;

fn rule(pattern: &str) -> Rule {
    Rule::new(pattern.parse().unwrap(), None, None)
}

#[test]
fn a_diff_names_what_was_added_removed_and_changed() {
    let before = Rules::new(vec![
        rule("a.example.com"),
        rule("*.b.example.com"),
        rule("c.example.com"),
    ])
    .unwrap();
    let pinned = Rule {
        send_proxy: Some(crate::proxy::Version::V2),
        ..rule("c.example.com")
    };
    let after = Rules::new(vec![rule("d.example.com"), pinned, rule("a.example.com")]).unwrap();
    assert_eq!(
        before.diff(&after),
        RuleDiff {
            added: vec!["d.example.com".into()],
            removed: vec!["*.b.example.com".into()],
            changed: vec!["c.example.com".into()],
        }
    );
    assert_eq!(after.diff(&after), RuleDiff::default());
}

fn matched(rules: &Rules, name: &str) -> Option<String> {
    rules
        .find(&name.parse().unwrap())
        .map(|r| r.pattern.to_string())
}

#[test]
fn exact_beats_wildcard_and_longer_wildcard_beats_shorter() {
    let rules = Rules::new(vec![
        rule("*.googleapis.com"),
        rule("*.sandbox.googleapis.com"),
        rule("a.sandbox.googleapis.com"),
    ])
    .unwrap();
    assert_eq!(
        matched(&rules, "a.sandbox.googleapis.com").unwrap(),
        "a.sandbox.googleapis.com"
    );
    assert_eq!(
        matched(&rules, "b.sandbox.googleapis.com").unwrap(),
        "*.sandbox.googleapis.com"
    );
    assert_eq!(
        matched(&rules, "x.y.sandbox.googleapis.com").unwrap(),
        "*.sandbox.googleapis.com"
    );
    assert_eq!(
        matched(&rules, "sandbox.googleapis.com").unwrap(),
        "*.googleapis.com"
    );
    assert_eq!(matched(&rules, "googleapis.com"), None);
    assert_eq!(matched(&rules, "evilgoogleapis.com"), None);
}

#[test]
fn a_label_pattern_takes_one_label_ending_in_its_tail() {
    let rules = Rules::new(vec![
        rule("*.googleapis.com"),
        rule("*-aiplatform.googleapis.com"),
        rule("*platform.googleapis.com"),
        rule("europe-west4-aiplatform.googleapis.com"),
    ])
    .unwrap();
    for (name, rule) in [
        (
            "us-central1-aiplatform.googleapis.com",
            "*-aiplatform.googleapis.com",
        ),
        ("x-aiplatform.googleapis.com", "*-aiplatform.googleapis.com"),
        ("aiplatform.googleapis.com", "*platform.googleapis.com"),
        ("cloudplatform.googleapis.com", "*platform.googleapis.com"),
        (
            "europe-west4-aiplatform.googleapis.com",
            "europe-west4-aiplatform.googleapis.com",
        ),
        ("a.b-aiplatform.googleapis.com", "*.googleapis.com"),
        ("platform.googleapis.com", "*.googleapis.com"),
    ] {
        assert_eq!(matched(&rules, name).as_deref(), Some(rule), "{name}");
    }
    let alone = Rules::new(vec![rule("*-aiplatform.googleapis.com")]).unwrap();
    for name in [
        "a.b-aiplatform.googleapis.com",
        "b-aiplatform.example.com",
        "b-aiplatform.x.googleapis.com",
        "aiplatform.googleapis.com",
        "googleapis.com",
    ] {
        assert_eq!(matched(&alone, name), None, "{name}");
    }
}

#[test]
fn label_patterns_are_host_names_with_a_star_in_front() {
    let ok = |s: &str| s.parse::<Pattern>().unwrap().to_string();
    assert_eq!(
        ok("*-AIPlatform.GoogleAPIs.com."),
        "*-aiplatform.googleapis.com"
    );
    assert_eq!(ok("*x.example"), "*x.example");
    for bad in [
        "*", "*-", "*-a", "*.", "*..com", "*-a..com", "**.com", "*a*.com", "*a_b.com", "a*.com",
        "*a.1.2",
    ] {
        assert!(bad.parse::<Pattern>().is_err(), "{bad}");
    }
    let long = format!("*{}.com", "a".repeat(62));
    assert!(long.parse::<Pattern>().is_ok());
    assert!(
        format!("*{}.com", "a".repeat(63))
            .parse::<Pattern>()
            .is_err()
    );
    let err = Rules::new(vec![rule("*-A.example.com"), rule("*-a.example.com.")]).unwrap_err();
    assert_eq!(err.to_string(), "duplicate rule \"*-a.example.com\"");
}

#[test]
fn matching_ignores_case_and_trailing_dot() {
    let rules = Rules::new(vec![rule("Translation.GoogleAPIs.com")]).unwrap();
    assert!(matched(&rules, "TRANSLATION.googleapis.com.").is_some());
}

#[test]
fn duplicates_are_refused_after_normalising() {
    let err = Rules::new(vec![rule("a.example.com"), rule("A.example.com.")]).unwrap_err();
    assert_eq!(err.to_string(), "duplicate rule \"a.example.com\"");
    assert!(Rules::new(vec![rule("*.example.com"), rule("example.com")]).is_ok());
}

#[test]
fn route_uses_the_pinned_upstream_or_the_name() {
    let mut pinned = rule("tts.example.com");
    pinned.upstream = Some("private.example.net:8443".parse().unwrap());
    let rules = Rules::new(vec![pinned, rule("*.example.com")]).unwrap();
    let route = rules
        .route(&"tts.example.com".parse().unwrap(), 443)
        .unwrap();
    assert_eq!(
        (route.host.to_string(), route.port, route.pinned),
        ("private.example.net".into(), 8443, true)
    );
    let route = rules.route(&"x.example.com".parse().unwrap(), 443).unwrap();
    assert_eq!(
        (route.host.to_string(), route.port, route.pinned),
        ("x.example.com".into(), 443, false)
    );
}

#[test]
fn upstream_forms() {
    let ok = |s: &str| s.parse::<Upstream>().unwrap().to_string();
    assert_eq!(ok("10.0.0.1:443"), "10.0.0.1:443");
    assert_eq!(ok("[2001:db8::1]:443"), "[2001:db8::1]:443");
    assert_eq!(
        ok("Private.GoogleAPIs.com:443"),
        "private.googleapis.com:443"
    );
    for bad in [
        "private.googleapis.com",
        "host:0",
        "host:99999",
        "bad_host:443",
        "2001:db8::1",
    ] {
        assert!(bad.parse::<Upstream>().is_err(), "{bad}");
    }
}
