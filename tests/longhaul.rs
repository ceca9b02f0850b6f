//! The long haul, on an emulated path (the `longpath` crate: namespaces and a user-space
//! delay line over TUN devices): first the emulator's own self-test (its delay, loss and
//! rate are what they are set to), then what the relay reports of a connection across it.
//! Needs root, which CI has; without it every test here fails saying so.

mod common;

use common::hellogen::hello_for;
use common::{RelayProcess, pinned_config, within};
use longpath::{Host, Path, Spec};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const RTT: Duration = Duration::from_millis(180);
const NAME: &str = "a.example.com";

fn path(spec: Spec) -> Path {
    Path::start(spec).expect("cannot make the emulated long path")
}

/// A UDP socket bound to `ip` inside `host`.
fn udp(path: &Path, host: Host, ip: std::net::Ipv4Addr) -> UdpSocket {
    path.run(host, move || UdpSocket::bind((ip, 0)))
        .unwrap()
        .unwrap()
}

/// Echoes every datagram back until the client says `stop`, counting what it received.
fn echo(server: UdpSocket) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut received = 0;
        let mut buf = [0u8; 2048];
        loop {
            let (n, from) = server.recv_from(&mut buf).unwrap();
            if &buf[..n] == b"stop" {
                return received;
            }
            received += 1;
            server.send_to(&buf[..n], from).unwrap();
        }
    })
}

/// Datagrams `socket` receives until the path has been quiet for ten round trips: every
/// echo due has arrived by then.
fn drain(socket: &UdpSocket) -> Vec<(Instant, usize)> {
    socket.set_read_timeout(Some(RTT * 10)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok(n) = socket.recv(&mut buf) {
        got.push((Instant::now(), n));
    }
    got
}

/// The median round trip of 30 pings from `from` (at `from_ip`) to an echo at `to_ip` in
/// `to`.
fn median_rtt(
    path: &Path,
    (from, from_ip): (Host, std::net::Ipv4Addr),
    (to, to_ip): (Host, std::net::Ipv4Addr),
) -> Duration {
    let server = udp(path, to, to_ip);
    let at = server.local_addr().unwrap();
    let echoing = echo(server);
    let client = udp(path, from, from_ip);
    client.connect(at).unwrap();
    let mut rtts = Vec::new();
    let mut buf = [0u8; 64];
    for i in 0u32..30 {
        let sent = Instant::now();
        client.send(&i.to_be_bytes()).unwrap();
        client.recv(&mut buf).unwrap();
        rtts.push(sent.elapsed());
    }
    client.send(b"stop").unwrap();
    echoing.join().unwrap();
    rtts.sort();
    rtts[rtts.len() / 2]
}

fn assert_near(measured: Duration, set: Duration) {
    let (low, high) = (set.mul_f64(0.95), set.mul_f64(1.05));
    assert!(
        (low..=high).contains(&measured),
        "median RTT {measured:?} outside {low:?}..={high:?}"
    );
}

#[test]
fn the_emulated_path_has_the_round_trip_time_it_is_set_to() {
    let path = path(Spec::new(RTT));
    let rtt = median_rtt(
        &path,
        (Host::Client, longpath::CLIENT),
        (Host::Relay, longpath::RELAY),
    );
    assert_near(rtt, RTT);
}

/// With an edge (issue 19's second relay), the long path runs from the edge to the relay,
/// and the clients reach the edge over a short link.
#[test]
fn with_an_edge_the_long_path_runs_from_the_edge() {
    let path = path(Spec {
        edge: true,
        ..Spec::new(RTT)
    });
    let long = median_rtt(
        &path,
        (Host::Edge, longpath::CLIENT),
        (Host::Relay, longpath::RELAY),
    );
    assert_near(long, RTT);
    let short = median_rtt(
        &path,
        (Host::Client, longpath::CLIENT_NEAR_EDGE),
        (Host::Edge, longpath::EDGE),
    );
    assert!(short < Duration::from_millis(20), "{short:?}");
}

#[test]
fn the_emulated_path_loses_what_it_is_set_to_in_each_direction() {
    let spec = Spec {
        up_loss: 0.10,
        down_loss: 0.20,
        seed: 7,
        ..Spec::new(RTT)
    };
    let path = path(spec);
    let server = udp(&path, Host::Relay, longpath::RELAY);
    let to = server.local_addr().unwrap();
    let echoing = echo(server);
    let client = udp(&path, Host::Client, longpath::CLIENT);
    client.connect(to).unwrap();
    let sent = 3000;
    for i in 0u32..sent {
        client.send(&i.to_be_bytes()).unwrap();
        // Paced, so no socket buffer on the way overflows: only the path loses.
        if i % 100 == 99 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let echoed = drain(&client).len() as f64;
    // The stop message itself may be lost: send it until the server has it.
    let received = loop {
        client.send(b"stop").unwrap();
        if echoing.is_finished() {
            break echoing.join().unwrap() as f64;
        }
        let _ = drain(&client);
    };
    let up = 1.0 - received / f64::from(sent);
    let down = 1.0 - echoed / received;
    // Four standard deviations of a binomial over these counts: about 0.022 and 0.031.
    assert!((up - 0.10).abs() < 0.022, "up loss {up:.4}");
    assert!((down - 0.20).abs() < 0.031, "down loss {down:.4}");
    assert!(path.up.lost.load(std::sync::atomic::Ordering::Relaxed) > 0);
}

#[test]
fn the_emulated_path_delivers_at_its_bottleneck_rate() {
    let rate = 20_000_000;
    let spec = Spec {
        rate_bps: Some(rate),
        queue_bytes: 64 * 1024,
        ..Spec::new(RTT)
    };
    let path = path(spec);
    let client = udp(&path, Host::Client, longpath::CLIENT);
    let to = client.local_addr().unwrap();
    let sender = udp(&path, Host::Relay, longpath::RELAY);
    // 2 MB offered as fast as the sender can: the bottleneck queue drops the excess.
    let datagram = [0x5au8; 1400];
    for i in 0..1500 {
        sender.send_to(&datagram, to).unwrap();
        if i % 50 == 49 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let got = drain(&client);
    assert!(got.len() > 100, "{} datagrams", got.len());
    let elapsed = got.last().unwrap().0 - got[0].0;
    let bytes: usize = got[1..].iter().map(|(_, n)| n + 28).sum();
    let measured = bytes as f64 * 8.0 / elapsed.as_secs_f64();
    assert!(
        (measured / rate as f64 - 1.0).abs() < 0.10,
        "{measured:.0} bit/s against {rate}"
    );
}

/// A relay in the relay namespace, pinned to an upstream listener in the upstream one.
async fn relay_across(path: &Path) -> (RelayProcess, tokio::net::TcpListener) {
    relay_across_with(path, |_| {}).await
}

/// [`relay_across`], with the config changed by `edit` first.
async fn relay_across_with(
    path: &Path,
    edit: impl FnOnce(&mut serde_json::Value),
) -> (RelayProcess, tokio::net::TcpListener) {
    let upstream = path
        .run(Host::Upstream, || {
            std::net::TcpListener::bind((longpath::UPSTREAM, 443))
        })
        .unwrap()
        .unwrap();
    upstream.set_nonblocking(true).unwrap();
    let upstream = tokio::net::TcpListener::from_std(upstream).unwrap();
    let mut config = pinned_config(&[NAME], upstream.local_addr().unwrap());
    edit(&mut config);
    let launcher = path.command(Host::Relay, common::binary());
    let listen = SocketAddr::from((longpath::RELAY, 443)).to_string();
    let relay = RelayProcess::spawn(launcher, config, &["--listen", &listen]).await;
    (relay, upstream)
}

/// A client on the far side of the path, forwarded to `upstream`: the client's stream,
/// the upstream's, and how long the hello they share is (already read by the upstream).
async fn forwarded(
    path: &Path,
    upstream: &tokio::net::TcpListener,
) -> (tokio::net::TcpStream, tokio::net::TcpStream, usize) {
    let client = path
        .run(Host::Client, || {
            std::net::TcpStream::connect((longpath::RELAY, 443))
        })
        .unwrap()
        .unwrap();
    client.set_nonblocking(true).unwrap();
    let mut client = tokio::net::TcpStream::from_std(client).unwrap();
    let hello = hello_for(NAME);
    client.write_all(&hello).await.unwrap();
    let (mut conn, _) = upstream.accept().await.unwrap();
    conn.read_exact(&mut vec![0u8; hello.len()]).await.unwrap();
    (client, conn, hello.len())
}

/// One connection across the path: the hello, then `reply` bytes from the upstream, read to
/// the end. Returns its log line.
async fn one_reply(path: &Path, reply: usize) -> serde_json::Value {
    let (mut relay, upstream) = relay_across(path).await;
    let (mut client, mut conn, _) = forwarded(path, &upstream).await;
    let serve = tokio::spawn(async move {
        conn.write_all(&vec![0x17; reply]).await.unwrap();
        conn.shutdown().await.unwrap();
        // Until the client's FIN, passed on: closing earlier would reset the relay.
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest).await.unwrap();
    });
    let mut got = Vec::with_capacity(reply);
    client.read_to_end(&mut got).await.unwrap();
    assert_eq!(got.len(), reply);
    drop(client);
    serve.await.unwrap();
    relay.next_connection().await
}

#[tokio::test]
async fn the_log_line_reports_the_client_legs_round_trip_time_and_no_retransmits() {
    within(async {
        let path = path(Spec::new(RTT));
        let line = one_reply(&path, 256 * 1024).await;
        let rtt = line["client_rtt_ms"].as_f64().unwrap();
        let ms = RTT.as_secs_f64() * 1e3;
        assert!(
            (rtt - ms).abs() <= ms * 0.2,
            "client_rtt_ms {rtt} against {ms}: {line}"
        );
        assert_eq!(line["client_retrans"], 0, "{line}");
        assert!(line["upstream_rtt_ms"].as_f64().unwrap() < 10.0, "{line}");
    })
    .await
}

#[tokio::test]
async fn losses_on_the_way_to_the_client_show_as_retransmits() {
    within(async {
        let spec = Spec {
            down_loss: 0.05,
            seed: 3,
            ..Spec::new(RTT)
        };
        let path = path(spec);
        let line = one_reply(&path, 256 * 1024).await;
        assert!(line["client_retrans"].as_u64().unwrap() > 0, "{line}");
        assert_eq!(line["upstream_retrans"], 0, "{line}");
    })
    .await
}

/// `GET /connections` on the relay's admin endpoint, from inside the relay namespace.
fn connections(path: &Path, admin: SocketAddr) -> serde_json::Value {
    let body = path
        .run(Host::Relay, move || {
            use std::io::{Read, Write};
            let mut conn = std::net::TcpStream::connect(admin).unwrap();
            conn.write_all(
                b"GET /connections HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
            )
            .unwrap();
            let mut response = String::new();
            conn.read_to_string(&mut response).unwrap();
            response.split_once("\r\n\r\n").unwrap().1.to_owned()
        })
        .unwrap();
    serde_json::from_str(&body).unwrap()
}

/// A connection still open across the path is listed with its bytes so far and its client
/// leg's round trip, as the kernel measures it now.
#[tokio::test]
async fn the_admin_endpoint_shows_an_open_connection_across_the_path() {
    within(async {
        let path = path(Spec::new(RTT));
        let (mut relay, upstream) =
            relay_across_with(&path, |c| c["admin"] = "127.0.0.1:0".into()).await;
        let admin: SocketAddr = relay.next_message("admin listening").await["addr"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let (mut client, mut conn, hello) = forwarded(&path, &upstream).await;
        let reply = vec![0x17; 64 * 1024];
        conn.write_all(&reply).await.unwrap();
        client
            .read_exact(&mut vec![0u8; reply.len()])
            .await
            .unwrap();
        let listed = connections(&path, admin);
        assert_eq!(listed["open"], 1, "{listed}");
        let open = &listed["connections"][0];
        assert_eq!(open["bytes_up"], hello, "{listed}");
        assert_eq!(open["bytes_down"], reply.len(), "{listed}");
        let rtt = open["client_rtt_ms"].as_f64().unwrap();
        let ms = RTT.as_secs_f64() * 1e3;
        assert!(
            (rtt - ms).abs() <= ms * 0.2,
            "client_rtt_ms {rtt}: {listed}"
        );
    })
    .await
}

/// `GET /metrics` from inside `host`'s namespace.
fn metrics_in(path: &Path, host: Host, admin: SocketAddr) -> String {
    path.run(host, move || {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(admin).unwrap();
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        conn.read_to_string(&mut response).unwrap();
        response
    })
    .unwrap()
}

/// Clients beside an edge relay, the far relay across the long path, the upstream beside
/// it (a TLS server for NAME).
struct Chain {
    edge: RelayProcess,
    far: RelayProcess,
    pki: std::sync::Arc<common::Pki>,
}

const EDGE_AT: (std::net::Ipv4Addr, u16) = (longpath::EDGE, 443);
const FAR_AT: (std::net::Ipv4Addr, u16) = (longpath::RELAY, 443);

/// The chain on `path`: the edge with a pool of 2 (`pool`), or with TCP Fast Open on the
/// long leg (`fast_open`: the far relay's listener and the edge's upstream sockets, the
/// sysctl set on both hosts).
async fn chain(path: &Path, pool: bool, fast_open: bool) -> Chain {
    use common::traffic::serve_upstream;
    let pki = std::sync::Arc::new(common::pki(&[NAME]));
    let bound = path
        .run(Host::Upstream, || {
            std::net::TcpListener::bind((longpath::UPSTREAM, 443))
        })
        .unwrap()
        .unwrap();
    let upstream = common::Upstream::on(bound);
    let upstream_addr = upstream.addr;
    let serving = pki.clone();
    tokio::spawn(async move {
        let (big, _) = tokio::sync::mpsc::unbounded_channel();
        serve_upstream(upstream, &serving, big).await
    });
    if fast_open {
        for host in [Host::Edge, Host::Relay] {
            path.sysctl(host, "net.ipv4.tcp_fastopen=3").unwrap();
        }
    }
    let far_addr = SocketAddr::from(FAR_AT);
    let far_config = serde_json::json!({
        "listen": [{
            "addr": far_addr.to_string(),
            "proxy_protocol": "v2",
            "trusted_proxies": [format!("{}/32", longpath::CLIENT)],
            "proxy_header_wait_s": 60,
            "tcp": { "fast_open": fast_open }
        }],
        "allow": [{ "name": NAME, "upstream": upstream_addr.to_string() }]
    });
    let far =
        RelayProcess::spawn(path.command(Host::Relay, common::binary()), far_config, &[]).await;
    let mut edge_config = serde_json::json!({
        "listen": [SocketAddr::from(EDGE_AT).to_string()],
        "admin": "127.0.0.1:0",
        "upstream_tcp": { "fast_open": fast_open },
        "allow": [{ "name": NAME, "upstream": far_addr.to_string(), "send_proxy": "v2" }]
    });
    if pool {
        edge_config["pools"] = serde_json::json!([{ "upstream": far_addr.to_string(), "size": 2 }]);
    }
    let mut edge =
        RelayProcess::spawn(path.command(Host::Edge, common::binary()), edge_config, &[]).await;
    if pool {
        let admin: SocketAddr = edge.admin_addr().await.parse().unwrap();
        let full = format!("snirelay_pool_ready{{upstream=\"{far_addr}\"}} 2");
        while !metrics_in(path, Host::Edge, admin)
            .lines()
            .any(|line| line == full)
        {
            // The poll interval of a scrape, not a sleep that orders events.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Chain { edge, far, pki }
}

/// One TLS call from the clients' namespace through the edge: whether the reply arrived
/// whole (the client verifies the upstream's certificate, so a byte changed either way
/// fails it).
async fn call(path: &Path, chain: &Chain) -> bool {
    use common::traffic::{SMALL, SMALL_REQUEST, pattern};
    let client = path
        .run(Host::Client, || std::net::TcpStream::connect(EDGE_AT))
        .unwrap()
        .unwrap();
    client.set_nonblocking(true).unwrap();
    let client = tokio::net::TcpStream::from_std(client).unwrap();
    let name = rustls::pki_types::ServerName::try_from(NAME).unwrap();
    let Ok(mut tls) = chain.pki.connector().connect(name, client).await else {
        return false;
    };
    if tls.write_all(SMALL_REQUEST).await.is_err() {
        return false;
    }
    let mut got = Vec::new();
    tls.read_to_end(&mut got).await.is_ok() && got == pattern(SMALL)
}

/// A counter of `/proc/net/netstat` (`TcpExt`) in `host`'s namespace.
fn tcp_ext(path: &Path, host: Host, name: &str) -> u64 {
    let out = path
        .command(host, "cat")
        .arg("/proc/net/netstat")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .map_or(0, |(_, v)| v.parse().unwrap())
}

/// Real TLS through both relays over one of the edge's ready connections; the far relay
/// names the client behind the edge and the SNI.
#[tokio::test]
async fn a_tls_client_beside_an_edge_reaches_the_upstream_across_the_long_path() {
    within(async {
        let path = path(Spec {
            edge: true,
            ..Spec::new(RTT)
        });
        let mut chain = chain(&path, true, false).await;
        assert!(call(&path, &chain).await, "the reply did not arrive whole");
        let line = chain.edge.next_connection().await;
        assert_eq!(line["pooled"], true, "{line}");
        let line = chain.far.next_connection().await;
        assert_eq!(line["outcome"], "forwarded", "{line}");
        assert_eq!(line["sni"], NAME, "{line}");
        let client = line["client"].as_str().unwrap();
        assert!(
            client.starts_with(&format!("{}:", longpath::CLIENT_NEAR_EDGE)),
            "{line}"
        );
        let peer = line["peer"].as_str().unwrap();
        assert!(
            peer.starts_with(&format!("{}:", longpath::CLIENT)),
            "{line}"
        );
    })
    .await
}

/// With Fast Open on the long leg, the second connection's PROXY header and hello ride in
/// its SYN (the first fetches the cookie): the far side's kernel counts SYN data accepted.
#[tokio::test]
async fn fast_open_carries_the_header_and_hello_in_the_syn() {
    within(async {
        let path = path(Spec {
            edge: true,
            ..Spec::new(RTT)
        });
        let chain = chain(&path, false, true).await;
        for _ in 0..3 {
            assert!(call(&path, &chain).await, "the reply did not arrive whole");
        }
        assert!(tcp_ext(&path, Host::Relay, "TCPFastOpenPassive") >= 2);
        assert!(tcp_ext(&path, Host::Edge, "TCPFastOpenActive") >= 2);
    })
    .await
}

/// A path that drops SYNs with data: every call still completes, the kernel falling back
/// to a plain SYN after its timeout, and no data in a SYN reached the far side.
#[tokio::test]
async fn fast_open_survives_a_path_that_drops_syn_data() {
    within(async {
        let path = path(Spec {
            edge: true,
            drop_syn_data: true,
            ..Spec::new(RTT)
        });
        let chain = chain(&path, false, true).await;
        for _ in 0..3 {
            assert!(call(&path, &chain).await, "a call failed");
        }
        assert_eq!(tcp_ext(&path, Host::Relay, "TCPFastOpenPassive"), 0);
        assert!(path.up.lost.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    })
    .await
}
