//! Real command-line TLS clients through the relay: curl and openssl s_client, verifying the
//! upstream's certificate against the test CA. `.ci/run` installs both; a developer machine
//! without them skips these tests (CI never does).

mod common;

use common::{Pki, RelayProcess, Upstream, pinned_config, pki, within};
use std::path::Path;
use std::process::{Command, Output};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NAME: &str = "translation.googleapis.com";

/// A TLS upstream that answers each HTTP request with a fixed body, and otherwise reads
/// until the client closes.
fn serve_https(upstream: Upstream, pki: &Pki) {
    let acceptor = pki.acceptor();
    tokio::spawn(async move {
        loop {
            let tcp = upstream.accept().await;
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        // As real servers do: answer close_notify with close_notify.
                        Ok(0) => {
                            let _ = tls.shutdown().await;
                            return;
                        }
                        Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let body = "translated by the upstream";
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(reply.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
}

async fn run(cmd: &mut Command) -> Output {
    let mut cmd = std::mem::replace(cmd, Command::new("true"));
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

/// A regression: a certificate made with `openssl req -x509` (CA:TRUE) was reported as
/// `Other(OtherError(CaUsedAsEndEntity))`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_explains_a_ca_certificate_used_by_a_server() {
    if !common::available("openssl") {
        return;
    }
    within(async {
        let dir = tempfile::tempdir().unwrap();
        let pki = common::openssl_self_signed(dir.path(), NAME);
        let upstream = Upstream::bind("127.0.0.1").await;
        let relay = RelayProcess::start(pinned_config(&[NAME], upstream.addr)).await;
        serve_https(upstream, &pki);
        let ca = write_ca(dir.path(), &pki);
        let at = relay.addr().to_string();
        let out = tokio::task::spawn_blocking(move || probe(&[NAME, "--relay", &at, "--cacert", &ca]))
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("certificate rejected: the server's certificate is a CA certificate (CA:TRUE); use a leaf certificate signed by a CA [Other(OtherError(CaUsedAsEndEntity))]"),
            "{err}"
        );
    })
    .await
}

fn write_ca(dir: &Path, pki: &Pki) -> String {
    let path = dir.join("ca.pem");
    std::fs::write(&path, &pki.ca_pem).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_gets_the_upstream_answer_with_the_real_name_and_certificate() {
    if !common::available("curl") {
        return;
    }
    within(async {
        let pki = pki(&[NAME, "storage.googleapis.com"]);
        let upstream = Upstream::bind("127.0.0.1").await;
        let mut relay = RelayProcess::start(pinned_config(&[NAME], upstream.addr)).await;
        serve_https(upstream, &pki);
        let dir = tempfile::tempdir().unwrap();
        let ca = write_ca(dir.path(), &pki);
        let port = relay.addr().port();
        let curl = |name: &str| {
            let mut cmd = Command::new("curl");
            cmd.args([
                "--silent",
                "--show-error",
                "--max-time",
                "20",
                "--cacert",
                &ca,
            ])
            .arg("--resolve")
            .arg(format!("{name}:{port}:127.0.0.1"))
            .arg(format!("https://{name}:{port}/language/translate/v2"));
            cmd
        };

        let out = run(&mut curl(NAME)).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, b"translated by the upstream");
        let log = relay.next_connection().await;
        assert_eq!(log["outcome"], "forwarded", "{log}");
        assert_eq!(log["sni"], NAME);
        assert!(
            log["alpn"]
                .as_str()
                .unwrap_or_default()
                .contains("http/1.1"),
            "{log}"
        );

        let out = run(&mut curl("storage.googleapis.com")).await;
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(
            err.contains("unrecognized name"),
            "curl should name the alert: {err}"
        );
        assert_eq!(relay.next_connection().await["reason"], "not_allowed");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_client_verifies_the_upstream_certificate() {
    if !common::available("openssl") {
        return;
    }
    within(async {
        let pki = pki(&[NAME]);
        let upstream = Upstream::bind("127.0.0.1").await;
        let mut relay = RelayProcess::start(pinned_config(&[NAME], upstream.addr)).await;
        serve_https(upstream, &pki);
        let dir = tempfile::tempdir().unwrap();
        let ca = write_ca(dir.path(), &pki);
        let mut cmd = Command::new("openssl");
        cmd.args(["s_client", "-brief", "-verify_return_error", "-CAfile", &ca])
            .args(["-connect", &relay.addr().to_string(), "-servername", NAME])
            .stdin(std::process::Stdio::null());
        let out = run(&mut cmd).await;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        assert!(text.contains("Verification: OK"), "{text}");
        assert!(text.contains(&format!("CN = {NAME}")), "{text}");
        let log = relay.next_connection().await;
        assert_eq!(log["outcome"], "forwarded", "{log}");
        assert_eq!(log["sni"], NAME);
    })
    .await
}

/// What a successful probe of NAME through `at` printed, checked for its first line.
fn probed_ok(out: &Output, at: &str) -> String {
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.starts_with(&format!("{NAME} via {at}: ok\n")),
        "{said}"
    );
    said
}

fn probe(args: &[&str]) -> Output {
    Command::new(crate::common::binary())
        .arg("probe")
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_reports_who_answered_or_exactly_why_not() {
    within(async {
        // The upstream's certificate covers NAME only; "mismatch.example.com" is allowed by
        // the relay but answered with that same certificate.
        let pki = pki(&[NAME]);
        let upstream = Upstream::bind("127.0.0.1").await;
        let mut relay = RelayProcess::start(pinned_config(
            &[NAME, "mismatch.example.com"],
            upstream.addr,
        ))
        .await;
        serve_https(upstream, &pki);
        let dir = tempfile::tempdir().unwrap();
        let ca = write_ca(dir.path(), &pki);
        let at = relay.addr().to_string();
        let run_probe = |args: Vec<String>| {
            tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                probe(&args)
            })
        };
        let args = |name: &str| {
            vec![
                name.to_owned(),
                "--relay".into(),
                at.clone(),
                "--cacert".into(),
                ca.clone(),
            ]
        };

        let out = run_probe(args(NAME)).await.unwrap();
        let said = probed_ok(&out, &at);
        assert!(said.contains(&format!("subject: CN={NAME}")), "{said}");
        assert!(said.contains("issuer: CN=snirelay test CA"), "{said}");
        assert!(said.contains("TLS 1.3 handshake in"), "{said}");
        // A regression: the probe left the server's session tickets unread, so its close
        // was a reset and a healthy probe read as `client_reset` in the relay's log.
        let line = relay.next_connection().await;
        assert_eq!(
            (&line["outcome"], &line["reason"]),
            (&"forwarded".into(), &"closed".into()),
            "{line}"
        );

        let out = run_probe(args("storage.googleapis.com")).await.unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("TLS alert unrecognized_name"), "{err}");

        let out = run_probe(args("mismatch.example.com")).await.unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("not valid for mismatch.example.com (name mismatch"),
            "{err}"
        );

        let (_held, closed) = common::refusing("127.0.0.1");
        let out = probe(&[NAME, "--relay", &closed.to_string(), "--cacert", &ca]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("TCP connection to {closed} failed")) && err.contains("refused"),
            "{err}"
        );
    })
    .await
}

/// `--proxy`: the probe asks a CONNECT listener for the tunnel, as a client with
/// `https_proxy` does, and says what the listener answered when it refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_through_a_connect_listener_reports_the_tunnel_or_the_refusal() {
    within(async {
        let pki = pki(&[NAME]);
        let upstream = Upstream::bind("127.0.0.1").await;
        let mut config = pinned_config(&[NAME], upstream.addr);
        config["listen"] = serde_json::json!([{"addr": "127.0.0.1:0", "accept": "connect"}]);
        let mut relay = RelayProcess::start_with(config, &[]).await;
        serve_https(upstream, &pki);
        let dir = tempfile::tempdir().unwrap();
        let ca = write_ca(dir.path(), &pki);
        let at = relay.addr().to_string();
        let run = |name: &'static str| {
            let (at, ca) = (at.clone(), ca.clone());
            tokio::task::spawn_blocking(move || probe(&[name, "--proxy", &at, "--cacert", &ca]))
        };
        let out = run(NAME).await.unwrap();
        let said = probed_ok(&out, &at);
        assert!(said.contains("  CONNECT answered 200 in "), "{said}");
        assert!(said.contains(&format!("subject: CN={NAME}")), "{said}");
        let line = relay.next_connection().await;
        assert_eq!(line["connect"], format!("{NAME}:443"), "{line}");
        assert_eq!(line["reason"], "closed", "{line}");

        let out = run("storage.googleapis.com").await.unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(
                "the proxy answered 403 Forbidden: snirelay: not_allowed: name not on the allowlist"
            ),
            "{err}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_all_checks_every_exact_name_in_the_rules() {
    within(async {
        let pki = pki(&[NAME]);
        let upstream = Upstream::bind("127.0.0.1").await;
        let relay = RelayProcess::start(pinned_config(
            &[NAME, "mismatch.example.com", "*.wild.example.com"],
            upstream.addr,
        ))
        .await;
        serve_https(upstream, &pki);
        let dir = tempfile::tempdir().unwrap();
        let ca = write_ca(dir.path(), &pki);
        let (at, rules) = (relay.addr().to_string(), relay.config_path());
        let args = |rules: std::path::PathBuf| {
            let (at, ca) = (at.clone(), ca.clone());
            tokio::task::spawn_blocking(move || {
                let rules = rules.to_str().unwrap().to_owned();
                probe(&["--all", "--relay", &at, "--cacert", &ca, "--config", &rules])
            })
        };
        let out = args(rules.clone()).await.unwrap();
        assert_eq!(out.status.code(), Some(1), "one name fails");
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines: Vec<&str> = said.lines().collect();
        assert_eq!(lines.len(), 3, "{said}");
        assert!(lines[0].starts_with(&format!("{NAME}: ok (TLS 1.3, ")), "{said}");
        assert!(lines[0].ends_with(&format!("subject CN={NAME})")), "{said}");
        assert!(
            lines[1].starts_with("mismatch.example.com: certificate rejected: it is not valid for mismatch.example.com"),
            "{said}"
        );
        assert_eq!(lines[2], "*.wild.example.com: skipped: a wildcard; probe a name under it");

        let only_good = dir.path().join("rules.json");
        std::fs::write(&only_good, format!(r#"{{"allow": ["{NAME}"]}}"#)).unwrap();
        let out = args(only_good).await.unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    })
    .await
}
