//! Connections that survive an upgrade: the old relay stops each where it stands and hands
//! it over with its sockets (`tcp::handover`, `net::handover::connections`); the new one
//! carries on with them, and with the old one's metrics' totals, so no counter goes back.
//! Until the new relay has taken them all, the old one keeps every connection: a new
//! relay that refuses, fails or does not answer in time leaves them where they were.

use crate::net::handover::connections::NotTaken;
use crate::net::handover::{Incoming, Successor};
use crate::state::Relay;
use crate::tcp::handover::Parked;
use crate::tcp::server::Server;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// How long the old relay waits for the new one to take its connections. They are a few
/// hundred bytes of text each and their descriptors: a healthy relay takes many thousands
/// in well under a second.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A new relay serves on this one's sockets and waits for its connections.
#[derive(Debug)]
pub struct HandedOver {
    /// The new relay.
    pub successor: Successor,
    /// Stops this relay's admin endpoint, once the new one has the connections (and its
    /// metrics continue from this one's).
    pub admin: CancellationToken,
    /// Told whether this relay serves again (the new one is gone): then it offers its
    /// sockets at the upgrade socket again.
    pub serving_again: oneshot::Sender<bool>,
}

/// How a handover of the connections ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handing {
    /// The new relay has them all.
    Taken,
    /// The new relay serves, but refused them: they stay here until they end, as they
    /// would without a handover.
    Refused,
    /// The new relay closed the connection or did not answer in time: it may be gone, so
    /// this relay keeps its connections and serves again.
    Failed,
}

/// The old relay's side, once it has stopped accepting: every connection is stopped where
/// it stands and handed over with the metrics' totals. Those the new relay does not take
/// go on here.
pub async fn hand_over(server: &Server, relay: &Relay, handed: HandedOver) -> Handing {
    let HandedOver {
        mut successor,
        admin,
        serving_again,
    } = handed;
    let parked = server.park_connections().await;
    let (buffered, piped) = parked
        .iter()
        .map(Parked::held)
        .fold((0, 0), |(b, p), (buffered, piped)| {
            (b + buffered, p + piped)
        });
    let described: Result<Vec<_>, String> = parked.iter().map(Parked::to_wire).collect();
    // After parking: every byte moved is counted in them.
    let metrics = relay.metrics().render(relay.counters(), true);
    let sent = match &described {
        Ok(items) => successor.hand(items, &metrics, PATIENCE).await,
        // Not a word sent: the new relay goes on without them, as after a refusal.
        Err(e) => Err(NotTaken::Refused(format!(
            "this relay cannot describe them: {e}"
        ))),
    };
    drop(described);
    let handing = match &sent {
        Ok(_) => Handing::Taken,
        Err(NotTaken::Refused(_)) => Handing::Refused,
        Err(NotTaken::Failed(_)) => Handing::Failed,
    };
    if handing != Handing::Failed {
        admin.cancel();
    }
    match sent {
        Ok(taken) => {
            // Its copies close here; the sockets live on in the new relay.
            drop(parked);
            successor.bye();
            tracing::info!(
                connections = taken,
                buffered_bytes = buffered,
                piped_bytes = piped,
                "upgrade: the new relay took every connection"
            );
        }
        Err(e) => {
            let kept = parked.len();
            // A relay that refused waits for the word to take over the upgrade socket;
            // one that failed gets none, so it never uses what it may have received.
            if handing == Handing::Refused {
                successor.bye();
            } else {
                server.accept_again();
            }
            server.resume(parked);
            tracing::warn!(
                error = %e,
                connections = kept,
                serving = handing == Handing::Failed,
                "upgrade: the new relay did not take the connections; they stay with this relay"
            );
        }
    }
    if handing == Handing::Failed {
        tracing::info!("serving again: the new relay is gone");
    }
    let _ = serving_again.send(handing == Handing::Failed);
    handing
}

/// The new relay's side: takes the connections `incoming` offers, and the old relay's
/// metrics' totals, once the old one has let go of them.
pub async fn take_over(incoming: Incoming, server: &Server, relay: &Relay) {
    let Incoming { received, answer } = incoming;
    let parked: Result<Vec<Parked>, String> = received
        .connections
        .into_iter()
        .map(|(line, fds)| Parked::from_wire(&line, fds))
        .collect();
    let parked = match parked {
        Ok(parked) => parked,
        Err(why) => {
            tracing::warn!(
                why,
                "upgrade: cannot take the old relay's connections; it keeps them"
            );
            let _ = tokio::task::spawn_blocking(move || answer.refuse(&why)).await;
            return;
        }
    };
    let count = parked.len();
    match tokio::task::spawn_blocking(move || answer.taken(count)).await {
        Ok(Ok(())) => {
            relay.metrics().carry_on_from(&received.metrics);
            server.resume(parked);
            tracing::info!(
                connections = count,
                "upgrade: took over the old relay's connections"
            );
        }
        Ok(Err(e)) => tracing::warn!(
            error = %e,
            "upgrade: the old relay did not let go of its connections; they stay with it"
        ),
        Err(_) => {}
    }
}
