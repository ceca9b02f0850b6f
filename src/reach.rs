//! Reaching a route's destination: resolve it (names through the resolver, pins first) and
//! connect (Happy Eyeballs), both within one deadline. What a client connection does when
//! no ready connection serves it, and what an edge relay's pool does to fill itself.

use crate::connect::{self, ConnectError};
use crate::policy::DestinationPolicy;
use crate::resolve::{ResolveError, Resolver, Source};
use crate::rules::Route;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

/// Why a destination could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ReachError {
    /// DNS did not answer before the deadline.
    #[error("DNS lookup did not finish within the connect timeout")]
    DnsTimeout,
    /// DNS failed, or its answers are forbidden.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// No address could be connected.
    #[error(transparent)]
    Connect(#[from] ConnectError),
}

/// Resolves `route` under `policy` and connects to one of its addresses, all within
/// `within`; with `fast_open`, each socket asks for TCP Fast Open. The connection, the
/// address it reached, and where the addresses came from.
pub async fn reach(
    resolver: &Resolver,
    route: &Route<'_>,
    policy: &DestinationPolicy,
    within: Duration,
    fast_open: bool,
) -> Result<(TcpStream, SocketAddr, Source), ReachError> {
    let deadline = Instant::now() + within;
    // Each step boxed: a connection's task keeps room for one of them at a time.
    let (targets, answered_from) =
        timeout_at(deadline, Box::pin(resolver.destinations(route, policy)))
            .await
            .map_err(|_| ReachError::DnsTimeout)??;
    let remaining = deadline.saturating_duration_since(Instant::now());
    let (stream, addr) = if fast_open {
        Box::pin(connect::happy_eyeballs_fast_open(&targets, remaining)).await?
    } else {
        Box::pin(connect::happy_eyeballs(&targets, remaining)).await?
    };
    Ok((stream, addr, answered_from))
}
