//! The system calls tokio and socket2 do not make for us: splice(2) for zero-copy
//! forwarding (bytes move from one socket into a pipe and on into the other without passing
//! through user space), and taking ownership of the listening sockets systemd hands over.
//! This is the only module with `unsafe`: each block is one system call on descriptors it
//! owns or borrows for the duration of the call, or the adoption of descriptors this
//! process was given.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
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

/// Pipes open now, for `/metrics`.
static OPEN_PIPES: AtomicUsize = AtomicUsize::new(0);

/// How many splice pipes are open now (two descriptors each).
pub fn open_pipes() -> usize {
    OPEN_PIPES.load(Ordering::Relaxed)
}

/// A non-blocking pipe used as the splice buffer of one direction.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes spliced in and not yet out.
    pub pending: usize,
}

impl Pipe {
    /// A new pipe; the kernel allocates its pages only as data passes through.
    pub fn new() -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two descriptors into the array it is given, which is valid
        // and exactly two ints long; on success we take ownership of both.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created by pipe2 and are owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        OPEN_PIPES.fetch_add(1, Ordering::Relaxed);
        Ok(Pipe {
            read,
            write,
            pending: 0,
        })
    }

    /// Moves up to `max` bytes from `socket` into the pipe. `Ok(0)` is end of stream.
    pub fn fill_from(&mut self, socket: &impl AsRawFd, max: usize) -> io::Result<usize> {
        let n = splice(socket.as_raw_fd(), self.write.as_raw_fd(), max)?;
        self.pending += n;
        Ok(n)
    }

    /// Moves what the pipe holds into `socket`, as much as it takes now.
    pub fn drain_into(&mut self, socket: &impl AsRawFd) -> io::Result<usize> {
        let n = splice(self.read.as_raw_fd(), socket.as_raw_fd(), self.pending)?;
        self.pending -= n;
        Ok(n)
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        OPEN_PIPES.fetch_sub(1, Ordering::Relaxed);
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: splice only reads and writes kernel objects named by descriptors; both are
    // open for the duration of the call (borrowed from live sockets or owned by the Pipe),
    // and the null offsets are what splice requires for sockets and pipes.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn bytes_pass_socket_to_pipe_to_socket_exactly() {
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
