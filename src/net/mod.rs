//! The socket layer: listeners and their options, and the system calls tokio does not make.

pub mod handover;
pub mod listen;
#[cfg(target_os = "linux")]
pub mod sys;
