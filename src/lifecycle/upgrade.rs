//! `--upgrade-socket PATH`: upgrades and restarts without systemd and without refusing a
//! connection. A relay started with it first asks the relay already serving PATH for its
//! listening sockets (see [`crate::net::handover`]); either way it then offers its own
//! sockets at PATH to the next one, and stops accepting once that one serves.

use super::connections::{self, HandedOver};
use super::shutdown::Stopper;
use crate::config::Listener;
use crate::net::handover::{self, HandoverError, Predecessor, Role};
use crate::net::listen::{self, BindError, Handed};
use crate::state::Relay;
use crate::tcp::server::Server;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
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
    /// A socket could not be copied for the next relay.
    #[error("cannot copy a socket for the next relay: {0}")]
    Copy(#[from] io::Error),
    /// The upgrade socket's directory is missing and cannot be made.
    #[error(
        "--upgrade-socket: {dir} does not exist and cannot be made ({cause}); create it (mode 0700, owned by the relay's user), or under systemd set RuntimeDirectory=snirelay with RuntimeDirectoryPreserve=yes"
    )]
    Directory {
        /// The directory.
        dir: PathBuf,
        /// Why it could not be made.
        cause: io::Error,
    },
}

impl Inherited {
    /// Whether a relay was serving at the upgrade socket (and handed its sockets over).
    pub fn from_a_relay(&self) -> bool {
        self.predecessor.is_some()
    }
}

/// Makes the upgrade socket's directory (owner only: whoever can connect gets the
/// listening sockets) where it is missing and its own parent exists, as `/run/snirelay`
/// under `/run`; says what to create otherwise.
pub fn prepare_directory(path: &std::path::Path) -> Result<(), UpgradeError> {
    use std::os::unix::fs::DirBuilderExt;
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|e| UpgradeError::Directory {
            dir: dir.to_owned(),
            cause: e,
        })?;
    tracing::info!(dir = %dir.display(), "upgrade: made the upgrade socket's directory (mode 0700)");
    Ok(())
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
pub fn admin_listener(
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

/// What the relay offers the next one at its upgrade socket: copies of its listening sockets,
/// each with the listen entry it serves, and of its admin socket.
pub fn offered(
    listeners: &[(TcpListener, Listener)],
    admin: Option<(SocketAddr, &TcpListener)>,
) -> Result<Vec<(Role, OwnedFd)>, UpgradeError> {
    let mut offered = Vec::with_capacity(listeners.len() + 1);
    for (socket, entry) in listeners {
        let role = Role::Listen {
            addr: entry.addr,
            name: entry.name.clone().unwrap_or_default(),
        };
        offered.push((role, socket.as_fd().try_clone_to_owned()?));
    }
    if let Some((addr, admin)) = admin {
        offered.push((Role::Admin { addr }, admin.as_fd().try_clone_to_owned()?));
    }
    Ok(offered)
}

/// What a relay started with `--upgrade-socket` does with it once it serves.
pub struct Offer {
    /// The upgrade socket.
    pub path: PathBuf,
    /// What the relay before this one handed over, if one did.
    pub inherited: Inherited,
    /// This relay's sockets, for the next one.
    pub sockets: Vec<(Role, OwnedFd)>,
    /// Stops this relay's admin endpoint once the next relay has its connections.
    pub admin_handed_over: CancellationToken,
    /// Cancelled once this relay has taken the connections of the one before (or there
    /// were none to take): its admin endpoint starts then, its metrics carried on.
    pub taken_over: CancellationToken,
}

/// The upgrade socket's side of a running relay: once the predecessor (if any) has let go,
/// and handed over its connections (resumed on `server`), offers the sockets at the path;
/// when a new relay serves on them, stops this one accepting (through `stopper`), which then
/// hands over its connections. A stop signal ends the offer, and its copies of the sockets
/// close, so a stopping relay's listeners close as they would without an upgrade socket.
pub async fn offer(offer: Offer, stopper: Stopper, server: Server, relay: Arc<Relay>) {
    let Offer {
        path,
        mut inherited,
        sockets,
        admin_handed_over,
        taken_over,
    } = offer;
    if let Some(predecessor) = inherited.predecessor.take() {
        match tokio::task::spawn_blocking(move || predecessor.release()).await {
            Ok(Ok(None)) => tracing::info!("upgrade: the old relay stopped accepting"),
            Ok(Ok(Some(incoming))) => connections::take_over(incoming, &server, &relay).await,
            Ok(Err(e)) => tracing::warn!(error = %e, "upgrade: the old relay did not confirm"),
            Err(_) => return,
        }
    }
    taken_over.cancel();
    let borrowed: Vec<_> = sockets
        .iter()
        .map(|(role, fd)| (role.clone(), fd.as_fd()))
        .collect();
    // Again after a handover that failed: this relay serves on.
    loop {
        let listener = match handover::listen_at(&path) {
            Ok(listener) => listener,
            Err(e) => {
                tracing::error!(error = %e, "upgrade socket unavailable; the next upgrade will bind afresh");
                return;
            }
        };
        tracing::info!(path = %path.display(), "upgrade: offering the sockets to the next relay");
        let ours = file_id(&path);
        let successor = tokio::select! {
            successor = handover::offer(&listener, &borrowed) => successor,
            () = stopper.signalled().cancelled() => {
                // Stopping for good: the socket file goes too, unless another relay has
                // replaced it since.
                if ours.is_some() && file_id(&path) == ours {
                    let _ = std::fs::remove_file(&path);
                }
                return;
            }
        };
        drop(listener);
        let (serving_again, outcome) = oneshot::channel();
        stopper.handed_over(HandedOver {
            successor,
            admin: admin_handed_over.clone(),
            serving_again,
        });
        if outcome.await != Ok(true) {
            return;
        }
    }
}

/// The file at `path`, as device and inode, to tell it from one put in its place.
fn file_id(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}
