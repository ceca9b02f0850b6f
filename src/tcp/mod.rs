//! TCP: accepting, one connection's path, and the copy loop.

pub mod connection;
pub mod forward;
pub mod server;
