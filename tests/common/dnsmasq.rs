//! dnsmasq as a real DNS server for tests and the bench: in the foreground, as root, reading
//! no system files, answering on `ip:port` only.

use std::process::{Command, Stdio};

/// The command; the caller adds what it serves (`--server`, `--host-record`, a conf file).
pub fn dnsmasq(ip: &str, port: u16) -> Command {
    let mut dnsmasq = Command::new("dnsmasq");
    dnsmasq
        .args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--user=root",
        ])
        .arg(format!("--listen-address={ip}"))
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    dnsmasq
}
