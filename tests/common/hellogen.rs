//! Builds ClientHellos from parts, so every reject reason and every fragmentation has a
//! generated test case instead of hand-edited bytes.

/// One extension: type and body.
#[derive(Clone, Debug)]
pub struct Ext(pub u16, pub Vec<u8>);

fn u16_len(bytes: &[u8]) -> [u8; 2] {
    (bytes.len() as u16).to_be_bytes()
}

/// A server_name extension with arbitrary (type, name) entries.
pub fn sni_entries(entries: &[(u8, &[u8])]) -> Ext {
    let mut list = Vec::new();
    for (kind, name) in entries {
        list.push(*kind);
        list.extend_from_slice(&u16_len(name));
        list.extend_from_slice(name);
    }
    let mut body = u16_len(&list).to_vec();
    body.extend(list);
    Ext(0, body)
}

/// A server_name extension with one host_name.
pub fn sni(name: &str) -> Ext {
    sni_entries(&[(0, name.as_bytes())])
}

/// An ALPN extension.
pub fn alpn(protocols: &[&str]) -> Ext {
    let mut list = Vec::new();
    for p in protocols {
        list.push(p.len() as u8);
        list.extend_from_slice(p.as_bytes());
    }
    let mut body = u16_len(&list).to_vec();
    body.extend(list);
    Ext(16, body)
}

/// A supported_versions extension (client form).
pub fn versions(list: &[u16]) -> Ext {
    let mut body = vec![(list.len() * 2) as u8];
    for v in list {
        body.extend_from_slice(&v.to_be_bytes());
    }
    Ext(43, body)
}

/// The encoded extensions block, with its length prefix.
pub fn extensions_block(exts: &[Ext]) -> Vec<u8> {
    let mut block = Vec::new();
    for Ext(kind, body) in exts {
        block.extend_from_slice(&kind.to_be_bytes());
        block.extend_from_slice(&u16_len(body));
        block.extend_from_slice(body);
    }
    let mut out = u16_len(&block).to_vec();
    out.extend(block);
    out
}

/// A ClientHello body up to (not including) the extensions block.
pub fn client_hello_fields() -> Vec<u8> {
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[0x5a; 32]);
    body.push(32);
    body.extend_from_slice(&[0x11; 32]);
    body.extend_from_slice(&[0x00, 0x04, 0x13, 0x01, 0x13, 0x02]);
    body.extend_from_slice(&[0x01, 0x00]);
    body
}

/// A full ClientHello body with these extensions.
pub fn client_hello_body(exts: &[Ext]) -> Vec<u8> {
    let mut body = client_hello_fields();
    body.extend(extensions_block(exts));
    body
}

/// A handshake message: type, 24-bit length, body.
pub fn handshake(kind: u8, body: &[u8]) -> Vec<u8> {
    let len = body.len() as u32;
    let mut msg = vec![kind, (len >> 16) as u8, (len >> 8) as u8, len as u8];
    msg.extend_from_slice(body);
    msg
}

/// One record of any content type.
pub fn record(content_type: u8, body: &[u8]) -> Vec<u8> {
    let mut rec = vec![content_type, 0x03, 0x01];
    rec.extend_from_slice(&u16_len(body));
    rec.extend_from_slice(body);
    rec
}

/// `payload` as handshake records whose body sizes cycle through `sizes`.
pub fn records(payload: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = payload;
    for size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (chunk, next) = rest.split_at((*size).min(rest.len()));
        out.extend(record(22, chunk));
        rest = next;
    }
    out
}

/// A complete, single-record ClientHello with these extensions.
pub fn hello(exts: &[Ext]) -> Vec<u8> {
    records(&handshake(1, &client_hello_body(exts)), &[16384])
}

/// A typical hello for `name`.
pub fn hello_for(name: &str) -> Vec<u8> {
    hello(&[
        sni(name),
        alpn(&["h2", "http/1.1"]),
        versions(&[0x0304, 0x0303]),
    ])
}

/// The handshake bytes carried by a sequence of handshake records.
pub fn handshake_payload(mut records: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while records.len() >= 5 {
        let len = usize::from(u16::from_be_bytes([records[3], records[4]]));
        out.extend_from_slice(&records[5..5 + len]);
        records = &records[5 + len..];
    }
    out
}
