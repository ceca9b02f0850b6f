//! `snirelay doctor`: the host settings for the long haul, on fixture /proc trees and on
//! this machine.

mod common;

use std::process::{Command, Output};

fn doctor(args: &[&str]) -> Output {
    Command::new(common::binary())
        .arg("doctor")
        .args(args)
        .output()
        .unwrap()
}

fn proc_tree(name: &str) -> String {
    common::fixture_dir()
        .join("proc")
        .join(name)
        .display()
        .to_string()
}

/// The settings a report marks for change.
fn to_fix(report: &str) -> Vec<&str> {
    report
        .lines()
        .filter_map(|line| line.strip_prefix("FIX "))
        .filter_map(|line| line.split(':').next())
        .collect()
}

#[test]
fn an_untuned_centos_7_host_is_told_every_change_and_why() {
    let centos = proc_tree("centos7");
    let out = doctor(&["--proc", &centos]);
    assert!(out.status.success(), "doctor exits 0 unless --strict");
    let report = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        to_fix(&report),
        [
            "net.ipv4.tcp_available_congestion_control",
            "net.ipv4.tcp_congestion_control",
            "net.core.default_qdisc",
            "net.ipv4.tcp_slow_start_after_idle",
            "net.ipv4.tcp_rmem",
            "net.ipv4.tcp_wmem",
            "net.core.somaxconn",
            "net.ipv4.tcp_notsent_lowat",
            "open files (soft limit)",
        ],
        "{report}"
    );
    assert!(report.contains("ok  net.ipv4.ip_local_port_range: 32768 60999"));
    assert!(report.contains("set: modprobe tcp_bbr"), "{report}");
    assert!(
        report.contains("set: net.ipv4.tcp_rmem = 4096 87380 8000000"),
        "{report}"
    );
    assert!(report.contains("9 of 10 to change"), "{report}");
    assert_eq!(
        doctor(&["--proc", &centos, "--strict"]).status.code(),
        Some(1)
    );
}

#[test]
fn the_sysctl_file_holds_only_sysctl_lines_for_what_to_change() {
    let out = doctor(&["--proc", &proc_tree("centos7"), "--sysctl"]);
    let file = String::from_utf8(out.stdout).unwrap();
    let settings: Vec<&str> = file.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(settings.len(), 7, "{file}");
    for line in &settings {
        let (key, value) = line.split_once(" = ").unwrap_or_else(|| panic!("{line}"));
        assert!(key.starts_with("net.") && !value.is_empty(), "{line}");
    }
    assert!(settings.contains(&"net.ipv4.tcp_slow_start_after_idle = 0"));
}

#[test]
fn a_tuned_host_passes_strict() {
    let out = doctor(&["--proc", &proc_tree("tuned"), "--strict"]);
    let report = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{report}");
    assert!(to_fix(&report).is_empty(), "{report}");
    assert!(report.contains("0 of 10 to change"));
}

#[test]
fn this_host_is_read_without_error() {
    let out = doctor(&[]);
    assert!(out.status.success());
    let report = String::from_utf8(out.stdout).unwrap();
    let settings = report
        .lines()
        .filter(|l| l.starts_with("ok  ") || l.starts_with("FIX "))
        .count();
    assert_eq!(settings, 10, "{report}");
    assert!(!report.contains("unreadable"), "{report}");
}
