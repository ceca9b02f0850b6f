//! The system calls tokio and socket2 do not make for us: splice(2) for zero-copy
//! forwarding (bytes move from one socket into a pipe and on into the other without passing
//! through user space, through rustix's safe calls), and taking ownership of the listening
//! sockets systemd hands over, SO_RCVLOWAT and the TCP Fast Open options, which neither
//! socket2 nor rustix sets, and
//! TCP_INFO, which neither reads. This is the only module with `unsafe`: the adoption of
//! descriptors this process was given, one `setsockopt` for integer options and one
//! `getsockopt`.

use crate::net::tcp_info::TcpInfo;
use rustix::pipe::{self, PipeFlags, SpliceFlags};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The descriptors systemd passed (`LISTEN_FDS`, from fd 3), each with its
/// `FileDescriptorName=`, owned from now on. Only the first call takes them; later calls
/// get none, so no descriptor is ever owned twice.
pub fn take_listen_fds() -> io::Result<Vec<(OwnedFd, String)>> {
    static TAKEN: AtomicBool = AtomicBool::new(false);
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Ok(Vec::new());
    }
    Ok(sd_notify::listen_fds_with_names()?
        // SAFETY: sd_listen_fds(3): descriptors 3..3+LISTEN_FDS belong to this process
        // (LISTEN_PID is checked by the crate), nothing else in it uses them, and TAKEN
        // makes this the only place that takes ownership, once.
        .map(|(fd, name)| (unsafe { OwnedFd::from_raw_fd(fd) }, name))
        .collect())
}

/// The kernel's `struct tcp_info` (linux/tcp.h) up to `tcpi_snd_wnd`, as every kernel
/// lays it out: newer kernels append fields, older ones fill a prefix, and say how much.
#[repr(C)]
#[derive(Default)]
struct RawTcpInfo {
    state: [u8; 8],
    rto: u32,
    ato: u32,
    snd_mss: u32,
    rcv_mss: u32,
    unacked: u32,
    sacked: u32,
    lost: u32,
    retrans: u32,
    fackets: u32,
    last: [u32; 4],
    pmtu: u32,
    rcv_ssthresh: u32,
    rtt: u32,
    rttvar: u32,
    snd_ssthresh: u32,
    snd_cwnd: u32,
    advmss: u32,
    reordering: u32,
    rcv_rtt: u32,
    rcv_space: u32,
    total_retrans: u32,
    pacing_rate: u64,
    max_pacing_rate: u64,
    bytes_acked: u64,
    bytes_received: u64,
    segs_out: u32,
    segs_in: u32,
    notsent_bytes: u32,
    min_rtt: u32,
    data_segs_in: u32,
    data_segs_out: u32,
    delivery_rate: u64,
    busy_time: u64,
    rwnd_limited: u64,
    sndbuf_limited: u64,
    delivered: u32,
    delivered_ce: u32,
    bytes_sent: u64,
    bytes_retrans: u64,
    dsack_dups: u32,
    reord_seen: u32,
    rcv_ooopack: u32,
    snd_wnd: u32,
}

/// Reads TCP_INFO of a TCP socket.
pub fn tcp_info(socket: &impl AsFd) -> io::Result<TcpInfo> {
    tcp_info_of(socket.as_fd().as_raw_fd())
}

/// Reads TCP_INFO of the socket with descriptor `fd`. Any number is sound to pass: one
/// that is not an open TCP socket gets an error. The caller makes sure it is the socket it
/// means (open, not reused).
pub fn tcp_info_of(fd: std::os::fd::RawFd) -> io::Result<TcpInfo> {
    let mut raw = RawTcpInfo::default();
    let mut len = std::mem::size_of::<RawTcpInfo>() as libc::socklen_t;
    // SAFETY: getsockopt(2) writes at most `len` bytes at the pointer, which points at `raw`,
    // a plain-data struct of exactly that size alive for the whole call, and sets `len` to
    // what it wrote; every bit pattern is a valid `RawTcpInfo`. A descriptor that is not
    // open only makes the call fail.
    let status = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            std::ptr::from_mut(&mut raw).cast(),
            &mut len,
        )
    };
    if status != 0 {
        return Err(io::Error::last_os_error());
    }
    let filled = |end: usize| (len as usize) >= end;
    Ok(TcpInfo {
        rtt_us: raw.rtt,
        min_rtt_us: filled(std::mem::offset_of!(RawTcpInfo, data_segs_in)).then_some(raw.min_rtt),
        retrans_segments: raw.total_retrans,
        retrans_bytes: filled(std::mem::offset_of!(RawTcpInfo, dsack_dups))
            .then_some(raw.bytes_retrans),
        peer_window: filled(std::mem::size_of::<RawTcpInfo>()).then_some(raw.snd_wnd),
        delivery_rate: filled(std::mem::offset_of!(RawTcpInfo, busy_time))
            .then_some(raw.delivery_rate),
        cwnd: raw.snd_cwnd,
    })
}

/// Sets SO_RCVLOWAT: the socket turns readable, and wakes its reader, only once `bytes` are
/// queued (or at end of stream, or on an error). Linux caps it at half the largest receive
/// buffer and grows the buffer to fit; 1 is the default.
pub fn set_receive_low_water(socket: &impl AsFd, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    set_int(socket, libc::SOL_SOCKET, libc::SO_RCVLOWAT, value)
}

/// Sets TCP_FASTOPEN on a listening socket: up to `queue` connections whose SYN carried
/// data may wait to be accepted (the kernel answers them with data at once). Takes effect
/// where `net.ipv4.tcp_fastopen` has its server bit (2).
pub fn set_fast_open(listener: &impl AsFd, queue: u16) -> io::Result<()> {
    set_int(
        listener,
        libc::IPPROTO_TCP,
        libc::TCP_FASTOPEN,
        libc::c_int::from(queue),
    )
}

/// Sets TCP_FASTOPEN_CONNECT on a socket before it connects: with a cookie from an earlier
/// connection to the same server, `connect` returns at once and the first write goes out in
/// the SYN; without one, it connects as usual and asks for a cookie.
pub fn set_fast_open_connect(socket: &impl AsFd) -> io::Result<()> {
    set_int(socket, libc::IPPROTO_TCP, libc::TCP_FASTOPEN_CONNECT, 1)
}

fn set_int(
    socket: &impl AsFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: setsockopt(2) reads `size_of::<c_int>()` bytes at the pointer, which points at
    // `value`, alive for the whole call; the descriptor is borrowed, so it stays open.
    let status = unsafe {
        libc::setsockopt(
            socket.as_fd().as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if status == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Pipes open now, for `/metrics`, and the bytes they can hold in all. Process-wide on
/// purpose, and lock-free: what they bound is the kernel's pipe memory, which the kernel
/// counts per user (pipe-user-pages-soft), not per relay.
static OPEN_PIPES: AtomicUsize = AtomicUsize::new(0);
static OPEN_PIPE_BYTES: AtomicUsize = AtomicUsize::new(0);

/// How many splice pipes are open now (two descriptors each).
pub fn open_pipes() -> usize {
    OPEN_PIPES.load(Ordering::Relaxed)
}

/// A non-blocking pipe used as the splice buffer of one direction.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes it can hold. This and `pending` are `u32`, so an idle connection's two
    /// `Option<Pipe>`s take 16 bytes each (a pipe holds at most 1 MiB).
    capacity: u32,
    /// Bytes spliced in and not yet out.
    pub pending: u32,
}

impl Pipe {
    /// A new pipe: of [`BIG_PIPE`] while the big ones hold no more than [`BIG_PIPES`] in
    /// all, else of the kernel's default size. The kernel allocates its pages only as data
    /// passes through.
    pub fn new() -> io::Result<Pipe> {
        let (read, write) = pipe::pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
        let capacity = if OPEN_PIPE_BYTES.load(Ordering::Relaxed) + BIG_PIPE <= BIG_PIPES {
            // Refused past the user's pipe budget (fs.pipe-user-pages-soft): keep the default.
            pipe::fcntl_setpipe_size(&write, BIG_PIPE)
                .or_else(|_| pipe::fcntl_getpipe_size(&write))?
        } else {
            pipe::fcntl_getpipe_size(&write)?
        };
        Ok(Pipe::counted(read, write, capacity, 0))
    }

    /// A pipe handed over by the relay this one replaced, holding `pending` bytes.
    pub fn from_fds(read: OwnedFd, write: OwnedFd, pending: u32) -> io::Result<Pipe> {
        let capacity = pipe::fcntl_getpipe_size(&write)?;
        Ok(Pipe::counted(read, write, capacity, pending))
    }

    /// The pipe, counted among those open until it is dropped.
    fn counted(read: OwnedFd, write: OwnedFd, capacity: usize, pending: u32) -> Pipe {
        OPEN_PIPES.fetch_add(1, Ordering::Relaxed);
        OPEN_PIPE_BYTES.fetch_add(capacity, Ordering::Relaxed);
        Pipe {
            read,
            write,
            capacity: u32::try_from(capacity).unwrap_or(u32::MAX),
            pending,
        }
    }

    /// Its two ends, to hand the pipe to the next relay: read, then write.
    pub fn fds(&self) -> [BorrowedFd<'_>; 2] {
        [self.read.as_fd(), self.write.as_fd()]
    }

    /// Bytes the pipe can hold.
    pub fn capacity(&self) -> usize {
        self.capacity as usize
    }

    /// Moves up to `max` bytes from `socket` into the pipe. `Ok(0)` is end of stream.
    pub fn fill_from(&mut self, socket: &impl AsFd, max: usize) -> io::Result<usize> {
        let n = splice(socket.as_fd(), self.write.as_fd(), max)?;
        self.pending += n as u32;
        Ok(n)
    }

    /// Moves what the pipe holds into `socket`, as much as it takes now.
    pub fn drain_into(&mut self, socket: &impl AsFd) -> io::Result<usize> {
        let n = splice(self.read.as_fd(), socket.as_fd(), self.pending as usize)?;
        self.pending -= n as u32;
        Ok(n)
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        OPEN_PIPES.fetch_sub(1, Ordering::Relaxed);
        OPEN_PIPE_BYTES.fetch_sub(self.capacity(), Ordering::Relaxed);
    }
}

/// A big pipe moves a long download with about half the CPU of a default 64 KiB one
/// (fewer splices and wake-ups per GiB; BENCHMARKS.md, 2026-12-01).
const BIG_PIPE: usize = 1024 * 1024;
/// Big pipes hold at most this much in all. The kernel counts pipe capacity against a
/// per-user budget (fs.pipe-user-pages-soft, 64 MiB by default) and gives an unprivileged
/// user's pipes 8 KiB once it is spent: a quarter of it goes to a few big pipes for the
/// longest transfers, and the rest stays for many default-sized ones.
const BIG_PIPES: usize = 16 * 1024 * 1024;

fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
    Ok(pipe::splice(from, None, to, None, len, flags)?)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    /// Pipe tests share the process-wide counts: one at a time.
    pub(crate) static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn a_few_pipes_are_big_and_the_rest_default_sized() {
        let _alone = ONE_AT_A_TIME.lock().unwrap();
        let before = OPEN_PIPE_BYTES.load(Ordering::Relaxed);
        let pipes: Vec<Pipe> = (0..BIG_PIPES / BIG_PIPE + 4)
            .map(|_| Pipe::new().unwrap())
            .collect();
        let big = pipes.iter().filter(|p| p.capacity() == BIG_PIPE).count();
        assert!(
            big >= 1,
            "the first pipe is big (this test runs with a pipe budget)"
        );
        assert!(big <= BIG_PIPES / BIG_PIPE, "{big} big pipes");
        assert!(pipes.iter().any(|p| p.capacity() < BIG_PIPE));
        drop(pipes);
        assert_eq!(OPEN_PIPE_BYTES.load(Ordering::Relaxed), before);
    }

    #[test]
    fn bytes_pass_socket_to_pipe_to_socket_exactly() {
        let _alone = ONE_AT_A_TIME.lock().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut sender = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (from, _) = listener.accept().unwrap();
        let listener2 = TcpListener::bind("127.0.0.1:0").unwrap();
        let to = TcpStream::connect(listener2.local_addr().unwrap()).unwrap();
        let (mut receiver, _) = listener2.accept().unwrap();
        let data: Vec<u8> = (0..50_000u32).map(|i| (i * 7) as u8).collect();
        sender.write_all(&data).unwrap();
        drop(sender);
        let mut pipe = Pipe::new().unwrap();
        let mut moved = 0;
        loop {
            match pipe.fill_from(&from, 16 * 1024) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("{e}"),
            }
            while pipe.pending > 0 {
                moved += pipe.drain_into(&to).unwrap();
            }
        }
        drop(to);
        let mut got = Vec::new();
        receiver.read_to_end(&mut got).unwrap();
        assert_eq!((moved, got), (data.len(), data));
    }
}
