//! A real gRPC client on a dual-stack client machine: grpcio's resolver (c-ares) asks DNS
//! for AAAA even when /etc/hosts has an IPv4 line for the name, and would go around the
//! relay; with the block `snirelay hosts` prints it asks nothing and reaches the upstream
//! through the relay. The client runs in a network and mount namespace of its own (its own
//! /etc/hosts, resolv.conf and DNS server on 127.0.0.1:53): tests/python/through_relay.py.

mod common;

use serde_json::Value;
use std::path::Path;
use std::process::Command;

const NAME: &str = "translation.googleapis.com";

/// Runs the client in its own namespaces with `hosts` as its /etc/hosts.
fn call_through_relay(python: &Path, dir: &Path, hosts: &str) -> Value {
    let hosts_file = dir.join(format!("hosts.{}", hosts.len()));
    std::fs::write(&hosts_file, format!("127.0.0.1 localhost\n{hosts}")).unwrap();
    common::run_in_namespace(
        python,
        "through_relay.py",
        &[
            common::binary().as_ref(),
            dir.as_os_str(),
            hosts_file.as_os_str(),
        ],
    )
}

#[test]
fn a_grpc_client_asks_no_aaaa_with_the_printed_block_and_reaches_the_upstream() {
    let Some(python) = common::python_with("grpc") else {
        return;
    };
    if !common::namespaces_permitted() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    common::openssl_self_signed(dir, NAME);
    let rules = dir.join("rules.json");
    std::fs::write(&rules, format!(r#"{{"allow": ["{NAME}"]}}"#)).unwrap();

    // The leak: an IPv4 line alone, and c-ares still asks DNS for the AAAA record.
    let v4_only = call_through_relay(&python, dir, &format!("127.0.0.1 {NAME}\n"));
    let queries = v4_only["queries"].as_array().unwrap();
    assert!(
        queries.iter().any(|q| q == &format!("{NAME} AAAA")),
        "c-ares no longer asks for AAAA past /etc/hosts: {v4_only}"
    );

    // The block `snirelay hosts` prints: no query about the name, and the call succeeds.
    let block = Command::new(crate::common::binary())
        .args(["hosts", "--relay", "127.0.0.1", "--config"])
        .arg(&rules)
        .output()
        .unwrap();
    let block = String::from_utf8(block.stdout).unwrap();
    let fixed = call_through_relay(&python, dir, &block);
    eprintln!("v4 only: {v4_only}\nprinted block: {fixed}");
    assert_eq!(fixed["ok"], true, "{fixed}");
    assert_eq!(fixed["answer"], "hello", "{fixed}");
    let queries = fixed["queries"].as_array().unwrap();
    assert!(
        !queries
            .iter()
            .any(|q| q.as_str().unwrap().starts_with(NAME)),
        "the client asked DNS about {NAME}: {fixed}"
    );
}
