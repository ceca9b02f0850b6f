//! The command-line contract: `check` output and exit codes, `run` start-up errors, signals.

mod common;

use common::{RelayProcess, Upstream, fixture_dir, pinned_config, within};
use snirelay::config::{Config, Listener};
use std::path::Path;
use std::process::{Command, Output};

fn snirelay(args: &[&str]) -> Output {
    Command::new(crate::common::binary())
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn json_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    files
}

#[test]
fn check_reports_each_mistake_with_file_line_column_and_what_was_expected() {
    for file in json_files(&fixture_dir().join("config/invalid")) {
        let expected = std::fs::read_to_string(file.with_extension("expected")).unwrap();
        let path = file.to_str().unwrap();
        let out = snirelay(&["check", "--config", path]);
        assert_eq!(out.status.code(), Some(2), "{path}");
        assert_eq!(text(&out.stderr), format!("{path}:{expected}"), "{path}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn check_accepts_valid_files_and_summarises_them() {
    for file in json_files(&fixture_dir().join("config/valid")) {
        let path = file.to_str().unwrap();
        let out = snirelay(&["check", "--config", path]);
        assert_eq!(out.status.code(), Some(0), "{path}: {}", text(&out.stderr));
        assert!(text(&out.stdout).starts_with(&format!("{path}: ok\n  rules: ")));
    }
    let out = snirelay(&[
        "check",
        "--config",
        fixture_dir()
            .join("config/valid/every_form.json")
            .to_str()
            .unwrap(),
    ]);
    let summary = text(&out.stdout);
    assert!(
        summary.contains(
            "rules: 8 (5 exact, 2 wildcard, 1 label pattern; of which 3 pinned to an upstream)"
        ),
        "{summary}"
    );
    assert!(
        summary.contains("10.20.0.5:9443 (PROXY v2 from 100.64.0.0/10, 10.20.0.0/16)"),
        "{summary}"
    );
    assert!(
        summary
            .contains("    chained.example.org -> 10.30.0.9:443 (pinned), PROXY v2 header first\n"),
        "{summary}"
    );
    assert!(
        summary.contains("resolver: 1.1.1.1:53, [2606:4700:4700::1111]:53"),
        "{summary}"
    );
    assert!(
        summary.contains("    pinned-v6.example.org -> [2001:db8::10]:443 (pinned)\n"),
        "{summary}"
    );
    assert!(
        summary.contains("    *.example.com -> the requested name:8443 (DNS)\n"),
        "{summary}"
    );
    assert!(
        summary
            .contains("  redundant: \"exact.example.com\" is already allowed by \"*.example.com\""),
        "{summary}"
    );
    assert!(
        summary.contains("  clients: 10.0.0.0/8, 172.16.0.0/12, "),
        "{summary}"
    );
    assert!(out.stderr.is_empty(), "no warnings for this file");
}

#[test]
fn check_lists_rules_in_match_order_and_warns_about_an_empty_allowlist() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.json");
    let rules = r#"{"allow": ["*.googleapis.com", "b.example.com", "*.storage.googleapis.com", "a.example.com"]}"#;
    std::fs::write(&path, rules).unwrap();
    let out = snirelay(&["check", "--config", path.to_str().unwrap()]);
    let summary = text(&out.stdout);
    let listed: Vec<&str> = summary
        .lines()
        .skip_while(|l| !l.contains("effective rules"))
        .skip(1)
        .take_while(|l| l.starts_with("    "))
        .map(|l| l.trim().split(' ').next().unwrap())
        .collect();
    assert_eq!(
        listed,
        [
            "a.example.com",
            "b.example.com",
            "*.storage.googleapis.com",
            "*.googleapis.com"
        ],
        "{summary}"
    );
    assert!(text(&out.stderr).is_empty());

    std::fs::write(&path, r#"{"allow": []}"#).unwrap();
    let out = snirelay(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("warning: allow is empty: every connection will be refused"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn check_warns_about_an_open_relay() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("open.json");
    std::fs::write(
        &path,
        r#"{"allow": ["a.example.com"], "clients": ["0.0.0.0/0", "::/0"]}"#,
    )
    .unwrap();
    let out = snirelay(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stderr),
        "warning: clients includes 0.0.0.0/0 and ::/0: anyone who can reach the listeners can use the relay for the allowed names\n"
    );
}

#[test]
fn hosts_prints_the_client_block_for_the_shipped_rules() {
    let out = Command::new(crate::common::binary())
        .args(["hosts", "--relay", "10.20.0.5"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let block = text(&out.stdout);
    let lines: Vec<&str> = block.lines().filter(|l| !l.starts_with('#')).collect();
    let names = [
        "translation.googleapis.com",
        "translate.googleapis.com",
        "texttospeech.googleapis.com",
        "oauth2.googleapis.com",
        "www.googleapis.com",
    ];
    let want: Vec<String> = names
        .iter()
        .flat_map(|n| [format!("10.20.0.5 {n}"), format!("::ffff:10.20.0.5 {n}")])
        .collect();
    assert_eq!(lines, want);
    assert!(block.starts_with(
        "# snirelay: names served through the relay at 10.20.0.5 and ::ffff:10.20.0.5\n"
    ));
    let out = snirelay(&["hosts", "--relay", "not-an-ip"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn shipped_rules_allow_the_seed_scenario() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules.json");
    let config = Config::load(&path).unwrap();
    assert_eq!(
        config.listen,
        [Listener::plain("0.0.0.0:443".parse().unwrap())]
    );
    for name in [
        "translation.googleapis.com",
        "translate.googleapis.com",
        "texttospeech.googleapis.com",
        "oauth2.googleapis.com",
        "www.googleapis.com",
    ] {
        assert!(
            config.rules.find(&name.parse().unwrap()).is_some(),
            "{name}"
        );
    }
    assert!(
        config
            .rules
            .find(&"storage.googleapis.com".parse().unwrap())
            .is_none()
    );
}

#[test]
fn check_defaults_to_rules_json_and_reports_a_missing_file() {
    let out = Command::new(crate::common::binary())
        .arg("check")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).starts_with("rules.json: ok"));
    let out = snirelay(&["check", "--config", "/nonexistent/rules.json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).starts_with("/nonexistent/rules.json: cannot read: "));
}

#[test]
fn run_refuses_an_invalid_config_like_check() {
    let file = fixture_dir().join("config/invalid/duplicate_name.json");
    let path = file.to_str().unwrap();
    let expected = std::fs::read_to_string(file.with_extension("expected")).unwrap();
    let out = snirelay(&["run", "--config", path, "--listen", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(text(&out.stderr), format!("{path}:{expected}"));
}

#[test]
fn run_explains_a_listener_it_cannot_bind() {
    let config = fixture_dir().join("config/valid/minimal.json");
    let config = config.to_str().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = snirelay(&["run", "--config", config, "--listen", &addr]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
    assert!(err.contains("--listen"), "{err}");
    assert_eq!(
        err.matches("os error").count(),
        1,
        "the OS error is said once: {err}"
    );

    let out = snirelay(&["run", "--config", config, "--listen", "192.0.2.1:0"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot listen on 192.0.2.1:0")
            && err.contains("no interface has this address"),
        "{err}"
    );
}

#[test]
fn run_explains_a_privileged_port() {
    // Where ports from 1 up are unprivileged (a sysctl some containers set), port 1 would
    // bind and the relay would run: there is no refusal to explain.
    let start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .map_or(1024, |s| s.trim().parse().unwrap_or(1024));
    if start <= 1 {
        common::cannot_run_here(&format!(
            "ip_unprivileged_port_start is {start}, so port 1 is not privileged here"
        ));
        return;
    }
    let mut config = fixture_dir().join("config/valid/minimal.json");
    // Kept alive until the command has run.
    let _unprivileged_dir;
    let mut cmd = if running_as_root() {
        // Root may bind anything; the unprivileged case is what operators hit. `nobody` may
        // not be able to reach the checkout (a clone under a 0700 directory), so the config
        // and the binary go to a directory it can read.
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let open = |path: &Path, mode| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        open(dir.path(), 0o755);
        let binary = dir.path().join("snirelay");
        std::fs::copy(crate::common::binary(), &binary).unwrap();
        open(&binary, 0o755);
        let copied = dir.path().join("rules.json");
        std::fs::copy(&config, &copied).unwrap();
        open(&copied, 0o644);
        config = copied;
        let mut cmd = Command::new("timeout");
        cmd.args([
            "30",
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
        ])
        .arg(&binary);
        _unprivileged_dir = dir;
        cmd
    } else {
        let mut cmd = Command::new("timeout");
        cmd.args(["30", crate::common::binary()]);
        cmd
    };
    let out = cmd
        .args([
            "run",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("snirelay: cannot listen on 127.0.0.1:1: Permission denied"),
        "{err}"
    );
    assert!(
        err.contains("setcap cap_net_bind_service") && err.contains("--listen"),
        "{err}"
    );
    // The hint names the binary that ran, wherever it is, not a PATH lookup.
    let binary = cmd
        .get_args()
        .find(|a| a.to_string_lossy().ends_with("snirelay"))
        .unwrap();
    assert!(
        err.contains(&format!("+ep {}`", binary.to_string_lossy())),
        "{err}"
    );
    assert_eq!(
        err.matches("os error").count(),
        1,
        "the OS error is said once: {err}"
    );
}

fn running_as_root() -> bool {
    text(&Command::new("id").arg("-u").output().unwrap().stdout).trim() == "0"
}

#[test]
fn probe_refuses_a_timeout_that_cannot_work() {
    for bad in ["0", "3601", "-1"] {
        let arg = format!("--timeout-s={bad}");
        let out = snirelay(&["probe", "a.example.com", "--relay", "127.0.0.1", &arg]);
        assert_eq!(out.status.code(), Some(2), "{arg}");
        assert!(
            text(&out.stderr).contains("--timeout-s"),
            "{}",
            text(&out.stderr)
        );
    }
}

#[test]
fn run_refuses_a_listen_address_given_twice() {
    let config = fixture_dir().join("config/valid/minimal.json");
    let out = snirelay(&[
        "run",
        "--config",
        config.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(text(&out.stderr), "--listen lists 127.0.0.1:0 twice\n");
}

#[test]
fn run_rejects_a_malformed_resolve_pin() {
    let config = fixture_dir().join("config/valid/minimal.json");
    let out = snirelay(&[
        "run",
        "--config",
        config.to_str().unwrap(),
        "--resolve",
        "nothing-here",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("expected NAME=IP[:PORT]"));
}

#[tokio::test]
async fn sigterm_and_sigint_exit_zero() {
    within(async {
        for signal in ["TERM", "INT"] {
            let mut relay =
                RelayProcess::start(serde_json::json!({"allow": ["a.example.com"]})).await;
            relay.signal(signal);
            // lb_grace_s is 0 by default: nothing claims a grace period.
            relay
                .next_message("shutting down: not ready; no grace period (lb_grace_s 0)")
                .await;
            relay.next_message("stopped").await;
            assert_eq!(relay.wait().await.code(), Some(0));
        }
    })
    .await
}

/// Runs `systemd-analyze verify` on deploy files, copied with ExecStart's binary pointed at
/// the one just built (verify insists it exists), and with `dropin`, if any, as a drop-in of
/// snirelay.service. Unknown keys are only warnings, so any output fails.
fn verify_units(files: &[&str], dropin: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    if let Some(dropin) = dropin {
        let dropins = dir.path().join("snirelay.service.d");
        std::fs::create_dir(&dropins).unwrap();
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join(dropin),
            dropins.join("before-235.conf"),
        )
        .unwrap();
    }
    let mut copies = Vec::new();
    for file in files {
        let unit =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
        let copy = dir.path().join(Path::new(file).file_name().unwrap());
        std::fs::write(
            &copy,
            unit.replace("/usr/local/bin/snirelay", crate::common::binary()),
        )
        .unwrap();
        copies.push(copy);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&copies)
        .output()
        .unwrap();
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success() && said.trim().is_empty(),
        "{files:?}: {said}"
    );
}

fn has_lines(file: &str, directives: &[&str]) {
    let unit = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
    for directive in directives {
        assert!(unit.lines().any(|l| l == *directive), "{file}: {directive}");
    }
}

#[test]
fn the_systemd_units_verify_cleanly() {
    if !common::available("systemd-analyze") {
        return;
    }
    has_lines(
        "deploy/snirelay.service",
        &[
            "Type=notify",
            "WatchdogSec=30s",
            "AmbientCapabilities=CAP_NET_BIND_SERVICE",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ReadOnlyPaths=/etc/snirelay",
            "ExecReload=/bin/kill -HUP $MAINPID",
            "Restart=on-failure",
            "DynamicUser=yes",
        ],
    );
    verify_units(&["deploy/snirelay.service"], None);
    // Socket activation: systemd holds the port, the service holds no capability.
    has_lines(
        "deploy/socket-activated/snirelay.socket",
        &[
            "ListenStream=0.0.0.0:443",
            "FileDescriptorName=tls",
            "NoDelay=yes",
            "KeepAlive=yes",
        ],
    );
    has_lines(
        "deploy/socket-activated/snirelay.service",
        &[
            "Type=notify",
            "Requires=snirelay.socket",
            "CapabilityBoundingSet=",
        ],
    );
    let service = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/socket-activated/snirelay.service"),
    )
    .unwrap();
    assert!(!service.contains("AmbientCapabilities"));
    verify_units(
        &[
            "deploy/socket-activated/snirelay.socket",
            "deploy/socket-activated/snirelay.service",
        ],
        None,
    );
    // systemd before 235: the packages add this drop-in (and a user), which takes the port
    // from the socket unit and replaces the filter's group with names 219 knows.
    has_lines(
        "deploy/systemd-before-235.conf",
        &[
            "Requires=snirelay.socket",
            "SystemCallFilter=",
            "ProtectSystem=full",
        ],
    );
    verify_units(
        &[
            "deploy/snirelay.service",
            "deploy/socket-activated/snirelay.socket",
        ],
        Some("deploy/systemd-before-235.conf"),
    );
}

#[tokio::test]
async fn start_up_says_what_runs_and_warns_about_a_resolve_no_rule_allows() {
    within(async {
        let upstream = Upstream::bind("127.0.0.1").await;
        let config = pinned_config(&["a.example.com", "*.b.example.com"], upstream.addr);
        let args = [
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--resolve",
            "x.b.example.com=127.0.0.1",
            "--resolve",
            "elsewhere.example.com=127.0.0.1",
        ];
        let mut relay = RelayProcess::start_with(config, &args).await;
        let start = relay.next_message("snirelay starting").await;
        assert_eq!(start["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(start["rules"], 2);
        assert_eq!(start["admin"], "127.0.0.1:0");
        assert!(
            start["config"].as_str().unwrap().ends_with("rules.json"),
            "{start}"
        );
        // Only the name no rule allows is warned about, and the wildcard pin is not.
        let warning = relay.next_line().await;
        assert_eq!(warning["level"], "WARN", "{warning}");
        assert_eq!(warning["name"], "elsewhere.example.com", "{warning}");
        assert_eq!(relay.next_line().await["message"], "admin listening");
    })
    .await
}

#[test]
fn check_warns_about_monitor_mode_on_the_listeners_that_monitor() {
    let path = fixture_dir().join("config/valid/monitor.json");
    let out = snirelay(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stdout).contains("  mode: monitor\n"),
        "{}",
        text(&out.stdout)
    );
    assert!(text(&out.stdout).contains("10.20.0.5:443 (enforce mode)"));
    assert_eq!(
        text(&out.stderr),
        "warning: monitor mode on 0.0.0.0:443: names no rule allows are forwarded (logged as would_refuse), not refused; set \"mode\": \"enforce\" once the allowlist is complete\n"
    );
}

/// Every rules file in examples/ is valid, draws no warning, and has its row in
/// docs/configuration.md.
#[test]
fn the_example_rules_files_pass_check_and_are_in_the_docs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
    let examples = json_files(&root.join("examples"));
    assert_eq!(examples.len(), 8);
    for file in examples {
        let out = snirelay(&["check", "--config", file.to_str().unwrap()]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            file.display(),
            text(&out.stderr)
        );
        assert_eq!(text(&out.stderr), "", "{}", file.display());
        let name = file.file_name().unwrap().to_str().unwrap();
        assert!(
            readme.contains(&format!("| `examples/{name}` |")),
            "docs/configuration.md lacks {name}"
        );
    }
}

/// An edge relay's rules against its far relay's, from either side: the shipped pair fits;
/// a far listener that gives up on a silent connection before the edge retires it is an
/// error.
#[test]
fn check_far_compares_an_edges_pools_with_the_far_relays_listener() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let edge = root.join("examples/edge.json");
    let far = root.join("examples/far.json");
    let out = snirelay(&[
        "check",
        "--config",
        edge.to_str().unwrap(),
        "--far",
        far.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "");
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("far.json");
    let text_of_far = std::fs::read_to_string(&far).unwrap();
    std::fs::write(
        &short,
        text_of_far.replace("\"proxy_header_wait_s\": 60", "\"proxy_header_wait_s\": 20"),
    )
    .unwrap();
    let out = snirelay(&[
        "check",
        "--config",
        edge.to_str().unwrap(),
        "--far",
        short.to_str().unwrap(),
    ]);
    let too_short = "pool 198.51.100.20:443: max_idle_s (30 s) must be shorter than the far listener 0.0.0.0:443's proxy_header_wait_s (20 s)";
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains(too_short),
        "{}",
        text(&out.stderr)
    );
    // The same, from the far relay's side.
    let from_far = |far: &Path| {
        snirelay(&[
            "check",
            "--config",
            far.to_str().unwrap(),
            "--edge",
            edge.to_str().unwrap(),
        ])
    };
    let out = from_far(&far);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = from_far(&short);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains(too_short),
        "{}",
        text(&out.stderr)
    );
}

/// `suggest` on log files as the relay writes them (one plain, one rotated and gzipped) and
/// on standard input; `--merge` prints a rules file `check` accepts.
#[test]
fn suggest_reads_plain_and_gzipped_logs_and_merges_a_file_check_accepts() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let line = |sni: &str, outcome: &str, reason: &str, rule: &str| {
        format!(
            r#"{{"message":"connection","sni":"{sni}","outcome":"{outcome}","reason":"{reason}","rule":"{rule}"}}"#
        )
    };
    let current = dir.path().join("snirelay.log");
    std::fs::write(
        &current,
        [
            line(
                "storage.googleapis.com",
                "forwarded",
                "closed",
                "storage.googleapis.com",
            ),
            line(
                "a.storage.googleapis.com",
                "forwarded",
                "would_refuse",
                "(unlisted)",
            ),
        ]
        .join("\n"),
    )
    .unwrap();
    let rotated = dir.path().join("snirelay.log.1.gz");
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&rotated).unwrap(),
        flate2::Compression::default(),
    );
    writeln!(
        gz,
        "{}",
        line("b.storage.googleapis.com", "rejected", "not_allowed", "")
    )
    .unwrap();
    gz.finish().unwrap();
    let rules = dir.path().join("rules.json");
    std::fs::write(&rules, r#"{"allow": ["storage.googleapis.com"]}"#).unwrap();

    let out = snirelay(&[
        "suggest",
        "--log",
        current.to_str().unwrap(),
        "--log",
        rotated.to_str().unwrap(),
        "--merge",
        rules.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr)
            .contains("proposed additions to allow:\n  \"*.storage.googleapis.com\"\n"),
        "{}",
        text(&out.stderr)
    );
    let merged = dir.path().join("merged.json");
    std::fs::write(&merged, &out.stdout).unwrap();
    let check = snirelay(&["check", "--config", merged.to_str().unwrap()]);
    assert_eq!(check.status.code(), Some(0), "{}", text(&check.stderr));
    assert!(
        text(&check.stdout).contains("rules: 2 (1 exact, 1 wildcard"),
        "{}",
        text(&check.stdout)
    );

    // Standard input, no merge: the report on standard output.
    let out = common::suggest(&[], &line("www.example.org", "rejected", "not_allowed", ""));
    assert_eq!(
        text(&out.stdout),
        "example.org\n  www.example.org: 1 not_allowed\n\nproposed additions to allow:\n  \"www.example.org\"\n"
    );
}

/// A CONNECT listener's users file is read by `check` and at start-up: a weak entry (or a
/// missing file) is an error naming the file and the line, and the relay does not start.
#[test]
fn check_and_run_refuse_a_users_file_with_a_weak_entry() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    std::fs::write(
        &users,
        "# the team\nmd5user:$apr1$/eXR.9h4$gmfzeqG7TYpaervX.xtAm.\n",
    )
    .unwrap();
    let rules = dir.path().join("rules.json");
    std::fs::write(
        &rules,
        format!(
            r#"{{"listen": [{{"addr": "127.0.0.1:0", "accept": "connect", "users_file": "{}"}}], "allow": ["a.example.com"]}}"#,
            users.display()
        ),
    )
    .unwrap();
    let rules = rules.to_str().unwrap();
    let expected = format!(
        "{}: line 2: md5user's password is an MD5 hash; only bcrypt (htpasswd -B) and argon2 hashes are accepted",
        users.display()
    );
    let out = snirelay(&["check", "--config", rules]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains(&expected),
        "{}",
        text(&out.stderr)
    );
    let out = snirelay(&["run", "--config", rules]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&expected),
        "{}",
        text(&out.stderr)
    );

    std::fs::remove_file(&users).unwrap();
    let out = snirelay(&["check", "--config", rules]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("users: cannot read"),
        "{}",
        text(&out.stderr)
    );
    // Relative paths depend on where the relay starts: refused where they are written.
    std::fs::write(
        dir.path().join("relative.json"),
        r#"{"listen": [{"addr": "127.0.0.1:0", "accept": "connect", "users_file": "users"}], "allow": ["a.example.com"]}"#,
    )
    .unwrap();
    let out = snirelay(&[
        "check",
        "--config",
        dir.path().join("relative.json").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("expected an absolute path"),
        "{}",
        text(&out.stderr)
    );
}
