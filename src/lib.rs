//! snirelay: an SNI-passthrough TCP relay.
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
