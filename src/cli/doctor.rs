//! `snirelay doctor`: the host settings that decide how the relay does on a long, lossy
//! path, read from a `/proc` tree (the host's, or a fixture's) without root: for each, the
//! current value, the recommended one, why, and how to set it. Pure but for reading files.

use crate::telemetry::health::open_files;
use std::fmt::Write;
use std::path::Path;

/// The path the recommendations are sized for: a client leg of up to 250 ms at up to
/// 128 Mbit/s, whose bandwidth-delay product is 4 MB.
const LONG_PATH_BDP: u64 = 128_000_000 / 8 / 4;
/// File descriptors a relay at its default `max_connections` (20,000) may hold: two
/// sockets per connection and a splice pipe (two descriptors) per busy direction.
const DESCRIPTORS: u64 = 65_536;

/// One host setting, as read and as recommended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The setting, by its sysctl name (or what it is).
    pub name: &'static str,
    /// What it is now; `unreadable` when the file is missing.
    pub current: String,
    /// What it should be.
    pub recommended: String,
    /// Whether the current value is good enough.
    pub ok: bool,
    /// Why it matters, in one line.
    pub why: &'static str,
    /// The line for a sysctl.d file, where a sysctl sets it; else how to set it.
    pub set: String,
}

fn read(proc: &Path, path: &str) -> Option<String> {
    let text = std::fs::read_to_string(proc.join(path)).ok()?;
    Some(text.split_whitespace().collect::<Vec<_>>().join(" "))
}

fn sysctl(name: &str, value: &str) -> String {
    format!("{name} = {value}")
}

/// Every finding, from the tree at `proc`.
pub fn diagnose(proc: &Path) -> Vec<Finding> {
    let unreadable = || "unreadable".to_owned();
    let mut findings = Vec::new();
    let available = read(proc, "sys/net/ipv4/tcp_available_congestion_control");
    let has_bbr = available
        .as_deref()
        .is_some_and(|list| list.split(' ').any(|name| name == "bbr"));
    findings.push(Finding {
        name: "net.ipv4.tcp_available_congestion_control",
        current: available.unwrap_or_else(unreadable),
        recommended: "includes bbr".into(),
        ok: has_bbr,
        why: "the relay sends towards its clients, the direction that loses packets: BBR keeps a lossy long path full where CUBIC backs off (BENCHMARKS.md)",
        set: "modprobe tcp_bbr && echo tcp_bbr > /etc/modules-load.d/snirelay.conf (kernel 4.9 or later; CentOS 7's 3.10 has none)".into(),
    });
    let allowed = read(proc, "sys/net/ipv4/tcp_allowed_congestion_control");
    let default = read(proc, "sys/net/ipv4/tcp_congestion_control");
    let bbr_allowed = allowed
        .as_deref()
        .is_some_and(|list| list.split(' ').any(|name| name == "bbr"));
    findings.push(Finding {
        name: "net.ipv4.tcp_congestion_control",
        current: format!(
            "{} (allowed without CAP_NET_ADMIN: {})",
            default.unwrap_or_else(unreadable),
            allowed.unwrap_or_else(unreadable)
        ),
        recommended: "bbr, or bbr in net.ipv4.tcp_allowed_congestion_control".into(),
        ok: bbr_allowed,
        why: "the packaged relay runs without CAP_NET_ADMIN and may only set an allowed algorithm on its sockets; the default is always allowed",
        set: sysctl("net.ipv4.tcp_congestion_control", "bbr"),
    });
    let qdisc = read(proc, "sys/net/core/default_qdisc");
    findings.push(Finding {
        name: "net.core.default_qdisc",
        ok: qdisc.as_deref() == Some("fq"),
        current: qdisc.unwrap_or_else(unreadable),
        recommended: "fq".into(),
        why: "fq paces each flow as BBR asks; before kernel 4.13 BBR needs it to pace at all",
        set: sysctl("net.core.default_qdisc", "fq"),
    });
    let idle = read(proc, "sys/net/ipv4/tcp_slow_start_after_idle");
    findings.push(Finding {
        name: "net.ipv4.tcp_slow_start_after_idle",
        ok: idle.as_deref() == Some("0"),
        current: idle.unwrap_or_else(unreadable),
        recommended: "0".into(),
        why: "a warm HTTP/2 or gRPC connection otherwise restarts slow start after every idle gap, paying round trips again",
        set: sysctl("net.ipv4.tcp_slow_start_after_idle", "0"),
    });
    for (name, file) in [
        ("net.ipv4.tcp_rmem", "sys/net/ipv4/tcp_rmem"),
        ("net.ipv4.tcp_wmem", "sys/net/ipv4/tcp_wmem"),
    ] {
        let current = read(proc, file);
        let fields: Vec<u64> = current
            .as_deref()
            .unwrap_or_default()
            .split(' ')
            .filter_map(|f| f.parse().ok())
            .collect();
        let wanted = 2 * LONG_PATH_BDP;
        let (min, initial) = match fields[..] {
            [min, initial, _] => (min, initial),
            _ => (4096, 131_072),
        };
        findings.push(Finding {
            name,
            ok: fields.len() == 3 && fields[2] >= wanted,
            current: current.unwrap_or_else(unreadable),
            recommended: format!("maximum at least {wanted}"),
            why: "autotuning grows a socket's buffer only up to this maximum; a long path needs twice its bandwidth-delay product (4 MB at 250 ms and 128 Mbit/s)",
            set: sysctl(name, &format!("{min} {initial} {wanted}")),
        });
    }
    let somaxconn = read(proc, "sys/net/core/somaxconn");
    findings.push(Finding {
        name: "net.core.somaxconn",
        ok: somaxconn
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|v| v >= 1024),
        current: somaxconn.unwrap_or_else(unreadable),
        recommended: "at least 1024".into(),
        why: "the relay asks for a backlog of 1024; the kernel cuts it to this, and a burst of new connections past it waits a long round trip for a retransmitted SYN",
        set: sysctl("net.core.somaxconn", "4096"),
    });
    let range = read(proc, "sys/net/ipv4/ip_local_port_range");
    let ports = range.as_deref().and_then(|r| {
        let (low, high) = r.split_once(' ')?;
        Some(high.parse::<u64>().ok()?.saturating_sub(low.parse().ok()?) + 1)
    });
    findings.push(Finding {
        name: "net.ipv4.ip_local_port_range",
        ok: ports.is_some_and(|p| p >= 20_000),
        current: range.unwrap_or_else(unreadable),
        recommended: "at least 20000 ports".into(),
        why: "every upstream connection takes a local port; a narrow range caps connections to one upstream address",
        set: sysctl("net.ipv4.ip_local_port_range", "10000 65535"),
    });
    let lowat = read(proc, "sys/net/ipv4/tcp_notsent_lowat");
    findings.push(Finding {
        name: "net.ipv4.tcp_notsent_lowat",
        ok: lowat
            .as_deref()
            .and_then(|v| v.parse::<i64>().ok())
            .is_some_and(|v| (1..=1 << 20).contains(&v)),
        current: lowat.unwrap_or_else(unreadable),
        recommended: "131072".into(),
        why: "bounds the unsent bytes each socket holds, so large buffers do not turn into queueing delay; a listener's tcp.notsent_lowat does this for the relay's own sockets",
        set: sysctl("net.ipv4.tcp_notsent_lowat", "131072"),
    });
    let limit = std::fs::read_to_string(proc.join("self/limits"))
        .ok()
        .and_then(|limits| open_files(&limits));
    findings.push(Finding {
        name: "open files (soft limit)",
        ok: limit.is_some_and(|l| l >= DESCRIPTORS),
        current: limit.map_or_else(unreadable, |l| l.to_string()),
        recommended: format!("at least {DESCRIPTORS}"),
        why: "each connection holds two sockets, and a busy direction a pipe of two more",
        set: format!("LimitNOFILE={DESCRIPTORS} in the unit (the packaged one sets it), or ulimit -n {DESCRIPTORS}"),
    });
    findings
}

/// The findings as text: one block per setting.
pub fn report(findings: &[Finding]) -> String {
    let mut out = String::new();
    for f in findings {
        let mark = if f.ok { "ok  " } else { "FIX " };
        let _ = writeln!(out, "{mark}{}: {}", f.name, f.current);
        if !f.ok {
            let _ = writeln!(out, "    recommended: {}", f.recommended);
            let _ = writeln!(out, "    why: {}", f.why);
            let _ = writeln!(out, "    set: {}", f.set);
        }
    }
    let fix = findings.iter().filter(|f| !f.ok).count();
    let _ = writeln!(
        out,
        "{fix} of {} to change; `snirelay doctor --sysctl` prints them as a sysctl.d file",
        findings.len()
    );
    out
}

/// The sysctl settings still to change, as a file for /etc/sysctl.d/.
pub fn sysctl_file(findings: &[Finding]) -> String {
    let mut out = String::from(
        "# /etc/sysctl.d/90-snirelay.conf, from `snirelay doctor --sysctl`; apply with `sysctl --system`\n",
    );
    for f in findings.iter().filter(|f| !f.ok && f.set.contains(" = ")) {
        let _ = writeln!(out, "# {}\n{}", f.why, f.set);
    }
    out
}
