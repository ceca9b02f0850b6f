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
    let admin = relay.admin_addr().await;
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

/// The fleet: HAProxy in `mode tcp` in front of two relays, as an operator would run it.
mod haproxy {
    use super::NAME;
    use super::common::traffic::{BIG_REQUEST, exchange, serve_upstream, steady_load};
    use super::common::{self, RelayProcess, Upstream, pinned_config, pki};
    use serde_json::json;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::net::TcpStream;
    use tokio::sync::mpsc;

    /// Where test clients connect from, and where HAProxy connects to the relays from, so
    /// the relays' logs can tell the real client from the balancer.
    const CLIENT_IP: &str = "127.0.0.55";
    const BALANCER_IP: &str = "127.0.0.66";

    /// A relay on fixed ports of its own loopback address (HAProxy's config names them):
    /// PROXY v2 from the balancer only, clients from CLIENT_IP only.
    async fn relay(ip: &str, ports: &[u16], upstream: SocketAddr) -> RelayProcess {
        let mut config = pinned_config(&[NAME], upstream);
        config["listen"] = json!([{
            "addr": format!("{ip}:{}", ports[0]),
            "proxy_protocol": "v2",
            "trusted_proxies": [BALANCER_IP],
        }]);
        config["admin"] = format!("{ip}:{}", ports[1]).into();
        config["clients"] = json!([CLIENT_IP]);
        config["timeouts"]["lb_grace_s"] = 2.into();
        config["timeouts"]["drain_s"] = 30.into();
        RelayProcess::start_with(config, &[]).await
    }

    /// Waits until `relay` forwards a connection (so the balancer sends it traffic), and
    /// checks the log names the real client and the balancer.
    async fn wait_forwarded(relay: &mut RelayProcess) {
        loop {
            let line = relay.next_connection().await;
            if line["outcome"] == "forwarded" {
                assert!(
                    line["client"]
                        .as_str()
                        .unwrap()
                        .starts_with(&format!("{CLIENT_IP}:")),
                    "{line}"
                );
                assert!(
                    line["peer"]
                        .as_str()
                        .unwrap()
                        .starts_with(&format!("{BALANCER_IP}:")),
                    "{line}"
                );
                return;
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fleet_behind_haproxy_loses_nothing_when_relays_stop_and_restart() {
        if !common::available("haproxy") {
            return;
        }
        tokio::time::timeout(Duration::from_secs(120), async {
            let pki = Arc::new(pki(&[NAME]));
            let upstream = Upstream::bind("127.0.0.1").await;
            let upstream_addr = upstream.addr;
            let serving = pki.clone();
            let (big_tx, mut big_started) = mpsc::unbounded_channel();
            tokio::spawn(async move { serve_upstream(upstream, &serving, big_tx).await });

            let (ip1, ports1) = common::fresh_loopback(101, 2);
            let (ip2, ports2) = common::fresh_loopback(102, 2);
            let (front_ip, front_ports) = common::fresh_loopback(103, 1);
            let mut relays = vec![
                relay(&ip1, &ports1, upstream_addr).await,
                relay(&ip2, &ports2, upstream_addr).await,
            ];
            let dir = tempfile::tempdir().unwrap();
            let cfg = dir.path().join("haproxy.cfg");
            std::fs::write(&cfg, format!(
                "defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n  retries 0\n\
                 frontend fe\n  bind {front_ip}:{front}\n  default_backend relays\n\
                 backend relays\n  balance roundrobin\n  option httpchk GET /readyz\n  http-check expect status 200\n\
                 \x20 default-server send-proxy-v2 check inter 100ms fall 1 rise 1 source {BALANCER_IP}\n\
                 \x20 server r1 {ip1}:{r1} check port {a1}\n  server r2 {ip2}:{r2} check port {a2}\n",
                front = front_ports[0], r1 = ports1[0], a1 = ports1[1], r2 = ports2[0], a2 = ports2[1],
            )).unwrap();
            let mut haproxy = std::process::Command::new("haproxy");
            haproxy.arg("-db").arg("-f").arg(&cfg).stdout(std::process::Stdio::null());
            let _haproxy = common::Group(common::Group::lead(&mut haproxy).spawn().unwrap());
            let balancer: SocketAddr = format!("{front_ip}:{}", front_ports[0]).parse().unwrap();
            // HAProxy says nothing when it is ready: poll until it accepts.
            while TcpStream::connect(balancer).await.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }

            // Long transfers, two on each relay (round robin), in flight before anything stops.
            let transfers: Vec<_> = (0..4)
                .map(|_| {
                    let pki = pki.clone();
                    tokio::spawn(async move { exchange(balancer, CLIENT_IP, NAME, &pki, BIG_REQUEST).await })
                })
                .collect();
            for _ in 0..4 {
                big_started.recv().await.unwrap();
            }

            // A steady stream of new TLS connections until told to stop.
            let done = tokio_util::sync::CancellationToken::new();
            let (load, stream) = steady_load(balancer, CLIENT_IP, NAME, pki.clone(), done.clone());

            // Stop each relay in turn under the load and bring it back: the first stop has
            // long transfers on it, and the two together are a rolling restart. Each is back
            // in rotation before the next goes.
            for (i, (ip, ports)) in [(&ip1, &ports1), (&ip2, &ports2)].into_iter().enumerate() {
                wait_forwarded(&mut relays[i]).await;
                relays[i].signal("TERM");
                relays[i].next_message("stopped").await;
                // Started again once the old process has exited, as systemd restarts a unit:
                // until then its admin endpoint may still hold the port.
                assert!(relays.remove(i).wait().await.success());
                relays.insert(i, relay(ip, ports, upstream_addr).await);
                wait_forwarded(&mut relays[i]).await;
            }
            let mut intact = 0;
            for transfer in transfers {
                intact += u32::from(transfer.await.unwrap());
            }
            done.cancel();
            stream.await.unwrap();

            let (attempted, failed) = load.counts();
            eprintln!("fleet: {attempted} new connections attempted, {failed} failed; {intact} of 4 long transfers intact");
            assert_eq!((failed, intact), (0, 4), "{attempted} attempted");
            assert!(attempted > 100, "the load ran: {attempted}");
        })
        .await
        .expect("fleet test did not finish within 120 s");
    }
}
