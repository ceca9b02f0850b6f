//! The running relay: the settings new connections are decided by, swapped whole on reload,
//! and the counts and metrics that outlive them.

use crate::config::Config;
use crate::limits::Counters;
use crate::policy::DestinationPolicy;
use crate::pool::{Connecting, Pools};
use crate::resolve::{Override, Resolver};
use crate::telemetry::live::Live;
use crate::telemetry::metrics::Metrics;
use crate::users::Accounts;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

/// What connections are decided by. A reload builds a new one and swaps it in whole; a
/// connection keeps the one it started with.
pub struct Settings {
    /// The validated configuration.
    pub config: Config,
    /// DNS and `--resolve` pins.
    pub resolver: Arc<Resolver>,
    /// Policy for DNS answers to client-supplied names.
    pub policy: DestinationPolicy,
    /// The users of CONNECT listeners that ask for them, by the listener's address as
    /// configured; read again at every reload.
    pub users: Vec<(SocketAddr, Arc<Accounts>)>,
}

impl Settings {
    /// Settings for `config`, refused where it names a congestion control this process
    /// cannot set. `listeners` are the bound sockets, which the destination policy
    /// refuses. The resolver of `previous` is kept when the nameservers are the same, so
    /// its cache survives a reload.
    pub fn new(
        config: Config,
        listeners: &[SocketAddr],
        pins: &[Override],
        previous: Option<&Settings>,
    ) -> Result<Settings, String> {
        if let Some(refused) = crate::net::transport::refusals(&config).into_iter().next() {
            return Err(refused);
        }
        let resolver = match previous {
            Some(old) if old.config.nameservers == config.nameservers => old.resolver.clone(),
            _ => Arc::new(Resolver::new(config.nameservers.as_deref(), pins.to_vec())?),
        };
        let policy = DestinationPolicy {
            private_allowed: config.private_destinations.clone(),
            listeners: listeners.to_vec(),
        };
        let users = crate::users::load_all(&config)?;
        Ok(Settings {
            config,
            resolver,
            policy,
            users,
        })
    }

    /// The users the listener configured at `addr` asks for, if it asks for any.
    pub fn users_for(&self, addr: SocketAddr) -> Option<&Arc<Accounts>> {
        self.users
            .iter()
            .find_map(|(at, accounts)| (*at == addr).then_some(accounts))
    }
}

/// The running relay: the current settings and the counts that outlive them.
pub struct Relay {
    settings: RwLock<Arc<Settings>>,
    live: Live,
    counters: Arc<Counters>,
    metrics: Arc<Metrics>,
    phase: AtomicU8,
    pins: Vec<Override>,
    listeners: Vec<SocketAddr>,
    pools: Pools,
}

impl Relay {
    /// A relay serving `listeners` with `settings`.
    pub fn new(settings: Settings, pins: Vec<Override>, listeners: Vec<SocketAddr>) -> Relay {
        let metrics = Arc::new(Metrics::default());
        metrics.groups_known(&settings.config.groups);
        Relay {
            // Listed only where someone can ask: the admin endpoint is on.
            live: Live::new(settings.config.admin.is_some()),
            settings: RwLock::new(Arc::new(settings)),
            counters: Arc::default(),
            metrics,
            phase: AtomicU8::new(Phase::Starting as u8),
            pins,
            listeners,
            pools: Pools::default(),
        }
    }

    /// The settings new connections get now.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Switches new connections to `config`, atomically; live ones are not touched.
    pub fn replace(&self, config: Config) -> Result<(), String> {
        let current = self.settings();
        let next = Settings::new(config, &self.listeners, &self.pins, Some(&current))?;
        self.start_pools(&next);
        self.metrics.groups_known(&next.config.groups);
        *self
            .settings
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(next);
        Ok(())
    }

    /// Fills the pools `settings` list, keeps those they still list, closes the rest.
    pub fn start_pools(&self, settings: &Settings) {
        let how = Connecting {
            tcp: settings.config.upstream_tcp.clone(),
            deadline: settings.config.timeouts.connect,
            resolver: settings.resolver.clone(),
        };
        self.pools
            .reconcile(&settings.config.pools, how, &self.metrics);
    }

    /// An edge relay's ready connections to its far relays.
    pub fn pools(&self) -> &Pools {
        &self.pools
    }

    /// The live connection counts.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// The forwarded connections open now.
    pub fn live(&self) -> &Live {
        &self.live
    }

    /// The relay's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Whether a balancer should send connections here: `Ok` with what to say (monitor mode
    /// is said), or why not.
    pub fn readiness(&self) -> Result<&'static str, &'static str> {
        let settings = self.settings();
        let monitoring = settings.config.monitoring();
        match self.phase.load(Ordering::Relaxed) {
            p if p == Phase::Starting as u8 => Err("not ready: the listeners are not open yet"),
            p if p == Phase::Draining as u8 => {
                Err("not ready: shutting down; take this relay out of rotation")
            }
            _ if monitoring => Ok(
                "ready (monitor mode: names no rule allows are forwarded, and logged as would_refuse)",
            ),
            _ if settings.config.rules.is_empty() => Err(
                "not ready: no rules loaded (the allowlist is empty: every connection would be refused)",
            ),
            _ => Ok("ready"),
        }
    }

    /// Listeners are accepting and rules are loaded.
    pub fn is_ready(&self) -> bool {
        self.readiness().is_ok()
    }

    pub(crate) fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }
}

/// Where the relay is in its life, as readiness reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Starting,
    Serving,
    Draining,
}
