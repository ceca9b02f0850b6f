//! The README's commands, run as written: the offline quick start end to end with openssl
//! and curl, and the `hosts` example against what the program prints.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

const DEMO_DIR: &str = "/tmp/snirelay-demo";
const RELAY_BINARY: &str = "./target/release/snirelay";
fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap()
}

/// The quick start's block, as the README prints it.
fn quick_start(readme: &str) -> String {
    let start = readme
        .find("## Quick start, offline, on one machine")
        .expect("the quick start");
    readme[start..]
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the quick start's block")
        .to_owned()
}

/// The quick start run as a script, as written: in network and process namespaces of its
/// own, where its ports are free and whatever it leaves running ends with it. Only the
/// demo directory and the binary's path are the test's own.
#[test]
fn the_quick_start_works_offline_as_written() {
    if !common::available("openssl") || !common::available("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = quick_start(&readme())
        .replace(DEMO_DIR, dir.path().to_str().unwrap())
        .replace(RELAY_BINARY, common::binary());
    let path = dir.path().join("quick-start.sh");
    std::fs::write(&path, format!("set -e\nip link set lo up\n{script}")).unwrap();
    let out = Command::new("timeout")
        .args([
            "60",
            "unshare",
            "--net",
            "--pid",
            "--fork",
            "--kill-child",
            "bash",
        ])
        .arg(&path)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    let errors = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}\n{errors}");
    assert!(
        said.contains("translation.googleapis.com via 127.0.0.1:8443: ok"),
        "the probe: {said}"
    );
    assert!(said.contains("s_server -accept"), "the page: {said}");
    assert!(
        said.contains(r#"snirelay_connections_total{outcome="forwarded",reason="closed"} 2"#),
        "the metrics: {said}"
    );
}

/// The block of plain text that follows `intro` in `file`.
fn block_after(file: &str, intro: &str) -> String {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
    text.split_once(intro)
        .and_then(|(_, rest)| rest.split_once("```\n"))
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(block, _)| block.to_owned())
        .unwrap_or_else(|| panic!("{file}: no example after {intro:?}"))
}

/// Every generated example in the docs is what the program prints for it today.
#[test]
fn the_generated_examples_in_the_docs_are_what_the_program_prints() {
    let examples: [(&str, &str, &[&str]); 3] = [
        (
            "docs/clients.md",
            "`snirelay env --relay 10.20.0.5:3128` prints:",
            &["env", "--relay", "10.20.0.5:3128"],
        ),
        (
            "README.md",
            "`snirelay hosts --relay 10.20.0.5` prints this block from the rules file:",
            &["hosts", "--relay", "10.20.0.5"],
        ),
        (
            "docs/clients.md",
            "For `examples/cloud-storage.json`, `--format dnsmasq` prints:",
            &[
                "hosts",
                "--relay",
                "10.20.0.5",
                "--config",
                "examples/cloud-storage.json",
                "--format",
                "dnsmasq",
            ],
        ),
    ];
    for (file, intro, args) in examples {
        let out = Command::new(common::binary())
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        assert_eq!(
            block_after(file, intro),
            String::from_utf8_lossy(&out.stdout),
            "{file}: the example after {intro:?}"
        );
    }
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
    common::check_passes(block);
}
