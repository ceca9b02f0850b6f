//! The ClientHello reader on real captures and generated hellos, without sockets.

mod common;

use common::hellogen::*;
use common::real_hellos;
use snirelay::hello::{ClientHello, HelloError, HelloReader, parse};
use snirelay::hostname::HostnameError;

const LIMIT: usize = 65536;

fn sni_of(bytes: &[u8]) -> Result<Option<String>, HelloError> {
    parse(bytes, LIMIT).map(|h| h.map(|h| h.sni.to_string()))
}

fn complete(bytes: &[u8]) -> ClientHello {
    parse(bytes, LIMIT).unwrap().expect("complete hello")
}

/// Every prefix is "need more" until the last byte, then every longer input gives the same
/// answer; fed incrementally, the reader agrees.
fn assert_prefix_property(bytes: &[u8], trailing: &[u8]) -> ClientHello {
    let whole = complete(bytes);
    for k in 0..bytes.len() {
        assert_eq!(parse(&bytes[..k], LIMIT), Ok(None), "prefix of {k} bytes");
    }
    let mut longer = bytes.to_vec();
    longer.extend_from_slice(trailing);
    for k in bytes.len()..=longer.len() {
        assert_eq!(
            parse(&longer[..k], LIMIT),
            Ok(Some(whole.clone())),
            "{k} bytes"
        );
    }
    let mut reader = HelloReader::new(LIMIT);
    for k in 0..bytes.len() {
        assert_eq!(reader.advance(&bytes[..k]), Ok(None));
        // The relay waits for this many bytes before it looks again: never past the hello.
        let missing = reader.missing(&bytes[..k]);
        assert!(
            missing >= 1 && k + missing <= bytes.len(),
            "{missing} missing after {k} of {} bytes",
            bytes.len()
        );
    }
    assert_eq!(reader.advance(bytes), Ok(Some(whole.clone())));
    whole
}

/// How many times a reader that waits for what `missing` asks looks at `bytes`, as the
/// relay does when a hello arrives a byte per segment.
fn looks_when_waiting_for_what_is_missing(bytes: &[u8]) -> usize {
    let mut reader = HelloReader::new(LIMIT);
    let mut end = 0;
    let mut looks = 0;
    loop {
        looks += 1;
        match reader.advance(&bytes[..end]) {
            Ok(None) => end += reader.missing(&bytes[..end]),
            answer => {
                assert_eq!(answer, parse(bytes, LIMIT));
                return looks;
            }
        }
    }
}

#[test]
fn a_hello_trickling_in_is_looked_at_once_per_header_byte_and_once_per_record_body() {
    // The first look is at no bytes; then five header bytes one at a time (a header can be
    // refused from its first byte), then the body in one.
    for fixture in real_hellos() {
        assert_eq!(
            looks_when_waiting_for_what_is_missing(&fixture.bytes),
            1 + 6,
            "{}",
            fixture.name
        );
    }
    let body = client_hello_body(&[sni("translate.googleapis.com")]);
    let three = records(&handshake(1, &body), &[40, 40, 10_000]);
    assert_eq!(looks_when_waiting_for_what_is_missing(&three), 1 + 3 * 6);
}

#[test]
fn real_hellos_parse_on_every_prefix() {
    // A ChangeCipherSpec record and some early data after the hello are stream data.
    let mut trailing = record(20, &[1]);
    trailing.extend(record(23, b"early data"));
    for fixture in real_hellos() {
        let hello = assert_prefix_property(&fixture.bytes, &trailing);
        assert_eq!(hello.sni.as_str(), fixture.sni, "{}", fixture.name);
        assert_eq!(hello.len, fixture.bytes.len(), "{}", fixture.name);
    }
}

#[test]
fn real_hellos_report_alpn_versions_and_ech() {
    let by_name = |name: &str| {
        let f = real_hellos().into_iter().find(|f| f.name == name).unwrap();
        complete(&f.bytes)
    };
    let chromium = by_name("real_chromium");
    assert!(chromium.ech, "chromium sends ECH GREASE");
    assert_eq!(chromium.alpn, ["h2", "http/1.1"]);
    assert!(chromium.versions.contains(&0x0304));
    let tls12 = by_name("real_openssl_tls12");
    assert!(!tls12.ech);
    assert_eq!(tls12.versions, [0x0303]);
    assert_eq!(by_name("real_openssl_tls13").versions, [0x0304]);
}

#[test]
fn real_hellos_refragmented_over_many_records() {
    for fixture in real_hellos() {
        let payload = handshake_payload(&fixture.bytes);
        for sizes in [&[1][..], &[2, 3], &[7], &[100, 1], &[4, 16384]] {
            let bytes = records(&payload, sizes);
            let hello = assert_prefix_property(&bytes, &[]);
            assert_eq!(hello.sni.as_str(), fixture.sni);
            assert_eq!(hello.len, bytes.len());
        }
    }
}

#[test]
fn generated_hello_with_ech_routes_by_outer_name() {
    let hello = complete(&hello(&[
        sni("outer.example.com"),
        Ext(0xfe0d, vec![0; 40]),
    ]));
    assert_eq!((hello.sni.as_str(), hello.ech), ("outer.example.com", true));
}

#[test]
fn record_layer_rejections() {
    let body = client_hello_body(&[sni("a.example.com")]);
    let msg = handshake(1, &body);
    assert_eq!(sni_of(&record(23, &msg)), Err(HelloError::NotHandshake(23)));
    assert_eq!(sni_of(&[21]), Err(HelloError::NotHandshake(21)));
    let mut interleaved = records(&msg[..10], &[10]);
    interleaved.extend(record(20, &[1]));
    assert_eq!(sni_of(&interleaved), Err(HelloError::Interleaved(20)));
    assert_eq!(sni_of(&[22, 3, 1, 0, 0]), Err(HelloError::EmptyRecord));
    assert_eq!(
        sni_of(&[22, 3, 1, 0x40, 0x01]),
        Err(HelloError::RecordTooLong(16385))
    );
    assert_eq!(sni_of(&[22, 2, 0]), Err(HelloError::NotTls));
    assert_eq!(
        sni_of(b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n"),
        Err(HelloError::NotTls)
    );
    assert_eq!(
        sni_of(b"G"),
        Err(HelloError::NotTls),
        "rejected from the first byte"
    );
    assert_eq!(sni_of(b"SSH-2.0-OpenSSH_9.2\r\n"), Err(HelloError::NotTls));
    // SSLv2: 2-byte length with the top bit set, then msg type 1.
    assert_eq!(
        sni_of(&[0x80, 0x2e, 0x01, 0x00, 0x02]),
        Err(HelloError::Sslv2)
    );
    assert_eq!(
        sni_of(&[0x80, 0x2e]),
        Ok(None),
        "undecided until the third byte"
    );
}

#[test]
fn handshake_layer_rejections() {
    let body = client_hello_body(&[sni("a.example.com")]);
    assert_eq!(
        sni_of(&records(&handshake(2, &body), &[16384])),
        Err(HelloError::NotClientHello(2))
    );
    assert_eq!(
        sni_of(&record(22, &[2])),
        Err(HelloError::NotClientHello(2)),
        "known from one byte"
    );
    let mut trailing = handshake(1, &body);
    trailing.extend(handshake(1, &body));
    assert_eq!(
        sni_of(&records(&trailing, &[16384])),
        Err(HelloError::TrailingHandshake)
    );
    assert_eq!(
        sni_of(&records(&handshake(1, &[]), &[16384])),
        Err(HelloError::Malformed("client_hello_fields"))
    );
}

#[test]
fn size_limit_counts_record_bytes() {
    let padding = Ext(21, vec![0; 3000]);
    let big = hello(&[sni("a.example.com"), padding]);
    assert!(
        parse(&big, big.len()).unwrap().is_some(),
        "exactly at the limit"
    );
    assert_eq!(
        parse(&big, big.len() - 1),
        Err(HelloError::TooLarge(big.len() - 1))
    );
    // A handshake length that can never fit is refused from its header, before the bytes.
    let claim = records(&[1, 0x01, 0, 0], &[4]);
    assert_eq!(parse(&claim, 4096), Err(HelloError::TooLarge(4096)));
    // Many small records: the record overhead counts too.
    let payload = handshake_payload(&big);
    let fragmented = records(&payload, &[1]);
    assert_eq!(
        parse(&fragmented, LIMIT.min(big.len() * 2)),
        Err(HelloError::TooLarge(big.len() * 2))
    );
}

#[test]
fn inconsistent_inner_lengths_are_bad_hello() {
    // Extensions block claiming more bytes than the message has: tls-parser alone would
    // call this "no extensions"; it must not become no_sni.
    let mut body = client_hello_fields();
    let mut block = extensions_block(&[sni("a.example.com")]);
    block[1] += 10;
    body.extend(block);
    assert_eq!(
        sni_of(&records(&handshake(1, &body), &[16384])),
        Err(HelloError::Malformed("extensions_length"))
    );

    // One extension overrunning the block.
    let mut body = client_hello_fields();
    let mut block = extensions_block(&[sni("a.example.com")]);
    block[5] += 1;
    body.extend(block);
    let err = sni_of(&records(&handshake(1, &body), &[16384])).unwrap_err();
    assert_eq!(err.reason(), "bad_hello");

    // server_name list length disagreeing with the extension length.
    let Ext(_, mut sni_body) = sni("a.example.com");
    sni_body[1] -= 1;
    assert_eq!(
        sni_of(&hello(&[Ext(0, sni_body)])),
        Err(HelloError::Malformed("server_name_length"))
    );

    // Stray bytes after a valid entry, inside a list whose length counts them (found by the
    // differential fuzz target: rustls takes the first entry and ignores the rest).
    let Ext(_, mut sni_body) = sni("translate.googleapis.com");
    sni_body.extend_from_slice(b"pis.\x01\x00\x00");
    let list_len = (sni_body.len() - 2) as u16;
    sni_body[..2].copy_from_slice(&list_len.to_be_bytes());
    assert_eq!(
        sni_of(&hello(&[Ext(0, sni_body)])),
        Err(HelloError::Malformed("server_name_length"))
    );

    // A name entry overrunning the list.
    let Ext(_, mut sni_body) = sni("a.example.com");
    sni_body[4] += 1;
    assert_eq!(
        sni_of(&hello(&[Ext(0, sni_body)])).unwrap_err().reason(),
        "bad_hello"
    );

    // Session id longer than 32 bytes.
    let mut body = client_hello_body(&[sni("a.example.com")]);
    body[34] = 33;
    assert_eq!(
        sni_of(&records(&handshake(1, &body), &[16384]))
            .unwrap_err()
            .reason(),
        "bad_hello"
    );
}

#[test]
fn duplicate_extensions_are_refused() {
    let twice = hello(&[sni("a.example.com"), alpn(&["h2"]), alpn(&["h2"])]);
    assert_eq!(sni_of(&twice), Err(HelloError::DuplicateExtension(16)));
    let two_sni = hello(&[sni("a.example.com"), sni("b.example.com")]);
    assert_eq!(sni_of(&two_sni), Err(HelloError::DuplicateExtension(0)));
    let grease_twice = hello(&[
        Ext(0x0a0a, vec![]),
        sni("a.example.com"),
        Ext(0x0a0a, vec![]),
    ]);
    assert_eq!(
        sni_of(&grease_twice),
        Err(HelloError::DuplicateExtension(0x0a0a))
    );
}

#[test]
fn missing_server_name_is_no_sni() {
    assert_eq!(sni_of(&hello(&[alpn(&["h2"])])), Err(HelloError::NoSni));
    let no_extensions = records(&handshake(1, &client_hello_fields()), &[16384]);
    assert_eq!(sni_of(&no_extensions), Err(HelloError::NoSni));
    assert_eq!(HelloError::NoSni.reason(), "no_sni");
}

#[test]
fn server_name_must_be_one_valid_host_name() {
    let cases: Vec<(Ext, HelloError)> = vec![
        (sni_entries(&[]), HelloError::SniNotOneHostName),
        (Ext(0, vec![]), HelloError::SniNotOneHostName),
        (
            sni_entries(&[(0, b"a.example.com"), (0, b"b.example.com")]),
            HelloError::SniNotOneHostName,
        ),
        (
            sni_entries(&[(1, b"a.example.com")]),
            HelloError::SniNotOneHostName,
        ),
        (sni(""), HelloError::BadSni(HostnameError::Empty)),
        (
            sni("192.0.2.1"),
            HelloError::BadSni(HostnameError::IpLiteral),
        ),
        (
            sni("[::1]"),
            HelloError::BadSni(HostnameError::BadByte(b'[')),
        ),
        (
            sni("a_b.example.com"),
            HelloError::BadSni(HostnameError::BadByte(b'_')),
        ),
        (
            sni("-a.example.com"),
            HelloError::BadSni(HostnameError::Hyphen),
        ),
        (
            sni("a..example.com"),
            HelloError::BadSni(HostnameError::EmptyLabel),
        ),
        (
            sni(&"a".repeat(64)),
            HelloError::BadSni(HostnameError::LabelTooLong),
        ),
        (
            sni(&format!("{}.com", vec!["a".repeat(60); 5].join("."))),
            HelloError::BadSni(HostnameError::TooLong),
        ),
        (
            sni_entries(&[(0, b"evil.test\0.sandbox.googleapis.com")]),
            HelloError::BadSni(HostnameError::BadByte(0)),
        ),
    ];
    for (ext, want) in cases {
        let got = sni_of(&hello(&[ext]));
        assert_eq!(got, Err(want.clone()));
        assert_eq!(want.reason(), "bad_sni");
    }
    assert_eq!(
        sni_of(&hello_for("Mixed.Example.COM.")).unwrap().unwrap(),
        "mixed.example.com"
    );
}

mod properties {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    /// A valid host name: 1-4 labels of letters, digits and inner hyphens, then a TLD.
    fn host_name() -> impl Strategy<Value = String> {
        (
            vec("[a-zA-Z0-9]([a-zA-Z0-9-]{0,12}[a-zA-Z0-9])?", 1..5),
            "[a-zA-Z]{2,8}",
        )
            .prop_map(|(labels, tld)| format!("{}.{tld}", labels.join(".")))
    }

    /// Extensions the reader does not interpret, with distinct types.
    fn other_extensions() -> impl Strategy<Value = Vec<Ext>> {
        vec((1000u16..60000, vec(any::<u8>(), 0..48)), 0..10).prop_map(|list| {
            let mut seen = std::collections::HashSet::new();
            list.into_iter()
                .filter(|(t, _)| seen.insert(*t))
                .map(|(t, body)| Ext(t, body))
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_valid_hello_yields_the_name_it_was_built_with(
            name in host_name(),
            mut exts in other_extensions(),
            position in any::<prop::sample::Index>(),
            record_sizes in vec(1usize..600, 1..6),
            read_size in 1usize..300,
            trailing_dot in any::<bool>(),
        ) {
            let sent = if trailing_dot { format!("{name}.") } else { name.clone() };
            let at = position.index(exts.len() + 1);
            exts.insert(at, sni(&sent));
            let bytes = records(&handshake(1, &client_hello_body(&exts)), &record_sizes);
            let hello = complete(&bytes);
            prop_assert_eq!(hello.sni.as_str(), name.to_ascii_lowercase());
            prop_assert_eq!(hello.len, bytes.len());
            // Read in chunks of any size, the reader agrees.
            let mut reader = HelloReader::new(LIMIT);
            let mut end = 0;
            let chunked = loop {
                end = (end + read_size).min(bytes.len());
                match reader.advance(&bytes[..end]) {
                    Ok(None) if end < bytes.len() => continue,
                    answer => break answer,
                }
            };
            prop_assert_eq!(chunked, Ok(Some(hello)));
        }
    }
}
