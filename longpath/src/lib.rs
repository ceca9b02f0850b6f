//! An emulated long path, for snirelay's tests and benches: three network namespaces (the
//! client side, the relay, the upstream), and with [`Spec::edge`] a fourth (an edge relay
//! near the clients, which then holds the long path's near end), a user-space delay line
//! between the client side (or the edge) and the relay over two TUN devices (one-way delay, independent loss per direction from
//! a seed, an optional bottleneck rate with a drop-tail queue, optional jitter), and a
//! plain veth link from the relay to the upstream. This kernel has no netem, tbf or fq
//! qdisc; TUN devices and namespaces work. Needs root.
//!
//! Everything it makes is gone when the [`Path`] is dropped, panicking or not; namespaces
//! a killed test process left behind are removed by the next [`Path::start`].

mod line;
mod sys;

pub use line::{Direction, Fate, Schedule, syn_with_data};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The long path's near end: the client side's address, or with an edge, the edge's.
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// With an edge: the clients' address, on a short link to the edge.
pub const CLIENT_NEAR_EDGE: Ipv4Addr = Ipv4Addr::new(10, 76, 0, 1);
/// With an edge: the edge's address towards its clients.
pub const EDGE: Ipv4Addr = Ipv4Addr::new(10, 76, 0, 2);
/// The relay's address on the long path, where clients connect.
pub const RELAY: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// The relay's address towards the upstream.
pub const RELAY_UPSTREAM_SIDE: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);
/// The upstream's address.
pub const UPSTREAM: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 2);

/// A host on the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    /// Where clients run (Beijing).
    Client,
    /// Where an edge relay runs (Beijing, beside the clients), with [`Spec::edge`].
    Edge,
    /// Where the relay runs (London).
    Relay,
    /// Where the upstream runs.
    Upstream,
}

/// The long path's shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spec {
    /// Round-trip time, split evenly between the two directions.
    pub rtt: Duration,
    /// Loss from the client side to the relay.
    pub up_loss: f64,
    /// Loss from the relay to the client side: the direction that loses packets.
    pub down_loss: f64,
    /// Bottleneck rate, both directions, in bits per second.
    pub rate_bps: Option<u64>,
    /// Bottleneck queue, in bytes.
    pub queue_bytes: usize,
    /// Extra delay per packet, up to this, never reordering.
    pub jitter: Duration,
    /// Where the losses come from: the same seed, the same losses.
    pub seed: u64,
    /// A fourth namespace, an edge relay's, between the clients and the long path.
    pub edge: bool,
    /// Drop TCP SYNs that carry data towards the relay, as middleboxes that break TCP Fast
    /// Open do.
    pub drop_syn_data: bool,
}

impl Spec {
    /// `rtt`, nothing lost, no rate limit.
    pub fn new(rtt: Duration) -> Spec {
        Spec {
            rtt,
            up_loss: 0.0,
            down_loss: 0.0,
            rate_bps: None,
            queue_bytes: 1 << 20,
            jitter: Duration::ZERO,
            seed: 1,
            edge: false,
            drop_syn_data: false,
        }
    }

    fn direction(&self, loss: f64) -> Direction {
        Direction {
            delay: self.rtt / 2,
            loss,
            rate_bps: self.rate_bps,
            queue_bytes: self.queue_bytes,
            jitter: self.jitter,
        }
    }
}

/// What a direction did with its packets.
#[derive(Debug, Default)]
pub struct Counts {
    /// Delivered.
    pub delivered: AtomicU64,
    /// Lost by the loss rate.
    pub lost: AtomicU64,
    /// Dropped by a full queue.
    pub dropped: AtomicU64,
}

/// A running path. Dropping it stops the delay line and removes the namespaces.
pub struct Path {
    /// The client side's, the relay's, the upstream's and, with an edge, the edge's.
    names: Vec<String>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Client side to relay.
    pub up: Arc<Counts>,
    /// Relay to client side.
    pub down: Arc<Counts>,
}

/// Runs `ip ARGS`, failing with what it said.
fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if out.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// Removes namespaces that paths of test processes no longer running left behind.
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = name
            .strip_prefix("lp")
            .and_then(|rest| rest.split('x').next())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

impl Path {
    /// Makes the namespaces and links, and starts the delay line.
    pub fn start(spec: Spec) -> io::Result<Path> {
        // /dev/net/tun and `ip netns` need root: say so rather than fail on the way.
        let root = std::fs::read_to_string("/proc/self/status")?
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
        if !root {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the emulated long path needs root (network namespaces and TUN devices)",
            ));
        }
        remove_stale();
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let id = format!(
            "lp{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let hosts: &[&str] = if spec.edge {
            &["c", "r", "u", "e"]
        } else {
            &["c", "r", "u"]
        };
        let names = hosts.iter().map(|host| format!("{id}{host}")).collect();
        let mut path = Path {
            names,
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            up: Arc::default(),
            down: Arc::default(),
        };
        for name in &path.names {
            ip(&["netns", "add", name])?;
            ip(&["-n", name, "link", "set", "lo", "up"])?;
        }
        let (c, r, u) = (
            path.names[0].clone(),
            path.names[1].clone(),
            path.names[2].clone(),
        );
        // The long path's near end: the clients' namespace, or the edge's.
        let near = path.names.get(3).unwrap_or(&c).clone();
        if spec.edge {
            ip(&[
                "link", "add", "lpc", "netns", &c, "type", "veth", "peer", "name", "lpe", "netns",
                &near,
            ])?;
            ip(&[
                "-n",
                &c,
                "addr",
                "add",
                &format!("{CLIENT_NEAR_EDGE}/24"),
                "dev",
                "lpc",
            ])?;
            ip(&[
                "-n",
                &near,
                "addr",
                "add",
                &format!("{EDGE}/24"),
                "dev",
                "lpe",
            ])?;
            ip(&["-n", &c, "link", "set", "lpc", "up"])?;
            ip(&["-n", &near, "link", "set", "lpe", "up"])?;
        }
        let (client_tun, relay_tun) = {
            let (cns, rns) = (sys::namespace(&near)?, sys::namespace(&r)?);
            std::thread::spawn(move || -> io::Result<(File, File)> {
                sys::enter(&cns)?;
                let client = sys::tun("lp0")?;
                sys::enter(&rns)?;
                Ok((client, sys::tun("lp0")?))
            })
            .join()
            .map_err(|_| io::Error::other("the TUN thread panicked"))??
        };
        let (cip, rip) = (CLIENT.to_string(), RELAY.to_string());
        ip(&["-n", &near, "addr", "add", &cip, "peer", &rip, "dev", "lp0"])?;
        ip(&["-n", &r, "addr", "add", &rip, "peer", &cip, "dev", "lp0"])?;
        for ns in [&near, &r] {
            ip(&["-n", ns, "link", "set", "lp0", "up"])?;
        }
        ip(&[
            "link", "add", "lpr", "netns", &r, "type", "veth", "peer", "name", "lpu", "netns", &u,
        ])?;
        ip(&[
            "-n",
            &r,
            "addr",
            "add",
            &format!("{RELAY_UPSTREAM_SIDE}/24"),
            "dev",
            "lpr",
        ])?;
        ip(&[
            "-n",
            &u,
            "addr",
            "add",
            &format!("{UPSTREAM}/24"),
            "dev",
            "lpu",
        ])?;
        ip(&["-n", &r, "link", "set", "lpr", "up"])?;
        ip(&["-n", &u, "link", "set", "lpu", "up"])?;
        let seeds = [spec.seed, spec.seed.rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15];
        let up = Schedule::new(spec.direction(spec.up_loss), seeds[0]);
        let down = Schedule::new(spec.direction(spec.down_loss), seeds[1]);
        let (client_in, relay_in) = (client_tun.try_clone()?, relay_tun.try_clone()?);
        path.threads.extend(path.carry(
            client_in,
            relay_tun,
            up,
            path.up.clone(),
            spec.drop_syn_data,
        ));
        path.threads
            .extend(path.carry(relay_in, client_tun, down, path.down.clone(), false));
        Ok(path)
    }

    /// Starts one direction: a reader that decides each packet's fate, and a writer that
    /// delivers it on time, both real-time threads.
    fn carry(
        &self,
        mut from: File,
        mut to: File,
        mut schedule: Schedule,
        counts: Arc<Counts>,
        drop_syn_data: bool,
    ) -> [JoinHandle<()>; 2] {
        let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
        let stop = self.stop.clone();
        let counts_out = counts.clone();
        let reader = std::thread::spawn(move || {
            let _ = sys::real_time();
            let mut buf = vec![0u8; 65536];
            while !stop.load(Ordering::Relaxed) {
                if !sys::readable(&from, Duration::from_millis(50)).unwrap_or(false) {
                    continue;
                }
                let Ok(n) = from.read(&mut buf) else { return };
                if drop_syn_data && syn_with_data(&buf[..n]) {
                    counts.lost.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                match schedule.admit(Instant::now(), n) {
                    Fate::Deliver(due) => {
                        if tx.send((due, buf[..n].to_vec())).is_err() {
                            return;
                        }
                    }
                    Fate::Lost => {
                        counts.lost.fetch_add(1, Ordering::Relaxed);
                    }
                    Fate::Dropped => {
                        counts.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        let stop = self.stop.clone();
        let writer = std::thread::spawn(move || {
            let _ = sys::real_time();
            while !stop.load(Ordering::Relaxed) {
                let Ok((due, packet)) = rx.recv_timeout(Duration::from_millis(50)) else {
                    continue;
                };
                let wait = due.saturating_duration_since(Instant::now());
                if !wait.is_zero() {
                    std::thread::sleep(wait);
                }
                if to.write(&packet).is_ok() {
                    counts_out.delivered.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        [reader, writer]
    }

    /// The namespace of `host`; an edge's only where the path has one.
    pub fn namespace(&self, host: Host) -> &str {
        let index = match host {
            Host::Client => 0,
            Host::Relay => 1,
            Host::Upstream => 2,
            Host::Edge => 3,
        };
        self.names.get(index).map_or("", String::as_str)
    }

    /// Runs `work` on a thread inside `host`'s namespace: sockets it makes live there.
    pub fn run<T: Send>(&self, host: Host, work: impl FnOnce() -> T + Send) -> io::Result<T> {
        if self.namespace(host).is_empty() {
            return Err(io::Error::other("this path has no edge (Spec::edge)"));
        }
        let ns = sys::namespace(self.namespace(host))?;
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    sys::enter(&ns)?;
                    Ok(work())
                })
                .join()
                .map_err(|_| io::Error::other("work in the namespace panicked"))?
        })
    }

    /// Sets a sysctl (`name=value`) in `host`'s namespace, as `sysctl -w` would: the
    /// per-namespace ones (congestion control, TCP Fast Open) apply to that host only.
    pub fn sysctl(&self, host: Host, setting: &str) -> io::Result<()> {
        let out = self
            .command(host, "sysctl")
            .args(["-qw", setting])
            .output()?;
        if out.status.success() {
            return Ok(());
        }
        Err(io::Error::other(format!(
            "sysctl -w {setting}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }

    /// A command that runs `program` inside `host`'s namespace.
    pub fn command(&self, host: Host, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", self.namespace(host)])
            .arg(program);
        command
    }
}

impl Drop for Path {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        for name in &self.names {
            // Processes still inside are killed, so nothing outlives the path.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            }
            let _ = ip(&["netns", "del", name]);
        }
    }
}
