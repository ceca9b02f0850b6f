//! Listeners, the accept loop, shutdown, and the one path every connection takes.

use crate::config::Config;
use crate::connect::{self, ConnectError};
use crate::forward::{self, Transfer};
use crate::hello::{ClientHello, HelloError, HelloReader};
use crate::limits::{Counters, LimitExceeded, Slot};
use crate::metrics::{ConnectionRecord, Metrics};
use crate::policy::{DestinationPolicy, client_allowed};
use crate::resolve::{Pin, ResolveError, Resolver, Source};
use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use std::future::Future;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout, timeout_at};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A fatal TLS alert record: level 2 (fatal), description 112 (unrecognized_name).
const UNRECOGNIZED_NAME_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];
/// After the alert, read what the client still sends for at most this long, so the close is
/// a FIN and not a reset that could make the client's kernel discard the alert.
const ALERT_LINGER: Duration = Duration::from_secs(1);
const ALERT_LINGER_BYTES: usize = 64 * 1024;
/// Pause after an accept error such as EMFILE, so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What connections are decided by. A reload builds a new one and swaps it in whole; a
/// connection keeps the one it started with.
pub struct Settings {
    /// The validated configuration.
    pub config: Config,
    /// DNS and `--resolve` pins.
    pub resolver: Arc<Resolver>,
    /// Policy for DNS answers to client-supplied names.
    pub policy: DestinationPolicy,
}

impl Settings {
    /// Settings for `config`. `listeners` are the bound sockets, which the destination
    /// policy refuses. The resolver of `previous` is kept when the nameservers are the same,
    /// so its cache survives a reload.
    pub fn new(
        config: Config,
        listeners: &[SocketAddr],
        pins: &[Pin],
        previous: Option<&Settings>,
    ) -> Result<Settings, String> {
        let resolver = match previous {
            Some(old) if old.config.nameservers == config.nameservers => old.resolver.clone(),
            _ => Arc::new(Resolver::new(config.nameservers.as_deref(), pins.to_vec())?),
        };
        let policy = DestinationPolicy {
            private_allowed: config.private_destinations.clone(),
            listeners: listeners.to_vec(),
        };
        Ok(Settings {
            config,
            resolver,
            policy,
        })
    }
}

/// The running relay: the current settings and the counts that outlive them.
pub struct Relay {
    settings: RwLock<Arc<Settings>>,
    counters: Arc<Counters>,
    metrics: Arc<Metrics>,
    ready: AtomicBool,
    pins: Vec<Pin>,
    listeners: Vec<SocketAddr>,
}

impl Relay {
    /// A relay serving `listeners` with `settings`.
    pub fn new(settings: Settings, pins: Vec<Pin>, listeners: Vec<SocketAddr>) -> Relay {
        Relay {
            settings: RwLock::new(Arc::new(settings)),
            counters: Arc::default(),
            metrics: Arc::default(),
            ready: AtomicBool::new(false),
            pins,
            listeners,
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
        *self
            .settings
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(next);
        Ok(())
    }

    /// The live connection counts.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The relay's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Listeners are accepting and rules are loaded (false again once draining).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// A listener that could not be opened, with what to do about it.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {cause}{hint}")]
pub struct BindError {
    /// The address.
    pub addr: SocketAddr,
    /// What the OS said. Deliberately not the error's `source`: the message already says
    /// it, and a chain printer would say it twice.
    pub cause: io::Error,
    hint: &'static str,
}

/// Opens a listening socket. IPv6 listeners are IPv6-only (as nginx does), so `0.0.0.0:443`
/// and `[::]:443` can both be listed.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    let open = || -> io::Result<TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.set_nonblocking(true)?;
        // Accepted sockets are cloned from the listener, options included: set once here,
        // these cost nothing per connection.
        tune(&socket);
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        TcpListener::from_std(socket.into())
    };
    open().map_err(|cause| {
        let hint = match cause.kind() {
            io::ErrorKind::PermissionDenied => {
                "; ports below 1024 need privilege: run `sudo setcap cap_net_bind_service=+ep $(command -v snirelay)`, or pick another port with --listen"
            }
            io::ErrorKind::AddrInUse => {
                "; another process holds it (see `ss -ltnp`): stop it, or pick another address with --listen"
            }
            io::ErrorKind::AddrNotAvailable => {
                "; no interface has this address: fix the IP, or listen on 0.0.0.0"
            }
            _ => "",
        };
        BindError { addr, cause, hint }
    })
}

/// Serves `listeners` until `shutdown` completes, then stops accepting, lets live
/// connections finish for the drain period, and ends the rest.
pub async fn serve(
    listeners: Vec<TcpListener>,
    relay: Arc<Relay>,
    shutdown: impl Future<Output = ()>,
) {
    let connections = TaskTracker::new();
    let stop = CancellationToken::new();
    let accepting = CancellationToken::new();
    let accept_loops = TaskTracker::new();
    // Ready before any accept loop says it is listening, so whoever saw that line finds
    // /readyz agreeing.
    relay.ready.store(true, Ordering::Relaxed);
    for listener in listeners {
        accept_loops.spawn(accept_loop(
            listener,
            relay.clone(),
            connections.clone(),
            accepting.clone(),
            stop.clone(),
        ));
    }
    accept_loops.close();
    shutdown.await;
    relay.ready.store(false, Ordering::Relaxed);
    accepting.cancel();
    accept_loops.wait().await;
    connections.close();
    let drain = relay.settings().config.timeouts.drain;
    tracing::info!(
        live = connections.len(),
        drain_s = drain.as_secs(),
        "draining"
    );
    if timeout(drain, connections.wait()).await.is_err() {
        stop.cancel();
        connections.wait().await;
    }
    tracing::info!("stopped");
}

async fn accept_loop(
    listener: TcpListener,
    relay: Arc<Relay>,
    connections: TaskTracker,
    accepting: CancellationToken,
    stop: CancellationToken,
) {
    let Ok(local) = listener.local_addr() else {
        return;
    };
    tracing::info!(addr = %local, "listening");
    let mut failing = false;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = accepting.cancelled() => return,
        };
        let (client, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: pause instead of spinning, and say so once per episode.
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(listener = %local, error = %e, "accept failing; pausing between attempts");
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        if std::mem::take(&mut failing) {
            tracing::info!(listener = %local, "accept recovered");
        }
        let settings = relay.settings();
        let admitted = if client_allowed(peer.ip(), &settings.config.clients) {
            relay
                .counters
                .admit(peer.ip(), &settings.config.limits)
                .map_err(Rejection::Limit)
        } else {
            Err(Rejection::ClientDenied)
        };
        match admitted {
            Ok(slot) => {
                connections.spawn(connection(
                    client,
                    ConnectionLog::new(peer, local),
                    relay.clone(),
                    settings,
                    slot,
                    stop.clone(),
                ));
            }
            // Closed before a byte is read; the log line is the only trace.
            Err(rejection) => ConnectionLog::new(peer, local).emit(Err(rejection), &relay.metrics),
        }
    }
}

/// One connection, start to end, logged once.
///
/// A plain function returning an `async move` block rather than an `async fn`: the block
/// uses what it captures in place, while an `async fn` keeps its arguments twice in the
/// task of every connection for as long as it lives.
#[allow(clippy::manual_async_fn)]
fn connection(
    client: TcpStream,
    mut log: ConnectionLog,
    relay: Arc<Relay>,
    settings: Arc<Settings>,
    mut slot: Slot,
    stop: CancellationToken,
) -> impl Future<Output = ()> {
    async move {
        // Boxed, so what getting there took is freed before the copy loop starts, and
        // matched in one statement, whose temporaries end with it: a long-lived
        // connection's task keeps only the copy loop's state.
        let (client, upstream, preface) = match tokio::select! {
            biased;
            opened = Box::pin(open(client, &settings, &mut slot, &mut log)) => opened,
            () = stop.cancelled() => Err(Rejection::Shutdown),
        } {
            Ok(parts) => parts,
            Err(rejection) => {
                drop(slot);
                log.emit(Err(rejection), &relay.metrics);
                return;
            }
        };
        let idle = settings.config.timeouts.idle;
        let transfer = forward::relay(&client, &upstream, preface, idle, &stop).await;
        // The connection is over: close it and free its place before saying so.
        drop((client, upstream));
        drop(slot);
        log.emit(Ok(transfer), &relay.metrics);
    }
}

/// From accept to a connected upstream: the client, the upstream, and the bytes to replay
/// (the hello and whatever followed it).
async fn open(
    client: TcpStream,
    settings: &Settings,
    slot: &mut Slot,
    log: &mut ConnectionLog,
) -> Result<(TcpStream, TcpStream, Vec<u8>), Rejection> {
    let config = &settings.config;

    // Each phase is boxed on its own: a connection waiting for its hello must not hold
    // room for the DNS lookup's state, which is kilobytes.
    let mut received = Vec::new();
    let hello = timeout(
        config.timeouts.hello,
        Box::pin(read_hello(&client, &mut received, config.max_hello_bytes)),
    )
    .await
    .map_err(|_| Rejection::HelloTimeout)??;
    slot.hello_done();
    log.hello(&hello);

    let Some(route) = config.rules.route(&hello.sni, config.upstream_port) else {
        Box::pin(refuse_with_alert(client)).await;
        return Err(Rejection::NotAllowed);
    };
    log.rule = Some(route.rule.pattern.to_string().into());

    let deadline = Instant::now() + config.timeouts.connect;
    let (targets, source) = timeout_at(
        deadline,
        Box::pin(settings.resolver.destinations(&route, &settings.policy)),
    )
    .await
    .map_err(|_| Rejection::DnsTimeout)??;
    let remaining = deadline.saturating_duration_since(Instant::now());
    log.dns = Some(source);
    let (upstream, addr) = Box::pin(connect::happy_eyeballs(&targets, remaining)).await?;
    log.connected(addr);
    tune(&upstream);

    Ok((client, upstream, received))
}

/// Reads until `received` holds a complete ClientHello. Bytes past the hello stay in
/// `received` to be forwarded; `limit` bounds the buffer.
async fn read_hello(
    client: &TcpStream,
    received: &mut Vec<u8>,
    limit: usize,
) -> Result<ClientHello, Rejection> {
    let mut reader = HelloReader::new(limit);
    loop {
        client.readable().await.map_err(Rejection::ClientError)?;
        let start = received.len();
        let room = (limit - start).min(start.max(4096));
        received.resize(start + room, 0);
        let read = client.try_read(&mut received[start..]);
        received.truncate(start + read.as_ref().map_or(0, |n| *n));
        match read {
            Ok(0) => return Err(Rejection::ClientClosed),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(Rejection::ClientError(e)),
        }
        if let Some(hello) = reader.advance(received)? {
            return Ok(hello);
        }
    }
}

/// Tells a TLS client its name is not served, so its error says so, then closes cleanly.
async fn refuse_with_alert(client: TcpStream) {
    let _ = client.try_write(&UNRECOGNIZED_NAME_ALERT);
    let _ = SockRef::from(&client).shutdown(Shutdown::Write);
    let _ = timeout(ALERT_LINGER, async {
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < ALERT_LINGER_BYTES {
            if client.readable().await.is_err() {
                return;
            }
            match client.try_read(&mut sink) {
                Ok(0) => return,
                Ok(n) => drained += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    })
    .await;
}

/// Small writes go out at once (handshakes are latency-bound), and dead peers are noticed.
fn tune<'s>(socket: impl Into<SockRef<'s>>) {
    let sock = socket.into();
    let _ = sock.set_tcp_nodelay(true);
    let keepalive = TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10))
        .with_retries(6);
    let _ = sock.set_tcp_keepalive(&keepalive);
}

/// Why a connection was not forwarded.
#[derive(Debug, thiserror::Error)]
enum Rejection {
    #[error("client address not in `clients`")]
    ClientDenied,
    #[error(transparent)]
    Limit(#[from] LimitExceeded),
    #[error("no complete ClientHello in time")]
    HelloTimeout,
    #[error("client closed before its ClientHello was complete")]
    ClientClosed,
    #[error("client connection failed: {0}")]
    ClientError(io::Error),
    #[error(transparent)]
    Hello(#[from] HelloError),
    #[error("name not on the allowlist")]
    NotAllowed,
    #[error("DNS lookup did not finish within the connect timeout")]
    DnsTimeout,
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("relay shut down before the connection was forwarded")]
    Shutdown,
}

impl Rejection {
    fn reason(&self) -> &'static str {
        match self {
            Self::ClientDenied => "client_denied",
            Self::Limit(e) => e.reason(),
            Self::HelloTimeout => "hello_timeout",
            Self::ClientClosed => "client_closed",
            Self::ClientError(_) => "client_error",
            Self::Hello(e) => e.reason(),
            Self::NotAllowed => "not_allowed",
            Self::DnsTimeout => "dns_failed",
            Self::Resolve(e) => e.reason(),
            Self::Connect(_) => "upstream_unreachable",
            Self::Shutdown => "shutdown",
        }
    }

    fn detail(&self) -> Option<&'static str> {
        match self {
            Self::Hello(e) => Some(e.detail()),
            Self::DnsTimeout => Some("timeout"),
            Self::Connect(e) => Some(e.detail()),
            _ => None,
        }
    }
}

/// What the log line says of the hello, formatted once it is read: a few strings are
/// cheaper to keep through a long-lived connection than the parsed lists.
struct HelloFields {
    sni: Box<str>,
    alpn: Box<str>,
    tls: Box<str>,
    ech: bool,
    len: usize,
}

/// The one log line a connection leaves.
struct ConnectionLog {
    started: Instant,
    client: SocketAddr,
    listener: SocketAddr,
    hello: Option<HelloFields>,
    hello_done: Option<Duration>,
    rule: Option<Box<str>>,
    upstream: Option<SocketAddr>,
    dns: Option<Source>,
    connect_done: Option<Duration>,
}

impl ConnectionLog {
    fn new(client: SocketAddr, listener: SocketAddr) -> Self {
        ConnectionLog {
            started: Instant::now(),
            client,
            listener,
            hello: None,
            hello_done: None,
            rule: None,
            upstream: None,
            dns: None,
            connect_done: None,
        }
    }

    fn hello(&mut self, hello: &ClientHello) {
        self.hello_done = Some(self.started.elapsed());
        self.hello = Some(HelloFields {
            sni: hello.sni.as_str().into(),
            alpn: hello.alpn.join(",").into(),
            tls: versions(&hello.versions).into(),
            ech: hello.ech,
            len: hello.len,
        });
    }

    fn connected(&mut self, upstream: SocketAddr) {
        self.connect_done = Some(self.started.elapsed());
        self.upstream = Some(upstream);
    }

    fn emit(self, result: Result<Transfer, Rejection>, metrics: &Metrics) {
        let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        let total = self.started.elapsed();
        let connect = self
            .connect_done
            .zip(self.hello_done)
            .map(|(c, h)| ms(c - h));
        let hello = self.hello.as_ref();
        let (outcome, reason, detail, transfer, error) = match &result {
            Ok(t) => ("forwarded", t.end.word(), None, Some(*t), None),
            Err(r) => (
                "rejected",
                r.reason(),
                r.detail(),
                None,
                Some(r.to_string()),
            ),
        };
        // Counted before logged: whoever sees the line finds it in the metrics too.
        metrics.connection(&ConnectionRecord {
            outcome,
            reason,
            rule: self.rule.as_deref(),
            hello_bytes: hello.map(|h| h.len),
            hello: self.hello_done,
            connect: self.connect_done.zip(self.hello_done).map(|(c, h)| c - h),
            total,
            bytes: transfer.map(|t| (t.up, t.down)),
            spliced: transfer.map_or(0, |t| t.spliced),
            resolver_cache_hit: match self.dns {
                Some(Source::Cache) => Some(true),
                Some(Source::Query) => Some(false),
                _ => None,
            },
        });
        tracing::info!(
            target: "snirelay::connection",
            client = %self.client,
            listener = %self.listener,
            sni = hello.map(|h| &*h.sni),
            alpn = hello.map(|h| &*h.alpn).filter(|a| !a.is_empty()),
            tls = hello.map(|h| &*h.tls),
            ech = hello.map(|h| h.ech),
            rule = self.rule,
            upstream = self.upstream.map(|a| a.to_string()),
            outcome,
            reason,
            detail,
            error,
            bytes_up = transfer.map(|t| t.up),
            bytes_down = transfer.map(|t| t.down),
            bytes_spliced = transfer.map(|t| t.spliced),
            hello_ms = self.hello_done.map(ms),
            connect_ms = connect,
            total_ms = ms(total),
            "connection"
        );
    }
}

fn versions(offered: &[u16]) -> String {
    offered
        .iter()
        .map(|v| match v {
            0x0304 => "1.3".to_owned(),
            0x0303 => "1.2".to_owned(),
            0x0302 => "1.1".to_owned(),
            0x0301 => "1.0".to_owned(),
            other => format!("0x{other:04x}"),
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay_and_keepalive_from_the_listener() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let sock = SockRef::from(&accepted);
        assert!(sock.tcp_nodelay().unwrap());
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(60));
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(10)
        );
    }
}
