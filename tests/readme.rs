//! The README's commands, run as written: the offline quick start end to end with openssl
//! and curl, and the `hosts` example against what the program prints.

mod common;

use common::{Group, next_line, spawn_logged, within};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

const DEMO_DIR: &str = "/tmp/snirelay-demo";
const RELAY_BINARY: &str = "./target/release/snirelay";
/// The quick start's commands, as the README prints them (without a trailing `&`).
const MKDIR: &str = "mkdir -p /tmp/snirelay-demo";
const CERTIFICATE: &str = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout /tmp/snirelay-demo/key.pem -out /tmp/snirelay-demo/cert.pem -days 30 -subj /CN=translation.googleapis.com -addext subjectAltName=DNS:translation.googleapis.com";
const SERVER: &str = "openssl s_server -accept 127.0.0.1:9443 -cert /tmp/snirelay-demo/cert.pem -key /tmp/snirelay-demo/key.pem -www";
const RELAY: &str = "./target/release/snirelay run --listen 127.0.0.1:8443 --admin 127.0.0.1:9090 --resolve translation.googleapis.com=127.0.0.1:9443";
const CLIENT: &str = "curl --resolve translation.googleapis.com:8443:127.0.0.1 --cacert /tmp/snirelay-demo/cert.pem https://translation.googleapis.com:8443/";
const METRICS: &str = "curl -s http://127.0.0.1:9090/metrics";

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap()
}

/// A README command with the test's directory and ports: the upstream's, the relay's and
/// the admin endpoint's, in place of 9443, 8443 and 9090.
fn render(command: &str, dir: &Path, ports: [u16; 3]) -> Vec<String> {
    command
        .replace(DEMO_DIR, dir.to_str().unwrap())
        .replace(RELAY_BINARY, crate::common::binary())
        .replace("9443", &ports[0].to_string())
        .replace("8443", &ports[1].to_string())
        .replace("9090", &ports[2].to_string())
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn command(argv: &[String]) -> Command {
    let mut command = Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    command
}

#[test]
fn the_quick_start_in_the_readme_is_the_one_tested() {
    let readme = readme();
    for step in [MKDIR, CERTIFICATE, SERVER, RELAY, CLIENT, METRICS] {
        assert!(
            readme.lines().any(|line| line.starts_with(step)),
            "the README's quick start no longer has: {step}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quick_start_works_offline_as_written() {
    if !common::available("openssl") || !common::available("curl") {
        return;
    }
    within(async {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        for step in [MKDIR, CERTIFICATE] {
            let out = command(&render(step, dir, [0; 3])).output().unwrap();
            assert!(
                out.status.success(),
                "{step}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // s_server says where it listens: "ACCEPT 127.0.0.1:PORT".
        let mut server = command(&render(SERVER, dir, [0; 3]));
        server
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .stdin(Stdio::null());
        let mut server = Group(Group::lead(&mut server).spawn().unwrap());
        let stdout = server.0.stdout.take().unwrap();
        let upstream_port = tokio::task::spawn_blocking(move || {
            let accept = BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .find_map(|line| line.strip_prefix("ACCEPT 127.0.0.1:").map(str::to_owned))
                .expect("s_server did not start");
            accept.parse::<u16>().unwrap()
        })
        .await
        .unwrap();

        // JSON logs only so the test can read them; the command is the README's otherwise.
        let mut relay = command(&render(RELAY, dir, [upstream_port, 0, 0]));
        relay.args(["--log-format", "json"]).env("RUST_LOG", "info");
        Group::lead(&mut relay);
        let (child, mut logs) = spawn_logged(relay);
        let _relay = Group(child);
        let (mut relay_port, mut admin_port) = (0, 0);
        while relay_port == 0 || admin_port == 0 {
            let line = next_line(&mut logs).await;
            let port = || {
                line["addr"]
                    .as_str()
                    .unwrap()
                    .rsplit(':')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            };
            match line["message"].as_str() {
                Some("listening") => relay_port = port(),
                Some("admin listening") => admin_port = port(),
                _ => {}
            }
        }
        let ports = [upstream_port, relay_port, admin_port];

        let client = render(CLIENT, dir, ports);
        let out = tokio::task::spawn_blocking(move || command(&client).output().unwrap())
            .await
            .unwrap();
        let page = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(page.contains("s_server -accept"), "{page}");
        let line = loop {
            let line = next_line(&mut logs).await;
            if line["message"] == "connection" {
                break line;
            }
        };
        assert_eq!(
            (&line["sni"], &line["outcome"], &line["reason"]),
            (
                &"translation.googleapis.com".into(),
                &"forwarded".into(),
                &"closed".into()
            ),
            "{line}"
        );
        let metrics = render(METRICS, dir, ports);
        let out = tokio::task::spawn_blocking(move || command(&metrics).output().unwrap())
            .await
            .unwrap();
        let metrics = String::from_utf8_lossy(&out.stdout);
        assert!(
            metrics
                .contains("snirelay_connections_total{outcome=\"forwarded\",reason=\"closed\"} 1"),
            "{metrics}"
        );
        drop(server);
    })
    .await
}

#[test]
fn the_hosts_example_is_what_the_program_prints() {
    let readme = readme();
    let intro = "`snirelay hosts --relay 10.20.0.5` prints this block from the rules file:";
    let block = readme
        .split_once(intro)
        .and_then(|(_, rest)| rest.split_once("```\n"))
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(block, _)| block)
        .expect("the README's hosts example");
    let out = command(&[
        crate::common::binary().to_owned(),
        "hosts".into(),
        "--relay".into(),
        "10.20.0.5".into(),
    ])
    .output()
    .unwrap();
    assert!(out.status.success());
    assert_eq!(block, String::from_utf8_lossy(&out.stdout));
}

/// The text of every ```sh block in the README, docs/ and CONTRIBUTING.md, by file.
fn shell_blocks() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md"), root.join("CONTRIBUTING.md")];
    let mut docs: Vec<_> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    docs.sort();
    files.extend(docs);
    let mut blocks = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut inside = false;
        for line in text.lines() {
            if line.trim_start().starts_with("```") {
                inside = !inside && line.trim_start() == "```sh";
                continue;
            }
            if inside {
                blocks.push((file.display().to_string(), line.to_owned()));
            }
        }
    }
    blocks
}

/// Every `snirelay` command the docs show takes the subcommand, flags and values it is
/// shown with: each is run with `--help` appended, which the argument parser answers only
/// once everything before it parses.
#[test]
fn every_snirelay_command_in_the_docs_parses() {
    let mut seen = 0;
    for (file, line) in shell_blocks() {
        let code = line.split(" #").next().unwrap();
        for part in code.split(['|', '&', ';', '>', '<']) {
            let words: Vec<&str> = part
                .split_whitespace()
                .skip_while(|w| *w == "sudo")
                .collect();
            let Some(first) = words.first() else { continue };
            if !(first.ends_with("/snirelay") || *first == "snirelay") || words.len() < 2 {
                continue;
            }
            seen += 1;
            let out = Command::new(common::binary())
                .args(&words[1..])
                .arg("--help")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{file}: `{}` does not parse: {}",
                part.trim(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    assert!(
        seen >= 10,
        "found only {seen} snirelay commands in the docs"
    );
}

/// The rules file of the Beijing-to-London walkthrough passes `check`.
#[test]
fn the_walkthrough_rules_pass_check() {
    let readme = readme();
    let start = readme
        .find("## From Beijing to London")
        .expect("the walkthrough");
    let block = readme[start..]
        .split("```json\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the walkthrough's rules.json");
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.json");
    std::fs::write(&rules, block).unwrap();
    let out = Command::new(common::binary())
        .args(["check", "--config"])
        .arg(&rules)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
