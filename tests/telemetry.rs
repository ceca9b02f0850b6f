//! What the relay reports while traffic flows: byte counters of connections still open,
//! splice pipes given back after a quiet spell, and rejection lines kept to a rate.

mod common;

use common::hellogen::hello_for;
use common::{RelayProcess, Upstream, http_get, pinned_config, within};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const NAME: &str = "a.example.com";

/// The value of one series in a `/metrics` body.
fn series(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

async fn scrape(admin: &str, name: &str) -> f64 {
    let (_, body) = http_get(admin, "/metrics").await;
    series(&body, name).unwrap_or_else(|| panic!("no {name} in\n{body}"))
}

/// An upstream for NAME, and a relay pinning NAME to it with its admin endpoint on (the
/// config changed by `edit` first): the upstream, the relay and the admin address.
async fn relay_with_admin(
    edit: impl FnOnce(&mut serde_json::Value),
) -> (Upstream, RelayProcess, String) {
    let upstream = Upstream::bind("127.0.0.1").await;
    let mut config = pinned_config(&[NAME], upstream.addr);
    config["admin"] = "127.0.0.1:0".into();
    edit(&mut config);
    let mut relay = RelayProcess::start(config).await;
    let admin = relay.admin_addr().await;
    (upstream, relay, admin)
}

#[tokio::test]
async fn an_open_connection_shows_its_bytes_and_gives_its_pipe_back_when_quiet() {
    within(async {
        let (upstream, _relay, admin) = relay_with_admin(|_| {}).await;
        let hello = hello_for(NAME);
        let mut client = TcpStream::connect(_relay.addr()).await.unwrap();
        client.write_all(&hello).await.unwrap();
        let mut conn = upstream.accept().await;
        // A burst big enough to move the up direction onto splice(2).
        let burst = vec![0x5a; 1 << 20];
        client.write_all(&burst).await.unwrap();
        let mut got = vec![0u8; hello.len() + burst.len()];
        conn.read_exact(&mut got).await.unwrap();
        conn.write_all(b"answer").await.unwrap();
        client.read_exact(&mut [0u8; 6]).await.unwrap();

        let up = (hello.len() + burst.len()) as f64;
        let (_, body) = http_get(&admin, "/metrics").await;
        let open = |name: &str| series(&body, name).unwrap_or_else(|| panic!("{name}\n{body}"));
        assert_eq!(
            open(r#"snirelay_bytes_total{direction="up"}"#),
            up,
            "{body}"
        );
        assert_eq!(open(r#"snirelay_bytes_total{direction="down"}"#), 6.0);
        assert_eq!(
            open(r#"snirelay_rule_bytes_total{rule="a.example.com",direction="up"}"#),
            up
        );
        assert!(open("snirelay_bytes_spliced_total") > 0.0, "{body}");
        assert_eq!(open("snirelay_splice_pipes"), 1.0, "{body}");
        assert_eq!(open("snirelay_active_connections"), 1.0);

        // Quiet: the pipe goes within 10 s, the connection stays.
        let deadline = Instant::now() + Duration::from_secs(10);
        while scrape(&admin, "snirelay_splice_pipes").await > 0.0 {
            assert!(Instant::now() < deadline, "pipe still held after 10 s");
            // The scrape interval; the release itself is what the loop waits for.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        client.write_all(b"still here").await.unwrap();
        let mut again = [0u8; 10];
        conn.read_exact(&mut again).await.unwrap();
        assert_eq!(&again, b"still here");
        assert_eq!(
            scrape(&admin, r#"snirelay_bytes_total{direction="up"}"#).await,
            up + 10.0
        );
        // Bytes are counted once: ending the connection adds nothing.
        drop((client, conn));
        let deadline = Instant::now() + Duration::from_secs(10);
        while scrape(&admin, "snirelay_active_connections").await > 0.0 {
            assert!(Instant::now() < deadline, "connection still open");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            scrape(&admin, r#"snirelay_bytes_total{direction="up"}"#).await,
            up + 10.0
        );
    })
    .await
}

#[tokio::test]
async fn a_flood_of_refused_clients_is_logged_at_a_bounded_rate_and_counted_in_full() {
    within(async {
        let (_upstream, mut relay, admin) =
            relay_with_admin(|c| c["clients"] = serde_json::json!(["192.0.2.0/24"])).await;
        let flood: u32 = 300;
        for _ in 0..flood {
            let mut refused = TcpStream::connect(relay.addr()).await.unwrap();
            let _ = refused.read(&mut [0u8; 1]).await;
        }
        // Every connection is in the metrics, whether or not its line was written.
        let denied = r#"snirelay_connections_total{outcome="rejected",reason="client_denied"}"#;
        assert_eq!(scrape(&admin, denied).await, f64::from(flood));
        let mut logged = 0;
        let mut suppressed = 0;
        while logged + suppressed < u64::from(flood) {
            let line = relay.next_line().await;
            match line["message"].as_str() {
                Some("connection") => {
                    assert_eq!(line["reason"], "client_denied");
                    logged += 1;
                }
                Some(common::SUPPRESSED) => {
                    assert_eq!(line["reason"], "client_denied");
                    suppressed += line["suppressed"].as_u64().unwrap();
                }
                _ => {}
            }
        }
        assert_eq!(logged + suppressed, u64::from(flood));
        assert!(suppressed > 0, "{logged} lines for {flood} refusals");
        let counted = r#"snirelay_log_lines_suppressed_total{reason="client_denied"}"#;
        assert_eq!(scrape(&admin, counted).await, suppressed as f64);
    })
    .await
}

#[tokio::test]
async fn a_forwarded_connection_reports_both_legs_in_its_line_and_the_metrics() {
    within(async {
        let (upstream, mut relay, admin) = relay_with_admin(|_| {}).await;
        let mut client = TcpStream::connect(relay.addr()).await.unwrap();
        client.write_all(&hello_for(NAME)).await.unwrap();
        let mut conn = upstream.accept().await;
        conn.write_all(&[7u8; 64 * 1024]).await.unwrap();
        client.read_exact(&mut vec![0u8; 64 * 1024]).await.unwrap();
        drop((client, conn));
        let line = relay.next_connection().await;
        for leg in ["client", "upstream"] {
            let rtt = line[format!("{leg}_rtt_ms")].as_f64().unwrap();
            let min = line[format!("{leg}_min_rtt_ms")].as_f64().unwrap();
            assert!(rtt > 0.0 && min > 0.0 && min <= rtt, "{leg}: {line}");
            // Loopback loses nothing.
            assert_eq!(line[format!("{leg}_retrans")], 0, "{line}");
            assert!(
                line[format!("{leg}_delivery_mbps")].as_f64().unwrap() > 0.0,
                "{line}"
            );
        }
        let listener = relay.addr();
        let rtts = format!("snirelay_client_rtt_seconds_count{{listener=\"{listener}\"}}");
        assert_eq!(scrape(&admin, &rtts).await, 1.0);
        for side in ["client", "upstream"] {
            let retransmitted = format!("snirelay_retransmitted_bytes_total{{side=\"{side}\"}}");
            assert_eq!(scrape(&admin, &retransmitted).await, 0.0);
        }
    })
    .await
}

#[tokio::test]
async fn the_admin_endpoint_lists_open_connections_with_their_bytes_and_legs() {
    within(async {
        let (upstream, relay, admin) = relay_with_admin(|_| {}).await;
        let hello = hello_for(NAME);
        let mut clients = Vec::new();
        for _ in 0..2 {
            let mut client = TcpStream::connect(relay.addr()).await.unwrap();
            client.write_all(&hello).await.unwrap();
            client.write_all(b"request").await.unwrap();
            let mut conn = upstream.accept().await;
            conn.read_exact(&mut vec![0u8; hello.len() + 7])
                .await
                .unwrap();
            conn.write_all(b"answer!!").await.unwrap();
            client.read_exact(&mut [0u8; 8]).await.unwrap();
            clients.push((client, conn));
        }
        let (status, body) = http_get(&admin, "/connections?limit=1").await;
        assert_eq!(status, 200, "{body}");
        let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(listed["open"], 2, "{body}");
        let connections = listed["connections"].as_array().unwrap();
        assert_eq!(connections.len(), 1, "the limit holds: {body}");
        let first = &connections[0];
        assert_eq!(first["sni"], NAME);
        assert_eq!(first["rule"], NAME);
        assert_eq!(first["listener"], relay.addr().to_string());
        assert_eq!(first["bytes_up"], hello.len() + 7, "{body}");
        assert_eq!(first["bytes_down"], 8, "{body}");
        assert!(first["age_s"].as_f64().unwrap() >= 0.0);
        for leg in ["client", "upstream"] {
            assert!(
                first[format!("{leg}_rtt_ms")].as_f64().unwrap() > 0.0,
                "{body}"
            );
            assert!(first[format!("{leg}_cwnd")].as_u64().unwrap() > 0, "{body}");
        }
        let (status, said) = http_get(&admin, "/connections?limit=zero").await;
        assert_eq!(status, 400);
        assert!(said.contains("limit must be"), "{said}");
        drop(clients);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, body) = http_get(&admin, "/connections").await;
            let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
            if listed["open"] == 0 {
                assert_eq!(listed["connections"], serde_json::json!([]));
                break;
            }
            assert!(Instant::now() < deadline, "still listed: {body}");
            // The poll interval of an endpoint that has no push; the end is what it waits for.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// Every metric the shipped alerting rules and dashboard use is one a live relay exports,
/// so a renamed metric fails here; and the rules pass promtool's check and unit tests.
#[tokio::test]
async fn the_alerts_and_the_dashboard_use_only_metrics_the_relay_exports() {
    within(async {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        if let Some(promtool) = common::tool("promtool") {
            let rules = root.join("deploy/prometheus/alerts.yml");
            common::succeeds(
                std::process::Command::new(&promtool)
                    .args(["check", "rules"])
                    .arg(&rules),
            );
            let tests = root.join("deploy/prometheus/alerts_test.yml");
            common::succeeds(
                std::process::Command::new(&promtool)
                    .args(["test", "rules"])
                    .arg(&tests),
            );
        }
        let (upstream, mut relay, admin) = relay_with_admin(|_| {}).await;
        // One forwarded connection, so the families that have series only after one do.
        let mut client = TcpStream::connect(relay.addr()).await.unwrap();
        client.write_all(&hello_for(NAME)).await.unwrap();
        let conn = upstream.accept().await;
        drop((client, conn));
        relay.next_connection().await;
        let (_, exported) = http_get(&admin, "/metrics").await;
        let mut used = std::collections::BTreeSet::new();
        for file in [
            "deploy/prometheus/alerts.yml",
            "deploy/grafana/snirelay.json",
        ] {
            let text = std::fs::read_to_string(root.join(file)).unwrap();
            let mut rest = text.as_str();
            while let Some(at) = rest.find("snirelay_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                used.insert(name);
            }
        }
        assert!(used.len() >= 15, "{used:?}");
        for name in &used {
            assert!(
                exported.lines().any(|l| l
                    .strip_prefix(name.as_str())
                    .is_some_and(|r| r.starts_with(['{', ' ']))),
                "{name} is used by the alerts or the dashboard but not exported:\n{exported}"
            );
        }
        let ready = series(&exported, "snirelay_ready");
        assert_eq!(ready, Some(1.0), "{exported}");
        assert!(series(&exported, "snirelay_open_fds").unwrap() > 0.0);
        assert!(
            series(&exported, "snirelay_max_fds").unwrap()
                >= series(&exported, "snirelay_open_fds").unwrap()
        );
    })
    .await
}
