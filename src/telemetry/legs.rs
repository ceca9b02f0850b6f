//! The long leg's metrics, from the TCP_INFO each forwarded connection leaves as it ends:
//! the client leg's round-trip time per listener, and the bytes each side's socket had to
//! send again.

use crate::net::tcp_info::Legs;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::fmt::Write;
use std::net::SocketAddr;

/// A listener's address as a label value, written as it is encoded: no string per
/// connection.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct ListenerAddr(SocketAddr);

impl EncodeLabelValue for ListenerAddr {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        write!(encoder, "{}", self.0)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: ListenerAddr,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SideLabel {
    side: &'static str,
}

/// Smoothed RTT buckets: 1 ms to about 4 s, doubling (a long leg sits at 150-250 ms).
fn rtt_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 13))
}

/// The long leg's metrics.
pub struct LegMetrics {
    client_rtt: Family<ListenerLabel, Histogram, fn() -> Histogram>,
    retransmitted: Family<SideLabel, Counter>,
}

impl LegMetrics {
    /// The metrics, registered in `registry`, each side's counter at 0 from the start.
    pub fn registered(registry: &mut Registry) -> LegMetrics {
        let legs = LegMetrics {
            client_rtt: Family::new_with_constructor(rtt_histogram),
            retransmitted: Family::default(),
        };
        registry.register(
            "client_rtt_seconds",
            "Smoothed round-trip time of the client leg as a forwarded connection ended, by listener",
            legs.client_rtt.clone(),
        );
        registry.register(
            "retransmitted_bytes",
            "Bytes the relay's sockets sent again, by the side they face (client or upstream)",
            legs.retransmitted.clone(),
        );
        for side in ["client", "upstream"] {
            let _ = legs.retransmitted.get_or_create(&SideLabel { side });
        }
        legs
    }

    /// One forwarded connection, accepted on `listener`, ended with `legs`.
    pub fn ended(&self, listener: SocketAddr, legs: &Legs) {
        if let Some(client) = &legs.client {
            self.client_rtt
                .get_or_create(&ListenerLabel {
                    listener: ListenerAddr(listener),
                })
                .observe(f64::from(client.rtt_us) / 1e6);
        }
        for (side, leg) in [("client", &legs.client), ("upstream", &legs.upstream)] {
            if let Some(bytes) = leg.and_then(|leg| leg.retrans_bytes) {
                self.retransmitted
                    .get_or_create(&SideLabel { side })
                    .inc_by(bytes);
            }
        }
    }
}
