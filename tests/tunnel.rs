//! A CONNECT listener through the real binary: the tunnel carries real TLS end to end, and
//! each refusal is an HTTP answer with its status and reason, or after the 200 a TLS alert.

mod common;

use common::hellogen::hello_for;
use common::{RelayProcess, Upstream, dns_server, pki, refusing, within};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const NAME: &str = "translation.googleapis.com";

fn field<'a>(log: &'a Value, key: &str) -> &'a str {
    log[key].as_str().unwrap_or_default()
}

/// A relay with one CONNECT listener; `allow` as given, `tweak` for the rest.
async fn connect_relay(allow: Value, tweak: impl FnOnce(&mut Value)) -> RelayProcess {
    let mut config = json!({
        "listen": [{"addr": "127.0.0.1:0", "accept": "connect"}],
        "allow": allow,
        "timeouts": {"hello_ms": 5000, "connect_ms": 5000, "drain_s": 5},
    });
    tweak(&mut config);
    RelayProcess::start_with(config, &[]).await
}

/// Sends `request` and reads the answer's head (up to the empty line).
async fn ask(relay: &RelayProcess, request: &[u8]) -> (TcpStream, String) {
    let mut client = TcpStream::connect(relay.addr()).await.unwrap();
    client.write_all(request).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        if client.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    (client, String::from_utf8(head).unwrap())
}

/// A CONNECT for NAME with `user:password` in a `Proxy-Authorization: Basic` header.
fn basic(credentials: &str) -> Vec<u8> {
    use base64::Engine;
    format!(
        "CONNECT {NAME}:443 HTTP/1.1\r\nProxy-Authorization: Basic {}\r\n\r\n",
        base64::engine::general_purpose::STANDARD.encode(credentials)
    )
    .into_bytes()
}

fn connect(host_port: &str) -> Vec<u8> {
    format!("CONNECT {host_port} HTTP/1.1\r\nHost: {host_port}\r\n\r\n").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_carries_tls_end_to_end_after_its_200() {
    within(async {
        let pki = pki(&[NAME]);
        let upstream = Upstream::bind("127.0.0.1").await;
        let pinned = upstream.addr.to_string();
        let acceptor = pki.acceptor();
        let server = tokio::spawn(async move {
            let mut tls = acceptor.accept(upstream.accept().await).await.unwrap();
            let mut asked = [0u8; 4];
            tls.read_exact(&mut asked).await.unwrap();
            assert_eq!(&asked, b"ping");
            tls.write_all(b"pong").await.unwrap();
            tls.shutdown().await.unwrap();
        });
        let mut relay = connect_relay(json!([{"name": NAME, "upstream": pinned}]), |_| {}).await;
        // As curl asks, with the name in any case and a trailing dot.
        let (client, head) = ask(&relay, &connect("Translation.GoogleAPIs.com.:443")).await;
        assert_eq!(head, "HTTP/1.1 200 Connection established\r\n\r\n");
        let server_name = rustls::pki_types::ServerName::try_from(NAME).unwrap();
        let mut tls = pki.connector().connect(server_name, client).await.unwrap();
        tls.write_all(b"ping").await.unwrap();
        let mut answer = Vec::new();
        tls.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"pong");
        drop(tls);
        server.await.unwrap();
        let log = relay.next_connection().await;
        assert_eq!(
            (field(&log, "outcome"), field(&log, "reason")),
            ("forwarded", "closed"),
            "{log}"
        );
        assert_eq!(field(&log, "connect"), "translation.googleapis.com:443");
        assert_eq!(field(&log, "sni"), NAME);
        assert_eq!(field(&log, "rule"), NAME);
        assert!(log["request_ms"].as_f64().is_some(), "{log}");
    })
    .await
}

#[tokio::test]
async fn other_methods_malformed_requests_and_ip_addresses_are_answered_and_closed() {
    within(async {
        let mut relay = connect_relay(json!([NAME]), |_| {}).await;
        for (request, status, detail) in [
            (
                &b"GET http://example.com/ HTTP/1.1\r\n\r\n"[..],
                "405",
                "method",
            ),
            (b"\x16\x03\x01\x00\x05hello", "400", "request_line"),
            (
                b"CONNECT 192.0.2.1:443 HTTP/1.1\r\n\r\n",
                "403",
                "ip_literal",
            ),
            (
                b"CONNECT [2001:db8::1]:443 HTTP/1.1\r\n\r\n",
                "403",
                "ip_literal",
            ),
            (
                b"CONNECT a_b.example.com:443 HTTP/1.1\r\n\r\n",
                "400",
                "bad_character",
            ),
        ] {
            let (mut client, head) = ask(&relay, request).await;
            assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{head}");
            assert!(
                head.contains("\r\nX-Snirelay-Reason: bad_connect\r\n"),
                "{head}"
            );
            let mut body = String::new();
            client.read_to_string(&mut body).await.unwrap();
            assert!(body.starts_with("snirelay: bad_connect: "), "{body}");
            drop(client);
            let log = relay.next_connection().await;
            assert_eq!(
                (
                    field(&log, "reason"),
                    field(&log, "detail"),
                    field(&log, "side")
                ),
                ("bad_connect", detail, "client"),
                "{log}"
            );
        }
    })
    .await
}

/// Asks for `request`, expects `status` with `reason` in the header and the log, and
/// returns the log line.
async fn refused(relay: &mut RelayProcess, request: &[u8], status: u16, reason: &str) -> Value {
    let (mut client, head) = ask(relay, request).await;
    assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{head}");
    assert!(
        head.contains(&format!("\r\nX-Snirelay-Reason: {reason}\r\n")),
        "{head}"
    );
    let mut body = String::new();
    client.read_to_string(&mut body).await.unwrap();
    assert!(body.starts_with(&format!("snirelay: {reason}: ")), "{body}");
    drop(client);
    let log = relay.next_connection().await;
    assert_eq!(
        (field(&log, "outcome"), field(&log, "reason")),
        ("rejected", reason),
        "{log}"
    );
    log
}

#[tokio::test]
async fn a_name_or_port_not_allowed_is_403_and_reaches_nothing() {
    within(async {
        let upstream = Upstream::bind("127.0.0.1").await;
        let pinned = upstream.addr.to_string();
        let mut relay = connect_relay(json!([{"name": NAME, "upstream": pinned}]), |_| {}).await;
        let log = refused(
            &mut relay,
            &connect("storage.googleapis.com:443"),
            403,
            "not_allowed",
        )
        .await;
        assert_eq!(field(&log, "connect"), "storage.googleapis.com:443");
        refused(
            &mut relay,
            &connect(&format!("{NAME}:22")),
            403,
            "port_not_allowed",
        )
        .await;
        assert!(upstream.untouched());
    })
    .await
}

/// 502 when the upstream refuses or DNS has no answer, 504 when DNS does not answer in
/// time: the client's own error says which.
#[tokio::test]
async fn an_upstream_that_cannot_be_reached_is_502_or_504_with_the_reason() {
    within(async {
        let (_held, closed) = refusing("127.0.0.1");
        let mut relay = connect_relay(
            json!([{"name": NAME, "upstream": closed.to_string()}]),
            |_| {},
        )
        .await;
        let log = refused(
            &mut relay,
            &connect(&format!("{NAME}:443")),
            502,
            "upstream_unreachable",
        )
        .await;
        assert_eq!(field(&log, "detail"), "refused", "{log}");

        let dns = dns_server(Vec::new()).await;
        let mut relay = connect_relay(json!(["*.relay.test"]), |c| {
            c["resolver"] = json!({"nameservers": [dns.to_string()]});
        })
        .await;
        refused(
            &mut relay,
            &connect("missing.relay.test:443"),
            502,
            "dns_failed",
        )
        .await;

        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut relay = connect_relay(json!(["*.relay.test"]), |c| {
            c["resolver"] = json!({"nameservers": [silent.local_addr().unwrap().to_string()]});
            c["timeouts"]["connect_ms"] = json!(300);
        })
        .await;
        let log = refused(
            &mut relay,
            &connect("slow.relay.test:443"),
            504,
            "dns_failed",
        )
        .await;
        assert_eq!(field(&log, "detail"), "timeout", "{log}");
    })
    .await
}

/// Domain fronting: the tunnel is for one name and the hello asks for another. The client
/// gets `unrecognized_name`; the upstream, connected for the first name, not one byte.
#[tokio::test]
async fn a_hello_for_another_name_than_the_request_is_sni_mismatch() {
    within(async {
        let upstream = Upstream::bind("127.0.0.1").await;
        let pinned = upstream.addr.to_string();
        let mut relay = connect_relay(
            json!([{"name": NAME, "upstream": pinned}, {"name": "other.googleapis.com", "upstream": pinned}]),
            |_| {},
        )
        .await;
        let (mut client, head) = ask(&relay, &connect(&format!("{NAME}:443"))).await;
        assert_eq!(head, "HTTP/1.1 200 Connection established\r\n\r\n");
        client.write_all(&hello_for("other.googleapis.com")).await.unwrap();
        let mut alert = Vec::new();
        client.read_to_end(&mut alert).await.unwrap();
        assert_eq!(alert, [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70]);
        drop(client);
        let log = relay.next_connection().await;
        assert_eq!(
            (field(&log, "reason"), field(&log, "side"), field(&log, "sni")),
            ("sni_mismatch", "client", "other.googleapis.com"),
            "{log}"
        );
        let mut forwarded = Vec::new();
        upstream.accept().await.read_to_end(&mut forwarded).await.unwrap();
        assert!(forwarded.is_empty(), "the upstream got {} bytes", forwarded.len());

        // A hello without a name is refused as it is on a TLS listener.
        let (mut client, _) = ask(&relay, &connect(&format!("{NAME}:443"))).await;
        client.write_all(&common::hellogen::hello(&[])).await.unwrap();
        let _ = client.read_to_end(&mut Vec::new()).await;
        drop(client);
        let log = relay.next_connection().await;
        assert_eq!(field(&log, "reason"), "no_sni", "{log}");
    })
    .await
}

/// A request is bounded like a hello: by size (431) and by the hello deadline (408).
#[tokio::test]
async fn an_oversized_or_slow_request_is_refused() {
    within(async {
        let mut relay = connect_relay(json!([NAME]), |c| {
            c["listen"][0]["max_request_bytes"] = json!(256);
            c["timeouts"]["hello_ms"] = json!(300);
        })
        .await;
        let mut big = format!("CONNECT {NAME}:443 HTTP/1.1\r\n").into_bytes();
        while big.len() < 300 {
            big.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        let log = refused(&mut relay, &big, 431, "bad_connect").await;
        assert_eq!(field(&log, "detail"), "too_large", "{log}");
        let log = refused(&mut relay, b"CONNECT translation.goo", 408, "hello_timeout").await;
        assert_eq!(field(&log, "detail"), "request", "{log}");
    })
    .await
}

/// Behind a balancer: the PROXY header first, then the request; the header's client is
/// the one logged (and the one `clients` is checked against).
#[tokio::test]
async fn a_proxy_header_in_front_of_a_connect_request() {
    within(async {
        let mut relay = connect_relay(json!([NAME]), |c| {
            c["listen"][0]["proxy_protocol"] = json!("v1");
            c["listen"][0]["trusted_proxies"] = json!(["127.0.0.0/8"]);
            c["clients"] = json!(["192.0.2.0/24"]);
        })
        .await;
        let request = [
            &b"PROXY TCP4 192.0.2.7 10.20.0.5 51000 443\r\n"[..],
            &connect("storage.googleapis.com:443"),
        ]
        .concat();
        let log = refused(&mut relay, &request, 403, "not_allowed").await;
        assert_eq!(field(&log, "client"), "192.0.2.7:51000", "{log}");
    })
    .await
}

/// With a `users_file`: no credentials or wrong ones are 407 with `Proxy-Authenticate`
/// (the detail says which), a user's are let through and named in the log. The file is
/// read again at a reload.
#[tokio::test]
async fn a_users_file_asks_for_credentials_and_names_the_user() {
    within(async {
        let dir = tempfile::tempdir().unwrap();
        let users = dir.path().join("users");
        let real = common::fixture_dir().join("users/valid");
        std::fs::copy(&real, &users).unwrap();
        let upstream = Upstream::bind("127.0.0.1").await;
        let pinned = upstream.addr.to_string();
        let mut relay = connect_relay(json!([{"name": NAME, "upstream": pinned}]), |c| {
            c["listen"][0]["users_file"] = json!(users.to_str().unwrap());
        })
        .await;
        for (request, detail) in [
            (connect(&format!("{NAME}:443")), "missing"),
            (basic("app1:wrong"), "wrong"),
            (basic("nobody:secret1"), "wrong"),
            (
                format!("CONNECT {NAME}:443 HTTP/1.1\r\nProxy-Authorization: Bearer x\r\n\r\n")
                    .into_bytes(),
                "malformed",
            ),
        ] {
            let (mut client, head) = ask(&relay, &request).await;
            assert!(head.starts_with("HTTP/1.1 407 "), "{head}");
            assert!(
                head.contains("\r\nProxy-Authenticate: Basic realm=\"snirelay\"\r\n"),
                "{head}"
            );
            client.read_to_end(&mut Vec::new()).await.unwrap();
            drop(client);
            let log = relay.next_connection().await;
            assert_eq!(
                (field(&log, "reason"), field(&log, "detail")),
                ("proxy_auth_required", detail),
                "{log}"
            );
        }
        assert!(upstream.untouched());
        // bcrypt's and argon2's users both pass, twice each (the second from memory).
        for credentials in [
            "app1:secret1",
            "app2:secret2",
            "app1:secret1",
            "app2:secret2",
        ] {
            let (mut client, head) = ask(&relay, &basic(credentials)).await;
            assert_eq!(head, "HTTP/1.1 200 Connection established\r\n\r\n");
            client.write_all(&hello_for(NAME)).await.unwrap();
            client.shutdown().await.unwrap();
            upstream
                .accept()
                .await
                .read_to_end(&mut Vec::new())
                .await
                .unwrap();
            client.read_to_end(&mut Vec::new()).await.unwrap();
            let log = relay.next_connection().await;
            assert_eq!(field(&log, "outcome"), "forwarded", "{log}");
            assert_eq!(field(&log, "user"), &credentials[..4], "{log}");
        }
        // A user removed from the file and a reload: refused from then on.
        let only_app2: String = std::fs::read_to_string(&real)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("app1:"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&users, only_app2).unwrap();
        relay.signal("HUP");
        relay.next_message("config reloaded").await;
        let (_, head) = ask(&relay, &basic("app1:secret1")).await;
        assert!(head.starts_with("HTTP/1.1 407 "), "{head}");
    })
    .await
}

/// Groups by proxy user on a CONNECT listener: the same name allowed for one user's group
/// and refused for another's; a user in no group is refused as `client_denied` (403).
#[tokio::test]
async fn groups_by_user_decide_a_connect_listeners_requests() {
    within(async {
        let users = common::fixture_dir().join("users/valid");
        let upstream = Upstream::bind("127.0.0.1").await;
        let pinned = upstream.addr.to_string();
        let mut relay = connect_relay(json!([]), |c| {
            c["listen"][0]["users_file"] = json!(users.to_str().unwrap());
            c["groups"] = json!([
                {"name": "translate", "users": ["app1"], "allow": [{"name": NAME, "upstream": pinned}]},
                {"name": "other", "users": ["nobody-else"], "allow": []},
            ]);
        })
        .await;
        let (client, head) = ask(&relay, &basic("app1:secret1")).await;
        assert_eq!(head, "HTTP/1.1 200 Connection established\r\n\r\n");
        drop(client);
        let log = relay.next_connection().await;
        assert_eq!((field(&log, "group"), field(&log, "user")), ("translate", "app1"), "{log}");
        let log = refused(&mut relay, &basic("app2:secret2"), 403, "client_denied").await;
        assert_eq!(field(&log, "user"), "app2", "{log}");
    })
    .await
}

/// An upgrade hands the CONNECT listener over with its tunnels: one forwarding, and one
/// answered with `200` whose hello has not come yet, which the new relay opens again from
/// the request without answering twice.
#[tokio::test]
async fn an_upgrade_hands_a_connect_listener_over_with_its_tunnels() {
    within(async {
        let upstream = Upstream::bind("127.0.0.1").await;
        let pinned = upstream.addr.to_string();
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("upgrade.sock");
        let args = ["--upgrade-socket", socket.to_str().unwrap()];
        let config = json!({
            "listen": [{"addr": "127.0.0.1:0", "accept": "connect"}],
            "allow": [{"name": NAME, "upstream": pinned}],
            "timeouts": {"hello_ms": 5000, "connect_ms": 5000, "drain_s": 30},
        });
        let mut old = RelayProcess::start_with(config.clone(), &args).await;
        let (mut live, head) = ask(&old, &connect(&format!("{NAME}:443"))).await;
        assert_eq!(head, "HTTP/1.1 200 Connection established\r\n\r\n");
        live.write_all(&hello_for(NAME)).await.unwrap();
        let mut at_upstream = upstream.accept().await;
        let mut hello = vec![0; hello_for(NAME).len()];
        at_upstream.read_exact(&mut hello).await.unwrap();
        // Answered, its hello still to come: the upstream connected for it goes, unused.
        let (mut waiting, head) = ask(&old, &connect(&format!("{NAME}:443"))).await;
        assert_eq!(head, "HTTP/1.1 200 Connection established\r\n\r\n");
        drop(upstream.accept().await);

        let mut new = RelayProcess::start_with(config, &args).await;
        assert_eq!(new.addr(), old.addr());
        let taken = old
            .next_message("upgrade: the new relay took every connection")
            .await;
        assert_eq!(taken["connections"], 2);
        assert!(
            old.wait().await.success(),
            "exits at once: nothing to drain"
        );
        // The answered one is opened again from its request: a new upstream connection,
        // its hello goes there, and the first bytes back are the upstream's, not a second
        // 200.
        let mut second = upstream.accept().await;
        waiting.write_all(&hello_for(NAME)).await.unwrap();
        second.read_exact(&mut hello).await.unwrap();
        assert_eq!(hello, hello_for(NAME));
        second.write_all(b"pong").await.unwrap();
        let mut pong = [0; 4];
        waiting.read_exact(&mut pong).await.unwrap();
        assert_eq!(&pong, b"pong");
        // The forwarding tunnel carries on through the new relay.
        live.write_all(b"ping").await.unwrap();
        let mut ping = [0; 4];
        at_upstream.read_exact(&mut ping).await.unwrap();
        assert_eq!(&ping, b"ping");
        // And the new relay takes new ones.
        let (client, head) = ask(&new, &connect(&format!("{NAME}:443"))).await;
        assert_eq!(head, "HTTP/1.1 200 Connection established\r\n\r\n");
        drop(client);
        drop(upstream.accept().await);
        assert_eq!(
            field(&new.next_connection().await, "connect"),
            format!("{NAME}:443")
        );
        drop((live, at_upstream, waiting, second));
        for _ in 0..2 {
            let log = new.next_connection().await;
            assert_eq!(field(&log, "outcome"), "forwarded", "{log}");
            assert_eq!(field(&log, "connect"), format!("{NAME}:443"));
        }
    })
    .await
}

/// Monitor mode on a CONNECT listener: a name no rule allows is tunnelled to itself and
/// logged as `would_refuse`, as on a TLS listener.
#[tokio::test]
async fn monitor_mode_tunnels_a_name_no_rule_allows() {
    within(async {
        let upstream = Upstream::bind("127.0.0.1").await;
        let pin = format!("other.example.com={}", upstream.addr);
        let config = json!({
            "listen": [{"addr": "127.0.0.1:0", "accept": "connect", "mode": "monitor"}],
            "allow": [NAME],
            "timeouts": {"hello_ms": 5000, "connect_ms": 5000, "drain_s": 5},
        });
        let mut relay = RelayProcess::start_with(config, &["--resolve", &pin]).await;
        let (mut client, head) = ask(&relay, &connect("other.example.com:443")).await;
        assert_eq!(head, "HTTP/1.1 200 Connection established\r\n\r\n");
        client
            .write_all(&hello_for("other.example.com"))
            .await
            .unwrap();
        client.shutdown().await.unwrap();
        assert_eq!(upstream.receive_all().await, hello_for("other.example.com"));
        client.read_to_end(&mut Vec::new()).await.unwrap();
        drop(client);
        let log = relay.next_connection().await;
        assert_eq!(
            (field(&log, "reason"), field(&log, "rule")),
            ("would_refuse", "(unlisted)"),
            "{log}"
        );
    })
    .await
}
