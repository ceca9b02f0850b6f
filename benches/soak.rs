//! Soak: normal traffic mixed with every hostile pattern of issue 5, against the real binary,
//! for a set time, then an audit.
//!
//! `cargo bench --bench soak -- [--seconds 60]`
//!
//! Behaviours, each in its own loop until the time is up:
//! - normal clients: hello + 0-2 MiB of random bytes, half-close, read the echo to the end and
//!   compare length and checksum both ways;
//! - slowloris: silent, half a hello, one byte every 500 ms (cut at `hello_ms`);
//! - garbage: random bytes, HTTP requests, wrong record types, oversize lengths;
//! - refused names (expect the `unrecognized_name` alert, then EOF);
//! - upstreams that reset after the hello, never read, or close mid-transfer;
//! - clients that reset mid-transfer or never read.
//!
//! The audit fails (exit 1) on: a normal transfer not intact, a relay that died or
//! panicked, anything reaching an upstream that should not, a connection the log does not
//! account for exactly once (its own line with a reason, or a rejection counted in a
//! rate-limit summary), open descriptors not back to the baseline, or RSS more than 32 MiB
//! above it.

#[path = "../tests/common/hellogen.rs"]
#[allow(dead_code)]
mod hellogen;

use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ECHO: &str = "echo.soak.test";
const RESETS: &str = "reset.soak.test";
const STALLS: &str = "stall.soak.test";
const CLOSES: &str = "close.soak.test";
const REFUSED: &str = "refused.soak.test";
const ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];
const HELLO_MS: u64 = 2000;
/// Far past anything `hello_ms`, `drain` or a stalled peer should take: only a hang gets here.
const PATIENCE: Duration = Duration::from_secs(30);
const RSS_SLACK: u64 = 32 << 20;

/// xorshift: reproducible bytes without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// FNV-1a over a stream, so neither side has to keep what it sent.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Sum {
    len: u64,
    hash: u64,
}

impl Sum {
    fn new() -> Sum {
        Sum {
            len: 0,
            hash: 0xcbf2_9ce4_8422_2325,
        }
    }

    fn add(&mut self, bytes: &[u8]) {
        self.len += bytes.len() as u64;
        for b in bytes {
            self.hash = (self.hash ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
}

/// What each upstream saw: connections, and any whose first bytes were not the hello sent
/// for that upstream's name (which would mean the relay forwarded something it should not).
#[derive(Default)]
struct Seen {
    accepted: AtomicU64,
    wrong_hello: AtomicU64,
}

#[derive(Clone, Copy)]
enum Behaviour {
    Echo,
    ResetAfterHello,
    NeverRead,
    CloseMidTransfer,
}

async fn upstream(behaviour: Behaviour, name: &'static str, seen: Arc<Seen>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hello = hellogen::hello_for(name);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            seen.accepted.fetch_add(1, Ordering::Relaxed);
            let (seen, hello) = (seen.clone(), hello.clone());
            tokio::spawn(async move {
                if let Behaviour::NeverRead = behaviour {
                    // Held until the relay gives up on it; unread bytes make the close a reset.
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    return;
                }
                let mut head = vec![0u8; hello.len()];
                if conn.read_exact(&mut head).await.is_err() {
                    return;
                }
                if head != hello {
                    seen.wrong_hello.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                match behaviour {
                    Behaviour::Echo => {
                        let (mut r, mut w) = conn.split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                        let _ = w.shutdown().await;
                    }
                    Behaviour::ResetAfterHello => {
                        reset_on_drop(&conn);
                    }
                    Behaviour::CloseMidTransfer => {
                        let _ = conn.write_all(&[9u8; 300 * 1024]).await;
                    }
                    Behaviour::NeverRead => unreachable!(),
                }
            });
        }
    });
    addr
}

/// Linger zero: dropping the socket sends RST instead of FIN (it never blocks).
fn reset_on_drop(conn: &TcpStream) {
    let _ = socket2::SockRef::from(conn).set_linger(Some(Duration::ZERO));
}

/// How a client's run went: its kind, and what was wrong if anything.
struct Outcome {
    kind: &'static str,
    problem: Option<String>,
}

fn ok(kind: &'static str) -> Outcome {
    Outcome {
        kind,
        problem: None,
    }
}

fn bad(kind: &'static str, problem: impl Into<String>) -> Outcome {
    Outcome {
        kind,
        problem: Some(problem.into()),
    }
}

/// Reads until EOF or an error; a reset counts as a close here.
async fn read_to_close(conn: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout(PATIENCE, conn.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    got
}

async fn normal(relay: SocketAddr, seed: u64) -> Outcome {
    let kind = "normal";
    let mut rng = Rng(seed);
    let size = rng.below(2 << 20) as usize;
    let Ok(conn) = TcpStream::connect(relay).await else {
        return bad(kind, "connect failed");
    };
    let (mut r, mut w) = conn.into_split();
    let writer = tokio::spawn(async move {
        let mut sent = Sum::new();
        let hello = hellogen::hello_for(ECHO);
        w.write_all(&hello).await?;
        let mut left = size;
        while left > 0 {
            let chunk = rng.bytes(left.min(64 * 1024));
            w.write_all(&chunk).await?;
            sent.add(&chunk);
            left -= chunk.len();
        }
        w.shutdown().await?;
        std::io::Result::Ok(sent)
    });
    let mut got = Sum::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(PATIENCE, r.read(&mut buf)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => got.add(&buf[..n]),
            Ok(Err(e)) => return bad(kind, format!("read failed after {} bytes: {e}", got.len)),
            Err(_) => return bad(kind, "hung"),
        }
    }
    match writer.await {
        Ok(Ok(sent)) if sent == got => ok(kind),
        Ok(Ok(sent)) => bad(kind, format!("sent {sent:?}, echoed {got:?}")),
        Ok(Err(e)) => bad(kind, format!("write failed: {e}")),
        Err(e) => bad(kind, format!("writer panicked: {e}")),
    }
}

async fn slowloris(relay: SocketAddr, style: u64) -> Outcome {
    let kind = "slowloris";
    let Ok(mut conn) = TcpStream::connect(relay).await else {
        return bad(kind, "connect failed");
    };
    let hello = hellogen::hello_for(ECHO);
    let started = Instant::now();
    match style % 3 {
        0 => {}
        1 => {
            let _ = conn.write_all(&hello[..hello.len() / 2]).await;
        }
        _ => {
            // One byte at a time until the relay cuts us off.
            for byte in &hello {
                if conn.write_all(&[*byte]).await.is_err() {
                    break;
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = conn.readable() => break,
                }
            }
        }
    }
    let rest = read_to_close(&mut conn).await;
    if !rest.is_empty() {
        return bad(kind, "got bytes back");
    }
    if started.elapsed() > Duration::from_millis(HELLO_MS) + PATIENCE {
        return bad(kind, "not cut at the hello deadline");
    }
    ok(kind)
}

async fn garbage(relay: SocketAddr, seed: u64) -> Outcome {
    let kind = "garbage";
    let mut rng = Rng(seed);
    let bytes = match rng.below(5) {
        0 => b"GET / HTTP/1.1\r\nHost: echo.soak.test\r\n\r\n".to_vec(),
        1 => hellogen::record(23, &rng.bytes(200)),
        2 => vec![22, 3, 1, 0xff, 0xff],
        3 => vec![0x80, 0x40, 0x01, 0x03, 0x01],
        _ => {
            let n = 1 + rng.below(4096) as usize;
            rng.bytes(n)
        }
    };
    let Ok(mut conn) = TcpStream::connect(relay).await else {
        return bad(kind, "connect failed");
    };
    let _ = conn.write_all(&bytes).await;
    let _ = conn.shutdown().await;
    let rest = read_to_close(&mut conn).await;
    // A random prefix can parse as the start of a hello: then the relay waits for the rest
    // and cuts it at the deadline. Either way nothing comes back but possibly an alert.
    if !rest.is_empty() && rest != ALERT {
        return bad(kind, format!("got {} bytes back", rest.len()));
    }
    ok(kind)
}

async fn refused(relay: SocketAddr) -> Outcome {
    let kind = "refused";
    let Ok(mut conn) = TcpStream::connect(relay).await else {
        return bad(kind, "connect failed");
    };
    let _ = conn.write_all(&hellogen::hello_for(REFUSED)).await;
    let rest = read_to_close(&mut conn).await;
    if rest != ALERT {
        return bad(kind, format!("expected the alert, got {rest:?}"));
    }
    ok(kind)
}

/// A client for one of the misbehaving upstreams: it must get a close or reset, never a hang.
async fn to_bad_upstream(relay: SocketAddr, name: &'static str) -> Outcome {
    let kind = "bad_upstream";
    let Ok(mut conn) = TcpStream::connect(relay).await else {
        return bad(kind, "connect failed");
    };
    let _ = conn.write_all(&hellogen::hello_for(name)).await;
    let chunk = vec![1u8; 64 * 1024];
    // Writes until the relay pushes back or the connection breaks, reading all the while.
    let (mut r, mut w) = conn.split();
    let reader = async {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = r.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    let writer = async {
        for _ in 0..64 {
            if w.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = w.shutdown().await;
        std::future::pending::<()>().await;
    };
    match tokio::time::timeout(PATIENCE, async {
        tokio::select! {
            () = reader => {}
            () = writer => {}
        }
    })
    .await
    {
        Ok(()) => ok(kind),
        Err(_) => bad(kind, format!("{name}: no close or reset")),
    }
}

/// Resets mid-transfer, or stops reading, on an otherwise normal echo connection.
async fn rude_client(relay: SocketAddr, never_read: bool) -> Outcome {
    let kind = "rude_client";
    let Ok(mut conn) = TcpStream::connect(relay).await else {
        return bad(kind, "connect failed");
    };
    let _ = conn.write_all(&hellogen::hello_for(ECHO)).await;
    let _ = conn.write_all(&[5u8; 1024]).await;
    // One echoed byte proves the upstream is connected before we misbehave.
    let mut first = [0u8; 1];
    if tokio::time::timeout(PATIENCE, conn.read_exact(&mut first))
        .await
        .is_err()
    {
        return bad(kind, "no echo");
    }
    if never_read {
        let chunk = vec![6u8; 64 * 1024];
        let _ = tokio::time::timeout(Duration::from_millis(300), async {
            loop {
                if conn.write_all(&chunk).await.is_err() {
                    break;
                }
            }
        })
        .await;
    }
    reset_on_drop(&conn);
    ok(kind)
}

/// Runs `client` in a loop with `parallel` copies until `until`, counting connections.
async fn repeat<F, Fut>(
    parallel: usize,
    until: Instant,
    outcomes: Arc<std::sync::Mutex<Vec<Outcome>>>,
    client: F,
) where
    F: Fn(u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Outcome> + Send + 'static,
{
    let tasks: Vec<_> = (0..parallel as u64)
        .map(|lane| {
            let (client, outcomes) = (client.clone(), outcomes.clone());
            tokio::spawn(async move {
                let mut i = lane;
                while Instant::now() < until {
                    let outcome = client(i).await;
                    outcomes.lock().unwrap().push(outcome);
                    i += parallel as u64;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

fn proc_status(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// The relay's descriptors once the warm-up's connections have closed: the lowest count
/// over a second.
async fn quiet_fds(pid: u32) -> usize {
    let mut lowest = open_fds(pid);
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        lowest = lowest.min(open_fds(pid));
    }
    lowest
}

/// Waits until the relay holds no more descriptors than `baseline` (connections still closing,
/// e.g. alert lingers, release theirs within seconds).
async fn settle(pid: u32, baseline: usize) -> usize {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = open_fds(pid);
        if now <= baseline || Instant::now() > deadline {
            return now;
        }
        // Polling /proc has no notification; this is the poll interval, not ordering.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn start_relay(dir: &std::path::Path, upstreams: &[(&str, SocketAddr)]) -> (Child, SocketAddr) {
    let allow: Vec<Value> = upstreams
        .iter()
        .map(|(name, addr)| serde_json::json!({"name": name, "upstream": addr.to_string()}))
        .collect();
    let config = serde_json::json!({
        "allow": allow,
        "timeouts": {"hello_ms": HELLO_MS, "connect_ms": 2000, "idle_s": 10, "drain_s": 5},
        "max_connections": 5000,
        "max_connections_per_client": 5000,
        "max_pending_hellos": 2000,
    });
    let path = dir.join("rules.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let log = std::fs::File::create(dir.join("relay.log")).unwrap();
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let child = Command::new(env!("CARGO_BIN_EXE_snirelay"))
        .args(["run", "--log-format", "json", "--listen", &addr.to_string()])
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    (child, addr)
}

/// The message of the line that sums up rejection lines held back by the rate limit.
const SUPPRESSED: &str = "connection lines suppressed; the metrics count every connection";

/// The relay's log: connections by outcome and reason (from their lines, and from the
/// summaries of rejection lines held back), and any line that is not JSON (a panic message).
fn read_log(path: &std::path::Path) -> (BTreeMap<String, u64>, u64, Vec<String>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut reasons = BTreeMap::new();
    let (mut lines, mut strange) = (0, Vec::new());
    for line in text.lines() {
        match serde_json::from_str::<Value>(line) {
            Ok(v) if v["message"] == "connection" => {
                lines += 1;
                let key = format!(
                    "{}/{}",
                    v["outcome"].as_str().unwrap_or("?"),
                    v["reason"].as_str().unwrap_or("MISSING")
                );
                *reasons.entry(key).or_insert(0) += 1;
            }
            // Rejection lines past the rate per reason, summed up once a second.
            Ok(v) if v["message"] == SUPPRESSED => {
                let n = v["suppressed"].as_u64().unwrap_or(0);
                lines += n;
                let key = format!(
                    "rejected/{} (summed up)",
                    v["reason"].as_str().unwrap_or("MISSING")
                );
                *reasons.entry(key).or_insert(0) += n;
            }
            Ok(_) => {}
            Err(_) => strange.push(line.to_owned()),
        }
    }
    (reasons, lines, strange)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds: u64 = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let dir = tempfile::tempdir().unwrap();
    let seen: Vec<Arc<Seen>> = (0..4).map(|_| Arc::default()).collect();
    let upstreams = [
        (ECHO, upstream(Behaviour::Echo, ECHO, seen[0].clone()).await),
        (
            RESETS,
            upstream(Behaviour::ResetAfterHello, RESETS, seen[1].clone()).await,
        ),
        (
            STALLS,
            upstream(Behaviour::NeverRead, STALLS, seen[2].clone()).await,
        ),
        (
            CLOSES,
            upstream(Behaviour::CloseMidTransfer, CLOSES, seen[3].clone()).await,
        ),
    ];
    let (mut child, relay) = start_relay(dir.path(), &upstreams);
    let pid = child.id();
    let mut listening = false;
    for _ in 0..500 {
        if TcpStream::connect(relay).await.is_ok() {
            listening = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(listening, "the relay did not start listening on {relay}");

    // Warm-up, so the baseline includes the runtime's threads and the allocator's pools.
    let outcomes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let warm_until = Instant::now() + Duration::from_secs(2);
    repeat(8, warm_until, outcomes.clone(), move |i| {
        normal(relay, i + 1)
    })
    .await;
    let fds_base = quiet_fds(pid).await;
    let rss_base = proc_status(pid, "VmRSS:").unwrap_or(0);
    let warm = outcomes.lock().unwrap().len();
    eprintln!("warm-up: {warm} transfers; baseline {fds_base} fds, {rss_base} bytes RSS");

    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let o = &outcomes;
    tokio::join!(
        repeat(8, until, o.clone(), move |i| normal(relay, 0x9e37_79b9 + i)),
        repeat(300, until, o.clone(), move |i| slowloris(relay, i)),
        repeat(4, until, o.clone(), move |i| garbage(relay, 0x51ed + i)),
        repeat(2, until, o.clone(), move |_| refused(relay)),
        repeat(2, until, o.clone(), move |i| to_bad_upstream(
            relay,
            [RESETS, STALLS, CLOSES][(i % 3) as usize]
        )),
        repeat(2, until, o.clone(), move |i| rude_client(relay, i % 2 == 0)),
    );
    let elapsed = started.elapsed();
    let rss_peak = proc_status(pid, "VmHWM:").unwrap_or(0);
    let fds_end = settle(pid, fds_base).await;
    let rss_end = proc_status(pid, "VmRSS:").unwrap_or(0);
    let alive = child.try_wait().ok().flatten().is_none();
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();

    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    let mut by_kind: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let mut problems = Vec::new();
    for o in &outcomes {
        let entry = by_kind.entry(o.kind).or_default();
        entry.0 += 1;
        if let Some(p) = &o.problem {
            entry.1 += 1;
            if problems.len() < 20 {
                problems.push(format!("{}: {p}", o.kind));
            }
        }
    }
    let (reasons, logged, strange) = read_log(&dir.path().join("relay.log"));
    // Every client connection leaves one line, and so does the readiness probe.
    let connections = outcomes.len() as u64 + 1;
    let echo_clients =
        by_kind.get("normal").map_or(0, |k| k.0) + by_kind.get("rude_client").map_or(0, |k| k.0);
    let bad_upstream_clients = by_kind.get("bad_upstream").map_or(0, |k| k.0);
    let to_upstreams: u64 = seen[1..]
        .iter()
        .map(|s| s.accepted.load(Ordering::Relaxed))
        .sum();
    let wrong: u64 = seen
        .iter()
        .map(|s| s.wrong_hello.load(Ordering::Relaxed))
        .sum();

    println!(
        "\nsoak: {:.0} s, {connections} connections ({warm} in the warm-up, 1 readiness probe)\n",
        elapsed.as_secs_f64()
    );
    println!("| client kind | runs | not as expected |\n|---|---|---|");
    for (kind, (runs, failed)) in &by_kind {
        println!("| {kind} | {runs} | {failed} |");
    }
    println!("\n| relay log: outcome/reason | lines |\n|---|---|");
    for (reason, n) in &reasons {
        println!("| {reason} | {n} |");
    }
    println!(
        "\nrelay: alive at the end: {alive}; open fds {fds_base} -> {fds_end}; RSS {} -> peak {} -> {} KiB",
        rss_base / 1024,
        rss_peak / 1024,
        rss_end / 1024
    );
    println!(
        "upstreams: echo accepted {} (echo clients {echo_clients}), misbehaving ones {to_upstreams} \
         (their clients {bad_upstream_clients}), wrong first bytes {wrong}",
        seen[0].accepted.load(Ordering::Relaxed)
    );

    let mut failures = problems;
    if !alive {
        failures.push("the relay died".into());
    }
    if !strange.is_empty() {
        failures.push(format!(
            "non-JSON lines in the relay's log (a panic?): {:?}",
            &strange[..strange.len().min(5)]
        ));
    }
    if wrong > 0 {
        failures.push(format!(
            "{wrong} upstream connections began with the wrong bytes"
        ));
    }
    if seen[0].accepted.load(Ordering::Relaxed) != echo_clients
        || to_upstreams != bad_upstream_clients
    {
        failures.push("upstream connections do not match the clients allowed to reach them".into());
    }
    if logged != connections {
        failures.push(format!(
            "{logged} connection log lines for {connections} connections"
        ));
    }
    if reasons.keys().any(|k| k.ends_with("MISSING")) {
        failures.push("a connection was logged without a reason".into());
    }
    if fds_end > fds_base {
        failures.push(format!("open fds {fds_end}, baseline {fds_base}"));
    }
    if rss_end > rss_base + RSS_SLACK {
        failures.push(format!("RSS {rss_end} bytes, baseline {rss_base}"));
    }
    if failures.is_empty() {
        println!("\nsoak passed");
    } else {
        println!("\nsoak FAILED:");
        for f in &failures {
            println!("  {f}");
        }
        std::process::exit(1);
    }
}
