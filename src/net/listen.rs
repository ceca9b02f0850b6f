//! Listening sockets and the options every relay socket gets.

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;

/// A listener that could not be opened, with what to do about it.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {cause}{hint}")]
pub struct BindError {
    /// The address.
    pub addr: SocketAddr,
    /// What the OS said. Deliberately not the error's `source`: the message already says
    /// it, and a chain printer would say it twice.
    pub cause: io::Error,
    hint: &'static str,
}

/// Opens a listening socket. IPv6 listeners are IPv6-only (as nginx does), so `0.0.0.0:443`
/// and `[::]:443` can both be listed.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    let open = || -> io::Result<TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.set_nonblocking(true)?;
        // Accepted sockets are cloned from the listener, options included: set once here,
        // these cost nothing per connection.
        tune(&socket);
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        TcpListener::from_std(socket.into())
    };
    open().map_err(|cause| {
        let hint = match cause.kind() {
            io::ErrorKind::PermissionDenied => {
                "; ports below 1024 need privilege: run `sudo setcap cap_net_bind_service=+ep $(command -v snirelay)`, or pick another port with --listen"
            }
            io::ErrorKind::AddrInUse => {
                "; another process holds it (see `ss -ltnp`): stop it, or pick another address with --listen"
            }
            io::ErrorKind::AddrNotAvailable => {
                "; no interface has this address: fix the IP, or listen on 0.0.0.0"
            }
            _ => "",
        };
        BindError { addr, cause, hint }
    })
}

/// Small writes go out at once (handshakes are latency-bound), and dead peers are noticed.
pub fn tune<'s>(socket: impl Into<SockRef<'s>>) {
    let sock = socket.into();
    let _ = sock.set_tcp_nodelay(true);
    let keepalive = TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10))
        .with_retries(6);
    let _ = sock.set_tcp_keepalive(&keepalive);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpStream;

    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay_and_keepalive_from_the_listener() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let sock = SockRef::from(&accepted);
        assert!(sock.tcp_nodelay().unwrap());
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(60));
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(10)
        );
    }
}
