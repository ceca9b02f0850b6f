//! JA4 of the real captured hellos (curl, openssl, Chromium, Python, rustls), held to a
//! reference written apart from the relay's, from the raw bytes
//! (tests/python/ja4_reference.py); and the fingerprint reaches the log line.

mod common;

use common::hellogen::hello_for;
use common::{RelayProcess, Upstream, pinned_config, within};
use snirelay::hello::HelloReader;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[test]
fn each_real_hello_has_the_reference_fingerprint() {
    let dir = common::fixture_dir().join("hellos");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .collect();
    assert!(files.len() >= 5, "{files:?}");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/ja4_reference.py");
    let out = common::succeeds(Command::new("python3").arg(script).args(&files));
    let reference: BTreeMap<String, String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (name, ja4) = l.split_once(' ').unwrap();
            (name.to_owned(), ja4.to_owned())
        })
        .collect();
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        let name = file.file_name().unwrap().to_str().unwrap();
        let hello = HelloReader::new(65536)
            .fingerprint(true)
            .advance(&bytes)
            .unwrap()
            .unwrap();
        assert_eq!(
            hello.ja4.map(|j| j.to_string()).as_deref(),
            Some(reference[name].as_str()),
            "{name}"
        );
        // Without being asked for, no fingerprint (and no hashing).
        let plain = HelloReader::new(65536).advance(&bytes).unwrap().unwrap();
        assert_eq!(plain.ja4, None);
    }
    // Chromium's is one the JA4 database knows for Chrome: its cipher part is Chrome's.
    assert!(reference["real_chromium.bin"].starts_with("t13d151"));
    assert!(reference["real_chromium.bin"].contains("_8daaf6152771_"));
}

#[tokio::test]
async fn the_log_line_carries_the_fingerprint() {
    within(async {
        let upstream = Upstream::bind("127.0.0.1").await;
        let name = "translation.googleapis.com";
        let mut relay = RelayProcess::start(pinned_config(&[name], upstream.addr)).await;
        let hello = hello_for(name);
        let mut client = tokio::net::TcpStream::connect(relay.addr()).await.unwrap();
        client.write_all(&hello).await.unwrap();
        client.shutdown().await.unwrap();
        assert_eq!(upstream.receive_all().await, hello);
        client.read_to_end(&mut Vec::new()).await.unwrap();
        let log = relay.next_connection().await;
        let ja4 = log["ja4"].as_str().unwrap_or_default();
        assert_eq!(ja4.len(), 36, "{log}");
        assert!(ja4.starts_with("t13d"), "{log}");
    })
    .await
}
