//! `--upgrade-socket PATH`: upgrades and restarts without systemd and without refusing a
//! connection. A relay started with it first asks the relay already serving PATH for its
//! listening sockets (see [`crate::net::handover`]); either way it then offers its own
//! sockets at PATH to the next one, and stops accepting once that one serves.

use crate::net::handover::{self, HandoverError, Predecessor, Role};
use crate::net::listen::{self, BindError, Handed};
use crate::tcp::server::Stop;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What the relay being upgraded handed over.
#[derive(Default)]
pub struct Inherited {
    /// Its relay listeners.
    pub listeners: Vec<Handed>,
    /// Its admin listener, with the address it was configured for.
    pub admin: Option<(SocketAddr, OwnedFd)>,
    predecessor: Option<Predecessor>,
}

/// Why the sockets could not be taken over.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// The exchange failed.
    #[error(transparent)]
    Handover(#[from] HandoverError),
    /// A handed-over descriptor cannot serve.
    #[error("the running relay handed over a socket that cannot serve: {0}")]
    Unusable(String),
    /// The admin address could not be bound.
    #[error("admin endpoint: {0}")]
    Admin(#[from] BindError),
}

/// The sockets of the relay serving `path`, if one is; nothing when none is.
pub fn inherit(path: &std::path::Path) -> Result<Inherited, UpgradeError> {
    let Some((sockets, predecessor)) = handover::take(path)? else {
        return Ok(Inherited::default());
    };
    let mut inherited = Inherited {
        predecessor: Some(predecessor),
        ..Inherited::default()
    };
    for (role, fd) in sockets {
        match role {
            Role::Listen { addr, name } => inherited
                .listeners
                .push(Handed::inherited(fd, addr, name).map_err(UpgradeError::Unusable)?),
            Role::Admin { addr } => inherited.admin = Some((addr, fd)),
        }
    }
    tracing::info!(
        path = %path.display(),
        sockets = inherited.listeners.len() + usize::from(inherited.admin.is_some()),
        "upgrade: took over the running relay's sockets"
    );
    Ok(inherited)
}

/// The admin listener for the configured `addr`: the one handed over if it was opened for
/// the same address, else a new one.
pub fn admin(
    addr: SocketAddr,
    handed: Option<(SocketAddr, OwnedFd)>,
) -> Result<TcpListener, UpgradeError> {
    if let Some((configured, fd)) = handed
        && configured == addr
        && let Ok((socket, _)) = listen::prepare(fd)
        && let Ok(listener) = TcpListener::from_std(socket)
    {
        return Ok(listener);
    }
    Ok(listen::bind(addr)?)
}

/// How the upgrade socket stops this relay, and learns it is stopping anyway.
pub struct Stopping {
    /// Where the handover is announced to the accept loops.
    pub stops: mpsc::UnboundedSender<Stop>,
    /// The admin endpoint's stop.
    pub admin: CancellationToken,
    /// Cancelled by a stop signal: the offer ends, and its copies of the sockets close, so
    /// a stopping relay's listeners close as they would without an upgrade socket.
    pub signalled: CancellationToken,
}

/// The upgrade socket's side of a running relay: once the predecessor (if any) has let go,
/// offers `sockets` at `path`; when a new relay serves on them, stops this one accepting.
pub async fn offer(
    path: PathBuf,
    mut inherited: Inherited,
    sockets: Vec<(Role, OwnedFd)>,
    stopping: Stopping,
) {
    if let Some(predecessor) = inherited.predecessor.take() {
        match tokio::task::spawn_blocking(move || predecessor.release()).await {
            Ok(Ok(())) => tracing::info!("upgrade: the old relay stopped accepting"),
            Ok(Err(e)) => tracing::warn!(error = %e, "upgrade: the old relay did not confirm"),
            Err(_) => return,
        }
    }
    let listener = match handover::bind(&path) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(error = %e, "upgrade socket unavailable; the next upgrade will bind afresh");
            return;
        }
    };
    let borrowed: Vec<_> = sockets
        .iter()
        .map(|(role, fd)| (role.clone(), fd.as_fd()))
        .collect();
    let successor = tokio::select! {
        successor = handover::offer(&listener, &borrowed) => successor,
        () = stopping.signalled.cancelled() => return,
    };
    let _ = stopping.stops.send(Stop::HandedOver);
    stopping.admin.cancel();
    drop(listener);
    tokio::task::spawn_blocking(move || successor.bye());
}
