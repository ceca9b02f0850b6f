//! How a connection ends: the rejections before forwarding and the ends of a forwarded
//! connection, each with its stable reason word and the side that caused it. The words are
//! a contract: logs, metrics and the README's table use them, and they are never renamed.

use crate::connect::ConnectError;
use crate::hello::HelloError;
use crate::limits::LimitExceeded;
use crate::proxy::ProxyError;
use crate::resolve::ResolveError;
use std::io;

/// Who caused a rejection or an abnormal end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client: what it sent, where it came from, or how it went away.
    Client,
    /// The upstream, or DNS on the way to it.
    Upstream,
    /// The relay itself: its capacity, its timers, its shutdown.
    Relay,
}

impl Side {
    /// The word logged as `side`.
    pub fn word(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Upstream => "upstream",
            Side::Relay => "relay",
        }
    }
}

/// Why a connection was not forwarded.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    /// The source address is not in `clients`.
    #[error("client address not in `clients`")]
    ClientDenied,
    /// A PROXY protocol listener's peer is not in its `trusted_proxies`.
    #[error("peer not in the listener's trusted_proxies")]
    ProxyUntrusted,
    /// The PROXY protocol header is missing or malformed.
    #[error(transparent)]
    BadProxyHeader(#[from] ProxyError),
    /// A PROXY protocol `LOCAL` connection: the balancer's health check. Counted, not logged.
    #[error("PROXY protocol LOCAL connection (a health check)")]
    ProxyLocal,
    /// A connection limit.
    #[error(transparent)]
    Limit(#[from] LimitExceeded),
    /// The hello deadline passed.
    #[error("no complete ClientHello in time")]
    HelloTimeout,
    /// FIN before the hello was complete.
    #[error("client closed before its ClientHello was complete")]
    ClientClosed,
    /// A socket error on the client side before forwarding.
    #[error("client connection failed: {0}")]
    ClientError(io::Error),
    /// The hello was refused.
    #[error(transparent)]
    Hello(#[from] HelloError),
    /// The name matches no rule.
    #[error("name not on the allowlist")]
    NotAllowed,
    /// DNS did not answer within the connect deadline.
    #[error("DNS lookup did not finish within the connect timeout")]
    DnsTimeout,
    /// DNS failed, or its answers are forbidden.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// No upstream address could be connected.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The relay stopped before the connection was forwarded.
    #[error("relay shut down before the connection was forwarded")]
    Shutdown,
}

impl Rejection {
    /// The stable reason word.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::ClientDenied => "client_denied",
            Self::ProxyUntrusted => "proxy_untrusted",
            Self::BadProxyHeader(_) => "bad_proxy_header",
            Self::ProxyLocal => "proxy_local",
            Self::Limit(e) => e.reason(),
            Self::HelloTimeout => "hello_timeout",
            Self::ClientClosed => "client_closed",
            Self::ClientError(_) => "client_error",
            Self::Hello(e) => e.reason(),
            Self::NotAllowed => "not_allowed",
            Self::DnsTimeout => "dns_failed",
            Self::Resolve(e) => e.reason(),
            Self::Connect(_) => "upstream_unreachable",
            Self::Shutdown => "shutdown",
        }
    }

    /// The outcome word it is counted under: a balancer's health check is not a rejected
    /// client.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::ProxyLocal => "health_check",
            _ => "rejected",
        }
    }

    /// A stable word that narrows the reason down, where there is one.
    pub fn detail(&self) -> Option<&'static str> {
        match self {
            Self::Hello(e) => Some(e.detail()),
            Self::BadProxyHeader(e) => Some(e.detail()),
            Self::DnsTimeout => Some("timeout"),
            Self::Connect(e) => Some(e.detail()),
            _ => None,
        }
    }

    /// Who caused it.
    pub fn side(&self) -> Side {
        match self {
            Self::ClientDenied
            | Self::ProxyUntrusted
            | Self::BadProxyHeader(_)
            | Self::ProxyLocal
            | Self::Limit(LimitExceeded::PerClient)
            | Self::HelloTimeout
            | Self::ClientClosed
            | Self::ClientError(_)
            | Self::Hello(_)
            | Self::NotAllowed => Side::Client,
            Self::DnsTimeout | Self::Resolve(_) | Self::Connect(_) => Side::Upstream,
            Self::Limit(_) | Self::Shutdown => Side::Relay,
        }
    }
}

/// How a forwarded connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both directions finished with a FIN.
    Closed,
    /// The client reset the connection or stopped accepting data.
    ClientReset,
    /// The upstream reset the connection or stopped accepting data.
    UpstreamReset,
    /// No byte moved either way for the idle timeout.
    IdleTimeout,
    /// The relay was shutting down and the drain period ran out.
    Shutdown,
}

impl End {
    /// Every end, for listing them.
    pub const ALL: [End; 5] = [
        End::Closed,
        End::ClientReset,
        End::UpstreamReset,
        End::IdleTimeout,
        End::Shutdown,
    ];

    /// The stable word logged as the reason of a forwarded connection.
    pub fn word(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::ClientReset => "client_reset",
            End::UpstreamReset => "upstream_reset",
            End::IdleTimeout => "idle_timeout",
            End::Shutdown => "shutdown",
        }
    }

    /// Who ended it, when it did not end normally.
    pub fn side(self) -> Option<Side> {
        match self {
            End::Closed => None,
            End::ClientReset => Some(Side::Client),
            End::UpstreamReset => Some(Side::Upstream),
            End::IdleTimeout | End::Shutdown => Some(Side::Relay),
        }
    }
}

/// Every `(outcome, reason)` pair a connection can end with, so the metrics can show each
/// from the start (at 0) and alerts always have a series to work on.
pub const OUTCOMES: &[(&str, &str)] = &[
    ("forwarded", "closed"),
    ("forwarded", "client_reset"),
    ("forwarded", "upstream_reset"),
    ("forwarded", "idle_timeout"),
    ("forwarded", "shutdown"),
    ("forwarded", "would_refuse"),
    ("rejected", "client_denied"),
    ("rejected", "proxy_untrusted"),
    ("rejected", "bad_proxy_header"),
    ("rejected", "too_many_connections"),
    ("rejected", "too_many_from_client"),
    ("rejected", "too_many_pending_hellos"),
    ("rejected", "hello_timeout"),
    ("rejected", "client_closed"),
    ("rejected", "client_error"),
    ("rejected", "bad_hello"),
    ("rejected", "no_sni"),
    ("rejected", "bad_sni"),
    ("rejected", "not_allowed"),
    ("rejected", "dns_failed"),
    ("rejected", "forbidden_destination"),
    ("rejected", "upstream_unreachable"),
    ("rejected", "shutdown"),
    ("health_check", "proxy_local"),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect::ConnectError;
    use crate::hello::HelloError;
    use crate::hostname::HostnameError;
    use crate::policy::Forbidden;
    use crate::proxy::ProxyError;
    use std::time::Duration;

    /// One of each rejection. The match below has no wildcard: a new variant does not
    /// compile until it has an example here, and so a place in OUTCOMES.
    fn examples() -> Vec<Rejection> {
        let examples = vec![
            Rejection::ClientDenied,
            Rejection::ProxyUntrusted,
            Rejection::BadProxyHeader(ProxyError::Missing),
            Rejection::BadProxyHeader(ProxyError::WrongVersion("v1")),
            Rejection::BadProxyHeader(ProxyError::TooLong(536)),
            Rejection::BadProxyHeader(ProxyError::Malformed("x")),
            Rejection::BadProxyHeader(ProxyError::NotTcp),
            Rejection::ProxyLocal,
            Rejection::Limit(LimitExceeded::Connections),
            Rejection::Limit(LimitExceeded::PerClient),
            Rejection::Limit(LimitExceeded::PendingHellos),
            Rejection::HelloTimeout,
            Rejection::ClientClosed,
            Rejection::ClientError(io::Error::other("x")),
            Rejection::Hello(HelloError::NotTls),
            Rejection::Hello(HelloError::Sslv2),
            Rejection::Hello(HelloError::NotHandshake(21)),
            Rejection::Hello(HelloError::Interleaved(21)),
            Rejection::Hello(HelloError::EmptyRecord),
            Rejection::Hello(HelloError::RecordTooLong(1 << 15)),
            Rejection::Hello(HelloError::NotClientHello(2)),
            Rejection::Hello(HelloError::TooLarge(1 << 17)),
            Rejection::Hello(HelloError::Malformed("x")),
            Rejection::Hello(HelloError::DuplicateExtension(0)),
            Rejection::Hello(HelloError::TrailingHandshake),
            Rejection::Hello(HelloError::NoSni),
            Rejection::Hello(HelloError::SniNotOneHostName),
            Rejection::NotAllowed,
            Rejection::DnsTimeout,
            Rejection::Resolve(ResolveError::Dns {
                name: "a.example.com".parse().unwrap(),
                message: String::new(),
            }),
            Rejection::Resolve(ResolveError::Forbidden {
                addr: "10.0.0.1:443".parse().unwrap(),
                why: Forbidden::OwnListener,
            }),
            Rejection::Connect(ConnectError::Timeout(Duration::ZERO)),
            Rejection::Shutdown,
        ];
        let mut examples = examples;
        for kind in [
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::HostUnreachable,
            io::ErrorKind::Other,
        ] {
            examples.push(Rejection::Connect(ConnectError::Failed {
                addr: "192.0.2.1:443".parse().unwrap(),
                source: kind.into(),
            }));
        }
        for bad in [
            HostnameError::Empty,
            HostnameError::TooLong,
            HostnameError::EmptyLabel,
            HostnameError::LabelTooLong,
            HostnameError::BadByte(b'_'),
            HostnameError::Hyphen,
            HostnameError::IpLiteral,
        ] {
            examples.push(Rejection::Hello(HelloError::BadSni(bad)));
        }
        for rejection in &examples {
            match rejection {
                Rejection::ClientDenied
                | Rejection::ProxyUntrusted
                | Rejection::BadProxyHeader(_)
                | Rejection::ProxyLocal
                | Rejection::Limit(_)
                | Rejection::HelloTimeout
                | Rejection::ClientClosed
                | Rejection::ClientError(_)
                | Rejection::Hello(_)
                | Rejection::NotAllowed
                | Rejection::DnsTimeout
                | Rejection::Resolve(_)
                | Rejection::Connect(_)
                | Rejection::Shutdown => {}
            }
        }
        examples
    }

    #[test]
    fn every_reason_a_connection_can_end_with_is_listed_once() {
        let mut seen: Vec<(&str, &str)> = examples()
            .iter()
            .map(|r| (r.outcome(), r.reason()))
            .collect();
        for end in End::ALL {
            seen.push(("forwarded", end.word()));
        }
        // Monitor mode's forwards, whatever their end (see ConnectionLog::would_refuse).
        seen.push(("forwarded", "would_refuse"));
        seen.sort();
        seen.dedup();
        let mut listed = OUTCOMES.to_vec();
        listed.sort();
        assert_eq!(seen, listed);
    }

    /// The backticked words of a README table cell, and those of its `detail`: list.
    fn words(cell: &str) -> (Vec<&str>, Vec<&str>) {
        let (before, after) = cell.split_once("`detail`:").unwrap_or((cell, ""));
        let reasons = before.split('`').skip(1).step_by(2).collect();
        let mut details = Vec::new();
        let mut rest = after.trim_start();
        while let Some(quoted) = rest.strip_prefix('`') {
            let Some((word, tail)) = quoted.split_once('`') else {
                break;
            };
            details.push(word);
            match tail.strip_prefix(',') {
                Some(more) => rest = more.trim_start(),
                None => break,
            }
        }
        (reasons, details)
    }

    /// A regression: the table lacked `no_server_name`. Both ways: every reason and detail
    /// the code logs is in the README's table, in the row for its reason, and the table
    /// lists nothing the code cannot log.
    #[test]
    fn the_readme_reason_table_matches_the_words_the_code_logs() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        let rows: Vec<(Vec<&str>, Vec<&str>)> = readme
            .lines()
            .skip_while(|l| !l.starts_with("| outcome | reason | meaning |"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|row| {
                let cells: Vec<&str> = row.split('|').collect();
                let (reasons, _) = words(cells[2]);
                let (_, details) = words(cells[3]);
                (reasons, details)
            })
            .collect();
        assert!(rows.len() > 10, "the table was not found");
        let mut logged: Vec<(&str, Option<&str>)> = examples()
            .iter()
            .map(|r| (r.reason(), r.detail()))
            .collect();
        for end in End::ALL {
            logged.push((end.word(), None));
            logged.push(("would_refuse", Some(end.word())));
        }
        for (reason, detail) in &logged {
            let row = rows.iter().find(|(reasons, _)| reasons.contains(reason));
            let (_, details) = row.unwrap_or_else(|| panic!("README lacks the reason {reason}"));
            if let Some(detail) = detail {
                assert!(
                    details.contains(detail),
                    "README lacks {reason}'s detail {detail}"
                );
            }
        }
        for (reasons, details) in &rows {
            for reason in reasons {
                assert!(
                    logged.iter().any(|(r, _)| r == reason),
                    "README lists {reason}, which is never logged"
                );
            }
            for detail in details {
                assert!(
                    logged
                        .iter()
                        .any(|(r, d)| reasons.contains(r) && *d == Some(*detail)),
                    "README lists detail {detail} for {reasons:?}, which is never logged"
                );
            }
        }
    }
}
