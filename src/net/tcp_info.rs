//! What the kernel says of a connection's two legs as it ends: TCP_INFO, read once per
//! socket for the log line and the long leg's metrics.

/// What TCP_INFO says of a connection's health; a field the kernel is too old to fill
/// (minimum RTT before 4.6, delivery rate before 4.9, retransmitted bytes before 4.19, the
/// peer's window before 6.2) is `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpInfo {
    /// Smoothed round-trip time, in microseconds.
    pub rtt_us: u32,
    /// Lowest round-trip time seen, in microseconds.
    pub min_rtt_us: Option<u32>,
    /// Segments retransmitted over the connection's life.
    pub retrans_segments: u32,
    /// Bytes retransmitted over the connection's life.
    pub retrans_bytes: Option<u64>,
    /// The latest delivery rate, in bytes per second.
    pub delivery_rate: Option<u64>,
    /// The congestion window, in segments.
    pub cwnd: u32,
    /// The receive window the peer last advertised, in bytes (0: it is not reading).
    pub peer_window: Option<u32>,
}

/// TCP_INFO of both legs of a forwarded connection, read as it ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Legs {
    /// The client's side.
    pub client: Option<TcpInfo>,
    /// The upstream's side.
    pub upstream: Option<TcpInfo>,
}

impl Legs {
    /// Reads both; a leg whose socket cannot say is `None`.
    pub fn read(client: &impl std::os::fd::AsFd, upstream: &impl std::os::fd::AsFd) -> Legs {
        #[cfg(target_os = "linux")]
        let read = |socket: &dyn std::os::fd::AsFd| crate::net::sys::tcp_info(&socket.as_fd()).ok();
        #[cfg(not(target_os = "linux"))]
        let read = |_: &dyn std::os::fd::AsFd| None;
        Legs {
            client: read(client),
            upstream: read(upstream),
        }
    }
}
