//! Listening sockets, bound here or handed over by systemd, and the options every relay
//! socket gets either way.

use crate::config::Listener;
use crate::net::transport::{self, CongestionError};
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
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
    hint: String,
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
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        TcpListener::from_std(socket.into())
    };
    open().map_err(|cause| {
        let hint = match cause.kind() {
            io::ErrorKind::PermissionDenied => {
                // The binary that is running, so the command works as printed.
                let binary = std::env::current_exe()
                    .map_or_else(|_| "$(command -v snirelay)".to_owned(), |p| p.display().to_string());
                format!(
                    "; ports below 1024 need privilege: run `sudo setcap cap_net_bind_service=+ep {binary}`, or pick another port with --listen"
                )
            }
            io::ErrorKind::AddrInUse => {
                "; another process holds it (see `ss -ltnp`): stop it, or pick another address with --listen".to_owned()
            }
            io::ErrorKind::AddrNotAvailable => {
                "; no interface has this address: fix the IP, or listen on 0.0.0.0".to_owned()
            }
            _ => String::new(),
        };
        BindError { addr, cause, hint }
    })
}

/// A socket handed over by systemd that cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// Reading `LISTEN_FDS` failed.
    #[error("cannot take the sockets systemd handed over: {0}")]
    Environment(io::Error),
    /// A descriptor that is not a listening TCP socket.
    #[error(
        "systemd handed over {name:?}, which is not a listening TCP socket ({why}); use ListenStream= in the .socket unit"
    )]
    NotTcpListener {
        /// Its FileDescriptorName=.
        name: String,
        /// What it is instead.
        why: String,
    },
    /// A socket no configured listener claims.
    #[error("{0}")]
    Unclaimed(String),
}

/// A listening socket handed over by systemd or by the relay this one upgrades, ready to
/// serve.
pub struct Handed {
    /// The socket, prepared as [`bind`] prepares its own.
    pub socket: std::net::TcpListener,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The listen entry's `name` it is for: systemd's `FileDescriptorName=`, or the name
    /// the previous relay knew it by.
    pub name: String,
    /// The `addr` of the listen entry it is for, when not where it listens: the previous
    /// relay's entry, whose port may be 0.
    pub entry: Option<SocketAddr>,
}

impl Handed {
    /// A socket the previous relay handed over for its listen entry `entry`.
    pub fn inherited(fd: OwnedFd, entry: SocketAddr, name: String) -> Result<Handed, String> {
        let (socket, addr) = prepare(fd)?;
        Ok(Handed {
            socket,
            addr,
            name,
            entry: Some(entry),
        })
    }
}

/// The listening sockets systemd handed over (socket activation). Empty when the relay was
/// not socket-activated.
pub fn activated() -> Result<Vec<Handed>, ActivationError> {
    #[cfg(target_os = "linux")]
    let fds = crate::net::sys::take_listen_fds().map_err(ActivationError::Environment)?;
    #[cfg(not(target_os = "linux"))]
    let fds: Vec<(OwnedFd, String)> = Vec::new();
    fds.into_iter()
        .map(|(fd, name)| match prepare(fd) {
            Ok((socket, addr)) => Ok(Handed {
                socket,
                addr,
                name,
                entry: None,
            }),
            Err(why) => Err(ActivationError::NotTcpListener { name, why }),
        })
        .collect()
}

/// Checks a handed-over descriptor is a listening TCP socket and makes it non-blocking, as
/// [`bind`] makes its own. Returns it with its address.
pub fn prepare(fd: OwnedFd) -> Result<(std::net::TcpListener, SocketAddr), String> {
    let socket = Socket::from(fd);
    let os = |e: io::Error| e.to_string();
    if socket.r#type().map_err(os)? != Type::STREAM {
        return Err("not a stream socket".to_owned());
    }
    if !socket.is_listener().map_err(os)? {
        return Err("not listening".to_owned());
    }
    let Some(addr) = socket.local_addr().map_err(os)?.as_socket() else {
        return Err("not an IP socket".to_owned());
    };
    socket.set_nonblocking(true).map_err(os)?;
    Ok((socket.into(), addr))
}

/// Which configured listener each handed-over socket serves: the one whose `name` is the
/// socket's name, else the one with the socket's entry address. Returns the
/// configured listener's index for each socket, in order; configured listeners no socket
/// claims are for the relay to bind itself. Pure.
pub fn claim(handed: &[(SocketAddr, &str)], listen: &[Listener]) -> Result<Vec<usize>, String> {
    let mut claimed: Vec<usize> = Vec::with_capacity(handed.len());
    for (addr, name) in handed {
        let index = listen
            .iter()
            .position(|l| l.name.as_deref() == Some(*name))
            .or_else(|| listen.iter().position(|l| l.name.is_none() && l.addr == *addr))
            .ok_or_else(|| {
                let fix = if name.is_empty() {
                    format!("add {{\"addr\": \"{addr}\"}} to listen")
                } else {
                    format!(
                        "add {{\"addr\": \"{addr}\"}} to listen, or give an entry \"name\": \"{name}\""
                    )
                };
                format!(
                    "a socket on {addr} named {name:?} was handed over, and no listen entry claims it: {fix}"
                )
            })?;
        if claimed.contains(&index) {
            return Err(format!(
                "two sockets were handed over for the listen entry {}: give each its own name (FileDescriptorName= under systemd)",
                listen[index]
            ));
        }
        claimed.push(index);
    }
    Ok(claimed)
}

/// A listener that could not be opened either way.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A handed-over socket is unusable or unclaimed.
    #[error(transparent)]
    Activation(#[from] ActivationError),
    /// Binding failed.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The runtime would not take a socket.
    #[error("cannot register a listener with the runtime: {0}")]
    Register(io::Error),
    /// A listener's `tcp` names a congestion control the kernel will not set.
    #[error("listener {addr}: {cause}")]
    Congestion {
        /// The listen entry.
        addr: SocketAddr,
        /// Why.
        cause: CongestionError,
    },
}

/// Every configured listener, each with its settings: the socket `handed` over for it where
/// there is one (by systemd, or by the relay this one upgrades), bound here otherwise, with
/// the entry's `tcp` set on it either way (accepted sockets inherit it: set once here, it
/// costs nothing per connection). Where the default congestion control is refused, the
/// kernel's stays, said once. Must run inside the runtime.
pub fn open(
    listen: &[Listener],
    handed: Vec<Handed>,
) -> Result<Vec<(TcpListener, Listener)>, OpenError> {
    let named: Vec<(SocketAddr, &str)> = handed
        .iter()
        .map(|h| (h.entry.unwrap_or(h.addr), h.name.as_str()))
        .collect();
    let claimed = claim(&named, listen).map_err(ActivationError::Unclaimed)?;
    let mut open = Vec::with_capacity(listen.len());
    for (handed, index) in handed.into_iter().zip(&claimed) {
        tracing::info!(addr = %handed.addr, name = handed.name, "using a socket handed over");
        let socket = TcpListener::from_std(handed.socket).map_err(OpenError::Register)?;
        open.push((socket, listen[*index].clone()));
    }
    for (index, listener) in listen.iter().enumerate() {
        if !claimed.contains(&index) {
            open.push((bind(listener.addr)?, listener.clone()));
        }
    }
    let mut refused = None;
    for (socket, entry) in &open {
        let cause = |cause| OpenError::Congestion {
            addr: entry.addr,
            cause,
        };
        if let Some(default) = transport::apply_to_listener(socket, &entry.tcp).map_err(cause)? {
            refused = Some(default);
        }
    }
    if let Some(refused) = refused {
        tracing::warn!(
            congestion = %refused.name,
            error = %refused,
            "client-facing sockets keep the kernel's default congestion control; `snirelay doctor` says how to offer the relay's default"
        );
    }
    Ok(open)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpStream;

    fn listener(addr: &str, name: Option<&str>) -> Listener {
        Listener {
            name: name.map(str::to_owned),
            ..Listener::plain(addr.parse().unwrap())
        }
    }

    #[test]
    fn handed_over_sockets_are_claimed_by_name_then_by_address() {
        let listen = [
            listener("0.0.0.0:443", None),
            listener("10.20.0.5:8443", Some("balancer")),
            listener("[::]:443", None),
        ];
        let any: SocketAddr = "0.0.0.0:443".parse().unwrap();
        let other: SocketAddr = "10.20.0.5:40000".parse().unwrap();
        assert_eq!(
            claim(&[(other, "balancer"), (any, "snirelay")], &listen),
            Ok(vec![1, 0])
        );
        // The third entry is not handed over: the relay binds it itself.
        let err = claim(&[(other, "snirelay")], &listen).unwrap_err();
        assert!(
            err.contains("10.20.0.5:40000") && err.contains("\"name\": \"snirelay\""),
            "{err}"
        );
        // A socket without a name: no advice to give an entry an empty one.
        let err = claim(&[(other, "")], &listen).unwrap_err();
        assert!(!err.contains("\"name\": \"\""), "{err}");
        let err = claim(&[(any, "x"), (any, "y")], &listen).unwrap_err();
        assert!(err.contains("two sockets"), "{err}");
    }

    /// A connection accepted on `listener`, as socket2 sees it.
    async fn accepted(listener: &TcpListener) -> TcpStream {
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        listener.accept().await.unwrap().0
    }

    #[tokio::test]
    async fn handed_over_and_bound_listeners_get_the_same_options() {
        // A plain listener, as systemd makes it: no NODELAY, no keepalive.
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = plain.local_addr().unwrap();
        let (prepared, at) = prepare(OwnedFd::from(plain)).unwrap();
        assert_eq!(at, addr);
        let handed = Handed {
            socket: prepared,
            addr,
            name: String::new(),
            entry: None,
        };
        let listen = [
            Listener::plain(addr),
            Listener::plain("127.0.0.1:0".parse().unwrap()),
        ];
        let open = open(&listen, vec![handed]).unwrap();
        for (listener, _) in &open {
            let socket = accepted(listener).await;
            let socket = socket2::SockRef::from(&socket);
            assert!(socket.tcp_nodelay().unwrap() && socket.keepalive().unwrap());
            assert_eq!(
                socket.tcp_keepalive_time().unwrap(),
                std::time::Duration::from_secs(60)
            );
        }
    }

    #[test]
    fn only_a_listening_tcp_socket_can_be_handed_over() {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(
            prepare(OwnedFd::from(udp)).unwrap_err(),
            "not a stream socket"
        );
        let unbound = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        assert_eq!(
            prepare(OwnedFd::from(unbound)).unwrap_err(),
            "not listening"
        );
    }
}
