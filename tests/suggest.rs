//! `snirelay suggest` on what the relay really writes: its default text log, fed through a
//! pipe as `journalctl -u snirelay -o cat | snirelay suggest` would; and input that holds
//! no connection line.

mod common;

use common::hellogen::hello_for;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use tokio::io::AsyncReadExt;

#[tokio::test]
async fn suggest_reads_the_relays_default_text_log() {
    common::within(async {
        let dir = tempfile::tempdir().unwrap();
        let rules = dir.path().join("rules.json");
        std::fs::write(&rules, r#"{"allow": ["a.example.com"]}"#).unwrap();
        // The relay as the unit runs it: text lines on standard error.
        let mut relay = Command::new(common::binary())
            .args(["run", "--listen", "127.0.0.1:0", "--config"])
            .arg(&rules)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(relay.stderr.take().unwrap()).lines();
        let mut log = String::new();
        let mut next = || {
            let line = lines.next().unwrap().unwrap();
            log.push_str(&line);
            log.push('\n');
            line
        };
        let addr = loop {
            let line = next();
            if let Some(at) = line.split(" listening addr=").nth(1) {
                break at.trim().to_owned();
            }
        };
        let mut client =
            common::send_and_close(addr.parse().unwrap(), &hello_for("b.example.com")).await;
        let _ = client.read_to_end(&mut Vec::new()).await;
        while !next().contains("reason=\"not_allowed\"") {}
        let _ = relay.kill();
        let _ = relay.wait();

        let out = common::suggest(&[], &log);
        let report = String::from_utf8_lossy(&out.stdout);
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{said}");
        assert!(
            report.contains("b.example.com: 1 not_allowed"),
            "{report}\n{log}"
        );
        assert!(
            report.contains("proposed additions to allow:\n  \"b.example.com\""),
            "{report}"
        );
        assert!(said.contains("of them connection lines"), "{said}");
    })
    .await
}

#[test]
fn input_without_a_connection_line_is_refused_with_how_to_get_one() {
    for input in ["", "just some text\n{\"message\": \"listening\"}\n"] {
        let out = common::suggest(&[], input);
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{said}");
        assert!(
            said.contains("none a connection line")
                && said.contains("journalctl -u snirelay -o cat | snirelay suggest"),
            "{said}"
        );
        assert!(out.stdout.is_empty());
    }
}
