//! The allowlist as DNS server configuration, for operators who point clients at a resolver
//! instead of editing /etc/hosts on every machine; wildcards work there. Every format
//! answers A and AAAA for each name itself, so neither is ever asked of the DNS beyond.
//! Where a format's wildcard differs from the allowlist's `*.d` (any name under `d`, not
//! `d` itself), the output says how and does what keeps them equal where the server can.

use super::targets::{RelayAddrs, label_notes, labels, names};
use crate::config::Config;
use std::fmt::Write;

/// Seconds the answers may be cached.
const TTL: u32 = 300;

fn header(out: &mut String, comment: &str, relay: RelayAddrs, source: &str) {
    let RelayAddrs { v4, v6 } = relay;
    let _ = writeln!(
        out,
        "{comment} snirelay: names served through the relay at {v4} and {v6}, from {source}.\n\
         {comment} A and AAAA are both answered here for every name: none is asked upstream."
    );
}

/// dnsmasq: `host-record` for exact names; `address=/*.d/` for wildcards, which (dnsmasq
/// 2.86 and later) matches names under `d` only, as the allowlist does. A plain
/// `address=/d/` would also answer `d` itself.
pub fn dnsmasq(config: &Config, relay: RelayAddrs, source: &str) -> String {
    let RelayAddrs { v4, v6 } = relay;
    let mut out = String::new();
    header(&mut out, "#", relay, source);
    let (exact, wildcards) = names(config);
    for name in exact {
        let _ = writeln!(out, "host-record={name},{v4},{v6},{TTL}");
    }
    for suffix in wildcards {
        let _ = writeln!(
            out,
            "# *.{suffix}: names under {suffix} only, as the allowlist (needs dnsmasq 2.86 or later)\n\
             address=/*.{suffix}/{v4}\naddress=/*.{suffix}/{v6}"
        );
    }
    label_notes(&mut out, "#", config);
    out
}

/// unbound: `local-data` for exact names. For wildcards, a `redirect` zone: unbound has no
/// way to answer for the names under `d` and not `d` itself, so `d` is answered too; the
/// relay then refuses it (`not_allowed`) unless a rule allows it. It fails closed: no
/// client is sent around the relay. Names a redirect zone already covers are left out, as
/// unbound refuses data for them twice.
pub fn unbound(config: &Config, relay: RelayAddrs, source: &str) -> String {
    let RelayAddrs { v4, v6 } = relay;
    let mut out = String::new();
    header(&mut out, "#", relay, source);
    let (exact, wildcards) = names(config);
    let covered = |name: &str| {
        wildcards
            .iter()
            .any(|s| name == s || name.ends_with(&format!(".{s}")))
    };
    out.push_str("server:\n");
    for name in exact.iter().filter(|n| !covered(n)) {
        let _ = writeln!(
            out,
            "    local-data: \"{name}. {TTL} IN A {v4}\"\n    local-data: \"{name}. {TTL} IN AAAA {v6}\""
        );
    }
    for suffix in &wildcards {
        // A redirect zone nested in another is answered by the outer one already.
        if wildcards
            .iter()
            .any(|outer| outer != suffix && suffix.ends_with(&format!(".{outer}")))
        {
            continue;
        }
        let _ = writeln!(
            out,
            "    # *.{suffix}: unbound cannot answer for names under {suffix} only; {suffix} itself is\n    \
             # answered too, and the relay refuses it unless a rule allows it.\n    \
             local-zone: \"{suffix}.\" redirect\n    \
             local-data: \"{suffix}. {TTL} IN A {v4}\"\n    \
             local-data: \"{suffix}. {TTL} IN AAAA {v6}\""
        );
    }
    label_notes(&mut out, "    #", config);
    out
}

/// BIND: a response-policy (RPZ) zone. Its `*.d` matches names under `d` only, as the
/// allowlist does.
pub fn bind_rpz(config: &Config, relay: RelayAddrs, source: &str) -> String {
    let RelayAddrs { v4, v6 } = relay;
    let mut out = String::new();
    header(&mut out, ";", relay, source);
    out.push_str(
        "; A response-policy zone. In named.conf:\n\
         ;   options { response-policy { zone \"rpz.snirelay\"; }; };\n\
         ;   zone \"rpz.snirelay\" { type primary; file \"/etc/bind/db.rpz.snirelay\"; };\n",
    );
    let _ = writeln!(
        out,
        "$TTL {TTL}\n@ IN SOA localhost. hostmaster.localhost. 1 3600 600 86400 {TTL}\n@ IN NS localhost."
    );
    let (exact, wildcards) = names(config);
    let owners = exact
        .into_iter()
        .chain(wildcards.into_iter().map(|s| format!("*.{s}")));
    for owner in owners {
        let _ = writeln!(out, "{owner} A {v4}\n{owner} AAAA {v6}");
    }
    label_notes(&mut out, ";", config);
    out
}

/// CoreDNS: the `hosts` plugin for exact names, a `template` per family for wildcards,
/// whose pattern matches names under `d` only, as the allowlist does, and for label
/// patterns, whose pattern matches one label ending in the tail.
pub fn coredns(config: &Config, relay: RelayAddrs, source: &str) -> String {
    let RelayAddrs { v4, v6 } = relay;
    let mut out = String::new();
    header(&mut out, "#", relay, source);
    out.push_str("# A server block for the Corefile; keep your own forward line.\n. {\n");
    let (exact, wildcards) = names(config);
    if !exact.is_empty() {
        out.push_str("    hosts {\n");
        for name in &exact {
            let _ = writeln!(out, "        {v4} {name}\n        {v6} {name}");
        }
        let _ = writeln!(out, "        ttl {TTL}\n        fallthrough\n    }}");
    }
    let templates = wildcards
        .iter()
        .map(|suffix| {
            (
                suffix.as_str(),
                format!("^.+[.]{}[.]$", suffix.replace('.', "[.]")),
            )
        })
        .chain(labels(config).into_iter().map(|label| {
            let tail = label.tail().replace('-', "[-]");
            let parent = label.parent().replace('.', "[.]");
            (label.parent(), format!("^[^.]+{tail}[.]{parent}[.]$"))
        }));
    for (zone, pattern) in templates {
        for (kind, ip) in [("A", v4.to_string()), ("AAAA", v6.to_string())] {
            let _ = writeln!(
                out,
                "    template IN {kind} {zone} {{\n        match \"{pattern}\"\n        \
                 answer \"{{{{ .Name }}}} {TTL} IN {kind} {ip}\"\n        fallthrough\n    }}"
            );
        }
    }
    out.push_str("    forward . /etc/resolv.conf\n}\n");
    out
}
