//! The accept loops: admission before a byte is read, then one task per connection. When
//! and how they stop is the relay's life (`lifecycle`, above this module); this is what
//! it stops.

use crate::config::{Listener, ProxyProtocol};
use crate::limits::Slot;
use crate::net::tcp_info::Legs;
use crate::outcome::Rejection;
use crate::policy::client_allowed;
use crate::state::{Relay, Settings};
use crate::tcp::connection::{Begin, connection};
use crate::tcp::stopping::Stopping;
use crate::telemetry::record::ConnectionRecord;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

/// Pause after an accept error such as EMFILE, so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The accept loops and the connections they started.
pub struct Server {
    accept_loops: TaskTracker,
    connections: TaskTracker,
    stopping: Arc<Stopping>,
}

impl Server {
    /// Accepts on every socket in `listeners`, each with the listen entry it serves.
    pub fn start(listeners: Vec<(TcpListener, Listener)>, relay: &Arc<Relay>) -> Server {
        let server = Server {
            accept_loops: TaskTracker::new(),
            connections: TaskTracker::new(),
            stopping: Arc::default(),
        };
        for (socket, listener) in listeners {
            server.accept_loops.spawn(accept_loop(
                socket,
                Arc::new(listener),
                relay.clone(),
                server.connections.clone(),
                server.stopping.clone(),
            ));
        }
        server.accept_loops.close();
        server
    }

    /// Stops accepting; returns once no accept loop can start another connection.
    pub async fn stop_accepting(&self) {
        self.stopping.drain();
        self.accept_loops.wait().await;
        self.connections.close();
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
        self.stopping.end();
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
