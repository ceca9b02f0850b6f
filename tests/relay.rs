//! End to end through the real binary: real TLS clients, a local TLS upstream, real DNS.

mod common;

use common::hellogen::{handshake_payload, hello_for, records};
use common::{
    RelayProcess, Upstream, dns_server, pinned_config, pki, real_hellos, send_and_close, within,
};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const NAME: &str = "translation.googleapis.com";

fn field<'a>(log: &'a Value, key: &str) -> &'a str {
    log[key].as_str().unwrap_or_default()
}

fn assert_outcome(log: &Value, outcome: &str, reason: &str) {
    assert_eq!(
        (field(log, "outcome"), field(log, "reason")),
        (outcome, reason),
        "{log}"
    );
}

/// Deterministic bytes, so corruption or reordering shows.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8)
        .collect()
}

async fn tls_connect(
    relay: SocketAddr,
    pki: &common::Pki,
    name: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(relay).await?;
    let server_name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    pki.connector().connect(server_name, tcp).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_end_to_end_and_16_mib_each_way_arrive_intact() {
    within(async {
        let pki = pki(&[NAME]);
        let (upstream, mut relay) = pinned_relay(|_| {}).await;
        let size = 16 << 20;

        let upstream_addr = upstream.addr;
        let acceptor = pki.acceptor();
        let server = tokio::spawn(async move {
            let tls = acceptor.accept(upstream.accept().await).await.unwrap();
            let (mut rd, mut wr) = tokio::io::split(tls);
            // Echo until the client's close_notify, then a last word after it: half-close.
            tokio::io::copy(&mut rd, &mut wr).await.unwrap();
            wr.write_all(b"bye").await.unwrap();
            wr.shutdown().await.unwrap();
        });

        let tls = tls_connect(relay.addr(), &pki, NAME).await.unwrap();
        let (_, session) = tls.get_ref();
        let seen = session.peer_certificates().unwrap();
        assert_eq!(
            seen[0], pki.server_cert_der,
            "the client saw the upstream's own certificate"
        );
        let (mut rd, mut wr) = tokio::io::split(tls);
        let sent = pattern(size, 7);
        let writer = {
            let sent = sent.clone();
            tokio::spawn(async move {
                wr.write_all(&sent).await.unwrap();
                wr.shutdown().await.unwrap();
            })
        };
        let mut got = Vec::with_capacity(size + 3);
        rd.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        server.await.unwrap();
        assert_eq!(got.len(), size + 3);
        assert!(got[..size] == sent[..], "echoed bytes differ");
        assert_eq!(&got[size..], b"bye");

        let log = relay.next_connection().await;
        assert_outcome(&log, "forwarded", "closed");
        assert_eq!(field(&log, "sni"), NAME);
        assert_eq!(field(&log, "rule"), NAME);
        assert_eq!(field(&log, "upstream"), upstream_addr.to_string());
        assert!(log["bytes_up"].as_u64().unwrap() > size as u64);
        assert!(log["bytes_down"].as_u64().unwrap() > size as u64);
        assert!(log["tls"].as_str().unwrap().contains("1.3"));
        // Bulk traffic leaves user space: the splice path really ran (Linux).
        assert!(
            log["bytes_spliced"].as_u64().unwrap() > size as u64,
            "{log}"
        );
    })
    .await
}

/// A relay allowing NAME, pinned to a fresh upstream; `tweak` adjusts the config first.
async fn pinned_relay(tweak: impl FnOnce(&mut Value)) -> (Upstream, RelayProcess) {
    let upstream = Upstream::bind("127.0.0.1").await;
    let mut config = pinned_config(&[NAME], upstream.addr);
    tweak(&mut config);
    (upstream, RelayProcess::start(config).await)
}

/// Connects and writes `bytes`, leaving the connection open.
async fn connect_and_send(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(bytes).await.unwrap();
    conn
}

#[tokio::test]
async fn client_half_close_keeps_the_reply_flowing() {
    within(async {
        let (upstream, mut relay) = pinned_relay(|_| {}).await;
        let mut request = hello_for(NAME);
        request.extend_from_slice(b"request");
        let mut client = send_and_close(relay.addr(), &request).await;
        let mut conn = upstream.accept().await;
        let mut got = Vec::new();
        conn.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, request, "hello replayed exactly, then the stream");
        conn.write_all(b"reply after the client's FIN")
            .await
            .unwrap();
        drop(conn);
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"reply after the client's FIN");
        let log = relay.next_connection().await;
        assert_outcome(&log, "forwarded", "closed");
        assert_eq!(
            log["bytes_spliced"], 0,
            "small exchanges stay in the small buffer: {log}"
        );
    })
    .await
}

#[tokio::test]
async fn upstream_half_close_keeps_the_client_sending() {
    within(async {
        let (upstream, mut relay) = pinned_relay(|_| {}).await;
        let mut client = connect_and_send(relay.addr(), &hello_for(NAME)).await;
        let mut conn = upstream.accept().await;
        conn.write_all(b"banner").await.unwrap();
        conn.shutdown().await.unwrap();
        let mut banner = Vec::new();
        client.read_to_end(&mut banner).await.unwrap();
        assert_eq!(banner, b"banner");
        client.write_all(b"still talking").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).await.unwrap();
        assert!(got.ends_with(b"still talking"));
        assert_outcome(&relay.next_connection().await, "forwarded", "closed");
    })
    .await
}

fn reset(stream: TcpStream) {
    socket2::SockRef::from(&stream)
        .set_linger(Some(std::time::Duration::ZERO))
        .unwrap();
    drop(stream);
}

#[tokio::test]
async fn a_reset_on_either_side_resets_the_other() {
    within(async {
        let (upstream, mut relay) = pinned_relay(|_| {}).await;

        let mut client = connect_and_send(relay.addr(), &hello_for(NAME)).await;
        // Reset only once the hello has arrived: the relay is then past its connect, and the
        // reset hits a forwarded connection (earlier, it is an unreachable upstream).
        let mut conn = upstream.accept().await;
        conn.read_exact(&mut vec![0u8; hello_for(NAME).len()])
            .await
            .unwrap();
        reset(conn);
        let mut buf = [0u8; 16];
        let read = client.read(&mut buf).await;
        let log = relay.next_connection().await;
        assert_eq!(
            read.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::ConnectionReset),
            "{log}"
        );
        assert_outcome(&log, "forwarded", "upstream_reset");

        let client = TcpStream::connect(relay.addr()).await.unwrap();
        let mut hello = client;
        hello.write_all(&hello_for(NAME)).await.unwrap();
        let mut conn = upstream.accept().await;
        reset(hello);
        let err = conn.read_to_end(&mut Vec::new()).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
        assert_outcome(&relay.next_connection().await, "forwarded", "client_reset");
    })
    .await
}

#[tokio::test]
async fn a_name_not_allowed_gets_an_unrecognized_name_alert_and_reaches_nothing() {
    within(async {
        let pki = pki(&["storage.googleapis.com"]);
        let (upstream, mut relay) = pinned_relay(|_| {}).await;
        let err = tls_connect(relay.addr(), &pki, "storage.googleapis.com")
            .await
            .unwrap_err();
        let tls_error = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
            .cloned();
        assert_eq!(
            tls_error,
            Some(rustls::Error::AlertReceived(
                rustls::AlertDescription::UnrecognisedName
            ))
        );
        let log = relay.next_connection().await;
        assert_outcome(&log, "rejected", "not_allowed");
        assert_eq!(field(&log, "sni"), "storage.googleapis.com");
        assert!(upstream.untouched());
    })
    .await
}

/// Sends `bytes` and expects the relay to close without forwarding anything.
async fn expect_rejected(
    relay: &mut RelayProcess,
    upstream: &Upstream,
    bytes: &[u8],
    reason: &str,
) -> Value {
    let mut client = send_and_close(relay.addr(), bytes).await;
    // Whatever comes back (an alert at most), the relay closes.
    let mut rest = Vec::new();
    let _ = client.read_to_end(&mut rest).await;
    let log = relay.next_connection().await;
    assert_outcome(&log, "rejected", reason);
    assert!(
        upstream.untouched(),
        "{reason}: nothing may reach the upstream"
    );
    log
}

#[tokio::test]
async fn every_hello_reject_reason_closes_without_forwarding() {
    within(async {
        use common::hellogen::*;
        let upstream = Upstream::bind("127.0.0.1").await;
        let mut relay = RelayProcess::start(pinned_config(
            &[NAME, "*.sandbox.googleapis.com"],
            upstream.addr,
        ))
        .await;
        let cases: Vec<(Vec<u8>, &str, &str)> = vec![
            (hello(&[alpn(&["h2"])]), "no_sni", "no_server_name"),
            (hello(&[sni("192.0.2.1")]), "bad_sni", "ip_literal"),
            (
                hello(&[sni_entries(&[(0, b"evil.test\0.sandbox.googleapis.com")])]),
                "bad_sni",
                "bad_character",
            ),
            (
                hello(&[sni_entries(&[(0, b"a.example.com"), (0, b"b.example.com")])]),
                "bad_sni",
                "not_one_host_name",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: translation.googleapis.com\r\n\r\n".to_vec(),
                "bad_hello",
                "not_tls",
            ),
            (
                vec![0x80, 0x2e, 0x01, 0x00, 0x02, 0, 0],
                "bad_hello",
                "sslv2",
            ),
            (
                record(23, b"application data"),
                "bad_hello",
                "not_handshake",
            ),
            (vec![22, 3, 1, 0, 0], "bad_hello", "empty_record"),
            (vec![22, 3, 1, 0x40, 0x01], "bad_hello", "record_too_long"),
            (
                records(&handshake(2, &client_hello_body(&[sni(NAME)])), &[16384]),
                "bad_hello",
                "not_client_hello",
            ),
            (
                hello(&[sni(NAME), alpn(&["h2"]), alpn(&["h2"])]),
                "bad_hello",
                "duplicate_extension",
            ),
            (records(&[1, 0x02, 0, 0], &[4]), "bad_hello", "too_large"),
            (hello_for(NAME)[..20].to_vec(), "client_closed", ""),
        ];
        for (bytes, reason, detail) in cases {
            let log = expect_rejected(&mut relay, &upstream, &bytes, reason).await;
            assert_eq!(field(&log, "detail"), detail, "{log}");
        }
    })
    .await
}

#[tokio::test]
async fn a_hello_that_never_completes_times_out() {
    within(async {
        let (upstream, mut relay) =
            pinned_relay(|config| config["timeouts"]["hello_ms"] = 300.into()).await;
        let mut client = connect_and_send(relay.addr(), &hello_for(NAME)[..40]).await;
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        let log = relay.next_connection().await;
        assert_outcome(&log, "rejected", "hello_timeout");
        assert!(log["total_ms"].as_f64().unwrap() >= 300.0);
        assert!(upstream.untouched());
    })
    .await
}

#[tokio::test]
async fn a_client_reset_during_the_hello_is_client_error() {
    within(async {
        let (upstream, mut relay) = pinned_relay(|_| {}).await;
        let client = connect_and_send(relay.addr(), &hello_for(NAME)[..40]).await;
        reset(client);
        let log = relay.next_connection().await;
        assert_outcome(&log, "rejected", "client_error");
        assert!(upstream.untouched());
    })
    .await
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_idle_s() {
    within(async {
        let (upstream, mut relay) =
            pinned_relay(|config| config["timeouts"]["idle_s"] = 1.into()).await;
        let mut client = connect_and_send(relay.addr(), &hello_for(NAME)).await;
        let _conn = upstream.accept().await;
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        let log = relay.next_connection().await;
        assert_outcome(&log, "forwarded", "idle_timeout");
        assert!(log["total_ms"].as_f64().unwrap() >= 1000.0);
    })
    .await
}

#[tokio::test]
async fn an_unreachable_pinned_upstream_is_reported() {
    within(async {
        let (_held, addr) = common::refusing("127.0.0.1");
        let mut relay = RelayProcess::start(pinned_config(&[NAME], addr)).await;
        let mut client = send_and_close(relay.addr(), &hello_for(NAME)).await;
        let _ = client.read_to_end(&mut Vec::new()).await;
        let log = relay.next_connection().await;
        assert_outcome(&log, "rejected", "upstream_unreachable");
        assert_eq!(field(&log, "detail"), "refused");
    })
    .await
}

/// Connects, writes `pieces` one write each (no Nagle), closes, and returns what the
/// upstream received.
async fn through_relay(relay: SocketAddr, upstream: &Upstream, pieces: &[&[u8]]) -> Vec<u8> {
    let client = async {
        let mut conn = TcpStream::connect(relay).await.unwrap();
        conn.set_nodelay(true).unwrap();
        for piece in pieces {
            conn.write_all(piece).await.unwrap();
        }
        conn.shutdown().await.unwrap();
        conn
    };
    let (_conn, got) = tokio::join!(client, upstream.receive_all());
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_hellos_are_forwarded_byte_exact_however_they_are_split() {
    within(async {
        let upstream = Upstream::bind("127.0.0.1").await;
        let mut relay = RelayProcess::start(pinned_config(
            &["translate.googleapis.com", "storage.googleapis.com"],
            upstream.addr,
        ))
        .await;
        for fixture in real_hellos() {
            let bytes = &fixture.bytes;
            let mut splits: Vec<Vec<&[u8]>> = vec![vec![bytes], bytes.chunks(1).collect()];
            let refragmented = records(&handshake_payload(bytes), &[300]);
            splits.push(refragmented.split_inclusive(|_| false).collect());
            for at in 1..64 {
                splits.push(vec![&bytes[..at], &bytes[at..]]);
            }
            let per_record: Vec<Vec<u8>> = record_chunks(&refragmented);
            let per_record: Vec<&[u8]> = per_record.iter().map(|r| r.as_slice()).collect();
            for pieces in splits.iter().chain([&per_record]) {
                let got = through_relay(relay.addr(), &upstream, pieces).await;
                assert_eq!(got, pieces.concat(), "{}", fixture.name);
                let log = relay.next_connection().await;
                assert_outcome(&log, "forwarded", "closed");
                assert_eq!(field(&log, "sni"), fixture.sni);
            }
        }
    })
    .await
}

fn record_chunks(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let len = 5 + usize::from(u16::from_be_bytes([bytes[3], bytes[4]]));
        out.push(bytes[..len].to_vec());
        bytes = &bytes[len..];
    }
    out
}

#[tokio::test]
async fn real_hellos_for_names_not_allowed_reach_nothing() {
    within(async {
        let upstream = Upstream::bind("127.0.0.1").await;
        let mut relay =
            RelayProcess::start(pinned_config(&["other.example.com"], upstream.addr)).await;
        for fixture in real_hellos() {
            let log = expect_rejected(&mut relay, &upstream, &fixture.bytes, "not_allowed").await;
            assert_eq!(field(&log, "sni"), fixture.sni);
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_sent_right_behind_the_hello_survive_a_late_accept() {
    within(async {
        let (upstream, mut relay) = pinned_relay(|_| {}).await;
        let payload = pattern(4 << 20, 3);
        let mut expected = hello_for(NAME);
        expected.extend_from_slice(&payload);
        let written = Arc::new(AtomicUsize::new(0));
        let notify = Arc::new(tokio::sync::Notify::new());
        let client = {
            let (expected, written, notify) = (expected.clone(), written.clone(), notify.clone());
            let addr = relay.addr();
            tokio::spawn(async move {
                let mut conn = TcpStream::connect(addr).await.unwrap();
                for chunk in expected.chunks(16 * 1024) {
                    conn.write_all(chunk).await.unwrap();
                    written.fetch_add(chunk.len(), Ordering::SeqCst);
                    notify.notify_one();
                }
                conn.shutdown().await.unwrap();
                conn
            })
        };
        // The upstream accepts only once the client has pushed well past the hello.
        while written.load(Ordering::SeqCst) < 64 * 1024 {
            notify.notified().await;
        }
        let got = upstream.receive_all().await;
        client.await.unwrap();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "bytes lost or reordered");
        assert_outcome(&relay.next_connection().await, "forwarded", "closed");
    })
    .await
}

#[tokio::test]
async fn ipv6_listener_and_upstream() {
    within(async {
        let upstream = Upstream::bind("::1").await;
        let mut relay = RelayProcess::start_with(
            pinned_config(&[NAME], upstream.addr),
            &["--listen", "[::1]:0"],
        )
        .await;
        assert!(relay.addr().is_ipv6());
        let got = through_relay(relay.addr(), &upstream, &[&hello_for(NAME), b"over v6"]).await;
        assert!(got.ends_with(b"over v6"));
        let log = relay.next_connection().await;
        assert_outcome(&log, "forwarded", "closed");
        assert!(field(&log, "client").starts_with("[::1]"));
    })
    .await
}

#[tokio::test]
async fn resolve_pins_a_name_like_curl() {
    within(async {
        let upstream = Upstream::bind("127.0.0.1").await;
        let config = json!({"allow": [NAME]});
        let pin = format!("{NAME}={}", upstream.addr);
        let mut relay =
            RelayProcess::start_with(config, &["--listen", "127.0.0.1:0", "--resolve", &pin]).await;
        let got = through_relay(relay.addr(), &upstream, &[&hello_for(NAME)]).await;
        assert_eq!(got, hello_for(NAME));
        let log = relay.next_connection().await;
        assert_outcome(&log, "forwarded", "closed");
        assert_eq!(field(&log, "upstream"), upstream.addr.to_string());
    })
    .await
}

/// A relay that resolves through a DNS server on loopback.
async fn dns_relay(
    table: Vec<(&'static str, Vec<std::net::IpAddr>)>,
    upstream: &Upstream,
    private: &[&str],
) -> RelayProcess {
    let dns = dns_server(table).await;
    let config = json!({
        "allow": ["*.relay.test"],
        "upstream_port": upstream.addr.port(),
        "resolver": {"nameservers": [dns.to_string()]},
        "private_destinations": private,
        "timeouts": {"connect_ms": 5000},
    });
    RelayProcess::start(config).await
}

fn ips(list: &[&str]) -> Vec<std::net::IpAddr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

/// An upstream on `ip`, and the same port on `refused_ip` bound and never listening, so a
/// connection there is refused for as long as the test holds it.
async fn upstream_beside_a_refusing_port(
    ip: &str,
    refused_ip: &str,
) -> (Upstream, socket2::Socket) {
    loop {
        let upstream = Upstream::bind(ip).await;
        let beside = SocketAddr::new(refused_ip.parse().unwrap(), upstream.addr.port());
        if let Ok((held, _)) = common::refusing_at(beside) {
            return (upstream, held);
        }
    }
}

/// A connection for `name` reaches `upstream` and is logged as forwarded there.
async fn forwarded_to(relay: &mut RelayProcess, upstream: &Upstream, name: &str) {
    let hello = hello_for(name);
    assert_eq!(
        through_relay(relay.addr(), upstream, &[&hello]).await,
        hello
    );
    let log = relay.next_connection().await;
    assert_outcome(&log, "forwarded", "closed");
    assert_eq!(field(&log, "upstream"), upstream.addr.to_string());
}

#[tokio::test]
async fn an_aaaa_only_answer_is_used() {
    within(async {
        let upstream = Upstream::bind("::1").await;
        let table = vec![("six.relay.test", ips(&["::1"]))];
        let mut relay = dns_relay(table, &upstream, &["::1/128"]).await;
        forwarded_to(&mut relay, &upstream, "six.relay.test").await;
    })
    .await
}

/// Both families answer; the A address refuses (bound, never listening: refused for as long
/// as the test holds it), so the AAAA one serves. The one end-to-end test of falling over
/// to the next address; `connect`'s unit tests pin the timing on a paused clock.
#[tokio::test]
async fn a_refused_a_answer_falls_over_to_the_aaaa_answer() {
    within(async {
        let (upstream, _refusing) = upstream_beside_a_refusing_port("::1", "127.0.0.1").await;
        let table = vec![("dual.relay.test", ips(&["127.0.0.1", "::1"]))];
        let mut relay = dns_relay(table, &upstream, &["127.0.0.0/8", "::1/128"]).await;
        forwarded_to(&mut relay, &upstream, "dual.relay.test").await;
    })
    .await
}

#[tokio::test]
async fn nxdomain_is_dns_failed() {
    within(async {
        let upstream = Upstream::bind("127.0.0.1").await;
        let table = vec![("empty.relay.test", vec![])];
        let mut relay = dns_relay(table, &upstream, &["127.0.0.0/8"]).await;
        let log = expect_rejected(
            &mut relay,
            &upstream,
            &hello_for("missing.relay.test"),
            "dns_failed",
        )
        .await;
        assert_eq!(field(&log, "rule"), "*.relay.test");
        // Plain words, both families, and whom the relay asked: not the resolver's debug form.
        let error = field(&log, "error");
        assert!(
            error.starts_with("A and AAAA lookups for missing.relay.test: the name does not exist (NXDOMAIN) (asked 127.0.0.1:"),
            "{error}"
        );
        let log = expect_rejected(&mut relay, &upstream, &hello_for("empty.relay.test"), "dns_failed").await;
        let error = field(&log, "error");
        assert!(error.starts_with("no A or AAAA records for empty.relay.test (asked 127.0.0.1:"), "{error}");
    })
    .await
}

#[tokio::test]
async fn private_answers_outside_private_destinations_are_forbidden() {
    within(async {
        let upstream = Upstream::bind("127.0.0.1").await;
        let table = vec![
            ("internal.relay.test", ips(&["10.1.2.3"])),
            ("loopback.relay.test", ips(&["127.0.0.1", "::1"])),
            ("mapped.relay.test", ips(&["::ffff:127.0.0.1"])),
        ];
        let mut relay = dns_relay(table, &upstream, &[]).await;
        for name in [
            "internal.relay.test",
            "loopback.relay.test",
            "mapped.relay.test",
        ] {
            let log = expect_rejected(
                &mut relay,
                &upstream,
                &hello_for(name),
                "forbidden_destination",
            )
            .await;
            assert_eq!(field(&log, "sni"), name);
        }
    })
    .await
}

/// Monitor mode: a name no rule allows goes to itself at `upstream_port`, logged as
/// `would_refuse` with how it ended, counted under one fixed rule label; the destination
/// policy and the hello checks still refuse; a listener set to enforce refuses.
#[tokio::test]
async fn monitor_mode_forwards_unlisted_names_and_says_so() {
    within(async {
        use common::hellogen::{hello, sni};
        let upstream = Upstream::bind("127.0.0.1").await;
        let dns = dns_server(vec![
            ("unlisted.example.net", ips(&["127.0.0.1"])),
            ("private.example.net", ips(&["10.1.2.3"])),
        ])
        .await;
        let mut config = json!({
            "listen": ["127.0.0.1:0", {"addr": "127.0.0.2:0", "mode": "enforce"}],
            "mode": "monitor",
            "admin": "127.0.0.1:0",
            "allow": ["*.relay.test"],
            "upstream_port": upstream.addr.port(),
            "resolver": {"nameservers": [dns.to_string()]},
            "private_destinations": ["127.0.0.0/8"],
        });
        let mut relay = RelayProcess::start_with(config.take(), &[]).await;
        // The monitoring listener (127.0.0.1) first, whichever said "listening" first.
        relay.addrs.sort();
        let admin = relay.admin_addr().await;
        let (status, body) = common::http_get(&admin, "/readyz").await;
        assert_eq!(status, 200);
        assert!(body.starts_with("ready (monitor mode"), "{body}");

        let hello_bytes = hello_for("unlisted.example.net");
        let got = through_relay(relay.addr(), &upstream, &[&hello_bytes]).await;
        assert_eq!(got, hello_bytes);
        let log = relay.next_connection().await;
        assert_outcome(&log, "forwarded", "would_refuse");
        assert_eq!(
            (field(&log, "detail"), field(&log, "rule")),
            ("closed", "(unlisted)")
        );
        let (_, metrics) = common::http_get(&admin, "/metrics").await;
        assert!(
            metrics.contains("snirelay_rule_connections_total{rule=\"(unlisted)\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains(
                "snirelay_connections_total{outcome=\"forwarded\",reason=\"would_refuse\"} 1"
            ),
            "{metrics}"
        );

        // Still refused: a destination the policy forbids, and a bad hello.
        expect_rejected(
            &mut relay,
            &upstream,
            &hello_for("private.example.net"),
            "forbidden_destination",
        )
        .await;
        expect_rejected(
            &mut relay,
            &upstream,
            &hello(&[sni("192.0.2.1")]),
            "bad_sni",
        )
        .await;
        // The listener set to enforce refuses what the others forward.
        let enforcing = *relay
            .addrs
            .iter()
            .find(|a| a.ip().to_string() == "127.0.0.2")
            .unwrap();
        let mut client = send_and_close(enforcing, &hello_for("unlisted.example.net")).await;
        let _ = client.read_to_end(&mut Vec::new()).await;
        let log = relay.next_connection().await;
        assert_outcome(&log, "rejected", "not_allowed");
        assert!(upstream.untouched());
    })
    .await
}

/// A nameserver that takes every query and never answers: the connect deadline ends the
/// lookup, and the connection is refused as `dns_failed` with detail `timeout`.
#[tokio::test]
async fn a_nameserver_that_never_answers_is_dns_failed_by_timeout() {
    within(async {
        let upstream = Upstream::bind("127.0.0.1").await;
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let config = json!({
            "allow": ["*.relay.test"],
            "upstream_port": upstream.addr.port(),
            "resolver": {"nameservers": [silent.local_addr().unwrap().to_string()]},
            "private_destinations": ["127.0.0.0/8"],
            "timeouts": {"connect_ms": 300},
        });
        let mut relay = RelayProcess::start(config).await;
        let log = expect_rejected(
            &mut relay,
            &upstream,
            &hello_for("slow.relay.test"),
            "dns_failed",
        )
        .await;
        assert_eq!(field(&log, "detail"), "timeout", "{log}");
        assert_eq!(field(&log, "side"), "upstream", "{log}");
    })
    .await
}

/// DNS answers with the relay's own listener: forwarding there would loop the connection
/// through the relay until its limits ran out. The destination policy refuses it, even
/// where `private_destinations` allows the network.
#[tokio::test]
async fn a_name_that_resolves_to_the_relay_itself_is_refused() {
    within(async {
        let (ip, ports) = common::fresh_loopback(61, 1);
        let listen = format!("{ip}:{}", ports[0]);
        let dns = dns_server(vec![("self.relay.test", ips(&[&ip]))]).await;
        let config = json!({
            "allow": ["*.relay.test"],
            "upstream_port": ports[0],
            "resolver": {"nameservers": [dns.to_string()]},
            "private_destinations": ["127.0.0.0/8"],
        });
        let mut relay = RelayProcess::start_with(config, &["--listen", &listen]).await;
        let mut client = send_and_close(relay.addr(), &hello_for("self.relay.test")).await;
        let _ = client.read_to_end(&mut Vec::new()).await;
        let log = relay.next_connection().await;
        assert_outcome(&log, "rejected", "forbidden_destination");
    })
    .await
}

/// `0.0.0.0:443` and `[::]:443` listed together: IPv6 listeners are IPv6-only, so both bind
/// and each serves its family. In a network namespace of the test's own, where nothing
/// else can hold port 443.
#[tokio::test]
async fn both_wildcards_on_one_port_serve_their_own_families() {
    within(async {
        let path = longpath::Path::start(longpath::Spec::new(std::time::Duration::from_millis(1)))
            .expect("needs root: network namespaces");
        let relay_ns = longpath::Host::Relay;
        let upstream = path
            .run(relay_ns, || std::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap()
            .unwrap();
        upstream.set_nonblocking(true).unwrap();
        let upstream = tokio::net::TcpListener::from_std(upstream).unwrap();
        let mut config = pinned_config(&[NAME], upstream.local_addr().unwrap());
        config["listen"] = json!(["0.0.0.0:443", "[::]:443"]);
        let launcher = path.command(relay_ns, common::binary());
        let mut relay = RelayProcess::spawn(launcher, config, &[]).await;
        for at in ["127.0.0.1:443", "[::1]:443"] {
            let at: SocketAddr = at.parse().unwrap();
            let client = path
                .run(relay_ns, move || std::net::TcpStream::connect(at))
                .unwrap()
                .unwrap();
            client.set_nonblocking(true).unwrap();
            let mut client = TcpStream::from_std(client).unwrap();
            client.write_all(&hello_for(NAME)).await.unwrap();
            let (conn, _) = upstream.accept().await.unwrap();
            drop((client, conn));
            let log = relay.next_connection().await;
            assert_eq!(
                field(&log, "listener"),
                format!("{}:443", if at.is_ipv4() { "0.0.0.0" } else { "[::]" }),
                "{log}"
            );
        }
    })
    .await
}
