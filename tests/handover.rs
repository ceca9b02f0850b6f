//! Upgrades that end no connection: the old relay hands its live connections (sockets,
//! buffered bytes, pipes with bytes in them, counters, log records) to the new one, which
//! carries on. Every byte is checked end to end: each direction is a numbered stream, so
//! a byte lost, repeated or out of order shows as a mismatch at its offset.

mod common;

use common::hellogen::hello_for;
use common::{RelayProcess, http_get, pinned_config};
use serde_json::Value;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

const NAME: &str = "a.example.com";

/// Byte `offset` of the numbered stream `seed`.
fn byte_at(seed: u64, offset: u64) -> u8 {
    let x = (offset.wrapping_add(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
        .wrapping_mul(0xD6E8_FEB8_6659_FD93);
    (x >> 32) as u8
}

fn fill(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| byte_at(seed, offset + i)).collect()
}

/// Checks `bytes` are the stream `seed` from `offset`; says where they are not.
fn check(seed: u64, offset: u64, bytes: &[u8]) -> Result<(), String> {
    match (0..bytes.len()).find(|&i| bytes[i] != byte_at(seed, offset + i as u64)) {
        None => Ok(()),
        Some(i) => Err(format!(
            "stream {seed:x}: wrong byte at offset {}",
            offset + i as u64
        )),
    }
}

/// What a connection does.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// 256-byte requests, 1 KiB answers, back to back.
    Exchange,
    /// 64 KiB writes from the upstream as fast as the client reads (through splice), a
    /// 64-byte word back per 64 KiB.
    Bulk,
    /// One exchange at the very end.
    Idle,
    /// The upstream writes [`STALLED_MIB`] the client reads only at the end: the relay holds
    /// bytes (in a pipe, and in both sockets) across every upgrade.
    Stalled,
    /// The client sends its request and its FIN at once; as much as [`Kind::Stalled`] comes
    /// back, read at the end.
    HalfClosed,
}

/// Far more than the relay's two sockets and its pipe hold while the client, its receive
/// buffer set small, reads nothing.
const STALLED_MIB: usize = 16;

const KINDS: [Kind; 5] = [
    Kind::Exchange,
    Kind::Bulk,
    Kind::Idle,
    Kind::Stalled,
    Kind::HalfClosed,
];

/// What one side moved: sent, received.
type Moved = (u64, u64);

/// The upstream's streams run from seed | 1, the client's from seed.
fn down(seed: u64) -> u64 {
    seed | 1
}

async fn read_checked(
    reader: &mut OwnedReadHalf,
    seed: u64,
    at: &mut u64,
    want: usize,
) -> Result<(), String> {
    let mut buf = vec![0u8; want];
    reader
        .read_exact(&mut buf)
        .await
        .map_err(|e| format!("stream {seed:x} at {at}: {e}"))?;
    check(seed, *at, &buf)?;
    *at += want as u64;
    Ok(())
}

/// Reads to the end of the stream, checking every byte.
async fn read_rest(
    reader: &mut OwnedReadHalf,
    seed: u64,
    at: &mut u64,
    progress: &Progress,
) -> Result<(), String> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader
            .read(&mut buf)
            .await
            .map_err(|e| format!("stream {seed:x} at {at}: {e}"))?;
        if n == 0 {
            return Ok(());
        }
        check(seed, *at, &buf[..n])?;
        *at += n as u64;
        progress.add(n);
    }
}

async fn write_stream(
    writer: &mut OwnedWriteHalf,
    seed: u64,
    at: &mut u64,
    len: usize,
) -> Result<(), String> {
    writer
        .write_all(&fill(seed, *at, len))
        .await
        .map_err(|e| format!("stream {seed:x} at {at}: {e}"))?;
    *at += len as u64;
    Ok(())
}

/// Bytes clients have received, and a wake-up for whoever waits on them.
#[derive(Default)]
struct Progress {
    bytes: AtomicU64,
    moved: Notify,
}

impl Progress {
    fn add(&self, n: usize) {
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        self.moved.notify_waiters();
    }

    /// Returns once `more` bytes have arrived since it was called.
    async fn more(&self, more: u64) {
        let from = self.bytes.load(Ordering::Relaxed);
        loop {
            let moved = self.moved.notified();
            if self.bytes.load(Ordering::Relaxed) >= from + more {
                return;
            }
            moved.await;
        }
    }
}

/// The client's side of one connection: the hello, its kind and seed, then its traffic
/// until `stop`, then its FIN and the rest of what comes. What it sent and received.
async fn client(
    relay: SocketAddr,
    kind: Kind,
    seed: u64,
    stop: CancellationToken,
    progress: Arc<Progress>,
    port: mpsc::UnboundedSender<(u16, u64)>,
) -> Result<Moved, String> {
    client_holding(relay, kind, seed, stop, progress, port, None).await
}

/// [`client`], sending only the first `n` bytes of its hello until `go`, where `hold` is
/// `(n, go)`.
async fn client_holding(
    relay: SocketAddr,
    kind: Kind,
    seed: u64,
    stop: CancellationToken,
    progress: Arc<Progress>,
    port: mpsc::UnboundedSender<(u16, u64)>,
    hold: Option<(usize, CancellationToken)>,
) -> Result<Moved, String> {
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    if matches!(kind, Kind::Stalled | Kind::HalfClosed) {
        // A fixed buffer, not one the kernel grows: the bytes wait in the relay.
        socket
            .set_recv_buffer_size(64 * 1024)
            .map_err(|e| e.to_string())?;
    }
    let stream = socket.connect(relay).await.map_err(|e| e.to_string())?;
    let _ = port.send((stream.local_addr().unwrap().port(), seed));
    let (mut reader, mut writer) = stream.into_split();
    let mut opening = hello_for(NAME);
    opening.push(KINDS.iter().position(|k| *k == kind).unwrap() as u8);
    opening.extend_from_slice(&seed.to_be_bytes());
    if let Some((first, go)) = hold {
        writer
            .write_all(&opening[..first])
            .await
            .map_err(|e| e.to_string())?;
        go.cancelled().await;
        opening.drain(..first);
    }
    writer
        .write_all(&opening)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sent, mut received) = (0, 0);
    match kind {
        Kind::Exchange => {
            while !stop.is_cancelled() {
                write_stream(&mut writer, seed, &mut sent, 256).await?;
                read_checked(&mut reader, down(seed), &mut received, 1024).await?;
                progress.add(1024);
            }
        }
        Kind::Bulk => loop {
            read_checked(&mut reader, down(seed), &mut received, 64 * 1024).await?;
            progress.add(64 * 1024);
            if stop.is_cancelled() {
                break;
            }
            write_stream(&mut writer, seed, &mut sent, 64).await?;
        },
        Kind::Idle | Kind::Stalled => stop.cancelled().await,
        Kind::HalfClosed => {
            write_stream(&mut writer, seed, &mut sent, 256).await?;
            writer.shutdown().await.map_err(|e| e.to_string())?;
            stop.cancelled().await;
        }
    }
    if kind == Kind::Idle {
        write_stream(&mut writer, seed, &mut sent, 256).await?;
        read_checked(&mut reader, down(seed), &mut received, 1024).await?;
    }
    if kind != Kind::HalfClosed {
        writer.shutdown().await.map_err(|e| e.to_string())?;
    }
    read_rest(&mut reader, down(seed), &mut received, &progress).await?;
    Ok((sent, received))
}

/// The upstream's side of one connection: what it sent and received, by seed.
async fn upstream_side(
    stream: TcpStream,
    accepted: mpsc::UnboundedSender<()>,
) -> Result<(u64, Moved), String> {
    let (mut reader, mut writer) = stream.into_split();
    let hello = hello_for(NAME);
    let mut opening = vec![0u8; hello.len() + 9];
    reader
        .read_exact(&mut opening)
        .await
        .map_err(|e| e.to_string())?;
    if opening[..hello.len()] != hello[..] {
        return Err("the hello arrived changed".into());
    }
    let kind = KINDS[opening[hello.len()] as usize];
    let seed = u64::from_be_bytes(opening[hello.len() + 1..].try_into().unwrap());
    let _ = accepted.send(());
    let (mut sent, mut received) = (0, 0);
    let ignore = Progress::default();
    match kind {
        Kind::Exchange | Kind::Idle => loop {
            let mut request = [0u8; 256];
            match reader.read_exact(&mut request).await {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e.to_string()),
            }
            check(seed, received, &request)?;
            received += 256;
            write_stream(&mut writer, down(seed), &mut sent, 1024).await?;
        },
        Kind::Bulk => {
            let done = CancellationToken::new();
            let reading = {
                let done = done.clone();
                async move {
                    let result = read_rest(&mut reader, seed, &mut received, &ignore).await;
                    done.cancel();
                    result.map(|()| received)
                }
            };
            // Whole writes only, so what was sent is counted: the client reads to the end.
            let writing = async {
                while !done.is_cancelled() {
                    write_stream(&mut writer, down(seed), &mut sent, 64 * 1024).await?;
                }
                Ok::<_, String>(())
            };
            let (read, written) = tokio::join!(reading, writing);
            written?;
            received = read?;
        }
        Kind::Stalled | Kind::HalfClosed => {
            // More than the client's small receive buffer, the relay's sockets and its pipe
            // hold between them.
            let writing = async {
                for _ in 0..STALLED_MIB {
                    write_stream(&mut writer, down(seed), &mut sent, 1 << 20).await?;
                }
                Ok::<_, String>(())
            };
            let reading = read_rest(&mut reader, seed, &mut received, &ignore);
            let (written, read) = tokio::join!(writing, reading);
            written?;
            read?;
        }
    }
    writer.shutdown().await.map_err(|e| e.to_string())?;
    Ok((seed, (sent, received)))
}

/// The sum of a family's samples in a `/metrics` text.
fn total(metrics: &str, family: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with(family)
                && (l[family.len()..].starts_with('{') || l[family.len()..].starts_with(' '))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// What each upstream side moved, by seed, as it ends.
type Ended = mpsc::UnboundedReceiver<Result<(u64, Moved), String>>;

/// One [`upstream_side`] per connection `listener` accepts: each announces itself once it
/// has the hello, and what it moved once it ends.
fn serve_upstream(listener: TcpListener) -> (mpsc::UnboundedReceiver<()>, Ended) {
    let (accepted_tx, accepted) = mpsc::unbounded_channel();
    let (ended_tx, ended) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (accepted, ended) = (accepted_tx.clone(), ended_tx.clone());
            tokio::spawn(async move { ended.send(upstream_side(stream, accepted).await) });
        }
    });
    (accepted, ended)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_connections_carry_on_across_three_upgrades_with_every_byte_in_order() {
    tokio::time::timeout(Duration::from_secs(240), async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut config = pinned_config(&[NAME], listener.local_addr().unwrap());
        config["admin"] = "127.0.0.1:0".into();
        config["timeouts"]["drain_s"] = 60.into();
        let (mut accepted, mut upstream_ended) = serve_upstream(listener);
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("upgrade.sock");
        let args = [
            "--listen",
            "127.0.0.1:0",
            "--upgrade-socket",
            socket.to_str().unwrap(),
        ];
        let mut relay = RelayProcess::start_with(config.clone(), &args).await;
        let addr = relay.addr();
        let admin = relay.admin_addr().await;

        let mix = [
            (Kind::Exchange, 100),
            (Kind::Bulk, 60),
            (Kind::Idle, 25),
            (Kind::Stalled, 10),
            (Kind::HalfClosed, 5),
        ];
        let stop = CancellationToken::new();
        let progress = Arc::new(Progress::default());
        let (port_tx, mut ports) = mpsc::unbounded_channel();
        let mut clients = Vec::new();
        for (kind, count) in mix {
            for i in 0..count {
                let seed =
                    ((KINDS.iter().position(|k| *k == kind).unwrap() as u64) << 40 | i << 8) & !1;
                let (stop, progress, port) = (stop.clone(), progress.clone(), port_tx.clone());
                clients.push((
                    kind,
                    seed,
                    tokio::spawn(client(addr, kind, seed, stop, progress, port)),
                ));
            }
        }
        let connections = clients.len();
        assert_eq!(connections, 200);
        for _ in 0..connections {
            accepted.recv().await.unwrap();
        }
        progress.more(1 << 20).await;

        let mut seen_metrics = Vec::new();
        for round in 1..=3 {
            let (_, before) = http_get(&admin, "/metrics").await;
            seen_metrics.push(before);
            let mut new = RelayProcess::start_with(config.clone(), &args).await;
            assert_eq!(new.addr(), addr, "round {round}");
            let taken = relay
                .next_message("upgrade: the new relay took every connection")
                .await;
            assert_eq!(taken["connections"], connections as u64, "round {round}");
            // The stalled connections' bytes went over in their pipes.
            assert!(
                taken["piped_bytes"].as_u64() > Some(0),
                "round {round}: {taken}"
            );
            new.next_message("upgrade: took over the old relay's connections")
                .await;
            assert!(
                relay.wait().await.success(),
                "round {round}: the old relay exits by itself"
            );
            assert_eq!(new.admin_addr().await, admin);
            let (_, after) = http_get(&admin, "/metrics").await;
            seen_metrics.push(after);
            // Traffic flows through the new relay.
            progress.more(1 << 20).await;
            relay = new;
        }

        stop.cancel();
        let mut clients_moved = HashMap::new();
        for (kind, seed, client) in clients {
            let moved = client
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
            clients_moved.insert(seed, (kind, moved));
        }
        let mut by_port = HashMap::new();
        while let Ok((port, seed)) = ports.try_recv() {
            by_port.insert(port, seed);
        }
        for _ in 0..connections {
            let (seed, (sent, received)) = upstream_ended.recv().await.unwrap().unwrap();
            let (kind, (client_sent, client_received)) = clients_moved[&seed];
            assert_eq!(
                (received, sent),
                (client_sent, client_received),
                "{kind:?} {seed:x}: upstream against client"
            );
        }
        // Every connection's one line, from the relay it ended in, with its whole totals.
        let overhead = hello_for(NAME).len() as u64 + 9;
        for _ in 0..connections {
            let line: Value = relay.next_connection().await;
            assert_eq!(line["outcome"], "forwarded", "{line}");
            assert_eq!(line["reason"], "closed", "{line}");
            let port: u16 = line["client"]
                .as_str()
                .unwrap()
                .rsplit_once(':')
                .unwrap()
                .1
                .parse()
                .unwrap();
            let (kind, (sent, received)) = clients_moved[&by_port[&port]];
            assert_eq!(
                (
                    line["bytes_up"].as_u64().unwrap(),
                    line["bytes_down"].as_u64().unwrap()
                ),
                (sent + overhead, received),
                "{kind:?}: {line}"
            );
        }
        let (_, last) = http_get(&admin, "/metrics").await;
        seen_metrics.push(last);
        for family in ["snirelay_bytes_total", "snirelay_connections_total"] {
            let totals: Vec<f64> = seen_metrics.iter().map(|m| total(m, family)).collect();
            assert!(
                totals.windows(2).all(|w| w[0] <= w[1]),
                "{family} went back: {totals:?}"
            );
        }
        let moved: u64 = clients_moved
            .values()
            .map(|(_, (s, r))| s + r + overhead)
            .sum();
        assert_eq!(
            total(seen_metrics.last().unwrap(), "snirelay_bytes_total") as u64,
            moved
        );
        assert_eq!(
            total(seen_metrics.last().unwrap(), "snirelay_connections_total") as usize,
            connections
        );
        eprintln!("200 connections, 3 upgrades: {moved} bytes, every one in order; 0 reset");
    })
    .await
    .expect("the handover test did not finish within 240 s");
}

/// What a stand-in for a new relay does on the upgrade socket, after it took the sockets
/// (and dropped them) and said `ready`, once it has read the offer of the connections.
#[derive(Clone, Copy, Debug)]
enum Stand {
    /// Closes without a word, as a binary that speaks another protocol version does, before
    /// `ready`.
    Mismatch,
    /// Closes: a relay that crashed mid-handover.
    Crash,
    /// Says nothing, and holds on until told.
    Silent,
    /// Answers `refuse`, and waits for `bye`.
    Refuse,
}

/// Plays `stand` at `path`; returns once it has done so (a silent one, once `release` is
/// cancelled).
async fn stand_in(path: std::path::PathBuf, stand: Stand, release: CancellationToken) {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(&path).unwrap();
    tokio::task::spawn_blocking(move || {
        // The greeting and the socket lines, in one message; the descriptors beside them
        // are closed unread.
        let mut greeting = [0u8; 8192];
        let n = stream.read(&mut greeting).unwrap();
        assert!(greeting[..n].starts_with(b"snirelay-handover 2\n"));
        if let Stand::Mismatch = stand {
            return;
        }
        stream.write_all(b"ready\n").unwrap();
        let mut offer = String::new();
        BufReader::new(&stream).read_line(&mut offer).unwrap();
        assert!(offer.starts_with("connections "), "{offer:?}");
        match stand {
            Stand::Mismatch | Stand::Crash => {}
            Stand::Silent => {
                let handle = tokio::runtime::Handle::current();
                handle.block_on(release.cancelled());
            }
            Stand::Refuse => {
                stream
                    .write_all(b"refuse a stand-in takes nothing\n")
                    .unwrap();
                let mut bye = String::new();
                BufReader::new(&stream).read_line(&mut bye).unwrap();
                assert_eq!(bye, "bye\n");
            }
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_relay_that_mismatches_crashes_goes_silent_or_refuses_leaves_every_connection() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut config = pinned_config(&[NAME], listener.local_addr().unwrap());
        config["timeouts"]["drain_s"] = 60.into();
        let (mut accepted, mut upstream_ended) = serve_upstream(listener);
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("upgrade.sock");
        let args = ["--listen", "127.0.0.1:0", "--upgrade-socket", socket.to_str().unwrap()];
        let mut relay = RelayProcess::start_with(config.clone(), &args).await;
        let addr = relay.addr();
        let stop = CancellationToken::new();
        let progress = Arc::new(Progress::default());
        let (port_tx, _ports) = mpsc::unbounded_channel();
        let mut clients = Vec::new();
        let mut start = |kind: Kind, seed: u64| {
            let (stop, progress, port) = (stop.clone(), progress.clone(), port_tx.clone());
            clients.push((seed, tokio::spawn(client(addr, kind, seed, stop, progress, port))));
        };
        for i in 0..20 {
            start(if i % 4 == 0 { Kind::Bulk } else { Kind::Exchange }, i << 8);
        }
        for _ in 0..20 {
            accepted.recv().await.unwrap();
        }
        relay.next_message("upgrade: offering the sockets to the next relay").await;

        for (live, stand) in (20..).zip([Stand::Mismatch, Stand::Crash, Stand::Silent]) {
            let release = CancellationToken::new();
            let standing = tokio::spawn(stand_in(socket.clone(), stand, release.clone()));
            match stand {
                Stand::Mismatch => {
                    relay.next_message("upgrade: the new relay did not start; still serving").await;
                }
                _ => {
                    let kept = relay
                        .next_message("upgrade: the new relay did not take the connections; they stay with this relay")
                        .await;
                    assert_eq!((kept["connections"].as_u64(), kept["serving"].as_bool()), (Some(live), Some(true)), "{stand:?}: {kept}");
                    relay.next_message("serving again: the new relay is gone").await;
                    relay.next_message("upgrade: offering the sockets to the next relay").await;
                }
            }
            release.cancel();
            standing.await.unwrap();
            // The connections go on, and the relay accepts new ones.
            progress.more(1 << 20).await;
            start(Kind::Exchange, 0x10_0000 + ((stand as u64) << 8));
            accepted.recv().await.unwrap();
        }

        // A later upgrade works, and takes every connection.
        let new = RelayProcess::start_with(config.clone(), &args).await;
        assert_eq!(new.addr(), addr);
        let taken = relay.next_message("upgrade: the new relay took every connection").await;
        assert_eq!(taken["connections"], 23);
        assert!(relay.wait().await.success());
        relay = new;
        relay.next_message("upgrade: offering the sockets to the next relay").await;
        progress.more(1 << 20).await;

        // One that refuses leaves them where they are, and this relay drains as before.
        stand_in(socket.clone(), Stand::Refuse, CancellationToken::new()).await;
        let kept = relay
            .next_message("upgrade: the new relay did not take the connections; they stay with this relay")
            .await;
        assert_eq!((kept["connections"].as_u64(), kept["serving"].as_bool()), (Some(23), Some(false)));
        progress.more(1 << 20).await;

        stop.cancel();
        let mut sent_by_seed = HashMap::new();
        for (seed, client) in clients {
            let moved = client.await.unwrap().unwrap_or_else(|e| panic!("{seed:x}: {e}"));
            sent_by_seed.insert(seed, moved);
        }
        for _ in 0..sent_by_seed.len() {
            let (seed, (sent, received)) = upstream_ended.recv().await.unwrap().unwrap();
            let (client_sent, client_received) = sent_by_seed[&seed];
            assert_eq!((received, sent), (client_sent, client_received), "{seed:x}");
        }
        for _ in 0..sent_by_seed.len() {
            assert_eq!(relay.next_connection().await["reason"], "closed");
        }
        assert!(relay.wait().await.success(), "drained once its connections ended");
    })
    .await
    .expect("the failed-handover test did not finish within 120 s");
}

/// A DNS server's stand-in that holds every query until `open`, then passes the held ones
/// and all later ones to `server`; each query it gets is announced on `asked`.
async fn gate(
    server: SocketAddr,
    open: CancellationToken,
    asked: mpsc::UnboundedSender<()>,
) -> SocketAddr {
    let socket = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = socket.local_addr().unwrap();
    let pass = move |query: Vec<u8>, from: SocketAddr, socket: Arc<tokio::net::UdpSocket>| async move {
        let upstream = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        upstream.send_to(&query, server).await.unwrap();
        let mut reply = vec![0u8; 4096];
        let n = upstream.recv(&mut reply).await.unwrap();
        // A relay that has exited is not there to take it.
        let _ = socket.send_to(&reply[..n], from).await;
    };
    tokio::spawn(async move {
        let mut held = Vec::new();
        let mut buf = vec![0u8; 4096];
        loop {
            tokio::select! {
                received = socket.recv_from(&mut buf) => {
                    let (n, from) = received.unwrap();
                    let _ = asked.send(());
                    if open.is_cancelled() {
                        tokio::spawn(pass(buf[..n].to_vec(), from, socket.clone()));
                    } else {
                        held.push((buf[..n].to_vec(), from));
                    }
                }
                () = open.cancelled(), if !held.is_empty() => {
                    for (query, from) in held.drain(..) {
                        tokio::spawn(pass(query, from, socket.clone()));
                    }
                }
            }
        }
    });
    addr
}

/// Waits until the relay's socket from `client` has nothing left unread in the kernel: the
/// relay holds what the client sent. Polls /proc/net/tcp, which has no notification.
async fn read_by_the_relay(relay: SocketAddr, client: SocketAddr) {
    let hex = |addr: SocketAddr| match addr {
        SocketAddr::V4(v4) => format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(v4.ip().octets()),
            v4.port()
        ),
        SocketAddr::V6(_) => unreachable!("loopback IPv4 here"),
    };
    let (local, remote) = (hex(relay), hex(client));
    loop {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let queue = table.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let ours =
                fields.get(1) == Some(&local.as_str()) && fields.get(2) == Some(&remote.as_str());
            ours.then(|| fields[4].split_once(':').map(|(_, rx)| rx.to_owned()))
                .flatten()
        });
        if queue.as_deref() == Some("00000000") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_still_opening_are_opened_again_by_the_new_relay() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = listener.local_addr().unwrap();
        let (mut accepted, mut upstream_ended) = serve_upstream(listener);
        let dns = common::dns_server(vec![(NAME, vec!["127.0.0.1".parse().unwrap()])]).await;
        let open = CancellationToken::new();
        let (asked_tx, mut asked) = mpsc::unbounded_channel();
        let gate = gate(dns, open.clone(), asked_tx).await;
        let config = serde_json::json!({
            "allow": [NAME],
            "upstream_port": upstream.port(),
            "resolver": {"nameservers": [gate.to_string()]},
            "private_destinations": ["127.0.0.0/8"],
            "timeouts": {"hello_ms": 30000, "connect_ms": 30000, "drain_s": 5},
        });
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("upgrade.sock");
        let args = [
            "--listen",
            "127.0.0.1:0",
            "--upgrade-socket",
            socket.to_str().unwrap(),
        ];
        let mut relay = RelayProcess::start_with(config.clone(), &args).await;
        let addr = relay.addr();
        let stop = CancellationToken::new();
        let progress = Arc::new(Progress::default());
        let (port_tx, mut ports) = mpsc::unbounded_channel();
        // One sends half its hello, which the relay reads and holds; the other its whole
        // hello, and the relay waits for DNS to answer.
        let go = CancellationToken::new();
        let half = Some((hello_for(NAME).len() / 2, go.clone()));
        let (stopping, moving) = (stop.clone(), progress.clone());
        let halfway = tokio::spawn(client_holding(
            addr,
            Kind::Exchange,
            0x100,
            stopping,
            moving,
            port_tx.clone(),
            half,
        ));
        let (port, _) = ports.recv().await.unwrap();
        read_by_the_relay(addr, SocketAddr::from(([127, 0, 0, 1], port))).await;
        let (stopping, moving) = (stop.clone(), progress.clone());
        let connecting = tokio::spawn(client(
            addr,
            Kind::Exchange,
            0x200,
            stopping,
            moving,
            port_tx,
        ));
        asked.recv().await.unwrap();

        let mut new = RelayProcess::start_with(config.clone(), &args).await;
        let taken = relay
            .next_message("upgrade: the new relay took every connection")
            .await;
        assert_eq!(
            taken["connections"], 2,
            "both, though neither is forwarded yet"
        );
        assert!(relay.wait().await.success());
        open.cancel();
        go.cancel();
        for _ in 0..2 {
            accepted.recv().await.unwrap();
        }
        progress.more(64 * 1024).await;
        stop.cancel();
        let mut moved = HashMap::new();
        for (seed, client) in [(0x100, halfway), (0x200, connecting)] {
            moved.insert(seed, client.await.unwrap().unwrap());
        }
        for _ in 0..2 {
            let (seed, (sent, received)) = upstream_ended.recv().await.unwrap().unwrap();
            assert_eq!((received, sent), moved[&seed], "{seed:x}");
        }
        let overhead = hello_for(NAME).len() as u64 + 9;
        let mut lines = Vec::new();
        for _ in 0..2 {
            let line = new.next_connection().await;
            let said = (line["outcome"].as_str(), line["reason"].as_str());
            assert_eq!(said, (Some("forwarded"), Some("closed")), "{line}");
            assert_eq!(line["sni"], NAME);
            lines.push((
                line["bytes_up"].as_u64().unwrap(),
                line["bytes_down"].as_u64().unwrap(),
            ));
        }
        let mut want: Vec<(u64, u64)> = moved
            .values()
            .map(|(sent, received)| (sent + overhead, *received))
            .collect();
        lines.sort_unstable();
        want.sort_unstable();
        assert_eq!(lines, want);
    })
    .await
    .expect("the opening-handover test did not finish within 120 s");
}

/// A new relay raises its own descriptor limit for the connections coming, within its hard
/// limit; one whose hard limit is too low refuses them, and the old relay keeps them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_new_relay_raises_its_descriptor_limit_or_refuses_what_would_not_fit() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut config = pinned_config(&[NAME], listener.local_addr().unwrap());
        config["timeouts"]["drain_s"] = 60.into();
        let (mut accepted, mut upstream_ended) = serve_upstream(listener);
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("upgrade.sock");
        let args = [
            "--listen",
            "127.0.0.1:0",
            "--upgrade-socket",
            socket.to_str().unwrap(),
        ];
        let relay = RelayProcess::start_with(config.clone(), &args).await;
        let addr = relay.addr();
        let stop = CancellationToken::new();
        let progress = Arc::new(Progress::default());
        let (port_tx, _ports) = mpsc::unbounded_channel();
        let clients: Vec<_> = (0..40u64)
            .map(|i| {
                let (stop, progress, port) = (stop.clone(), progress.clone(), port_tx.clone());
                (
                    i << 8,
                    tokio::spawn(client(addr, Kind::Idle, i << 8, stop, progress, port)),
                )
            })
            .collect();
        for _ in 0..40 {
            accepted.recv().await.unwrap();
        }
        let under = |limit: &str| {
            let mut launcher = std::process::Command::new("prlimit");
            launcher
                .arg(format!("--nofile={limit}"))
                .arg("--")
                .arg(common::binary());
            launcher
        };
        let mut old = relay;
        let mut raised = RelayProcess::spawn(under("64:4096"), config.clone(), &args).await;
        let said = raised
            .next_message("upgrade: raised the descriptor limit for the connections coming")
            .await;
        assert!(said["limit"].as_u64().unwrap() > 80, "{said}");
        raised
            .next_message("upgrade: took over the old relay's connections")
            .await;
        assert_eq!(
            old.next_message("upgrade: the new relay took every connection")
                .await["connections"],
            40
        );
        assert!(old.wait().await.success());
        old = raised;
        old.next_message("upgrade: offering the sockets to the next relay")
            .await;

        let _refusing = RelayProcess::spawn(under("64:64"), config.clone(), &args).await;
        let kept = old
            .next_message(
                "upgrade: the new relay did not take the connections; they stay with this relay",
            )
            .await;
        assert_eq!(
            (kept["connections"].as_u64(), kept["serving"].as_bool()),
            (Some(40), Some(false)),
            "{kept}"
        );
        assert!(
            kept["error"].as_str().unwrap().contains("hard limit 64"),
            "{kept}"
        );

        stop.cancel();
        let mut moved = HashMap::new();
        for (seed, client) in clients {
            moved.insert(seed, client.await.unwrap().unwrap());
        }
        for _ in 0..40 {
            let (seed, (sent, received)) = upstream_ended.recv().await.unwrap().unwrap();
            assert_eq!((received, sent), moved[&seed], "{seed:x}");
        }
        for _ in 0..40 {
            assert_eq!(old.next_connection().await["reason"], "closed");
        }
        assert!(
            old.wait().await.success(),
            "drained once its connections ended"
        );
    })
    .await
    .expect("the descriptor-limit test did not finish within 120 s");
}
