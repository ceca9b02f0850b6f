//! When a pool opens connections, and when it lets one go: pure, with time passed in.
//!
//! A pool fills up to its size at once while its upstream answers. After a failure (a
//! connect that failed, or a connection the upstream closed while it was young, as a far
//! relay that does not trust this edge does at once) it opens one connection at a time,
//! after a backoff that doubles up to [`MAX_BACKOFF`], until a connection proves good by
//! living past [`YOUNG`] or carrying a client. A connection that dies old (the far relay
//! restarted, a middlebox forgot it) is no failure: it is replaced at once.

use std::time::Duration;
use tokio::time::Instant;

/// The wait after the first failure in a row.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The longest wait between attempts while the upstream keeps failing.
pub const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// A connection closed by the upstream before this age counts as a failure.
pub const YOUNG: Duration = Duration::from_secs(2);

/// The refill state of one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refill {
    size: usize,
    failures: u32,
    not_before: Option<Instant>,
}

impl Refill {
    /// A pool of `size` connections, none open yet.
    pub fn new(size: usize) -> Refill {
        Refill {
            size,
            failures: 0,
            not_before: None,
        }
    }

    /// How many connects to start at `now`, with `ready` connections waiting and
    /// `opening` under way.
    pub fn to_open(&self, now: Instant, ready: usize, opening: usize) -> usize {
        if self.not_before.is_some_and(|at| now < at) {
            return 0;
        }
        let missing = self.size.saturating_sub(ready + opening);
        if self.failures == 0 {
            missing
        } else {
            missing.min(1usize.saturating_sub(opening))
        }
    }

    /// A connect failed at `now`.
    pub fn failed(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        self.not_before = Some(now + backoff(self.failures));
    }

    /// The upstream closed a waiting connection made at `since`, found at `now`.
    pub fn closed(&mut self, since: Instant, now: Instant) {
        if now.saturating_duration_since(since) < YOUNG {
            self.failed(now);
        }
    }

    /// A connection proved good: it carried a client, or lived past [`YOUNG`].
    pub fn proved(&mut self) {
        self.failures = 0;
        self.not_before = None;
    }

    /// When a waiting pool may try again, if it is waiting.
    pub fn retry_at(&self) -> Option<Instant> {
        self.not_before
    }
}

/// The wait after `failures` failures in a row (at least 1).
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (FIRST_BACKOFF * 2u32.pow(doublings)).min(MAX_BACKOFF)
}

/// Whether a connection made at `since` has waited its `max_idle` at `now`.
pub fn retired(since: Instant, now: Instant, max_idle: Duration) -> bool {
    now.saturating_duration_since(since) >= max_idle
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn an_answering_upstream_fills_the_pool_at_once() {
        let t = Instant::now();
        let refill = Refill::new(8);
        assert_eq!(refill.to_open(t, 0, 0), 8);
        assert_eq!(refill.to_open(t, 3, 2), 3);
        assert_eq!(refill.to_open(t, 8, 0), 0);
        assert_eq!(refill.to_open(t, 6, 4), 0);
    }

    #[test]
    fn a_failing_upstream_is_tried_one_at_a_time_after_a_doubling_wait() {
        let t = Instant::now();
        let mut refill = Refill::new(8);
        refill.failed(t);
        assert_eq!(refill.retry_at(), Some(t + FIRST_BACKOFF));
        assert_eq!(refill.to_open(t + secs(0.2), 0, 0), 0);
        assert_eq!(refill.to_open(t + secs(0.25), 0, 0), 1);
        assert_eq!(refill.to_open(t + secs(0.25), 0, 1), 0);
        let waits: Vec<Duration> = (1..=8).map(backoff).collect();
        assert_eq!(
            waits,
            [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0].map(secs).to_vec()
        );
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
        refill.proved();
        assert_eq!(refill.retry_at(), None);
        assert_eq!(refill.to_open(t + secs(0.3), 1, 0), 7);
    }

    #[test]
    fn only_a_young_connection_closed_by_the_upstream_is_a_failure() {
        let t = Instant::now();
        let mut refill = Refill::new(4);
        refill.closed(t, t + secs(30.0));
        assert_eq!(refill.to_open(t + secs(30.0), 0, 0), 4, "an old one");
        refill.closed(t, t + secs(1.0));
        assert_eq!(refill.retry_at(), Some(t + secs(1.25)), "a young one");
    }

    #[test]
    fn a_connection_retires_at_its_idle_age() {
        let t = Instant::now();
        let max_idle = secs(30.0);
        assert!(!retired(t, t + secs(29.9), max_idle));
        assert!(retired(t, t + secs(30.0), max_idle));
        assert!(
            !retired(t + secs(1.0), t, max_idle),
            "a clock that went back"
        );
    }
}
