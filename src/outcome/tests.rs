use super::*;
use crate::connect::ConnectError;
use crate::hello::HelloError;
use crate::hostname::HostnameError;
use crate::http_connect::RequestError;
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
        Rejection::RequestTimeout,
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
        Rejection::BadConnect(RequestError::NotConnect),
        Rejection::BadConnect(RequestError::RequestLine),
        Rejection::BadConnect(RequestError::Version),
        Rejection::BadConnect(RequestError::Target),
        Rejection::BadConnect(RequestError::IpLiteral),
        Rejection::BadConnect(RequestError::Header),
        Rejection::BadConnect(RequestError::TooLarge),
        Rejection::PortNotAllowed,
        Rejection::ProxyAuthRequired("missing"),
        Rejection::ProxyAuthRequired("malformed"),
        Rejection::ProxyAuthRequired("wrong"),
        Rejection::SniMismatch,
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
        Rejection::PoolUnused,
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
        if bad != HostnameError::IpLiteral {
            examples.push(Rejection::BadConnect(RequestError::BadHost(bad)));
        }
    }
    for rejection in &examples {
        match rejection {
            Rejection::ClientDenied
            | Rejection::ProxyUntrusted
            | Rejection::BadProxyHeader(_)
            | Rejection::ProxyLocal
            | Rejection::Limit(_)
            | Rejection::HelloTimeout
            | Rejection::RequestTimeout
            | Rejection::ClientClosed
            | Rejection::ClientError(_)
            | Rejection::Hello(_)
            | Rejection::NotAllowed
            | Rejection::BadConnect(_)
            | Rejection::PortNotAllowed
            | Rejection::ProxyAuthRequired(_)
            | Rejection::SniMismatch
            | Rejection::DnsTimeout
            | Rejection::Resolve(_)
            | Rejection::Connect(_)
            | Rejection::Shutdown
            | Rejection::PoolUnused => {}
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
    // Monitor mode's forwards, whatever their end (see ConnectionRecord::would_refuse).
    seen.push(("forwarded", "would_refuse"));
    seen.sort();
    seen.dedup();
    let mut listed = OUTCOMES.to_vec();
    listed.sort();
    assert_eq!(seen, listed);
}

/// The backticked words of a docs/configuration.md table cell, and those of its `detail`: list.
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
/// the code logs is in docs/configuration.md's table, in the row for its reason, and the table
/// lists nothing the code cannot log.
#[test]
fn the_documented_reason_table_matches_the_words_the_code_logs() {
    let table = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ))
    .unwrap();
    let rows: Vec<(Vec<&str>, Vec<&str>)> = table
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

#[test]
fn a_connect_client_is_told_a_status_that_says_whose_fault_it_was() {
    for rejection in examples() {
        let status = rejection.http_status();
        let expected = match rejection.side() {
            Side::Client => 400..500,
            Side::Upstream => 502..505,
            Side::Relay => 429..504,
        };
        assert!(expected.contains(&status), "{rejection:?}: {status}");
    }
    let refused = Rejection::Connect(ConnectError::Failed {
        addr: "192.0.2.1:443".parse().unwrap(),
        source: io::ErrorKind::ConnectionRefused.into(),
    });
    assert_eq!(refused.http_status(), 502);
    assert_eq!(
        Rejection::Connect(ConnectError::Timeout(Duration::ZERO)).http_status(),
        504
    );
    assert_eq!(Rejection::DnsTimeout.http_status(), 504);
    assert_eq!(Rejection::NotAllowed.http_status(), 403);
    assert_eq!(
        Rejection::BadConnect(RequestError::NotConnect).http_status(),
        405
    );
}
