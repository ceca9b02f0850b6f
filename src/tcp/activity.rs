//! When a connection last moved a byte, and the two timers that hang on it: the idle
//! timeout, and the release of splice pipes that bulk data no longer uses.
//!
//! One `Sleep` serves both, re-armed only when it fires (or when a pipe first needs an
//! earlier wake-up), so moving bytes costs a clock read and a store, never a timer update.

use crate::telemetry::bytes::{ByteCounters, Direction};
use crate::telemetry::live::LiveConnection;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// A splice pipe (two descriptors, and kernel pages while it holds data) is given back
/// after this long without a byte moving, so a long-lived connection that once carried a
/// burst does not hold one for hours.
pub const PIPE_IDLE: Duration = Duration::from_secs(5);

/// What a quiet spell has come to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quiet {
    /// Nothing moved for the idle timeout: the connection ends.
    Idle,
    /// Nothing moved for [`PIPE_IDLE`]: empty pipes can go.
    PipesUnused,
}

/// The time of the last byte moved in either direction, and where moved bytes are counted.
pub struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    /// The counters of the connection's rule.
    pub counters: Arc<ByteCounters>,
    /// Its entry among the open connections, where they are listed.
    live: Option<Arc<LiveConnection>>,
}

impl Activity {
    /// A connection starting now, counting its bytes in `counters` and in its `live`
    /// entry, if it has one.
    pub fn new(counters: Arc<ByteCounters>, live: Option<Arc<LiveConnection>>) -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            counters,
            live,
        }
    }

    /// `n` bytes were written `direction`.
    pub fn moved(&self, direction: Direction, n: u64) {
        self.counters.moved(direction, n);
        if let Some(live) = &self.live {
            live.moved(direction == Direction::Up, n);
        }
        self.touch();
    }

    /// Bytes moved (read, not yet written on).
    pub fn touch(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(now, Ordering::Relaxed);
    }

    /// A connection handed over from the relay this one replaced, nothing having moved on it
    /// for `quiet`: its idle timeout runs on from there.
    pub fn after_quiet(
        counters: Arc<ByteCounters>,
        live: Option<Arc<LiveConnection>>,
        quiet: Duration,
    ) -> Self {
        let mut activity = Activity::new(counters, live);
        activity.start = activity.start.checked_sub(quiet).unwrap_or(activity.start);
        activity
    }

    /// How long nothing has moved.
    pub fn quiet(&self) -> Duration {
        self.last().elapsed()
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// Ready once nothing has moved for `idle`, or, while `pipes` (some pipe could be
    /// given back), for [`PIPE_IDLE`]. `timer` is re-armed whenever it fires early.
    pub fn poll_quiet(
        &self,
        cx: &mut Context<'_>,
        mut timer: Pin<&mut Sleep>,
        idle: Duration,
        pipes: bool,
    ) -> Poll<Quiet> {
        let release = self.last() + PIPE_IDLE;
        if pipes && release < timer.deadline() {
            timer.as_mut().reset(release);
        }
        loop {
            ready!(timer.as_mut().poll(cx));
            let (last, now) = (self.last(), Instant::now());
            if now >= last + idle {
                return Poll::Ready(Quiet::Idle);
            }
            if pipes && now >= last + PIPE_IDLE {
                timer.as_mut().reset(last + idle);
                return Poll::Ready(Quiet::PipesUnused);
            }
            let next = if pipes { PIPE_IDLE.min(idle) } else { idle };
            timer.as_mut().reset(last + next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::metrics::Metrics;
    use tokio::time::advance;

    /// What `poll_quiet` says now, without waiting.
    async fn quiet(
        clock: &Activity,
        timer: &mut Pin<&mut Sleep>,
        idle: Duration,
        pipes: bool,
    ) -> Option<Quiet> {
        std::future::poll_fn(|cx| {
            Poll::Ready(match clock.poll_quiet(cx, timer.as_mut(), idle, pipes) {
                Poll::Ready(quiet) => Some(quiet),
                Poll::Pending => None,
            })
        })
        .await
    }

    fn clock() -> Activity {
        Activity::new(Metrics::default().byte_counters(None), None)
    }

    #[tokio::test(start_paused = true)]
    async fn traffic_in_one_direction_keeps_the_connection_alive() {
        let clock = clock();
        let idle = Duration::from_secs(10);
        let timer = tokio::time::sleep(idle);
        tokio::pin!(timer);
        for _ in 0..5 {
            advance(Duration::from_secs(8)).await;
            clock.touch();
            assert_eq!(quiet(&clock, &mut timer, idle, false).await, None);
        }
        advance(Duration::from_secs(9)).await;
        assert_eq!(quiet(&clock, &mut timer, idle, false).await, None);
        advance(Duration::from_secs(1)).await;
        assert_eq!(
            quiet(&clock, &mut timer, idle, false).await,
            Some(Quiet::Idle),
            "10 s without a byte is idle"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn pipes_go_after_a_quiet_spell_long_before_the_idle_timeout() {
        let clock = clock();
        let idle = Duration::from_secs(300);
        let timer = tokio::time::sleep(idle);
        tokio::pin!(timer);
        // Bulk data for a while: the pipe stays.
        for _ in 0..10 {
            advance(Duration::from_secs(1)).await;
            clock.touch();
            assert_eq!(quiet(&clock, &mut timer, idle, true).await, None);
        }
        advance(PIPE_IDLE - Duration::from_millis(1)).await;
        assert_eq!(quiet(&clock, &mut timer, idle, true).await, None);
        advance(Duration::from_millis(1)).await;
        assert_eq!(
            quiet(&clock, &mut timer, idle, true).await,
            Some(Quiet::PipesUnused)
        );
        // Pipes gone: the connection itself lives on to its idle timeout.
        assert_eq!(quiet(&clock, &mut timer, idle, false).await, None);
        advance(idle - PIPE_IDLE - Duration::from_millis(1)).await;
        assert_eq!(quiet(&clock, &mut timer, idle, false).await, None);
        advance(Duration::from_millis(1)).await;
        assert_eq!(
            quiet(&clock, &mut timer, idle, false).await,
            Some(Quiet::Idle)
        );
    }
}
