//! The forwarded connections open now, for the admin endpoint's `GET /connections` (as
//! HAProxy's `show sess`): who, where, how long, the bytes so far, and each leg's TCP
//! health read from its socket when asked. Kept only where the admin endpoint is on: a
//! relay without one pays nothing per connection.

use crate::net::tcp_info::TcpInfo;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::time::Instant;

/// The most `GET /connections` lists in one answer, whatever `limit` asks.
pub const MAX_LISTED: usize = 10_000;

/// One forwarded connection, as listed.
pub struct LiveConnection {
    client: SocketAddr,
    listener: SocketAddr,
    sni: Box<str>,
    rule: Option<Arc<str>>,
    started: Instant,
    /// Bytes written so far: to the upstream, to the client.
    bytes: [AtomicU64; 2],
    /// The client and upstream sockets: open for as long as the entry is registered (the
    /// connection removes it before it closes them).
    sockets: [RawFd; 2],
}

impl LiveConnection {
    /// A connection from `client` on `listener` for `sni`, allowed by `rule`, forwarding
    /// between the `sockets` (client, upstream).
    pub fn new(
        client: SocketAddr,
        listener: SocketAddr,
        sni: &str,
        rule: Option<Arc<str>>,
        sockets: [RawFd; 2],
    ) -> LiveConnection {
        LiveConnection {
            client,
            listener,
            sni: sni.into(),
            rule,
            started: Instant::now(),
            bytes: [AtomicU64::new(0), AtomicU64::new(0)],
            sockets,
        }
    }

    /// The entry of a connection handed over by the relay this one replaced: `moved` bytes
    /// (up, down) so far, started `age` ago.
    pub fn carried_on(mut self, (up, down): (u64, u64), age: std::time::Duration) -> Self {
        self.bytes = [AtomicU64::new(up), AtomicU64::new(down)];
        self.started = self.started.checked_sub(age).unwrap_or(self.started);
        self
    }

    /// The name it was opened for.
    pub fn sni(&self) -> &str {
        &self.sni
    }

    /// `n` more bytes were written: `up` to the upstream, else to the client.
    pub fn moved(&self, up: bool, n: u64) {
        self.bytes[usize::from(!up)].fetch_add(n, Ordering::Relaxed);
    }
}

/// A connection as `GET /connections` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Shown {
    /// The client (the PROXY header's, behind a balancer).
    pub client: SocketAddr,
    /// The listener it came in on.
    pub listener: SocketAddr,
    /// The name it asked for.
    pub sni: String,
    /// The rule that allowed it, as written.
    pub rule: Option<String>,
    /// Seconds since it was forwarded.
    pub age_s: f64,
    /// Bytes to the upstream so far.
    pub bytes_up: u64,
    /// Bytes to the client so far.
    pub bytes_down: u64,
    /// The client leg's TCP health now.
    pub client_leg: Option<TcpInfo>,
    /// The upstream leg's.
    pub upstream_leg: Option<TcpInfo>,
}

/// The registry. `None` inside when nobody can ask (no admin endpoint).
#[derive(Default)]
pub struct Live {
    open: Option<Mutex<HashMap<NonZeroU64, Arc<LiveConnection>>>>,
    next: AtomicU64,
}

/// A connection's place in the registry: eight bytes in its task, not sixteen.
pub type Id = NonZeroU64;

impl Live {
    /// A registry that keeps entries when `on`, and is free when not.
    pub fn new(on: bool) -> Live {
        Live {
            open: on.then(Mutex::default),
            next: AtomicU64::new(0),
        }
    }

    /// Registers a connection made by `make` (called only when the registry is on); its id
    /// and entry, to count bytes in and to [`Live::remove`] before its sockets close.
    pub fn add(&self, make: impl FnOnce() -> LiveConnection) -> Option<(Id, Arc<LiveConnection>)> {
        let open = self.open.as_ref()?;
        let id = Id::new(self.next.fetch_add(1, Ordering::Relaxed) + 1)?;
        let entry = Arc::new(make());
        open.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, entry.clone());
        Some((id, entry))
    }

    /// The connection `id` is ending (or going to the next relay); after this its sockets
    /// may close. Its entry, as it was.
    pub fn remove(&self, id: Id) -> Option<Arc<LiveConnection>> {
        self.open
            .as_ref()?
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id)
    }

    /// How many connections are open, and up to `limit` of them (oldest first), each
    /// leg's TCP health read now. The lock is held while the sockets are read, so none
    /// of them can close meanwhile.
    pub fn list(&self, limit: usize) -> (usize, Vec<Shown>) {
        let Some(open) = &self.open else {
            return (0, Vec::new());
        };
        let open = open.lock().unwrap_or_else(PoisonError::into_inner);
        let mut ids: Vec<Id> = open.keys().copied().collect();
        ids.sort_unstable();
        let shown = ids
            .iter()
            .take(limit.min(MAX_LISTED))
            .filter_map(|id| open.get(id))
            .map(|c| Shown {
                client: c.client,
                listener: c.listener,
                sni: c.sni.to_string(),
                rule: c.rule.as_deref().map(str::to_owned),
                age_s: c.started.elapsed().as_secs_f64(),
                bytes_up: c.bytes[0].load(Ordering::Relaxed),
                bytes_down: c.bytes[1].load(Ordering::Relaxed),
                client_leg: leg(c.sockets[0]),
                upstream_leg: leg(c.sockets[1]),
            })
            .collect();
        (open.len(), shown)
    }
}

#[cfg(target_os = "linux")]
fn leg(socket: RawFd) -> Option<TcpInfo> {
    crate::net::sys::tcp_info_of(socket).ok()
}

#[cfg(not(target_os = "linux"))]
fn leg(_: RawFd) -> Option<TcpInfo> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection(sni: &str) -> LiveConnection {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        LiveConnection::new(addr, addr, sni, None, [-1, -1])
    }

    #[test]
    fn an_off_registry_keeps_nothing_and_never_makes_an_entry() {
        let live = Live::new(false);
        assert!(live.add(|| unreachable!()).is_none());
        assert_eq!(live.list(10), (0, Vec::new()));
    }

    #[test]
    fn entries_are_listed_oldest_first_up_to_the_limit_until_removed() {
        let live = Live::new(true);
        let (first, entry) = live.add(|| connection("a.example.com")).unwrap();
        let (second, _) = live.add(|| connection("b.example.com")).unwrap();
        entry.moved(true, 5);
        entry.moved(false, 7);
        let (total, shown) = live.list(1);
        assert_eq!(total, 2);
        assert_eq!(shown.len(), 1);
        assert_eq!(
            (
                shown[0].sni.as_str(),
                shown[0].bytes_up,
                shown[0].bytes_down
            ),
            ("a.example.com", 5, 7)
        );
        // A closed descriptor has no TCP health: shown without it, not an error.
        assert_eq!(shown[0].client_leg, None);
        live.remove(first);
        let (total, shown) = live.list(10);
        assert_eq!((total, shown[0].sni.as_str()), (1, "b.example.com"));
        live.remove(second);
        assert_eq!(live.list(10).0, 0);
    }
}
