//! Telling systemd how the relay is doing (sd_notify(3)): ready once listening, reloading
//! and ready again around a reload, stopping on shutdown, a status line with each, and
//! watchdog pings. Each message is one datagram, and nothing is sent without
//! `NOTIFY_SOCKET`, so a relay not run by systemd pays nothing.

use crate::state::Relay;
use sd_notify::NotifyState;
use std::time::Duration;

/// The relay is listening.
pub fn ready(relay: &Relay) {
    send(&[NotifyState::Ready, NotifyState::Status(&status(relay))]);
}

/// A reload begins; `MONOTONIC_USEC` lets systemd tell this reload from an earlier one.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(e) => tracing::debug!(error = %e, "cannot read the monotonic clock for systemd"),
    }
}

/// The relay is shutting down.
pub fn stopping(relay: &Relay) {
    send(&[NotifyState::Stopping, NotifyState::Status(&status(relay))]);
}

/// Pings the watchdog at half its period, with a fresh status line, until the process
/// ends. Runs only when systemd asked for it (`WatchdogSec=`).
pub async fn watchdog(relay: std::sync::Arc<Relay>, period: Duration) {
    let mut tick = tokio::time::interval(period / 2);
    loop {
        tick.tick().await;
        send(&[NotifyState::Watchdog, NotifyState::Status(&status(&relay))]);
    }
}

/// One line for `systemctl status`: what the relay is doing now.
fn status(relay: &Relay) -> String {
    let rules = relay.settings().config.rules.len();
    let active = relay.counters().active();
    let state = relay.readiness().unwrap_or_else(|why| why);
    format!("{active} connections, {rules} rules; {state}")
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}
