//! Whether an address is one of this host's own, remembered for a few seconds.
//!
//! The destination policy asks for every address DNS gives on the port of a wildcard
//! listener: in production that is 443, the port of every upstream too. The answer comes
//! from a bind test (binding succeeds only to a local address), always current, unlike a
//! list of interfaces read at start-up; remembered, a busy name costs one test per address
//! every few seconds instead of a socket, a bind and a close per address per connection.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long an answer is trusted: an address added to or removed from an interface is
/// noticed within this.
pub const FRESH: Duration = Duration::from_secs(5);

/// Most addresses remembered; past this, stale answers go, then all of them.
const ENTRIES: usize = 4096;

/// Remembered answers of `probe`.
pub struct LocalAddresses<P = fn(IpAddr) -> bool> {
    probe: P,
    memo: Mutex<HashMap<IpAddr, (bool, Instant)>>,
}

impl Default for LocalAddresses {
    fn default() -> Self {
        Self::with_probe(bind_test)
    }
}

impl<P: Fn(IpAddr) -> bool> LocalAddresses<P> {
    /// Remembers what `probe` says.
    pub fn with_probe(probe: P) -> Self {
        LocalAddresses {
            probe,
            memo: Mutex::default(),
        }
    }

    /// Whether `ip` is this host's, asking the probe only when no answer from the last
    /// [`FRESH`] before `now` is remembered.
    pub fn is_local(&self, ip: IpAddr, now: Instant) -> bool {
        let memo = || self.memo.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(&(local, asked)) = memo().get(&ip)
            && now.saturating_duration_since(asked) < FRESH
        {
            return local;
        }
        // Not under the lock: the probe is a system call or three.
        let local = (self.probe)(ip);
        let mut memo = memo();
        if memo.len() >= ENTRIES {
            memo.retain(|_, (_, asked)| now.saturating_duration_since(*asked) < FRESH);
            if memo.len() >= ENTRIES {
                memo.clear();
            }
        }
        memo.insert(ip, (local, now));
        local
    }
}

/// Binding to `ip` succeeds only if it is one of this host's addresses.
fn bind_test(ip: IpAddr) -> bool {
    UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn the_bind_test_knows_loopback_from_a_documentation_address() {
        assert!(bind_test("127.0.0.1".parse().unwrap()));
        assert!(!bind_test("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn an_answer_is_asked_once_per_address_while_fresh() {
        let asked = AtomicUsize::new(0);
        let local = LocalAddresses::with_probe(|ip: IpAddr| {
            asked.fetch_add(1, Ordering::SeqCst);
            ip.is_loopback()
        });
        let (a, b): (IpAddr, IpAddr) = ("142.250.180.10".parse().unwrap(), "::1".parse().unwrap());
        let start = Instant::now();
        for step in 0..100 {
            let now = start + FRESH / 200 * step;
            assert!(!local.is_local(a, now));
            assert!(local.is_local(b, now));
        }
        assert_eq!(asked.load(Ordering::SeqCst), 2, "one probe per address");
        assert!(!local.is_local(a, start + FRESH));
        assert_eq!(asked.load(Ordering::SeqCst), 3, "asked again once stale");
    }

    #[test]
    fn the_memo_stays_bounded() {
        let local = LocalAddresses::with_probe(|_| false);
        let now = Instant::now();
        for i in 0..(ENTRIES as u32 * 3) {
            local.is_local(IpAddr::from(i.to_be_bytes()), now);
        }
        assert!(local.memo.lock().unwrap().len() <= ENTRIES);
    }
}
