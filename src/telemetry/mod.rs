//! What the relay tells its operator: one log line per connection and Prometheus metrics,
//! both from the same record, with rejection lines rate-limited per reason.

pub mod log;
pub mod metrics;
pub mod quota;
