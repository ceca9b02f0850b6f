//! snirelay: an SNI-passthrough TCP relay.
// Nothing from the network or a config file may panic the relay: outside tests, failures are
// values with a reason, and clippy holds every commit to that.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
pub mod admin;
pub mod config;
pub mod connect;
pub mod forward;
pub mod hello;
pub mod hostname;
pub mod limits;
pub mod metrics;
pub mod policy;
pub mod probe;
pub mod reload;
pub mod resolve;
pub mod review;
pub mod rules;
pub mod server;
#[cfg(target_os = "linux")]
pub mod splice;
