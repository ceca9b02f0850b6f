//! One connection, top to bottom: read the PROXY header (from a balancer) and the hello
//! (on a CONNECT listener, the request first: `tunnel`), decide, resolve, connect, forward,
//! log.

use super::steps::{
    ClientSide, Reached, UNRECOGNIZED_NAME_ALERT, read_header, read_hello, refuse, upstream_for,
};
use super::tunnel::open_tunnel;
use crate::config::{Accept, Listener};
use crate::connect::ConnectError;
use crate::decide::{Chosen, Decision, choose, decide};
use crate::limits::Slot;
use crate::net::tcp_info::Legs;
use crate::net::transport;
use crate::outcome::Rejection;
use crate::policy::client_allowed;
use crate::proxy::{self, Header};
use crate::state::{Relay, Settings};
use crate::tcp::forward::{self, Copied, Start};
use crate::tcp::handover::{Forwarding, Opening, Parked, Replay, State};
use crate::tcp::stopping::Stopping;
use crate::tcp_options::Keepalive;
use crate::telemetry::live::{Id, LiveConnection};
use crate::telemetry::record::ConnectionRecord;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How a connection's task begins.
pub enum Begin {
    /// Just accepted on the listener for this entry.
    Accepted(Arc<Listener>),
    /// Handed over by the relay this one replaced before it was forwarded: opened again
    /// from what its client sent.
    Reopened(Arc<Listener>, Box<Opening>),
    /// Handed over while forwarding: the copy goes on (the record is the one carried).
    Resumed(Box<Forwarding>),
}

/// One connection, start to end, logged once (by whichever relay it ends in).
///
/// A plain function returning an `async move` block rather than an `async fn`: the block
/// uses what it captures in place, while an `async fn` keeps its arguments twice in the
/// task of every connection for as long as it lives.
#[allow(clippy::manual_async_fn)]
pub fn connection(
    client: TcpStream,
    mut record: ConnectionRecord,
    begin: Begin,
    relay: Arc<Relay>,
    settings: Arc<Settings>,
    mut slot: Slot,
    stopping: Arc<Stopping>,
) -> impl Future<Output = ()> {
    async move {
        let opening = match begin {
            Begin::Resumed(forwarding) => Err(forwarding),
            Begin::Accepted(listener) => {
                let hello = settings.config.timeouts.hello;
                Ok((listener, Vec::new(), hello, Replay::default()))
            }
            Begin::Reopened(listener, opening) => {
                let replay = Replay::answered_before(opening.answered);
                Ok((listener, opening.received, opening.hello_left, replay))
            }
        };
        let carried: Box<Keepalive>;
        let (upstream, start, live, keepalive) = match opening {
            Err(forwarding) => {
                let Forwarding {
                    upstream,
                    copying,
                    keepalive,
                    sni,
                } = *forwarding;
                slot.hello_done();
                let live = relay.live().add(|| {
                    let sockets = [client.as_raw_fd(), upstream.as_raw_fd()];
                    let rule = record.rule_label().map(Arc::from);
                    let (client, listener) = (record.client(), record.listener());
                    LiveConnection::new(client, listener, &sni, rule, sockets)
                        .carried_on(copying.moved(), record.age())
                });
                carried = Box::new(keepalive);
                (upstream, Start::Resumed(Box::new(copying)), live, &*carried)
            }
            Ok((listener, mut received, hello_left, replay)) => {
                let hello_deadline = Instant::now() + hello_left;
                // Boxed, so what getting there took is freed before the copy loop starts,
                // and one await: a long-lived connection's task keeps only the copy
                // loop's state.
                let opened = Box::pin(async {
                    let opening = open(
                        ClientSide {
                            socket: &client,
                            received: &mut received,
                            from: 0,
                            replay: &replay,
                            stopping: &stopping,
                        },
                        hello_deadline,
                        &listener,
                        &settings,
                        &relay,
                        &mut slot,
                        &mut record,
                    );
                    tokio::pin!(opening);
                    tokio::select! {
                        biased;
                        opened = &mut opening => opened,
                        // A connection writing to its client (a refusal, the 200)
                        // finishes that first: the next relay could not take it over
                        // halfway.
                        () = stopping.ending() => {
                            if stopping.is_handing_over() && !replay.is_possible() {
                                opening.await
                            } else {
                                Err(Rejection::Shutdown)
                            }
                        }
                    }
                })
                .await;
                match opened {
                    Ok((upstream, live, keepalive)) => {
                        (upstream, Start::Preface(received), live, keepalive)
                    }
                    Err(Rejection::Shutdown)
                        if stopping.is_handing_over() && replay.is_possible() =>
                    {
                        drop(slot);
                        let opening = Opening {
                            received,
                            hello_left: hello_deadline.saturating_duration_since(Instant::now()),
                            answered: replay.was_answered(),
                            age: record.age(),
                            listen: listener.addr,
                        };
                        let state = State::Opening(Box::new(opening));
                        stopping.park(Parked { client, state });
                        return;
                    }
                    Err(rejection) => {
                        drop(slot);
                        record.emit(Err(rejection), Legs::default(), relay.metrics());
                        return;
                    }
                }
            }
        };
        let idle = settings.config.timeouts.idle;
        let counters = relay.metrics().byte_counters(record.rule_label());
        let (id, entry) = live.unzip();
        let copied = forward::copy(
            &client, &upstream, start, idle, &stopping, counters, entry, keepalive,
        )
        .await;
        // The connection is over, or goes to the next relay: off the list of open ones.
        let listed = id.and_then(|id| relay.live().remove(id));
        let transfer = match copied {
            Copied::Ended(transfer) => transfer,
            Copied::HandedOver(copying) => {
                drop(slot);
                let forwarding = Forwarding {
                    upstream,
                    copying,
                    keepalive: *keepalive,
                    sni: listed.map_or_else(Default::default, |entry| entry.sni().into()),
                };
                let state = State::Forwarding(Box::new(forwarding), Box::new(record));
                stopping.park(Parked { client, state });
                return;
            }
        };
        // What its sockets say of both legs; then close it and free its place before
        // saying so.
        let legs = Legs::read(&client, &upstream);
        drop((client, upstream));
        drop(slot);
        record.emit(Ok(transfer), legs, relay.metrics());
    }
}

/// What a connection forwards between once opened: the upstream, its entry among the open
/// connections (where they are listed), and the upstream's keepalive, set once the
/// connection lasts. The bytes to replay stay in the client's buffer.
type Opened<'s> = (TcpStream, Option<(Id, Arc<LiveConnection>)>, &'s Keepalive);

/// From accept to a connected upstream. The client's bytes stay in its buffer as they came
/// until the upstream is connected (the next relay could open the connection again from
/// them); then the buffer holds what goes to the upstream.
#[allow(clippy::too_many_arguments)]
async fn open<'s>(
    mut client: ClientSide<'_>,
    mut hello_deadline: Instant,
    listener: &Listener,
    settings: &'s Settings,
    relay: &Relay,
    slot: &mut Slot,
    record: &mut ConnectionRecord,
) -> Result<Opened<'s>, Rejection> {
    let config = &settings.config;
    // The PROXY header and the hello share one deadline and one buffer, bounded by the
    // largest hello plus the largest header; where the listener waits longer for headers
    // (an edge relay's ready connections), the hello's deadline starts at the header.

    // Each phase is boxed on its own: a connection waiting for its hello must not hold
    // room for the DNS lookup's state, which is kilobytes.
    if let Some(proxy) = &listener.proxy {
        let header = Box::pin(read_header(
            client.socket,
            client.received,
            proxy,
            hello_deadline,
            client.stopping.draining(),
        ))
        .await?;
        if proxy.header_wait.is_some() {
            hello_deadline = Instant::now() + config.timeouts.hello;
        }
        client.from = header.len;
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

    let (hello, route, upstream, addr) = match &listener.accept {
        Accept::Tls => {
            // The client's group, if the file has groups, is known now: its address.
            let chosen = choose(config, record.client().ip(), None, listener.mode)?;
            if let Some(group) = chosen.group {
                record.group(group.name.clone());
            }
            let opening = open_tls(
                &mut client,
                hello_deadline,
                chosen,
                settings,
                relay,
                slot,
                record,
            );
            Box::pin(opening).await?
        }
        Accept::Connect(tunnel) => {
            let opening = open_tunnel(
                &mut client,
                hello_deadline,
                tunnel,
                settings.users_for(listener.addr),
                listener.mode,
                settings,
                relay,
                slot,
                record,
            );
            Box::pin(opening).await?
        }
    };
    // Forwarded from the hello on: the PROXY header, if any, goes.
    client.received.drain(..client.from);
    // Checked when the rules were loaded: nothing here can refuse it.
    let tcp = route.rule.and_then(|rule| rule.tcp.as_ref());
    let _ = transport::apply_connected(&upstream, &config.upstream_tcp, tcp);
    let keepalive = transport::keepalive(&config.upstream_tcp, tcp);
    if let Some(version) = route.rule.and_then(|rule| rule.send_proxy) {
        // The real client, and the address it connected to; ahead of everything replayed.
        let reached = client.socket.local_addr().map_err(Rejection::ClientError)?;
        let header = proxy::encode(version, record.client(), reached)
            .map_err(|source| ConnectError::Failed { addr, source })?;
        client.received.splice(0..0, header);
    }
    let entry = relay.live().add(|| {
        let rule = route.rule.map(|rule| rule.label.clone());
        let sockets = [client.socket.as_raw_fd(), upstream.as_raw_fd()];
        LiveConnection::new(
            record.client(),
            record.listener(),
            hello.sni.as_str(),
            rule,
            sockets,
        )
    });
    Ok((upstream, entry, keepalive))
}
/// A TLS listener's connection, from the hello to the upstream: read the hello, decide its
/// name, connect.
#[allow(clippy::too_many_arguments)]
async fn open_tls<'s>(
    client: &mut ClientSide<'_>,
    deadline: Instant,
    chosen: Chosen<'s>,
    settings: &'s Settings,
    relay: &Relay,
    slot: &mut Slot,
    record: &mut ConnectionRecord,
) -> Result<Reached<'s>, Rejection> {
    let config = &settings.config;
    let audited = relay.metrics().audit.enabled();
    let detailed = audited || ConnectionRecord::logged();
    let hello = read_hello(
        client.socket,
        client.received,
        client.from,
        deadline,
        config.max_hello_bytes,
        detailed,
    )
    .await?;
    slot.hello_done();
    record.hello(&hello, audited);

    let route = match decide(chosen.rules, &hello, config.upstream_port, chosen.mode) {
        Decision::Forward(route) => route,
        Decision::WouldRefuse(route) => {
            record.would_refuse();
            route
        }
        Decision::Refuse(rejection) => {
            refuse(client, UNRECOGNIZED_NAME_ALERT).await;
            return Err(rejection);
        }
    };
    if let Some(rule) = route.rule {
        record.rule(rule.label.clone());
    }
    let (upstream, addr) = Box::pin(upstream_for(&route, settings, relay, record)).await?;
    record.connected(addr);
    Ok((hello, route, upstream, addr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::net::read::tests::pair;
    use std::path::Path;
    use std::time::Duration;

    /// Budgets, in bytes, for what one connection's task holds. The connection future is
    /// what an idle forwarded connection keeps for hours: it stays small because
    /// `connection` and `forward::copy` are `fn -> impl Future` (an `async fn` keeps its
    /// arguments twice) and because `open`, whose phases are boxed one by one, is itself
    /// boxed and freed before forwarding.
    ///
    /// Each budget is the size measured with rustc 1.95 (1,040, 224 and 512 bytes; the
    /// connection's 40 more since a connection can be handed to the next relay: how it
    /// begins, and a handed-over upstream's keepalive, are kept for its life) plus
    /// [`MARGIN`]: a newer compiler may lay the state out a little differently, and that
    /// must not fail here, while a real growth (a field kept across an await, a phase no
    /// longer boxed, an `async fn`) still does. Past the budget: measure again and say why
    /// in the commit, or undo it.
    const MARGIN: usize = 32;
    const CONNECTION_FUTURE_BUDGET: usize = 1040 + MARGIN;
    const COPY_FUTURE_BUDGET: usize = 512 + MARGIN;
    const OPEN_FUTURE_BUDGET: usize = 224 + MARGIN;

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
        let stopping = Arc::new(Stopping::default());
        let listener = Arc::new(Listener::plain(addr));
        let task = connection(
            client,
            ConnectionRecord::new(addr, addr),
            Begin::Accepted(listener.clone()),
            relay.clone(),
            settings,
            slot,
            stopping.clone(),
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
        let mut received = Vec::new();
        let replay = Replay::default();
        let side = ClientSide {
            socket: &client,
            received: &mut received,
            from: 0,
            replay: &replay,
            stopping: &stopping,
        };
        let opening = open(
            side,
            Instant::now(),
            &listener,
            &settings,
            &relay,
            &mut slot,
            &mut record,
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
            forward::Start::Preface(Vec::new()),
            Duration::from_secs(1),
            &stopping,
            counters,
            None,
            &crate::tcp_options::Keepalive::DEFAULT,
        );
        let size = std::mem::size_of_val(&copy);
        eprintln!("copy loop future: {size} bytes");
        assert!(
            size <= COPY_FUTURE_BUDGET,
            "copy loop future is {size} bytes, budget {COPY_FUTURE_BUDGET}"
        );
    }
}
