//! The deployment examples under deploy/: each is checked by the tool that will read it,
//! and the numbers that must line up do.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy(path)).unwrap()
}

/// The number after `key:` on the first line that has it.
fn number(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|line| line.trim().strip_prefix(key)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} number"))
}

/// The rules.json embedded in the ConfigMap: the block under `rules.json: |`.
fn configmap_rules() -> String {
    let text = read("kubernetes/configmap.yaml");
    let mut lines = text
        .lines()
        .skip_while(|l| l.trim() != "rules.json: |")
        .skip(1);
    let first = lines.next().unwrap();
    let indent = first.len() - first.trim_start().len();
    std::iter::once(first)
        .chain(lines.take_while(|l| l.trim().is_empty() || l.starts_with(&first[..indent])))
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_kubernetes_manifests_validate_strictly() {
    let Some(validate) = common::tool("kubernetes-validate") else {
        return;
    };
    let manifests: Vec<PathBuf> = std::fs::read_dir(deploy("kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    assert_eq!(manifests.len(), 5, "{manifests:?}");
    let out = Command::new(validate)
        .arg("--strict")
        .args(&manifests)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert_eq!(said.matches(" passed for resource ").count(), 5, "{said}");
}

#[test]
fn the_configmap_rules_pass_check_and_the_grace_periods_add_up() {
    let rules = configmap_rules();
    common::check_passes(&rules);
    let config: serde_json::Value = serde_json::from_str(&rules).unwrap();
    let timeouts = &config["timeouts"];
    let (lb_grace, drain) = (
        timeouts["lb_grace_s"].as_u64().unwrap(),
        timeouts["drain_s"].as_u64().unwrap(),
    );
    let deployment = read("kubernetes/deployment.yaml");
    let pre_stop = number(&deployment, "seconds:");
    let grace = number(&deployment, "terminationGracePeriodSeconds:");
    assert!(
        grace > pre_stop + lb_grace + drain,
        "terminationGracePeriodSeconds {grace} must exceed preStop {pre_stop} + lb_grace_s {lb_grace} + drain_s {drain}"
    );
    // The probes and the Service reach the ports the rules listen on.
    assert!(config["listen"][0].as_str().unwrap().ends_with(":8443"));
    assert!(config["admin"].as_str().unwrap().ends_with(":9090"));
    assert!(
        deployment.contains("containerPort: 8443") && deployment.contains("containerPort: 9090")
    );
    assert!(deployment.contains("mountPath: /etc/snirelay") && !deployment.contains("subPath"));
}

/// keepalived's config test always ends the process with SIGTERM (2.2.7), so what it wrote
/// is the verdict: nothing for a good file. A broken copy proves the check can fail.
#[test]
fn the_keepalived_config_passes_its_config_test() {
    if !common::available("keepalived") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let complaints = |config: &Path| {
        let log = dir.path().join("config-test.log");
        let _ = std::fs::remove_file(&log);
        Command::new("keepalived")
            .arg(format!("--config-test={}", log.display()))
            .arg("-f")
            .arg(config)
            .output()
            .unwrap();
        std::fs::read_to_string(&log).unwrap_or_default()
    };
    let good = deploy("keepalived/keepalived.conf");
    assert_eq!(complaints(&good), "");
    let broken = dir.path().join("broken.conf");
    std::fs::write(
        &broken,
        read("keepalived/keepalived.conf").replace("interval 2", "intervl 2"),
    )
    .unwrap();
    assert!(complaints(&broken).contains("Unknown keyword 'intervl'"));
    // The check script asks the admin address the relay's shipped rules would use.
    assert!(read("keepalived/keepalived.conf").contains("http://127.0.0.1:9090/readyz"));
}

/// The complete HAProxy configuration in the docs passes HAProxy's own check, and the
/// relay settings its comment gives are a valid rules file whose grace covers HAProxy's
/// check interval × failures.
#[test]
fn the_haproxy_config_passes_haproxy_check_and_its_grace_covers_the_checks() {
    if !common::available("haproxy") {
        return;
    }
    common::succeeds(
        Command::new("haproxy")
            .args(["-c", "-f"])
            .arg(deploy("haproxy/haproxy.cfg")),
    );
    let text = read("haproxy/haproxy.cfg");
    let settings: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("#   "))
        .collect::<Vec<_>>()
        .join(" ");
    let rules = format!(r#"{{{settings}, "allow": ["a.example.com"]}}"#);
    let config = snirelay::config::Config::parse(&rules, Path::new("haproxy.cfg comment"))
        .unwrap_or_else(|e| panic!("{e}: {rules}"));
    let checks: Vec<&str> = text
        .lines()
        .find(|l| l.trim_start().starts_with("default-server"))
        .unwrap()
        .split_whitespace()
        .collect();
    let after = |key: &str| checks[checks.iter().position(|w| *w == key).unwrap() + 1];
    let inter: u64 = after("inter").trim_end_matches('s').parse().unwrap();
    let fall: u64 = after("fall").parse().unwrap();
    assert!(config.timeouts.lb_grace.as_secs() > inter * fall, "{rules}");
    assert_eq!(config.timeouts.idle.as_secs(), 3600);
}

/// The Deployment names the image `cargo xtask dist --image` tags, at this version, and
/// says how to push the archive it writes.
#[test]
fn the_deployment_names_the_image_the_release_builds() {
    let version = env!("CARGO_PKG_VERSION");
    let text = read("kubernetes/deployment.yaml");
    assert!(
        text.lines()
            .any(|l| l.trim() == format!("image: snirelay:{version}")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "skopeo copy oci-archive:dist/snirelay-{version}-x86_64-oci.tar"
        )),
        "{text}"
    );
}
