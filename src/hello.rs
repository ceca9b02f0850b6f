//! ClientHello reassembly and SNI extraction: a pure function of the bytes received so far.
//!
//! The record layer is handled here (a handshake message may be split over any number of
//! records, and records over any number of reads); `tls-parser` parses the reassembled
//! message. Parsing stops at the end of the ClientHello: whatever follows (ChangeCipherSpec,
//! 0-RTT data) is stream data for the upstream, never inspected.

use crate::hostname::{Hostname, HostnameError};
use crate::ja4::{Ja4, Offered, fingerprint, is_grease};
use tls_parser::TlsExtension;

/// A record body may not exceed 2^14 bytes (RFC 8446 §5.1).
pub const MAX_RECORD_BODY: usize = 1 << 14;
const RECORD_HEADER: usize = 5;
const HANDSHAKE_HEADER: usize = 4;
const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
/// The one server_name entry type there is.
const SNI_HOST_NAME: u8 = 0;
const EXT_ALPN: u16 = 16;
const EXT_SUPPORTED_VERSIONS: u16 = 43;
const EXT_SIGNATURE_ALGORITHMS: u16 = 13;
const EXT_ENCRYPTED_CLIENT_HELLO: u16 = 0xfe0d;

/// What the relay learnt from a complete ClientHello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The (outer) server name, validated and normalised.
    pub sni: Hostname,
    /// ALPN protocols offered, for logging (empty from a [`HelloReader::brief`] reader).
    pub alpn: Vec<String>,
    /// TLS versions offered: supported_versions without GREASE, else the legacy version
    /// (empty from a brief reader).
    pub versions: Vec<u16>,
    /// An encrypted_client_hello extension was present (real ECH or GREASE).
    pub ech: bool,
    /// Bytes of the records that carried the hello; bytes after this are stream data.
    pub len: usize,
    /// Its JA4 fingerprint, where the reader was asked for it ([`HelloReader::fingerprint`]).
    pub ja4: Option<Ja4>,
}

/// Why a ClientHello was refused. `reason()` is the stable log word, `detail()` a finer one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// The bytes are not TLS at all (for example an HTTP request).
    #[error("not TLS")]
    NotTls,
    /// An SSL 2.0-style hello, which carries no SNI and no modern client sends.
    #[error("SSLv2-style hello")]
    Sslv2,
    /// The first record is TLS but not a handshake record.
    #[error("first record has content type {0}, not handshake")]
    NotHandshake(u8),
    /// A non-handshake record arrived before the ClientHello was complete.
    #[error("record of content type {0} inside the ClientHello")]
    Interleaved(u8),
    /// A record with an empty body.
    #[error("zero-length record")]
    EmptyRecord,
    /// A record body over 2^14 bytes.
    #[error("record of {0} bytes is over 2^14")]
    RecordTooLong(usize),
    /// The handshake message is not a ClientHello.
    #[error("handshake message type {0} is not ClientHello")]
    NotClientHello(u8),
    /// The hello does not fit in `max_hello_bytes`.
    #[error("ClientHello larger than {0} bytes")]
    TooLarge(usize),
    /// Inner lengths that do not add up, or a body `tls-parser` cannot parse.
    #[error("malformed ClientHello ({0})")]
    Malformed(&'static str),
    /// The same extension type twice.
    #[error("extension {0} appears twice")]
    DuplicateExtension(u16),
    /// More handshake bytes after the ClientHello in its last record.
    #[error("handshake bytes after the ClientHello")]
    TrailingHandshake,
    /// No server_name extension.
    #[error("no server_name extension")]
    NoSni,
    /// A server_name extension whose list is not exactly one host_name entry.
    #[error("server_name must hold exactly one host_name")]
    SniNotOneHostName,
    /// The server name is not a valid DNS host name.
    #[error("server name is not a valid host name: {0}")]
    BadSni(HostnameError),
}

impl HelloError {
    /// The stable reason word for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoSni => "no_sni",
            Self::SniNotOneHostName | Self::BadSni(_) => "bad_sni",
            _ => "bad_hello",
        }
    }

    /// A stable word that narrows the reason down.
    pub fn detail(&self) -> &'static str {
        match self {
            Self::NotTls => "not_tls",
            Self::Sslv2 => "sslv2",
            Self::NotHandshake(_) => "not_handshake",
            Self::Interleaved(_) => "interleaved_record",
            Self::EmptyRecord => "empty_record",
            Self::RecordTooLong(_) => "record_too_long",
            Self::NotClientHello(_) => "not_client_hello",
            Self::TooLarge(_) => "too_large",
            Self::Malformed(_) => "malformed",
            Self::DuplicateExtension(_) => "duplicate_extension",
            Self::TrailingHandshake => "trailing_handshake",
            Self::NoSni => "no_server_name",
            Self::SniNotOneHostName => "not_one_host_name",
            Self::BadSni(e) => e.word(),
        }
    }
}

/// Incremental reader: feed it the whole buffer each time more bytes arrive.
///
/// It remembers how far it has scanned, so a hello trickling in one byte per read costs
/// linear, not quadratic, work. Its answer depends only on the bytes, never on how they
/// were split.
#[derive(Debug)]
pub struct HelloReader {
    limit: usize,
    scanned: usize,
    handshake: Vec<u8>,
    fingerprint: bool,
    brief: bool,
}

impl HelloReader {
    /// A reader that refuses hellos whose records exceed `limit` bytes in total.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            scanned: 0,
            handshake: Vec::new(),
            fingerprint: false,
            brief: false,
        }
    }

    /// Also takes the hello's JA4 fingerprint: two SHA-256 hashes, worth paying only where
    /// something will show it (the log line, the audit log).
    pub fn fingerprint(mut self, wanted: bool) -> Self {
        self.fingerprint = wanted;
        self
    }

    /// Leaves out what only the log line and the audit log show, the ALPN list and the
    /// offered versions (empty then): allocations a relay logging at warn never uses.
    pub fn brief(mut self, brief: bool) -> Self {
        self.brief = brief;
        self
    }

    fn wanted(&self) -> Wanted {
        Wanted {
            ja4: self.fingerprint,
            names: !self.brief || self.fingerprint,
        }
    }

    /// `received` must extend what the previous call saw. `Ok(None)` means: read more.
    pub fn advance(&mut self, received: &[u8]) -> Result<Option<ClientHello>, HelloError> {
        loop {
            let rest = &received[self.scanned..];
            let first = self.scanned == 0;
            check_header_prefix(rest, first)?;
            if rest.len() < RECORD_HEADER {
                break;
            }
            let body_len = record_body_len(rest);
            if body_len == 0 {
                return Err(HelloError::EmptyRecord);
            }
            if body_len > MAX_RECORD_BODY {
                return Err(HelloError::RecordTooLong(body_len));
            }
            let record_end = self.scanned + RECORD_HEADER + body_len;
            if record_end > self.limit {
                return Err(HelloError::TooLarge(self.limit));
            }
            if received.len() < record_end {
                break;
            }
            let body = &received[self.scanned + RECORD_HEADER..record_end];
            self.scanned = record_end;
            // A hello in one record (nearly all of them) is read where it lies; only one
            // spread over records is put together first.
            let found = if self.handshake.is_empty() {
                let found = complete_message(body, self.scanned, self.limit, self.wanted())?;
                if found.is_none() {
                    self.handshake.extend_from_slice(body);
                }
                found
            } else {
                self.handshake.extend_from_slice(body);
                complete_message(&self.handshake, self.scanned, self.limit, self.wanted())?
            };
            if found.is_some() {
                return Ok(found);
            }
        }
        if received.len() >= self.limit {
            return Err(HelloError::TooLarge(self.limit));
        }
        Ok(None)
    }

    /// After `advance(received)` said "read more": the fewest further bytes after which
    /// the answer can change. Inside a record body that is the rest of the record, since a
    /// body is judged only once complete; elsewhere 1, since a header can be refused from
    /// its first byte.
    pub fn missing(&self, received: &[u8]) -> usize {
        let rest = &received[self.scanned.min(received.len())..];
        if rest.len() < RECORD_HEADER {
            return 1;
        }
        (RECORD_HEADER + record_body_len(rest))
            .saturating_sub(rest.len())
            .max(1)
    }
}

/// What a reader takes from a hello beyond its name.
#[derive(Debug, Clone, Copy)]
struct Wanted {
    /// The JA4 fingerprint.
    ja4: bool,
    /// The ALPN list and the offered versions.
    names: bool,
}

/// The hello, once `hs` (the handshake bytes of the records read so far, which end at
/// `scanned`) holds the whole message.
fn complete_message(
    hs: &[u8],
    scanned: usize,
    limit: usize,
    wanted: Wanted,
) -> Result<Option<ClientHello>, HelloError> {
    if hs[0] != HANDSHAKE_CLIENT_HELLO {
        return Err(HelloError::NotClientHello(hs[0]));
    }
    if hs.len() < HANDSHAKE_HEADER {
        return Ok(None);
    }
    let body_len = usize::from(hs[1]) << 16 | usize::from(hs[2]) << 8 | usize::from(hs[3]);
    if RECORD_HEADER + HANDSHAKE_HEADER + body_len > limit {
        return Err(HelloError::TooLarge(limit));
    }
    let end = HANDSHAKE_HEADER + body_len;
    match hs.len().cmp(&end) {
        std::cmp::Ordering::Less => Ok(None),
        std::cmp::Ordering::Greater => Err(HelloError::TrailingHandshake),
        std::cmp::Ordering::Equal => parse_body(&hs[HANDSHAKE_HEADER..], scanned, wanted).map(Some),
    }
}

/// The body length a complete record header announces.
fn record_body_len(header: &[u8]) -> usize {
    usize::from(u16::from_be_bytes([header[3], header[4]]))
}

/// One-shot form of [`HelloReader`] for a buffer that is all there is so far.
pub fn parse(received: &[u8], limit: usize) -> Result<Option<ClientHello>, HelloError> {
    HelloReader::new(limit).advance(received)
}

/// Rejects as early as the first byte: a port scanner or an HTTP client is refused without
/// waiting for the hello deadline.
fn check_header_prefix(header: &[u8], first: bool) -> Result<(), HelloError> {
    let Some(&content_type) = header.first() else {
        return Ok(());
    };
    match content_type {
        CONTENT_HANDSHAKE => match header.get(1) {
            Some(3) | None => Ok(()),
            Some(_) => Err(HelloError::NotTls),
        },
        20..=24 if first => Err(HelloError::NotHandshake(content_type)),
        20..=24 => Err(HelloError::Interleaved(content_type)),
        // SSLv2 framing: two length bytes with the top bit set, then message type 1.
        0x80.. if first => match header.get(2) {
            None => Ok(()),
            Some(1) => Err(HelloError::Sslv2),
            Some(_) => Err(HelloError::NotTls),
        },
        _ => Err(HelloError::NotTls),
    }
}

fn parse_body(body: &[u8], len: usize, wanted: Wanted) -> Result<ClientHello, HelloError> {
    let (rest, hello) = tls_parser::parse_tls_handshake_client_hello(body)
        .map_err(|_| HelloError::Malformed("client_hello_fields"))?;
    // tls-parser reads an extensions block that overruns the message as "no extensions"
    // and leaves it unread; that is a length mismatch, not a hello without SNI.
    if !rest.is_empty() {
        return Err(HelloError::Malformed("extensions_length"));
    }
    let mut sni = None;
    let mut alpn = Vec::new();
    let mut versions = Vec::new();
    let mut ech = false;
    let mut first_alpn = None;
    let mut signature_algorithms = None;
    // Room for every extension a browser sends, in one allocation.
    let mut seen = Vec::with_capacity(32);
    let mut block = hello.ext.unwrap_or_default();
    while !block.is_empty() {
        let (ext_type, raw, next) = split_extension(block)?;
        block = next;
        seen.push(ext_type);
        match ext_type {
            EXT_SERVER_NAME => sni = Some(raw),
            EXT_ALPN if wanted.names => {
                if let Ok((_, TlsExtension::ALPN(protocols))) = tls_parser::parse_tls_extension(raw)
                {
                    first_alpn = protocols.first().copied();
                    alpn = protocols
                        .iter()
                        .map(|p| String::from_utf8_lossy(p).into_owned())
                        .collect();
                }
            }
            EXT_SUPPORTED_VERSIONS if wanted.names => {
                if let Ok((_, TlsExtension::SupportedVersions(offered))) =
                    tls_parser::parse_tls_extension(raw)
                {
                    versions = offered
                        .iter()
                        .map(|v| v.0)
                        .filter(|v| !is_grease(*v))
                        .collect();
                }
            }
            EXT_ENCRYPTED_CLIENT_HELLO => ech = true,
            EXT_SIGNATURE_ALGORITHMS => signature_algorithms = raw.get(4..),
            _ => {}
        }
    }
    seen.sort_unstable();
    if let Some(pair) = seen.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(HelloError::DuplicateExtension(pair[0]));
    }
    if versions.is_empty() && wanted.names {
        versions.push(hello.version.0);
    }
    let ja4 = wanted.ja4.then(|| {
        let ciphers: Vec<u16> = hello.ciphers.iter().map(|c| c.0).collect();
        fingerprint(&Offered {
            version: versions.iter().copied().max().unwrap_or(hello.version.0),
            sni: sni.is_some(),
            ciphers: &ciphers,
            extensions: &seen,
            alpn: first_alpn,
            signature_algorithms,
        })
    });
    let sni = server_name(sni.ok_or(HelloError::NoSni)?)?;
    Ok(ClientHello {
        sni,
        alpn,
        versions,
        ech,
        len,
        ja4,
    })
}

/// Splits the first extension off `block`: (type, the extension with its header, the rest).
fn split_extension(block: &[u8]) -> Result<(u16, &[u8], &[u8]), HelloError> {
    let [t0, t1, l0, l1, ..] = *block else {
        return Err(HelloError::Malformed("extension_header"));
    };
    let end = 4 + usize::from(u16::from_be_bytes([l0, l1]));
    if block.len() < end {
        return Err(HelloError::Malformed("extension_length"));
    }
    let (raw, rest) = block.split_at(end);
    Ok((u16::from_be_bytes([t0, t1]), raw, rest))
}

/// The server_name extension (with its header) must hold exactly one host_name entry whose
/// lengths add up exactly. Read here, not by tls-parser, which lists the entries in a
/// vector (an allocation per connection) and tolerates trailing bytes inside the list.
fn server_name(raw: &[u8]) -> Result<Hostname, HelloError> {
    let data = &raw[4..];
    let (list_len, mut entries) = match data {
        [a, b, rest @ ..] => (usize::from(u16::from_be_bytes([*a, *b])), rest),
        _ => return Err(HelloError::SniNotOneHostName),
    };
    if list_len != entries.len() {
        return Err(HelloError::Malformed("server_name_length"));
    }
    let (mut count, mut host_name) = (0, None);
    while !entries.is_empty() {
        let [kind, l0, l1, rest @ ..] = entries else {
            return Err(HelloError::Malformed("server_name_length"));
        };
        let len = usize::from(u16::from_be_bytes([*l0, *l1]));
        if rest.len() < len {
            return Err(HelloError::Malformed("server_name_length"));
        }
        let (name, next) = rest.split_at(len);
        count += 1;
        if *kind == SNI_HOST_NAME {
            host_name = Some(name);
        }
        entries = next;
    }
    match (count, host_name) {
        (1, Some(name)) => Hostname::parse(name).map_err(HelloError::BadSni),
        _ => Err(HelloError::SniNotOneHostName),
    }
}
