//! The PROXY protocol reader: real HAProxy headers and built ones, split every way; random
//! bytes; and the relay end to end, inbound and outbound.

mod common;

use common::fixture_dir;
use ppp::v2::{self, Command, Protocol};
use proptest::prelude::*;
use serde_json::Value;
use snirelay::proxy::{
    Accept, Header, ParsedHeader, ProxyError, Tlvs, V1_MAX, V2_MAX, Version, encode, parse,
};
use std::net::{IpAddr, SocketAddr};

fn v2_with_tlvs(source: SocketAddr, destination: SocketAddr, tlvs: &[(u8, &[u8])]) -> Vec<u8> {
    let mut builder = v2::Builder::with_addresses(
        v2::Version::Two | Command::Proxy,
        Protocol::Stream,
        (source, destination),
    );
    for (kind, value) in tlvs {
        builder = builder.write_tlv(*kind, value).unwrap();
    }
    builder.build().unwrap()
}

/// Every prefix is incomplete, the whole header (with any bytes after it) gives the
/// same answer: how the header was split over reads cannot matter.
fn assert_every_prefix(header: &[u8], accept: Accept) -> ParsedHeader {
    for cut in 0..header.len() {
        assert_eq!(
            parse(&header[..cut], accept),
            Ok(None),
            "prefix of {cut} bytes"
        );
    }
    let whole = parse(header, accept).unwrap().unwrap();
    assert_eq!(whole.len, header.len());
    let mut longer = header.to_vec();
    longer.extend_from_slice(&[0x16, 0x03, 0x01, 0x02, 0x00]);
    assert_eq!(parse(&longer, accept).unwrap().unwrap(), whole);
    whole
}

#[test]
fn v1_tcp4_tcp6_and_unknown_on_every_prefix() {
    let cases: [(&[u8], Option<&str>); 3] = [
        (
            b"PROXY TCP4 192.0.2.7 10.20.0.5 51000 443\r\n",
            Some("192.0.2.7:51000"),
        ),
        (
            b"PROXY TCP6 2001:db8::7 2001:db8::5 51000 443\r\n",
            Some("[2001:db8::7]:51000"),
        ),
        (b"PROXY UNKNOWN\r\n", None),
    ];
    for (header, source) in cases {
        for accept in [Accept::V1, Accept::Any] {
            let parsed = assert_every_prefix(header, accept);
            assert_eq!(
                parsed.header,
                Header::Proxy {
                    source: source.map(|s| s.parse().unwrap()),
                    tlvs: Tlvs::default()
                }
            );
        }
    }
}

#[test]
fn v2_proxy_and_local_on_every_prefix_with_cloud_tlvs() {
    let source: SocketAddr = "192.0.2.7:51000".parse().unwrap();
    let destination: SocketAddr = "10.20.0.5:443".parse().unwrap();
    let header = v2_with_tlvs(
        source,
        destination,
        &[
            (0x04, b"\0\0"),
            (0xE1, b"vpc-2ze0abc ep-2zei123"),
            (0xEA, b"\x01vpce-08d2bf15fac5001c9"),
        ],
    );
    let parsed = assert_every_prefix(&header, Accept::V2);
    assert_eq!(
        parsed.header,
        Header::Proxy {
            source: Some(source),
            tlvs: Tlvs {
                alibaba_privatelink: Some("vpc-2ze0abc ep-2zei123".into()),
                aws_vpce_id: Some("vpce-08d2bf15fac5001c9".into()),
                ..Tlvs::default()
            }
        }
    );
    // An AWS TLV of another subtype, and a binary Alibaba value, are handled safely.
    let other = v2_with_tlvs(
        source,
        destination,
        &[(0xEA, b"\x02x"), (0xE1, b"\x00\xff")],
    );
    let Header::Proxy { tlvs, .. } = parse(&other, Accept::Any).unwrap().unwrap().header else {
        panic!("not a PROXY header");
    };
    assert_eq!(tlvs.aws_vpce_id, None);
    assert_eq!(tlvs.alibaba_privatelink.as_deref(), Some("00ff"));

    // A regression: Alibaba Cloud sends one 0xE1 TLV per id, each led by its subtype, and
    // only the last one was kept (and shown in hex, for its subtype byte).
    let alibaba = v2_with_tlvs(
        source,
        destination,
        &[
            (0xE1, b"\x01vpc-2ze0abc"),
            (0xE1, b"\x02ep-2zei123"),
            (0xE1, b"\x03epsrv-2ze9xyz"),
            (0xEA, b"\x01vpce-0abc"),
        ],
    );
    let parsed = assert_every_prefix(&alibaba, Accept::V2);
    let Header::Proxy { tlvs, .. } = parsed.header else {
        panic!("not a PROXY header");
    };
    assert_eq!(tlvs.alibaba_vpc_id.as_deref(), Some("vpc-2ze0abc"));
    assert_eq!(tlvs.alibaba_endpoint_id.as_deref(), Some("ep-2zei123"));
    assert_eq!(
        tlvs.alibaba_endpoint_service_id.as_deref(),
        Some("epsrv-2ze9xyz")
    );
    assert_eq!(tlvs.aws_vpce_id.as_deref(), Some("vpce-0abc"));
    let all = tlvs.alibaba_privatelink.as_deref().unwrap();
    assert_eq!(all.split(' ').count(), 3, "{all}");

    let local = v2::Builder::with_addresses(
        v2::Version::Two | Command::Local,
        Protocol::Unspecified,
        v2::Addresses::Unspecified,
    )
    .build()
    .unwrap();
    assert_eq!(
        assert_every_prefix(&local, Accept::Any).header,
        Header::Local
    );
}

#[test]
fn refusals_name_what_is_wrong() {
    let hello = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01];
    assert_eq!(parse(&hello, Accept::Any), Err(ProxyError::Missing));
    assert_eq!(
        parse(b"GET / HTTP/1.1\r\n", Accept::V1),
        Err(ProxyError::Missing)
    );
    assert_eq!(parse(b"PRONTO", Accept::V1), Err(ProxyError::Missing));
    let v2 = encode(
        Version::V2,
        "192.0.2.7:1".parse().unwrap(),
        "10.0.0.1:443".parse().unwrap(),
    )
    .unwrap();
    assert_eq!(parse(&v2, Accept::V1), Err(ProxyError::WrongVersion("v2")));
    assert_eq!(
        parse(b"PROXY TCP4", Accept::V2),
        Err(ProxyError::WrongVersion("v1"))
    );
    // Bounds: a v1 line without CRLF, and a v2 length beyond the cap, fail at once.
    let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
    assert_eq!(parse(&long, Accept::V1), Err(ProxyError::TooLong(V1_MAX)));
    let mut big = v2[..16].to_vec();
    big[14..16].copy_from_slice(&((V2_MAX - 16 + 1) as u16).to_be_bytes());
    assert_eq!(parse(&big, Accept::V2), Err(ProxyError::TooLong(V2_MAX)));
    assert_eq!(
        parse(b"PROXY TCP4 nope\r\n", Accept::V1),
        Err(ProxyError::Malformed("v1"))
    );
    // A TLV whose length runs past the header's end: the last TLV is type, length (2
    // bytes), value "ab"; its length becomes 9.
    let mut bad_tlv = v2_with_tlvs(
        "192.0.2.7:1".parse().unwrap(),
        "10.0.0.1:443".parse().unwrap(),
        &[(0x04, b"ab")],
    );
    let n = bad_tlv.len();
    bad_tlv[n - 4..n - 2].copy_from_slice(&9u16.to_be_bytes());
    assert_eq!(
        parse(&bad_tlv, Accept::V2),
        Err(ProxyError::Malformed("tlv"))
    );
    // UDP is not something a TCP relay can use.
    let udp = v2::Builder::with_addresses(
        v2::Version::Two | Command::Proxy,
        Protocol::Datagram,
        (
            "192.0.2.7:1".parse::<SocketAddr>().unwrap(),
            "10.0.0.1:443".parse::<SocketAddr>().unwrap(),
        ),
    )
    .build()
    .unwrap();
    assert_eq!(parse(&udp, Accept::V2), Err(ProxyError::NotTcp));
}

#[test]
fn encode_sends_mixed_families_as_ipv6() {
    let v4: SocketAddr = "192.0.2.7:51000".parse().unwrap();
    let v6: SocketAddr = "[2001:db8::5]:443".parse().unwrap();
    assert_eq!(
        encode(Version::V1, v4, v6).unwrap(),
        b"PROXY TCP6 ::ffff:192.0.2.7 2001:db8::5 51000 443\r\n"
    );
    let mapped: SocketAddr = "[::ffff:192.0.2.7]:51000".parse().unwrap();
    assert_eq!(
        encode(Version::V1, mapped, "10.0.0.1:443".parse().unwrap()).unwrap(),
        b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 443\r\n"
    );
}

fn any_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
    ]
}

proptest! {
    /// What the relay sends, the relay reads back: the source it was given (in its
    /// canonical form), whatever the version and however the bytes are split.
    #[test]
    fn encoded_headers_parse_back_on_any_split(
        version in prop_oneof![Just(Version::V1), Just(Version::V2)],
        source in any_addr(),
        destination in any_addr(),
        split in any::<prop::sample::Index>(),
    ) {
        let header = encode(version, source, destination).unwrap();
        let cut = split.index(header.len());
        prop_assert_eq!(parse(&header[..cut], Accept::Any), Ok(None));
        let parsed = parse(&header, Accept::Any).unwrap().unwrap();
        prop_assert_eq!(parsed.len, header.len());
        let Header::Proxy { source: Some(got), .. } = parsed.header else {
            return Err(TestCaseError::fail("no source"));
        };
        prop_assert_eq!(got.ip().to_canonical(), source.ip().to_canonical());
        prop_assert_eq!(got.port(), source.port());
    }

    /// Arbitrary bytes never panic, and an answer never changes with more bytes.
    #[test]
    fn arbitrary_bytes_are_answered_consistently(
        start in prop_oneof![Just(&b""[..]), Just(ppp::v2::PROTOCOL_PREFIX), Just(&b"PROXY "[..])],
        rest in prop::collection::vec(any::<u8>(), 0..600),
    ) {
        let bytes = [start, &rest].concat();
        let whole = parse(&bytes, Accept::Any);
        for cut in 0..bytes.len() {
            match parse(&bytes[..cut], Accept::Any) {
                Ok(None) => {}
                earlier => prop_assert_eq!(earlier, whole.clone()),
            }
        }
    }
}

#[test]
fn real_haproxy_headers_parse_the_same_however_they_are_split() {
    let dir = fixture_dir().join("proxy");
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let headers = manifest["headers"].as_array().unwrap();
    assert_eq!(headers.len(), 5);
    for entry in headers {
        let name = entry["name"].as_str().unwrap();
        let bytes = std::fs::read(dir.join(format!("{name}.bin"))).unwrap();
        let accept = if name.starts_with("haproxy_v1") {
            Accept::V1
        } else {
            Accept::V2
        };
        // Followed by the start of a ClientHello, as on the wire.
        let wire = [bytes.as_slice(), &[0x16, 0x03, 0x01, 0x02, 0x00]].concat();
        let whole = parse(&wire, accept).unwrap().unwrap();
        assert_eq!(whole.len, bytes.len(), "{name}");
        assert_eq!(parse(&wire, Accept::Any).unwrap().unwrap(), whole, "{name}");
        // Every split into two reads, and one byte per read: only the whole header answers.
        for cut in 0..bytes.len() {
            assert_eq!(parse(&wire[..cut], accept), Ok(None), "{name} cut at {cut}");
        }
        match (&whole.header, entry["command"].as_str().unwrap()) {
            (Header::Local, "local") => {}
            (
                Header::Proxy {
                    source: Some(source),
                    ..
                },
                "proxy",
            ) => {
                let want: IpAddr = entry["source_ip"].as_str().unwrap().parse().unwrap();
                assert_eq!(source.ip(), want, "{name}");
            }
            (other, command) => panic!("{name}: {other:?}, manifest says {command}"),
        }
    }
}

mod relay {
    use super::common::hellogen::hello_for;
    use super::common::{RelayProcess, Upstream, http_get, pinned_config, within};
    use serde_json::{Value, json};
    use snirelay::proxy::{Version, encode};
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    const NAME: &str = "a.example.com";

    /// A relay whose one listener takes PROXY headers from `trusted`, with an admin endpoint.
    async fn start(
        upstream: &Upstream,
        trusted: &str,
        tweak: impl FnOnce(&mut Value),
    ) -> (RelayProcess, String) {
        let mut config = pinned_config(&[NAME], upstream.addr);
        config["listen"] = json!([{
            "addr": "127.0.0.1:0", "proxy_protocol": "any", "trusted_proxies": [trusted]
        }]);
        config["clients"] = json!(["192.0.2.0/24", "2001:db8::/32"]);
        config["admin"] = "127.0.0.1:0".into();
        tweak(&mut config);
        let mut relay = RelayProcess::start_with(config, &[]).await;
        let admin = relay.admin_addr().await;
        (relay, admin)
    }

    fn v2_from(source: &str, tlvs: &[(u8, &[u8])]) -> Vec<u8> {
        let source: SocketAddr = source.parse().unwrap();
        let mut builder = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (source, "10.20.0.5:443".parse::<SocketAddr>().unwrap()),
        );
        for (kind, value) in tlvs {
            builder = builder.write_tlv(*kind, value).unwrap();
        }
        builder.build().unwrap()
    }

    /// Sends `header` in two writes, then the hello; returns the client connection. A
    /// relay that refuses may close before all of it is written: that is not an error here.
    async fn send(relay: SocketAddr, header: &[u8]) -> TcpStream {
        let mut client = TcpStream::connect(relay).await.unwrap();
        let (a, b) = header.split_at(header.len() / 2);
        let hello = hello_for(NAME);
        for part in [a, b, &hello] {
            if client.write_all(part).await.is_err() {
                break;
            }
        }
        client
    }

    /// Waits until the relay has closed `client` (with a FIN, or a reset when it left
    /// bytes unread).
    async fn closed(mut client: TcpStream) {
        let _ = client.read_to_end(&mut Vec::new()).await;
    }

    #[tokio::test]
    async fn a_trusted_balancer_names_the_real_client_for_the_acl_limits_and_log() {
        within(async {
            let upstream = Upstream::bind("127.0.0.1").await;
            let (mut relay, admin) = start(&upstream, "127.0.0.0/8", |c| {
                c["max_connections_per_client"] = 1.into();
            })
            .await;
            let header = v2_from(
                "192.0.2.7:51000",
                &[
                    (0xEA, b"\x01vpce-0abc"),
                    (0xE1, b"\x01vpc-2ze0abc"),
                    (0xE1, b"\x02ep-2zei123"),
                ],
            );
            let _first = send(relay.addr(), &header).await;
            let mut conn = upstream.accept().await;
            // The upstream gets the hello, never the header.
            let hello = hello_for(NAME);
            let mut replayed = vec![0u8; hello.len()];
            conn.read_exact(&mut replayed).await.unwrap();
            assert_eq!(replayed, hello);

            // Another client behind the same balancer is not limited by the first ...
            let _other = send(relay.addr(), &encode(Version::V1, "192.0.2.8:1".parse().unwrap(), "10.0.0.1:443".parse().unwrap()).unwrap()).await;
            let _conn2 = upstream.accept().await;
            // ... while the same client again is, and a client outside `clients` is refused.
            let again = send(relay.addr(), &v2_from("192.0.2.7:51001", &[])).await;
            let line = relay.next_connection().await;
            assert_eq!(line["reason"], "too_many_from_client");
            assert_eq!(line["client"], "192.0.2.7:51001");
            assert!(line["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{line}");
            closed(again).await;
            let outsider = send(relay.addr(), &v2_from("198.51.100.1:2", &[])).await;
            let line = relay.next_connection().await;
            assert_eq!((&line["reason"], &line["client"]), (&"client_denied".into(), &"198.51.100.1:2".into()));
            closed(outsider).await;

            drop((_first, conn));
            let line = relay.next_connection().await;
            assert_eq!(line["outcome"], "forwarded");
            assert_eq!(line["client"], "192.0.2.7:51000");
            assert_eq!(line["aws_vpce_id"], "vpce-0abc");
            assert_eq!(line["alibaba_vpc_id"], "vpc-2ze0abc", "{line}");
            assert_eq!(line["alibaba_endpoint_id"], "ep-2zei123", "{line}");
            let (_, metrics) = http_get(&admin, "/metrics").await;
            assert!(metrics.contains(r#"snirelay_connections_total{outcome="rejected",reason="too_many_from_client"} 1"#), "{metrics}");
        })
        .await
    }

    #[tokio::test]
    async fn untrusted_peers_missing_headers_and_health_checks() {
        within(async {
            let upstream = Upstream::bind("127.0.0.1").await;
            // Loopback is not a trusted balancer here: closed before a byte is read.
            let (mut relay, _) = start(&upstream, "10.0.0.0/8", |_| {}).await;
            let client = send(relay.addr(), &v2_from("192.0.2.7:1", &[])).await;
            let line = relay.next_connection().await;
            assert_eq!(
                (&line["reason"], &line["side"]),
                (&"proxy_untrusted".into(), &"client".into())
            );
            closed(client).await;
            drop(relay);

            let (mut relay, admin) = start(&upstream, "127.0.0.1", |_| {}).await;
            // A client that skips the balancer and sends its hello straight away.
            let mut direct = TcpStream::connect(relay.addr()).await.unwrap();
            direct.write_all(&hello_for(NAME)).await.unwrap();
            let line = relay.next_connection().await;
            assert_eq!(
                (&line["reason"], &line["detail"]),
                (&"bad_proxy_header".into(), &"missing".into())
            );
            closed(direct).await;

            // HAProxy's own health check: LOCAL, then close. Counted, not logged.
            let local =
                std::fs::read(super::fixture_dir().join("proxy/haproxy_v2_local.bin")).unwrap();
            let mut check = TcpStream::connect(relay.addr()).await.unwrap();
            check.write_all(&local).await.unwrap();
            check.read_to_end(&mut Vec::new()).await.unwrap();
            // The next line logged is the next real connection's.
            let mut garbage = TcpStream::connect(relay.addr()).await.unwrap();
            garbage.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
            assert_eq!(relay.next_connection().await["detail"], "missing");
            closed(garbage).await;
            let (_, metrics) = http_get(&admin, "/metrics").await;
            assert!(
                metrics.contains(
                    r#"snirelay_connections_total{outcome="health_check",reason="proxy_local"} 1"#
                ),
                "{metrics}"
            );
            assert!(upstream.untouched());
        })
        .await
    }
}

mod outbound {
    use super::common::hellogen::hello_for;
    use super::common::{RelayProcess, Upstream, within};
    use serde_json::json;
    use snirelay::proxy::{Accept, Header, parse};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Reads what the upstream got: a PROXY header, then exactly the hello.
    async fn header_then_hello(upstream: &Upstream, hello: &[u8]) -> Header {
        let mut conn = upstream.accept().await;
        let mut got = Vec::new();
        loop {
            let mut chunk = [0u8; 4096];
            let n = conn.read(&mut chunk).await.unwrap();
            assert!(n > 0, "upstream closed early: {got:?}");
            got.extend_from_slice(&chunk[..n]);
            if let Some(parsed) = parse(&got, Accept::Any).unwrap()
                && got.len() >= parsed.len + hello.len()
            {
                assert_eq!(&got[parsed.len..], hello);
                return parsed.header;
            }
        }
    }

    #[tokio::test]
    async fn a_rule_with_send_proxy_prepends_the_real_client() {
        within(async {
            let upstream = Upstream::bind("127.0.0.1").await;
            let config = json!({
                "listen": [
                    "127.0.0.1:0",
                    { "addr": "127.0.0.2:0", "proxy_protocol": "v2", "trusted_proxies": ["127.0.0.0/8"] }
                ],
                "clients": ["127.0.0.0/8", "192.0.2.0/24"],
                "allow": [
                    { "name": "v1.example.com", "upstream": upstream.addr.to_string(), "send_proxy": "v1" },
                    { "name": "v2.example.com", "upstream": upstream.addr.to_string(), "send_proxy": "v2" },
                ],
            });
            let mut relay = RelayProcess::start_with(config, &[]).await;
            // Both listeners, whichever said "listening" first: 127.0.0.1 sorts first.
            relay.addrs.sort();
            let (plain, behind) = (relay.addrs[0], relay.addrs[1]);

            // Straight from a client: v1, naming the client's own address.
            let hello = hello_for("v1.example.com");
            let mut client = TcpStream::connect(plain).await.unwrap();
            client.write_all(&hello).await.unwrap();
            let Header::Proxy { source: Some(source), .. } = header_then_hello(&upstream, &hello).await else {
                panic!("no source");
            };
            assert_eq!(source, client.local_addr().unwrap());

            // Behind a balancer: v2, naming the client the balancer named.
            let hello = hello_for("v2.example.com");
            let mut client = TcpStream::connect(behind).await.unwrap();
            let inbound = snirelay::proxy::encode(
                snirelay::proxy::Version::V2,
                "192.0.2.7:51000".parse().unwrap(),
                behind,
            )
            .unwrap();
            client.write_all(&[inbound, hello.clone()].concat()).await.unwrap();
            let Header::Proxy { source, .. } = header_then_hello(&upstream, &hello).await else {
                panic!("no PROXY header");
            };
            assert_eq!(source, Some("192.0.2.7:51000".parse().unwrap()));
        })
        .await
    }
}
