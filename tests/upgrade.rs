//! Restarts and upgrades under load with nothing refused: the new relay takes the old one's
//! listening sockets over `--upgrade-socket`, or the sockets stay with whoever started the
//! relay (socket activation, as systemd does it) while one relay stops and the next starts.

mod common;

use common::traffic::{BIG_REQUEST, Load, exchange, serve_upstream, steady_load};
use common::{RelayProcess, Upstream, http_get, pinned_config, pki};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const NAME: &str = "a.example.com";
const CLIENT: &str = "127.0.0.1";

/// An upstream for NAME, a config pinning NAME to it, and a way to start long transfers.
struct Stage {
    pki: Arc<common::Pki>,
    config: Value,
    big_started: mpsc::UnboundedReceiver<()>,
}

async fn stage() -> Stage {
    let pki = Arc::new(pki(&[NAME]));
    let upstream = Upstream::bind("127.0.0.1").await;
    let mut config = pinned_config(&[NAME], upstream.addr);
    config["timeouts"]["drain_s"] = 30.into();
    let serving = pki.clone();
    let (big, big_started) = mpsc::unbounded_channel();
    tokio::spawn(async move { serve_upstream(upstream, &serving, big).await });
    Stage {
        pki,
        config,
        big_started,
    }
}

impl Stage {
    /// `n` long transfers through `relay`, returned once all are in flight.
    async fn transfers(&mut self, relay: SocketAddr, n: usize) -> Vec<JoinHandle<bool>> {
        let running = (0..n)
            .map(|_| {
                let pki = self.pki.clone();
                tokio::spawn(async move { exchange(relay, CLIENT, NAME, &pki, BIG_REQUEST).await })
            })
            .collect();
        for _ in 0..n {
            self.big_started.recv().await.unwrap();
        }
        running
    }
}

/// A relay pinning NAME to `upstream` with `config` changed by `edit`, listening on a
/// loopback port and offering its sockets at `socket`.
async fn with_upgrade_socket(
    upstream: &Upstream,
    socket: &std::path::Path,
    edit: impl FnOnce(&mut Value),
) -> RelayProcess {
    let mut config = pinned_config(&[NAME], upstream.addr);
    edit(&mut config);
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--upgrade-socket",
        socket.to_str().unwrap(),
    ];
    RelayProcess::start_with(config, &args).await
}

/// Waits until `relay` has forwarded a connection.
async fn forwards(relay: &mut RelayProcess) {
    while relay.next_connection().await["outcome"] != "forwarded" {}
}

/// Stops the load, and checks nothing failed and every transfer arrived intact.
async fn settle(
    what: &str,
    done: CancellationToken,
    load: (Arc<Load>, JoinHandle<()>),
    transfers: Vec<JoinHandle<bool>>,
) {
    let count = transfers.len();
    let mut intact = 0;
    for transfer in transfers {
        intact += usize::from(transfer.await.unwrap());
    }
    done.cancel();
    load.1.await.unwrap();
    let (attempted, failed) = load.0.counts();
    eprintln!(
        "{what}: {attempted} new connections attempted, {failed} failed; {intact} of {count} long transfers intact"
    );
    assert_eq!((failed, intact), (0, count), "{attempted} attempted");
    assert!(attempted > 50, "the load ran: {attempted}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_over_the_upgrade_socket_refuse_nothing_and_finish_every_transfer() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let mut stage = stage().await;
        stage.config["admin"] = "127.0.0.1:0".into();
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("upgrade.sock");
        let socket = socket.to_str().unwrap();
        let args = ["--listen", "127.0.0.1:0", "--upgrade-socket", socket];
        let mut old = RelayProcess::start_with(stage.config.clone(), &args).await;
        let addr = old.addr();
        let admin = old.next_message("admin listening").await["addr"].clone();

        let done = CancellationToken::new();
        let load = steady_load(addr, CLIENT, NAME, stage.pki.clone(), done.clone());
        let transfers = stage.transfers(addr, 2).await;
        forwards(&mut old).await;

        // A new relay that cannot serve what it is handed changes nothing.
        let failing = ["--listen", "127.0.0.2:0", "--upgrade-socket", socket];
        let mut cmd = Command::new(crate::common::binary());
        let config_path = old.config_path();
        cmd.args(["run", "--config"])
            .arg(&config_path)
            .args(failing);
        let failed = cmd.stderr(Stdio::piped()).output().unwrap();
        assert!(!failed.status.success());
        let said = String::from_utf8_lossy(&failed.stderr);
        assert!(said.contains("no listen entry claims it"), "{said}");
        old.next_message("upgrade: the new relay did not start; still serving")
            .await;

        // Two upgrades in a row: the second proves the first new relay took over the path.
        for round in 1..=2 {
            let mut new = RelayProcess::start_with(stage.config.clone(), &args).await;
            assert_eq!(new.addr(), addr, "round {round}");
            assert_eq!(new.next_message("admin listening").await["addr"], admin);
            old.next_message("handed over to the new relay: no longer accepting")
                .await;
            forwards(&mut new).await;
            let (status, body) = http_get(admin.as_str().unwrap(), "/readyz").await;
            assert_eq!(
                (status, body.as_str()),
                (200, "ready\n"),
                "the new relay answers"
            );
            // The old relay exits by itself once its transfers are done.
            assert!(old.wait().await.success(), "round {round}");
            old = new;
        }
        settle("upgrades", done, load, transfers).await;
    })
    .await
    .expect("upgrade test did not finish within 120 s");
}

/// As systemd restarts a socket-activated service: the listening socket stays open in the
/// manager (here, the test); the old relay stops and drains, then the new one starts on the
/// same socket. Connections that arrive in between wait in the kernel's queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_activated_restart_refuses_nothing_and_finishes_every_transfer() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let mut stage = stage().await;
        stage.config["listen"] = json!([{ "addr": "127.0.0.1:443", "name": "tls" }]);
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        // What systemd does after fork: the socket as fd 3, LISTEN_PID the relay's own.
        let activated = || {
            let mut launcher = Command::new("sh");
            launcher
                .args([
                    "-c",
                    "exec 3<&0 </dev/null; LISTEN_PID=$$ exec \"$@\"",
                    "sh",
                ])
                .arg(crate::common::binary())
                .env("LISTEN_FDS", "1")
                .env("LISTEN_FDNAMES", "tls");
            let socket = std::os::fd::OwnedFd::from(held.try_clone().unwrap());
            (launcher, Stdio::from(socket))
        };
        let (launcher, socket) = activated();
        let mut old = RelayProcess::spawn_from(launcher, socket, stage.config.clone(), &[]).await;
        assert_eq!(old.addr(), addr);

        let done = CancellationToken::new();
        let load = steady_load(addr, CLIENT, NAME, stage.pki.clone(), done.clone());
        let transfers = stage.transfers(addr, 2).await;
        forwards(&mut old).await;
        old.signal("TERM");
        assert!(old.wait().await.success());
        let (launcher, socket) = activated();
        let mut new = RelayProcess::spawn_from(launcher, socket, stage.config.clone(), &[]).await;
        assert_eq!(new.addr(), addr);
        forwards(&mut new).await;
        settle("socket-activated restart", done, load, transfers).await;
    })
    .await
    .expect("restart test did not finish within 120 s");
}

/// A regression: the upgrade socket's copies of the listeners kept them open after SIGTERM,
/// so a draining relay still completed handshakes it would never serve.
#[tokio::test]
async fn a_relay_stopped_by_a_signal_closes_its_listeners_with_an_upgrade_socket_too() {
    common::within(async {
        let upstream = Upstream::bind("127.0.0.1").await;
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("upgrade.sock");
        let mut relay = with_upgrade_socket(&upstream, &socket, |config| {
            config["timeouts"]["drain_s"] = 30.into();
        })
        .await;
        let _live = common::send_and_close(relay.addr(), &common::hellogen::hello_for(NAME)).await;
        let _upstream_side = upstream.accept().await;
        relay.signal("TERM");
        relay.next_message("draining").await;
        assert!(tokio::net::TcpStream::connect(relay.addr()).await.is_err());
    })
    .await
}

/// `--upgrade-socket` in a directory nobody made: the relay makes it (owner only) and
/// serves the socket there; a clean stop takes the socket file away.
#[tokio::test]
async fn the_upgrade_socket_gets_its_directory_and_is_gone_after_a_clean_stop() {
    common::within(async {
        use std::os::unix::fs::PermissionsExt;
        let upstream = Upstream::bind("127.0.0.1").await;
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let socket = run.join("upgrade.sock");
        let mut relay = with_upgrade_socket(&upstream, &socket, |_| {}).await;
        let mode = std::fs::metadata(&run).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{mode:o}");
        relay
            .next_message("upgrade: offering the sockets to the next relay")
            .await;
        assert!(socket.exists());
        relay.signal("TERM");
        assert!(relay.wait().await.success());
        assert!(!socket.exists(), "the socket file outlived its relay");
    })
    .await
}

/// An upgrade whose old relay was started without the upgrade socket: the address is
/// taken and nobody offered it, which the new relay says, instead of blaming "another
/// process".
#[tokio::test]
async fn an_upgrade_from_a_relay_without_the_socket_says_so() {
    common::within(async {
        let upstream = Upstream::bind("127.0.0.1").await;
        let config = pinned_config(&[NAME], upstream.addr);
        let old = RelayProcess::start(config.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let rules = dir.path().join("rules.json");
        std::fs::write(&rules, config.to_string()).unwrap();
        let socket = dir.path().join("upgrade.sock");
        let out = Command::new(common::binary())
            .args(["run", "--config"])
            .arg(&rules)
            .args(["--listen", &old.addr().to_string(), "--upgrade-socket"])
            .arg(&socket)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{said}");
        assert!(
            said.contains("no relay offered its sockets at")
                && said.contains("started without --upgrade-socket"),
            "{said}"
        );
        assert!(!said.contains("another process holds it"), "{said}");
    })
    .await
}

/// A regression: a new relay that took the sockets and then hung kept the old relay's
/// wait for its answer (a blocking read of up to a minute) alive after a stop signal, and
/// the old process lingered after logging `stopped` until that read gave up.
#[tokio::test]
async fn a_relay_stopped_while_a_new_one_hangs_mid_upgrade_exits() {
    common::within(async {
        let upstream = Upstream::bind("127.0.0.1").await;
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("upgrade.sock");
        let mut relay = with_upgrade_socket(&upstream, &socket, |_| {}).await;
        relay
            .next_message("upgrade: offering the sockets to the next relay")
            .await;
        let hung = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        relay
            .next_message("upgrade: sockets handed to a new relay; waiting for it to serve")
            .await;
        relay.signal("TERM");
        relay.next_message("stopped").await;
        assert!(relay.wait().await.success());
        drop(hung);
    })
    .await
}
