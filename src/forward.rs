//! Copying bytes both ways once the upstream is connected.
//!
//! Each direction ends on its own: a FIN from one side is passed on as a FIN to the other
//! while the opposite direction keeps flowing. A reset or write failure on either side ends
//! both, and the survivor is reset too so it does not wait for data that will never come.
//! Idleness is judged over both directions together, so a long one-way stream stays up.

use socket2::SockRef;
use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Per-direction copy buffer, allocated only once a direction carries data: small at
/// first (most API exchanges are a few KiB), grown once a read fills it, so bulk transfers
/// still move 64 KiB per system call.
const FIRST_BUFFER: usize = 4 * 1024;
const BULK_BUFFER: usize = 64 * 1024;

/// How a forwarded connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both directions finished with a FIN.
    Closed,
    /// The client reset the connection or stopped accepting data.
    ClientReset,
    /// The upstream reset the connection or stopped accepting data.
    UpstreamReset,
    /// No byte moved either way for the idle timeout.
    IdleTimeout,
    /// The relay was shutting down and the drain period ran out.
    Shutdown,
}

impl End {
    /// The stable word logged as the reason of a forwarded connection.
    pub fn word(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::ClientReset => "client_reset",
            End::UpstreamReset => "upstream_reset",
            End::IdleTimeout => "idle_timeout",
            End::Shutdown => "shutdown",
        }
    }
}

/// What moved, and how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    /// Bytes from client to upstream, the replayed hello included.
    pub up: u64,
    /// Bytes from upstream to client.
    pub down: u64,
    /// Of those, bytes moved by splice(2) without passing through user space.
    pub spliced: u64,
    /// How it ended.
    pub end: End,
}

/// Writes `preface` (the buffered hello and anything that followed it) to the upstream,
/// then copies both ways until both are done, one side fails, `idle` passes without a byte,
/// or `stop` fires.
pub async fn relay(
    client: TcpStream,
    upstream: TcpStream,
    preface: Vec<u8>,
    idle: Duration,
    stop: &CancellationToken,
) -> Transfer {
    let clock = Activity::new();
    let (up, down, spliced) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let to_upstream = pump(&client, &upstream, preface, &up, &spliced, &clock);
    let to_client = pump(&upstream, &client, Vec::new(), &down, &spliced, &clock);
    tokio::pin!(to_upstream, to_client);
    let (mut up_done, mut down_done) = (false, false);
    let end = loop {
        if up_done && down_done {
            break End::Closed;
        }
        tokio::select! {
            result = &mut to_upstream, if !up_done => match result {
                Ok(()) => up_done = true,
                Err(Broken::Reader) => break End::ClientReset,
                Err(Broken::Writer) => break End::UpstreamReset,
            },
            result = &mut to_client, if !down_done => match result {
                Ok(()) => down_done = true,
                Err(Broken::Reader) => break End::UpstreamReset,
                Err(Broken::Writer) => break End::ClientReset,
            },
            () = clock.idle_for(idle) => break End::IdleTimeout,
            () = stop.cancelled() => break End::Shutdown,
        }
    };
    if matches!(end, End::ClientReset | End::UpstreamReset) {
        abort(&client);
        abort(&upstream);
    }
    Transfer {
        up: up.load(Ordering::Relaxed),
        down: down.load(Ordering::Relaxed),
        spliced: spliced.load(Ordering::Relaxed),
        end,
    }
}

/// Which end of a one-way copy failed.
enum Broken {
    Reader,
    Writer,
}

/// Copies `from` to `to` until `from` sends FIN, then passes the FIN on. Small exchanges go
/// through a small buffer; once a read fills it the direction is carrying bulk data, and on
/// Linux it switches to splice(2) through a pipe made for it then.
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    preface: Vec<u8>,
    moved: &AtomicU64,
    spliced: &AtomicU64,
    clock: &Activity,
) -> Result<(), Broken> {
    write_all(to, &preface, moved, clock).await?;
    drop(preface);
    let mut buffer: Vec<u8> = Vec::new();
    loop {
        read_ready(from).await.map_err(|_| Broken::Reader)?;
        buffer.clear();
        let read = if buffer.capacity() == 0 {
            // Readiness can be stale (reading the hello leaves it set, so an idle client's
            // side looks readable once): read into the stack first, and take a heap buffer
            // only for bytes that really came.
            let mut first = [0u8; FIRST_BUFFER];
            from.try_read(&mut first).inspect(|&n| {
                if n > 0 {
                    buffer.reserve_exact(FIRST_BUFFER);
                    buffer.extend_from_slice(&first[..n]);
                }
            })
        } else {
            // Into the spare capacity: no zeroing of a buffer about to be overwritten.
            from.try_read_buf(&mut buffer)
        };
        match read {
            Ok(0) => break,
            Ok(n) => {
                clock.touch();
                write_all(to, &buffer, moved, clock).await?;
                if n == buffer.capacity() {
                    #[cfg(target_os = "linux")]
                    if let Ok(mut pipe) = crate::splice::Pipe::new() {
                        drop(buffer);
                        splice_all(from, to, &mut pipe, moved, spliced, clock).await?;
                        break;
                    }
                    // No pipe (or not Linux): a bigger buffer instead.
                    if n < BULK_BUFFER {
                        buffer.clear();
                        buffer.reserve_exact(BULK_BUFFER);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => return Err(Broken::Reader),
        }
    }
    // A peer that already reset makes this fail; the other direction will notice.
    let _ = SockRef::from(to).shutdown(Shutdown::Write);
    Ok(())
}

/// Splices `from` to `to` until `from` sends FIN.
#[cfg(target_os = "linux")]
async fn splice_all(
    from: &TcpStream,
    to: &TcpStream,
    pipe: &mut crate::splice::Pipe,
    moved: &AtomicU64,
    spliced: &AtomicU64,
    clock: &Activity,
) -> Result<(), Broken> {
    use tokio::io::Interest;
    loop {
        read_ready(from).await.map_err(|_| Broken::Reader)?;
        match from.try_io(Interest::READABLE, || pipe.fill_from(from, BULK_BUFFER)) {
            Ok(0) => return Ok(()),
            Ok(_) => clock.touch(),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => return Err(Broken::Reader),
        }
        while pipe.pending > 0 {
            write_ready(to).await.map_err(|_| Broken::Writer)?;
            match to.try_io(Interest::WRITABLE, || pipe.drain_into(to)) {
                Ok(n) => {
                    moved.fetch_add(n as u64, Ordering::Relaxed);
                    spliced.fetch_add(n as u64, Ordering::Relaxed);
                    clock.touch();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => return Err(Broken::Writer),
            }
        }
    }
}

async fn write_all(
    to: &TcpStream,
    mut bytes: &[u8],
    moved: &AtomicU64,
    clock: &Activity,
) -> Result<(), Broken> {
    while !bytes.is_empty() {
        write_ready(to).await.map_err(|_| Broken::Writer)?;
        match to.try_write(bytes) {
            Ok(n) => {
                bytes = &bytes[n..];
                moved.fetch_add(n as u64, Ordering::Relaxed);
                clock.touch();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => return Err(Broken::Writer),
        }
    }
    Ok(())
}

// Readiness through `poll_*_ready` rather than `readable()`/`writable()`: those futures carry
// an intrusive waiter node, and every idle connection keeps four of them in its task (its
// largest part). The poll forms keep one waker per direction in the socket instead, which
// suffices: each socket has one reader (its pump) and one writer (the other pump).
async fn read_ready(stream: &TcpStream) -> io::Result<()> {
    std::future::poll_fn(|cx| stream.poll_read_ready(cx)).await
}

async fn write_ready(stream: &TcpStream) -> io::Result<()> {
    std::future::poll_fn(|cx| stream.poll_write_ready(cx)).await
}

/// Closes with RST instead of FIN, so the peer learns the connection broke.
fn abort(stream: &TcpStream) {
    let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// The time of the last byte moved in either direction.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(now, Ordering::Relaxed);
    }

    /// Completes once nothing has moved for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = self.start + last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    async fn expired(
        watch: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) -> bool {
        tokio::time::timeout(Duration::ZERO, watch.as_mut())
            .await
            .is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn traffic_in_one_direction_keeps_the_connection_alive() {
        let clock = Activity::new();
        let idle = Duration::from_secs(10);
        let watch = clock.idle_for(idle);
        tokio::pin!(watch);
        for _ in 0..5 {
            advance(Duration::from_secs(8)).await;
            clock.touch();
            assert!(!expired(&mut watch).await, "activity 8 s apart is not idle");
        }
        advance(Duration::from_secs(9)).await;
        assert!(!expired(&mut watch).await);
        advance(Duration::from_secs(1)).await;
        assert!(expired(&mut watch).await, "10 s without a byte is idle");
    }
}
