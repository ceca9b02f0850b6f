//! An edge relay near the clients with ready connections to the far relay: real TLS
//! through both relays (processes), and the far side's wait for an edge's header
//! (in-process, on the paused clock).
//!
//! Between the edge and the far relay sits a forwarder of the test's own, which numbers the
//! connections it accepts and notes which carried bytes: that is how a test sees that a
//! client rode a connection made before it came, and how a far relay restarts behind a
//! fixed address.

mod common;

use common::traffic::{SMALL_REQUEST, exchange, serve_upstream};
use common::{RelayProcess, Upstream, http_get, pki};
use serde_json::json;
use snirelay::lifecycle::Started;
use snirelay::lifecycle::shutdown::Stopper;
use snirelay::state::Relay;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

const NAME: &str = "a.example.com";
/// The client's own address, so the far relay's line can be seen to name it.
const CLIENT: &str = "127.0.0.5";

/// A TCP forwarder standing where the far relay's address would be.
struct Forwarder {
    addr: SocketAddr,
    target: watch::Sender<SocketAddr>,
    /// Connections accepted so far.
    accepted: watch::Receiver<usize>,
    /// The numbers of the connections that carried a byte from the edge.
    carried: Arc<Mutex<Vec<usize>>>,
}

impl Forwarder {
    async fn start(target: SocketAddr) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (target, targets) = watch::channel(target);
        let (count, accepted) = watch::channel(0);
        let carried = Arc::new(Mutex::new(Vec::new()));
        let noted = carried.clone();
        tokio::spawn(async move {
            for number in 0.. {
                let (mut edge, _) = listener.accept().await.unwrap();
                let to = *targets.borrow();
                let noted = noted.clone();
                tokio::spawn(async move {
                    let Ok(mut far) = TcpStream::connect(to).await else {
                        return;
                    };
                    let (mut mine, mut theirs) = ([0u8; 1], [0u8; 1]);
                    let n = tokio::select! {
                        n = edge.peek(&mut mine) => n.unwrap_or(0),
                        _ = far.peek(&mut theirs) => 0,
                    };
                    if n > 0 {
                        noted.lock().unwrap().push(number);
                    }
                    let _ = tokio::io::copy_bidirectional(&mut edge, &mut far).await;
                });
                count.send_replace(number + 1);
            }
        });
        Forwarder {
            addr,
            target,
            accepted,
            carried,
        }
    }

    fn accepted(&self) -> usize {
        *self.accepted.borrow()
    }

    async fn until_accepted(&mut self, n: usize) {
        self.accepted.wait_for(|&got| got >= n).await.unwrap();
    }
}

/// A far relay taking PROXY v2 headers from loopback (the forwarder), waiting a minute
/// for them, and sending NAME to `upstream`.
async fn far_relay(upstream: SocketAddr) -> RelayProcess {
    let config = json!({
        "listen": [{
            "addr": "127.0.0.1:0",
            "proxy_protocol": "v2",
            "trusted_proxies": ["127.0.0.0/8"],
            "proxy_header_wait_s": 60
        }],
        "admin": "127.0.0.1:0",
        "allow": [{ "name": NAME, "upstream": upstream.to_string() }],
        "timeouts": { "hello_ms": 5000, "drain_s": 1 }
    });
    RelayProcess::start_with(config, &[]).await
}

/// An edge relay with a pool of `size` to `far`, connections retired after `max_idle_s`.
async fn edge_relay(far: SocketAddr, size: usize, max_idle_s: u64) -> RelayProcess {
    edge_relay_to(&far.to_string(), size, max_idle_s, &[]).await
}

/// [`edge_relay`] to `far` as written (an address or a name), with `args` for the relay.
async fn edge_relay_to(far: &str, size: usize, max_idle_s: u64, args: &[&str]) -> RelayProcess {
    let config = json!({
        "listen": ["127.0.0.1:0"],
        "admin": "127.0.0.1:0",
        "pools": [{ "upstream": far, "size": size, "max_idle_s": max_idle_s }],
        "allow": [{ "name": NAME, "upstream": far, "send_proxy": "v2" }],
        "timeouts": { "hello_ms": 5000, "drain_s": 1 }
    });
    RelayProcess::start_with(config, args).await
}

/// The value of `series` (a whole series name with its labels) in `admin`'s /metrics.
async fn metric(admin: &str, series: &str) -> u64 {
    let (_, text) = http_get(admin, "/metrics").await;
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// Waits until `series` in `admin`'s /metrics reads `want`.
async fn until_metric(admin: &str, series: &str, want: u64) {
    while metric(admin, series).await != want {
        // The poll interval of a scrape, not a sleep that orders events.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An upstream for NAME, and its PKI.
async fn upstream() -> (SocketAddr, Arc<common::Pki>) {
    let pki = Arc::new(pki(&[NAME]));
    let upstream = Upstream::bind("127.0.0.1").await;
    let addr = upstream.addr;
    let serving = pki.clone();
    tokio::spawn(async move {
        let (big, _) = tokio::sync::mpsc::unbounded_channel();
        serve_upstream(upstream, &serving, big).await
    });
    (addr, pki)
}

fn pool_series(name: &str, far: impl std::fmt::Display) -> String {
    format!("snirelay_{name}{{upstream=\"{far}\"}}")
}

#[tokio::test]
async fn a_client_through_edge_and_far_relays_rides_a_ready_connection() {
    common::within(async {
        let (upstream, pki) = upstream().await;
        let mut far = far_relay(upstream).await;
        let forwarder = Forwarder::start(far.addr()).await;
        let mut edge = edge_relay(forwarder.addr, 2, 30).await;
        let admin = edge.admin_addr().await;
        until_metric(&admin, &pool_series("pool_ready", forwarder.addr), 2).await;
        let made_before = forwarder.accepted();
        assert_eq!(made_before, 2);

        assert!(exchange(edge.addr(), CLIENT, NAME, &pki, SMALL_REQUEST).await);

        let line = edge.next_connection().await;
        assert_eq!(line["outcome"], "forwarded", "{line}");
        assert_eq!(line["pooled"], true, "{line}");
        let line = far.next_connection().await;
        assert_eq!(line["outcome"], "forwarded", "{line}");
        assert_eq!(line["sni"], NAME, "{line}");
        let client = line["client"].as_str().unwrap();
        assert!(client.starts_with(&format!("{CLIENT}:")), "{line}");
        let carried = forwarder.carried.lock().unwrap().clone();
        assert_eq!(carried.len(), 1, "{carried:?}");
        assert!(
            carried[0] < made_before,
            "{carried:?} rode a new connection"
        );
        let used = pool_series("pool_used_total", forwarder.addr);
        assert_eq!(metric(&admin, &used).await, 1);
        let missed = pool_series("pool_misses_total", forwarder.addr);
        assert_eq!(metric(&admin, &missed).await, 0);
    })
    .await
}

/// A pool to a far relay given by name, resolved as a pinned rule's upstream is (here
/// through a `--resolve` pin).
#[tokio::test]
async fn a_pool_reaches_a_far_relay_given_by_name() {
    common::within(async {
        let (upstream, pki) = upstream().await;
        let relay_far = far_relay(upstream).await;
        let forwarder = Forwarder::start(relay_far.addr()).await;
        let far = "far.example.net:443";
        let pin = format!("far.example.net={}", forwarder.addr);
        let mut edge = edge_relay_to(far, 2, 30, &["--resolve", &pin]).await;
        let admin = edge.admin_addr().await;
        until_metric(&admin, &pool_series("pool_ready", far), 2).await;
        assert!(exchange(edge.addr(), CLIENT, NAME, &pki, SMALL_REQUEST).await);
        let line = edge.next_connection().await;
        assert_eq!(line["pooled"], true, "{line}");
        assert_eq!(line["upstream"], forwarder.addr.to_string(), "{line}");
        let carried = forwarder.carried.lock().unwrap().clone();
        assert!(carried.len() == 1 && carried[0] < 2, "{carried:?}");
    })
    .await
}

/// The far relay dies with the pool full and a new one takes its place: no request started
/// once it listens fails, and the pool fills again.
#[tokio::test]
async fn a_far_relay_restart_fails_no_request_started_after_it_is_back() {
    common::within(async {
        let (upstream, pki) = upstream().await;
        let far = far_relay(upstream).await;
        let mut forwarder = Forwarder::start(far.addr()).await;
        let mut edge = edge_relay(forwarder.addr, 4, 30).await;
        let admin = edge.admin_addr().await;
        let ready = pool_series("pool_ready", forwarder.addr);
        until_metric(&admin, &ready, 4).await;

        far.signal("KILL");
        assert!(!far.wait().await.success());
        let far = far_relay(upstream).await;
        forwarder.target.send_replace(far.addr());

        let mut failed = 0;
        for _ in 0..20 {
            if !exchange(edge.addr(), CLIENT, NAME, &pki, SMALL_REQUEST).await {
                failed += 1;
            }
        }
        assert_eq!(failed, 0, "requests failed after the far relay was back");
        // Healthy again: full, and serving from ready connections made since.
        until_metric(&admin, &ready, 4).await;
        let before = forwarder.accepted();
        forwarder.until_accepted(before).await;
        let used = pool_series("pool_used_total", forwarder.addr);
        let used_before = metric(&admin, &used).await;
        assert!(exchange(edge.addr(), CLIENT, NAME, &pki, SMALL_REQUEST).await);
        assert_eq!(metric(&admin, &used).await, used_before + 1);
        drop(far);
    })
    .await
}

/// Ready connections are replaced at their idle age, and the far relay counts the ones it
/// saw close unused without a log line each.
#[tokio::test]
async fn ready_connections_retire_at_their_idle_age_unlogged_by_the_far_relay() {
    common::within(async {
        let (upstream, _pki) = upstream().await;
        let mut far = far_relay(upstream).await;
        let far_admin = far.admin_addr().await;
        let mut forwarder = Forwarder::start(far.addr()).await;
        let _edge = edge_relay(forwarder.addr, 2, 1).await;
        forwarder.until_accepted(4).await;
        let unused = "snirelay_connections_total{outcome=\"unused\",reason=\"pool_unused\"}";
        while metric(&far_admin, unused).await < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(forwarder.carried.lock().unwrap().is_empty());
    })
    .await
}

/// A far relay in-process: one listener taking PROXY headers from `trusted`, waiting
/// `header_wait_s` for them when given, with a 1 s hello deadline and no drain.
async fn far_trusting(dir: &std::path::Path, trusted: &str, header_wait_s: Option<u64>) -> Started {
    let mut listener = json!({
        "addr": "127.0.0.1:0",
        "proxy_protocol": "v2",
        "trusted_proxies": [trusted]
    });
    if let Some(wait) = header_wait_s {
        listener["proxy_header_wait_s"] = wait.into();
    }
    let text = json!({
        "listen": [listener],
        "allow": [NAME],
        "timeouts": { "hello_ms": 1000, "drain_s": 0 }
    })
    .to_string();
    common::start_in_process(dir, &text).await
}

/// [`far_trusting`] loopback.
async fn far_in_process(dir: &std::path::Path, header_wait_s: Option<u64>) -> Started {
    far_trusting(dir, "127.0.0.0/8", header_wait_s).await
}

/// How many connections ended as `outcome` with `reason`.
fn ended(relay: &Relay, outcome: &str, reason: &str) -> u64 {
    let text = relay.metrics().render(relay.counters(), false);
    let series =
        format!("snirelay_connections_total{{outcome=\"{outcome}\",reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0, |n| n.parse().unwrap())
}

/// Serves `started`, connects a client that sends nothing yet, and pauses the clock once
/// the relay has admitted it.
async fn silent_client(started: Started) -> (Arc<Relay>, Stopper, TcpStream) {
    let addr = started.addrs()[0];
    let relay = started.relay().clone();
    let stopper = started.stopper();
    tokio::spawn(started.serve());
    let client = TcpStream::connect(addr).await.unwrap();
    while relay.counters().active() == 0 {
        tokio::task::yield_now().await;
    }
    tokio::time::pause();
    (relay, stopper, client)
}

/// Waits for the relay to close `client`.
async fn closed(client: &mut TcpStream) {
    let mut rest = Vec::new();
    let _ = client.read_to_end(&mut rest).await;
}

/// Whether `elapsed` is `expected` on the paused clock (timers round up to a millisecond).
fn took(elapsed: Duration, expected: Duration) -> bool {
    (expected..expected + Duration::from_millis(3)).contains(&elapsed)
}

#[tokio::test]
async fn a_trusted_edge_connection_waits_for_its_header_past_the_hello_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, _stopper, mut client) =
        silent_client(far_in_process(dir.path(), Some(60)).await).await;
    let start = Instant::now();
    closed(&mut client).await;
    assert!(
        took(start.elapsed(), Duration::from_secs(60)),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(ended(&relay, "unused", "pool_unused"), 1);
    assert_eq!(ended(&relay, "rejected", "hello_timeout"), 0);
}

#[tokio::test]
async fn the_hello_deadline_starts_when_the_header_arrives() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let (relay, _stopper, mut client) =
        silent_client(far_in_process(dir.path(), Some(60)).await).await;
    tokio::time::sleep(Duration::from_secs(50)).await;
    let header = snirelay::proxy::encode(
        snirelay::proxy::Version::V2,
        "127.0.0.5:40000".parse().unwrap(),
        "127.0.0.1:443".parse().unwrap(),
    )
    .unwrap();
    client.write_all(&header).await.unwrap();
    let sent = Instant::now();
    closed(&mut client).await;
    assert!(
        took(sent.elapsed(), Duration::from_secs(1)),
        "{:?}",
        sent.elapsed()
    );
    assert_eq!(ended(&relay, "rejected", "hello_timeout"), 1);
}

#[tokio::test]
async fn without_a_header_wait_a_silent_connection_gets_the_hello_deadline_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, _stopper, mut client) = silent_client(far_in_process(dir.path(), None).await).await;
    let start = Instant::now();
    closed(&mut client).await;
    assert!(
        took(start.elapsed(), Duration::from_secs(1)),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(ended(&relay, "rejected", "hello_timeout"), 1);
    assert_eq!(ended(&relay, "unused", "pool_unused"), 0);
}

/// Stopping: the edge's idle connections go at once, so the edge reconnects to whoever
/// accepts now, instead of holding the drain open.
#[tokio::test]
async fn a_relay_that_stops_accepting_lets_idle_edge_connections_go_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, stopper, mut client) =
        silent_client(far_in_process(dir.path(), Some(60)).await).await;
    let start = Instant::now();
    stopper.signal("SIGTERM");
    closed(&mut client).await;
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(ended(&relay, "unused", "pool_unused"), 1);
    assert_eq!(ended(&relay, "rejected", "shutdown"), 0);
}

/// The wait is for trusted edges only: anyone else is closed before a byte is read, as on
/// any PROXY listener.
#[tokio::test]
async fn a_peer_the_far_relay_does_not_trust_gets_no_wait() {
    let dir = tempfile::tempdir().unwrap();
    let started = far_trusting(dir.path(), "127.0.0.2/32", Some(60)).await;
    let addr = started.addrs()[0];
    let relay = started.relay().clone();
    tokio::spawn(started.serve());
    let mut client = TcpStream::connect(addr).await.unwrap();
    tokio::time::pause();
    let start = Instant::now();
    closed(&mut client).await;
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(ended(&relay, "rejected", "proxy_untrusted"), 1);
    assert_eq!(ended(&relay, "unused", "pool_unused"), 0);
}
