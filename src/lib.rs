//! snirelay: an SNI-passthrough TCP relay.
//!
//! The modules follow one connection. `net` opens the listeners; `tcp::server` accepts and
//! admits (`policy`, `limits`); `tcp::connection` reads the ClientHello (`hello`,
//! `hostname`), asks `decide` (over `rules` from `config`), resolves (`resolve`) and
//! connects (`connect`), then `tcp::forward` copies both ways; `outcome` names how it ended
//! and `telemetry` logs and counts it. Around that: `lifecycle` (start-up, shutdown and
//! upgrades), `state` (the running relay, swapped whole by `reload`), `admin` (metrics and
//! health) and `cli` (the operator's commands).
// Nothing from the network or a config file may panic the relay: outside tests, failures are
// values with a reason, and clippy holds every commit to that.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
pub mod admin;
pub mod cli;
pub mod config;
pub mod connect;
pub mod decide;
pub mod hello;
pub mod hostname;
pub mod http_connect;
pub mod ja4;
pub mod lifecycle;
pub mod limits;
pub mod net;
pub mod outcome;
pub mod policy;
pub mod pool;
pub mod proxy;
pub mod reach;
pub mod reload;
pub mod resolve;
pub mod rules;
pub mod state;
pub mod systemd;
pub mod tcp;
pub mod tcp_options;
pub mod telemetry;
pub mod users;
