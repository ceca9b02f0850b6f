//! Traffic for the tests where relays stop, restart or upgrade under load: a TLS upstream
//! with small and long answers, a client that checks every byte, and a steady stream of
//! new connections that counts the ones that fail.

use super::{PATIENCE, Pki, Upstream};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The answer to `SMALL_REQUEST`: 1 KiB at once.
pub const SMALL: usize = 1024;
/// The answer to `BIG_REQUEST`: 4 MiB in 64 KiB chunks over about two seconds.
pub const BIG: usize = 4 << 20;
pub const SMALL_REQUEST: &[u8; 5] = b"small";
pub const BIG_REQUEST: &[u8; 5] = b"big\n\n";

/// The bytes of an answer: a pattern that a lost, repeated or reordered chunk breaks.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i / 251) as u8)
        .collect()
}

/// A TLS upstream answering [`SMALL_REQUEST`] and [`BIG_REQUEST`]; `big` is sent each big
/// request as it arrives, so a test knows its long transfers are in flight.
pub async fn serve_upstream(upstream: Upstream, pki: &Pki, big: mpsc::UnboundedSender<()>) {
    let acceptor = pki.acceptor();
    loop {
        let conn = upstream.accept().await;
        let (acceptor, big) = (acceptor.clone(), big.clone());
        tokio::spawn(async move {
            let Ok(mut tls) = acceptor.accept(conn).await else {
                return;
            };
            let mut request = [0u8; 5];
            if tls.read_exact(&mut request).await.is_err() {
                return;
            }
            let is_big = &request == BIG_REQUEST;
            if is_big {
                let _ = big.send(());
            }
            let body = pattern(if is_big { BIG } else { SMALL });
            for chunk in body.chunks(64 << 10) {
                if tls.write_all(chunk).await.is_err() {
                    return;
                }
                if is_big {
                    // Pacing the sender, not ordering the test: it makes transfers long.
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
            }
            let _ = tls.shutdown().await;
        });
    }
}

/// One TLS exchange for `name` with `to`, from `from` (an IP); true when the whole answer
/// arrived intact.
pub async fn exchange(
    to: SocketAddr,
    from: &str,
    name: &str,
    pki: &Pki,
    request: &[u8; 5],
) -> bool {
    let len = if request == BIG_REQUEST { BIG } else { SMALL };
    let attempt = async {
        let socket = TcpSocket::new_v4().ok()?;
        socket.bind(format!("{from}:0").parse().ok()?).ok()?;
        let tcp = socket.connect(to).await.ok()?;
        let name = rustls::pki_types::ServerName::try_from(name.to_owned()).ok()?;
        let mut tls = pki.connector().connect(name, tcp).await.ok()?;
        tls.write_all(request).await.ok()?;
        let mut got = Vec::with_capacity(len);
        tls.read_to_end(&mut got).await.ok()?;
        Some(got == pattern(len))
    };
    tokio::time::timeout(PATIENCE, attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// New connections attempted and failed so far.
#[derive(Default)]
pub struct Load {
    pub attempted: AtomicU64,
    pub failed: AtomicU64,
}

/// A steady stream of small exchanges, about 50 new connections a second, until `done`;
/// the task ends once the last one has.
pub fn steady_load(
    to: SocketAddr,
    from: &'static str,
    name: &'static str,
    pki: Arc<Pki>,
    done: CancellationToken,
) -> (Arc<Load>, tokio::task::JoinHandle<()>) {
    let load = Arc::new(Load::default());
    let counting = load.clone();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let mut running = tokio::task::JoinSet::new();
        while !done.is_cancelled() {
            tick.tick().await;
            let (load, pki) = (counting.clone(), pki.clone());
            running.spawn(async move {
                load.attempted.fetch_add(1, Ordering::Relaxed);
                if !exchange(to, from, name, &pki, SMALL_REQUEST).await {
                    load.failed.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        running.join_all().await;
    });
    (load, task)
}

impl Load {
    /// (attempted, failed).
    pub fn counts(&self) -> (u64, u64) {
        (
            self.attempted.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}
