//! Differential: wherever rustls's server-side Acceptor finds a ClientHello with a server
//! name, our reader must find the same name, or refuse for one of the documented reasons
//! where it is deliberately stricter than rustls.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snirelay::hello::{parse, HelloError};
use snirelay::hostname::HostnameError;

fuzz_target!(|data: &[u8]| {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut input = data;
    while !input.is_empty() {
        match acceptor.read_tls(&mut input) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let Ok(Some(accepted)) = acceptor.accept() else {
        return;
    };
    let Some(theirs) = accepted.client_hello().server_name().map(|n| n.to_ascii_lowercase()) else {
        return;
    };
    let theirs = theirs.strip_suffix('.').unwrap_or(&theirs).to_owned();
    match parse(data, 1 << 20) {
        Ok(Some(ours)) => assert_eq!(ours.sni.as_str(), theirs, "different server names"),
        Ok(None) => panic!("rustls found {theirs:?} where we want more bytes"),
        Err(e) => assert!(stricter_than_rustls(&e), "rustls accepted {theirs:?}, we refused: {e:?}"),
    }
});

/// Where the relay refuses on purpose what rustls accepts (see README, "Fuzzing").
fn stricter_than_rustls(e: &HelloError) -> bool {
    matches!(
        e,
        // Host names are letters, digits and hyphens only; rustls also takes underscores.
        HelloError::BadSni(HostnameError::BadByte(b'_'))
            // Bytes after the ClientHello inside its last handshake record.
            | HelloError::TrailingHandshake
            // A record-layer version other than 3.x.
            | HelloError::NotTls
            // Stray bytes after the entries of the server_name list: rustls reads the first
            // entry and ignores the rest (found by this target).
            | HelloError::Malformed("server_name_length")
    )
}
