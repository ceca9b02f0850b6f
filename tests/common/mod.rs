//! Shared test support. Each test crate uses a different part of it.
#![allow(dead_code)]

pub mod dnsmasq;
pub mod hellogen;
pub mod pki;
pub mod traffic;

#[allow(unused_imports)]
pub use pki::{Pki, openssl_self_signed, pki};

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;

/// Upper bound on waiting for something that should happen promptly. Only a hang reaches
/// it; no test relies on it for synchronisation.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The snirelay binary under test: `SNIRELAY_BIN` when set (the static release binary, in
/// `.ci/run`), else the one cargo built for this test run.
pub fn binary() -> &'static str {
    static BINARY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BINARY.get_or_init(|| {
        std::env::var("SNIRELAY_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_snirelay").to_owned())
    })
}

/// The relay in this process on `text` (written to `dir`/rules.json), started but not yet
/// serving, for tests on tokio's paused clock.
pub async fn start_in_process(dir: &std::path::Path, text: &str) -> snirelay::lifecycle::Started {
    let path = dir.join("rules.json");
    std::fs::write(&path, text).unwrap();
    let config = snirelay::config::Config::parse(text, &path).unwrap();
    snirelay::lifecycle::start(snirelay::lifecycle::Options {
        config,
        text: text.to_owned(),
        path,
        fixed: snirelay::reload::Fixed::default(),
        overrides: Vec::new(),
        upgrade_socket: None,
    })
    .await
    .unwrap()
}

/// Runs a test body, failing it (instead of hanging the suite) if it does not finish in
/// `PATIENCE`.
pub async fn within<T>(body: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, body)
        .await
        .unwrap_or_else(|_| panic!("test did not finish within {PATIENCE:?}"))
}

/// Says why a test cannot run on this machine and lets it return: a developer machine
/// skips it, CI fails it, since CI must run every test. The line goes straight to standard
/// error, past the test harness's capture, so a skip shows in the summary of a plain
/// `cargo test`, not only under `--nocapture`.
pub fn cannot_run_here(why: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "cannot run under CI: {why}"
    );
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "skipped: {why}");
}

/// Runs `command` and returns what it printed, failing the test with its standard error
/// unless it succeeds.
pub fn succeeds(command: &mut Command) -> std::process::Output {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `snirelay suggest ARGS` with `input` on its standard input.
pub fn suggest(args: &[&str], input: &str) -> std::process::Output {
    let mut child = Command::new(binary())
        .arg("suggest")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// `snirelay check` accepts `rules` (a rules file's text).
pub fn check_passes(rules: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.json");
    std::fs::write(&path, rules).unwrap();
    succeeds(
        Command::new(binary())
            .args(["check", "--config"])
            .arg(&path),
    );
}

/// The Python tools `cargo xtask test-deps` installs: target/ci-venv/bin.
pub fn tools_venv() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/ci-venv/bin")
}

/// `tool` on PATH or in [`tools_venv`], if it is there. A developer machine without it
/// skips the test that needs it, saying so; CI never does, since `.ci/run` installs every
/// tool the suite drives.
pub fn tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain(std::iter::once(tools_venv()))
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file());
    if found.is_none() {
        cannot_run_here(&format!(
            "{tool} is not installed (Debian's package, or `cargo xtask test-deps` for the Python tools)"
        ));
    }
    found
}

/// A python3 that imports every module in `modules` (comma-separated): the one
/// `cargo xtask test-deps` installs them for, else the one on PATH; `None` (said, and failed
/// under CI) when neither does.
pub fn python_with(modules: &str) -> Option<PathBuf> {
    let venv = tools_venv().join("python3");
    let python = if venv.is_file() {
        venv
    } else {
        "python3".into()
    };
    let found = Command::new(&python)
        .args(["-c", &format!("import {modules}")])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        cannot_run_here(&format!(
            "python3 cannot import {modules}: `cargo xtask test-deps` installs them"
        ));
        return None;
    }
    Some(python)
}

/// Whether this machine lets a test make network and mount namespaces (root, or a
/// permissive sandbox); said, and failed under CI, when it does not.
pub fn namespaces_permitted() -> bool {
    let permitted = Command::new("unshare")
        .args(["--net", "--mount", "--fork", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !permitted {
        cannot_run_here("this machine does not permit network and mount namespaces (unshare)");
    }
    permitted
}

/// Runs `tests/python/SCRIPT ARGS...` with `python` in a network and mount namespace of
/// its own (for at most two minutes) and returns the JSON object it prints.
pub fn run_in_namespace(python: &Path, script: &str, args: &[&std::ffi::OsStr]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let out = Command::new("timeout")
        .args(["120", "unshare", "--net", "--mount", "--fork"])
        .arg(python)
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(said.trim()).unwrap_or_else(|_| panic!("{said}"))
}

/// Whether `tool` is there ([`tool`]).
pub fn available(name: &str) -> bool {
    tool(name).is_some()
}

pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A captured ClientHello and what the manifest says about it.
pub struct Fixture {
    pub name: String,
    pub bytes: Vec<u8>,
    pub sni: String,
}

pub fn real_hellos() -> Vec<Fixture> {
    let dir = fixture_dir().join("hellos");
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    manifest["hellos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            let name = h["name"].as_str().unwrap().to_owned();
            let bytes = std::fs::read(dir.join(format!("{name}.bin"))).unwrap();
            assert_eq!(bytes.len() as u64, h["bytes"].as_u64().unwrap(), "{name}");
            Fixture {
                name,
                bytes,
                sni: h["sni"].as_str().unwrap().to_owned(),
            }
        })
        .collect()
}

/// The snirelay binary running in a child process, logging JSON to a pipe we read.
/// The message of the line that sums up rejection lines held back by the rate limit.
pub const SUPPRESSED: &str = "connection lines suppressed; the metrics count every connection";

pub struct RelayProcess {
    child: Child,
    pub addrs: Vec<SocketAddr>,
    logs: mpsc::UnboundedReceiver<Value>,
    /// Lines read while waiting for start-up, kept for the test's own lookups.
    early: std::collections::VecDeque<Value>,
    _dir: tempfile::TempDir,
}

impl RelayProcess {
    /// Runs `snirelay run` on `config` (written to a temp file) listening on 127.0.0.1:0.
    pub async fn start(config: Value) -> RelayProcess {
        Self::start_with(config, &["--listen", "127.0.0.1:0"]).await
    }

    /// Runs `snirelay run` with extra arguments.
    pub async fn start_with(config: Value, args: &[&str]) -> RelayProcess {
        Self::spawn(Command::new(binary()), config, args).await
    }

    /// Runs `snirelay run` through `launcher` (for example `prlimit ... snirelay`).
    pub async fn spawn(launcher: Command, config: Value, args: &[&str]) -> RelayProcess {
        Self::spawn_from(launcher, Stdio::null(), config, args).await
    }

    /// [`RelayProcess::spawn`], with `stdin` as the launcher's standard input.
    pub async fn spawn_from(
        mut launcher: Command,
        stdin: Stdio,
        config: Value,
        args: &[&str],
    ) -> RelayProcess {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.json");
        std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
        launcher
            .args(["run", "--log-format", "json", "--config"])
            .arg(&path)
            .args(args)
            .env("RUST_LOG", "info");
        let (child, mut logs) = spawn_logged_from(launcher, stdin);
        let listeners = match args.iter().filter(|a| **a == "--listen").count() {
            0 => config["listen"].as_array().map_or(1, Vec::len),
            given => given,
        };
        let mut addrs = Vec::new();
        let mut early = std::collections::VecDeque::new();
        while addrs.len() < listeners {
            let line = next_line(&mut logs).await;
            if line["message"] == "listening" {
                addrs.push(line["addr"].as_str().unwrap().parse().unwrap());
            } else {
                early.push_back(line);
            }
        }
        RelayProcess {
            child,
            addrs,
            logs,
            early,
            _dir: dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// The relay's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the relay, in bytes.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 1024
    }

    /// Open file descriptors of the relay.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    /// The rules file the relay was started with.
    pub fn config_path(&self) -> PathBuf {
        self._dir.path().join("rules.json")
    }

    /// The next per-connection log line.
    pub async fn next_connection(&mut self) -> Value {
        self.next_message("connection").await
    }

    /// The next log line, whatever it says.
    pub async fn next_line(&mut self) -> Value {
        match self.early.pop_front() {
            Some(line) => line,
            None => next_line(&mut self.logs).await,
        }
    }

    /// How the next `n` connections to end ended, by reason: counted from their lines, and
    /// from the summaries of the rejection lines the rate limit held back.
    pub async fn next_reasons(&mut self, n: u64) -> std::collections::BTreeMap<String, u64> {
        let mut reasons = std::collections::BTreeMap::new();
        let mut seen = 0;
        while seen < n {
            let line = self.next_line().await;
            let count = match line["message"].as_str() {
                Some("connection") => 1,
                Some(SUPPRESSED) => line["suppressed"].as_u64().unwrap(),
                _ => continue,
            };
            *reasons
                .entry(line["reason"].as_str().unwrap().to_owned())
                .or_insert(0) += count;
            seen += count;
        }
        reasons
    }

    /// The admin listener's address, from its start-up line.
    pub async fn admin_addr(&mut self) -> String {
        self.next_message("admin listening").await["addr"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The next log line whose message is `message`.
    pub async fn next_message(&mut self, message: &str) -> Value {
        loop {
            let line = self.next_line().await;
            if line["message"] == message {
                return line;
            }
        }
    }

    /// Sends SIGINT or SIGTERM.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit.
    pub async fn wait(mut self) -> ExitStatus {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "relay did not exit");
            // Polling a child's exit has no async notification in std; this is not a sleep
            // that orders events, only the poll interval.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test shows what the relay said that the test never read.
        if std::thread::panicking() {
            // The reader thread drains the pipe to its end once the process is gone.
            std::thread::sleep(Duration::from_millis(200));
            while let Ok(line) = self.logs.try_recv() {
                eprintln!("relay (unread): {line}");
            }
        }
    }
}

/// An address that refuses connections for as long as the socket is held: bound, never
/// listening, so no other test can take the port in the meantime (a listener bound and
/// dropped frees it for anyone).
pub fn refusing(ip: &str) -> (socket2::Socket, SocketAddr) {
    let addr: SocketAddr = format!("{}:0", bracketed(ip)).parse().unwrap();
    refusing_at(addr).unwrap()
}

/// [`refusing`] at a given address, or the error binding it.
pub fn refusing_at(addr: SocketAddr) -> std::io::Result<(socket2::Socket, SocketAddr)> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.bind(&addr.into())?;
    let bound = socket.local_addr()?.as_socket().unwrap();
    Ok((socket, bound))
}

fn bracketed(ip: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_owned()
    }
}

/// Starts `command` with its stderr read line by line into a channel (JSON lines parsed,
/// others as strings), drained continuously so the process never blocks on a full pipe.
pub fn spawn_logged(command: Command) -> (Child, mpsc::UnboundedReceiver<Value>) {
    spawn_logged_from(command, Stdio::null())
}

/// [`spawn_logged`], with `stdin` as the process's standard input.
pub fn spawn_logged_from(
    mut command: Command,
    stdin: Stdio,
) -> (Child, mpsc::UnboundedReceiver<Value>) {
    let mut child = command
        .stdin(stdin)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, logs) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let value = serde_json::from_str(&line).unwrap_or(Value::String(line));
            if tx.send(value).is_err() {
                break;
            }
        }
    });
    (child, logs)
}

/// The next line, or a failure naming what went wrong: the process ended, or went quiet.
pub async fn next_line(logs: &mut mpsc::UnboundedReceiver<Value>) -> Value {
    match tokio::time::timeout(PATIENCE, logs.recv()).await {
        Ok(Some(line)) => {
            // Shown only for a failing test: the relay's side of the story.
            eprintln!("relay: {line}");
            line
        }
        Ok(None) => panic!("the relay exited (its stderr closed)"),
        Err(_) => panic!("no log line from the relay within {PATIENCE:?}"),
    }
}

/// A loopback address for one test alone (127.TAG.x.y from the test's process id, so
/// concurrent test binaries differ) and `n` ports the kernel just chose on it. For tools
/// that cannot bind port 0 and report the port (HAProxy, systemd-socket-activate): nothing
/// else binds this address, so the ports stay free until the tool takes them.
pub fn fresh_loopback(tag: u8, n: usize) -> (String, Vec<u16>) {
    let pid = std::process::id();
    let ip = format!("127.{tag}.{}.{}", (pid >> 8) & 0xff, (pid & 0xff).max(1));
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind((ip.as_str(), 0)).unwrap())
        .collect();
    let ports = held
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    (ip, ports)
}

/// A child process killed, with its whole process group, when the test is done with it,
/// passing or failing: tools like systemd-socket-activate fork the program they run.
pub struct Group(pub Child);

impl Group {
    /// Makes `command` start as the leader of a new process group.
    pub fn lead(command: &mut Command) -> &mut Command {
        use std::os::unix::process::CommandExt;
        command.process_group(0)
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

/// A GET to the admin endpoint: the status and the body.
pub async fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

/// A config allowing `names`, each pinned to `upstream`.
pub fn pinned_config(names: &[&str], upstream: SocketAddr) -> Value {
    let allow: Vec<Value> = names
        .iter()
        .map(|n| serde_json::json!({"name": n, "upstream": upstream.to_string()}))
        .collect();
    serde_json::json!({ "allow": allow, "timeouts": {"hello_ms": 5000, "connect_ms": 5000, "drain_s": 5} })
}

/// A plain TCP upstream on loopback. The std half answers "was anything accepted?" without
/// racing the event loop: a connection the relay made is already in the kernel's backlog.
pub struct Upstream {
    pub addr: SocketAddr,
    probe: std::net::TcpListener,
    listener: tokio::net::TcpListener,
}

impl Upstream {
    pub async fn bind(ip: &str) -> Upstream {
        Upstream::on(std::net::TcpListener::bind((ip, 0)).unwrap())
    }

    /// An upstream on a socket already bound (in a network namespace of a test's own).
    pub fn on(probe: std::net::TcpListener) -> Upstream {
        probe.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(probe.try_clone().unwrap()).unwrap();
        Upstream {
            addr: probe.local_addr().unwrap(),
            probe,
            listener,
        }
    }

    pub async fn accept(&self) -> TcpStream {
        tokio::time::timeout(PATIENCE, self.listener.accept())
            .await
            .expect("upstream got no connection")
            .unwrap()
            .0
    }

    /// Accepts one connection and returns everything it sent until FIN.
    pub async fn receive_all(&self) -> Vec<u8> {
        let mut conn = self.accept().await;
        let mut got = Vec::new();
        conn.read_to_end(&mut got).await.unwrap();
        got
    }

    /// True when no connection reached this upstream.
    pub fn untouched(&self) -> bool {
        matches!(self.probe.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

/// Sends `bytes` and a FIN.
pub async fn send_and_close(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(bytes).await.unwrap();
    conn.shutdown().await.unwrap();
    conn
}

/// A DNS server on loopback answering A/AAAA from a table; names not in it get NXDOMAIN.
pub async fn dns_server(table: Vec<(&'static str, Vec<std::net::IpAddr>)>) -> SocketAddr {
    recording_dns_server(table).await.0
}

/// Every query a [`recording_dns_server`] was asked, as `NAME TYPE` (`a.example.com AAAA`).
pub type Asked = Arc<std::sync::Mutex<Vec<String>>>;

/// [`dns_server`], also recording every query it is asked.
pub async fn recording_dns_server(
    table: Vec<(&'static str, Vec<std::net::IpAddr>)>,
) -> (SocketAddr, Asked) {
    use hickory_proto::op::{Message, ResponseCode};
    use hickory_proto::rr::rdata::{A, AAAA, SOA};
    use hickory_proto::rr::{Name, RData, Record, RecordType};
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let asked = Asked::default();
    let recording = asked.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
            reply.metadata.recursion_desired = query.metadata.recursion_desired;
            reply.metadata.recursion_available = true;
            reply.metadata.authoritative = true;
            for q in &query.queries {
                recording.lock().unwrap().push(format!(
                    "{} {}",
                    q.name()
                        .to_ascii()
                        .trim_end_matches('.')
                        .to_ascii_lowercase(),
                    q.query_type()
                ));
                reply.add_query(q.clone());
                let asked = q
                    .name()
                    .to_ascii()
                    .trim_end_matches('.')
                    .to_ascii_lowercase();
                match table.iter().find(|(name, _)| *name == asked) {
                    None => reply.metadata.response_code = ResponseCode::NXDomain,
                    Some((_, ips)) => {
                        for ip in ips {
                            let rdata = match (ip, q.query_type()) {
                                (std::net::IpAddr::V4(v4), RecordType::A) => RData::A(A(*v4)),
                                (std::net::IpAddr::V6(v6), RecordType::AAAA) => {
                                    RData::AAAA(AAAA(*v6))
                                }
                                _ => continue,
                            };
                            reply.add_answer(Record::from_rdata(q.name().clone(), 60, rdata));
                        }
                    }
                }
            }
            // As a real server does (RFC 2308): a negative answer carries the zone's SOA,
            // whose minimum is how long the "no such record" may be cached.
            if reply.answers.is_empty() {
                let zone = Name::from_ascii("relay.test.").unwrap();
                let admin = Name::from_ascii("hostmaster.relay.test.").unwrap();
                let soa = SOA::new(zone.clone(), admin, 1, 60, 60, 60, 60);
                reply.add_authority(Record::from_rdata(zone, 60, RData::SOA(soa)));
            }
            let _ = socket.send_to(&reply.to_vec().unwrap(), from).await;
        }
    });
    (addr, asked)
}

/// Asks `server` for `name`'s records of type `kind` (A or AAAA) over UDP; the addresses in
/// the answer.
pub async fn dns_query(server: SocketAddr, name: &str, kind: &str) -> Vec<std::net::IpAddr> {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RData, RecordType};
    let kind = match kind {
        "A" => RecordType::A,
        _ => RecordType::AAAA,
    };
    let mut message = Message::query();
    message.metadata.id = 7;
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(
        Name::from_ascii(format!("{name}.")).unwrap(),
        kind,
    ));
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket
        .send_to(&message.to_vec().unwrap(), server)
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(PATIENCE, socket.recv_from(&mut buf))
        .await
        .expect("no DNS answer")
        .unwrap();
    let reply = Message::from_vec(&buf[..n]).unwrap();
    reply
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(a) => Some(std::net::IpAddr::V4(a.0)),
            RData::AAAA(aaaa) => Some(std::net::IpAddr::V6(aaaa.0)),
            _ => None,
        })
        .collect()
}
