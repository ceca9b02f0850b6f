//! The operator's commands besides `run`: what they compute, kept out of `main.rs` so it
//! can be tested without a process.

pub mod check;
mod dns;
pub mod doctor;
pub mod edge;
pub mod env;
pub mod groups;
pub mod hosts;
pub mod probe;
pub mod rules_file;
pub mod suggest;
pub mod targets;
