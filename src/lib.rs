//! snirelay: an SNI-passthrough TCP relay.
pub mod hello;
pub mod hostname;
pub mod config;
pub mod rules;
pub mod policy;
pub mod resolve;
pub mod connect;
pub mod forward;
pub mod server;
