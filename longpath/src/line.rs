//! One direction of the delay line, as a schedule: for each packet that arrives, whether it
//! is lost, dropped by a full queue, or when it leaves. Pure: time is passed in.

use std::time::{Duration, Instant};

/// How one direction treats its packets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Direction {
    /// One-way delay.
    pub delay: Duration,
    /// Chance each packet is lost, independently (0 to 1).
    pub loss: f64,
    /// Bottleneck rate in bits per second; `None` for no limit.
    pub rate_bps: Option<u64>,
    /// Bytes the bottleneck queue holds before it drops what arrives (drop-tail).
    pub queue_bytes: usize,
    /// Extra delay, uniform in `0..=jitter`, that never reorders packets.
    pub jitter: Duration,
}

/// What becomes of one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Delivered at this time.
    Deliver(Instant),
    /// Lost on the way (the loss rate).
    Lost,
    /// The queue was full.
    Dropped,
}

/// A direction's state: its random numbers, and when the bottleneck is next free.
pub struct Schedule {
    direction: Direction,
    rng: u64,
    busy_until: Option<Instant>,
    last_due: Option<Instant>,
}

impl Schedule {
    /// A schedule whose random numbers come from `seed` (the same seed, the same losses).
    pub fn new(direction: Direction, seed: u64) -> Schedule {
        Schedule {
            direction,
            rng: seed | 1,
            busy_until: None,
            last_due: None,
        }
    }

    /// A number in `0..1` (xorshift64*).
    fn uniform(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The fate of a packet of `len` bytes arriving at `now`.
    pub fn admit(&mut self, now: Instant, len: usize) -> Fate {
        let d = self.direction;
        if d.loss > 0.0 && self.uniform() < d.loss {
            return Fate::Lost;
        }
        let mut leaves = now;
        if let Some(rate) = d.rate_bps {
            let start = self.busy_until.map_or(now, |busy| busy.max(now));
            let queued = (start - now).as_secs_f64() * rate as f64 / 8.0;
            if queued as usize + len > d.queue_bytes {
                return Fate::Dropped;
            }
            leaves = start + Duration::from_secs_f64(len as f64 * 8.0 / rate as f64);
            self.busy_until = Some(leaves);
        }
        let jitter = if d.jitter.is_zero() {
            Duration::ZERO
        } else {
            d.jitter.mul_f64(self.uniform())
        };
        let due = (leaves + d.delay + jitter).max(self.last_due.unwrap_or(now));
        self.last_due = Some(due);
        Fate::Deliver(due)
    }
}

/// Whether `packet` (an IPv4 packet as a TUN device carries it) is a TCP SYN carrying
/// data: what a middlebox that breaks TCP Fast Open drops. Pure.
pub fn syn_with_data(packet: &[u8]) -> bool {
    let Some(&first) = packet.first() else {
        return false;
    };
    let header = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || packet.len() < header + 20 || packet[9] != 6 {
        return false;
    }
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]])).min(packet.len());
    let tcp = &packet[header..];
    let offset = usize::from(tcp[12] >> 4) * 4;
    let syn = tcp[13] & 0x02 != 0;
    syn && total > header + offset
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 TCP packet with `flags` and `payload` bytes after a 20-byte TCP header.
    fn tcp_packet(flags: u8, payload: usize) -> Vec<u8> {
        let total = 20 + 20 + payload;
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[9] = 6;
        p[20 + 12] = 5 << 4;
        p[20 + 13] = flags;
        p
    }

    #[test]
    fn only_a_syn_with_data_is_one() {
        assert!(syn_with_data(&tcp_packet(0x02, 300)));
        assert!(!syn_with_data(&tcp_packet(0x02, 0)), "a plain SYN");
        assert!(!syn_with_data(&tcp_packet(0x12, 0)), "a SYN-ACK");
        assert!(!syn_with_data(&tcp_packet(0x18, 300)), "data");
        let mut udp = tcp_packet(0x02, 300);
        udp[9] = 17;
        assert!(!syn_with_data(&udp));
        assert!(!syn_with_data(&[0x45, 0, 0]), "cut short");
        assert!(!syn_with_data(&[]));
    }

    fn direction() -> Direction {
        Direction {
            delay: Duration::from_millis(90),
            loss: 0.0,
            rate_bps: None,
            queue_bytes: 64 * 1024,
            jitter: Duration::ZERO,
        }
    }

    #[test]
    fn without_limits_every_packet_arrives_after_the_delay() {
        let mut line = Schedule::new(direction(), 7);
        let now = Instant::now();
        assert_eq!(
            line.admit(now, 1500),
            Fate::Deliver(now + Duration::from_millis(90))
        );
    }

    #[test]
    fn losses_follow_the_rate_and_the_seed() {
        let lossy = Direction {
            loss: 0.05,
            ..direction()
        };
        let now = Instant::now();
        let fates = |seed| {
            let mut line = Schedule::new(lossy, seed);
            (0..20_000)
                .map(|_| line.admit(now, 100) == Fate::Lost)
                .collect::<Vec<_>>()
        };
        let lost = fates(1).iter().filter(|&&l| l).count();
        // 5% of 20,000 is 1,000; the standard deviation is about 31.
        assert!((880..=1120).contains(&lost), "{lost}");
        assert_eq!(fates(1), fates(1));
        assert_ne!(fates(1), fates(2));
    }

    #[test]
    fn a_rate_spaces_packets_and_a_full_queue_drops() {
        let limited = Direction {
            rate_bps: Some(8_000_000),
            queue_bytes: 3000,
            ..direction()
        };
        let mut line = Schedule::new(limited, 1);
        let now = Instant::now();
        // 1,000 bytes at 8 Mbit/s take 1 ms.
        let first = line.admit(now, 1000);
        let second = line.admit(now, 1000);
        assert_eq!(first, Fate::Deliver(now + Duration::from_millis(91)));
        assert_eq!(second, Fate::Deliver(now + Duration::from_millis(92)));
        assert!(matches!(line.admit(now, 1000), Fate::Deliver(_)));
        // 3,000 bytes queued: the next one does not fit.
        assert_eq!(line.admit(now, 1000), Fate::Dropped);
        // Once the queue drains, packets pass again.
        let later = now + Duration::from_millis(3);
        assert!(matches!(line.admit(later, 1000), Fate::Deliver(_)));
    }

    #[test]
    fn jitter_never_reorders() {
        let jittery = Direction {
            jitter: Duration::from_millis(20),
            ..direction()
        };
        let mut line = Schedule::new(jittery, 3);
        let start = Instant::now();
        let mut last = start;
        for i in 0..1000 {
            let Fate::Deliver(due) = line.admit(start + Duration::from_micros(i * 100), 100) else {
                panic!()
            };
            assert!(due >= last);
            last = due;
        }
    }
}
