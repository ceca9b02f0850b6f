//! A rate limit on rejection log lines, per reason.
//!
//! Anyone who can reach a listener can make the relay refuse connections (a denied
//! address, a port scanner, a flood past the limits) as fast as they can connect; one
//! line each would turn a flood into a logging flood. Each reason gets
//! [`LINES_PER_WINDOW`] lines per [`WINDOW`]; the rest are counted and said in one summary
//! line per reason ([`report_suppressed`]). Metrics count every connection regardless.

use crate::outcome::OUTCOMES;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// Lines logged per reason per window before the rest are only counted.
pub const LINES_PER_WINDOW: u32 = 10;
/// The window, and how often suppressed lines are summed up.
pub const WINDOW: Duration = Duration::from_secs(1);

/// Per-reason counts of lines logged in the current window and suppressed since the last
/// summary, one relay's. Lock-free: it is asked once per rejected connection, during
/// exactly the floods it exists for, from every worker at once.
pub struct LineQuota {
    start: Instant,
    /// One per reason word a connection can end with; fixed when made.
    tallies: Vec<Tally>,
}

struct Tally {
    reason: &'static str,
    /// When its window began, in milliseconds after `start`.
    window_ms: AtomicU64,
    lines: AtomicU32,
    suppressed: AtomicU64,
}

impl Default for LineQuota {
    fn default() -> Self {
        Self::new()
    }
}

impl LineQuota {
    /// No lines yet.
    pub fn new() -> Self {
        let mut reasons: Vec<&'static str> = OUTCOMES.iter().map(|&(_, reason)| reason).collect();
        reasons.sort_unstable();
        reasons.dedup();
        LineQuota {
            start: Instant::now(),
            tallies: reasons
                .into_iter()
                .map(|reason| Tally {
                    reason,
                    window_ms: AtomicU64::new(0),
                    lines: AtomicU32::new(0),
                    suppressed: AtomicU64::new(0),
                })
                .collect(),
        }
    }

    /// Whether a line with `reason` may be logged at `now`; if not, it is counted. Under
    /// contention a window may let a line or two more through: a rate limit, not a ledger
    /// (the metrics are that).
    pub fn allow(&self, reason: &'static str, now: Instant) -> bool {
        // Reasons are a closed set of a few dozen words: a scan beats hashing.
        let Some(tally) = self.tallies.iter().find(|t| t.reason == reason) else {
            return true;
        };
        let ms = now.saturating_duration_since(self.start).as_millis() as u64;
        let window = tally.window_ms.load(Ordering::Relaxed);
        if ms.saturating_sub(window) >= WINDOW.as_millis() as u64
            && tally
                .window_ms
                .compare_exchange(window, ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tally.lines.store(0, Ordering::Relaxed);
        }
        if tally.lines.fetch_add(1, Ordering::Relaxed) < LINES_PER_WINDOW {
            true
        } else {
            tally.suppressed.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// Each reason with lines suppressed since the last call, and how many; counts restart.
    pub fn take_suppressed(&self) -> Vec<(&'static str, u64)> {
        self.tallies
            .iter()
            .filter_map(|t| match t.suppressed.swap(0, Ordering::Relaxed) {
                0 => None,
                n => Some((t.reason, n)),
            })
            .collect()
    }
}

/// Says, every [`WINDOW`], how many lines of each reason were suppressed; runs until
/// dropped (then [`log_suppressed`] says what is left).
pub async fn report_suppressed(quota: std::sync::Arc<LineQuota>) {
    let mut ticks = tokio::time::interval(WINDOW);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        log_suppressed(&quota);
    }
}

/// One line per reason with lines suppressed since the last call.
pub fn log_suppressed(quota: &LineQuota) {
    for (reason, suppressed) in quota.take_suppressed() {
        tracing::warn!(
            target: "snirelay::connection",
            reason,
            suppressed,
            window_s = WINDOW.as_secs(),
            "connection lines suppressed; the metrics count every connection"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn each_reason_gets_its_own_lines_per_window_and_the_rest_are_counted() {
        let quota = LineQuota::new();
        // A window from the quota's start: the first one opens here.
        let start = Instant::now() + WINDOW;
        let allowed = |reason, now, n| (0..n).filter(|_| quota.allow(reason, now)).count();
        assert_eq!(allowed("client_denied", start, 100), 10);
        assert_eq!(
            allowed("bad_hello", start, 3),
            3,
            "another reason is not affected"
        );
        assert_eq!(
            allowed("client_denied", start + WINDOW / 2, 5),
            0,
            "same window"
        );
        assert_eq!(quota.take_suppressed(), vec![("client_denied", 95)]);
        assert_eq!(quota.take_suppressed(), vec![], "counts restart");
        assert_eq!(
            allowed("client_denied", start + WINDOW, 20),
            10,
            "new window"
        );
        assert_eq!(quota.take_suppressed(), vec![("client_denied", 10)]);
    }
}
