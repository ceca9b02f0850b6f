//! TCP settings on the relay's sockets ([`Tcp`]): a listener's, set once on the listening
//! socket and inherited by every socket it accepts (bound here, handed over by systemd or
//! by the relay being upgraded alike), and an upstream's, set once it is connected. Send
//! and receive buffers are never pinned: that would turn the kernel's autotuning off, and a
//! long path needs buffers the size of its bandwidth-delay product.

use crate::config::Config;
use crate::tcp_options::{Keepalive, Tcp};
use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use std::io;

/// The congestion control of client-facing sockets unless a listener names one. The relay
/// is the sender towards its clients, and that direction is the one that loses packets on
/// a long cross-border path: there, a 1 MiB reply took 2.0 s under BBR and 50 s under CUBIC
/// (180 ms, 20 Mbit/s, 5% loss; `cargo bench --bench longhaul`, BENCHMARKS.md). Where the
/// kernel lacks it, the kernel's default stays, with one warning.
pub const CLIENT_CONGESTION: &str = "bbr";

const AVAILABLE: &str = "/proc/sys/net/ipv4/tcp_available_congestion_control";
const ALLOWED: &str = "/proc/sys/net/ipv4/tcp_allowed_congestion_control";

/// A congestion control algorithm the kernel would not set, with what to do about it.
#[derive(Debug, thiserror::Error)]
#[error("TCP congestion control {name:?} cannot be used here: {cause}; {hint}")]
pub struct CongestionError {
    /// The algorithm.
    pub name: String,
    /// What the kernel said.
    pub cause: io::Error,
    hint: String,
}

impl CongestionError {
    fn new(name: &str, cause: io::Error) -> CongestionError {
        let read = |path| std::fs::read_to_string(path).unwrap_or_default();
        let hint = hint(name, &cause, read(AVAILABLE).trim(), read(ALLOWED).trim());
        CongestionError {
            name: name.to_owned(),
            cause,
            hint,
        }
    }
}

/// What to do when the kernel refuses `name` with `cause`, given its available and allowed
/// lists. Pure.
fn hint(name: &str, cause: &io::Error, available: &str, allowed: &str) -> String {
    if cause.raw_os_error() == Some(libc::EPERM) {
        format!(
            "without CAP_NET_ADMIN only net.ipv4.tcp_allowed_congestion_control ({allowed}) may be set: add {name} there (`snirelay doctor` prints a sysctl.d file), or pick one of those"
        )
    } else {
        format!(
            "the kernel offers {available}: load the module (`modprobe tcp_{name}`, and add it to /etc/modules-load.d/) or pick one of those"
        )
    }
}

/// Sets `tcp` on a socket, with `over`'s settings in place wherever it names one (a rule's
/// `tcp` over the file's `upstream_tcp`): NODELAY (handshakes are latency-bound),
/// keepalive (the default unless they say), and whatever else they name. Only the
/// congestion control can be refused (a name the kernel lacks or does not allow): the rest
/// the kernel takes.
pub fn apply<'s>(
    socket: impl Into<SockRef<'s>>,
    tcp: &Tcp,
    over: Option<&Tcp>,
) -> Result<(), CongestionError> {
    let socket = socket.into();
    set_keepalive(&*socket, keepalive(tcp, over));
    apply_connected(socket, tcp, over)
}

/// [`apply`] without the keepalive, for a connected upstream: keepalive matters only to a
/// connection that lasts, and its four options are most of the system calls of setting up
/// a short one, so the copy loop sets them ([`set_keepalive`]) once the connection has
/// lasted a few seconds.
pub fn apply_connected<'s>(
    socket: impl Into<SockRef<'s>>,
    tcp: &Tcp,
    over: Option<&Tcp>,
) -> Result<(), CongestionError> {
    let socket = socket.into();
    let _ = socket.set_tcp_nodelay(true);
    if let Some(lowat) = over.and_then(|o| o.notsent_lowat).or(tcp.notsent_lowat) {
        let _ = socket.set_tcp_notsent_lowat(lowat);
    }
    if let Some(timeout) = over.and_then(|o| o.user_timeout).or(tcp.user_timeout) {
        let _ = socket.set_tcp_user_timeout(Some(timeout).filter(|t| !t.is_zero()));
    }
    let congestion = over
        .and_then(|o| o.congestion.as_deref())
        .or(tcp.congestion.as_deref());
    if let Some(name) = congestion {
        socket
            .set_tcp_congestion(name.as_bytes())
            .map_err(|cause| CongestionError::new(name, cause))?;
    }
    Ok(())
}

/// The keepalive `over` names, else `tcp`'s, else the default.
pub fn keepalive<'s>(tcp: &'s Tcp, over: Option<&'s Tcp>) -> &'s Keepalive {
    over.and_then(|o| o.keepalive.as_ref())
        .or(tcp.keepalive.as_ref())
        .unwrap_or(&Keepalive::DEFAULT)
}

/// Turns keepalive on with `keepalive`'s timings.
pub fn set_keepalive<'s>(socket: impl Into<SockRef<'s>>, keepalive: &Keepalive) {
    let _ = socket.into().set_tcp_keepalive(
        &TcpKeepalive::new()
            .with_time(keepalive.idle)
            .with_interval(keepalive.interval)
            .with_retries(keepalive.count),
    );
}

/// Sets a listener's `tcp` on its listening socket. Where it names no congestion control,
/// [`CLIENT_CONGESTION`] is tried; if the kernel refuses it, its own default stays and the
/// refusal comes back in `Ok`, to be warned of. A named one that is refused is an error.
pub fn apply_to_listener<'s>(
    socket: impl Into<SockRef<'s>>,
    tcp: &Tcp,
) -> Result<Option<CongestionError>, CongestionError> {
    let socket = socket.into();
    if tcp.fast_open == Some(true) {
        // Best effort: where the sysctl lacks the server bit, start-up says so.
        let _ = crate::net::sys::set_fast_open(&*socket, FAST_OPEN_QUEUE);
    }
    if tcp.congestion.is_some() {
        return apply(socket, tcp, None).map(|()| None);
    }
    let with_default = Tcp {
        congestion: Some(CLIENT_CONGESTION.to_owned()),
        ..tcp.clone()
    };
    match apply(socket, &with_default, None) {
        Ok(()) => Ok(None),
        Err(refused) => Ok(Some(refused)),
    }
}

/// Whether this process can set congestion control `name` on a socket: tried on a
/// throwaway one, so availability, module loading and permission are all what they will be.
pub fn usable(name: &str) -> Result<(), CongestionError> {
    Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
        .and_then(|socket| socket.set_tcp_congestion(name.as_bytes()))
        .map_err(|cause| CongestionError::new(name, cause))
}

/// Every congestion control `config` names that this process cannot set, each said with
/// where it is named: a listener's, `upstream_tcp`'s, or a rule's.
pub fn refusals(config: &Config) -> Vec<String> {
    let listeners = config
        .listen
        .iter()
        .map(|l| (format!("listener {}", l.addr), &l.tcp));
    let upstream = std::iter::once(("upstream_tcp".to_owned(), &config.upstream_tcp));
    let rules = config
        .rules
        .iter()
        .filter_map(|r| Some((format!("rule \"{}\"", r.label), r.tcp.as_ref()?)));
    listeners
        .chain(upstream)
        .chain(rules)
        .filter_map(|(place, tcp)| {
            let refused = usable(tcp.congestion.as_deref()?).err()?;
            Some(format!("{place}: {refused}"))
        })
        .collect()
}

/// Connections whose SYN carried data that may wait to be accepted on a Fast Open
/// listener.
pub const FAST_OPEN_QUEUE: u16 = 256;
const FAST_OPEN_SYSCTL: &str = "/proc/sys/net/ipv4/tcp_fastopen";

/// What this host's `net.ipv4.tcp_fastopen` lacks for the Fast Open that `config` asks for,
/// a line each.
pub fn fast_open_gaps(config: &Config) -> Vec<String> {
    let value = std::fs::read_to_string(FAST_OPEN_SYSCTL)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0);
    let on = |tcp: &Tcp| tcp.fast_open == Some(true);
    let serving = config.listen.iter().any(|l| on(&l.tcp));
    let connecting =
        on(&config.upstream_tcp) || config.rules.iter().any(|r| r.tcp.as_ref().is_some_and(on));
    missing_fast_open(serving, connecting, value)
}

/// Pure: what `value` of `net.ipv4.tcp_fastopen` lacks for listeners (`serving`, bit 2) and
/// upstream sockets (`connecting`, bit 1) that ask for Fast Open.
fn missing_fast_open(serving: bool, connecting: bool, value: u32) -> Vec<String> {
    let mut gaps = Vec::new();
    let wanted = u32::from(connecting) | u32::from(serving) << 1;
    if wanted & !value != 0 {
        let mut parts = Vec::new();
        if serving && value & 2 == 0 {
            parts.push("listeners take no data in a SYN");
        }
        if connecting && value & 1 == 0 {
            parts.push("upstream connections send none");
        }
        gaps.push(format!(
            "\"fast_open\" is set but net.ipv4.tcp_fastopen is {value}, so {}: set it to {} (sysctl -w net.ipv4.tcp_fastopen={0}, and in /etc/sysctl.d/)",
            parts.join(" and "),
            value | wanted
        ));
    }
    gaps
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn fast_open_needs_the_sysctl_bit_of_each_side() {
        assert!(missing_fast_open(false, false, 0).is_empty());
        assert!(missing_fast_open(true, true, 3).is_empty());
        assert!(missing_fast_open(false, true, 1).is_empty());
        let server = missing_fast_open(true, false, 1);
        assert!(
            server[0].contains("is 1, so listeners take no data in a SYN: set it to 3"),
            "{server:?}"
        );
        let both = missing_fast_open(true, true, 0);
        assert!(
            both[0].contains(
                "listeners take no data in a SYN and upstream connections send none: set it to 3"
            ),
            "{both:?}"
        );
    }

    /// The congestion control a socket uses, by name.
    fn congestion<'s>(socket: impl Into<SockRef<'s>>) -> io::Result<String> {
        let name = socket.into().tcp_congestion()?;
        let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        Ok(String::from_utf8_lossy(&name[..len]).into_owned())
    }

    #[test]
    fn the_hint_says_what_to_change_for_a_missing_and_for_a_forbidden_algorithm() {
        let missing = hint(
            "bbr",
            &io::Error::from_raw_os_error(libc::ENOENT),
            "reno cubic",
            "reno cubic",
        );
        assert!(missing.contains("offers reno cubic") && missing.contains("modprobe tcp_bbr"));
        let forbidden = hint(
            "cubic",
            &io::Error::from_raw_os_error(libc::EPERM),
            "reno bbr cubic",
            "reno bbr",
        );
        assert!(forbidden.contains("(reno bbr)") && forbidden.contains("add cubic there"));
    }

    #[test]
    fn a_name_the_kernel_lacks_is_refused_with_its_hint() {
        let err = usable("nosuchcc").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("\"nosuchcc\"") && text.contains("modprobe"),
            "{text}"
        );
    }

    #[test]
    fn every_congestion_control_a_config_names_is_checked_where_it_is_named() {
        let config = Config::parse(
            r#"{"listen": [{"addr": "127.0.0.1:1", "tcp": {"congestion": "nosuchone"}}],
                "upstream_tcp": {"congestion": "reno"},
                "allow": ["a.example.com", {"name": "b.example.com", "tcp": {"congestion": "nosuchtwo"}}]}"#,
            std::path::Path::new("t.json"),
        )
        .unwrap();
        let refused = refusals(&config);
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert!(
            refused[0].starts_with("listener 127.0.0.1:1: TCP congestion control \"nosuchone\"")
        );
        assert!(
            refused[1].starts_with("rule \"b.example.com\": TCP congestion control \"nosuchtwo\"")
        );
    }

    #[tokio::test]
    async fn accepted_sockets_inherit_every_setting_of_the_listener() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = Tcp {
            congestion: Some("reno".into()),
            notsent_lowat: Some(16384),
            keepalive: Some(Keepalive {
                idle: Duration::from_secs(30),
                interval: Duration::from_secs(5),
                count: 3,
            }),
            user_timeout: Some(Duration::from_secs(45)),
            fast_open: None,
        };
        apply(&listener, &tcp, None).unwrap();
        let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let socket = SockRef::from(&accepted);
        assert_eq!(congestion(&accepted).unwrap(), "reno");
        assert_eq!(socket.tcp_notsent_lowat().unwrap(), 16384);
        assert_eq!(
            socket.tcp_user_timeout().unwrap(),
            Some(Duration::from_secs(45))
        );
        assert!(socket.tcp_nodelay().unwrap() && socket.keepalive().unwrap());
        assert_eq!(
            socket.tcp_keepalive_time().unwrap(),
            Duration::from_secs(30)
        );
        assert_eq!(
            socket.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(5)
        );
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), 3);
    }

    #[test]
    fn a_rules_settings_win_key_by_key() {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        let file = Tcp {
            congestion: Some("reno".into()),
            user_timeout: Some(Duration::from_secs(30)),
            keepalive: Some(Keepalive {
                count: 4,
                ..Keepalive::DEFAULT
            }),
            ..Tcp::default()
        };
        let rule = Tcp {
            notsent_lowat: Some(4096),
            ..Tcp::default()
        };
        apply(&socket, &file, Some(&rule)).unwrap();
        assert_eq!(congestion(&socket).unwrap(), "reno");
        assert_eq!(socket.tcp_notsent_lowat().unwrap(), 4096);
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), 4);
        assert_eq!(
            socket.tcp_user_timeout().unwrap(),
            Some(Duration::from_secs(30))
        );
    }

    #[tokio::test]
    async fn a_listener_gets_the_default_congestion_control_where_the_kernel_has_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let refused = apply_to_listener(&listener, &Tcp::default()).unwrap();
        let set = congestion(&listener).unwrap();
        let offered = std::fs::read_to_string(AVAILABLE).unwrap();
        if offered
            .split_whitespace()
            .any(|name| name == CLIENT_CONGESTION)
        {
            assert!(refused.is_none(), "{refused:?}");
            assert_eq!(set, CLIENT_CONGESTION);
        } else {
            assert_eq!(refused.unwrap().name, CLIENT_CONGESTION);
        }
        let named = Tcp {
            congestion: Some("nosuchcc".into()),
            ..Tcp::default()
        };
        assert!(apply_to_listener(&listener, &named).is_err());
    }
}
