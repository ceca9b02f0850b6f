//! Deciding a name with 6 rules and with 100,000, and loading a 100,000-rule file.
//! `cargo bench --bench rules`

use snirelay::config::Config;
use snirelay::hostname::Hostname;
use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

/// A rules.json with `n` rules: exact names, wildcards and label patterns (with tails of
/// six lengths, so a name is probed once per length), a quarter pinned.
fn rules_file(n: usize) -> String {
    let mut allow = vec![
        r#""translation.googleapis.com""#.to_owned(),
        r#""*.sandbox.googleapis.com""#.to_owned(),
        r#"{"name": "texttospeech.googleapis.com", "upstream": "private.googleapis.com:443"}"#
            .to_owned(),
        r#""oauth2.googleapis.com""#.to_owned(),
        r#""*.storage.example.net""#.to_owned(),
        r#""*-aiplatform.googleapis.com""#.to_owned(),
    ];
    for i in allow.len()..n {
        allow.push(match i % 4 {
            0 => format!(r#""api{i}.service{}.example.com""#, i % 97),
            1 => format!(r#""*.tenant{i}.example.org""#),
            2 => format!(r#""*-svc{i}.example.io""#),
            _ => format!(
                r#"{{"name": "host{i}.example.net", "upstream": "10.0.{}.{}:443"}}"#,
                (i / 250) % 250,
                i % 250
            ),
        });
    }
    format!(r#"{{"allow": [{}]}}"#, allow.join(",\n"))
}

/// Median nanoseconds per decision over the names, in several batches.
fn decide_ns(config: &Config, names: &[Hostname]) -> f64 {
    let mut batches = Vec::new();
    for _ in 0..31 {
        let started = Instant::now();
        for _ in 0..200 {
            for name in names {
                black_box(config.rules.route(black_box(name), 443));
            }
        }
        batches.push(started.elapsed().as_nanos() as f64 / (200 * names.len()) as f64);
    }
    batches.sort_by(|a, b| a.partial_cmp(b).unwrap());
    batches[batches.len() / 2]
}

fn main() {
    let names: Vec<Hostname> = [
        "translation.googleapis.com",
        "a.b.sandbox.googleapis.com",
        "texttospeech.googleapis.com",
        "storage.googleapis.com",
        "x.y.z.storage.example.net",
        "us-central1-aiplatform.googleapis.com",
        "eu-svc12346.example.io",
        "eu-svc12346-not.example.io",
        "not.allowed.example",
    ]
    .iter()
    .map(|n| n.parse().unwrap())
    .collect();
    let small = Config::parse(&rules_file(6), Path::new("6.json")).unwrap();
    let text = rules_file(100_000);
    let started = Instant::now();
    let large = Config::parse(&text, Path::new("100k.json")).unwrap();
    let load = started.elapsed();
    assert_eq!(large.rules.len(), 100_000);
    let (a, b) = (decide_ns(&small, &names), decide_ns(&large, &names));
    println!("| figure | 6 rules | 100,000 rules |\n|---|---|---|");
    println!(
        "| decide one name, ns (median) | {a:.0} | {b:.0} ({:.2}x) |",
        b / a
    );
    println!(
        "| load and validate the file, ms | - | {:.0} ({} KiB) |",
        load.as_secs_f64() * 1e3,
        text.len() / 1024
    );
}
