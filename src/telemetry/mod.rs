//! What the relay tells its operator: one log line per connection and Prometheus metrics,
//! both from the same record (bytes counted as they flow), with rejection lines
//! rate-limited per reason.

pub mod audit;
pub mod bytes;
pub mod carried;
pub mod health;
pub mod legs;
pub mod live;
pub mod metrics;
pub mod pool;
pub mod quota;
pub mod record;
