//! The accept loops and shutdown: admission before a byte is read, then one task per
//! connection, and a drain that lets live connections finish.

use crate::config::{Listener, ProxyProtocol};
use crate::limits::Slot;
use crate::outcome::Rejection;
use crate::policy::client_allowed;
use crate::state::{Phase, Relay, Settings};
use crate::systemd;
use crate::tcp::connection::connection;
use crate::telemetry::log::ConnectionLog;
use crate::telemetry::quota;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Pause after an accept error such as EMFILE, so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Why the relay stops accepting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// A signal, by name: SIGTERM or SIGINT.
    Signal(&'static str),
    /// A new relay serves on the same sockets: no balancer needs a grace period, since
    /// nothing arriving on them is refused.
    HandedOver,
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stop::Signal(name) => name,
            Stop::HandedOver => "handover",
        })
    }
}

/// Serves `listeners`, each with the settings it was opened for, until the first message on
/// `stops`. Then, in order: /readyz turns 503 at once; for a signal, the listeners keep
/// accepting for `lb_grace_s`, so a balancer that polls /readyz stops sending before
/// anything is refused; accepting stops; live connections get `drain_s`; the rest are
/// ended. A further message on `stops` skips the wait in progress.
pub async fn serve(
    listeners: Vec<(TcpListener, Listener)>,
    relay: Arc<Relay>,
    mut stops: mpsc::UnboundedReceiver<Stop>,
) {
    let connections = TaskTracker::new();
    let stop = CancellationToken::new();
    let accepting = CancellationToken::new();
    let accept_loops = TaskTracker::new();
    // Ready before any accept loop says it is listening, so whoever saw that line finds
    // /readyz agreeing.
    relay.set_phase(Phase::Serving);
    for (listener, settings) in listeners {
        accept_loops.spawn(accept_loop(
            listener,
            Arc::new(settings),
            relay.clone(),
            connections.clone(),
            accepting.clone(),
            stop.clone(),
        ));
    }
    accept_loops.close();
    let summaries = tokio::spawn(quota::report_suppressed(&quota::REJECTIONS));
    systemd::ready(&relay);
    let first = next_stop(&mut stops).await;
    relay.set_phase(Phase::Draining);
    systemd::stopping(&relay);
    let timeouts = relay.settings().config.timeouts;
    match first {
        Stop::Signal(signal) => {
            tracing::info!(
                signal,
                lb_grace_s = timeouts.lb_grace.as_secs(),
                "shutting down: not ready, still accepting for the balancer's grace period"
            );
            tokio::select! {
                () = tokio::time::sleep(timeouts.lb_grace) => {}
                stop = next_stop(&mut stops) => tracing::info!(signal = %stop, "grace period cut short"),
            }
        }
        Stop::HandedOver => tracing::info!("handed over to the new relay: no longer accepting"),
    }
    accepting.cancel();
    accept_loops.wait().await;
    connections.close();
    tracing::info!(
        live = connections.len(),
        drain_s = timeouts.drain.as_secs(),
        "draining"
    );
    tokio::select! {
        () = tokio::time::sleep(timeouts.drain) => {}
        () = connections.wait() => {}
        stop = next_stop(&mut stops) => tracing::info!(signal = %stop, "drain cut short"),
    }
    stop.cancel();
    connections.wait().await;
    summaries.abort();
    quota::log_suppressed(&quota::REJECTIONS);
    tracing::info!("stopped");
}

/// The next stop; never, once nobody can send one.
async fn next_stop(stops: &mut mpsc::UnboundedReceiver<Stop>) -> Stop {
    match stops.recv().await {
        Some(stop) => stop,
        None => std::future::pending().await,
    }
}

async fn accept_loop(
    listener: TcpListener,
    settings: Arc<Listener>,
    relay: Arc<Relay>,
    connections: TaskTracker,
    accepting: CancellationToken,
    stop: CancellationToken,
) {
    let Ok(local) = listener.local_addr() else {
        return;
    };
    tracing::info!(addr = %local, "listening");
    let mut failing = false;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = accepting.cancelled() => return,
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
        match admit(&running, settings.proxy.as_ref(), peer, &relay) {
            Ok(slot) => {
                connections.spawn(connection(
                    client,
                    ConnectionLog::new(peer, local),
                    settings.clone(),
                    relay.clone(),
                    running,
                    slot,
                    stop.clone(),
                ));
            }
            // Closed before a byte is read; the log line is the only trace.
            Err(rejection) => ConnectionLog::new(peer, local).emit(Err(rejection), relay.metrics()),
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
