//! The accept loops: admission before a byte is read, then one task per connection. When
//! and how they stop is the relay's life (`lifecycle`, above this module); this is what
//! it stops.

use crate::config::Limits;
use crate::config::{Listener, ProxyProtocol};
use crate::limits::Slot;
use crate::net::tcp_info::Legs;
use crate::outcome::Rejection;
use crate::policy::client_allowed;
use crate::state::{Relay, Settings};
use crate::tcp::connection::{Begin, connection};
use crate::tcp::handover::{Parked, State};
use crate::tcp::stopping::Stopping;
use crate::telemetry::record::ConnectionRecord;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

/// Pause after an accept error such as EMFILE, so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The accept loops and the connections they started (or took over); clones are handles
/// on the same ones.
#[derive(Clone)]
pub struct Server {
    accept_loops: TaskTracker,
    connections: TaskTracker,
    /// What the connections watch; a new one for connections taken back after a handover
    /// that failed, since the old one has ended.
    stopping: Arc<Mutex<Arc<Stopping>>>,
    /// The listen entries, to open again a connection handed over while opening.
    entries: Arc<[Arc<Listener>]>,
    /// Copies of the listening sockets, each with its entry, to accept again after a
    /// handover failed; closed once the relay stops for good.
    copies: Arc<Mutex<Vec<SpareListener>>>,
    relay: Arc<Relay>,
}

/// A copy of a listening socket, with its listen entry.
type SpareListener = (OwnedFd, Arc<Listener>);

/// No limit: a connection handed over was admitted already, by the relay before.
const ADMITTED: Limits = Limits {
    max_connections: usize::MAX,
    max_connections_per_client: usize::MAX,
    max_pending_hellos: usize::MAX,
};

impl Server {
    /// Accepts on every socket in `listeners`, each with the listen entry it serves.
    pub fn start(listeners: Vec<(TcpListener, Listener)>, relay: &Arc<Relay>) -> Server {
        let mut copies = Vec::with_capacity(listeners.len());
        let mut sockets = Vec::with_capacity(listeners.len());
        let mut entries = Vec::with_capacity(listeners.len());
        for (socket, listener) in listeners {
            let listener = Arc::new(listener);
            entries.push(listener.clone());
            // Without a copy, accepting again after a failed handover goes without it.
            if let Ok(copy) = socket.as_fd().try_clone_to_owned() {
                copies.push((copy, listener.clone()));
            }
            sockets.push((socket, listener));
        }
        let server = Server {
            accept_loops: TaskTracker::new(),
            connections: TaskTracker::new(),
            stopping: Arc::default(),
            entries: entries.into(),
            copies: Arc::new(Mutex::new(copies)),
            relay: relay.clone(),
        };
        server.accept(sockets.into_iter());
        server
    }

    /// Starts an accept loop on each socket, for its listen entry.
    fn accept(&self, sockets: impl Iterator<Item = (TcpListener, Arc<Listener>)>) {
        let stopping = self.stopping();
        for (socket, listener) in sockets {
            self.accept_loops.spawn(accept_loop(
                socket,
                listener,
                self.relay.clone(),
                self.connections.clone(),
                stopping.clone(),
            ));
        }
        self.accept_loops.close();
    }

    /// Accepts again, after a handover that failed (the new relay is gone), on the same
    /// listening sockets; the connections taken back are then resumed as ones that never
    /// stopped.
    pub fn accept_again(&self) {
        {
            let mut current = self.stopping.lock().unwrap_or_else(PoisonError::into_inner);
            if current.is_draining() {
                *current = Arc::default();
            }
        }
        self.accept_loops.reopen();
        self.connections.reopen();
        let copies = self.copies.lock().unwrap_or_else(PoisonError::into_inner);
        let sockets = copies.iter().filter_map(|(fd, listener)| {
            let socket = std::net::TcpListener::from(fd.try_clone().ok()?);
            socket.set_nonblocking(true).ok()?;
            Some((TcpListener::from_std(socket).ok()?, listener.clone()))
        });
        self.accept(sockets);
    }

    /// Closes the copies of the listening sockets: the relay stops for good, and a socket
    /// nobody accepts on must not complete handshakes.
    pub fn close_listeners(&self) {
        self.copies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    fn stopping(&self) -> Arc<Stopping> {
        self.stopping
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Stops accepting; returns once no accept loop can start another connection.
    pub async fn stop_accepting(&self) {
        self.stopping().drain();
        self.accept_loops.wait().await;
        self.connections.close();
    }

    /// Stops every connection where it stands (once accepting has stopped), and returns
    /// them to be handed to the next relay.
    pub async fn park_connections(&self) -> Vec<Parked> {
        let stopping = self.stopping();
        stopping.hand_over();
        self.connections.wait().await;
        stopping.take_parked()
    }

    /// Carries on with connections handed over: by the relay this one replaced, or back
    /// from a new relay that did not take them (after a refusal, as connections of a relay
    /// that no longer accepts).
    pub fn resume(&self, parked: Vec<Parked>) {
        let stopping = {
            let mut current = self.stopping.lock().unwrap_or_else(PoisonError::into_inner);
            if current.has_ended() {
                let fresh = Stopping::default();
                fresh.drain();
                *current = Arc::new(fresh);
            }
            current.clone()
        };
        let relay = &self.relay;
        let settings = relay.settings();
        for Parked { client, state } in parked {
            let (record, begin) = match state {
                State::Forwarding(forwarding, record) => (*record, Begin::Resumed(forwarding)),
                State::Opening(opening) => {
                    let entry = self
                        .entries
                        .iter()
                        .find(|entry| entry.addr == opening.listen);
                    let (Some(entry), Ok(peer), Ok(local)) =
                        (entry, client.peer_addr(), client.local_addr())
                    else {
                        tracing::warn!(listen = %opening.listen, "a connection handed over for a listener this relay does not have: closed");
                        continue;
                    };
                    let record = ConnectionRecord::since(peer, local, opening.age);
                    (record, Begin::Reopened(entry.clone(), opening))
                }
            };
            // Never refused: the limits held when the relay before admitted it.
            let Ok(slot) = relay.counters().admit(record.client().ip(), &ADMITTED) else {
                continue;
            };
            self.connections.spawn(connection(
                client,
                record,
                begin,
                relay.clone(),
                settings.clone(),
                slot,
                stopping.clone(),
            ));
        }
    }

    /// Connections still open.
    pub fn live(&self) -> usize {
        self.connections.len()
    }

    /// Every connection has ended (once accepting has stopped).
    pub async fn drained(&self) {
        self.connections.wait().await;
    }

    /// Ends the connections still open, and returns once they have logged their end.
    pub async fn end_connections(&self) {
        self.stopping().end();
        self.connections.wait().await;
    }
}

async fn accept_loop(
    socket: TcpListener,
    listener: Arc<Listener>,
    relay: Arc<Relay>,
    connections: TaskTracker,
    stopping: Arc<Stopping>,
) {
    let Ok(local) = socket.local_addr() else {
        return;
    };
    tracing::info!(addr = %local, "listening");
    let mut failing = false;
    // Registered once: polled only while no connection waits to be accepted, and the flag
    // read at every accept, so a flood of them cannot keep the loop from stopping.
    let draining = stopping.draining().cancelled();
    tokio::pin!(draining);
    loop {
        if stopping.is_draining() {
            return;
        }
        let accepted = tokio::select! {
            biased;
            accepted = socket.accept() => accepted,
            () = &mut draining => return,
        };
        let (client, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: pause instead of spinning, and say so once per episode.
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(listener = %local, error = %e, "accept failing; pausing between attempts");
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        if std::mem::take(&mut failing) {
            tracing::info!(listener = %local, "accept recovered");
        }
        let running = relay.settings();
        match admit(&running, listener.proxy.as_ref(), peer, &relay) {
            Ok(slot) => {
                connections.spawn(connection(
                    client,
                    ConnectionRecord::new(peer, local),
                    Begin::Accepted(listener.clone()),
                    relay.clone(),
                    running,
                    slot,
                    stopping.clone(),
                ));
            }
            // Closed before a byte is read; the log line is the only trace.
            Err(rejection) => ConnectionRecord::new(peer, local).emit(
                Err(rejection),
                Legs::default(),
                relay.metrics(),
            ),
        }
    }
}

/// Admission, before a byte is read. On a PROXY protocol listener the peer is a balancer:
/// it must be trusted, and the client ACL and per-client limit wait for the header that
/// names the real client.
fn admit(
    settings: &Settings,
    proxy: Option<&ProxyProtocol>,
    peer: SocketAddr,
    relay: &Relay,
) -> Result<Slot, Rejection> {
    let limits = &settings.config.limits;
    match proxy {
        Some(proxy) if !client_allowed(peer.ip(), &proxy.trusted) => Err(Rejection::ProxyUntrusted),
        Some(_) => Ok(relay.counters().admit_unknown(limits)?),
        None if !client_allowed(peer.ip(), &settings.config.clients) => {
            Err(Rejection::ClientDenied)
        }
        None => Ok(relay.counters().admit(peer.ip(), limits)?),
    }
}
