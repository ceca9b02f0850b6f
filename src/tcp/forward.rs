//! Copying bytes both ways once the upstream is connected.
//!
//! Each direction ends on its own: a FIN from one side is passed on as a FIN to the other
//! while the opposite direction keeps flowing. A reset or write failure on either side ends
//! both, and the survivor is reset too so it does not wait for data that will never come.
//! Idleness is judged over both directions together, so a long one-way stream stays up.

use crate::net;
use crate::net::transport;
use crate::outcome::{End, Transfer};
use crate::tcp::activity::{Activity, Quiet};
use crate::tcp::stopping::Stopping;
use crate::tcp_options::Keepalive;
use crate::telemetry::bytes::{ByteCounters, Direction};
use crate::telemetry::live::LiveConnection;
use socket2::SockRef;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::net::Shutdown;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::net::TcpStream;

/// Per-direction read size: a chunk on the stack (most API exchanges are a few KiB); a read
/// that fills it means bulk data, which goes by splice(2), or where no pipe can be made
/// through a 64 KiB buffer, so bulk transfers still move 64 KiB per system call.
const FIRST_BUFFER: usize = 4 * 1024;
const BULK_BUFFER: usize = 64 * 1024;

/// How long a connection lasts before its upstream gets keepalive (or sooner, its keepalive
/// idle time, or its idle timeout): most API connections end well before, and never pay
/// its four system calls. The first probe of a connection quiet from the start comes this
/// much later than keepalive's own idle time would say, at most.
pub const SETTLED: Duration = Duration::from_secs(10);

/// What a copy holds between wake-ups: both directions, with the bytes each has read and
/// not yet written (in a buffer or a splice pipe). A new connection starts from the bytes
/// to replay; a handed-over one from what the relay before this one held.
pub struct Copying {
    up: OneWay,
    down: OneWay,
    spliced: u64,
    /// How long nothing had moved when the connection was handed over.
    quiet: Duration,
    /// The upstream has yet to get its keepalive.
    keepalive_due: bool,
}

impl Copying {
    /// A connection about to start: `preface` (the buffered hello and anything that
    /// followed it) goes to the upstream first.
    pub fn new(preface: Vec<u8>) -> Copying {
        Copying {
            up: OneWay::new(preface, [End::ClientReset, End::UpstreamReset]),
            down: OneWay::new(Vec::new(), [End::UpstreamReset, End::ClientReset]),
            spliced: 0,
            quiet: Duration::ZERO,
            keepalive_due: true,
        }
    }
}

impl Copying {
    /// Bytes written so far: to the upstream, to the client.
    pub fn moved(&self) -> (u64, u64) {
        (self.up.moved, self.down.moved)
    }
}

/// Where a copy starts. A connection's task keeps this across its whole life, so it is
/// small: a handed-over copy's state comes boxed.
pub enum Start {
    /// A new connection: the bytes to replay (the buffered hello and anything that
    /// followed it) go to the upstream first.
    Preface(Vec<u8>),
    /// A connection handed over by the relay this one replaced, from where it stood.
    Resumed(Box<Copying>),
}

/// How a copy stopped.
pub enum Copied {
    /// The connection is over.
    Ended(Transfer),
    /// The relay hands its connections to the next one: this is where the copy stood, at a
    /// point where no read or write was in progress.
    HandedOver(Copying),
}

/// Copies both ways, from the `start`, until both directions are done, one side
/// fails, `idle` passes without a byte, or the relay `stopping` ends every connection (the
/// drain ran out) or hands them over. Bytes are added to `counters` (and `live`) as they
/// are written. Once the connection has [`SETTLED`], the upstream gets `keepalive`.
#[allow(clippy::manual_async_fn, clippy::too_many_arguments)]
pub fn copy<'a>(
    client: &'a TcpStream,
    upstream: &'a TcpStream,
    start: Start,
    idle: Duration,
    stopping: &'a Stopping,
    counters: Arc<ByteCounters>,
    live: Option<Arc<LiveConnection>>,
    keepalive: &'a Keepalive,
) -> impl Future<Output = Copied> + 'a {
    // A hand-written poll over two plain structs, not two async copy functions: an idle
    // connection's task is mostly this state, and async functions keep their arguments
    // twice and a readiness future per await (1,248 bytes against about 500 here). An
    // `async move` block, not an `async fn`, so the arguments are not kept twice; and what
    // the block would move into a local is made here, so it is kept once, in place.
    let Copying {
        mut up,
        mut down,
        mut spliced,
        quiet,
        keepalive_due,
    } = match start {
        Start::Preface(preface) => Copying::new(preface),
        Start::Resumed(copying) => *copying,
    };
    let clock = Activity::after_quiet(counters, live, quiet);
    let mut keepalive = Some(keepalive).filter(|_| keepalive_due);
    async move {
        // The timer's first wake-up is when the connection has settled; then it serves
        // idleness.
        let settled = keepalive.map_or(idle, |k| k.idle).min(SETTLED).min(idle);
        let timer = tokio::time::sleep(settled);
        let cancelled = stopping.ending();
        tokio::pin!(timer, cancelled);
        // The token is polled once, here, which registers the task's waker with it; the
        // loop below only reads the flag beside it (`Stopping`). Polling a waiting
        // `Notified` again, or asking the token, locks what every connection shares: a
        // lock on every wake-up of every connection, fought over by the worker threads.
        // (The waker stays valid: this future is awaited directly by its connection's
        // task.)
        std::future::poll_fn(|cx| {
            let _ = cancelled.as_mut().poll(cx);
            Poll::Ready(())
        })
        .await;
        // `None`: stopped to be handed over.
        let end = std::future::poll_fn(|cx| {
            for direction in [Direction::Up, Direction::Down] {
                let (copying, other_done, from, to) = match direction {
                    Direction::Up => (&mut up, down.done, client, upstream),
                    Direction::Down => (&mut down, up.done, upstream, client),
                };
                if !copying.done {
                    match copying.poll(cx, (from, to, direction), &mut spliced, &clock) {
                        Poll::Ready(Ok(())) => {
                            copying.done = true;
                            // The FIN, passed on; for the last direction the close that
                            // follows sends it, one system call fewer.
                            if !other_done {
                                // A peer that already reset makes this fail; the other
                                // direction will notice.
                                let _ = SockRef::from(to).shutdown(Shutdown::Write);
                            }
                        }
                        Poll::Ready(Err(broken)) => {
                            return Poll::Ready(Some(copying.blame(broken)));
                        }
                        Poll::Pending => {}
                    }
                }
            }
            if up.done && down.done {
                return Poll::Ready(Some(End::Closed));
            }
            if stopping.has_ended() {
                return Poll::Ready((!stopping.is_handing_over()).then_some(End::Shutdown));
            }
            loop {
                if let Some(keepalive) = keepalive.take_if(|_| timer.is_elapsed()) {
                    transport::set_keepalive(upstream, keepalive);
                }
                // A pipe still holding bytes stays: its writer is waiting to pass them on.
                let pipes = up.empty_pipe() || down.empty_pipe();
                match ready!(clock.poll_quiet(cx, timer.as_mut(), idle, pipes)) {
                    Quiet::Idle => return Poll::Ready(Some(End::IdleTimeout)),
                    Quiet::PipesUnused => {
                        up.release_pipe();
                        down.release_pipe();
                    }
                }
            }
        })
        .await;
        let Some(end) = end else {
            return Copied::HandedOver(Copying {
                up,
                down,
                spliced,
                quiet: clock.quiet(),
                keepalive_due: keepalive.is_some(),
            });
        };
        if matches!(end, End::ClientReset | End::UpstreamReset) {
            abort(client);
            abort(upstream);
        }
        Copied::Ended(Transfer {
            up: up.moved,
            down: down.moved,
            spliced,
            end,
        })
    }
}

/// Which end of a one-way copy failed.
enum Broken {
    Reader,
    Writer,
}

/// One direction of the copy. Small exchanges go through a small buffer, taken only once
/// bytes arrive and given back once they are written, so an idle direction holds nothing;
/// once a read fills it the direction is carrying bulk data, and on Linux it switches to
/// splice(2) through a pipe made for it then (or to a larger buffer where no pipe can be
/// made). Readiness is polled, so each socket keeps one waker per direction: enough, since
/// each socket has one reader (one direction) and one writer (the other).
struct OneWay {
    /// Bytes read and not yet written are `buffer[written..]`.
    buffer: Vec<u8>,
    written: usize,
    /// The last read filled the buffer.
    bulk: bool,
    #[cfg(target_os = "linux")]
    pipe: Option<crate::net::sys::Pipe>,
    moved: u64,
    done: bool,
    /// How the relay ends when this direction's reader, or its writer, breaks.
    ends: [End; 2],
}

impl OneWay {
    fn new(preface: Vec<u8>, ends: [End; 2]) -> OneWay {
        OneWay {
            buffer: preface,
            written: 0,
            bulk: false,
            #[cfg(target_os = "linux")]
            pipe: None,
            moved: 0,
            done: false,
            ends,
        }
    }

    fn blame(&self, broken: Broken) -> End {
        match broken {
            Broken::Reader => self.ends[0],
            Broken::Writer => self.ends[1],
        }
    }

    /// Moves bytes from `from` to `to` until `from` sends FIN (then passes the FIN on and
    /// is ready), a side fails, or neither side can go on now (pending, with both wakers
    /// registered in the sockets).
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        (from, to, direction): (&TcpStream, &TcpStream, Direction),
        spliced: &mut u64,
        clock: &Activity,
    ) -> Poll<Result<(), Broken>> {
        loop {
            while self.written < self.buffer.len() {
                ready!(to.poll_write_ready(cx)).map_err(|_| Broken::Writer)?;
                let pending = &self.buffer[self.written..];
                self.written += write_now(to, pending, &mut self.moved, direction, clock)?;
            }
            // Written out: only bulk data without a pipe keeps (and grows) its buffer.
            self.written = 0;
            if self.bulk && !self.has_pipe() {
                self.buffer.clear();
                self.buffer.reserve_exact(BULK_BUFFER);
            } else {
                self.buffer = Vec::new();
            }
            #[cfg(target_os = "linux")]
            if let Some(pipe) = &mut self.pipe {
                ready!(Self::poll_splice(
                    cx,
                    (from, to, direction),
                    pipe,
                    &mut self.moved,
                    spliced,
                    clock
                ))?;
                return self.finish();
            }
            ready!(from.poll_read_ready(cx)).map_err(|_| Broken::Reader)?;
            // A short read clears the readiness, so the next poll waits for the kernel
            // instead of reading nothing (`net::read`). Bulk data without a pipe reads into
            // its own buffer's spare capacity.
            if self.buffer.capacity() > 0 {
                match net::read::read_buf(from, &mut self.buffer) {
                    Ok(0) => return self.finish(),
                    Ok(n) => {
                        clock.touch();
                        self.bulk = n == self.buffer.capacity();
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return Poll::Ready(Err(Broken::Reader)),
                }
                continue;
            }
            // Anything else into a chunk on the stack, never zeroed, and written on at once:
            // a message the socket takes whole is never copied to the heap, and the read
            // that finds the end of the stream takes no buffer at all. Only what the writer
            // cannot take now waits in a buffer, and nothing more is read until it is gone.
            let mut chunk = [MaybeUninit::uninit(); FIRST_BUFFER];
            let read = match net::read::read_chunk(from, &mut chunk) {
                Ok([]) => return self.finish(),
                Ok(read) => read,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => return Poll::Ready(Err(Broken::Reader)),
            };
            if read.len() == FIRST_BUFFER {
                self.bulk = true;
                #[cfg(target_os = "linux")]
                {
                    self.pipe = crate::net::sys::Pipe::new().ok();
                }
            }
            let sent = write_now(to, read, &mut self.moved, direction, clock)?;
            if sent < read.len() {
                clock.touch();
                self.buffer = read[sent..].to_vec();
            }
        }
    }

    #[cfg(target_os = "linux")]
    fn has_pipe(&self) -> bool {
        self.pipe.is_some()
    }

    #[cfg(not(target_os = "linux"))]
    fn has_pipe(&self) -> bool {
        false
    }

    /// Splices until `from` sends FIN.
    #[cfg(target_os = "linux")]
    fn poll_splice(
        cx: &mut Context<'_>,
        (from, to, direction): (&TcpStream, &TcpStream, Direction),
        pipe: &mut crate::net::sys::Pipe,
        moved: &mut u64,
        spliced: &mut u64,
        clock: &Activity,
    ) -> Poll<Result<(), Broken>> {
        use tokio::io::Interest;
        loop {
            while pipe.pending > 0 {
                ready!(to.poll_write_ready(cx)).map_err(|_| Broken::Writer)?;
                match to.try_io(Interest::WRITABLE, || pipe.drain_into(to)) {
                    Ok(n) => {
                        *moved += n as u64;
                        *spliced += n as u64;
                        clock.moved(direction, n as u64);
                        clock.counters.spliced(n as u64);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return Poll::Ready(Err(Broken::Writer)),
                }
            }
            ready!(from.poll_read_ready(cx)).map_err(|_| Broken::Reader)?;
            let room = pipe.capacity();
            match from.try_io(Interest::READABLE, || pipe.fill_from(from, room)) {
                Ok(0) => return Poll::Ready(Ok(())),
                Ok(_) => clock.touch(),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Poll::Ready(Err(Broken::Reader)),
            }
        }
    }

    /// Whether the direction holds a pipe with nothing in it.
    #[cfg(target_os = "linux")]
    fn empty_pipe(&self) -> bool {
        self.pipe.as_ref().is_some_and(|pipe| pipe.pending == 0)
    }

    #[cfg(not(target_os = "linux"))]
    fn empty_pipe(&self) -> bool {
        false
    }

    /// Gives back an empty pipe: the direction has carried nothing for a while, and goes
    /// back to a small buffer taken per read until a read fills it again.
    fn release_pipe(&mut self) {
        if self.empty_pipe() {
            #[cfg(target_os = "linux")]
            {
                self.pipe = None;
            }
            self.bulk = false;
        }
    }

    /// `from` sent FIN: let go of the buffers (the caller passes the FIN on).
    fn finish(&mut self) -> Poll<Result<(), Broken>> {
        self.buffer = Vec::new();
        #[cfg(target_os = "linux")]
        {
            self.pipe = None;
        }
        Poll::Ready(Ok(()))
    }
}

/// Writes what `to` takes of `bytes` now, adding it to `moved` and the counters; stops at
/// the first `WouldBlock`, which leaves the socket's write readiness cleared.
fn write_now(
    to: &TcpStream,
    bytes: &[u8],
    moved: &mut u64,
    direction: Direction,
    clock: &Activity,
) -> Result<usize, Broken> {
    let mut sent = 0;
    while sent < bytes.len() {
        match to.try_write(&bytes[sent..]) {
            Ok(n) => {
                sent += n;
                *moved += n as u64;
                clock.moved(direction, n as u64);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(_) => return Err(Broken::Writer),
        }
    }
    Ok(sent)
}

/// Closes with RST instead of FIN, so the peer learns the connection broke.
fn abort(stream: &TcpStream) {
    let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

mod carry;
#[cfg(test)]
mod tests;

pub use carry::CopyingWire;
