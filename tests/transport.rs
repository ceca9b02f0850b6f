//! TCP settings in rules.json: a congestion control the kernel will not set is refused by
//! `check` and by `run`, saying where it is named and what to do; one it has is set.

mod common;

use serde_json::json;
use std::process::Command;

/// Runs `snirelay ARGS --config FILE` on `config`, written to a temporary file.
fn with_config(args: &[&str], config: &serde_json::Value) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.json");
    std::fs::write(&path, config.to_string()).unwrap();
    Command::new(common::binary())
        .args(args)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap()
}

fn refusing_config() -> serde_json::Value {
    json!({
        "listen": [{"addr": "127.0.0.1:0", "tcp": {"congestion": "nosuchcc"}}],
        "allow": ["a.example.com"]
    })
}

#[test]
fn check_refuses_a_congestion_control_the_kernel_lacks_and_says_where_and_why() {
    let out = with_config(&["check"], &refusing_config());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "listener 127.0.0.1:0: TCP congestion control \"nosuchcc\" cannot be used here"
        ) && stderr.contains("modprobe tcp_nosuchcc"),
        "{stderr}"
    );
    let named = json!({
        "listen": [{"addr": "127.0.0.1:0", "tcp": {"congestion": "reno", "notsent_lowat": 16384}}],
        "upstream_tcp": {"keepalive": {"idle_s": 30}, "user_timeout_s": 60},
        "allow": [{"name": "a.example.com", "tcp": {"congestion": "reno"}}]
    });
    let out = with_config(&["check"], &named);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn run_refuses_to_start_on_a_congestion_control_the_kernel_lacks() {
    let out = with_config(&["run"], &refusing_config());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("listener 127.0.0.1:0: TCP congestion control \"nosuchcc\""),
        "{stderr}"
    );
}
