//! What the relay tells its operator: one log line per connection and Prometheus metrics,
//! both from the same record.

pub mod log;
pub mod metrics;
