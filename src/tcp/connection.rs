//! One connection, top to bottom: read the PROXY header (from a balancer) and the hello,
//! decide, resolve, connect, forward, log.

use crate::config::{Listener, ProxyProtocol};
use crate::connect::ConnectError;
use crate::decide::{Decision, decide};
use crate::hello::{HelloError, HelloReader};
use crate::limits::Slot;
use crate::net::read::{Parsed, ReadError, read_until};
use crate::net::transport::{self, Legs};
use crate::outcome::Rejection;
use crate::policy::client_allowed;
use crate::pool::Ready;
use crate::proxy::{self, Header, ParsedHeader};
use crate::reach;
use crate::rules::Route;
use crate::state::{Relay, Settings};
use crate::tcp::forward;
use crate::telemetry::live::{Id, LiveConnection};
use crate::telemetry::record::ConnectionRecord;
use socket2::SockRef;
use std::future::Future;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_util::sync::CancellationToken;

/// A fatal TLS alert record: level 2 (fatal), description 112 (unrecognized_name).
const UNRECOGNIZED_NAME_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];
/// After the alert, read what the client still sends for at most this long, so the close is
/// a FIN and not a reset that could make the client's kernel discard the alert.
const ALERT_LINGER: Duration = Duration::from_secs(1);
const ALERT_LINGER_BYTES: usize = 64 * 1024;

/// One connection, start to end, logged once.
///
/// A plain function returning an `async move` block rather than an `async fn`: the block
/// uses what it captures in place, while an `async fn` keeps its arguments twice in the
/// task of every connection for as long as it lives.
#[allow(clippy::manual_async_fn)]
pub fn connection(
    client: TcpStream,
    mut record: ConnectionRecord,
    listener: Arc<Listener>,
    relay: Arc<Relay>,
    settings: Arc<Settings>,
    mut slot: Slot,
    stopping: Stopping,
) -> impl Future<Output = ()> {
    async move {
        // Boxed, so what getting there took is freed before the copy loop starts, and
        // matched in one statement, whose temporaries end with it: a long-lived
        // connection's task keeps only the copy loop's state.
        let (client, upstream, preface, live) = match tokio::select! {
            biased;
            opened = Box::pin(open(client, &listener, &settings, &relay, &mut slot, &mut record, &stopping.draining)) => opened,
            () = stopping.ending.cancelled() => Err(Rejection::Shutdown),
        } {
            Ok(parts) => parts,
            Err(rejection) => {
                drop(slot);
                record.emit(Err(rejection), Legs::default(), relay.metrics());
                return;
            }
        };
        let idle = settings.config.timeouts.idle;
        let counters = relay.metrics().byte_counters(record.rule_label());
        let (id, entry) = live.unzip();
        let transfer = forward::copy(
            &client,
            &upstream,
            preface,
            idle,
            &stopping.ending,
            counters,
            entry,
        )
        .await;
        // The connection is over: off the list of open ones, and what its sockets say of
        // both legs; then close it and free its place before saying so.
        if let Some(id) = id {
            relay.live().remove(id);
        }
        let legs = Legs::read(&client, &upstream);
        drop((client, upstream));
        drop(slot);
        record.emit(Ok(transfer), legs, relay.metrics());
    }
}

/// How a connection learns the relay is stopping.
#[derive(Clone)]
pub struct Stopping {
    /// Accepting has stopped: an edge relay's idle ready connection may go now.
    pub draining: CancellationToken,
    /// The drain has run out: every connection ends now.
    pub ending: CancellationToken,
}

/// What a connection forwards between: the client, the upstream, the bytes to replay
/// (the hello and whatever followed it), and its entry among the open connections (where
/// they are listed).
type Opened = (
    TcpStream,
    TcpStream,
    Vec<u8>,
    Option<(Id, Arc<LiveConnection>)>,
);

/// From accept to a connected upstream.
async fn open(
    client: TcpStream,
    listener: &Listener,
    settings: &Settings,
    relay: &Relay,
    slot: &mut Slot,
    record: &mut ConnectionRecord,
    draining: &CancellationToken,
) -> Result<Opened, Rejection> {
    let config = &settings.config;
    // Taken now: a byte kept across the awaits below is cheaper than the reference.
    let mode = listener.mode.unwrap_or(config.mode);
    // The PROXY header and the hello share one deadline and one buffer, bounded by the
    // largest hello plus the largest header; where the listener waits longer for headers
    // (an edge relay's ready connections), the hello's deadline starts at the header.
    let mut hello_deadline = Instant::now() + config.timeouts.hello;
    let mut received = Vec::new();

    // Each phase is boxed on its own: a connection waiting for its hello must not hold
    // room for the DNS lookup's state, which is kilobytes.
    if let Some(proxy) = &listener.proxy {
        let header = Box::pin(read_header(
            &client,
            &mut received,
            proxy,
            hello_deadline,
            draining,
        ))
        .await?;
        if proxy.header_wait.is_some() {
            hello_deadline = Instant::now() + config.timeouts.hello;
        }
        received.drain(..header.len);
        let Header::Proxy {
            source: named,
            tlvs,
        } = header.header
        else {
            return Err(Rejection::ProxyLocal);
        };
        if let Some(named) = named {
            record.proxied(named, tlvs);
            if !client_allowed(named.ip(), &config.clients) {
                return Err(Rejection::ClientDenied);
            }
        }
        // The client the log names: the header's, or without an address (v1 UNKNOWN, v2
        // AF_UNSPEC) the balancer itself.
        slot.claim_client(record.client().ip(), &config.limits)?;
    }

    let mut reader = HelloReader::new(config.max_hello_bytes);
    let hello = timeout_at(
        hello_deadline,
        Box::pin(read_until(
            &client,
            &mut received,
            config.max_hello_bytes,
            move |bytes| {
                Ok::<_, HelloError>(match reader.advance(bytes)? {
                    Some(hello) => Parsed::Found(hello),
                    None => Parsed::Missing(reader.missing(bytes)),
                })
            },
        )),
    )
    .await
    .map_err(|_| Rejection::HelloTimeout)??;
    slot.hello_done();
    record.hello(&hello);

    let route = match decide(&config.rules, &hello, config.upstream_port, mode) {
        Decision::Forward(route) => route,
        Decision::WouldRefuse(route) => {
            record.would_refuse();
            route
        }
        Decision::Refuse(rejection) => {
            Box::pin(refuse_with_alert(client)).await;
            return Err(rejection);
        }
    };
    if let Some(rule) = route.rule {
        record.rule(rule.label.clone());
    }

    let (upstream, addr) = Box::pin(upstream_for(&route, settings, relay, record)).await?;
    record.connected(addr);
    // Checked when the rules were loaded: nothing here can refuse it.
    let _ = transport::apply(
        &upstream,
        &config.upstream_tcp,
        route.rule.and_then(|rule| rule.tcp.as_ref()),
    );
    if let Some(version) = route.rule.and_then(|rule| rule.send_proxy) {
        // The real client, and the address it connected to; ahead of everything replayed.
        let reached = client.local_addr().map_err(Rejection::ClientError)?;
        let header = proxy::encode(version, record.client(), reached)
            .map_err(|source| ConnectError::Failed { addr, source })?;
        received.splice(0..0, header);
    }
    let entry = relay.live().add(|| {
        let rule = route.rule.map(|rule| rule.label.clone());
        let sockets = [client.as_raw_fd(), upstream.as_raw_fd()];
        LiveConnection::new(
            record.client(),
            record.listener(),
            hello.sni.as_str(),
            rule,
            sockets,
        )
    });

    Ok((client, upstream, received, entry))
}

/// The PROXY header, by the hello deadline or, on a listener that waits longer for it (an
/// edge relay's ready connections), by its own wait.
async fn read_header(
    client: &TcpStream,
    received: &mut Vec<u8>,
    proxy: &ProxyProtocol,
    hello_deadline: Instant,
    draining: &CancellationToken,
) -> Result<ParsedHeader, Rejection> {
    let waits = proxy.header_wait.is_some();
    let deadline = proxy
        .header_wait
        .map_or(hello_deadline, |wait| Instant::now() + wait);
    let read = tokio::select! {
        read = timeout_at(
            deadline,
            read_until(client, received, proxy::V2_MAX, |bytes| {
                proxy::parse(bytes, proxy.accept).map(Parsed::from)
            }),
        ) => Some(read),
        // A relay that stops accepting lets an edge's idle ready connections go at once,
        // so the edge reconnects to whoever accepts now.
        () = draining.cancelled(), if waits => None,
    };
    match read {
        // Not a byte: a ready connection the edge retired, kept past the wait, or let go
        // by a draining relay.
        None | Some(Err(_) | Ok(Err(ReadError::Closed | ReadError::Io(_))))
            if waits && received.is_empty() =>
        {
            Err(Rejection::PoolUnused)
        }
        None => Err(Rejection::Shutdown),
        Some(Err(_)) => Err(Rejection::HelloTimeout),
        Some(Ok(read)) => Ok(read?),
    }
}

/// The upstream connection for `route`: where an edge relay keeps ready connections to
/// this pinned upstream, the newest one; otherwise (or with none ready) resolved and
/// connected as always, never waiting for the pool.
async fn upstream_for(
    route: &Route<'_>,
    settings: &Settings,
    relay: &Relay,
    record: &mut ConnectionRecord,
) -> Result<(TcpStream, SocketAddr), Rejection> {
    match relay.pools().take(&route.host, route.port) {
        Ready::Taken(upstream, addr) => {
            record.pooled(true);
            return Ok((upstream, addr));
        }
        Ready::Empty => record.pooled(false),
        Ready::NoPool => {}
    }
    let fast_open = route
        .rule
        .and_then(|rule| rule.tcp.as_ref()?.fast_open)
        .or(settings.config.upstream_tcp.fast_open)
        == Some(true);
    let within = settings.config.timeouts.connect;
    let (upstream, addr, answered_from) = reach::reach(
        &settings.resolver,
        route,
        &settings.policy,
        within,
        fast_open,
    )
    .await?;
    record.dns(answered_from);
    Ok((upstream, addr))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::net::read::tests::pair;
    use std::path::Path;

    /// Budgets, in bytes, for what one connection's task holds. The connection future is
    /// what an idle forwarded connection keeps for hours: it stays small because
    /// `connection` and `forward::copy` are `fn -> impl Future` (an `async fn` keeps its
    /// arguments twice) and because `open`, whose phases are boxed one by one, is itself
    /// boxed and freed before forwarding.
    ///
    /// Each budget is the size measured with rustc 1.95 (952, 464 and 496 bytes) plus
    /// [`MARGIN`]: a newer compiler may lay the state out a little differently, and that
    /// must not fail here, while a real growth (a field kept across an await, a phase no
    /// longer boxed, an `async fn`) still does. Past the budget: measure again and say why
    /// in the commit, or undo it.
    const MARGIN: usize = 32;
    const CONNECTION_FUTURE_BUDGET: usize = 952 + MARGIN;
    const COPY_FUTURE_BUDGET: usize = 496 + MARGIN;
    const OPEN_FUTURE_BUDGET: usize = 464 + MARGIN;

    #[tokio::test]
    async fn a_connection_task_stays_within_its_memory_budget() {
        let config = Config::parse(r#"{"allow": ["a.example.com"]}"#, Path::new("t.json")).unwrap();
        let limits = config.limits;
        let settings = Arc::new(Settings::new(config, &[], &[], None).unwrap());
        let relay = Arc::new(Relay::new(
            Settings::new(settings.config.clone(), &[], &[], None).unwrap(),
            Vec::new(),
            Vec::new(),
        ));
        let (client, peer) = pair().await;
        let addr = client.local_addr().unwrap();
        let slot = relay.counters().admit(addr.ip(), &limits).unwrap();
        let ending = CancellationToken::new();
        let listener = Arc::new(Listener::plain(addr));
        let task = connection(
            client,
            ConnectionRecord::new(addr, addr),
            listener.clone(),
            relay.clone(),
            settings,
            slot,
            Stopping {
                draining: ending.clone(),
                ending: ending.clone(),
            },
        );
        let size = std::mem::size_of_val(&task);
        eprintln!("connection future: {size} bytes");
        assert!(
            size <= CONNECTION_FUTURE_BUDGET,
            "connection future is {size} bytes, budget {CONNECTION_FUTURE_BUDGET}"
        );

        let mut slot = relay.counters().admit(addr.ip(), &limits).unwrap();
        let settings = relay.settings();
        let mut record = ConnectionRecord::new(addr, addr);
        let (client, _peer) = pair().await;
        let opening = open(
            client,
            &listener,
            &settings,
            &relay,
            &mut slot,
            &mut record,
            &ending,
        );
        let size = std::mem::size_of_val(&opening);
        eprintln!("open future: {size} bytes");
        assert!(
            size <= OPEN_FUTURE_BUDGET,
            "open future is {size} bytes, budget {OPEN_FUTURE_BUDGET}"
        );
        drop(opening);

        let counters = relay.metrics().byte_counters(None);
        let copy = forward::copy(
            &peer,
            &peer,
            Vec::new(),
            Duration::from_secs(1),
            &ending,
            counters,
            None,
        );
        let size = std::mem::size_of_val(&copy);
        eprintln!("copy loop future: {size} bytes");
        assert!(
            size <= COPY_FUTURE_BUDGET,
            "copy loop future is {size} bytes, budget {COPY_FUTURE_BUDGET}"
        );
    }
}
