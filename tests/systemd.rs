//! systemd, done the way systemd expects: the notify protocol as a service manager sees it,
//! and socket activation through systemd's own `systemd-socket-activate`.

mod common;

use common::hellogen::hello_for;
use common::{PATIENCE, RelayProcess, Upstream, next_line, pinned_config, spawn_logged, within};
use std::process::Command;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixDatagram};

const NAME: &str = "a.example.com";

/// The service manager's end of `NOTIFY_SOCKET`.
struct Manager {
    socket: UnixDatagram,
    _dir: tempfile::TempDir,
}

impl Manager {
    fn new() -> Manager {
        let dir = tempfile::tempdir().unwrap();
        let socket = UnixDatagram::bind(dir.path().join("notify")).unwrap();
        Manager { socket, _dir: dir }
    }

    fn path(&self) -> std::path::PathBuf {
        self._dir.path().join("notify")
    }

    /// The next message that has a line starting with `line`; earlier ones are skipped.
    async fn next_with(&self, line: &str) -> String {
        let mut buf = vec![0u8; 4096];
        loop {
            let n = tokio::time::timeout(PATIENCE, self.socket.recv(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("no {line:?} from the relay"))
                .unwrap();
            let message = String::from_utf8(buf[..n].to_vec()).unwrap();
            eprintln!("notify: {message:?}");
            if message.lines().any(|l| l.starts_with(line)) {
                return message;
            }
        }
    }
}

#[tokio::test]
async fn the_notify_protocol_follows_ready_reload_watchdog_and_stop() {
    within(async {
        let upstream = Upstream::bind("127.0.0.1").await;
        let manager = Manager::new();
        let mut launcher = Command::new(crate::common::binary());
        launcher
            .env("NOTIFY_SOCKET", manager.path())
            .env("WATCHDOG_USEC", "200000");
        let mut relay = RelayProcess::spawn(
            launcher,
            pinned_config(&[NAME], upstream.addr),
            &["--listen", "127.0.0.1:0"],
        )
        .await;
        let ready = manager.next_with("READY=1").await;
        assert!(
            ready.contains("STATUS=0 connections, 1 rules; ready"),
            "{ready}"
        );
        assert!(manager.next_with("WATCHDOG=1").await.contains("STATUS="));

        relay.signal("HUP");
        let reloading = manager.next_with("RELOADING=1").await;
        let usec = reloading
            .lines()
            .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
            .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {reloading:?}"));
        assert!(usec.parse::<u64>().unwrap() > 0);
        manager.next_with("READY=1").await;
        relay.next_message("config reloaded").await;

        relay.signal("TERM");
        let stopping = manager.next_with("STOPPING=1").await;
        assert!(stopping.contains("shutting down"), "{stopping}");
        assert!(relay.wait().await.success());
    })
    .await
}

#[tokio::test]
async fn socket_activation_serves_the_handed_over_socket_and_keeps_early_connections() {
    if !common::available("systemd-socket-activate") {
        return;
    }
    within(async {
        let upstream = Upstream::bind("127.0.0.1").await;
        // systemd-socket-activate cannot take port 0: see fresh_loopback.
        let (ip, ports) = common::fresh_loopback(100, 1);
        let port = ports[0];
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("rules.json");
        let mut config = pinned_config(&[NAME], upstream.addr);
        // The entry takes the socket by name; its address is what an operator would write.
        config["listen"] = serde_json::json!([{ "addr": format!("{ip}:{port}"), "name": "tls" }]);
        std::fs::write(&config_path, config.to_string()).unwrap();
        let mut launcher = Command::new("systemd-socket-activate");
        launcher
            .args([
                "-l",
                &format!("{ip}:{port}"),
                "--fdname=tls",
                "-E",
                "RUST_LOG=info",
            ])
            .arg(crate::common::binary())
            .args(["run", "--log-format", "json", "--config"])
            .arg(&config_path);
        // Its own process group, ended as a whole: systemd-socket-activate forks the relay.
        common::Group::lead(&mut launcher);
        let (child, mut logs) = spawn_logged(launcher);
        let _relay = common::Group(child);
        let line = next_line(&mut logs).await;
        assert!(line.as_str().unwrap().starts_with("Listening on"), "{line}");

        // The relay is not running yet: systemd holds the socket, and this connection
        // waits in the kernel's queue until the relay starts and takes it.
        let hello = hello_for(NAME);
        let mut client = TcpStream::connect(format!("{ip}:{port}")).await.unwrap();
        client.write_all(&hello).await.unwrap();
        let handed = loop {
            // systemd-socket-activate's own lines ("Communication attempt on fd 3.") first.
            let line = next_line(&mut logs).await;
            if line.is_object() {
                break line;
            }
        };
        assert_eq!(handed["message"], "using a socket handed over", "{handed}");
        assert_eq!(handed["name"], "tls");
        let mut conn = upstream.accept().await;
        let mut replayed = vec![0u8; hello.len()];
        conn.read_exact(&mut replayed).await.unwrap();
        assert_eq!(replayed, hello);
        conn.write_all(b"reply").await.unwrap();
        let mut got = [0u8; 5];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"reply");
    })
    .await
}
