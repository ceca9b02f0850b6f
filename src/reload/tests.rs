use super::*;
use crate::state::Settings;

fn allowing(names: &[&str]) -> String {
    serde_json::json!({ "allow": names }).to_string()
}

fn relay_on(text: &str, path: &Path) -> Relay {
    let config = Config::parse(text, path).unwrap();
    Relay::new(
        Settings::new(config, &[], &[], None).unwrap(),
        Vec::new(),
        Vec::new(),
    )
}

/// Each step as the watcher would see it, in order, with what it must come to. A
/// regression: with the file missing and the relay's log beside it, every error line
/// was an event that failed again and logged again, about 20 times a second.
#[test]
fn a_file_event_reports_only_changes_and_each_failure_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.json");
    let first = allowing(&["a.example.com", "b.example.com"]);
    std::fs::write(&path, &first).unwrap();
    let relay = relay_on(&first, &path);
    let mut file = FileState::new(first.clone().into_bytes());
    let mut event = || apply(&path, &relay, Fixed::default(), true, &mut file);

    // Written again unchanged: nothing.
    std::fs::write(&path, &first).unwrap();
    assert_eq!(event(), Ok(Reloaded::Unchanged));
    // Gone: one failure, then silence.
    std::fs::remove_file(&path).unwrap();
    assert!(event().unwrap_err().contains("cannot read"));
    assert_eq!(event(), Ok(Reloaded::Unchanged));
    assert_eq!(event(), Ok(Reloaded::Unchanged));
    // Back as it was: recovered, not reloaded.
    std::fs::write(&path, &first).unwrap();
    assert_eq!(event(), Ok(Reloaded::Recovered));
    assert_eq!(event(), Ok(Reloaded::Unchanged));
    // Invalid: one failure; back again: recovered.
    std::fs::write(&path, "{").unwrap();
    assert!(event().is_err());
    assert_eq!(event(), Ok(Reloaded::Unchanged));
    std::fs::write(&path, &first).unwrap();
    assert_eq!(event(), Ok(Reloaded::Recovered));
    // A real change says what changed.
    std::fs::write(&path, allowing(&["b.example.com", "c.example.com"])).unwrap();
    assert_eq!(
        event(),
        Ok(Reloaded::Applied {
            rules: 2,
            diff: RuleDiff {
                added: vec!["c.example.com".into()],
                removed: vec!["a.example.com".into()],
                changed: vec![],
            },
            settings: vec![],
        })
    );
    assert_eq!(relay.settings().config.rules.len(), 2);
    // A switch to monitor mode and a new `clients` are named, as a rule would be.
    let monitoring = serde_json::json!({
        "allow": ["b.example.com", "c.example.com"],
        "mode": "monitor",
        "clients": ["10.0.0.0/8"],
    });
    std::fs::write(&path, monitoring.to_string()).unwrap();
    let Ok(Reloaded::Applied { settings, .. }) = event() else {
        panic!("not applied")
    };
    assert_eq!(settings, ["mode", "clients"]);
}

#[test]
fn only_events_that_can_change_the_config_file_count() {
    let config = Path::new("/etc/snirelay/rules.json");
    let at = |name: &str| vec![PathBuf::from("/etc/snirelay").join(name)];
    assert!(concerns(&at("rules.json"), config, None));
    assert!(!concerns(&at("snirelay.log"), config, None));
    assert!(!concerns(&at("rules.json.swp2"), config, None));
    // The watch overflowed: anything may have changed.
    assert!(concerns(&[], config, None));
    // A Kubernetes ConfigMap: rules.json -> ..data/rules.json, and ..data is swapped.
    let link = Path::new("..data/rules.json");
    assert!(concerns(&at("..data"), config, Some(link)));
    assert!(concerns(&at("rules.json"), config, Some(link)));
    assert!(!concerns(
        &at("..2026_11_30_22_00_00.123"),
        config,
        Some(link)
    ));
    // A link elsewhere: only the name itself is in this directory.
    assert!(!concerns(
        &at("etc"),
        config,
        Some(Path::new("/etc/rules.json"))
    ));
}

/// A regression: the watch began after start-up had read the file, and the first read
/// for comparison came later still, so a change in between was taken as the running
/// rules and never applied.
#[tokio::test(start_paused = true)]
async fn a_change_between_loading_and_watching_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.json");
    let loaded = allowing(&["a.example.com"]);
    let config = Config::parse(&loaded, &path).unwrap();
    let relay = Arc::new(Relay::new(
        Settings::new(config, &[], &[], None).unwrap(),
        Vec::new(),
        Vec::new(),
    ));
    std::fs::write(&path, allowing(&["a.example.com", "b.example.com"])).unwrap();
    tokio::spawn(
        Reloader::install(path, loaded.into_bytes(), relay.clone(), Fixed::default()).run(),
    );
    // The clock is paused: this returns once the reloader has nothing left to do.
    tokio::time::sleep(SETTLE * 10).await;
    assert_eq!(relay.settings().config.rules.len(), 2);
}
