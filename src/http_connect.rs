//! The HTTP CONNECT request a proxy client (curl, Python requests, gRPC, Go, Node) opens a
//! tunnel with, and the short answers it gets. Pure: bytes in, a request or a refusal out.
//!
//! Only what a tunnel to a name needs is read: the request line (`CONNECT host:port
//! HTTP/1.1`, or `HTTP/1.0` as Python's `http.client` sends) and the `Proxy-Authorization`
//! header; other headers are checked for form and skipped. A line may end in CRLF or a bare
//! LF, as HTTP servers accept.

use crate::hostname::{Hostname, HostnameError};

/// The largest request head read by default (the request line and headers).
pub const DEFAULT_MAX_REQUEST: usize = 8 * 1024;

/// The answer that opens the tunnel: nothing follows it but the upstream's bytes.
pub const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";

/// A complete CONNECT request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    /// The host of the request target, in normal form.
    pub host: Hostname,
    /// Its port.
    pub port: u16,
    /// The `Proxy-Authorization` header's value, when there is one.
    pub authorization: Option<String>,
    /// Bytes of the head, the empty line included: what follows is the client's own.
    pub len: usize,
}

/// Why a request is refused before any tunnel. Each has a stable detail word and an HTTP
/// status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// A method other than CONNECT: this is a tunnel, not a web proxy.
    #[error("method is not CONNECT")]
    NotConnect,
    /// The request line is not `METHOD target HTTP/1.x`.
    #[error("malformed request line")]
    RequestLine,
    /// An HTTP version other than 1.0 and 1.1.
    #[error("HTTP version is not 1.0 or 1.1")]
    Version,
    /// The target is not `host:port` with a port from 1 to 65535.
    #[error("target is not host:port")]
    Target,
    /// The target's host is an IP address: the relay tunnels to names only.
    #[error("target is an IP address, not a name")]
    IpLiteral,
    /// The target's host is not a valid host name.
    #[error("target host: {0}")]
    BadHost(HostnameError),
    /// A header line without a colon, with a space before its colon, or folded.
    #[error("malformed header line")]
    Header,
    /// The head did not end within the size limit.
    #[error("request head larger than the limit")]
    TooLarge,
}

impl RequestError {
    /// The stable word logged as the detail of reason `bad_connect`.
    pub fn detail(&self) -> &'static str {
        match self {
            Self::NotConnect => "method",
            Self::RequestLine => "request_line",
            Self::Version => "version",
            Self::Target => "target",
            Self::IpLiteral => "ip_literal",
            Self::BadHost(e) => e.word(),
            Self::Header => "header",
            Self::TooLarge => "too_large",
        }
    }

    /// The status it is answered with.
    pub fn status(&self) -> u16 {
        match self {
            Self::NotConnect => 405,
            Self::IpLiteral => 403,
            Self::TooLarge => 431,
            _ => 400,
        }
    }
}

/// Reads a CONNECT request from the start of `bytes`: `Ok(None)` until the head is
/// complete, refused as soon as what is there cannot become a valid request (a wrong
/// method is refused at its first line, not after the headers), or when the head would
/// pass `limit` bytes.
pub fn parse(bytes: &[u8], limit: usize) -> Result<Option<ConnectRequest>, RequestError> {
    let mut lines = Lines { bytes, at: 0 };
    let Some(first) = lines.next() else {
        prefix_of_connect(bytes)?;
        return match bytes.len() > limit {
            true => Err(RequestError::TooLarge),
            false => Ok(None),
        };
    };
    let (host, port) = request_line(first)?;
    let mut authorization = None;
    loop {
        let Some(line) = lines.next() else {
            return match lines.at > limit || bytes.len() > limit {
                true => Err(RequestError::TooLarge),
                false => Ok(None),
            };
        };
        if lines.at > limit {
            return Err(RequestError::TooLarge);
        }
        if line.is_empty() {
            return Ok(Some(ConnectRequest {
                host,
                port,
                authorization,
                len: lines.at,
            }));
        }
        let (name, value) = header(line)?;
        if name.eq_ignore_ascii_case(b"proxy-authorization") {
            authorization = Some(String::from_utf8_lossy(value).into_owned());
        }
    }
}

/// The lines of a head, each without its CRLF or LF; `at` is where the next one starts.
struct Lines<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = &self.bytes[self.at..];
        let end = rest.iter().position(|&b| b == b'\n')?;
        self.at += end + 1;
        let line = &rest[..end];
        Some(line.strip_suffix(b"\r").unwrap_or(line))
    }
}

/// Refuses early a first line that can no longer start with `CONNECT `.
fn prefix_of_connect(bytes: &[u8]) -> Result<(), RequestError> {
    const METHOD: &[u8] = b"CONNECT ";
    let n = bytes.len().min(METHOD.len());
    if bytes[..n] == METHOD[..n] {
        return Ok(());
    }
    // Another method (a name of capitals, then perhaps its space), or no request at all.
    let name = bytes[..n].split(|&b| b == b' ').next().unwrap_or_default();
    match !name.is_empty() && name.iter().all(u8::is_ascii_uppercase) {
        true => Err(RequestError::NotConnect),
        false => Err(RequestError::RequestLine),
    }
}

/// `CONNECT host:port HTTP/1.1` → the target.
fn request_line(line: &[u8]) -> Result<(Hostname, u16), RequestError> {
    let mut parts = line.splitn(3, |&b| b == b' ');
    let method = parts.next().unwrap_or_default();
    if method != b"CONNECT" {
        let named = !method.is_empty() && method.iter().all(u8::is_ascii_uppercase);
        return Err(match named && line.len() > method.len() {
            true => RequestError::NotConnect,
            false => RequestError::RequestLine,
        });
    }
    let (Some(target), Some(version)) = (parts.next(), parts.next()) else {
        return Err(RequestError::RequestLine);
    };
    if version != b"HTTP/1.1" && version != b"HTTP/1.0" {
        return Err(RequestError::Version);
    }
    if target.starts_with(b"[") {
        return Err(RequestError::IpLiteral);
    }
    let colon = target
        .iter()
        .rposition(|&b| b == b':')
        .ok_or(RequestError::Target)?;
    let (host, port) = (&target[..colon], &target[colon + 1..]);
    let port = std::str::from_utf8(port)
        .ok()
        .filter(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|&p| p != 0)
        .ok_or(RequestError::Target)?;
    let host = Hostname::parse(host).map_err(|e| match e {
        HostnameError::IpLiteral => RequestError::IpLiteral,
        e => RequestError::BadHost(e),
    })?;
    Ok((host, port))
}

/// `Name: value` → both, the value without the spaces around it.
fn header(line: &[u8]) -> Result<(&[u8], &[u8]), RequestError> {
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(RequestError::Header)?;
    let name = &line[..colon];
    let token = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
    if name.is_empty() || !name.iter().all(token) {
        return Err(RequestError::Header);
    }
    Ok((name, line[colon + 1..].trim_ascii()))
}

/// A refusal: the status line, `X-Snirelay-Reason: REASON` (for the operator's grep and
/// the client's error), and a one-line body saying why.
pub fn refusal(status: u16, reason: &str, why: &str, authenticate: bool) -> Vec<u8> {
    let phrase = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    };
    let body = format!("snirelay: {reason}: {why}\n");
    let mut head = format!(
        "HTTP/1.1 {status} {phrase}\r\nX-Snirelay-Reason: {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status == 405 {
        head.push_str("Allow: CONNECT\r\n");
    }
    if authenticate {
        head.push_str("Proxy-Authenticate: Basic realm=\"snirelay\"\r\n");
    }
    head.push_str("\r\n");
    head.push_str(&body);
    head.into_bytes()
}

#[cfg(test)]
mod tests;
