//! Connecting to the upstream, Happy Eyeballs style (RFC 8305 §5): attempts alternate
//! address families, and the next starts after `ATTEMPT_DELAY` or as soon as the one before
//! fails, all within one deadline. The order is a pure function; the rest is thin IO.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
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
    race(addrs, deadline, TcpStream::connect).await
}

/// [`happy_eyeballs`] with TCP Fast Open asked for on each socket before it connects: with
/// a cookie from an earlier connection to the address, the connect returns at once and the
/// first write (the PROXY header and the hello) goes out in the SYN.
pub async fn happy_eyeballs_fast_open(
    addrs: &[SocketAddr],
    deadline: Duration,
) -> Result<(TcpStream, SocketAddr), ConnectError> {
    race(addrs, deadline, connect_fast_open).await
}

async fn connect_fast_open(addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    crate::net::sys::set_fast_open_connect(&socket)?;
    socket.connect(addr).await
}

/// [`happy_eyeballs`] with the connect call passed in, so the schedule can be tested on a
/// paused clock with attempts that fail, succeed or hang exactly when a test says.
async fn race<S, F, A>(
    addrs: &[SocketAddr],
    deadline: Duration,
    connect: F,
) -> Result<(S, SocketAddr), ConnectError>
where
    S: Send + 'static,
    F: Fn(SocketAddr) -> A,
    A: Future<Output = io::Result<S>> + Send + 'static,
{
    // One address (a pinned upstream, usually) needs no racing and no extra task.
    if let [addr] = addrs {
        return match tokio::time::timeout(deadline, connect(*addr)).await {
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
                    let attempt = connect(addr);
                    attempts.spawn(async move { (addr, attempt.await) });
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

    /// What the fake connect calls do, per address, on the paused clock.
    #[derive(Clone, Copy)]
    enum Fate {
        SucceedAfter(u64),
        FailAfter(u64),
        Hang,
    }

    /// Runs [`race`] over `plan` on the paused clock; returns the result and, per attempt,
    /// its address and when it started, in milliseconds from the start.
    async fn run(
        plan: &[(&str, Fate)],
        deadline_ms: u64,
    ) -> (Result<SocketAddr, ConnectError>, Vec<(SocketAddr, u64)>) {
        let plan: Vec<(SocketAddr, Fate)> =
            plan.iter().map(|(a, f)| (a.parse().unwrap(), *f)).collect();
        let started = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let t0 = Instant::now();
        let log = started.clone();
        let addrs = addrs_of(&plan);
        let connect = move |addr: SocketAddr| {
            let fate = plan.iter().find(|(a, _)| *a == addr).unwrap().1;
            log.lock()
                .unwrap()
                .push((addr, t0.elapsed().as_millis() as u64));
            async move {
                match fate {
                    Fate::SucceedAfter(ms) => {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        Ok(())
                    }
                    Fate::FailAfter(ms) => {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        Err(io::ErrorKind::ConnectionRefused.into())
                    }
                    Fate::Hang => std::future::pending().await,
                }
            }
        };
        let got = race(&addrs, Duration::from_millis(deadline_ms), connect).await;
        let started = started.lock().unwrap().clone();
        (got.map(|((), addr)| addr), started)
    }

    fn addrs_of(plan: &[(SocketAddr, Fate)]) -> Vec<SocketAddr> {
        plan.iter().map(|(a, _)| *a).collect()
    }

    fn at(addr: &str, ms: u64) -> (SocketAddr, u64) {
        (addr.parse().unwrap(), ms)
    }

    #[tokio::test(start_paused = true)]
    async fn the_next_attempt_starts_250_ms_after_one_that_hangs() {
        let (got, started) = run(
            &[
                ("[2001:db8::1]:443", Fate::Hang),
                ("192.0.2.1:443", Fate::SucceedAfter(10)),
            ],
            5000,
        )
        .await;
        assert_eq!(got.unwrap(), "192.0.2.1:443".parse().unwrap());
        assert_eq!(
            started,
            [at("[2001:db8::1]:443", 0), at("192.0.2.1:443", 250)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_starts_the_next_attempt_at_once() {
        let (got, started) = run(
            &[
                ("192.0.2.1:443", Fate::FailAfter(100)),
                ("192.0.2.2:443", Fate::Hang),
                ("192.0.2.3:443", Fate::SucceedAfter(0)),
            ],
            5000,
        )
        .await;
        assert_eq!(got.unwrap(), "192.0.2.3:443".parse().unwrap());
        assert_eq!(
            started,
            [
                at("192.0.2.1:443", 0),
                at("192.0.2.2:443", 100),
                at("192.0.2.3:443", 350)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_fast_answer_wins_over_an_earlier_slow_one() {
        // The first attempt would succeed at 400 ms; the second, started at 250, at 260.
        let (got, _) = run(
            &[
                ("192.0.2.1:443", Fate::SucceedAfter(400)),
                ("[2001:db8::1]:443", Fate::SucceedAfter(10)),
            ],
            5000,
        )
        .await;
        assert_eq!(got.unwrap(), "[2001:db8::1]:443".parse().unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn one_deadline_covers_every_attempt() {
        let t0 = Instant::now();
        let (got, started) = run(
            &[
                ("192.0.2.1:443", Fate::Hang),
                ("192.0.2.2:443", Fate::Hang),
                ("192.0.2.3:443", Fate::Hang),
            ],
            600,
        )
        .await;
        assert_eq!(got.unwrap_err().detail(), "timeout");
        assert_eq!(t0.elapsed(), Duration::from_millis(600));
        let starts: Vec<u64> = started.iter().map(|(_, ms)| *ms).collect();
        assert_eq!(starts, [0, 250, 500]);
        // One address: the same deadline, no racing.
        let (got, _) = run(&[("192.0.2.1:443", Fate::Hang)], 300).await;
        assert_eq!(got.unwrap_err().detail(), "timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn when_every_attempt_fails_the_last_error_is_reported() {
        let (got, _) = run(
            &[
                ("192.0.2.1:443", Fate::FailAfter(5)),
                ("[2001:db8::1]:443", Fate::FailAfter(20)),
            ],
            5000,
        )
        .await;
        match got.unwrap_err() {
            ConnectError::Failed { addr, source } => {
                assert_eq!(addr, "[2001:db8::1]:443".parse().unwrap());
                assert_eq!(source.kind(), io::ErrorKind::ConnectionRefused);
            }
            other => panic!("{other:?}"),
        }
    }

    /// The real call, once: a refused address (bound, never listening, so no other test can
    /// take the port) is reported as refused. Falling over to the next address is
    /// `a_failure_starts_the_next_attempt_at_once`, and end to end `tests/relay.rs`.
    #[tokio::test]
    async fn a_real_refused_address_is_reported_as_refused() {
        let refusing =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        refusing
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        let refused = refusing.local_addr().unwrap().as_socket().unwrap();
        let err = happy_eyeballs(&[refused], Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err.detail(), "refused");
    }
}
