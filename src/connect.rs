//! Connecting to the upstream, Happy Eyeballs style (RFC 8305 §5): attempts alternate
//! address families, and the next starts after `ATTEMPT_DELAY` or as soon as the one before
//! fails, all within one deadline. The order is a pure function; the rest is thin IO.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};

/// RFC 8305's recommended "Connection Attempt Delay".
pub const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// Why no upstream connection could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The deadline passed with attempts still pending.
    #[error("no connection within {0:?}")]
    Timeout(Duration),
    /// Every address failed; the last error is kept.
    #[error("{addr}: {source}")]
    Failed {
        /// The last address tried.
        addr: SocketAddr,
        /// Its error.
        source: io::Error,
    },
}

impl ConnectError {
    /// A stable word for the log's detail field.
    pub fn detail(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Failed { source, .. } => match source.kind() {
                io::ErrorKind::ConnectionRefused => "refused",
                io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => "unreachable",
                _ => "error",
            },
        }
    }
}

/// Attempt order: the family of the first address first, then alternating, each family
/// keeping its own order.
pub fn attempt_order(addrs: &[SocketAddr]) -> Vec<SocketAddr> {
    let Some(first) = addrs.first() else {
        return Vec::new();
    };
    let (mut same, mut other): (Vec<_>, Vec<_>) =
        addrs.iter().partition(|a| a.is_ipv6() == first.is_ipv6());
    let mut order = Vec::with_capacity(addrs.len());
    same.reverse();
    other.reverse();
    while let Some(next) = same.pop() {
        order.push(next);
        std::mem::swap(&mut same, &mut other);
    }
    order.extend(other.into_iter().rev());
    order
}

/// Connects to the first of `addrs` that answers within `deadline`; slower attempts are
/// cancelled.
pub async fn happy_eyeballs(
    addrs: &[SocketAddr],
    deadline: Duration,
) -> Result<(TcpStream, SocketAddr), ConnectError> {
    // One address (a pinned upstream, usually) needs no racing and no extra task.
    if let [addr] = addrs {
        return match tokio::time::timeout(deadline, TcpStream::connect(*addr)).await {
            Ok(Ok(stream)) => Ok((stream, *addr)),
            Ok(Err(source)) => Err(ConnectError::Failed {
                addr: *addr,
                source,
            }),
            Err(_) => Err(ConnectError::Timeout(deadline)),
        };
    }
    let give_up = Instant::now() + deadline;
    let mut pending = attempt_order(addrs).into_iter();
    let mut attempts = JoinSet::new();
    let mut last_error = None;
    let mut next_start = Instant::now();
    loop {
        let more = pending.len() > 0;
        if !more && attempts.is_empty() {
            let (addr, source) = last_error.unwrap_or_else(|| {
                (
                    SocketAddr::from(([0, 0, 0, 0], 0)),
                    io::Error::other("no address to try"),
                )
            });
            return Err(ConnectError::Failed { addr, source });
        }
        tokio::select! {
            _ = sleep_until(next_start), if more => {
                if let Some(addr) = pending.next() {
                    attempts.spawn(async move { (addr, TcpStream::connect(addr).await) });
                }
                next_start = Instant::now() + ATTEMPT_DELAY;
            }
            Some(done) = attempts.join_next() => match done {
                Ok((addr, Ok(stream))) => return Ok((stream, addr)),
                Ok((addr, Err(e))) => {
                    last_error = Some((addr, e));
                    next_start = Instant::now();
                }
                Err(join) => {
                    last_error = Some((SocketAddr::from(([0, 0, 0, 0], 0)), io::Error::other(join)));
                    next_start = Instant::now();
                }
            },
            _ = sleep_until(give_up) => return Err(ConnectError::Timeout(deadline)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn families_alternate_starting_with_the_first() {
        let given = addrs(&[
            "[2001:db8::1]:443",
            "[2001:db8::2]:443",
            "[2001:db8::3]:443",
            "192.0.2.1:443",
            "192.0.2.2:443",
        ]);
        let want = addrs(&[
            "[2001:db8::1]:443",
            "192.0.2.1:443",
            "[2001:db8::2]:443",
            "192.0.2.2:443",
            "[2001:db8::3]:443",
        ]);
        assert_eq!(attempt_order(&given), want);
        let given = addrs(&[
            "192.0.2.1:443",
            "192.0.2.2:443",
            "192.0.2.3:443",
            "[2001:db8::1]:443",
        ]);
        let want = addrs(&[
            "192.0.2.1:443",
            "[2001:db8::1]:443",
            "192.0.2.2:443",
            "192.0.2.3:443",
        ]);
        assert_eq!(attempt_order(&given), want);
        assert!(attempt_order(&[]).is_empty());
    }

    #[tokio::test]
    async fn a_refused_first_address_falls_over_to_the_next() {
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead_addr = dead.local_addr().unwrap();
        drop(dead);
        let want = live.local_addr().unwrap();
        let (_, got) = happy_eyeballs(&[dead_addr, want], Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(got, want);
    }

    /// A listener whose accept queue is full drops SYNs: a loopback address that never
    /// answers, like a blackholed route.
    fn silent_address() -> (socket2::Socket, Vec<std::net::TcpStream>, SocketAddr) {
        let listener =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        listener
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        listener.listen(0).unwrap();
        let addr = listener.local_addr().unwrap().as_socket().unwrap();
        let mut fillers = Vec::new();
        for _ in 0..4 {
            let filler =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            filler.set_nonblocking(true).unwrap();
            let _ = filler.connect(&addr.into());
            fillers.push(filler.into());
        }
        (listener, fillers, addr)
    }

    #[tokio::test]
    async fn a_silent_first_address_does_not_stall_the_next() {
        let (_silent, _fillers, silent) = silent_address();
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let want = live.local_addr().unwrap();
        let (_, got) = happy_eyeballs(&[silent, want], Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(
            got, want,
            "the second attempt starts after the attempt delay"
        );
        let err = happy_eyeballs(&[silent], Duration::from_millis(300))
            .await
            .unwrap_err();
        assert_eq!(err.detail(), "timeout");
    }

    #[tokio::test]
    async fn all_refused_reports_the_last_error() {
        let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead_addr = dead.local_addr().unwrap();
        drop(dead);
        let err = happy_eyeballs(&[dead_addr], Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err.detail(), "refused");
    }
}
