//! How the relay stops: the reasons to stop, the handle that asks for it (signals, the
//! upgrade socket, tests), and the sequence from serving to stopped.

use super::connections::{self, HandedOver, Handing};
use crate::state::{Phase, Relay};
use crate::systemd;
use crate::tcp::server::Server;
use crate::telemetry::quota;
use std::io;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Why the relay stops accepting.
#[derive(Debug)]
pub enum Stop {
    /// A signal, by name: SIGTERM or SIGINT.
    Signal(&'static str),
    /// A new relay serves on the same sockets: no balancer needs a grace period, since
    /// nothing arriving on them is refused; the connections go to it.
    HandedOver(Box<HandedOver>),
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stop::Signal(name) => name,
            Stop::HandedOver(_) => "handover",
        })
    }
}

/// Asks the relay to stop; clones ask the same relay. The first request starts the
/// shutdown, each further one skips the wait in progress.
#[derive(Clone)]
pub struct Stopper {
    requests: mpsc::UnboundedSender<Stop>,
    signalled: CancellationToken,
}

/// The stop requests, as [`serve`] receives them.
pub struct Requests(mpsc::UnboundedReceiver<Stop>);

impl Requests {
    /// The next request; never, once nobody can send one.
    async fn next(&mut self) -> Stop {
        match self.0.recv().await {
            Some(stop) => stop,
            None => std::future::pending().await,
        }
    }
}

impl Stopper {
    /// A stopper and the requests it sends.
    pub fn new() -> (Stopper, Requests) {
        let (requests, received) = mpsc::unbounded_channel();
        let stopper = Stopper {
            requests,
            signalled: CancellationToken::new(),
        };
        (stopper, Requests(received))
    }

    /// A stop signal arrived, by name.
    pub fn signal(&self, name: &'static str) {
        self.signalled.cancel();
        let _ = self.requests.send(Stop::Signal(name));
    }

    /// A new relay serves on this one's sockets, and waits for its connections.
    pub fn handed_over(&self, handed: HandedOver) {
        let _ = self.requests.send(Stop::HandedOver(Box::new(handed)));
    }

    /// Cancelled at the first stop signal.
    pub fn signalled(&self) -> &CancellationToken {
        &self.signalled
    }
}

/// Registers the SIGTERM and SIGINT handlers now, before the relay says it is listening
/// (a signal before registration would end the process with the default action), and
/// passes on every one of them, by name, for as long as the process runs.
pub fn on_signals(stopper: Stopper) -> io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            stopper.signal(name);
        }
    });
    Ok(())
}

/// Serves with `server` until the first stop request. Then, in order: for a signal, /readyz
/// turns 503 and the listeners keep accepting for `lb_grace_s`, so a balancer that polls
/// /readyz stops sending before anything is refused; accepting stops (and ready
/// connections to far relays close); at an upgrade, the connections go to the new relay
/// (a new relay gone before it took them leaves this one serving on); those still here get
/// `drain_s`; the rest are ended. A further request skips the wait in progress.
pub async fn serve(server: Server, relay: Arc<Relay>, mut requests: Requests) {
    let rejections = relay.metrics().rejections.clone();
    let summaries = tokio::spawn(quota::report_suppressed(rejections));
    systemd::ready(&relay);
    loop {
        match requests.next().await {
            Stop::Signal(signal) => {
                relay.set_phase(Phase::Draining);
                systemd::stopping(&relay);
                let lb_grace = relay.settings().config.timeouts.lb_grace;
                if lb_grace.is_zero() {
                    tracing::info!(
                        signal,
                        "shutting down: not ready; no grace period (lb_grace_s 0)"
                    );
                } else {
                    tracing::info!(
                        signal,
                        lb_grace_s = lb_grace.as_secs(),
                        "shutting down: not ready, still accepting for the balancer's grace period"
                    );
                    tokio::select! {
                        () = tokio::time::sleep(lb_grace) => {}
                        stop = requests.next() => tracing::info!(signal = %stop, "grace period cut short"),
                    }
                }
                server.stop_accepting().await;
                break;
            }
            Stop::HandedOver(handed) => {
                tracing::info!("handed over to the new relay: no longer accepting");
                server.stop_accepting().await;
                // Ready until here: the new relay serves, and answers /readyz once it has
                // the connections.
                if connections::hand_over(&server, &relay, *handed).await == Handing::Failed {
                    continue;
                }
                relay.set_phase(Phase::Draining);
                systemd::stopping(&relay);
                break;
            }
        }
    }
    server.close_listeners();
    // No client will take an edge's ready connections now.
    relay.pools().close();
    let timeouts = relay.settings().config.timeouts;
    tracing::info!(
        live = server.live(),
        drain_s = timeouts.drain.as_secs(),
        "draining"
    );
    tokio::select! {
        () = tokio::time::sleep(timeouts.drain) => {}
        () = server.drained() => {}
        stop = requests.next() => tracing::info!(signal = %stop, "drain cut short"),
    }
    server.end_connections().await;
    summaries.abort();
    quota::log_suppressed(&relay.metrics().rejections);
    // Every connection has ended and queued its audit line: write them out (briefly
    // blocking; nothing else runs now).
    relay.metrics().audit.finish();
    tracing::info!("stopped");
}
