//! The audit log through the real binary: one line per decision under a flood of
//! refusals the operational log rate-limits, and a rotation by the real logrotate (with
//! the shipped deploy/logrotate/snirelay) that loses no line.

mod common;

use common::hellogen::hello_for;
use common::{RelayProcess, SUPPRESSED, Upstream, within};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const NAME: &str = "translation.googleapis.com";

/// A relay allowing NAME (pinned to the upstream) with its audit log in a new directory.
async fn audited_relay() -> (tempfile::TempDir, PathBuf, Upstream, RelayProcess) {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let upstream = Upstream::bind("127.0.0.1").await;
    let config = json!({
        "listen": ["127.0.0.1:0"],
        "allow": [{"name": NAME, "upstream": upstream.addr.to_string()}],
        "audit_log": audit.to_str().unwrap(),
        "timeouts": {"hello_ms": 5000, "connect_ms": 5000, "drain_s": 5},
    });
    let relay = RelayProcess::start_with(config, &[]).await;
    (dir, audit, upstream, relay)
}

/// Sends a hello for `name`, closes, reads to the end.
async fn one(relay: std::net::SocketAddr, name: &str) {
    let mut client = TcpStream::connect(relay).await.unwrap();
    client.write_all(&hello_for(name)).await.unwrap();
    client.shutdown().await.unwrap();
    let _ = client.read_to_end(&mut Vec::new()).await;
}

/// The audit lines in `paths`, in order, parsed.
fn lines(paths: &[&Path]) -> Vec<Value> {
    paths
        .iter()
        .flat_map(|path| {
            std::fs::read_to_string(path)
                .unwrap_or_default()
                .lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect::<Vec<Value>>()
        })
        .collect()
}

/// Stops the relay with SIGTERM and waits for it: the audit writer has flushed by then.
async fn stop(relay: RelayProcess) {
    relay.signal("TERM");
    assert!(relay.wait().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_decision_has_one_audit_line_even_when_the_log_is_rate_limited() {
    within(async {
        let (_dir, audit, upstream, mut relay) = audited_relay().await;
        let addr = relay.addr();
        // 300 refusals at once, far past the log's 10 lines a second per reason.
        let refusals: Vec<_> = (0..300)
            .map(|_| tokio::spawn(one(addr, "storage.googleapis.com")))
            .collect();
        for refusal in refusals {
            refusal.await.unwrap();
        }
        let forwarded = tokio::spawn(one(addr, NAME));
        assert_eq!(upstream.receive_all().await, hello_for(NAME));
        forwarded.await.unwrap();
        relay.next_message(SUPPRESSED).await;
        stop(relay).await;

        let lines = lines(&[&audit]);
        let mut reasons = BTreeMap::new();
        for line in &lines {
            *reasons
                .entry(line["reason"].as_str().unwrap().to_owned())
                .or_insert(0) += 1;
            assert!(line["time"].as_str().unwrap().ends_with('Z'), "{line}");
            assert!(
                line["client"].as_str().unwrap().starts_with("127.0.0.1:"),
                "{line}"
            );
        }
        assert_eq!(
            reasons,
            BTreeMap::from([("closed".to_owned(), 1), ("not_allowed".to_owned(), 300)])
        );
        let forwarded = lines.iter().find(|l| l["outcome"] == "forwarded").unwrap();
        assert_eq!(forwarded["sni"], NAME, "{forwarded}");
        assert_eq!(forwarded["rule"], NAME, "{forwarded}");
        assert!(forwarded["bytes_up"].as_u64().unwrap() > 0, "{forwarded}");
        let refused = lines.iter().find(|l| l["outcome"] == "rejected").unwrap();
        assert_eq!(
            (&refused["sni"], &refused["side"]),
            (&json!("storage.googleapis.com"), &json!("client")),
            "{refused}"
        );
    })
    .await
}

/// The shipped logrotate configuration, run by logrotate itself against the test's file,
/// with its `postrotate` sending the SIGHUP to this relay: lines before and after the
/// rotation are all there, in the rotated file and the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_by_logrotate_loses_no_line() {
    if !common::available("logrotate") {
        return;
    }
    within(async {
        let (dir, audit, _upstream, mut relay) = audited_relay().await;
        let addr = relay.addr();
        for _ in 0..50 {
            one(addr, "storage.googleapis.com").await;
        }
        let shipped = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/logrotate/snirelay"),
        )
        .unwrap();
        let config = shipped
            .replace("/var/log/snirelay/audit.jsonl", audit.to_str().unwrap())
            .replace(
                "systemctl reload snirelay.service",
                &format!("kill -HUP {}", relay.pid()),
            );
        assert_ne!(config, shipped);
        let conf = dir.path().join("logrotate.conf");
        std::fs::write(&conf, config).unwrap();
        // Every line of the first 50 is queued; some may still be on their way to the
        // file as it is moved: they land in the rotated file, as they should.
        let out = Command::new("logrotate")
            .arg("--force")
            .arg("--state")
            .arg(dir.path().join("state"))
            .arg(&conf)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        relay.next_message("config reloaded").await;
        for _ in 0..50 {
            one(addr, "storage.googleapis.com").await;
        }
        stop(relay).await;
        let rotated = dir.path().join("audit.jsonl.1");
        assert!(rotated.is_file(), "logrotate did not rotate");
        let before = lines(&[&rotated]).len();
        let all = lines(&[&rotated, &audit]);
        assert_eq!(all.len(), 100, "{before} in the rotated file");
        assert!((1..=100).contains(&before), "{before}");
        assert!(
            !lines(&[&audit]).is_empty(),
            "the relay reopened a new file"
        );
    })
    .await
}
