//! Live rule changes: whole validated rule sets swap in for new connections, invalid files
//! change nothing, and connections already forwarding are never touched.

mod common;

use common::hellogen::hello_for;
use common::{RelayProcess, Upstream, send_and_close, within};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::Path;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const STREAM: &str = "stream.example.com";

/// Replaces the file the way editors and config managers do: write aside, rename over.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Version `k` allows the stream name and `n{k}.example.com`.
fn version(k: usize, upstream: SocketAddr, streams: SocketAddr) -> Value {
    json!({
        "allow": [
            {"name": STREAM, "upstream": streams.to_string()},
            {"name": format!("n{k}.example.com"), "upstream": upstream.to_string()},
        ],
        "timeouts": {"drain_s": 1},
    })
}

/// How a connection for `name` ends: forwarded connections end only once the upstream has
/// read everything, refused ones never reach it, so whichever comes first decides.
async fn decided(relay: &mut RelayProcess, upstream: &Upstream, name: &str) -> String {
    let hello = hello_for(name);
    let mut client = send_and_close(relay.addr(), &hello).await;
    let log = tokio::select! {
        got = upstream.receive_all() => {
            assert_eq!(got, hello);
            relay.next_connection().await
        }
        log = relay.next_connection() => log,
    };
    let _ = client.read_to_end(&mut Vec::new()).await;
    assert_eq!(log["sni"], name);
    log["reason"].as_str().unwrap().to_owned()
}

/// An echo upstream for the long-lived streams.
async fn echo_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut rd, mut wr) = conn.into_split();
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
                let _ = wr.shutdown().await;
            });
        }
    });
    addr
}

/// A stream that sends a chunk and checks its echo once per reload step, until the steps
/// end. Paced by the steps rather than looping flat out: a busy loop starved the relay of
/// CPU when test binaries ran side by side, and proved nothing more.
async fn stream(relay: SocketAddr, mut steps: tokio::sync::watch::Receiver<usize>) -> usize {
    let hello = hello_for(STREAM);
    let mut conn = TcpStream::connect(relay).await.unwrap();
    conn.write_all(&hello).await.unwrap();
    let mut echoed = vec![0u8; hello.len()];
    conn.read_exact(&mut echoed).await.unwrap();
    let mut rounds = 0;
    while steps.changed().await.is_ok() {
        let chunk: Vec<u8> = (0..4096).map(|i| (i + rounds) as u8).collect();
        conn.write_all(&chunk)
            .await
            .expect("stream dropped during a reload");
        let mut back = vec![0u8; chunk.len()];
        conn.read_exact(&mut back)
            .await
            .expect("stream dropped during a reload");
        assert_eq!(back, chunk);
        rounds += 1;
    }
    conn.shutdown().await.unwrap();
    assert_eq!(conn.read(&mut [0u8; 1]).await.unwrap(), 0);
    rounds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_reloads_valid_and_invalid_never_touch_live_streams() {
    within(async {
        let upstream = Upstream::bind("127.0.0.1").await;
        let streams_at = echo_upstream().await;
        let mut relay = RelayProcess::start(version(0, upstream.addr, streams_at)).await;
        let path = relay.config_path();
        let (step_tx, steps) = tokio::sync::watch::channel(0);
        let streams: Vec<_> = (0..3)
            .map(|_| tokio::spawn(stream(relay.addr(), steps.clone())))
            .collect();

        let mut valid = 0;
        for step in 1..=100 {
            step_tx.send(step).unwrap();
            let is_valid = step % 2 == 0;
            if is_valid {
                replace_file(&path, &version(step, upstream.addr, streams_at).to_string());
            } else {
                replace_file(&path, r#"{"allow": ["n1.example.com", "n1.example.com"]}"#);
            }
            let line = relay
                .next_message(if is_valid {
                    "config reloaded"
                } else {
                    "config reload failed; keeping the previous rules"
                })
                .await;
            assert_eq!(line["trigger"], "file");
            if is_valid {
                assert_eq!(line["rules"], 2);
                let previous = valid;
                valid = step;
                assert_eq!(
                    decided(&mut relay, &upstream, &format!("n{valid}.example.com")).await,
                    "closed"
                );
                assert_eq!(
                    decided(&mut relay, &upstream, &format!("n{previous}.example.com")).await,
                    "not_allowed"
                );
            } else {
                assert!(
                    line["error"].as_str().unwrap().contains("duplicate rule"),
                    "{line}"
                );
                assert_eq!(
                    decided(&mut relay, &upstream, &format!("n{valid}.example.com")).await,
                    "closed"
                );
            }
        }
        drop(step_tx);
        for stream in streams {
            assert!(stream.await.unwrap() > 0);
        }
        for _ in 0..3 {
            let log = relay.next_connection().await;
            assert_eq!(
                (log["sni"].as_str(), log["reason"].as_str()),
                (Some(STREAM), Some("closed")),
                "{log}"
            );
        }
    })
    .await
}

#[tokio::test]
async fn sighup_reloads_and_a_file_change_says_what_it_changed() {
    within(async {
        let upstream = Upstream::bind("127.0.0.1").await;
        let streams_at = upstream.addr;
        let mut relay = RelayProcess::start(version(1, upstream.addr, streams_at)).await;
        let path = relay.config_path();
        // Written in place, as `echo > rules.json` would, then announced with SIGHUP.
        std::fs::write(&path, version(2, upstream.addr, streams_at).to_string()).unwrap();
        relay.next_message("config reloaded").await;
        relay.signal("HUP");
        let line = relay.next_message("config reloaded").await;
        assert_eq!(line["trigger"], "sighup");
        assert_eq!(
            decided(&mut relay, &upstream, "n2.example.com").await,
            "closed"
        );
        // That an unchanged file is no reload, the unit tests pin step by step (here the
        // unchanged write and the next change could land in one settle window, unseen).
        replace_file(&path, &version(3, upstream.addr, streams_at).to_string());
        let line = relay.next_message("config reloaded").await;
        assert_eq!(line["trigger"], "file");
        assert_eq!(
            (&line["added"], &line["removed"], &line["changed"]),
            (
                &json!("n3.example.com"),
                &json!("n2.example.com"),
                &json!("")
            ),
            "{line}"
        );
        assert_eq!(
            decided(&mut relay, &upstream, "n3.example.com").await,
            "closed"
        );
    })
    .await
}

#[tokio::test]
async fn a_changed_listen_asks_for_a_restart_and_the_rest_applies() {
    within(async {
        let upstream = Upstream::bind("127.0.0.1").await;
        let mut config = version(1, upstream.addr, upstream.addr);
        config["listen"] = json!(["127.0.0.1:0"]);
        let mut relay = RelayProcess::start_with(config.clone(), &[]).await;
        config["listen"] = json!(["127.0.0.1:1"]);
        config["allow"][1]["name"] = "n9.example.com".into();
        replace_file(&relay.config_path(), &config.to_string());
        relay.next_message("listen changed; listeners change only on restart, the rest of the file applies now").await;
        relay.next_message("config reloaded").await;
        assert_eq!(decided(&mut relay, &upstream, "n9.example.com").await, "closed");
    })
    .await
}

/// A ConfigMap as the kubelet mounts it: `rules.json -> ..data/rules.json`, `..data -> ..v1`;
/// an update writes `..v2` and renames a new `..data` over the old. Neither rules.json nor
/// the file it leads to is touched by name, so the watch must follow the link's first step.
#[tokio::test]
async fn a_kubernetes_configmap_update_is_applied() {
    within(async {
        let upstream = Upstream::bind("127.0.0.1").await;
        let mut relay = RelayProcess::start(version(1, upstream.addr, upstream.addr)).await;
        let path = relay.config_path();
        let dir = path.parent().unwrap();
        let publish = |generation: &str, text: &str| {
            std::fs::create_dir(dir.join(generation)).unwrap();
            std::fs::write(dir.join(generation).join("rules.json"), text).unwrap();
            std::os::unix::fs::symlink(generation, dir.join("..data_tmp")).unwrap();
            std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        };
        publish(
            "..v1",
            &version(1, upstream.addr, upstream.addr).to_string(),
        );
        let link = dir.join("rules.json.link");
        std::os::unix::fs::symlink("..data/rules.json", &link).unwrap();
        std::fs::rename(&link, &path).unwrap();
        // The same rules in other bytes (compact, not pretty): a reload that changes no rule,
        // and the sign that the link is in place before the update.
        let line = relay.next_message("config reloaded").await;
        assert_eq!(
            (&line["added"], &line["removed"]),
            (&json!(""), &json!("")),
            "{line}"
        );
        publish(
            "..v2",
            &version(2, upstream.addr, upstream.addr).to_string(),
        );
        let line = relay.next_message("config reloaded").await;
        assert_eq!(line["added"], "n2.example.com", "{line}");
        assert_eq!(
            decided(&mut relay, &upstream, "n2.example.com").await,
            "closed"
        );
    })
    .await
}

/// The rules file goes missing beside files that keep changing (the relay's own log, in the
/// reported case): one failure line, no matter how many events; then, when the file comes
/// back unchanged, one line saying so.
#[tokio::test]
async fn a_missing_rules_file_is_reported_once_and_its_return_too() {
    within(async {
        let upstream = Upstream::bind("127.0.0.1").await;
        let mut relay = RelayProcess::start(version(1, upstream.addr, upstream.addr)).await;
        let path = relay.config_path();
        let away = path.with_extension("away");
        std::fs::rename(&path, &away).unwrap();
        let failed = relay
            .next_message("config reload failed; keeping the previous rules")
            .await;
        assert!(
            failed["error"].as_str().unwrap().contains("cannot read"),
            "{failed}"
        );
        let log = path.with_file_name("snirelay.log");
        for i in 0..20 {
            std::fs::write(&log, format!("line {i}\n")).unwrap();
        }
        std::fs::rename(&away, &path).unwrap();
        loop {
            let line = relay.next_line().await;
            assert_ne!(
                line["message"], "config reload failed; keeping the previous rules",
                "{line}"
            );
            assert_ne!(line["message"], "config reloaded", "{line}");
            if line["message"] == "config file recovered; it holds the rules in force" {
                break;
            }
        }
    })
    .await
}

/// A reload applies `clients`, the limits and the nameservers to the next connections,
/// not only the rules.
#[tokio::test]
async fn a_reload_changes_clients_limits_and_nameservers() {
    within(async {
        let upstream = Upstream::bind("127.0.0.1").await;
        let old_dns =
            common::dns_server(vec![("dns.example.com", vec![[127, 0, 0, 2].into()])]).await;
        let new_dns =
            common::dns_server(vec![("dns.example.com", vec![[127, 0, 0, 1].into()])]).await;
        let config = |clients: &str, per_client: u64, dns: SocketAddr| {
            json!({
                "allow": [
                    {"name": "n1.example.com", "upstream": upstream.addr.to_string()},
                    "dns.example.com",
                ],
                "upstream_port": upstream.addr.port(),
                "private_destinations": ["127.0.0.0/8"],
                "clients": [clients],
                "max_connections_per_client": per_client,
                "resolver": {"nameservers": [dns.to_string()]},
                "timeouts": {"connect_ms": 2000},
            })
        };
        let mut relay = RelayProcess::start(config("127.0.0.0/8", 1000, old_dns)).await;
        let path = relay.config_path();
        // The old nameserver sends dns.example.com to 127.0.0.2, where nothing listens on
        // the upstream's port.
        assert_eq!(
            decided(&mut relay, &upstream, "dns.example.com").await,
            "upstream_unreachable"
        );

        replace_file(&path, &config("127.0.0.0/8", 1, new_dns).to_string());
        let line = relay.next_message("config reloaded").await;
        assert_eq!(line["settings"], "limits, resolver", "{line}");
        assert_eq!(
            decided(&mut relay, &upstream, "dns.example.com").await,
            "closed"
        );
        // One connection per client now: a second while the first is open is refused.
        let mut held = TcpStream::connect(relay.addr()).await.unwrap();
        held.write_all(&hello_for("n1.example.com")).await.unwrap();
        let held_upstream = upstream.accept().await;
        let mut second = send_and_close(relay.addr(), &hello_for("n1.example.com")).await;
        let _ = second.read_to_end(&mut Vec::new()).await;
        assert_eq!(
            relay.next_connection().await["reason"],
            "too_many_from_client"
        );
        drop((held, held_upstream));
        assert_eq!(relay.next_connection().await["outcome"], "forwarded");

        replace_file(&path, &config("192.0.2.0/24", 1000, new_dns).to_string());
        let line = relay.next_message("config reloaded").await;
        assert_eq!(line["settings"], "clients, limits", "{line}");
        let mut denied = TcpStream::connect(relay.addr()).await.unwrap();
        let _ = denied.read_to_end(&mut Vec::new()).await;
        assert_eq!(relay.next_connection().await["reason"], "client_denied");
    })
    .await
}
