//! Client groups through the real binary: the same name allowed for one network and refused
//! for another, a group in monitor mode beside one that enforces, clients in no group
//! refused, and a reload that changes a group's list under a live connection. Clients
//! come from their own loopback addresses (127.0.0.2, .3, ...), one per group.

mod common;

use common::hellogen::hello_for;
use common::{RelayProcess, Upstream, http_get, within};
use serde_json::{Value, json};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const TTS: &str = "texttospeech.googleapis.com";
const OAUTH: &str = "oauth2.googleapis.com";

fn field<'a>(log: &'a Value, key: &str) -> &'a str {
    log[key].as_str().unwrap_or_default()
}

/// A connection to `relay` from the loopback address `from`.
async fn connect_from(from: &str, relay: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(relay).await.unwrap()
}

/// Sends a hello for `name` from `from`, closes its side, reads the answer to the end and
/// returns the connection's log line.
async fn hello_from(relay: &mut RelayProcess, from: &str, name: &str) -> Value {
    let mut client = connect_from(from, relay.addr()).await;
    client.write_all(&hello_for(name)).await.unwrap();
    client.shutdown().await.unwrap();
    let _ = client.read_to_end(&mut Vec::new()).await;
    drop(client);
    relay.next_connection().await
}

fn groups_config(upstream: SocketAddr, tts_for_a: bool) -> Value {
    let pinned = |name: &str| json!({"name": name, "upstream": upstream.to_string()});
    let a_allows = if tts_for_a { vec![pinned(TTS)] } else { vec![] };
    json!({
        "listen": ["127.0.0.1:0"],
        "admin": "127.0.0.1:0",
        "allow": [pinned(OAUTH)],
        "groups": [
            {"name": "a", "clients": ["127.0.0.2/32"], "allow": a_allows},
            {"name": "b", "clients": ["127.0.0.3/32"], "allow": [], "mode": "monitor"},
        ],
        "timeouts": {"hello_ms": 5000, "connect_ms": 5000, "drain_s": 5},
    })
}

#[tokio::test]
async fn each_group_decides_with_its_own_names_and_mode_and_a_reload_changes_them() {
    within(async {
        let upstream = Upstream::bind("127.0.0.1").await;
        // Group b monitors: a name no rule of its allows goes to the name itself, here the
        // same upstream.
        let pin = format!("{TTS}={}", upstream.addr);
        let mut relay = RelayProcess::start_with(
            groups_config(upstream.addr, true),
            &["--resolve", &pin],
        )
        .await;
        let admin = relay.admin_addr().await;
        // Each group's series exist from the start, at 0, as the other outcome series do.
        let (_, metrics) = http_get(&admin, "/metrics").await;
        let zero = r#"snirelay_group_connections_total{group="b",outcome="rejected",reason="client_denied"} 0"#;
        assert!(metrics.lines().any(|l| l == zero), "{metrics}");

        // The shared name, for both groups; TTS for a only, while b's monitor mode lets it
        // through as would_refuse; .4 is in no group.
        for (from, name, group, reason) in [
            ("127.0.0.2", OAUTH, "a", "closed"),
            ("127.0.0.3", OAUTH, "b", "closed"),
            ("127.0.0.2", TTS, "a", "closed"),
            ("127.0.0.3", TTS, "b", "would_refuse"),
        ] {
            let mut client = connect_from(from, relay.addr()).await;
            client.write_all(&hello_for(name)).await.unwrap();
            client.shutdown().await.unwrap();
            let got = upstream.receive_all().await;
            assert_eq!(got, hello_for(name), "{from} {name}");
            let _ = client.read_to_end(&mut Vec::new()).await;
            drop(client);
            let log = relay.next_connection().await;
            assert_eq!(
                (field(&log, "group"), field(&log, "outcome"), field(&log, "reason")),
                (group, "forwarded", reason),
                "{log}"
            );
        }
        let log = hello_from(&mut relay, "127.0.0.4", OAUTH).await;
        assert_eq!(field(&log, "reason"), "client_denied", "{log}");
        assert!(upstream.untouched());

        // A live connection of group a's to TTS, then a reload that takes TTS from a.
        let mut live = connect_from("127.0.0.2", relay.addr()).await;
        live.write_all(&hello_for(TTS)).await.unwrap();
        let mut at_upstream = upstream.accept().await;
        let mut hello = vec![0; hello_for(TTS).len()];
        at_upstream.read_exact(&mut hello).await.unwrap();
        std::fs::write(
            relay.config_path(),
            serde_json::to_string(&groups_config(upstream.addr, false)).unwrap(),
        )
        .unwrap();
        let reloaded = relay.next_message("config reloaded").await;
        assert!(reloaded.to_string().contains("groups"), "{reloaded}");
        let log = hello_from(&mut relay, "127.0.0.2", TTS).await;
        assert_eq!(
            (field(&log, "group"), field(&log, "reason")),
            ("a", "not_allowed"),
            "{log}"
        );
        // The live one carries on under the rules it started with.
        live.write_all(b"ping").await.unwrap();
        let mut ping = [0; 4];
        at_upstream.read_exact(&mut ping).await.unwrap();
        assert_eq!(&ping, b"ping");
        drop((live, at_upstream));
        let log = relay.next_connection().await;
        assert_eq!((field(&log, "group"), field(&log, "outcome")), ("a", "forwarded"), "{log}");

        let (_, metrics) = http_get(&admin, "/metrics").await;
        for series in [
            r#"snirelay_group_connections_total{group="a",outcome="forwarded",reason="closed"} 3"#,
            r#"snirelay_group_connections_total{group="b",outcome="forwarded",reason="would_refuse"} 1"#,
            r#"snirelay_group_connections_total{group="a",outcome="rejected",reason="not_allowed"} 1"#,
        ] {
            assert!(metrics.lines().any(|l| l == series), "{series}\n{metrics}");
        }
    })
    .await
}
