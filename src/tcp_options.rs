//! TCP settings for one kind of socket, as values: what `rules.json`'s `tcp` objects say
//! (`config` reads them), what a rule carries (`rules`), and what `net::transport` sets.
//! Depends on nothing, so all three can use it.

use std::time::Duration;

/// TCP settings; a key left out keeps the relay's default for that kind of socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tcp {
    /// The congestion control algorithm (`TCP_CONGESTION`), by the kernel's name for it.
    pub congestion: Option<String>,
    /// Unsent bytes the socket may hold before it stops taking more (`TCP_NOTSENT_LOWAT`).
    pub notsent_lowat: Option<u32>,
    /// Probes on an idle connection, so a dead peer is noticed.
    pub keepalive: Option<Keepalive>,
    /// How long sent data may stay unacknowledged before the connection is given up
    /// (`TCP_USER_TIMEOUT`); zero leaves it to the kernel's retransmission limit.
    pub user_timeout: Option<Duration>,
    /// TCP Fast Open: on a listener, take data in the SYN; on upstream sockets, send the
    /// first bytes in the SYN once the server has given a cookie.
    pub fast_open: Option<bool>,
}

/// TCP keepalive: the first probe after `idle` without a byte, then every `interval`; the
/// connection is dropped after `count` unanswered probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Quiet time before the first probe.
    pub idle: Duration,
    /// Time between probes.
    pub interval: Duration,
    /// Unanswered probes before the peer is taken for dead.
    pub count: u32,
}

impl Keepalive {
    /// What every relay socket gets unless its `tcp` says otherwise: a dead peer is
    /// noticed within two minutes of silence.
    pub const DEFAULT: Keepalive = Keepalive {
        idle: Duration::from_secs(60),
        interval: Duration::from_secs(10),
        count: 6,
    };
}
