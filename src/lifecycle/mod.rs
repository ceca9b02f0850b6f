//! The relay's life: start-up (sockets from systemd, from the relay being upgraded, or bound
//! here; the admin endpoint, the reloader, the watchdog), serving, and the way it stops
//! ([`shutdown`]: signals, phases, grace and drain; [`upgrade`]: handing the sockets on).
//! `main.rs` calls [`run`]; tests call [`start`] and drive the relay with its [`Stopper`].

pub mod connections;
pub mod shutdown;
pub mod upgrade;

use crate::config::Config;
use crate::net::listen::{self, ActivationError, OpenError};
use crate::reload::{Fixed, Reloader};
use crate::resolve::Override;
use crate::state::{Phase, Relay, Settings};
use crate::tcp::server::Server;
use shutdown::{Requests, Stopper};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use upgrade::UpgradeError;

/// What the relay is started with.
pub struct Options {
    /// The validated configuration, with the command line's values already in it.
    pub config: Config,
    /// The text `config` was parsed from, so the reloader knows an unchanged file.
    pub text: String,
    /// Where the config file is, to reload it.
    pub path: PathBuf,
    /// What the command line fixed, which a reload leaves alone.
    pub fixed: Fixed,
    /// `--resolve` overrides.
    pub overrides: Vec<Override>,
    /// `--upgrade-socket`: where to take sockets from, and offer them on.
    pub upgrade_socket: Option<PathBuf>,
}

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The sockets of the relay being upgraded could not be taken.
    #[error(transparent)]
    Upgrade(#[from] UpgradeError),
    /// systemd's sockets could not be taken.
    #[error(transparent)]
    Activation(#[from] ActivationError),
    /// A listener could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The configuration cannot run (a nameserver the resolver refuses).
    #[error("{0}")]
    Settings(String),
    /// An upgrade was asked for, no relay offered its sockets, and a listener address is
    /// taken: the relay holding it runs without this upgrade socket.
    #[error(
        "cannot listen on {addr}: it is taken, and no relay offered its sockets at {path} (the one holding {addr} was started without --upgrade-socket {path}, or with another path, or cannot create it: see its log). Stopping it means downtime; start every relay with the same --upgrade-socket to upgrade without any"
    )]
    NoOffer {
        /// The listener address.
        addr: SocketAddr,
        /// The upgrade socket asked for.
        path: PathBuf,
    },
    /// Stop signals cannot be handled.
    #[error("cannot handle SIGTERM and SIGINT: {0}")]
    Signals(std::io::Error),
    /// The audit log cannot be opened.
    #[error("audit_log {path}: cannot open it: {source}")]
    Audit {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// A relay whose sockets are open, not yet serving.
pub struct Started {
    relay: Arc<Relay>,
    listeners: Vec<(TcpListener, crate::config::Listener)>,
    stopper: Stopper,
    requests: Requests,
    offer: Option<upgrade::Offer>,
}

impl Started {
    /// The running relay's state.
    pub fn relay(&self) -> &Arc<Relay> {
        &self.relay
    }

    /// Where the listeners listen, in the order of the config's `listen`, handed-over
    /// sockets first.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|(socket, _)| socket.local_addr().ok())
            .collect()
    }

    /// What stops this relay.
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Serves until stopped ([`shutdown::serve`]).
    pub async fn serve(self) {
        // Ready before any accept loop says it is listening, so whoever saw that line finds
        // /readyz agreeing.
        self.relay.set_phase(Phase::Serving);
        self.relay.start_pools(&self.relay.settings());
        let server = Server::start(self.listeners, &self.relay);
        let offering = self.offer.map(|offer| {
            let (stopper, relay) = (self.stopper.clone(), self.relay.clone());
            tokio::spawn(upgrade::offer(offer, stopper, server.clone(), relay))
        });
        shutdown::serve(server, self.relay, self.requests).await;
        // The offer ends at the stop signal, taking its socket file away: let it, before
        // the process ends (bounded: it may be waiting on a relay that hangs).
        if let Some(offering) = offering {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), offering).await;
        }
    }
}

/// Runs the relay until a stop signal (or a handover) and its drain are done. Must run
/// inside a multi-threaded runtime.
pub async fn run(options: Options) -> Result<(), StartError> {
    let started = start(options).await?;
    shutdown::on_signals(started.stopper()).map_err(StartError::Signals)?;
    started.serve().await;
    Ok(())
}

/// Opens the listeners (taking over the sockets of the relay being upgraded, and those
/// systemd handed over, first), the admin endpoint, the reloader and the watchdog, and
/// offers the sockets at the upgrade socket, if any.
pub async fn start(options: Options) -> Result<Started, StartError> {
    let Options {
        config,
        text,
        path,
        fixed,
        overrides,
        upgrade_socket,
    } = options;
    let mut inherited = match &upgrade_socket {
        Some(path) => {
            upgrade::prepare_directory(path)?;
            upgrade::inherit(path)?
        }
        None => upgrade::Inherited::default(),
    };
    let from_a_relay = inherited.from_a_relay();
    let mut handed = listen::activated()?;
    handed.append(&mut inherited.listeners);
    let listeners = match listen::open(&config.listen, handed) {
        Ok(listeners) => listeners,
        // An upgrade that found no relay at its socket, and a listener address taken:
        // almost surely the old relay, started without this upgrade socket.
        Err(OpenError::Bind(e))
            if e.cause.kind() == std::io::ErrorKind::AddrInUse && !from_a_relay =>
        {
            return Err(match upgrade_socket {
                Some(path) => StartError::NoOffer { addr: e.addr, path },
                None => StartError::Open(OpenError::Bind(e)),
            });
        }
        Err(e) => return Err(e.into()),
    };
    let admin = match config.admin {
        Some(addr) => Some(upgrade::admin_listener(addr, inherited.admin.take())?),
        None => None,
    };
    let offered = match upgrade_socket {
        Some(_) => upgrade::offered(&listeners, config.admin.zip(admin.as_ref()))?,
        None => Vec::new(),
    };
    // Said once the sockets are open: a relay that cannot bind says only why.
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %path.display(),
        rules = config.rules.len(),
        mode = config.mode.word(),
        admin = config.admin.map_or_else(|| "off".to_owned(), |a| a.to_string()),
        "snirelay starting"
    );
    for gap in crate::net::transport::fast_open_gaps(&config) {
        tracing::warn!("{gap}");
    }
    for pinned in &overrides {
        let allowed = std::iter::once(&config.rules)
            .chain(config.groups.iter().map(|g| &g.rules))
            .any(|rules| rules.find(&pinned.name).is_some());
        if !allowed {
            tracing::warn!(
                name = %pinned.name,
                "--resolve names a name no rule allows now; it is used once a rule (after a reload) or monitor mode lets the name through"
            );
        }
    }
    let bound: Vec<SocketAddr> = listeners
        .iter()
        .filter_map(|(socket, _)| socket.local_addr().ok())
        .collect();
    let settings = Settings::new(config, &bound, &overrides, None).map_err(StartError::Settings)?;
    let audit_log = settings.config.audit_log.clone();
    let relay = Arc::new(Relay::new(settings, overrides, bound));
    if let Some(path) = audit_log {
        relay
            .metrics()
            .audit
            .open(&path)
            .map_err(|source| StartError::Audit { path, source })?;
    }
    tokio::spawn(Reloader::install(path, text.into_bytes(), relay.clone(), fixed).run());
    let admin_handed_over = CancellationToken::new();
    // After a relay that handed over its connections, once this one has them: its metrics
    // then carry on from that relay's, which answers until then.
    let taken_over = CancellationToken::new();
    if !from_a_relay {
        taken_over.cancel();
    }
    if let Some(admin) = admin {
        let (relay, handed_over, taken_over) =
            (relay.clone(), admin_handed_over.clone(), taken_over.clone());
        tokio::spawn(async move {
            taken_over.cancelled().await;
            crate::admin::serve(admin, relay, handed_over).await;
        });
    }
    if let Some(period) = sd_notify::watchdog_enabled() {
        tokio::spawn(crate::systemd::watchdog(relay.clone(), period));
    }
    let (stopper, requests) = Stopper::new();
    let offer = upgrade_socket.map(|path| upgrade::Offer {
        path,
        inherited,
        sockets: offered,
        admin_handed_over,
        taken_over,
    });
    Ok(Started {
        relay,
        listeners,
        stopper,
        requests,
        offer,
    })
}
