//! How connections learn the relay is stopping, shared by all of them behind one `Arc`.
//!
//! A `CancellationToken` keeps its state behind a mutex that every clone of it shares:
//! cloning one, dropping one and asking `is_cancelled` each take that lock. Two clones per
//! connection and a check at every wake-up of every connection were a lock taken tens of
//! thousands of times a second, fought over by the worker threads. Here each connection
//! holds the `Arc` (an atomic count), reads a flag at each wake-up, and waits on a token
//! only while it has something to wait for.
//!
//! Ending comes in two kinds: for good (the drain ran out), or to hand the connection to the
//! relay that replaces this one (an upgrade): then each connection stops at a point where
//! no read or write is in progress and gives back what it holds (`tcp::handover`).

use crate::tcp::handover::Parked;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// The relay's two stopping moments, as its connections see them.
#[derive(Default)]
pub struct Stopping {
    /// Accepting has stopped: an edge relay's idle ready connection may go now.
    draining: CancellationToken,
    drained: AtomicBool,
    /// The drain has run out: every connection ends now.
    ending: CancellationToken,
    ended: AtomicBool,
    /// Set before `ended`: the connections end to be handed over, not closed.
    handing_over: AtomicBool,
    /// The connections stopped for the handover, as each got there.
    parked: Mutex<Vec<Parked>>,
}

impl Stopping {
    /// Accepting stops.
    pub fn drain(&self) {
        self.drained.store(true, Ordering::Release);
        self.draining.cancel();
    }

    /// Whether accepting has stopped: an atomic load, for every accept.
    pub fn is_draining(&self) -> bool {
        self.drained.load(Ordering::Acquire)
    }

    /// The token that is cancelled when accepting stops.
    pub fn draining(&self) -> &CancellationToken {
        &self.draining
    }

    /// Every connection ends now.
    pub fn end(&self) {
        self.ended.store(true, Ordering::Release);
        self.ending.cancel();
    }

    /// Every connection stops where it is, to be handed to the next relay.
    pub fn hand_over(&self) {
        self.handing_over.store(true, Ordering::Release);
        self.end();
    }

    /// A connection stopped to be handed over.
    pub fn park(&self, parked: Parked) {
        self.parked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(parked);
    }

    /// The connections stopped to be handed over.
    pub fn take_parked(&self) -> Vec<Parked> {
        std::mem::take(&mut self.parked.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Whether the end is a handover: read once a connection has seen [`Self::has_ended`].
    pub fn is_handing_over(&self) -> bool {
        self.handing_over.load(Ordering::Acquire)
    }

    /// Ready once every connection must end; whoever polls it is woken then.
    pub fn ending(&self) -> WaitForCancellationFuture<'_> {
        self.ending.cancelled()
    }

    /// Whether every connection must end: an atomic load, for every wake-up.
    pub fn has_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    #[test]
    fn ending_wakes_a_waiting_connection_and_sets_the_flag_first() {
        let stopping = Stopping::default();
        let mut ending = pin!(stopping.ending());
        let mut cx = Context::from_waker(Waker::noop());
        assert!(ending.as_mut().poll(&mut cx).is_pending());
        assert!(!stopping.has_ended());
        stopping.end();
        assert!(stopping.has_ended());
        assert_eq!(ending.as_mut().poll(&mut cx), Poll::Ready(()));
        let draining = pin!(stopping.draining().cancelled());
        assert!(
            draining.poll(&mut cx).is_pending(),
            "ending is not draining"
        );
    }
}
