//! Connections that outlive the relay process: at an upgrade each connection stops where it
//! stands and is handed, sockets and state, to the new relay, which carries on with it.
//!
//! A forwarded connection goes as its two sockets, any splice pipe with the bytes still in
//! it, the bytes it had read and not yet written, its byte counts, the time since its last
//! byte and its log record; the new relay copies on from there. A connection still opening
//! (reading its PROXY header, CONNECT request or hello; resolving; connecting) goes as its
//! client socket and every byte the client has sent, and the new relay opens it again from
//! those bytes under what was left of the hello's deadline: the upstream has seen nothing
//! yet, and the client nothing but, on a CONNECT listener, the `200`, which is not sent
//! twice. A connection in the middle of writing a refusal (or the `200`) is not handed
//! over: it ends in the old relay, within the refusal's second.

use super::forward::{Copying, CopyingWire};
use crate::tcp_options::Keepalive;
use crate::telemetry::record::ConnectionRecord;
use base64::Engine;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;
use tokio::net::TcpStream;

/// Whether a connection being opened can be opened again by the next relay from what its
/// client sent: not while a refusal or the `200` is being written.
#[derive(Default)]
pub struct Replay(AtomicU8);

const FRESH: u8 = 0;
const ANSWERED: u8 = 1;
const WRITING: u8 = 2;

impl Replay {
    /// Replay of a connection the relay before this one had `answered` (a CONNECT
    /// request's `200`), or not.
    pub fn answered_before(answered: bool) -> Replay {
        Replay(AtomicU8::new(if answered { ANSWERED } else { FRESH }))
    }

    /// The client is being written to (a refusal, or the `200`): from now on the connection
    /// ends where it is, until [`Replay::answered`].
    pub fn writing(&self) {
        self.0.store(WRITING, Ordering::Relaxed);
    }

    /// The `200` is out: replayable again, without it.
    pub fn answered(&self) {
        self.0.store(ANSWERED, Ordering::Relaxed);
    }

    /// Whether the `200` was sent, by this relay or the one before.
    pub fn was_answered(&self) -> bool {
        self.0.load(Ordering::Relaxed) == ANSWERED
    }

    /// Whether the next relay can open the connection again from the bytes received.
    pub fn is_possible(&self) -> bool {
        self.0.load(Ordering::Relaxed) != WRITING
    }
}

/// A connection stopped to be handed over.
pub struct Parked {
    /// The client's socket.
    pub client: TcpStream,
    /// Where it stood.
    pub state: State,
}

/// Where a handed-over connection stood.
pub enum State {
    /// Not yet forwarding.
    Opening(Box<Opening>),
    /// Forwarding, with its log line so far.
    Forwarding(Box<Forwarding>, Box<ConnectionRecord>),
}

/// A connection still opening: what the next relay opens it again from.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Opening {
    /// Every byte the client has sent, from its first.
    #[serde(with = "bytes")]
    pub received: Vec<u8>,
    /// What was left of the hello's deadline (a CONNECT request's, before the `200`).
    pub hello_left: Duration,
    /// Whether the CONNECT request was answered with `200`.
    pub answered: bool,
    /// How long ago it was accepted.
    pub age: Duration,
    /// The listen entry it was accepted for, by its configured address.
    pub listen: SocketAddr,
}

/// A forwarded connection: what the next relay copies on from.
pub struct Forwarding {
    /// The upstream's socket.
    pub upstream: TcpStream,
    /// Where the copy stood.
    pub copying: Copying,
    /// The upstream's keepalive, if it is yet to be set.
    pub keepalive: Keepalive,
    /// The name it was opened for, as `/connections` lists it (empty where not listed).
    pub sni: Box<str>,
}

/// What travels as text beside the descriptors: client, then upstream and pipes.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum Wire {
    Opening(Box<Opening>),
    Forwarding(Box<ForwardingWire>),
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ForwardingWire {
    record: ConnectionRecord,
    copying: CopyingWire,
    keepalive: KeepaliveWire,
    sni: Box<str>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct KeepaliveWire {
    idle: Duration,
    interval: Duration,
    count: u32,
}

impl Parked {
    /// Bytes it holds that were read and not yet written: in buffers, and in pipes.
    pub fn held(&self) -> (u64, u64) {
        match &self.state {
            State::Opening(_) => (0, 0),
            State::Forwarding(forwarding, _) => forwarding.copying.held(),
        }
    }

    /// The connection as one line of JSON and its descriptors (borrowed: this relay keeps
    /// them until the next one has taken them).
    pub fn to_wire(&self) -> Result<(String, Vec<BorrowedFd<'_>>), String> {
        let mut fds = vec![self.client.as_fd()];
        let wire = match &self.state {
            State::Opening(opening) => Wire::Opening(Box::new(Opening {
                received: opening.received.clone(),
                ..**opening
            })),
            State::Forwarding(forwarding, record) => {
                fds.push(forwarding.upstream.as_fd());
                let (copying, pipes) = forwarding.copying.to_wire();
                fds.extend(pipes);
                let Keepalive {
                    idle,
                    interval,
                    count,
                } = forwarding.keepalive;
                Wire::Forwarding(Box::new(ForwardingWire {
                    record: (**record).clone(),
                    copying,
                    keepalive: KeepaliveWire {
                        idle,
                        interval,
                        count,
                    },
                    sni: forwarding.sni.clone(),
                }))
            }
        };
        let line = serde_json::to_string(&wire).map_err(|e| e.to_string())?;
        Ok((line, fds))
    }

    /// A connection as [`Parked::to_wire`] described it, on the descriptors that came with
    /// it. Must run within the runtime.
    pub fn from_wire(line: &str, fds: Vec<OwnedFd>) -> Result<Parked, String> {
        let wire: Wire = serde_json::from_str(line).map_err(|e| format!("{e}: {line:.200}"))?;
        let mut fds = fds.into_iter();
        let mut socket = || -> Result<TcpStream, String> {
            let fd = fds.next().ok_or("fewer descriptors than the line names")?;
            let socket = std::net::TcpStream::from(fd);
            socket.set_nonblocking(true).map_err(|e| e.to_string())?;
            TcpStream::from_std(socket).map_err(|e| e.to_string())
        };
        let client = socket()?;
        let state = match wire {
            Wire::Opening(opening) => State::Opening(opening),
            Wire::Forwarding(forwarding) => {
                let ForwardingWire {
                    record,
                    copying,
                    keepalive,
                    sni,
                } = *forwarding;
                let upstream = socket()?;
                let copying = Copying::from_wire(copying, &mut fds)?;
                let forwarding = Box::new(Forwarding {
                    upstream,
                    copying,
                    keepalive: Keepalive {
                        idle: keepalive.idle,
                        interval: keepalive.interval,
                        count: keepalive.count,
                    },
                    sni,
                });
                State::Forwarding(forwarding, Box::new(record))
            }
        };
        if fds.next().is_some() {
            return Err("more descriptors than the line names".into());
        }
        Ok(Parked { client, state })
    }
}

/// Bytes as base64 text in the JSON line.
pub(crate) mod bytes {
    use super::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <&str>::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_is_impossible_only_while_the_client_is_written_to() {
        let replay = Replay::default();
        assert!(replay.is_possible() && !replay.was_answered());
        replay.writing();
        assert!(!replay.is_possible());
        replay.answered();
        assert!(replay.is_possible() && replay.was_answered());
        assert!(Replay::answered_before(true).was_answered());
        assert!(!Replay::answered_before(false).was_answered());
    }
}
