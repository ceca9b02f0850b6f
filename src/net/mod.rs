//! The socket layer: listeners and their options, reads that clear readiness, and the
//! system calls tokio does not make.

pub mod handover;
pub mod listen;
pub mod local;
pub mod read;
#[cfg(target_os = "linux")]
pub mod sys;
pub mod tcp_info;
pub mod transport;
