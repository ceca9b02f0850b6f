//! Side-by-side benchmark: snirelay, nginx (stream + ssl_preread) and HAProxy (req.ssl_sni)
//! against no relay at all, on loopback, interleaved round by round.
//!
//! `cargo bench --bench relay -- [--rounds 3] [--mib 1024] [--chunk-kib 1024] [--conns 5000]
//! [--idle 2000,7500] [--only snirelay] [--snirelay PATH]... [--exchange-s 5] [--no-dns]`
//!
//! `--snirelay` runs another build (say, the previous commit's) in place of this one; given
//! twice or more, every build runs, interleaved with the others round by round, in columns
//! `snirelay`, `snirelay 2`, ..., each also as a multiple of the first.
//! `--chunk-kib` is the size of the upstream's writes in a download.
//!
//! The DNS path: with dnsmasq installed, each relay also runs a second time resolving the
//! name through dnsmasq on loopback (answers with a 300 s TTL, as public resolvers give
//! about), the way production runs: snirelay with `resolver.nameservers`, nginx with
//! `resolver` and `proxy_pass $ssl_preread_server_name:PORT`, HAProxy with `do-resolve`.
//! Those columns (`... dns`) run the connection test only.
//!
//! Each connection starts with a real ClientHello (the captured Chromium one, 1964 bytes,
//! post-quantum sized; the connection test runs again with curl's, 517 bytes), then a
//! 9-byte command the upstream obeys: `D n` send n bytes,
//! `U n` receive n bytes, `R` answer 1 KiB, `I` hold the connection, `X q,k` answer each
//! q-byte request with k bytes (request/response exchanges on a persistent connection, the
//! traffic of HTTP/2 and gRPC API calls). Relay CPU time comes
//! from /proc (utime + stime of the relay's processes), the least noisy figure here, and is
//! also shown split into user space and kernel.
//!
//! System calls: after the timed rounds, each relay gets one short pass of the connection
//! test and one of the exchange test under `strace -c -f` (attached to every thread of the
//! relay's processes, so slower then: never timed), counted per connection and per
//! exchange, in all and by kind. `--no-strace` leaves it out.

#[path = "../tests/common/dnsmasq.rs"]
mod dnsmasq;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const NAME: &str = "translate.googleapis.com";
/// The large (post-quantum) hello, and a small one for the connection test's second pass.
const HELLO: &[u8] = include_bytes!("../tests/fixtures/hellos/real_chromium.bin");
const SMALL_HELLO: &[u8] = include_bytes!("../tests/fixtures/hellos/real_curl_http2.bin");
/// The client's read and write size, and the smallest upstream buffer.
const CHUNK: usize = 256 * 1024;

struct Options {
    only: Option<String>,
    /// The snirelay builds, each a column.
    binaries: Vec<String>,
    rounds: usize,
    mib: u64,
    conns: usize,
    idle: Vec<usize>,
    exchange_s: u64,
    chunk: usize,
    dns: bool,
    strace: bool,
}

fn options() -> Options {
    let mut o = Options {
        only: None,
        binaries: vec![env!("CARGO_BIN_EXE_snirelay").to_owned()],
        rounds: 3,
        mib: 1024,
        conns: 5000,
        idle: vec![2000],
        exchange_s: 5,
        chunk: 1024 * 1024,
        dns: true,
        strace: true,
    };
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
    };
    o.rounds = value("--rounds").unwrap_or(o.rounds);
    let text = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    o.only = text("--only");
    let builds: Vec<String> = args
        .windows(2)
        .filter(|pair| pair[0] == "--snirelay")
        .map(|pair| pair[1].clone())
        .collect();
    if !builds.is_empty() {
        o.binaries = builds;
    }
    o.mib = value("--mib").unwrap_or(o.mib as usize) as u64;
    o.conns = value("--conns").unwrap_or(o.conns);
    o.exchange_s = value("--exchange-s").map_or(o.exchange_s, |s: usize| s as u64);
    o.chunk = value("--chunk-kib").map_or(o.chunk, |k: usize| k * 1024);
    o.dns = !args.iter().any(|a| a == "--no-dns");
    o.strace = !args.iter().any(|a| a == "--no-strace");
    if let Some(list) = text("--idle") {
        o.idle = list.split(',').filter_map(|n| n.parse().ok()).collect();
    }
    o
}

/// The upstream every target forwards to, writing downloads `chunk` bytes at a time;
/// `held` counts connections in `I` mode.
async fn upstream(held: Arc<AtomicUsize>, chunk: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let held = held.clone();
            tokio::spawn(async move {
                let _ = conn.set_nodelay(true);
                // The hello is one TLS record: its header says how long it is.
                let mut head = vec![0u8; 5];
                if conn.read_exact(&mut head).await.is_err() {
                    return;
                }
                let record = usize::from(u16::from_be_bytes([head[3], head[4]]));
                head.resize(5 + record + 9, 0);
                if conn.read_exact(&mut head[5..]).await.is_err() {
                    return;
                }
                let n = u64::from_be_bytes(head[5 + record + 1..].try_into().unwrap());
                let mut buf = vec![0u8; chunk.max(CHUNK)];
                match head[5 + record] {
                    b'D' => {
                        let mut left = n;
                        while left > 0 {
                            let k = left.min(chunk as u64) as usize;
                            if conn.write_all(&buf[..k]).await.is_err() {
                                return;
                            }
                            left -= k as u64;
                        }
                        let _ = conn.shutdown().await;
                        let _ = conn.read(&mut buf).await;
                    }
                    b'U' => {
                        let mut got = 0u64;
                        while got < n {
                            match conn.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(k) => got += k as u64,
                            }
                        }
                        let _ = conn.write_all(&got.to_be_bytes()).await;
                    }
                    b'R' => {
                        let _ = conn.write_all(&buf[..1024]).await;
                    }
                    b'X' => {
                        let (q, k) = ((n >> 32) as usize, (n & 0xffff_ffff) as usize);
                        while conn.read_exact(&mut buf[..q]).await.is_ok() {
                            if conn.write_all(&buf[..k]).await.is_err() {
                                return;
                            }
                        }
                    }
                    _ => {
                        held.fetch_add(1, Ordering::SeqCst);
                        let _ = conn.read(&mut buf).await;
                        held.fetch_sub(1, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    addr
}

fn command(hello: &[u8], op: u8, n: u64) -> Vec<u8> {
    let mut bytes = hello.to_vec();
    bytes.push(op);
    bytes.extend_from_slice(&n.to_be_bytes());
    bytes
}

async fn open(at: SocketAddr, op: u8, n: u64) -> TcpStream {
    open_with(at, HELLO, op, n).await
}

async fn open_with(at: SocketAddr, hello: &[u8], op: u8, n: u64) -> TcpStream {
    let mut conn = TcpStream::connect(at).await.expect("connect");
    conn.set_nodelay(true).unwrap();
    conn.write_all(&command(hello, op, n)).await.unwrap();
    conn
}

/// Bytes per second for `streams` parallel transfers of `total` bytes in all.
async fn throughput(at: SocketAddr, streams: u64, total: u64, download: bool) -> f64 {
    let each = total / streams;
    let started = Instant::now();
    let tasks: Vec<_> = (0..streams)
        .map(|_| {
            tokio::spawn(async move {
                let mut buf = vec![0u8; CHUNK];
                if download {
                    let mut conn = open(at, b'D', each).await;
                    let mut got = 0u64;
                    loop {
                        match conn.read(&mut buf).await.unwrap() {
                            0 => break,
                            k => got += k as u64,
                        }
                    }
                    assert_eq!(got, each, "download lost bytes");
                } else {
                    let mut conn = open(at, b'U', each).await;
                    let mut left = each;
                    while left > 0 {
                        let k = left.min(CHUNK as u64) as usize;
                        conn.write_all(&buf[..k]).await.unwrap();
                        left -= k as u64;
                    }
                    let mut ack = [0u8; 8];
                    conn.read_exact(&mut ack).await.unwrap();
                    assert_eq!(u64::from_be_bytes(ack), each, "upload lost bytes");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// Connections per second at concurrency 32, and latency percentiles (connect to last byte).
async fn connection_rate(
    at: SocketAddr,
    total: usize,
    hello: &'static [u8],
) -> (f64, Vec<Duration>) {
    let workers = 32;
    let started = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                for _ in (w..total).step_by(workers) {
                    let t = Instant::now();
                    let mut conn = open_with(at, hello, b'R', 0).await;
                    let mut reply = Vec::with_capacity(1024);
                    conn.read_to_end(&mut reply).await.unwrap();
                    assert_eq!(reply.len(), 1024);
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::with_capacity(total);
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    all.sort();
    (rate, all)
}

/// Request/response exchanges: `conns` persistent connections, each sending a `q`-byte
/// request and reading the `k`-byte response, one outstanding at a time, for `seconds`.
/// Returns how many were made and their latencies, sorted.
async fn exchanges(
    at: SocketAddr,
    conns: usize,
    q: usize,
    k: usize,
    seconds: u64,
) -> (usize, Vec<Duration>) {
    let end = Instant::now() + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            tokio::spawn(async move {
                let mut conn = open(at, b'X', ((q as u64) << 32) | k as u64).await;
                let request = vec![7u8; q];
                let mut response = vec![0u8; k];
                let mut latencies = Vec::new();
                while Instant::now() < end {
                    let t = Instant::now();
                    conn.write_all(&request).await.unwrap();
                    conn.read_exact(&mut response).await.unwrap();
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    (all.len(), all)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3
}

/// The relay's processes: a pid and its children (nginx workers).
fn family(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        if after.split(' ').nth(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid) {
            pids.push(child);
        }
    }
    pids
}

/// utime and stime of the relay's processes, in milliseconds.
fn cpu_ms(pid: Option<u32>) -> (f64, f64) {
    let Some(pid) = pid else { return (0.0, 0.0) };
    let (user, system) = family(pid)
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .map(|stat| {
            let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
            (f[11].parse::<u64>().unwrap(), f[12].parse::<u64>().unwrap())
        })
        .fold((0, 0), |(u, s), (du, ds)| (u + du, s + ds));
    let ms = 1000.0 / clock_ticks();
    (user as f64 * ms, system as f64 * ms)
}

fn total_ms((user, system): (f64, f64)) -> f64 {
    user + system
}

fn clock_ticks() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(100.0)
}

fn rss_bytes(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else { return 0.0 };
    family(pid)
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(str::to_owned)
        })
        .map(|l| l.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() * 1024.0)
        .sum()
}

fn unreclaimable_slab() -> f64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = meminfo
        .lines()
        .find(|l| l.starts_with("SUnreclaim:"))
        .unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<f64>()
        .unwrap()
        * 1024.0
}

/// (RSS bytes, kernel slab bytes) added per idle forwarded connection.
async fn idle_cost(at: SocketAddr, pid: Option<u32>, held: &AtomicUsize, n: usize) -> (f64, f64) {
    let (rss0, slab0) = (rss_bytes(pid), unreclaimable_slab());
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(open(at, b'I', 0).await);
    }
    while held.load(Ordering::SeqCst) < n {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (rss1, slab1) = (rss_bytes(pid), unreclaimable_slab());
    drop(conns);
    while held.load(Ordering::SeqCst) > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ((rss1 - rss0) / n as f64, (slab1 - slab0) / n as f64)
}

struct Target {
    /// The relay's column, and whether this instance resolves the name through DNS.
    name: String,
    dns: bool,
    addr: SocketAddr,
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            // SIGTERM, not SIGKILL: nginx's master stops its workers only when asked; killed,
            // it leaves them running (and using CPU) after the bench.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls until something accepts on `addr` (a process we started has no readiness signal).
async fn wait_listening(addr: SocketAddr) -> bool {
    for _ in 0..500 {
        if TcpStream::connect(addr).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// dnsmasq on loopback answering NAME with 127.0.0.1 (TTL 300 s), or `None` without it.
async fn dns_server() -> Option<(Child, SocketAddr)> {
    let port = free_port();
    let child = dnsmasq::dnsmasq("127.0.0.1", port)
        .args(["--conf-file=/dev/null", "--pid-file=", "--local-ttl=300"])
        // The name is local: an A record, and for AAAA an empty answer, not REFUSED
        // (which nginx's resolver takes as failure).
        .arg(format!("--host-record={NAME},127.0.0.1"))
        .arg(format!("--local=/{NAME}/"))
        .spawn()
        .ok()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // dnsmasq says nothing when it is ready: ask until it answers.
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut query = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in NAME.split('.') {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    for _ in 0..100 {
        let _ = socket.send_to(&query, addr);
        if socket.recv(&mut [0u8; 512]).is_ok() {
            return Some((child, addr));
        }
    }
    panic!("dnsmasq did not answer on {addr}");
}

async fn start(
    name: &str,
    upstream: SocketAddr,
    binaries: &[String],
    dns: Option<SocketAddr>,
) -> Option<Target> {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let up_port = upstream.port();
    let mut cmd = match kind(name) {
        "snirelay" => {
            let destination = match dns {
                None => format!(r#"{{"name": "{NAME}", "upstream": "{upstream}"}}"#),
                Some(server) => format!(
                    r#""{NAME}"], "upstream_port": {up_port}, "resolver": {{"nameservers": ["{server}"]}},
                    "private_destinations": ["127.0.0.0/8""#
                ),
            };
            let config = format!(
                r#"{{"allow": [{destination}], "max_connections": 200000,
                "max_connections_per_client": 200000, "max_pending_hellos": 200000}}"#
            );
            std::fs::write(dir.path().join("rules.json"), config).unwrap();
            let mut cmd = Command::new(&binaries[build(name)]);
            cmd.args(["run", "--listen", &addr.to_string(), "--config"])
                .arg(dir.path().join("rules.json"));
            cmd.env("RUST_LOG", "warn");
            cmd
        }
        "nginx" => {
            let module = "/usr/lib/nginx/modules/ngx_stream_module.so";
            if !std::path::Path::new("/usr/sbin/nginx").exists()
                || !std::path::Path::new(module).exists()
            {
                return None;
            }
            let d = dir.path().display();
            let (resolver, target) = match dns {
                None => (String::new(), upstream.to_string()),
                Some(server) => (
                    format!("resolver {server} valid=300s;\n"),
                    format!("$ssl_preread_server_name:{up_port}"),
                ),
            };
            let config = format!(
                "load_module {module};\nworker_processes {cores};\ndaemon off;\n\
                 pid {d}/nginx.pid;\nerror_log {d}/error.log error;\nevents {{ worker_connections 100000; }}\n\
                 stream {{\n  {resolver}  map $ssl_preread_server_name $up {{ {NAME} {target}; default 127.0.0.1:1; }}\n\
                 server {{ listen {addr} reuseport; ssl_preread on; proxy_pass $up; }}\n}}\n"
            );
            std::fs::write(dir.path().join("nginx.conf"), config).unwrap();
            let mut cmd = Command::new("/usr/sbin/nginx");
            cmd.arg("-c")
                .arg(dir.path().join("nginx.conf"))
                .arg("-e")
                .arg(dir.path().join("error.log"));
            cmd
        }
        "haproxy" => {
            if !std::path::Path::new("/usr/sbin/haproxy").exists() {
                return None;
            }
            let routing = match dns {
                None => format!(
                    "  tcp-request content accept if {{ req.ssl_hello_type 1 }}\n\
                     use_backend be if {{ req.ssl_sni -i {NAME} }}\n\
                     backend be\n  server s1 {upstream}\n"
                ),
                // HAProxy resolves per connection with do-resolve (cached for `hold valid`)
                // and sends the connection to the address it found.
                Some(server) => format!(
                    "  tcp-request content do-resolve(txn.dstip,dns,ipv4) req.ssl_sni,lower if {{ req.ssl_sni -i {NAME} }}\n\
                     tcp-request content reject unless {{ var(txn.dstip) -m found }}\n\
                     tcp-request content set-dst var(txn.dstip)\n\
                     default_backend be\n\
                     backend be\n  server s1 0.0.0.0:{up_port}\n\
                     resolvers dns\n  nameserver d1 {server}\n  hold valid 300s\n"
                ),
            };
            let config = format!(
                "global\n  nbthread {cores}\n  maxconn 7800\n\
                 defaults\n  mode tcp\n  option splice-auto\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n\
                 frontend fe\n  bind {addr}\n  tcp-request inspect-delay 5s\n{routing}"
            );
            std::fs::write(dir.path().join("haproxy.cfg"), config).unwrap();
            let mut cmd = Command::new("/usr/sbin/haproxy");
            cmd.arg("-db").arg("-f").arg(dir.path().join("haproxy.cfg"));
            cmd
        }
        _ => {
            return Some(Target {
                name: name.to_owned(),
                dns: false,
                addr: upstream,
                child: None,
                _dir: None,
            });
        }
    };
    let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .ok()?;
    let target = Target {
        name: name.to_owned(),
        dns: dns.is_some(),
        addr,
        child: Some(child),
        _dir: Some(dir),
    };
    if !wait_listening(addr).await {
        let said = std::fs::read_to_string(target._dir.as_ref().unwrap().path().join("stderr.log"))
            .unwrap_or_default();
        panic!("{name} did not start listening on {addr}: {said}");
    }
    Some(target)
}

type Figures = BTreeMap<String, Vec<f64>>;

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Whether more of a figure is better (rates, throughput) rather than less (costs, latency).
fn higher_is_better(key: &str) -> bool {
    key.contains("/s")
}

/// The columns, in order: no relay, each snirelay build, the peers.
fn relays(builds: usize) -> Vec<String> {
    let mut names = vec!["no relay".to_owned(), "snirelay".to_owned()];
    names.extend((2..=builds).map(|i| format!("snirelay {i}")));
    names.extend(["nginx", "haproxy"].map(String::from));
    names
}

/// What runs in a column: `snirelay 2` is a snirelay.
fn kind(name: &str) -> &str {
    if name.starts_with("snirelay") {
        "snirelay"
    } else {
        name
    }
}

/// Which `--snirelay` build a snirelay column runs, from 0.
fn build(name: &str) -> usize {
    name.strip_prefix("snirelay ")
        .and_then(|i| i.parse::<usize>().ok())
        .map_or(0, |i| i - 1)
}
/// Prefix of the figures measured with the name resolved through DNS.
const DNS: &str = "DNS path: ";

/// The connection test: figures pushed under `prefix`.
async fn connection_figures(
    at: SocketAddr,
    pid: Option<u32>,
    n: usize,
    hello: &'static [u8],
    prefix: &str,
    push: &mut impl FnMut(String, f64),
) {
    let (user, system) = cpu_ms(pid);
    let (rate, lat) = connection_rate(at, n, hello).await;
    let (user_after, system_after) = cpu_ms(pid);
    let thousands = n as f64 / 1000.0;
    push(
        format!("{prefix}relay CPU ms per 1,000 conns"),
        (user_after + system_after - user - system) / thousands,
    );
    // The kernel's part is mostly TCP on loopback, which every relay pays alike; the user
    // part is each relay's own work.
    push(
        format!("{prefix}relay CPU ms per 1,000 conns, kernel part"),
        (system_after - system) / thousands,
    );
    push(
        format!("{prefix}relay CPU ms per 1,000 conns, user part"),
        (user_after - user) / thousands,
    );
    push(format!("{prefix}conn/s at c=32"), rate);
    push(format!("{prefix}latency p50 ms"), percentile(&lat, 0.5));
    push(format!("{prefix}latency p90 ms"), percentile(&lat, 0.9));
    push(format!("{prefix}latency p99 ms"), percentile(&lat, 0.99));
}

/// Prefix of the connection test's figures with the small hello.
const SMALL: &str = "small hello: ";
/// Prefixes of the system call counts.
const CALLS_PER_CONN: &str = "syscalls per conn: ";
const CALLS_PER_EXCHANGE: &str = "syscalls per exchange: ";

/// Runs `pass` with `strace -c -f` attached to every thread of the relay's processes and
/// returns what it counted, by system call (and `total`). Waits for strace to be attached
/// to every thread before the pass starts, and for its summary after.
async fn syscalls<F: Future<Output = ()>>(pid: u32, pass: F) -> BTreeMap<String, f64> {
    let out = tempfile::NamedTempFile::new().unwrap();
    let pids = family(pid);
    let mut strace = Command::new("strace");
    strace.args(["-c", "-f", "-o"]).arg(out.path());
    for p in &pids {
        strace.arg("-p").arg(p.to_string());
    }
    let mut child = strace
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect(
            "strace (Debian package strace) for the system call counts; --no-strace skips them",
        );
    let threads = || {
        pids.iter()
            .flat_map(|p| {
                std::fs::read_dir(format!("/proc/{p}/task"))
                    .unwrap()
                    .flatten()
            })
            .map(|task| task.path().join("status"))
            .collect::<Vec<_>>()
    };
    let traced = |status: &std::path::PathBuf| {
        std::fs::read_to_string(status).is_ok_and(|s| {
            s.lines()
                .any(|l| l.starts_with("TracerPid:") && l.split_whitespace().nth(1) != Some("0"))
        })
    };
    while !threads().iter().all(traced) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    pass.await;
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    child.wait().unwrap();
    let summary = std::fs::read_to_string(out.path()).unwrap();
    summary
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let calls = f.get(3)?.parse::<f64>().ok()?;
            Some((f.last()?.to_string(), calls))
        })
        .collect()
}

/// The system call passes: `n` connections, then exchanges for a second.
async fn syscall_figures(at: SocketAddr, pid: u32, n: usize, push: &mut impl FnMut(String, f64)) {
    let counted = syscalls(pid, async {
        connection_rate(at, n, HELLO).await;
    })
    .await;
    for (call, count) in counted {
        push(format!("{CALLS_PER_CONN}{call}"), count / n as f64);
    }
    let made = Arc::new(AtomicUsize::new(0));
    let counted = syscalls(pid, {
        let made = made.clone();
        async move {
            let (count, _) = exchanges(at, 32, 256, 1024, 1).await;
            made.store(count, Ordering::SeqCst);
        }
    })
    .await;
    let made = made.load(Ordering::SeqCst).max(1) as f64;
    for (call, count) in counted {
        push(format!("{CALLS_PER_EXCHANGE}{call}"), count / made);
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let o = options();
    let total = o.mib << 20;
    let dns_server = if o.dns { dns_server().await } else { None };
    let resolver = dns_server.as_ref().map(|(_, addr)| *addr);
    if o.dns && resolver.is_none() {
        eprintln!("dnsmasq: not installed, DNS path skipped");
    }
    let mut targets = Vec::new();
    let mut holds = Vec::new();
    let relays = relays(o.binaries.len());
    let chosen =
        |name: &str| name == "no relay" || o.only.as_deref().is_none_or(|only| kind(name) == only);
    let plan = relays.iter().map(|name| (name, None)).chain(
        relays[1..]
            .iter()
            .filter_map(|name| resolver.map(|dns| (name, Some(dns)))),
    );
    for (name, dns) in plan.filter(|(name, _)| chosen(name)) {
        // Each target gets its own upstream port, so TIME_WAIT tuples never collide.
        let held = Arc::new(AtomicUsize::new(0));
        let up = upstream(held.clone(), o.chunk).await;
        match start(name, up, &o.binaries, dns).await {
            Some(t) => {
                targets.push(t);
                holds.push(held);
            }
            None => eprintln!("{name}: not installed, skipped"),
        }
    }
    let mut results: BTreeMap<&str, Figures> = BTreeMap::new();
    for round in 0..o.rounds {
        for (i, t) in targets.iter().enumerate() {
            let pid = t.child.as_ref().map(|c| c.id());
            let r = results.entry(&t.name).or_default();
            let mut push = |k: String, v: f64| r.entry(k).or_default().push(v);
            if t.dns {
                connection_figures(t.addr, pid, o.conns, HELLO, DNS, &mut push).await;
                eprintln!("round {} {} (DNS path): done", round + 1, t.name);
                continue;
            }
            let cpu = total_ms(cpu_ms(pid));
            let down1 = throughput(t.addr, 1, total, true).await;
            let cpu_after = total_ms(cpu_ms(pid));
            push(
                "relay CPU ms per GiB, 1 conn".into(),
                (cpu_after - cpu) / (total as f64 / (1u64 << 30) as f64),
            );
            push("throughput 1 conn down, MB/s".into(), down1 / 1e6);
            push(
                "throughput 1 conn up, MB/s".into(),
                throughput(t.addr, 1, total, false).await / 1e6,
            );
            let cpu = total_ms(cpu_ms(pid));
            let down8 = throughput(t.addr, 8, total, true).await;
            let cpu_after = total_ms(cpu_ms(pid));
            push(
                "relay CPU ms per GiB, 8 conns".into(),
                (cpu_after - cpu) / (total as f64 / (1u64 << 30) as f64),
            );
            push("throughput 8 conns down, MB/s".into(), down8 / 1e6);
            push(
                "throughput 8 conns up, MB/s".into(),
                throughput(t.addr, 8, total, false).await / 1e6,
            );
            connection_figures(t.addr, pid, o.conns, HELLO, "", &mut push).await;
            connection_figures(t.addr, pid, o.conns, SMALL_HELLO, SMALL, &mut push).await;
            let (user, system) = cpu_ms(pid);
            let (count, lat) = exchanges(t.addr, 32, 256, 1024, o.exchange_s).await;
            let (user_after, system_after) = cpu_ms(pid);
            let per_exchange = |ms: f64| ms * 1e3 / count as f64;
            push(
                "relay CPU us per exchange (256 B up, 1 KiB down, 32 conns)".into(),
                per_exchange(user_after + system_after - user - system),
            );
            push(
                "relay CPU us per exchange, kernel part".into(),
                per_exchange(system_after - system),
            );
            push(
                "relay CPU us per exchange, user part".into(),
                per_exchange(user_after - user),
            );
            push(
                "exchanges/s, 32 conns".into(),
                count as f64 / o.exchange_s as f64,
            );
            for (p, name) in [(0.5, "p50"), (0.9, "p90"), (0.99, "p99")] {
                push(
                    format!("exchange latency {name} ms, 32 conns"),
                    percentile(&lat, p),
                );
            }
            let (_, lat) = exchanges(t.addr, 1, 256, 1024, 1).await;
            push(
                "exchange latency p50 ms, 1 conn".into(),
                percentile(&lat, 0.5),
            );
            for &n in &o.idle {
                let (rss, slab) = idle_cost(t.addr, pid, &holds[i], n).await;
                push(format!("RSS bytes per idle conn, {n} held"), rss);
                push(format!("kernel slab bytes per idle conn, {n} held"), slab);
            }
            eprintln!("round {} {}: done", round + 1, t.name);
        }
    }
    if o.strace {
        for t in targets.iter().filter(|t| !t.dns) {
            let Some(pid) = t.child.as_ref().map(|c| c.id()) else {
                continue;
            };
            let r = results.entry(&t.name).or_default();
            let mut push = |k: String, v: f64| r.entry(k).or_default().push(v);
            syscall_figures(t.addr, pid, o.conns.min(2000), &mut push).await;
            eprintln!("system calls {}: done", t.name);
        }
    }
    drop(dns_server.map(|(mut child, _)| child.kill()));
    print_table(&o, &relays, &results);
}

/// The medians, each rate and latency also as a multiple of no relay's, snirelay's figure as
/// a multiple of the best peer's, and each further build's as a multiple of the first's.
fn print_table(o: &Options, relays: &[String], results: &BTreeMap<&str, Figures>) {
    println!(
        "\nmedians of {} interleaved rounds; {} MiB per transfer in {} KiB upstream writes, {} connections, {} idle\n",
        o.rounds,
        o.mib,
        o.chunk / 1024,
        o.conns,
        o.idle
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(" and ")
    );
    let columns: Vec<&str> = relays
        .iter()
        .map(String::as_str)
        .filter(|r| results.contains_key(r))
        .collect();
    let builds: Vec<&str> = columns
        .iter()
        .copied()
        .filter(|c| c.starts_with("snirelay "))
        .collect();
    print!("| figure |");
    for c in &columns {
        print!(" {c} |");
    }
    print!(" snirelay ÷ best peer |");
    for b in &builds {
        print!(" {b} ÷ snirelay |");
    }
    println!("\n|---|{}---|", "---|".repeat(columns.len() + builds.len()));
    let keys: std::collections::BTreeSet<&String> =
        results.values().flat_map(|f| f.keys()).collect();
    let value = |relay: &str, key: &str| results.get(relay)?.get(key).map(|v| median(v));
    for key in keys {
        print!("| {key} |");
        // Rates and latencies also as a multiple of no relay's (pinned) figure.
        let base = value("no relay", key.trim_start_matches(DNS));
        for c in &columns {
            match value(c, key) {
                None => print!(" - |"),
                Some(m) => {
                    let ratio = match base {
                        Some(b) if key.contains("/s") || key.contains("latency") => {
                            format!(" ({:.2}x)", m / b)
                        }
                        _ => String::new(),
                    };
                    // Sub-millisecond latencies and microsecond costs need more than one decimal.
                    let digits = if m.abs() < 10.0 { 3 } else { 1 };
                    print!(" {m:.digits$}{ratio} |");
                }
            }
        }
        let peers = ["nginx", "haproxy"].map(|p| value(p, key));
        let best = peers.into_iter().flatten().reduce(|a, b| {
            if higher_is_better(key) {
                a.max(b)
            } else {
                a.min(b)
            }
        });
        let ratio = |ours: Option<f64>, other: Option<f64>| match (ours, other) {
            (Some(ours), Some(other)) if other != 0.0 => format!(" {:.2}x |", ours / other),
            _ => " - |".to_owned(),
        };
        print!("{}", ratio(value("snirelay", key), best));
        for b in &builds {
            print!("{}", ratio(value(b, key), value("snirelay", key)));
        }
        println!();
    }
    // The DNS path's cost over the pinned upstream, per relay.
    let key = "relay CPU ms per 1,000 conns";
    print!("| DNS path CPU per conn ÷ pinned |");
    for c in &columns {
        match (value(c, &format!("{DNS}{key}")), value(c, key)) {
            (Some(dns), Some(pinned)) if pinned > 0.0 => print!(" {:.2}x |", dns / pinned),
            _ => print!(" - |"),
        }
    }
    println!("{}", " - |".repeat(1 + builds.len()));
}
