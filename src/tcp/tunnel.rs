//! A CONNECT listener's connection, from the request to the checked hello: read the
//! request, decide the name it asks for, connect, answer `200`, then read the ClientHello
//! and hold it to the name asked for. Every refusal before the `200` is an HTTP answer the
//! client's own error shows; after it, a TLS alert.

use super::steps::{
    ClientSide, Reached, UNRECOGNIZED_NAME_ALERT, read_hello, refuse, upstream_for, write_all,
};
use crate::config::{Mode, Tunnel};
use crate::decide::{Decision, choose, decide_connect};
use crate::http_connect::{self, ESTABLISHED};
use crate::limits::Slot;
use crate::net::read::{Parsed, read_until_after};
use crate::outcome::Rejection;
use crate::state::{Relay, Settings};
use crate::telemetry::record::ConnectionRecord;
use crate::users::{Accounts, Verdict};
use std::sync::Arc;
use tokio::time::{Instant, timeout_at};

/// From the CONNECT request (read by `deadline`, after whatever the client sent already) to
/// the hello, checked against the request, with the upstream connected. The request stays
/// in the client's bytes until the end, so the next relay could open the connection again.
#[allow(clippy::too_many_arguments)]
pub(super) async fn open_tunnel<'s>(
    client: &mut ClientSide<'_>,
    deadline: Instant,
    tunnel: &Tunnel,
    users: Option<&Arc<Accounts>>,
    listener_mode: Option<Mode>,
    settings: &'s Settings,
    relay: &Relay,
    slot: &mut Slot,
    record: &mut ConnectionRecord,
) -> Result<Reached<'s>, Rejection> {
    let config = &settings.config;
    let limit = tunnel.max_request;
    let read = read_until_after(
        client.socket,
        client.received,
        client.from,
        limit,
        |bytes| http_connect::parse(bytes, limit).map(Parsed::from),
    );
    let request = match timeout_at(deadline, read).await {
        Ok(Ok(request)) => request,
        Ok(Err(e)) => return Err(answer(client, e.into()).await),
        Err(_) => return Err(answer(client, Rejection::RequestTimeout).await),
    };
    let hello_from = client.from + request.len;
    record.requested(&request.host, request.port);
    let mut user = None;
    if let Some(accounts) = users {
        let verdict = timeout_at(deadline, who(accounts, request.authorization)).await;
        match verdict.map_err(|_| Rejection::RequestTimeout) {
            Ok(Verdict::User(name)) => {
                record.user(&name);
                user = Some(name);
            }
            Err(timeout) => return Err(answer(client, timeout).await),
            Ok(refused) => {
                let rejection = Rejection::ProxyAuthRequired(refused.detail());
                return Err(answer(client, rejection).await);
            }
        }
    }
    // The client's group, if the file has groups: by its address and its user.
    let client_ip = record.client().ip();
    let chosen = match choose(config, client_ip, user.as_deref(), listener_mode) {
        Ok(chosen) => chosen,
        Err(rejection) => return Err(answer(client, rejection).await),
    };
    if let Some(group) = chosen.group {
        record.group(group.name.clone());
    }

    let decision = decide_connect(
        chosen.rules,
        &request.host,
        request.port,
        &tunnel.ports,
        chosen.mode,
    );
    let route = match decision {
        Decision::Forward(route) => route,
        Decision::WouldRefuse(route) => {
            record.would_refuse();
            route
        }
        Decision::Refuse(rejection) => return Err(answer(client, rejection).await),
    };
    if let Some(rule) = route.rule {
        record.rule(rule.label.clone());
    }
    let (upstream, addr) = match Box::pin(upstream_for(&route, settings, relay, record)).await {
        Ok(reached) => reached,
        Err(rejection) => return Err(answer(client, rejection).await),
    };
    record.connected(addr);
    // Not again, for a connection the relay before this one had answered.
    if !client.replay.was_answered() {
        client.replay.writing();
        write_all(client.socket, ESTABLISHED)
            .await
            .map_err(Rejection::ClientError)?;
        client.replay.answered();
    }
    // A handover asked for while the 200 was written: now it can go.
    if client.stopping.is_handing_over() {
        return Err(Rejection::Shutdown);
    }

    // The hello comes a round trip after the 200: its deadline starts now.
    let hello_deadline = Instant::now() + config.timeouts.hello;
    let audited = relay.metrics().audit.enabled();
    let detailed = audited || ConnectionRecord::logged();
    let hello = read_hello(
        client.socket,
        client.received,
        hello_from,
        hello_deadline,
        config.max_hello_bytes,
        detailed,
    )
    .await?;
    slot.hello_done();
    record.hello(&hello, audited);
    if hello.sni != request.host {
        // The upstream, connected for the name asked for, never sees a byte of it.
        drop(upstream);
        refuse(client, UNRECOGNIZED_NAME_ALERT).await;
        return Err(Rejection::SniMismatch);
    }
    // What is forwarded starts with the hello.
    client.received.drain(client.from..hello_from);
    Ok((hello, route, upstream, addr))
}

/// Whose credentials these are: remembered, or verified off the event loop (a hash's work
/// is milliseconds, by design), a few at a time.
async fn who(accounts: &Arc<Accounts>, authorization: Option<String>) -> Verdict {
    let Some(authorization) = authorization else {
        return Verdict::Missing;
    };
    if let Some(user) = accounts.remembered(&authorization) {
        return Verdict::User(user);
    }
    let Ok(_turn) = accounts.turns.acquire().await else {
        return Verdict::Wrong;
    };
    let accounts = accounts.clone();
    tokio::task::spawn_blocking(move || accounts.verify(Some(&authorization)))
        .await
        .unwrap_or(Verdict::Wrong)
}

/// Answers a refused request with its status and reason (a TLS alert once the `200` is
/// out: only a connection the relay before this one answered is refused after it), closes,
/// and gives the rejection back for the log.
async fn answer(client: &ClientSide<'_>, rejection: Rejection) -> Rejection {
    if client.replay.was_answered() {
        refuse(client, UNRECOGNIZED_NAME_ALERT).await;
        return rejection;
    }
    let status = rejection.http_status();
    let why = rejection.to_string();
    let refusal = http_connect::refusal(status, rejection.reason(), &why, status == 407);
    refuse(client, &refusal).await;
    rejection
}
