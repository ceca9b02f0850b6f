//! An edge relay's ready connections to pinned upstreams (the far relay): established ahead
//! of need, so a new client connection does not wait a long round trip for the TCP
//! handshake. A client connection takes the newest ready one that is still open and
//! silent; with none, it connects as it would without a pool, never waiting for one.
//!
//! One task per pool keeps it filled (`schedule` says how fast), closes connections at
//! their idle age, and looks at the waiting ones once a second, so one the upstream has
//! closed (a far relay restart) is replaced before a client could be handed it.

pub mod schedule;

use crate::config::PoolSpec;
use crate::net::transport;
use crate::policy::DestinationPolicy;
use crate::reach::reach;
use crate::resolve::Resolver;
use crate::rules::{Host, Route, Upstream};
use crate::tcp_options::Tcp;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::pool::PoolCounters;
use schedule::{Refill, YOUNG, retired};
use socket2::SockRef;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often waiting connections are checked for a close by the upstream.
pub const SWEEP: Duration = Duration::from_secs(1);

/// What a client connection found for its upstream.
#[derive(Debug)]
pub enum Ready {
    /// A ready connection, open and silent a moment ago, and the address it reached.
    Taken(TcpStream, SocketAddr),
    /// The upstream has a pool, with nothing ready in it.
    Empty,
    /// No pool serves the upstream.
    NoPool,
}

/// The relay's pools, one per configured upstream; they outlive reloads that keep them.
#[derive(Default)]
pub struct Pools {
    pools: RwLock<Vec<Arc<Pool>>>,
}

impl Pools {
    /// Makes the running pools what `specs` says: a pool whose settings are unchanged keeps
    /// its connections, one no longer listed closes them, a new one starts filling. New
    /// connections get `tcp`; each is given `connect` to resolve (with `resolver`, for an
    /// upstream given by name) and connect.
    pub fn reconcile(&self, specs: &[PoolSpec], how: Connecting, metrics: &Metrics) {
        let mut pools = self.pools.write().unwrap_or_else(PoisonError::into_inner);
        pools.retain(|pool| {
            let keep = specs.contains(&pool.spec);
            if !keep {
                pool.stop.cancel();
            }
            keep
        });
        for spec in specs {
            if pools.iter().any(|pool| pool.spec == *spec) {
                continue;
            }
            let counters = metrics.pools.of(spec.upstream.to_string());
            let pool = Arc::new(Pool::new(spec.clone(), counters));
            tokio::spawn(keep_filled(pool.clone(), how.clone()));
            pools.push(pool);
        }
    }

    /// A ready connection to `host` and `port`, if a pool serves them and has one.
    pub fn take(&self, host: &Host, port: u16) -> Ready {
        let pools = self.pools.read().unwrap_or_else(PoisonError::into_inner);
        let serves = |up: &Upstream| up.port == port && up.host == *host;
        match pools.iter().find(|pool| serves(&pool.spec.upstream)) {
            Some(pool) => pool.take(),
            None => Ready::NoPool,
        }
    }

    /// Closes every pool's waiting connections and stops refilling: the relay is stopping.
    pub fn close(&self) {
        let mut pools = self.pools.write().unwrap_or_else(PoisonError::into_inner);
        for pool in pools.drain(..) {
            pool.stop.cancel();
        }
    }
}

/// How a pool makes its connections, from the settings in force when it started.
#[derive(Clone)]
pub struct Connecting {
    /// TCP settings of each new connection (the file's `upstream_tcp`).
    pub tcp: Tcp,
    /// For resolving and connecting, together (`connect_ms`).
    pub deadline: Duration,
    /// Resolves an upstream given by name, pins included.
    pub resolver: Arc<Resolver>,
}

/// A connection waiting for a client.
struct Waiting {
    stream: TcpStream,
    addr: SocketAddr,
    since: Instant,
}

struct State {
    /// Oldest first.
    waiting: Vec<Waiting>,
    refill: Refill,
}

/// Ready connections to one upstream.
struct Pool {
    spec: PoolSpec,
    state: Mutex<State>,
    /// A client took one, or one was found closed: time to refill.
    taken: Notify,
    stop: CancellationToken,
    counters: PoolCounters,
}

impl Pool {
    fn new(spec: PoolSpec, counters: PoolCounters) -> Pool {
        Pool {
            state: Mutex::new(State {
                waiting: Vec::with_capacity(spec.size),
                refill: Refill::new(spec.size),
            }),
            spec,
            taken: Notify::new(),
            stop: CancellationToken::new(),
            counters,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The newest waiting connection still open and silent; closed ones met on the way are
    /// discarded.
    fn take(&self) -> Ready {
        let now = Instant::now();
        let mut state = self.state();
        let mut found = Ready::Empty;
        while let Some(waiting) = state.waiting.pop() {
            if open_and_silent(&waiting.stream) {
                state.refill.proved();
                found = Ready::Taken(waiting.stream, waiting.addr);
                break;
            }
            self.counters.discarded.inc();
            state.refill.closed(waiting.since, now);
        }
        self.counters.ready.set(state.waiting.len() as i64);
        drop(state);
        match found {
            Ready::Taken(..) => self.counters.used.inc(),
            _ => self.counters.misses.inc(),
        };
        self.taken.notify_one();
        found
    }

    /// Retires what has waited its idle age and discards what the upstream closed; says
    /// how many connects to start and when to look again.
    fn tend(&self, now: Instant, opening: usize) -> (usize, Instant) {
        let mut state = self.state();
        let State { waiting, refill } = &mut *state;
        waiting.retain(|w| {
            if retired(w.since, now, self.spec.max_idle) {
                return false;
            }
            if !open_and_silent(&w.stream) {
                self.counters.discarded.inc();
                refill.closed(w.since, now);
                return false;
            }
            if now.saturating_duration_since(w.since) >= YOUNG {
                refill.proved();
            }
            true
        });
        let start = refill.to_open(now, waiting.len(), opening);
        let mut wake = now + SWEEP;
        if let Some(oldest) = waiting.first() {
            wake = wake.min(oldest.since + self.spec.max_idle);
        }
        if let Some(retry) = refill.retry_at() {
            wake = wake.min(retry.max(now));
        }
        self.counters.ready.set(waiting.len() as i64);
        (start, wake)
    }

    fn add(&self, stream: TcpStream, addr: SocketAddr) {
        let mut state = self.state();
        state.waiting.push(Waiting {
            stream,
            addr,
            since: Instant::now(),
        });
        self.counters.ready.set(state.waiting.len() as i64);
    }

    /// A connect failed; says whether it is the first failure in a row.
    fn failed(&self) -> bool {
        let mut state = self.state();
        let first = state.refill.retry_at().is_none();
        state.refill.failed(Instant::now());
        first
    }
}

/// Keeps `pool` filled until it is stopped, then closes what waits in it.
async fn keep_filled(pool: Arc<Pool>, how: Connecting) {
    let upstream = pool.spec.upstream.clone();
    let mut opening = JoinSet::new();
    loop {
        let (start, wake) = pool.tend(Instant::now(), opening.len());
        for _ in 0..start {
            opening.spawn(connect(upstream.clone(), how.clone()));
        }
        tokio::select! {
            Some(done) = opening.join_next(), if !opening.is_empty() => match done {
                Ok(Ok((stream, addr))) => pool.add(stream, addr),
                Ok(Err(e)) => {
                    if pool.failed() {
                        tracing::warn!(%upstream, error = %e, "pool: cannot connect to the upstream; clients connect themselves meanwhile");
                    }
                }
                Err(_) => {}
            },
            () = pool.taken.notified() => {}
            () = tokio::time::sleep_until(wake) => {}
            () = pool.stop.cancelled() => break,
        }
    }
    let mut state = pool.state();
    state.waiting.clear();
    pool.counters.ready.set(0);
}

/// One new connection to `upstream`: resolved as a pinned rule's upstream is (an operator's
/// choice, so no destination policy), then connected, within the connect deadline.
async fn connect(upstream: Upstream, how: Connecting) -> Result<(TcpStream, SocketAddr), String> {
    let route = Route {
        rule: None,
        host: upstream.host,
        port: upstream.port,
        pinned: true,
    };
    let policy = DestinationPolicy::default();
    // Never Fast Open: a deferred connect would leave a ready connection unconnected.
    let (stream, addr, _) = reach(&how.resolver, &route, &policy, how.deadline, false)
        .await
        .map_err(|e| e.to_string())?;
    // Checked when the rules were loaded: nothing here can refuse it.
    let _ = transport::apply(&stream, &how.tcp, None);
    Ok((stream, addr))
}

/// Whether a waiting connection is still open and the upstream has said nothing: a peek
/// that would block. End of stream, a reset, or bytes the far relay would never send first
/// all mean it cannot carry a client.
fn open_and_silent(stream: &TcpStream) -> bool {
    let mut byte = [MaybeUninit::uninit(); 1];
    matches!(
        SockRef::from(stream).peek(&mut byte),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock
    )
}
