//! TCP: accepting, one connection's path, the copy loop and its timers.

pub mod activity;
pub mod connection;
pub mod forward;
pub mod handover;
pub mod server;
mod steps;
pub mod stopping;
mod tunnel;
