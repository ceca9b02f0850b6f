//! Running behind a load balancer: readiness a balancer can follow, a grace period in which
//! a stopping relay still accepts, then the drain.

mod common;

use common::hellogen::hello_for;
use common::{RelayProcess, Upstream, http_get, pinned_config, within};
use serde_json::Value;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const NAME: &str = "a.example.com";

async fn start(upstream: &Upstream, tweak: impl FnOnce(&mut Value)) -> (RelayProcess, String) {
    let mut config = pinned_config(&[NAME], upstream.addr);
    config["admin"] = "127.0.0.1:0".into();
    tweak(&mut config);
    let mut relay = RelayProcess::start(config).await;
    let admin = relay.next_message("admin listening").await["addr"]
        .as_str()
        .unwrap()
        .to_owned();
    (relay, admin)
}

/// A connection through the relay that reached the upstream.
async fn forwarded(relay: SocketAddr, upstream: &Upstream) -> (TcpStream, TcpStream) {
    let hello = hello_for(NAME);
    let mut client = TcpStream::connect(relay).await.unwrap();
    client.write_all(&hello).await.unwrap();
    let mut conn = upstream.accept().await;
    let mut replayed = vec![0u8; hello.len()];
    conn.read_exact(&mut replayed).await.unwrap();
    (client, conn)
}

#[tokio::test]
async fn readyz_says_why_not_while_no_rules_are_loaded() {
    within(async {
        let upstream = Upstream::bind("127.0.0.1").await;
        let (relay, admin) = start(&upstream, |c| c["allow"] = serde_json::json!([])).await;
        let (status, body) = http_get(&admin, "/readyz").await;
        assert_eq!(status, 503);
        assert!(body.contains("no rules loaded"), "{body}");
        // A reload that brings rules makes it ready.
        std::fs::write(
            relay.config_path(),
            serde_json::to_string(&{
                let mut c = pinned_config(&[NAME], upstream.addr);
                c["admin"] = admin.clone().into();
                c
            })
            .unwrap(),
        )
        .unwrap();
        relay.signal("HUP");
        let mut relay = relay;
        relay.next_message("config reloaded").await;
        assert_eq!(
            http_get(&admin, "/readyz").await,
            (200, "ready\n".to_owned())
        );
    })
    .await
}

#[tokio::test]
async fn a_stopping_relay_accepts_through_its_grace_period_then_drains() {
    within(async {
        let upstream = Upstream::bind("127.0.0.1").await;
        let (mut relay, admin) = start(&upstream, |c| {
            c["timeouts"]["lb_grace_s"] = 600.into();
            c["timeouts"]["drain_s"] = 600.into();
        })
        .await;
        let (mut live, mut live_up) = forwarded(relay.addr(), &upstream).await;
        relay.signal("TERM");
        relay
            .next_message(
                "shutting down: not ready, still accepting for the balancer's grace period",
            )
            .await;
        let (status, body) = http_get(&admin, "/readyz").await;
        assert_eq!(status, 503);
        assert!(body.contains("shutting down"), "{body}");
        // Not ready, and still serving: a balancer that has not yet noticed loses nothing.
        let (late, late_up) = forwarded(relay.addr(), &upstream).await;
        drop((late, late_up));
        assert_eq!(relay.next_connection().await["outcome"], "forwarded");

        // A second signal ends the grace period: new connections are refused, live ones
        // go on.
        relay.signal("TERM");
        relay.next_message("grace period cut short").await;
        relay.next_message("draining").await;
        assert!(
            TcpStream::connect(relay.addr()).await.is_err(),
            "still accepting"
        );
        live.write_all(b"still here").await.unwrap();
        let mut got = [0u8; 10];
        live_up.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"still here");
        drop((live, live_up));
        assert_eq!(relay.next_connection().await["reason"], "closed");
        relay.next_message("stopped").await;
        assert!(relay.wait().await.success());
    })
    .await
}

#[tokio::test]
async fn the_grace_period_ends_by_itself() {
    within(async {
        let upstream = Upstream::bind("127.0.0.1").await;
        let (mut relay, _) = start(&upstream, |c| c["timeouts"]["lb_grace_s"] = 1.into()).await;
        relay.signal("TERM");
        relay.next_message("draining").await;
        assert!(
            TcpStream::connect(relay.addr()).await.is_err(),
            "still accepting"
        );
        relay.next_message("stopped").await;
    })
    .await
}
