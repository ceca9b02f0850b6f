//! Upgrades without systemd: the running relay hands its listening sockets to the new one
//! over a Unix socket, as HAProxy's `-x` and pingora's `--upgrade` do.
//!
//! Both processes then hold the same kernel sockets, so there is one accept queue: a
//! connection that arrives during the upgrade waits in it until one of them accepts, and
//! none is refused. On a connection to the old relay's upgrade socket:
//! 1. old → new: the greeting line, then one line per socket (`listen ADDR NAME` or `admin ADDR`,
//!    with the configured entry it was opened for), the descriptors in the same message;
//! 2. the new relay serves on them, then sends `ready`;
//! 3. the old relay stops accepting and hands over its connections and its metrics' totals
//!    ([`connections`]; protocol 2), then answers `bye`; the new one then takes over the
//!    upgrade socket's path for the next upgrade.
//!
//! Until step 3 the old relay serves as before: a new one that fails changes nothing. A new
//! relay also takes over from one that speaks protocol 1, which answers `bye` at once and
//! drains its connections instead; one that speaks only 1 refuses a relay that speaks 2
//! (the greeting differs), which then goes on serving.

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, recvmsg, sendmsg,
};
use std::io::{self, BufRead, BufReader, IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod connections;

/// The first line of a handover; a peer that says anything else is not a relay.
const GREETING: &str = "snirelay-handover 2";
/// The greeting of a relay that hands over its listening sockets but not its connections.
const GREETING_1: &str = "snirelay-handover 1";
/// More sockets than any relay listens on; bounds the control message.
const MAX_SOCKETS: usize = 32;
/// The greeting and the socket lines fit in this, with room to spare.
const MAX_MESSAGE: usize = 8192;
/// Either side waits this long for the other before giving up on the handover.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// What a handed-over socket is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// A relay listener, opened for the listen entry with this address and name.
    Listen {
        /// The entry's `addr` as configured (its port may be 0).
        addr: SocketAddr,
        /// The entry's `name`, or empty.
        name: String,
    },
    /// The admin endpoint, opened for this configured address.
    Admin {
        /// The `admin` address as configured (its port may be 0).
        addr: SocketAddr,
    },
}

/// A handover that did not happen.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// The socket or the exchange on it failed.
    #[error("upgrade socket {path}: {doing}: {cause}")]
    Io {
        /// The upgrade socket.
        path: PathBuf,
        /// What was being done.
        doing: &'static str,
        /// What the OS said.
        cause: io::Error,
    },
    /// The other side said something a relay would not.
    #[error("upgrade socket {path}: expected {expected}, got {got:?}")]
    Protocol {
        /// The upgrade socket.
        path: PathBuf,
        /// What was expected.
        expected: &'static str,
        /// What came instead.
        got: String,
    },
}

fn io_error(path: &Path, doing: &'static str) -> impl FnOnce(io::Error) -> HandoverError {
    let path = path.to_owned();
    move |cause| HandoverError::Io { path, doing, cause }
}

fn protocol(path: &Path, expected: &'static str, got: &[u8]) -> HandoverError {
    HandoverError::Protocol {
        path: path.to_owned(),
        expected,
        got: String::from_utf8_lossy(got).into_owned(),
    }
}

/// The text that goes with the descriptors: the greeting, then one line per socket.
fn encode(roles: &[Role]) -> String {
    let mut text = format!("{GREETING}\n");
    for role in roles {
        match role {
            Role::Listen { addr, name } => text.push_str(&format!("listen {addr} {name}\n")),
            Role::Admin { addr } => text.push_str(&format!("admin {addr}\n")),
        }
    }
    text
}

/// The protocol version and the roles [`encode`] wrote, or what was wrong. Pure.
fn decode(text: &str) -> Result<(u8, Vec<Role>), String> {
    let mut lines = text.lines();
    let version = match lines.next() {
        Some(GREETING) => 2,
        Some(GREETING_1) => 1,
        _ => return Err(format!("not a handover: {text:?}")),
    };
    let roles = lines
        .map(|line| {
            let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
            let (addr, name) = rest.split_once(' ').unwrap_or((rest, ""));
            let addr = || addr.parse().map_err(|_| format!("bad address in {line:?}"));
            match kind {
                "listen" => Ok(Role::Listen {
                    addr: addr()?,
                    name: name.to_owned(),
                }),
                "admin" => Ok(Role::Admin { addr: addr()? }),
                _ => Err(format!("unknown socket line {line:?}")),
            }
        })
        .collect::<Result<_, _>>()?;
    Ok((version, roles))
}

/// Opens the upgrade socket at `path` for the next relay, replacing any socket file there
/// in one step (bound aside, then renamed over), so there is never a moment with none.
/// Only the owner may connect: whoever connects gets the listening sockets.
pub fn listen_at(path: &Path) -> Result<tokio::net::UnixListener, HandoverError> {
    let aside = path.with_extension(format!("new.{}", std::process::id()));
    let _ = std::fs::remove_file(&aside);
    let listener = UnixListener::bind(&aside).map_err(io_error(&aside, "bind"))?;
    let opened = std::fs::set_permissions(&aside, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&aside, path))
        .and_then(|()| listener.set_nonblocking(true))
        .and_then(|()| tokio::net::UnixListener::from_std(listener));
    opened.map_err(|e| {
        let _ = std::fs::remove_file(&aside);
        io_error(path, "open")(e)
    })
}

/// The sockets a running relay handed over, and the way to tell it to stop accepting.
pub struct Predecessor {
    stream: UnixStream,
    path: PathBuf,
    version: u8,
}

/// The sockets a running relay handed over, each with its role, and the relay itself.
pub type Taken = (Vec<(Role, OwnedFd)>, Predecessor);

/// Asks the relay serving `path` for its sockets. `Ok(None)` when no relay is there: no
/// file, or a file nobody listens on (left by a relay that was killed).
pub fn take(path: &Path) -> Result<Option<Taken>, HandoverError> {
    let stream = match UnixStream::connect(path) {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(io_error(path, "connect")(e)),
    };
    stream
        .set_read_timeout(Some(PATIENCE))
        .map_err(io_error(path, "connect"))?;
    let mut text = vec![0u8; MAX_MESSAGE];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = recvmsg(
        &stream,
        &mut [IoSliceMut::new(&mut text)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(|e| io_error(path, "receive the sockets")(e.into()))?;
    let fds = descriptors(&mut control);
    let text = &text[..received.bytes];
    let (version, roles) = std::str::from_utf8(text)
        .map_err(|_| ())
        .and_then(|text| decode(text).map_err(|_| ()))
        .map_err(|()| protocol(path, "the list of sockets", text))?;
    if roles.len() != fds.len() {
        return Err(protocol(path, "one descriptor per socket", text));
    }
    let predecessor = Predecessor {
        stream,
        path: path.to_owned(),
        version,
    };
    Ok(Some((roles.into_iter().zip(fds).collect(), predecessor)))
}

/// The connections an old relay offers, and the way to answer it.
pub struct Incoming {
    /// What it sent.
    pub received: connections::Received,
    /// Where to answer.
    pub answer: Answer,
}

/// The answer to an old relay that sent its connections.
pub struct Answer {
    stream: UnixStream,
    path: PathBuf,
}

impl Predecessor {
    /// Tells the old relay this one is serving, and waits for it to stop accepting. Its
    /// connections, if it offers them: take them ([`Answer::taken`]) or not; without an
    /// offer, the path is this relay's to [`bind`] at once.
    pub fn release(self) -> Result<Option<Incoming>, HandoverError> {
        let path = &self.path;
        (&self.stream)
            .write_all(b"ready\n")
            .map_err(io_error(path, "say ready"))?;
        let line = read_line(&self.stream).map_err(io_error(path, "wait for the old relay"))?;
        if line == b"bye\n" {
            return Ok(None);
        }
        if self.version == 1 {
            return Err(protocol(path, "bye", &line));
        }
        let first = String::from_utf8_lossy(&line);
        match connections::receive(&self.stream, first.trim_end()) {
            Ok(received) => Ok(Some(Incoming {
                received,
                answer: Answer {
                    stream: self.stream,
                    path: self.path,
                },
            })),
            Err(why) => {
                let _ = connections::answer(&self.stream, &format!("refuse {why}"));
                Err(protocol(path, "its connections", why.as_bytes()))
            }
        }
    }
}

impl Answer {
    /// Says all `count` connections are taken; `Ok` once the old relay let go of them (and
    /// the path is this relay's), else they are not this relay's to use.
    pub fn taken(self, count: usize) -> Result<(), HandoverError> {
        connections::answer(&self.stream, &format!("taken {count}"))
            .map_err(io_error(&self.path, "wait for the old relay to let go"))
    }

    /// Says the connections cannot be taken, and why: the old relay keeps them.
    pub fn refuse(self, why: &str) -> Result<(), HandoverError> {
        connections::answer(&self.stream, &format!("refuse {why}"))
            .map_err(io_error(&self.path, "wait for the old relay"))
    }
}

/// The descriptors that came with a message; anything else in its control data is dropped.
fn descriptors(control: &mut RecvAncillaryBuffer<'_>) -> Vec<OwnedFd> {
    control
        .drain()
        .filter_map(|message| match message {
            RecvAncillaryMessage::ScmRights(fds) => Some(fds),
            _ => None,
        })
        .flatten()
        .collect()
}

/// One line, at most [`MAX_MESSAGE`] bytes of it.
fn read_line(stream: &UnixStream) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    BufReader::new(io::Read::take(stream, MAX_MESSAGE as u64)).read_until(b'\n', &mut line)?;
    Ok(line)
}

/// Waits for a new relay on `listener` and hands it `sockets`; returns once one has said
/// it is serving, with the connection to answer `bye` on. A new relay that fails before
/// that changes nothing: the next one is offered the same sockets.
pub async fn offer(
    listener: &tokio::net::UnixListener,
    sockets: &[(Role, BorrowedFd<'_>)],
) -> Successor {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "upgrade socket: accept failed; pausing");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(stream) = stream.into_std() else {
            continue;
        };
        let handed = stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_read_timeout(Some(PATIENCE)))
            .and_then(|()| stream.set_write_timeout(Some(PATIENCE)))
            .and_then(|()| send(&stream, sockets));
        if let Err(e) = handed {
            tracing::warn!(error = %e, "upgrade: cannot hand the sockets over; still serving");
            continue;
        }
        tracing::info!("upgrade: sockets handed to a new relay; waiting for it to serve");
        let waited =
            tokio::task::spawn_blocking(move || read_line(&stream).map(|answer| (stream, answer)))
                .await;
        match waited {
            Ok(Ok((stream, answer))) if answer == b"ready\n" => return Successor { stream },
            Ok(Ok((_, answer))) if answer.is_empty() => tracing::warn!(
                why = "it closed the connection without a word: see its own log",
                "upgrade: the new relay did not start; still serving"
            ),
            Ok(Ok((_, answer))) => tracing::warn!(
                answer = %String::from_utf8_lossy(&answer),
                "upgrade: the new relay did not start; still serving"
            ),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "upgrade: the new relay did not start; still serving")
            }
            Err(_) => {}
        }
    }
}

fn send(stream: &UnixStream, sockets: &[(Role, BorrowedFd<'_>)]) -> io::Result<()> {
    let roles: Vec<Role> = sockets.iter().map(|(role, _)| role.clone()).collect();
    let fds: Vec<BorrowedFd<'_>> = sockets.iter().map(|(_, fd)| *fd).collect();
    let text = encode(&roles);
    if fds.len() > MAX_SOCKETS || text.len() > MAX_MESSAGE {
        return Err(io::Error::other("too many sockets to hand over"));
    }
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    control.push(SendAncillaryMessage::ScmRights(&fds));
    let sent = sendmsg(
        stream.as_fd(),
        &[IoSlice::new(text.as_bytes())],
        &mut control,
        SendFlags::empty(),
    )?;
    if sent != text.len() {
        return Err(io::Error::other("the socket list was cut short"));
    }
    Ok(())
}

/// A new relay that is serving on the handed-over sockets.
pub struct Successor {
    stream: UnixStream,
}

impl std::fmt::Debug for Successor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Successor")
    }
}

impl Successor {
    /// Hands it `connections` and the `metrics` text (see [`connections`]), waiting at most
    /// `patience`; how many it took. They are its own once [`Successor::bye`] is said: until
    /// then this relay may resume them itself.
    pub async fn hand(
        &mut self,
        connections: &[connections::Item<BorrowedFd<'_>>],
        metrics: &str,
        patience: Duration,
    ) -> Result<usize, connections::NotTaken> {
        let stream = self.stream.try_clone()?;
        stream.set_nonblocking(true)?;
        let stream = tokio::net::UnixStream::from_std(stream)?;
        tokio::time::timeout(patience, connections::send(&stream, connections, metrics))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the new relay did not answer in time",
                )
            })?
    }

    /// Tells it this relay no longer accepts (and, after [`Successor::hand`], that the
    /// connections are its own), so it may take over the upgrade socket.
    pub fn bye(self) {
        // The stream may have been made non-blocking by `hand`: the word is one small
        // write into an empty buffer.
        if let Err(e) = (&self.stream).write_all(b"bye\n") {
            tracing::warn!(error = %e, "upgrade: cannot say bye to the new relay");
        }
    }
}

#[cfg(test)]
mod tests;
