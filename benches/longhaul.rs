//! The long haul: what a client 180 ms away feels through snirelay, and through nginx
//! (stream + ssl_preread) and HAProxy (req.ssl_sni) as they ship, on the emulated path of
//! the `longpath` crate: RTT 180 ms, a 20 Mbit/s bottleneck with a queue of one
//! bandwidth-delay product (450 kB), loss only towards the client.
//!
//! `cargo bench --bench longhaul -- [--losses 0,1,5,15] [--runs 3] [--cap-s 60]
//! [--targets snirelay,snirelay-cubic,nginx,haproxy]`
//!
//! With `--targets snirelay,edge,edge-nopool`, the clients reach the far relay through an
//! edge relay beside them (`longpath`'s fourth namespace, sub-millisecond away), which
//! holds the long path's near end: `edge` keeps 4 ready connections to the far relay,
//! `edge-nopool` connects for each client, as a chain of plain relays would, and
//! `edge-tfo` connects for each client with TCP Fast Open on the long leg (the sysctl set on
//! both hosts; the first connection fetches the cookie). All send a PROXY v2 header; the
//! far relay trusts the edge's address and waits a minute for it.
//!
//! Per loss and run (a run is a seed for the losses), each relay gets its own path, all
//! four at once: `snirelay` with its defaults, `snirelay-cubic` (its listener set to CUBIC),
//! nginx and HAProxy (and, named with `--targets`, `snirelay-lowat`: its listener's
//! `notsent_lowat` at 16 KiB, to weigh that default). The relay namespace's default congestion control is CUBIC, as on
//! CentOS and Alibaba Cloud Linux; a namespace may only default to an algorithm the host
//! allows, so the bench adds `cubic` to net.ipv4.tcp_allowed_congestion_control and puts
//! it back when done. Over real TLS (rustls both ends) to an upstream that answers each
//! 256-byte request with the size it names:
//! - `ttfb_ms`: a new connection's first response byte (TCP, TLS 1.3, a 1 KiB request),
//!   median of five;
//! - `1mib_s`, `10mib_s`: a 1 MiB and a 10 MiB response on a connection already open;
//! - `idle1_ms`, `idle10_ms`: on that warm connection, a 32 KiB answer after 1 s and 10 s
//!   of quiet (slow start after idle);
//! - `grpc_ms`: a gRPC call on a new connection (grpcio both ends, `benches/grpc_call.py`),
//!   from creating the channel to the answer, median of five; left out without grpcio
//!   (`cargo xtask test-deps` installs it).
//!
//! A figure that takes longer than `--cap-s` is shown as `>cap`. Needs root.

#[path = "../tests/common/pki.rs"]
#[allow(dead_code)]
mod pki;

use longpath::{Host, Path, Spec};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const NAME: &str = "a.example.com";
/// The gRPC upstream's name, and where it listens beside the HTTPS one.
const GRPC_NAME: &str = "grpc.example.com";
const GRPC_AT: &str = "10.78.0.2:8443";
const RTT: Duration = Duration::from_millis(180);
const RATE: u64 = 20_000_000;
const TARGETS: [&str; 4] = ["snirelay", "snirelay-cubic", "nginx", "haproxy"];
const PEERS: [&str; 2] = ["nginx", "haproxy"];
const REQUEST: usize = 256;
const ALLOWED: &str = "/proc/sys/net/ipv4/tcp_allowed_congestion_control";

type Sample = BTreeMap<&'static str, f64>;

/// Adds `cubic` to the algorithms namespaces may default to; puts the list back on drop.
struct AllowCubic(String);

impl AllowCubic {
    fn add() -> AllowCubic {
        let before = std::fs::read_to_string(ALLOWED).expect("read the allowed list");
        let before = before.trim().to_owned();
        if !before.split(' ').any(|name| name == "cubic") {
            std::fs::write(ALLOWED, format!("{before} cubic")).expect("needs root");
        }
        AllowCubic(before)
    }
}

impl Drop for AllowCubic {
    fn drop(&mut self) {
        let _ = std::fs::write(ALLOWED, &self.0);
    }
}

/// The relays under test (an edge and its far relay, or one), killed on drop (SIGTERM:
/// nginx's master stops its workers then), and the directory of their configuration,
/// removed then.
struct Target(Vec<Child>, #[allow(dead_code)] Option<tempfile::TempDir>);

impl Drop for Target {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

/// Pool size of the `edge` target.
const EDGE_POOL: usize = 4;

/// Where clients connect for `name`: the edge's address for an edge target.
fn entry(name: &str) -> SocketAddr {
    if name.starts_with("edge") {
        SocketAddr::from((longpath::EDGE, 443))
    } else {
        SocketAddr::from((longpath::RELAY, 443))
    }
}

/// Spawns `cmd` quietly.
fn spawn(mut cmd: Command, name: &str) -> Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// `snirelay run` in `host`'s namespace on `config`, written to `dir/file`.
fn snirelay(path: &Path, host: Host, dir: &std::path::Path, file: &str, config: &str) -> Command {
    std::fs::write(dir.join(file), config).unwrap();
    let mut cmd = path.command(host, env!("CARGO_BIN_EXE_snirelay"));
    cmd.args(["run", "--config"])
        .arg(dir.join(file))
        .env("RUST_LOG", "warn");
    cmd
}

/// Waits until a connection from inside `host` to `addr` gets through.
fn until_listening(path: &Path, host: Host, addr: SocketAddr, name: &str) {
    for _ in 0..500 {
        if path
            .run(host, || std::net::TcpStream::connect(addr))
            .unwrap()
            .is_ok()
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{name} did not listen on {addr}");
}

/// A far relay taking the edge's PROXY headers at `listen`, and in front of it, for
/// clients, an edge relay with (`edge`) or without (`edge-nopool`) ready connections, or
/// with TCP Fast Open on the long leg (`edge-tfo`).
fn start_edge(path: &Path, name: &str, listen: SocketAddr, upstream: SocketAddr) -> Target {
    let dir = tempfile::tempdir().unwrap();
    let edge = longpath::CLIENT;
    let fast_open = name == "edge-tfo";
    if fast_open {
        for host in [Host::Edge, Host::Relay] {
            path.sysctl(host, "net.ipv4.tcp_fastopen=3").unwrap();
        }
    }
    let far = format!(
        r#"{{"listen": [{{"addr": "{listen}", "proxy_protocol": "v2", "trusted_proxies": ["{edge}/32"], "proxy_header_wait_s": 60, "tcp": {{"fast_open": {fast_open}}}}}],
            "allow": [{{"name": "{NAME}", "upstream": "{upstream}"}}, {{"name": "{GRPC_NAME}", "upstream": "{GRPC_AT}"}}]}}"#
    );
    let far = spawn(
        snirelay(path, Host::Relay, dir.path(), "far.json", &far),
        "far",
    );
    until_listening(path, Host::Relay, listen, "the far relay");
    let pools = if name == "edge" {
        format!(
            r#""pools": [{{"upstream": "{listen}", "size": {EDGE_POOL}, "max_idle_s": 30}}], "admin": "127.0.0.1:9901","#
        )
    } else {
        String::new()
    };
    let at = entry(name);
    let edge = format!(
        r#"{{"listen": ["{at}"], {pools} "upstream_tcp": {{"fast_open": {fast_open}}},
            "allow": [{{"name": "{NAME}", "upstream": "{listen}", "send_proxy": "v2"}}, {{"name": "{GRPC_NAME}", "upstream": "{listen}", "send_proxy": "v2"}}]}}"#
    );
    let edge = spawn(
        snirelay(path, Host::Edge, dir.path(), "edge.json", &edge),
        name,
    );
    until_listening(path, Host::Edge, at, name);
    if name == "edge" {
        until_pool_full(path);
    }
    Target(vec![edge, far], Some(dir))
}

/// Waits until the edge's pool holds its connections, from its /metrics.
fn until_pool_full(path: &Path) {
    use std::io::{Read, Write};
    let series = format!(
        "snirelay_pool_ready{{upstream=\"{}:443\"}} {EDGE_POOL}",
        longpath::RELAY
    );
    for _ in 0..500 {
        let text = path
            .run(Host::Edge, || -> std::io::Result<String> {
                let mut admin = std::net::TcpStream::connect("127.0.0.1:9901")?;
                admin.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
                let mut text = String::new();
                admin.read_to_string(&mut text)?;
                Ok(text)
            })
            .unwrap()
            .unwrap_or_default();
        if text.lines().any(|line| line == series) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the edge's pool did not fill");
}

fn start(path: &Path, name: &str, listen: SocketAddr, upstream: SocketAddr) -> Target {
    if name.starts_with("edge") {
        return start_edge(path, name, listen, upstream);
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let cmd = match name {
        "snirelay" | "snirelay-cubic" | "snirelay-lowat" => {
            let tcp = match name {
                "snirelay-cubic" => r#", "tcp": {"congestion": "cubic"}"#,
                "snirelay-lowat" => r#", "tcp": {"notsent_lowat": 16384}"#,
                _ => "",
            };
            let config = format!(
                r#"{{"listen": [{{"addr": "{listen}"{tcp}}}], "allow": [{{"name": "{NAME}", "upstream": "{upstream}"}}, {{"name": "{GRPC_NAME}", "upstream": "{GRPC_AT}"}}]}}"#
            );
            snirelay(path, Host::Relay, dir.path(), "rules.json", &config)
        }
        "nginx" => {
            let module = "/usr/lib/nginx/modules/ngx_stream_module.so";
            let config = format!(
                "load_module {module};\nworker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\n\
                 error_log {d}/error.log error;\nevents {{ worker_connections 1024; }}\n\
                 stream {{\n  map $ssl_preread_server_name $up {{ {NAME} {upstream}; {GRPC_NAME} {GRPC_AT}; default 127.0.0.1:1; }}\n\
                 server {{ listen {listen}; ssl_preread on; proxy_pass $up; }}\n}}\n"
            );
            std::fs::write(dir.path().join("nginx.conf"), config).unwrap();
            let mut cmd = path.command(Host::Relay, "/usr/sbin/nginx");
            cmd.arg("-c").arg(dir.path().join("nginx.conf"));
            cmd
        }
        _ => {
            let config = format!(
                "global\n  maxconn 1000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n\
                 frontend fe\n  bind {listen}\n  tcp-request inspect-delay 5s\n\
                 tcp-request content accept if {{ req.ssl_hello_type 1 }}\n\
                 use_backend be if {{ req.ssl_sni -i {NAME} }}\n\
                 use_backend grpc if {{ req.ssl_sni -i {GRPC_NAME} }}\n\
                 backend be\n  server s1 {upstream}\n\
                 backend grpc\n  server s1 {GRPC_AT}\n"
            );
            std::fs::write(dir.path().join("haproxy.cfg"), config).unwrap();
            let mut cmd = path.command(Host::Relay, "/usr/sbin/haproxy");
            cmd.arg("-db").arg("-f").arg(dir.path().join("haproxy.cfg"));
            cmd
        }
    };
    let child = spawn(cmd, name);
    let target = Target(vec![child], Some(dir));
    until_listening(path, Host::Relay, listen, name);
    target
}

/// The upstream: TLS, then for each 256-byte request, as many bytes as its first line says.
async fn upstream(path: &Path, pki: &pki::Pki) -> SocketAddr {
    let listener = path
        .run(Host::Upstream, || {
            std::net::TcpListener::bind((longpath::UPSTREAM, 443))
        })
        .unwrap()
        .unwrap();
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = pki.acceptor();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            // As a real API server: responses go out as written.
            let _ = conn.set_nodelay(true);
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(conn).await else {
                    return;
                };
                let mut request = [0u8; REQUEST];
                let chunk = vec![0x5a; 64 * 1024];
                while tls.read_exact(&mut request).await.is_ok() {
                    let text = String::from_utf8_lossy(&request);
                    let mut left: usize = text
                        .split_whitespace()
                        .next()
                        .unwrap_or("0")
                        .parse()
                        .unwrap_or(0);
                    while left > 0 {
                        let n = left.min(chunk.len());
                        if tls.write_all(&chunk[..n]).await.is_err() {
                            return;
                        }
                        left -= n;
                    }
                    let _ = tls.flush().await;
                }
            });
        }
    });
    addr
}

/// A python3 with grpcio (the one `cargo xtask test-deps` installs it for), else `None`:
/// the gRPC figure is then left out, with a line saying so.
fn grpc_python() -> Option<std::path::PathBuf> {
    let python =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ci-venv/bin/python3");
    let found = Command::new(&python)
        .args(["-c", "import grpc"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!("no grpcio (`cargo xtask test-deps` installs it): the gRPC figure is left out");
    }
    found.then_some(python)
}

fn grpc_script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/grpc_call.py")
}

/// The gRPC upstream in the upstream namespace, with a certificate for GRPC_NAME in `dir`;
/// killed on drop.
fn grpc_upstream(path: &Path, python: &std::path::Path, dir: &std::path::Path) -> Target {
    use std::io::BufRead;
    pki::openssl_self_signed(dir, GRPC_NAME);
    let mut child = path
        .command(Host::Upstream, python)
        .arg(grpc_script())
        .args(["serve", GRPC_AT])
        .arg(dir.join("cert.pem"))
        .arg(dir.join("key.pem"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "serving", "the gRPC upstream did not start");
    Target(vec![child], None)
}

/// `n` gRPC calls from the client side to `at`, each on a new connection: milliseconds
/// from the channel's creation to the answer.
fn grpc_calls(
    path: &Path,
    python: &std::path::Path,
    at: SocketAddr,
    dir: &std::path::Path,
    n: usize,
) -> Vec<f64> {
    let out = path
        .command(Host::Client, python)
        .arg(grpc_script())
        .args(["call", &at.to_string(), GRPC_NAME])
        .arg(dir.join("cert.pem"))
        .arg(n.to_string())
        .stderr(Stdio::null())
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

fn request(bytes: usize) -> Vec<u8> {
    let mut request = format!("{bytes}\n").into_bytes();
    request.resize(REQUEST, b' ');
    request
}

/// Asks for `bytes`; the time to the first byte and to the last.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(tls: &mut S, bytes: usize) -> (f64, f64) {
    let start = Instant::now();
    tls.write_all(&request(bytes)).await.unwrap();
    tls.flush().await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = tls.read(&mut buf).await.unwrap();
    let first = start.elapsed().as_secs_f64();
    while got < bytes {
        got += tls.read(&mut buf).await.unwrap();
    }
    (first, start.elapsed().as_secs_f64())
}

/// A TLS connection from the client side to the relay. The TCP connect blocks (a thread
/// enters the client namespace to make the socket), so it runs off the runtime's workers:
/// the relays are measured at once, and a blocked worker would delay the others' IO.
async fn connect(
    path: &Arc<Path>,
    relay: SocketAddr,
    pki: &pki::Pki,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let on = path.clone();
    let tcp = tokio::task::spawn_blocking(move || {
        on.run(Host::Client, || std::net::TcpStream::connect(relay))
    })
    .await
    .unwrap()
    .unwrap()
    .unwrap();
    tcp.set_nonblocking(true).unwrap();
    let tcp = tokio::net::TcpStream::from_std(tcp).unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = rustls::pki_types::ServerName::try_from(NAME).unwrap();
    pki.connector().connect(name, tcp).await.unwrap()
}

/// One relay on one path: every figure, `NaN` where the cap ran out.
async fn measure(name: &'static str, loss: f64, seed: u64, cap: Duration) -> Sample {
    let spec = Spec {
        rate_bps: Some(RATE),
        queue_bytes: (RATE as f64 / 8.0 * RTT.as_secs_f64()) as usize,
        down_loss: loss / 100.0,
        seed,
        edge: name.starts_with("edge"),
        ..Spec::new(RTT)
    };
    let path = tokio::task::spawn_blocking(move || Path::start(spec))
        .await
        .unwrap()
        .expect("the long path needs root");
    let path = Arc::new(path);
    path.sysctl(Host::Relay, "net.ipv4.tcp_congestion_control=cubic")
        .expect("cannot default the relay namespace to cubic");
    let pki = Arc::new(pki::pki(&[NAME]));
    let upstream = upstream(&path, &pki).await;
    let listen = SocketAddr::from((longpath::RELAY, 443));
    let on = path.clone();
    let _target = tokio::task::spawn_blocking(move || start(&on, name, listen, upstream))
        .await
        .unwrap();
    let listen = entry(name);
    let mut sample = Sample::new();
    let capped = |f: Option<f64>| f.unwrap_or(f64::NAN);
    let mut ttfb = Vec::new();
    for _ in 0..5 {
        let timed = tokio::time::timeout(cap, async {
            let start = Instant::now();
            let mut tls = connect(&path, listen, &pki).await;
            let connected = start.elapsed().as_secs_f64();
            connected + exchange(&mut tls, 1024).await.0
        })
        .await;
        ttfb.push(capped(timed.ok()) * 1e3);
    }
    sample.insert("ttfb_ms", median(&mut ttfb));
    sample.insert("ttfb_rtt", median(&mut ttfb) / RTT.as_millis() as f64);
    if let Some(python) = grpc_python() {
        let (on, dir) = (path.clone(), tempfile::tempdir().unwrap());
        let calls = tokio::task::spawn_blocking(move || {
            let _server = grpc_upstream(&on, &python, dir.path());
            grpc_calls(&on, &python, listen, dir.path(), 5)
        })
        .await
        .unwrap();
        let mut calls = calls;
        sample.insert(
            "grpc_ms",
            if calls.is_empty() {
                f64::NAN
            } else {
                median(&mut calls)
            },
        );
    }
    let timed = tokio::time::timeout(cap, async {
        let mut tls = connect(&path, listen, &pki).await;
        let one = exchange(&mut tls, 1 << 20).await.1;
        (one, tls)
    })
    .await;
    match timed {
        Ok((one, mut tls)) => {
            sample.insert("1mib_s", one);
            for (key, idle) in [("idle1_ms", 1), ("idle10_ms", 10)] {
                tokio::time::sleep(Duration::from_secs(idle)).await;
                let took = tokio::time::timeout(cap, exchange(&mut tls, 32 * 1024)).await;
                sample.insert(key, capped(took.ok().map(|t| t.1)) * 1e3);
            }
        }
        Err(_) => {
            for key in ["1mib_s", "idle1_ms", "idle10_ms"] {
                sample.insert(key, f64::NAN);
            }
        }
    }
    let timed = tokio::time::timeout(cap, async {
        let mut tls = connect(&path, listen, &pki).await;
        exchange(&mut tls, 10 << 20).await.1
    })
    .await;
    sample.insert("10mib_s", capped(timed.ok()));
    sample
}

fn median(values: &mut [f64]) -> f64 {
    // NaN (over the cap) sorts last, as the slowest.
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let losses: Vec<f64> = value("--losses")
        .unwrap_or_else(|| "0,1,5,15".into())
        .split(',')
        .map(|l| l.parse().expect("--losses takes percentages"))
        .collect();
    let runs: u64 = value("--runs").map_or(3, |r| r.parse().unwrap());
    let cap = Duration::from_secs(value("--cap-s").map_or(60, |c| c.parse().unwrap()));
    let targets: Vec<&'static str> = match value("--targets") {
        Some(list) => list
            .split(',')
            .map(|name| -> &'static str { Box::leak(name.to_owned().into_boxed_str()) })
            .collect(),
        None => TARGETS.to_vec(),
    };
    let _allowed = AllowCubic::add();
    let mut results: BTreeMap<(u64, &str), BTreeMap<&str, Vec<f64>>> = BTreeMap::new();
    for &loss in &losses {
        for seed in 1..=runs {
            let runs: Vec<_> = targets
                .iter()
                .map(|&name| tokio::spawn(measure(name, loss, seed, cap)))
                .collect();
            for (name, run) in targets.iter().zip(runs) {
                let sample = run.await.unwrap();
                eprintln!("loss {loss}% seed {seed} {name}: {sample:?}");
                let figures = results.entry(((loss * 100.0) as u64, name)).or_default();
                for (key, value) in sample {
                    figures.entry(key).or_default().push(value);
                }
            }
        }
    }
    print_table(&targets, &losses, runs, cap, &mut results);
}

fn print_table(
    targets: &[&'static str],
    losses: &[f64],
    runs: u64,
    cap: Duration,
    results: &mut BTreeMap<(u64, &str), BTreeMap<&str, Vec<f64>>>,
) {
    let keys = [
        "ttfb_ms",
        "ttfb_rtt",
        "grpc_ms",
        "1mib_s",
        "10mib_s",
        "idle1_ms",
        "idle10_ms",
    ];
    // Against the best of nginx and HAProxy where they ran; else the second target against
    // the first (`edge` against `snirelay`, the far relay reached directly).
    let peers = targets.iter().any(|name| PEERS.contains(name));
    let compared = if peers {
        "snirelay / best peer".to_owned()
    } else {
        format!("{} / {}", targets.get(1).unwrap_or(&"-"), targets[0])
    };
    println!(
        "\nmedians of {runs} runs; RTT 180 ms, 20 Mbit/s, queue 450 kB, loss towards the client only; >{}s: over the cap",
        cap.as_secs()
    );
    println!("| loss | figure | {} | {compared} |", targets.join(" | "));
    println!("|---|---|{}---|", "---|".repeat(targets.len()));
    for &loss in losses {
        for key in keys {
            let measured = targets.iter().any(|&name| {
                results
                    .get(&((loss * 100.0) as u64, name))
                    .is_some_and(|f| f.contains_key(key))
            });
            if !measured {
                continue;
            }
            let mut row = Vec::new();
            for &name in targets {
                let values = results
                    .get_mut(&((loss * 100.0) as u64, name))
                    .and_then(|f| f.get_mut(key));
                row.push(values.map_or(f64::NAN, |v| median(v)));
            }
            let shown: Vec<String> = row
                .iter()
                .map(|v| {
                    if v.is_nan() {
                        format!(">{}s", cap.as_secs())
                    } else if key.ends_with("_s") || key.ends_with("_rtt") {
                        format!("{v:.2}")
                    } else {
                        format!("{v:.0}")
                    }
                })
                .collect();
            let (mine, theirs) = if peers {
                let best_peer = targets
                    .iter()
                    .zip(&row)
                    .filter(|(name, v)| PEERS.contains(name) && !v.is_nan())
                    .map(|(_, v)| *v)
                    .fold(f64::NAN, f64::min);
                (row[0], best_peer)
            } else {
                (row.get(1).copied().unwrap_or(f64::NAN), row[0])
            };
            let ratio = if mine.is_nan() || theirs.is_nan() {
                "-".to_owned()
            } else {
                format!("{:.2}", mine / theirs)
            };
            println!("| {loss}% | {key} | {} | {ratio} |", shown.join(" | "));
        }
    }
}
