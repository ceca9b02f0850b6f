//! An edge relay's pools of ready connections: how many wait now, and what became of the
//! connections clients asked for.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A pool's upstream as the file writes it: one label value per configured pool.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabel {
    upstream: String,
}

/// The pools' metrics, by upstream: one label value per configured pool.
#[derive(Default)]
pub struct PoolMetrics {
    ready: Family<UpstreamLabel, Gauge>,
    used: Family<UpstreamLabel, Counter>,
    misses: Family<UpstreamLabel, Counter>,
    discarded: Family<UpstreamLabel, Counter>,
}

/// One pool's share of [`PoolMetrics`], taken once so counting takes no lookup.
#[derive(Clone)]
pub struct PoolCounters {
    /// Ready connections now.
    pub ready: Gauge,
    /// Client connections served from the pool.
    pub used: Counter,
    /// Client connections that found the pool empty and connected themselves.
    pub misses: Counter,
    /// Ready connections found closed or reset, and closed.
    pub discarded: Counter,
}

impl PoolMetrics {
    /// The metrics, registered in `registry`.
    pub fn registered(registry: &mut Registry) -> PoolMetrics {
        let pools = PoolMetrics::default();
        registry.register(
            "pool_ready",
            "Connections established and waiting for a client, by upstream",
            pools.ready.clone(),
        );
        registry.register(
            "pool_used",
            "Client connections sent over a ready connection, by upstream",
            pools.used.clone(),
        );
        registry.register(
            "pool_misses",
            "Client connections that found no ready connection and connected themselves, by upstream",
            pools.misses.clone(),
        );
        registry.register(
            "pool_discarded",
            "Ready connections found closed or reset by the upstream, and closed unused, by upstream",
            pools.discarded.clone(),
        );
        pools
    }

    /// The counters of the pool for `upstream`, at 0 until it counts.
    pub fn of(&self, upstream: String) -> PoolCounters {
        let label = UpstreamLabel { upstream };
        PoolCounters {
            ready: self.ready.get_or_create(&label).clone(),
            used: self.used.get_or_create(&label).clone(),
            misses: self.misses.get_or_create(&label).clone(),
            discarded: self.discarded.get_or_create(&label).clone(),
        }
    }
}
