//! A rate limit on rejection log lines, per reason.
//!
//! Anyone who can reach a listener can make the relay refuse connections (a denied
//! address, a port scanner, a flood past the limits) as fast as they can connect; one
//! line each would turn a flood into a logging flood. Each reason gets
//! [`LINES_PER_WINDOW`] lines per [`WINDOW`]; the rest are counted and said in one summary
//! line per reason ([`report_suppressed`]). Metrics count every connection regardless.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// Lines logged per reason per window before the rest are only counted.
pub const LINES_PER_WINDOW: u32 = 10;
/// The window, and how often suppressed lines are summed up.
pub const WINDOW: Duration = Duration::from_secs(1);

/// The rejection lines of the running relay.
pub static REJECTIONS: LineQuota = LineQuota::new();

/// Per-reason counts of lines logged in the current window and suppressed since the last
/// summary.
pub struct LineQuota {
    reasons: Mutex<Vec<Tally>>,
}

struct Tally {
    reason: &'static str,
    window: Instant,
    lines: u32,
    suppressed: u64,
}

impl Default for LineQuota {
    fn default() -> Self {
        Self::new()
    }
}

impl LineQuota {
    /// No lines yet.
    pub const fn new() -> Self {
        LineQuota {
            reasons: Mutex::new(Vec::new()),
        }
    }

    /// Whether a line with `reason` may be logged at `now`; if not, it is counted.
    pub fn allow(&self, reason: &'static str, now: Instant) -> bool {
        let mut reasons = self.reasons.lock().unwrap_or_else(PoisonError::into_inner);
        // Reasons are a closed set of a few dozen words: a scan beats hashing.
        let i = match reasons.iter().position(|t| t.reason == reason) {
            Some(i) => i,
            None => {
                reasons.push(Tally {
                    reason,
                    window: now,
                    lines: 0,
                    suppressed: 0,
                });
                reasons.len() - 1
            }
        };
        let tally = &mut reasons[i];
        if now.saturating_duration_since(tally.window) >= WINDOW {
            tally.window = now;
            tally.lines = 0;
        }
        if tally.lines < LINES_PER_WINDOW {
            tally.lines += 1;
            true
        } else {
            tally.suppressed += 1;
            false
        }
    }

    /// Each reason with lines suppressed since the last call, and how many; counts restart.
    pub fn take_suppressed(&self) -> Vec<(&'static str, u64)> {
        let mut reasons = self.reasons.lock().unwrap_or_else(PoisonError::into_inner);
        reasons
            .iter_mut()
            .filter(|t| t.suppressed > 0)
            .map(|t| (t.reason, std::mem::take(&mut t.suppressed)))
            .collect()
    }
}

/// Says, every [`WINDOW`], how many lines of each reason were suppressed; runs until
/// dropped (then [`log_suppressed`] says what is left).
pub async fn report_suppressed(quota: &LineQuota) {
    let mut ticks = tokio::time::interval(WINDOW);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        log_suppressed(quota);
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
        let start = Instant::now();
        let allowed = |reason, now, n| (0..n).filter(|_| quota.allow(reason, now)).count();
        assert_eq!(allowed("client_denied", start, 100), 10);
        assert_eq!(
            allowed("not_tls", start, 3),
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
