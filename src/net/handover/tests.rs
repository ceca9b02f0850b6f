use super::*;
use std::os::fd::AsFd;

#[test]
fn the_socket_list_reads_back_as_written() {
    let roles = vec![
        Role::Listen {
            addr: "0.0.0.0:443".parse().unwrap(),
            name: String::new(),
        },
        Role::Listen {
            addr: "[::1]:0".parse().unwrap(),
            name: "balancer".to_owned(),
        },
        Role::Admin {
            addr: "127.0.0.1:9090".parse().unwrap(),
        },
    ];
    assert_eq!(decode(&encode(&roles)), Ok((2, roles.clone())));
    assert_eq!(decode(&encode(&[])), Ok((2, vec![])));
    // An older relay's list: its sockets are taken, its connections are not offered.
    let older = encode(&roles).replacen(GREETING, GREETING_1, 1);
    assert_eq!(decode(&older), Ok((1, roles)));
    assert!(
        decode("HTTP/1.1 200 OK\n")
            .unwrap_err()
            .contains("not a handover")
    );
    let unknown = format!("{GREETING}\nudp 0.0.0.0:53\n");
    assert!(
        decode(&unknown)
            .unwrap_err()
            .contains("unknown socket line")
    );
    let bad = format!("{GREETING}\nlisten here\n");
    assert!(decode(&bad).unwrap_err().contains("bad address"));
}

#[test]
fn no_relay_at_the_path_means_a_fresh_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("upgrade.sock");
    assert!(take(&path).unwrap().is_none());
    // A file left by a relay that was killed: nobody listens on it.
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    assert!(take(&path).unwrap().is_none());
}

#[test]
fn a_peer_that_is_not_a_relay_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("upgrade.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let talker = std::thread::spawn(move || {
        let (mut peer, _) = listener.accept().unwrap();
        peer.write_all(b"hello\n").unwrap();
    });
    let err = take(&path).err().unwrap();
    assert!(
        err.to_string().contains("expected the list of sockets"),
        "{err}"
    );
    talker.join().unwrap();
}

/// The whole exchange, in one process: the sockets arrive as the same kernel sockets (a
/// connection made to the old one's address is accepted on the new descriptor), the old
/// side learns the new one serves, and the new one ends up owning the path.
#[tokio::test]
async fn the_new_relay_gets_the_same_sockets_then_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("upgrade.sock");
    let relay = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let configured: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let offered = listen_at(&path).unwrap();
    let (relay_fd, admin_fd) = (relay.as_fd(), admin.as_fd());
    let old = async {
        let sockets = [
            (
                Role::Listen {
                    addr: configured,
                    name: "main".to_owned(),
                },
                relay_fd,
            ),
            (Role::Admin { addr: configured }, admin_fd),
        ];
        offer(&offered, &sockets).await.bye();
    };
    let taking = path.clone();
    let new = tokio::task::spawn_blocking(move || {
        let (sockets, predecessor) = take(&taking).unwrap().unwrap();
        predecessor.release().unwrap();
        (sockets, listen_at(&taking).unwrap())
    });
    let ((sockets, next), ()) = tokio::join!(async { new.await.unwrap() }, old);
    let roles: Vec<&Role> = sockets.iter().map(|(role, _)| role).collect();
    assert_eq!(
        roles,
        [
            &Role::Listen {
                addr: configured,
                name: "main".to_owned()
            },
            &Role::Admin { addr: configured }
        ]
    );
    let (_, fd) = sockets.into_iter().next().unwrap();
    let inherited = std::net::TcpListener::from(fd);
    assert_eq!(inherited.local_addr().unwrap(), relay.local_addr().unwrap());
    drop(relay);
    let _client = std::net::TcpStream::connect(inherited.local_addr().unwrap()).unwrap();
    inherited.accept().unwrap();
    // The path now leads to the new relay's upgrade socket.
    drop(offered);
    let _next_relay = UnixStream::connect(&path).unwrap();
    next.accept().await.unwrap();
}
