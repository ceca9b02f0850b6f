//! The JA4 fingerprint of a ClientHello (FoxIO's JA4, BSD-3-licensed; not the rest of
//! JA4+): which client software opened a connection, from what its hello offers. Pure.
//!
//! `t13d1516h2_8daaf6152771_e5627efa2ab1`: TLS over TCP, the highest version offered, `d`
//! with a server name (`i` without), the counts of cipher suites and extensions, the first
//! and last characters of the first ALPN value; then the first 12 hex digits of the
//! SHA-256 of the sorted cipher suites, and of the sorted extensions (without SNI and
//! ALPN) followed by the signature algorithms as offered. GREASE values never count.

use std::fmt;

/// What JA4 is made of, as the hello offered it.
#[derive(Debug, Clone, Copy)]
pub struct Offered<'a> {
    /// The highest version in supported_versions, else the hello's own (GREASE left out).
    pub version: u16,
    /// A server_name extension was present.
    pub sni: bool,
    /// The cipher suites, in any order, GREASE included.
    pub ciphers: &'a [u16],
    /// The extension types, sorted, GREASE included.
    pub extensions: &'a [u16],
    /// The first ALPN protocol, as bytes.
    pub alpn: Option<&'a [u8]>,
    /// The signature_algorithms extension's list (its two-byte length first), as sent.
    pub signature_algorithms: Option<&'a [u8]>,
}

/// A JA4 fingerprint: 36 ASCII characters, kept without a heap allocation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Ja4([u8; 36]);

impl Ja4 {
    /// The fingerprint as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever written into it.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// As its text: a fingerprint travels with a connection handed to the next relay.
impl serde::Serialize for Ja4 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Ja4 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <&str>::deserialize(d)?;
        let bytes: [u8; 36] = text
            .as_bytes()
            .try_into()
            .ok()
            .filter(|b: &[u8; 36]| b.is_ascii())
            .ok_or_else(|| serde::de::Error::custom("a JA4 fingerprint is 36 ASCII characters"))?;
        Ok(Ja4(bytes))
    }
}

impl fmt::Display for Ja4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Ja4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// GREASE values (RFC 8701): 0x0a0a, 0x1a1a, ..., 0xfafa.
pub fn is_grease(value: u16) -> bool {
    value & 0x0f0f == 0x0a0a && value >> 8 == value & 0xff
}

const EXT_SERVER_NAME: u16 = 0x0000;
const EXT_ALPN: u16 = 0x0010;

/// The fingerprint of `hello`.
pub fn fingerprint(hello: &Offered<'_>) -> Ja4 {
    let mut out = [b'0'; 36];
    out[0] = b't';
    out[1..3].copy_from_slice(match hello.version {
        0x0304 => b"13",
        0x0303 => b"12",
        0x0302 => b"11",
        0x0301 => b"10",
        0x0300 => b"s3",
        0x0200 => b"s2",
        0x0100 => b"s1",
        _ => b"00",
    });
    out[3] = if hello.sni { b'd' } else { b'i' };
    let ciphers = hello.ciphers.iter().filter(|c| !is_grease(**c)).count();
    let extensions = hello.extensions.iter().filter(|e| !is_grease(**e)).count();
    out[4..6].copy_from_slice(&two_digits(ciphers));
    out[6..8].copy_from_slice(&two_digits(extensions));
    out[8..10].copy_from_slice(&alpn_ends(hello.alpn));
    out[10] = b'_';
    let mut sorted = [0u16; 256];
    let kept = hello.ciphers.iter().copied().filter(|c| !is_grease(*c));
    let mut n = 0;
    for (slot, cipher) in sorted.iter_mut().zip(kept) {
        *slot = cipher;
        n += 1;
    }
    // More than 256 suites (never sent by a real client) are hashed as the first 256.
    let ciphers = &mut sorted[..n];
    ciphers.sort_unstable();
    let none = None::<std::iter::Empty<u16>>;
    out[11..23].copy_from_slice(&truncated_hash(ciphers.iter().copied(), none));
    out[23] = b'_';
    let kept = hello
        .extensions
        .iter()
        .copied()
        .filter(|e| !is_grease(*e) && *e != EXT_SERVER_NAME && *e != EXT_ALPN);
    let signatures = hello.signature_algorithms.map(signature_list);
    out[24..36].copy_from_slice(&truncated_hash(kept, signatures));
    Ja4(out)
}

fn two_digits(n: usize) -> [u8; 2] {
    let n = n.min(99) as u8;
    [b'0' + n / 10, b'0' + n % 10]
}

/// The first and last characters of the first ALPN value; where either is not an ASCII
/// letter or digit, the first and last hex digits of the value instead; `00` without one.
fn alpn_ends(alpn: Option<&[u8]>) -> [u8; 2] {
    let Some((&first, &last)) = alpn.and_then(|a| Some((a.first()?, a.last()?))) else {
        return *b"00";
    };
    if first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric() {
        return [first, last];
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    [HEX[usize::from(first >> 4)], HEX[usize::from(last & 0x0f)]]
}

/// The signature algorithms of a signature_algorithms extension body, as offered; a
/// malformed list is taken as far as it goes.
fn signature_list(body: &[u8]) -> impl Iterator<Item = u16> + '_ {
    let list = body.get(2..).unwrap_or_default();
    let declared = body
        .get(..2)
        .map_or(0, |len| usize::from(u16::from_be_bytes([len[0], len[1]])));
    list[..declared.min(list.len())]
        .chunks_exact(2)
        .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
}

/// The first 12 hex digits of the SHA-256 of `values` as comma-separated 4-digit hex, then
/// `_` and `after` likewise where there is an `after`; 12 zeros for no values at all.
fn truncated_hash(
    values: impl Iterator<Item = u16>,
    after: Option<impl Iterator<Item = u16>>,
) -> [u8; 12] {
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut any = false;
    let mut add = |digest: &mut ring::digest::Context, values: &mut dyn Iterator<Item = u16>| {
        for (i, value) in values.enumerate() {
            if i > 0 {
                digest.update(b",");
            }
            digest.update(&hex4(value));
            any = true;
        }
    };
    add(&mut digest, &mut { values });
    if let Some(after) = after {
        let mut after = after.peekable();
        if after.peek().is_some() {
            digest.update(b"_");
            add(&mut digest, &mut after);
        }
    }
    let mut out = [b'0'; 12];
    if any {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for (i, byte) in digest.finish().as_ref()[..6].iter().enumerate() {
            out[2 * i] = HEX[usize::from(byte >> 4)];
            out[2 * i + 1] = HEX[usize::from(byte & 0x0f)];
        }
    }
    out
}

fn hex4(value: u16) -> [u8; 4] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let nibble = |shift: u16| HEX[usize::from((value >> shift) & 0x0f)];
    [nibble(12), nibble(8), nibble(4), nibble(0)]
}

#[cfg(test)]
mod tests;
