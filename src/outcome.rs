//! How a connection ends: the rejections before forwarding and the ends of a forwarded
//! connection, each with its stable reason word and the side that caused it. The words are
//! a contract: logs, metrics and docs/configuration.md's table use them, and they are never renamed.

use crate::connect::ConnectError;
use crate::hello::HelloError;
use crate::http_connect::RequestError;
use crate::limits::LimitExceeded;
use crate::net::read::ReadError;
use crate::proxy::ProxyError;
use crate::reach::ReachError;
use crate::resolve::ResolveError;
use std::io;

/// Who caused a rejection or an abnormal end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client: what it sent, where it came from, or how it went away.
    Client,
    /// The upstream, or DNS on the way to it.
    Upstream,
    /// The relay itself: its capacity, its timers, its shutdown.
    Relay,
}

impl Side {
    /// The word logged as `side`.
    pub fn word(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Upstream => "upstream",
            Side::Relay => "relay",
        }
    }
}

/// Why a connection was not forwarded.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    /// The source address is not in `clients`.
    #[error("client address not in `clients`")]
    ClientDenied,
    /// A PROXY protocol listener's peer is not in its `trusted_proxies`.
    #[error("peer not in the listener's trusted_proxies")]
    ProxyUntrusted,
    /// The PROXY protocol header is missing or malformed.
    #[error(transparent)]
    BadProxyHeader(#[from] ProxyError),
    /// A PROXY protocol `LOCAL` connection: the balancer's health check. Counted, not logged.
    #[error("PROXY protocol LOCAL connection (a health check)")]
    ProxyLocal,
    /// A connection limit.
    #[error(transparent)]
    Limit(#[from] LimitExceeded),
    /// The hello deadline passed.
    #[error("no complete ClientHello in time")]
    HelloTimeout,
    /// On a CONNECT listener, the hello deadline passed before the request (and its
    /// credentials' check) was done.
    #[error("no complete CONNECT request in time")]
    RequestTimeout,
    /// FIN before the hello was complete.
    #[error("client closed before its ClientHello was complete")]
    ClientClosed,
    /// A socket error on the client side before forwarding.
    #[error("client connection failed: {0}")]
    ClientError(io::Error),
    /// The hello was refused.
    #[error(transparent)]
    Hello(#[from] HelloError),
    /// The name matches no rule.
    #[error("name not on the allowlist")]
    NotAllowed,
    /// A CONNECT request the relay does not take: not CONNECT, malformed, too large, or
    /// naming an IP address.
    #[error("CONNECT request refused: {0}")]
    BadConnect(#[from] RequestError),
    /// A CONNECT listener with a `users_file` got no credentials, malformed ones, or wrong
    /// ones (the detail says which: `missing`, `malformed`, `wrong`).
    #[error("proxy credentials {0}: the listener asks for a user in its users_file")]
    ProxyAuthRequired(&'static str),
    /// A CONNECT request for a port the listener's `connect_ports` does not list.
    #[error("port not in the listener's connect_ports")]
    PortNotAllowed,
    /// After a CONNECT, a ClientHello for another name than the one the request named
    /// (domain fronting).
    #[error("the ClientHello names another host than the CONNECT request")]
    SniMismatch,
    /// DNS did not answer within the connect deadline.
    #[error("DNS lookup did not finish within the connect timeout")]
    DnsTimeout,
    /// DNS failed, or its answers are forbidden.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// No upstream address could be connected.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The relay stopped before the connection was forwarded.
    #[error("relay shut down before the connection was forwarded")]
    Shutdown,
    /// An edge relay's ready connection ended without carrying a client: retired by the
    /// edge, or its header wait ran out. Counted, not logged.
    #[error("an edge relay's ready connection closed unused")]
    PoolUnused,
}

impl Rejection {
    /// The stable reason word.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::ClientDenied => "client_denied",
            Self::ProxyUntrusted => "proxy_untrusted",
            Self::BadProxyHeader(_) => "bad_proxy_header",
            Self::ProxyLocal => "proxy_local",
            Self::Limit(e) => e.reason(),
            Self::HelloTimeout | Self::RequestTimeout => "hello_timeout",
            Self::ClientClosed => "client_closed",
            Self::ClientError(_) => "client_error",
            Self::Hello(e) => e.reason(),
            Self::NotAllowed => NOT_ALLOWED,
            Self::BadConnect(_) => "bad_connect",
            Self::PortNotAllowed => "port_not_allowed",
            Self::ProxyAuthRequired(_) => "proxy_auth_required",
            Self::SniMismatch => "sni_mismatch",
            Self::DnsTimeout => "dns_failed",
            Self::Resolve(e) => e.reason(),
            Self::Connect(_) => "upstream_unreachable",
            Self::Shutdown => "shutdown",
            Self::PoolUnused => "pool_unused",
        }
    }

    /// The outcome word it is counted under: a balancer's health check is not a rejected
    /// client.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::ProxyLocal => HEALTH_CHECK,
            Self::PoolUnused => UNUSED,
            _ => REJECTED,
        }
    }

    /// A stable word that narrows the reason down, where there is one.
    pub fn detail(&self) -> Option<&'static str> {
        match self {
            Self::Hello(e) => Some(e.detail()),
            Self::BadProxyHeader(e) => Some(e.detail()),
            Self::BadConnect(e) => Some(e.detail()),
            Self::ProxyAuthRequired(detail) => Some(detail),
            Self::RequestTimeout => Some("request"),
            Self::DnsTimeout => Some("timeout"),
            Self::Connect(e) => Some(e.detail()),
            _ => None,
        }
    }

    /// Who caused it.
    pub fn side(&self) -> Side {
        match self {
            Self::ClientDenied
            | Self::ProxyUntrusted
            | Self::BadProxyHeader(_)
            | Self::ProxyLocal
            | Self::PoolUnused
            | Self::Limit(LimitExceeded::PerClient)
            | Self::HelloTimeout
            | Self::RequestTimeout
            | Self::ClientClosed
            | Self::ClientError(_)
            | Self::Hello(_)
            | Self::NotAllowed
            | Self::BadConnect(_)
            | Self::PortNotAllowed
            | Self::ProxyAuthRequired(_)
            | Self::SniMismatch => Side::Client,
            Self::DnsTimeout | Self::Resolve(_) | Self::Connect(_) => Side::Upstream,
            Self::Limit(_) | Self::Shutdown => Side::Relay,
        }
    }
}

impl Rejection {
    /// The HTTP status a CONNECT client is refused with: 4xx for what it asked, 502 and
    /// 504 for an upstream that could not be reached (504: in time), 503 for the relay's
    /// own limits and shutdown.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::BadConnect(e) => e.status(),
            Self::ProxyAuthRequired(_) => 407,
            Self::HelloTimeout | Self::RequestTimeout => 408,
            Self::DnsTimeout | Self::Connect(ConnectError::Timeout(_)) => 504,
            Self::Resolve(_) | Self::Connect(_) => 502,
            Self::Limit(LimitExceeded::PerClient) => 429,
            Self::Limit(_) | Self::Shutdown => 503,
            Self::ClientClosed | Self::ClientError(_) | Self::Hello(_) | Self::ProxyLocal => 400,
            Self::PoolUnused => 400,
            Self::ClientDenied
            | Self::ProxyUntrusted
            | Self::BadProxyHeader(_)
            | Self::NotAllowed
            | Self::PortNotAllowed
            | Self::SniMismatch => 403,
        }
    }
}

/// A destination that could not be reached, in the words a connection ends with.
impl From<ReachError> for Rejection {
    fn from(e: ReachError) -> Rejection {
        match e {
            ReachError::DnsTimeout => Rejection::DnsTimeout,
            ReachError::Resolve(e) => Rejection::Resolve(e),
            ReachError::Connect(e) => Rejection::Connect(e),
        }
    }
}

/// A PROXY header or hello that could not be read: the client closed or failed, or the
/// parser refused what it sent.
impl<E: Into<Rejection>> From<ReadError<E>> for Rejection {
    fn from(e: ReadError<E>) -> Rejection {
        match e {
            ReadError::Closed => Rejection::ClientClosed,
            ReadError::Io(e) => Rejection::ClientError(e),
            ReadError::Refused(e) => e.into(),
        }
    }
}

/// How a forwarded connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both directions finished with a FIN.
    Closed,
    /// The client reset the connection or stopped accepting data.
    ClientReset,
    /// The upstream reset the connection or stopped accepting data.
    UpstreamReset,
    /// No byte moved either way for the idle timeout.
    IdleTimeout,
    /// The relay was shutting down and the drain period ran out.
    Shutdown,
}

impl End {
    /// Every end, for listing them.
    pub const ALL: [End; 5] = [
        End::Closed,
        End::ClientReset,
        End::UpstreamReset,
        End::IdleTimeout,
        End::Shutdown,
    ];

    /// The stable word logged as the reason of a forwarded connection.
    pub fn word(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::ClientReset => "client_reset",
            End::UpstreamReset => "upstream_reset",
            End::IdleTimeout => "idle_timeout",
            End::Shutdown => "shutdown",
        }
    }

    /// Who ended it, when it did not end normally.
    pub fn side(self) -> Option<Side> {
        match self {
            End::Closed => None,
            End::ClientReset => Some(Side::Client),
            End::UpstreamReset => Some(Side::Upstream),
            End::IdleTimeout | End::Shutdown => Some(Side::Relay),
        }
    }
}

/// What moved, and how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    /// Bytes from client to upstream, the replayed hello included.
    pub up: u64,
    /// Bytes from upstream to client.
    pub down: u64,
    /// Of those, bytes moved by splice(2) without passing through user space.
    pub spliced: u64,
    /// How it ended.
    pub end: End,
}

/// The outcome word of a forwarded connection.
pub const FORWARDED: &str = "forwarded";
/// The outcome word of a connection refused before forwarding.
pub const REJECTED: &str = "rejected";
/// The outcome word of a balancer's health check (a PROXY protocol `LOCAL` connection).
pub const HEALTH_CHECK: &str = "health_check";
/// The outcome word of an edge relay's ready connection that closed without a client.
pub const UNUSED: &str = "unused";
/// The reason word of a name no rule allows.
pub const NOT_ALLOWED: &str = "not_allowed";
/// The reason word of a connection monitor mode forwarded although no rule allows it.
pub const WOULD_REFUSE: &str = "would_refuse";
/// The rule label of connections monitor mode forwarded: one fixed value, never the name
/// a client sent, so the metrics' label count stays bounded.
pub const UNLISTED: &str = "(unlisted)";

/// How one connection ended, in the words the log line, the metrics and `snirelay suggest`
/// share: they format or read this, and never make the words themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// [`FORWARDED`], [`REJECTED`], [`HEALTH_CHECK`] or [`UNUSED`].
    pub outcome: &'static str,
    /// The stable reason word.
    pub reason: &'static str,
    /// A stable word that narrows the reason down, where there is one.
    pub detail: Option<&'static str>,
    /// Who caused it, unless it ended normally.
    pub side: Option<Side>,
}

impl Outcome {
    /// A connection's outcome: forwarded with `Ok`, refused with `Err`. `would_refuse`: no
    /// rule allows the name and monitor mode forwarded it; how it ended becomes the detail.
    pub fn of(result: &Result<Transfer, Rejection>, would_refuse: bool) -> Outcome {
        match result {
            Ok(t) if would_refuse => Outcome {
                outcome: FORWARDED,
                reason: WOULD_REFUSE,
                detail: Some(t.end.word()),
                side: t.end.side(),
            },
            Ok(t) => Outcome {
                outcome: FORWARDED,
                reason: t.end.word(),
                detail: None,
                side: t.end.side(),
            },
            Err(r) => Outcome {
                outcome: r.outcome(),
                reason: r.reason(),
                detail: r.detail(),
                side: Some(r.side()),
            },
        }
    }
}

/// Every `(outcome, reason)` pair a connection can end with, so the metrics can show each
/// from the start (at 0) and alerts always have a series to work on.
pub const OUTCOMES: &[(&str, &str)] = &[
    ("forwarded", "closed"),
    ("forwarded", "client_reset"),
    ("forwarded", "upstream_reset"),
    ("forwarded", "idle_timeout"),
    ("forwarded", "shutdown"),
    ("forwarded", "would_refuse"),
    ("rejected", "client_denied"),
    ("rejected", "proxy_untrusted"),
    ("rejected", "bad_proxy_header"),
    ("rejected", "too_many_connections"),
    ("rejected", "too_many_from_client"),
    ("rejected", "too_many_pending_hellos"),
    ("rejected", "hello_timeout"),
    ("rejected", "client_closed"),
    ("rejected", "client_error"),
    ("rejected", "bad_hello"),
    ("rejected", "no_sni"),
    ("rejected", "bad_sni"),
    ("rejected", "not_allowed"),
    ("rejected", "bad_connect"),
    ("rejected", "port_not_allowed"),
    ("rejected", "proxy_auth_required"),
    ("rejected", "sni_mismatch"),
    ("rejected", "dns_failed"),
    ("rejected", "forbidden_destination"),
    ("rejected", "upstream_unreachable"),
    ("rejected", "shutdown"),
    ("health_check", "proxy_local"),
    ("unused", "pool_unused"),
];

#[cfg(test)]
mod tests;
