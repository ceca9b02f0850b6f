//! Hostile peers: clients and upstreams that stall, never read, or send garbage. The relay
//! stays bounded, forwards nothing it should not, and keeps serving everyone else.

mod common;

use common::hellogen::{hello_for, record};
use common::{RelayProcess, Upstream, pinned_config, send_and_close, within};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const NAME: &str = "a.example.com";
/// Far more than all socket buffers on the path can hold: a relay that buffered without
/// bound would let a writer get this far.
const UNBOUNDED: usize = 256 << 20;
const CHUNK: usize = 64 * 1024;

/// Writes until the peer stops reading, and returns how much went out. A write that makes
/// no progress for a while is only a hint (a loaded machine pauses too): the peer has
/// stopped when its advertised window, as our socket last saw it, is zero. A relay that
/// kept reading never closes its window, and the writes run on to `UNBOUNDED`.
async fn write_until_stalled(conn: &mut TcpStream) -> usize {
    let chunk = vec![7u8; CHUNK];
    let mut written = 0;
    while written < UNBOUNDED {
        match tokio::time::timeout(Duration::from_millis(500), conn.write_all(&chunk)).await {
            Ok(Ok(())) => written += CHUNK,
            Ok(Err(e)) => panic!("write failed: {e}"),
            Err(_) => {
                let info = snirelay::net::sys::tcp_info(&*conn).unwrap();
                let window = info
                    .peer_window
                    .expect("a kernel that reports tcpi_snd_wnd");
                if window == 0 {
                    break;
                }
            }
        }
    }
    written
}

#[tokio::test]
async fn an_upstream_that_never_reads_stops_the_relay_reading_from_the_client() {
    within(async {
        let upstream = Upstream::bind("127.0.0.1").await;
        let mut relay = RelayProcess::start(pinned_config(&[NAME], upstream.addr)).await;
        let rss_before = relay.rss();
        let mut client = TcpStream::connect(relay.addr()).await.unwrap();
        client.write_all(&hello_for(NAME)).await.unwrap();
        let silent = upstream.accept().await;
        let written = write_until_stalled(&mut client).await;
        assert!(
            written < UNBOUNDED / 4,
            "the relay kept reading: {written} bytes"
        );
        let grew = relay.rss().saturating_sub(rss_before);
        assert!(grew < 8 << 20, "relay memory grew by {grew} bytes");
        // The relay is blocked writing to the upstream; only that side can end it (or
        // idle_s). Its unread bytes make the close a reset.
        drop(silent);
        assert_eq!(relay.next_connection().await["reason"], "upstream_reset");
    })
    .await
}

#[tokio::test]
async fn a_client_that_never_reads_stops_the_relay_reading_from_the_upstream() {
    within(async {
        let upstream = Upstream::bind("127.0.0.1").await;
        let mut relay = RelayProcess::start(pinned_config(&[NAME], upstream.addr)).await;
        let rss_before = relay.rss();
        let client = send_and_close(relay.addr(), &hello_for(NAME)).await;
        let mut conn = upstream.accept().await;
        let written = write_until_stalled(&mut conn).await;
        assert!(
            written < UNBOUNDED / 4,
            "the relay kept reading: {written} bytes"
        );
        let grew = relay.rss().saturating_sub(rss_before);
        assert!(grew < 8 << 20, "relay memory grew by {grew} bytes");
        drop(client);
        assert_eq!(relay.next_connection().await["reason"], "client_reset");
    })
    .await
}

#[tokio::test]
async fn slow_clients_are_cut_at_the_hello_deadline_while_others_are_served() {
    within(async {
        let upstream = Upstream::bind("127.0.0.1").await;
        let mut config = pinned_config(&[NAME], upstream.addr);
        config["timeouts"]["hello_ms"] = 1000.into();
        let mut relay = RelayProcess::start(config).await;
        let mut slow = Vec::new();
        for i in 0..300 {
            let mut conn = TcpStream::connect(relay.addr()).await.unwrap();
            // Silent, half a hello, or a dribble: none completes.
            match i % 3 {
                0 => {}
                1 => conn.write_all(&hello_for(NAME)[..60]).await.unwrap(),
                _ => conn.write_all(&hello_for(NAME)[..1]).await.unwrap(),
            }
            slow.push(conn);
        }
        // A legitimate client gets through meanwhile.
        let hello = hello_for(NAME);
        let mut client = send_and_close(relay.addr(), &hello).await;
        assert_eq!(upstream.receive_all().await, hello);
        client.read_to_end(&mut Vec::new()).await.unwrap();
        // Every slow one is closed by the relay at its deadline, with the reason logged.
        for mut conn in slow {
            let mut rest = Vec::new();
            conn.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
        }
        let reasons = relay.next_reasons(301).await;
        assert_eq!(reasons.get("hello_timeout"), Some(&300), "{reasons:?}");
        assert_eq!(reasons.get("closed"), Some(&1), "{reasons:?}");
    })
    .await
}

#[tokio::test]
async fn a_garbage_flood_reaches_nothing_and_leaves_nothing_behind() {
    within(async {
        let upstream = Upstream::bind("127.0.0.1").await;
        let mut relay = RelayProcess::start(pinned_config(&[NAME], upstream.addr)).await;
        let fds_before = relay.open_fds();
        let mut garbage: Vec<Vec<u8>> = vec![
            b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n".to_vec(),
            record(23, &[0u8; 100]),
            vec![22, 3, 1, 0xff, 0xff],
            vec![0x80, 0x40, 0x01, 0x03, 0x01],
            vec![22, 3, 1, 0, 4, 1, 0xff, 0xff, 0xff],
        ];
        let mut seed = 0x2545_f491_u32;
        for _ in 0..20 {
            let random: Vec<u8> = (0..512)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    seed as u8
                })
                .collect();
            garbage.push(random);
        }
        let total = garbage.len() * 8;
        let floods: Vec<_> = (0..8)
            .flat_map(|_| garbage.clone())
            .map(|bytes| {
                let addr = relay.addr();
                tokio::spawn(async move {
                    let mut conn = send_and_close(addr, &bytes).await;
                    let _ = conn.read_to_end(&mut Vec::new()).await;
                })
            })
            .collect();
        for flood in floods {
            flood.await.unwrap();
        }
        for (reason, _) in relay.next_reasons(total as u64).await {
            let outcome = snirelay::outcome::OUTCOMES
                .iter()
                .find(|(_, r)| *r == reason);
            assert_eq!(outcome.map(|(o, _)| *o), Some("rejected"), "{reason}");
        }
        assert!(upstream.untouched());
        assert_eq!(
            relay.open_fds(),
            fds_before,
            "descriptors back to where they were"
        );
    })
    .await
}
