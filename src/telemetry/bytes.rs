//! Byte counters that grow while bytes flow: a connection open for hours shows its traffic
//! as it goes, not in one spike at its end.

use prometheus_client::metrics::counter::Counter;
use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

/// The counters a forwarded connection adds its bytes to as they move. One set per rule,
/// shared by its connections: adding is an atomic add, no lookup.
pub struct ByteCounters {
    /// Up and down, over all connections.
    pub all: [Counter; 2],
    /// Up and down, for the rule.
    pub rule: Option<[Counter; 2]>,
    /// Of those, bytes moved by splice(2).
    pub spliced: Counter,
}

/// Which direction bytes moved: index into [`ByteCounters`]' pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to upstream.
    Up = 0,
    /// Upstream to client.
    Down = 1,
}

impl ByteCounters {
    /// `n` bytes moved `direction`.
    pub fn moved(&self, direction: Direction, n: u64) {
        self.all[direction as usize].inc_by(n);
        if let Some(rule) = &self.rule {
            rule[direction as usize].inc_by(n);
        }
    }

    /// Of the bytes moved, `n` went by splice(2).
    pub fn spliced(&self, n: u64) {
        self.spliced.inc_by(n);
    }
}

/// One [`ByteCounters`] per rule label, made on first use and shared from then on.
#[derive(Default)]
pub struct ByRule {
    counters: RwLock<HashMap<Box<str>, Arc<ByteCounters>>>,
}

impl ByRule {
    /// The counters of `rule` (`None`: no rule label), made by `make` the first time.
    pub fn get(
        &self,
        rule: Option<&str>,
        make: impl FnOnce() -> ByteCounters,
    ) -> Arc<ByteCounters> {
        let key = rule.unwrap_or_default();
        let known = self.counters.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(counters) = known.get(key) {
            return counters.clone();
        }
        drop(known);
        let made = Arc::new(make());
        self.counters
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.into())
            .or_insert(made)
            .clone()
    }
}
