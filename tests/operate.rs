//! Operating the relay: who may connect, connection limits, running out of descriptors.

mod common;

use common::hellogen::hello_for;
use common::{RelayProcess, Upstream, http_get, pinned_config, within};
use serde_json::Value;
use snirelay::config::Config;
use snirelay::policy::client_allowed;
use std::net::SocketAddr;
use std::path::Path;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const NAME: &str = "a.example.com";

async fn relay_with(upstream: &Upstream, tweak: impl FnOnce(&mut Value)) -> RelayProcess {
    let mut config = pinned_config(&[NAME], upstream.addr);
    tweak(&mut config);
    RelayProcess::start(config).await
}

/// Connects from a chosen loopback source address.
async fn connect_from(source: &str, relay: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(relay).await.unwrap()
}

/// A connection that completed its hello and reached the upstream, which has read it.
async fn forwarded(relay: SocketAddr, upstream: &Upstream, source: &str) -> (TcpStream, TcpStream) {
    let hello = hello_for(NAME);
    let mut client = connect_from(source, relay).await;
    client.write_all(&hello).await.unwrap();
    let mut conn = upstream.accept().await;
    let mut replayed = vec![0u8; hello.len()];
    conn.read_exact(&mut replayed).await.unwrap();
    assert_eq!(replayed, hello);
    (client, conn)
}

async fn expect_closed(mut client: TcpStream) {
    let mut rest = Vec::new();
    let _ = client.read_to_end(&mut rest).await;
    assert!(rest.is_empty());
}

#[test]
fn without_clients_only_private_and_loopback_networks_may_connect() {
    let config = Config::parse(r#"{"allow": ["a.example.com"]}"#, Path::new("t.json")).unwrap();
    let allowed = |ip: &str| client_allowed(ip.parse().unwrap(), &config.clients);
    for ip in [
        "10.1.2.3",
        "172.20.0.1",
        "192.168.1.1",
        "100.64.0.1",
        "127.0.0.1",
        "::1",
        "fd00::1",
        "::ffff:10.0.0.1",
    ] {
        assert!(allowed(ip), "{ip}");
    }
    for ip in [
        "8.8.8.8",
        "35.1.2.3",
        "2a00:1450::1",
        "::ffff:8.8.8.8",
        "169.254.1.1",
    ] {
        assert!(!allowed(ip), "{ip}");
    }
}

#[tokio::test]
async fn a_client_outside_clients_is_closed_before_anything_is_read() {
    within(async {
        let upstream = Upstream::bind("127.0.0.1").await;
        let mut relay = relay_with(&upstream, |c| {
            c["clients"] = serde_json::json!(["127.0.0.2/32", "fd00::/8"])
        })
        .await;
        let mut denied = connect_from("127.0.0.1", relay.addr()).await;
        let _ = denied.write_all(&hello_for(NAME)).await;
        expect_closed(denied).await;
        let log = relay.next_connection().await;
        assert_eq!(
            (log["outcome"].as_str(), log["reason"].as_str()),
            (Some("rejected"), Some("client_denied"))
        );
        assert!(log.get("sni").is_none(), "nothing was read: {log}");
        assert!(upstream.untouched());

        let (_client, _conn) = forwarded(relay.addr(), &upstream, "127.0.0.2").await;
    })
    .await
}

#[tokio::test]
async fn per_client_and_global_limits_refuse_at_once_and_free_on_close() {
    within(async {
        let upstream = Upstream::bind("127.0.0.1").await;
        let mut relay = relay_with(&upstream, |c| {
            c["max_connections"] = 3.into();
            c["max_connections_per_client"] = 2.into();
        })
        .await;
        let first = forwarded(relay.addr(), &upstream, "127.0.0.1").await;
        let _second = forwarded(relay.addr(), &upstream, "127.0.0.1").await;
        expect_closed(connect_from("127.0.0.1", relay.addr()).await).await;
        assert_eq!(
            relay.next_connection().await["reason"],
            "too_many_from_client"
        );

        let _third = forwarded(relay.addr(), &upstream, "127.0.0.2").await;
        expect_closed(connect_from("127.0.0.3", relay.addr()).await).await;
        assert_eq!(
            relay.next_connection().await["reason"],
            "too_many_connections"
        );

        let (client, mut conn) = first;
        drop(client);
        conn.read_to_end(&mut Vec::new()).await.unwrap();
        drop(conn);
        assert_eq!(relay.next_connection().await["reason"], "closed");
        let _again = forwarded(relay.addr(), &upstream, "127.0.0.1").await;
    })
    .await
}

#[tokio::test]
async fn connections_still_in_the_hello_phase_are_capped() {
    within(async {
        let upstream = Upstream::bind("127.0.0.1").await;
        let mut relay = relay_with(&upstream, |c| c["max_pending_hellos"] = 2.into()).await;
        let mut slow = connect_from("127.0.0.1", relay.addr()).await;
        let _slower = connect_from("127.0.0.1", relay.addr()).await;
        expect_closed(connect_from("127.0.0.1", relay.addr()).await).await;
        assert_eq!(
            relay.next_connection().await["reason"],
            "too_many_pending_hellos"
        );
        // Completing a hello frees its place.
        slow.write_all(&hello_for(NAME)).await.unwrap();
        let _conn = upstream.accept().await;
        let _next = forwarded(relay.addr(), &upstream, "127.0.0.1").await;
    })
    .await
}

#[tokio::test]
async fn running_out_of_descriptors_pauses_accepting_and_keeps_serving() {
    within(async {
        let upstream = Upstream::bind("127.0.0.1").await;
        let mut launcher = std::process::Command::new("prlimit");
        launcher
            .args(["--nofile=64:64", "--"])
            .arg(crate::common::binary());
        let config = pinned_config(&[NAME], upstream.addr);
        let mut relay = RelayProcess::spawn(launcher, config, &["--listen", "127.0.0.1:0"]).await;
        let (mut client, mut conn) = forwarded(relay.addr(), &upstream, "127.0.0.1").await;

        // Idle connections until accept() fails with EMFILE (the kernel still completes
        // the handshakes; they wait in the backlog).
        let mut idle = Vec::new();
        for _ in 0..80 {
            idle.push(connect_from("127.0.0.1", relay.addr()).await);
        }
        let failing = relay
            .next_message("accept failing; pausing between attempts")
            .await;
        assert!(
            failing["error"]
                .as_str()
                .unwrap()
                .contains("Too many open files"),
            "{failing}"
        );

        // The connection already forwarded keeps working.
        client.write_all(b"still here").await.unwrap();
        let mut buf = [0u8; 10];
        conn.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"still here");

        drop(idle);
        relay.next_message("accept recovered").await;
        let (_c, _u) = forwarded(relay.addr(), &upstream, "127.0.0.1").await;
    })
    .await
}

/// A plain HTTP/1.1 GET, as a scraper sends it: (status, body).
fn promtool_check(body: &str) {
    if !common::available("promtool") {
        return;
    }
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}\n{body}"
    );
}

#[tokio::test]
async fn metrics_health_and_readiness_are_served_and_valid() {
    within(async {
        let upstream = Upstream::bind("127.0.0.1").await;
        let mut relay = relay_with(&upstream, |c| c["admin"] = "127.0.0.1:0".into()).await;
        let admin = relay.admin_addr().await;

        // Before any event, every series with a known label set is there, at 0.
        let (_, fresh) = http_get(&admin, "/metrics").await;
        for line in [
            r#"snirelay_connections_total{outcome="rejected",reason="dns_failed"} 0"#,
            r#"snirelay_connections_total{outcome="forwarded",reason="closed"} 0"#,
            r#"snirelay_connections_total{outcome="health_check",reason="proxy_local"} 0"#,
            r#"snirelay_reloads_total{result="failed"} 0"#,
            r#"snirelay_resolver_cache_total{result="miss"} 0"#,
            r#"snirelay_bytes_total{direction="down"} 0"#,
        ] {
            assert!(fresh.lines().any(|l| l == line), "missing {line:?} in\n{fresh}");
        }
        promtool_check(&fresh);

        let (client, mut conn) = forwarded(relay.addr(), &upstream, "127.0.0.1").await;
        drop(client);
        conn.read_to_end(&mut Vec::new()).await.unwrap();
        drop(conn);
        relay.next_connection().await;
        let mut refused =
            common::send_and_close(relay.addr(), &hello_for("other.example.com")).await;
        let mut alert = Vec::new();
        refused.read_to_end(&mut alert).await.unwrap();
        assert_eq!(
            alert,
            [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70],
            "fatal unrecognized_name"
        );
        assert_eq!(relay.next_connection().await["reason"], "not_allowed");

        let (status, body) = http_get(&admin, "/metrics").await;
        assert_eq!(status, 200);
        for line in [
            r#"snirelay_connections_total{outcome="forwarded",reason="closed"} 1"#,
            r#"snirelay_connections_total{outcome="rejected",reason="not_allowed"} 1"#,
            r#"snirelay_rule_connections_total{rule="a.example.com"} 1"#,
            "snirelay_hello_size_bytes_count 2",
            "snirelay_connect_duration_seconds_count 1",
            "snirelay_active_connections 0",
        ] {
            assert!(
                body.lines().any(|l| l == line),
                "missing {line:?} in\n{body}"
            );
        }
        let up = hello_for(NAME).len();
        assert!(
            body.contains(&format!(r#"snirelay_bytes_total{{direction="up"}} {up}"#)),
            "{body}"
        );
        promtool_check(&body);
        let mut conn = TcpStream::connect(&admin).await.unwrap();
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\nAccept: application/openmetrics-text; version=1.0.0\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut openmetrics = String::new();
        conn.read_to_string(&mut openmetrics).await.unwrap();
        assert!(openmetrics.contains("content-type: application/openmetrics-text"), "{openmetrics}");
        assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");

        assert_eq!(http_get(&admin, "/healthz").await, (200, "ok\n".to_owned()));
        assert_eq!(
            http_get(&admin, "/readyz").await,
            (200, "ready\n".to_owned())
        );
        assert_eq!(http_get(&admin, "/nothing").await.0, 404);

        // Draining: still alive, no longer ready.
        let (_client, _conn) = forwarded(relay.addr(), &upstream, "127.0.0.1").await;
        relay.signal("TERM");
        relay.next_message("draining").await;
        assert_eq!(http_get(&admin, "/readyz").await.0, 503);
        assert_eq!(http_get(&admin, "/healthz").await.0, 200);
    })
    .await
}

#[tokio::test]
async fn reloads_are_counted_by_result() {
    within(async {
        let upstream = Upstream::bind("127.0.0.1").await;
        let mut relay = relay_with(&upstream, |c| c["admin"] = "127.0.0.1:0".into()).await;
        let admin = relay.admin_addr().await;
        std::fs::write(relay.config_path(), "{ not json").unwrap();
        relay.signal("HUP");
        relay
            .next_message("config reload failed; keeping the previous rules")
            .await;
        let (_, body) = http_get(&admin, "/metrics").await;
        // The file event and the SIGHUP each read the invalid file: one or two failures.
        let failed: u64 = body
            .lines()
            .find_map(|l| l.strip_prefix(r#"snirelay_reloads_total{result="failed"} "#))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no failed reloads series in\n{body}"));
        assert!(failed >= 1, "{body}");
    })
    .await
}

#[tokio::test]
async fn a_second_connection_to_a_name_is_a_resolver_cache_hit() {
    within(async {
        let upstream = Upstream::bind("127.0.0.1").await;
        let dns = common::dns_server(vec![(
            "cached.relay.test",
            vec!["127.0.0.1".parse().unwrap()],
        )])
        .await;
        let config = serde_json::json!({
            "allow": ["*.relay.test"],
            "upstream_port": upstream.addr.port(),
            "resolver": {"nameservers": [dns.to_string()]},
            "private_destinations": ["127.0.0.0/8"],
            "admin": "127.0.0.1:0",
        });
        let mut relay = RelayProcess::start(config).await;
        let admin = relay.admin_addr().await;
        for _ in 0..2 {
            let mut client =
                common::send_and_close(relay.addr(), &hello_for("cached.relay.test")).await;
            upstream.receive_all().await;
            client.read_to_end(&mut Vec::new()).await.unwrap();
            assert_eq!(relay.next_connection().await["reason"], "closed");
        }
        let (_, body) = http_get(&admin, "/metrics").await;
        assert!(
            body.contains("snirelay_resolver_cache_total{result=\"miss\"} 1\n"),
            "{body}"
        );
        assert!(
            body.contains("snirelay_resolver_cache_total{result=\"hit\"} 1\n"),
            "{body}"
        );
    })
    .await
}
