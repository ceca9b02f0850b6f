//! The steps of opening a connection that both kinds of listener take: the PROXY header,
//! the hello, the upstream connection, and a refusal the client can read.

use crate::config::ProxyProtocol;
use crate::hello::{ClientHello, HelloError, HelloReader};
use crate::net::read::{Parsed, ReadError, read_until, read_until_after};
use crate::outcome::Rejection;
use crate::pool::Ready;
use crate::proxy::{self, ParsedHeader};
use crate::reach;
use crate::rules::Route;
use crate::state::{Relay, Settings};
use crate::tcp::handover::Replay;
use crate::tcp::stopping::Stopping;
use crate::telemetry::record::ConnectionRecord;
use socket2::SockRef;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_util::sync::CancellationToken;

/// The client's side of a connection being opened: its socket, every byte it has sent
/// (what was parsed so far starts the buffer, up to `from`), whether the next relay could
/// open it again from those bytes, and whether that is asked for.
pub(super) struct ClientSide<'a> {
    pub socket: &'a TcpStream,
    pub received: &'a mut Vec<u8>,
    pub from: usize,
    pub replay: &'a Replay,
    pub stopping: &'a Stopping,
}

/// What opening a connection leaves, on either kind of listener: the hello to replay,
/// where it goes, and the connected upstream.
pub(super) type Reached<'s> = (ClientHello, Route<'s>, TcpStream, SocketAddr);

/// A fatal TLS alert record: level 2 (fatal), description 112 (unrecognized_name).
pub(super) const UNRECOGNIZED_NAME_ALERT: &[u8] = &[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];
/// After a refusal, read what the client still sends for at most this long, so the close is
/// a FIN and not a reset that could make the client's kernel discard the refusal.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
const REFUSAL_LINGER_BYTES: usize = 64 * 1024;

/// The PROXY header, by the hello deadline or, on a listener that waits longer for it (an
/// edge relay's ready connections), by its own wait.
pub(super) async fn read_header(
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

/// The ClientHello at `received[from..]`, by `deadline`, after whatever `received` holds
/// already; with its JA4 fingerprint where the log line or the audit log will show it
/// (`detailed`).
pub(super) async fn read_hello(
    client: &TcpStream,
    received: &mut Vec<u8>,
    from: usize,
    deadline: Instant,
    max_hello_bytes: usize,
    detailed: bool,
) -> Result<ClientHello, Rejection> {
    let mut reader = HelloReader::new(max_hello_bytes)
        .fingerprint(detailed)
        .brief(!detailed);
    let read = read_until_after(client, received, from, max_hello_bytes, move |bytes| {
        Ok::<_, HelloError>(match reader.advance(bytes)? {
            Some(hello) => Parsed::Found(hello),
            None => Parsed::Missing(reader.missing(bytes)),
        })
    });
    Ok(timeout_at(deadline, read)
        .await
        .map_err(|_| Rejection::HelloTimeout)??)
}

/// The upstream connection for `route`: where an edge relay keeps ready connections to
/// this pinned upstream, the newest one; otherwise (or with none ready) resolved and
/// connected as always, never waiting for the pool.
pub(super) async fn upstream_for(
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

/// Writes all of `bytes`; a client that stops reading is bounded by the caller's deadline.
pub(super) async fn write_all(client: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        client.writable().await?;
        match client.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Tells the client why it is refused (a TLS alert, or an HTTP answer on a CONNECT
/// listener), so its error says so, then closes cleanly. From the first byte of it on, the
/// connection is no longer one the next relay could open again.
pub(super) async fn refuse(client: &ClientSide<'_>, refusal: &[u8]) {
    client.replay.writing();
    let client = client.socket;
    let _ = timeout(REFUSAL_LINGER, write_all(client, refusal)).await;
    let _ = SockRef::from(client).shutdown(Shutdown::Write);
    let _ = timeout(REFUSAL_LINGER, async {
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < REFUSAL_LINGER_BYTES {
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
