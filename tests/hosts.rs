//! `snirelay hosts` in every format, checked by the tool that will read it, and dnsmasq run
//! for real: every name answered for both families, nothing about them asked upstream, and
//! a wildcard's parent left alone as the allowlist leaves it.

mod common;

use common::{Group, dns_query, fresh_loopback, recording_dns_server, within};
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

/// Exact names, a wildcard, a wildcard inside it, a name under a wildcard, a name that
/// is a wildcard's parent, and a label pattern.
const RULES: &str = r#"{"allow": [
    "translation.googleapis.com",
    "*-aiplatform.googleapis.com",
    "storage.googleapis.com",
    "*.storage.googleapis.com",
    "*.eu.storage.googleapis.com",
    "bucket.storage.googleapis.com",
    "*.example.org"
]}"#;

fn hosts(dir: &Path, format: &str, relay: &[&str]) -> String {
    let rules = dir.join("rules.json");
    std::fs::write(&rules, RULES).unwrap();
    let mut cmd = Command::new(crate::common::binary());
    cmd.args(["hosts", "--format", format, "--config"])
        .arg(&rules);
    for ip in relay {
        cmd.args(["--relay", ip]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    said
}

#[test]
fn the_hosts_format_has_both_families_and_the_mapped_form_without_ipv6() {
    let dir = tempfile::tempdir().unwrap();
    let block = hosts(dir.path(), "hosts", &["10.20.0.5"]);
    assert!(
        block.contains(
            "\n10.20.0.5 translation.googleapis.com\n::ffff:10.20.0.5 translation.googleapis.com\n"
        ),
        "{block}"
    );
    assert!(
        block.contains("# *-aiplatform.googleapis.com: this format cannot match part of a label;"),
        "{block}"
    );
    let block = hosts(dir.path(), "hosts", &["fd00::5", "10.20.0.5"]);
    assert!(
        block.contains(
            "\n10.20.0.5 translation.googleapis.com\nfd00::5 translation.googleapis.com\n"
        ),
        "{block}"
    );
    let out = Command::new(crate::common::binary())
        .args(["hosts", "--relay", "fd00::5", "--config"])
        .arg(dir.path().join("rules.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs the relay's IPv4 address"));
}

#[test]
fn each_dns_format_passes_its_servers_own_check() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let relay = ["10.20.0.5", "fd00::5"];
    if common::available("dnsmasq") {
        std::fs::write(dir.join("dnsmasq.conf"), hosts(dir, "dnsmasq", &relay)).unwrap();
        let said = run(Command::new("dnsmasq").arg("--test").arg(format!(
            "--conf-file={}",
            dir.join("dnsmasq.conf").display()
        )));
        assert!(said.contains("syntax check OK"), "{said}");
    }
    if common::available("unbound-checkconf") {
        std::fs::write(dir.join("unbound.conf"), hosts(dir, "unbound", &relay)).unwrap();
        let said = run(Command::new("unbound-checkconf").arg(dir.join("unbound.conf")));
        assert!(said.contains("no errors"), "{said}");
    }
    if common::available("named-checkzone") {
        let zone = dir.join("db.rpz.snirelay");
        std::fs::write(&zone, hosts(dir, "bind", &relay)).unwrap();
        let said = run(Command::new("named-checkzone")
            .arg("rpz.snirelay")
            .arg(&zone));
        assert!(said.contains("OK"), "{said}");
        // As named.conf would load it, following the zone file's own instructions.
        let conf = dir.join("named.conf");
        std::fs::write(
            &conf,
            format!(
                "options {{ directory \"{d}\"; response-policy {{ zone \"rpz.snirelay\"; }}; }};\n\
                 zone \"rpz.snirelay\" {{ type primary; file \"{z}\"; }};\n",
                d = dir.display(),
                z = zone.display()
            ),
        )
        .unwrap();
        run(Command::new("named-checkconf").arg("-z").arg(&conf));
    }
    // CoreDNS is not in Debian: its block is checked for what it must contain.
    let corefile = hosts(dir, "coredns", &relay);
    for line in [
        "        10.20.0.5 translation.googleapis.com",
        "        fd00::5 translation.googleapis.com",
        "    template IN AAAA storage.googleapis.com {",
        "        match \"^.+[.]storage[.]googleapis[.]com[.]$\"",
        "    template IN A googleapis.com {",
        "        match \"^[^.]+[-]aiplatform[.]googleapis[.]com[.]$\"",
    ] {
        assert!(corefile.lines().any(|l| l == line), "{line}\n{corefile}");
    }
}

/// dnsmasq answering from the generated file, with a recording DNS server behind it.
#[tokio::test]
async fn dnsmasq_answers_both_families_itself_and_leaves_a_wildcards_parent_alone() {
    if !common::available("dnsmasq") {
        return;
    }
    within(async {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("snirelay.conf");
        std::fs::write(&conf, hosts(dir.path(), "dnsmasq", &["10.20.0.5"])).unwrap();
        let (upstream, asked) =
            recording_dns_server(vec![("example.org", vec!["192.0.2.80".parse().unwrap()])]).await;
        let (ip, ports) = fresh_loopback(104, 1);
        let mut dnsmasq = common::dnsmasq::dnsmasq(&ip, ports[0]);
        dnsmasq
            .arg(format!("--server=127.0.0.1#{}", upstream.port()))
            .arg(format!("--conf-file={}", conf.display()))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()));
        let _dnsmasq = Group(Group::lead(&mut dnsmasq).spawn().unwrap());
        let server = format!("{ip}:{}", ports[0]).parse().unwrap();
        // dnsmasq says nothing when it is ready: ask until it answers.
        let v4: IpAddr = "10.20.0.5".parse().unwrap();
        let v6: IpAddr = "::ffff:10.20.0.5".parse().unwrap();
        while tokio::time::timeout(
            std::time::Duration::from_millis(200),
            dns_query(server, "translation.googleapis.com", "A"),
        )
        .await
        .is_err()
        {}
        for name in [
            "translation.googleapis.com",
            "bucket.storage.googleapis.com",
            "x.eu.storage.googleapis.com",
            "a.b.example.org",
        ] {
            assert_eq!(dns_query(server, name, "A").await, [v4], "{name} A");
            assert_eq!(dns_query(server, name, "AAAA").await, [v6], "{name} AAAA");
        }
        // The allowlist's *.example.org does not cover example.org: dnsmasq asks upstream.
        assert_eq!(
            dns_query(server, "example.org", "A").await,
            ["192.0.2.80".parse::<IpAddr>().unwrap()]
        );
        let asked = asked.lock().unwrap().clone();
        assert_eq!(
            asked,
            ["example.org A"],
            "only the wildcard's parent went upstream"
        );
    })
    .await
}
