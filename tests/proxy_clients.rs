//! Clients that need no hosts file: curl, Python requests and grpcio with `https_proxy` set
//! (a user's credentials in it) reach an upstream through a CONNECT listener and verify its
//! certificate, on a client
//! machine where no name can be looked up (a network and mount namespace of their own:
//! tests/python/through_proxy.py). The relay resolves the name; the client asks DNS
//! nothing about it.

mod common;

const NAME: &str = "translation.googleapis.com";

#[test]
fn curl_requests_and_grpcio_reach_the_upstream_through_a_connect_listener_without_dns() {
    let Some(python) = common::python_with("grpc, requests") else {
        return;
    };
    if !common::available("curl") || !common::namespaces_permitted() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    common::openssl_self_signed(dir, NAME);
    let users = common::fixture_dir().join("users/valid");
    std::fs::write(
        dir.join("rules.json"),
        format!(
            r#"{{"listen": [{{"addr": "127.0.0.1:3128", "accept": "connect", "users_file": "{}"}}], "allow": ["{NAME}"]}}"#,
            users.display()
        ),
    )
    .unwrap();
    let result = common::run_in_namespace(
        &python,
        "through_proxy.py",
        &[common::binary().as_ref(), dir.as_os_str()],
    );
    for (client, body) in [
        ("curl", "hello"),
        ("requests", "hello"),
        ("grpcio", "hello"),
    ] {
        assert_eq!(result[client]["ok"], true, "{client}: {result:#}");
        assert_eq!(result[client]["body"], body, "{client}: {result:#}");
    }
    let queries = result["queries"].as_array().unwrap();
    assert!(
        !queries
            .iter()
            .any(|q| q.as_str().unwrap().starts_with(NAME)),
        "a client looked {NAME} up: {queries:?}"
    );
    // One tunnel each, forwarded and checked: the hello named what the request did, and
    // the credentials in the proxy URL named the user.
    let connections = result["connections"].as_array().unwrap();
    assert_eq!(connections.len(), 3, "{result:#}");
    for line in connections {
        assert_eq!(line["outcome"], "forwarded", "{line}");
        assert_eq!(line["connect"], format!("{NAME}:443"), "{line}");
        assert_eq!(line["sni"], NAME, "{line}");
        assert_eq!(line["user"], "app1", "{line}");
    }
}
