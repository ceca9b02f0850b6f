//! Concurrent-connection accounting: global, per source address, and for connections still
//! in the hello phase. A slot is released when its guard drops, so a connection task that
//! ends in any way (a panic included) gives its slot back.

use crate::config::Limits;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitExceeded {
    /// `max_connections`.
    #[error("max_connections reached")]
    Connections,
    /// `max_connections_per_client`.
    #[error("max_connections_per_client reached for this address")]
    PerClient,
    /// `max_pending_hellos`.
    #[error("max_pending_hellos reached")]
    PendingHellos,
}

impl LimitExceeded {
    /// The stable reason word.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Connections => "too_many_connections",
            Self::PerClient => "too_many_from_client",
            Self::PendingHellos => "too_many_pending_hellos",
        }
    }
}

/// The live counts. They outlive configuration reloads.
#[derive(Debug, Default)]
pub struct Counters {
    active: AtomicUsize,
    pending_hellos: AtomicUsize,
    per_client: Mutex<HashMap<IpAddr, usize>>,
}

/// Holds one connection's place; dropping it releases the place.
#[derive(Debug)]
pub struct Slot {
    counters: Arc<Counters>,
    /// The client counted against `max_connections_per_client`, once known.
    client: Option<IpAddr>,
    hello_pending: bool,
}

impl Counters {
    /// Takes a place for a new connection from `peer`, counted as waiting for its hello
    /// until [`Slot::hello_done`].
    pub fn admit(self: &Arc<Self>, peer: IpAddr, limits: &Limits) -> Result<Slot, LimitExceeded> {
        let mut slot = self.admit_unknown(limits)?;
        slot.claim_client(peer, limits)?;
        Ok(slot)
    }

    /// Takes a place for a connection whose client is not known yet (a PROXY protocol
    /// header will name it): the global and hello-phase limits now, the per-client limit
    /// once [`Slot::claim_client`] is called.
    pub fn admit_unknown(self: &Arc<Self>, limits: &Limits) -> Result<Slot, LimitExceeded> {
        if !try_increment(&self.active, limits.max_connections) {
            return Err(LimitExceeded::Connections);
        }
        // From here on, dropping the slot gives back what was taken.
        let mut slot = Slot {
            counters: self.clone(),
            client: None,
            hello_pending: false,
        };
        if !try_increment(&self.pending_hellos, limits.max_pending_hellos) {
            return Err(LimitExceeded::PendingHellos);
        }
        slot.hello_pending = true;
        Ok(slot)
    }

    /// Connections holding a slot.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Connections still waiting for their hello.
    pub fn pending_hellos(&self) -> usize {
        self.pending_hellos.load(Ordering::Relaxed)
    }

    /// Connections from `peer`.
    pub fn from_client(&self, peer: IpAddr) -> usize {
        let per_client = self
            .per_client
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        per_client.get(&peer.to_canonical()).copied().unwrap_or(0)
    }
}

impl Slot {
    /// Counts this connection against `client`'s limit, moving it from any client it was
    /// counted against before.
    pub fn claim_client(&mut self, client: IpAddr, limits: &Limits) -> Result<(), LimitExceeded> {
        let client = client.to_canonical();
        let mut per_client = self
            .counters
            .per_client
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(previous) = self.client.take() {
            release(&mut per_client, previous);
        }
        let count = per_client.entry(client).or_insert(0);
        if *count >= limits.max_connections_per_client {
            if *count == 0 {
                per_client.remove(&client);
            }
            return Err(LimitExceeded::PerClient);
        }
        *count += 1;
        self.client = Some(client);
        Ok(())
    }

    /// The hello phase is over; the connection no longer counts against `max_pending_hellos`.
    pub fn hello_done(&mut self) {
        if std::mem::take(&mut self.hello_pending) {
            self.counters.pending_hellos.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.hello_done();
        if let Some(client) = self.client {
            let mut per_client = self
                .counters
                .per_client
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            release(&mut per_client, client);
        }
        self.counters.active.fetch_sub(1, Ordering::Relaxed);
    }
}

fn release(per_client: &mut HashMap<IpAddr, usize>, client: IpAddr) {
    if let Some(count) = per_client.get_mut(&client) {
        *count -= 1;
        if *count == 0 {
            per_client.remove(&client);
        }
    }
}

fn try_increment(counter: &AtomicUsize, max: usize) -> bool {
    counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_client: usize, pending: usize) -> Limits {
        Limits {
            max_connections: total,
            max_connections_per_client: per_client,
            max_pending_hellos: pending,
        }
    }

    #[test]
    fn each_limit_refuses_and_released_slots_are_reusable() {
        let counters = Arc::new(Counters::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let l = limits(3, 2, 10);
        let a1 = counters.admit(a, &l).unwrap();
        let _a2 = counters
            .admit("::ffff:10.0.0.1".parse().unwrap(), &l)
            .unwrap();
        assert_eq!(counters.admit(a, &l).unwrap_err(), LimitExceeded::PerClient);
        let _b1 = counters.admit(b, &l).unwrap();
        assert_eq!(
            counters.admit(b, &l).unwrap_err(),
            LimitExceeded::Connections
        );
        assert_eq!((counters.active(), counters.from_client(a)), (3, 2));
        drop(a1);
        assert_eq!((counters.active(), counters.from_client(a)), (2, 1));
        let _b2 = counters.admit(b, &l).unwrap();
        assert_eq!(counters.active(), 3);
    }

    #[test]
    fn pending_hellos_count_until_the_hello_is_done() {
        let counters = Arc::new(Counters::default());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let l = limits(10, 10, 1);
        let mut first = counters.admit(ip, &l).unwrap();
        assert_eq!(
            counters.admit(ip, &l).unwrap_err(),
            LimitExceeded::PendingHellos
        );
        assert_eq!(
            (counters.active(), counters.from_client(ip)),
            (1, 1),
            "a refusal takes nothing"
        );
        first.hello_done();
        first.hello_done();
        assert_eq!(counters.pending_hellos(), 0);
        let second = counters.admit(ip, &l).unwrap();
        drop(first);
        drop(second);
        assert_eq!(
            (
                counters.active(),
                counters.pending_hellos(),
                counters.from_client(ip)
            ),
            (0, 0, 0)
        );
    }

    #[test]
    fn a_slot_admitted_before_its_client_is_known_counts_it_once_claimed() {
        let counters = Arc::new(Counters::default());
        let balancer: IpAddr = "10.0.0.9".parse().unwrap();
        let real: IpAddr = "192.0.2.1".parse().unwrap();
        let l = limits(10, 1, 10);
        // Many connections from one balancer: the per-client limit is not the balancer's.
        let mut a = counters.admit_unknown(&l).unwrap();
        let mut b = counters.admit_unknown(&l).unwrap();
        assert_eq!((counters.active(), counters.from_client(balancer)), (2, 0));
        a.claim_client(real, &l).unwrap();
        assert_eq!(b.claim_client(real, &l), Err(LimitExceeded::PerClient));
        assert_eq!(counters.from_client(real), 1);
        drop(a);
        assert_eq!(counters.from_client(real), 0);
        b.claim_client(real, &l).unwrap();
        // Claiming again moves the count.
        b.claim_client(balancer, &l).unwrap();
        assert_eq!(
            (counters.from_client(real), counters.from_client(balancer)),
            (0, 1)
        );
        drop(b);
        assert_eq!(
            (
                counters.active(),
                counters.pending_hellos(),
                counters.from_client(balancer)
            ),
            (0, 0, 0)
        );
    }

    #[tokio::test]
    async fn a_connection_task_that_panics_gives_its_place_back() {
        let counters = Arc::new(Counters::default());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let slot = counters.admit(ip, &limits(1, 1, 1)).unwrap();
        let task = tokio::spawn(async move {
            let _held = slot;
            panic!("a bug in one connection");
        });
        assert!(task.await.unwrap_err().is_panic());
        assert_eq!(
            (
                counters.active(),
                counters.pending_hellos(),
                counters.from_client(ip)
            ),
            (0, 0, 0)
        );
        assert!(counters.admit(ip, &limits(1, 1, 1)).is_ok());
    }
}
