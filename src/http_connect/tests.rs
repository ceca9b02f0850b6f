use super::*;

/// Requests as curl 7.88, Python 3.11's `http.client` (under requests and google-auth) and
/// grpcio 1.85 send them, captured from each.
const REAL: [(&str, &[u8]); 3] = [
    (
        "curl",
        include_bytes!("../../tests/fixtures/connect/curl.txt"),
    ),
    (
        "python",
        include_bytes!("../../tests/fixtures/connect/python_http_client.txt"),
    ),
    (
        "grpcio",
        include_bytes!("../../tests/fixtures/connect/grpcio.txt"),
    ),
];

#[test]
fn real_requests_are_read_whole_and_never_early() {
    for (client, bytes) in REAL {
        let request = parse(bytes, DEFAULT_MAX_REQUEST).unwrap().unwrap();
        assert_eq!(request.port, 443, "{client}");
        assert_eq!(request.len, bytes.len(), "{client}");
        assert!(
            request.host.as_str().ends_with(".googleapis.com"),
            "{client}"
        );
        for end in 0..bytes.len() {
            assert_eq!(
                parse(&bytes[..end], DEFAULT_MAX_REQUEST),
                Ok(None),
                "{client} at {end}"
            );
        }
    }
}

#[test]
fn what_follows_the_head_is_left_to_the_tunnel() {
    let mut bytes =
        b"CONNECT A.Example.COM.:8443 HTTP/1.0\nProxy-Authorization:  Basic dTpw \n\n".to_vec();
    let head = bytes.len();
    bytes.extend_from_slice(&[0x16, 0x03, 0x01]);
    let request = parse(&bytes, DEFAULT_MAX_REQUEST).unwrap().unwrap();
    assert_eq!(
        request,
        ConnectRequest {
            host: "a.example.com".parse().unwrap(),
            port: 8443,
            authorization: Some("Basic dTpw".into()),
            len: head,
        }
    );
}

#[test]
fn other_methods_are_refused_at_their_first_bytes() {
    for early in [&b"GET "[..], b"GET", b"POST / HTTP/1.1\r\n", b"CONNEX"] {
        assert_eq!(
            parse(early, DEFAULT_MAX_REQUEST),
            Err(RequestError::NotConnect),
            "{early:?}"
        );
    }
    // A TLS client that was meant for a TLS listener.
    assert_eq!(
        parse(&[0x16, 0x03, 0x01], 64),
        Err(RequestError::RequestLine)
    );
    assert_eq!(
        parse(b"connect a.example.com:443 HTTP/1.1\r\n\r\n", 64),
        Err(RequestError::RequestLine)
    );
    assert_eq!(RequestError::NotConnect.status(), 405);
}

#[test]
fn each_malformed_request_has_its_detail() {
    let cases: [(&[u8], RequestError); 11] = [
        (
            b"CONNECT a.example.com:443\r\n\r\n",
            RequestError::RequestLine,
        ),
        (
            b"CONNECT a.example.com:443 HTTP/2.0\r\n\r\n",
            RequestError::Version,
        ),
        (
            b"CONNECT a.example.com:443 HTTP/1.1 x\r\n\r\n",
            RequestError::Version,
        ),
        (
            b"CONNECT a.example.com HTTP/1.1\r\n\r\n",
            RequestError::Target,
        ),
        (
            b"CONNECT a.example.com:0 HTTP/1.1\r\n\r\n",
            RequestError::Target,
        ),
        (
            b"CONNECT a.example.com:65536 HTTP/1.1\r\n\r\n",
            RequestError::Target,
        ),
        (
            b"CONNECT a.example.com:+443 HTTP/1.1\r\n\r\n",
            RequestError::Target,
        ),
        (
            b"CONNECT 192.0.2.1:443 HTTP/1.1\r\n\r\n",
            RequestError::IpLiteral,
        ),
        (
            b"CONNECT [2001:db8::1]:443 HTTP/1.1\r\n\r\n",
            RequestError::IpLiteral,
        ),
        (
            b"CONNECT a_b.example.com:443 HTTP/1.1\r\n\r\n",
            RequestError::BadHost(HostnameError::BadByte(b'_')),
        ),
        (
            b"CONNECT a.example.com:443 HTTP/1.1\r\nHost a\r\n\r\n",
            RequestError::Header,
        ),
    ];
    for (bytes, error) in cases {
        assert_eq!(
            parse(bytes, DEFAULT_MAX_REQUEST),
            Err(error),
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    for folded in [
        &b"CONNECT a.b:443 HTTP/1.1\r\n x: y\r\n\r\n"[..],
        b"CONNECT a.b:443 HTTP/1.1\r\nx y: z\r\n\r\n",
    ] {
        assert_eq!(
            parse(folded, DEFAULT_MAX_REQUEST),
            Err(RequestError::Header)
        );
    }
    assert_eq!(RequestError::IpLiteral.detail(), "ip_literal");
    assert_eq!(
        RequestError::BadHost(HostnameError::BadByte(b'_')).detail(),
        "bad_character"
    );
}

#[test]
fn a_head_past_the_limit_is_refused_without_waiting_for_its_end() {
    let mut bytes = b"CONNECT a.example.com:443 HTTP/1.1\r\n".to_vec();
    while bytes.len() <= 256 {
        bytes.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaa\r\n");
    }
    assert_eq!(parse(&bytes, 256), Err(RequestError::TooLarge));
    assert_eq!(parse(&[b'x'; 300][..], 256), Err(RequestError::RequestLine));
    let long = [&b"CONNECT a.example.com:443 HTTP/1.1"[..], &[b'1'; 300]].concat();
    assert_eq!(parse(&long, 256), Err(RequestError::TooLarge));
    // Exactly at the limit is fine.
    let exact = b"CONNECT a.example.com:443 HTTP/1.1\r\n\r\n";
    assert!(parse(exact, exact.len()).unwrap().is_some());
    assert_eq!(parse(exact, exact.len() - 1), Err(RequestError::TooLarge));
}

#[test]
fn a_refusal_says_its_reason_in_a_header_and_a_line() {
    let text = String::from_utf8(refusal(
        403,
        "not_allowed",
        "name not on the allowlist",
        false,
    ))
    .unwrap();
    assert!(
        text.starts_with("HTTP/1.1 403 Forbidden\r\nX-Snirelay-Reason: not_allowed\r\n"),
        "{text}"
    );
    assert!(
        text.ends_with("\r\n\r\nsnirelay: not_allowed: name not on the allowlist\n"),
        "{text}"
    );
    let body = "snirelay: not_allowed: name not on the allowlist\n";
    assert!(text.contains(&format!("Content-Length: {}\r\n", body.len())));
    let text = String::from_utf8(refusal(
        407,
        "proxy_auth_required",
        "credentials needed",
        true,
    ))
    .unwrap();
    assert!(
        text.contains("\r\nProxy-Authenticate: Basic realm=\"snirelay\"\r\n"),
        "{text}"
    );
    let text =
        String::from_utf8(refusal(405, "bad_connect", "method is not CONNECT", false)).unwrap();
    assert!(text.contains("\r\nAllow: CONNECT\r\n"), "{text}");
}
