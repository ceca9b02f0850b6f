//! Prometheus metrics. Connection metrics are recorded from the same record as the
//! connection's log line, so the two always agree. Rule labels are the rules as written,
//! never the client's SNI, so cardinality is bounded by the allowlist.

use crate::limits::Counters;
use crate::telemetry::audit::AuditSink;
use crate::telemetry::bytes::{ByRule, ByteCounters};
use crate::telemetry::carried::Carried;
use crate::telemetry::health::HealthGauges;
use crate::telemetry::legs::LegMetrics;
use crate::telemetry::pool::PoolMetrics;
use crate::telemetry::quota::LineQuota;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tracing_appender::non_blocking::ErrorCounter;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupOutcome {
    group: Arc<str>,
    outcome: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabel {
    rule: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleDirection {
    rule: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Result_ {
    result: &'static str,
}

/// What one finished connection contributes. Its bytes are not here: they were counted
/// as they moved (`telemetry::bytes`).
#[derive(Debug, Clone, Default)]
pub struct FinishedConnection<'a> {
    /// `forwarded` or `rejected`.
    pub outcome: &'static str,
    /// The stable reason word.
    pub reason: &'static str,
    /// The client's group, in a file with groups.
    pub group: Option<&'a Arc<str>>,
    /// The rule that matched, as written.
    pub rule: Option<&'a Arc<str>>,
    /// Size of the ClientHello records, when one was read.
    pub hello_bytes: Option<usize>,
    /// Time to a complete hello.
    pub hello: Option<Duration>,
    /// Time from the hello to the upstream connection.
    pub connect: Option<Duration>,
    /// Whole lifetime.
    pub total: Duration,
    /// Whether the destination's addresses came from the resolver cache.
    pub resolver_cache_hit: Option<bool>,
}

/// The relay's metrics.
pub struct Metrics {
    /// The audit log, where one is written, and its drop counter.
    pub audit: AuditSink,
    registry: Registry,
    /// The long leg's: RTT and retransmissions.
    pub legs: LegMetrics,
    /// An edge relay's pools of ready connections.
    pub pools: PoolMetrics,
    /// The rate limit on rejection log lines, which counts what it suppresses.
    pub rejections: Arc<LineQuota>,
    /// Readiness and the limits, read when scraped.
    pub health: HealthGauges,
    connections: Family<OutcomeLabel, Counter>,
    group_connections: Family<GroupOutcome, Counter>,
    bytes: Family<DirectionLabel, Counter>,
    spliced: Counter,
    rule_connections: Family<RuleLabel, Counter>,
    rule_bytes: Family<RuleDirection, Counter>,
    hello_size: Histogram,
    hello_duration: Histogram,
    connect_duration: Histogram,
    duration: Histogram,
    reloads: Family<Result_, Counter>,
    resolver_cache: Family<Result_, Counter>,
    active: Gauge,
    pending_hellos: Gauge,
    splice_pipes: Gauge,
    log_suppressed: Family<Reason, Counter>,
    log_dropped: Counter,
    /// Byte counters by rule, taken by each forwarded connection.
    by_rule: ByRule,
    /// The totals of the relay this one replaced, added to every counter shown.
    carried: OnceLock<Carried>,
}

/// Lines the log writer dropped because its queue was full, as the writer counts them.
/// Process-wide on purpose: so is the log subscriber it counts for, installed once by the
/// binary. Read without a lock.
static LOG_DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Makes `/metrics` report what the non-blocking log writer drops.
pub fn count_dropped_log_lines(counter: ErrorCounter) {
    let _ = LOG_DROPPED.set(counter);
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("snirelay");
        let legs = LegMetrics::registered(&mut registry);
        let pools = PoolMetrics::registered(&mut registry);
        let health = HealthGauges::registered(&mut registry);
        let audit = AuditSink::registered(&mut registry);
        let metrics = Metrics {
            audit,
            legs,
            pools,
            rejections: Arc::default(),
            health,
            connections: Family::default(),
            group_connections: Family::default(),
            bytes: Family::default(),
            spliced: Counter::default(),
            rule_connections: Family::default(),
            rule_bytes: Family::default(),
            hello_size: Histogram::new(exponential_buckets(128.0, 2.0, 10)),
            hello_duration: Histogram::new(exponential_buckets(0.0005, 4.0, 10)),
            connect_duration: Histogram::new(exponential_buckets(0.0005, 4.0, 10)),
            duration: Histogram::new(exponential_buckets(0.001, 4.0, 12)),
            reloads: Family::default(),
            resolver_cache: Family::default(),
            active: Gauge::default(),
            pending_hellos: Gauge::default(),
            splice_pipes: Gauge::default(),
            log_suppressed: Family::default(),
            log_dropped: Counter::default(),
            by_rule: ByRule::default(),
            carried: OnceLock::new(),
            registry: Registry::default(),
        };
        registry.register(
            "connections",
            "Connections ended, by outcome and reason",
            metrics.connections.clone(),
        );
        registry.register(
            "group_connections",
            "Connections ended, by the client's group (in a file with groups), outcome and reason",
            metrics.group_connections.clone(),
        );
        registry.register(
            "active_connections",
            "Connections open now",
            metrics.active.clone(),
        );
        registry.register(
            "pending_hellos",
            "Connections waiting for their ClientHello now",
            metrics.pending_hellos.clone(),
        );
        registry.register(
            "bytes_spliced",
            "Of the bytes relayed, those moved by splice(2) without passing through user space",
            metrics.spliced.clone(),
        );
        registry.register(
            "splice_pipes",
            "Splice pipes held now by connections carrying bulk data (two descriptors each)",
            metrics.splice_pipes.clone(),
        );
        registry.register(
            "bytes",
            "Bytes relayed, up (client to upstream) and down",
            metrics.bytes.clone(),
        );
        registry.register(
            "rule_connections",
            "Connections forwarded, by the rule that allowed them",
            metrics.rule_connections.clone(),
        );
        registry.register(
            "rule_bytes",
            "Bytes relayed, by rule and direction",
            metrics.rule_bytes.clone(),
        );
        registry.register(
            "hello_size_bytes",
            "ClientHello size including record headers",
            metrics.hello_size.clone(),
        );
        registry.register(
            "hello_duration_seconds",
            "Time from accept to a complete ClientHello",
            metrics.hello_duration.clone(),
        );
        registry.register(
            "connect_duration_seconds",
            "Time from the ClientHello to the upstream connection",
            metrics.connect_duration.clone(),
        );
        registry.register(
            "connection_duration_seconds",
            "Whole connection lifetime",
            metrics.duration.clone(),
        );
        registry.register(
            "reloads",
            "Configuration reloads, by result",
            metrics.reloads.clone(),
        );
        registry.register(
            "resolver_cache",
            "Destination lookups, by resolver cache result",
            metrics.resolver_cache.clone(),
        );
        registry.register(
            "log_lines_suppressed",
            "Rejection log lines not written, past the rate per reason",
            metrics.log_suppressed.clone(),
        );
        registry.register(
            "log_lines_dropped",
            "Log lines dropped because the log writer's queue was full",
            metrics.log_dropped.clone(),
        );
        // Every series with a known label set exists from the start, at 0. (Creating one
        // returns a read guard, dropped at once.)
        for &(outcome, reason) in crate::outcome::OUTCOMES {
            let _ = metrics
                .connections
                .get_or_create(&OutcomeLabel { outcome, reason });
        }
        for result in ["ok", "failed"] {
            let _ = metrics.reloads.get_or_create(&Result_ { result });
        }
        for result in ["hit", "miss"] {
            let _ = metrics.resolver_cache.get_or_create(&Result_ { result });
        }
        for direction in ["up", "down"] {
            let _ = metrics.bytes.get_or_create(&DirectionLabel { direction });
        }
        Metrics {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    /// The counters for a connection forwarded by `rule` (as written).
    pub fn byte_counters(&self, rule: Option<&str>) -> Arc<ByteCounters> {
        fn pair<L: Clone + std::hash::Hash + Eq>(
            family: &Family<L, Counter>,
            labels: [L; 2],
        ) -> [Counter; 2] {
            labels.map(|l| family.get_or_create(&l).clone())
        }
        self.by_rule.get(rule, || ByteCounters {
            all: pair(
                &self.bytes,
                ["up", "down"].map(|direction| DirectionLabel { direction }),
            ),
            rule: rule.map(|rule| {
                pair(
                    &self.rule_bytes,
                    ["up", "down"].map(|direction| RuleDirection {
                        rule: rule.to_owned(),
                        direction,
                    }),
                )
            }),
            spliced: self.spliced.clone(),
        })
    }

    /// Records one finished connection.
    /// Makes every `(group, outcome, reason)` series of `groups` exist, at 0 until counted,
    /// so alerts on a group have a series from the start (as the other outcome series do).
    pub fn groups_known(&self, groups: &[crate::config::Group]) {
        for group in groups {
            for &(outcome, reason) in crate::outcome::OUTCOMES {
                let _ = self.group_connections.get_or_create(&GroupOutcome {
                    group: group.name.clone(),
                    outcome,
                    reason,
                });
            }
        }
    }

    pub fn connection(&self, record: &FinishedConnection<'_>) {
        self.connections
            .get_or_create(&OutcomeLabel {
                outcome: record.outcome,
                reason: record.reason,
            })
            .inc();
        if let Some(group) = record.group {
            self.group_connections
                .get_or_create(&GroupOutcome {
                    group: group.clone(),
                    outcome: record.outcome,
                    reason: record.reason,
                })
                .inc();
        }
        if let Some(size) = record.hello_bytes {
            self.hello_size.observe(size as f64);
        }
        if let Some(hello) = record.hello {
            self.hello_duration.observe(hello.as_secs_f64());
        }
        if let Some(connect) = record.connect {
            self.connect_duration.observe(connect.as_secs_f64());
        }
        self.duration.observe(record.total.as_secs_f64());
        if let Some(hit) = record.resolver_cache_hit {
            let result = if hit { "hit" } else { "miss" };
            self.resolver_cache.get_or_create(&Result_ { result }).inc();
        }
        if let Some(rule) = record.rule {
            self.rule_connections
                .get_or_create(&RuleLabel { rule: rule.clone() })
                .inc();
        }
    }

    /// Records a configuration reload.
    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.reloads.get_or_create(&Result_ { result }).inc();
    }

    /// A rejection line of `reason` went unwritten (see `telemetry::quota`).
    pub fn suppressed(&self, reason: &'static str) {
        self.log_suppressed.get_or_create(&Reason { reason }).inc();
    }

    /// The exposition, with the gauges read from `counters` now: OpenMetrics when the
    /// scraper asked for it, else the classic Prometheus text format (0.0.4) that older
    /// scrapers and `promtool check metrics` read.
    pub fn render(&self, counters: &Counters, openmetrics: bool) -> String {
        self.active.set(counters.active() as i64);
        self.pending_hellos.set(counters.pending_hellos() as i64);
        #[cfg(target_os = "linux")]
        self.splice_pipes.set(crate::net::sys::open_pipes() as i64);
        if let Some(dropped) = LOG_DROPPED.get() {
            let dropped = dropped.dropped_lines() as u64;
            self.log_dropped
                .inc_by(dropped.saturating_sub(self.log_dropped.get()));
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        if let Some(carried) = self.carried.get() {
            out = carried.apply(&out);
        }
        if openmetrics { out } else { classic_text(&out) }
    }

    /// Counts on from the totals of the relay this one replaced (its OpenMetrics text), so
    /// no counter goes back at the upgrade. Once per process: only the relay before hands
    /// its totals over.
    pub fn carry_on_from(&self, openmetrics: &str) {
        let _ = self.carried.set(Carried::parse(openmetrics));
    }
}

/// OpenMetrics to Prometheus text 0.0.4: a counter family is named with its `_total`
/// suffix there, and `# UNIT` and `# EOF` do not exist.
fn classic_text(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_text_names_counter_families_with_total() {
        let om = "# HELP x_bytes Bytes.\n# TYPE x_bytes counter\n# UNIT x_bytes bytes\nx_bytes_total 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n# EOF\n";
        let want = "# HELP x_bytes_total Bytes.\n# TYPE x_bytes_total counter\nx_bytes_total 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n";
        assert_eq!(classic_text(om), want);
    }
}
