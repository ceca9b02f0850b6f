//! `snirelay probe`: run on a client machine, it makes a TLS handshake through the relay for
//! one name (straight to a TLS listener, or through a CONNECT listener's tunnel) and reports
//! who answered, or exactly why there was no answer.

use crate::rules::{Pattern, Rules};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{AlertDescription, CertificateError, RootCertStore};
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How the probe reaches the relay.
#[derive(Debug, Clone)]
pub enum Via {
    /// A TLS listener (`--relay`): the hello goes straight to it.
    Relay(String),
    /// A CONNECT listener (`--proxy`): a CONNECT request first, then the hello.
    Proxy(String),
}

impl Via {
    /// The address as given.
    pub fn addr(&self) -> &str {
        match self {
            Via::Relay(addr) | Via::Proxy(addr) => addr,
        }
    }
}

/// Who answered.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Time to the TCP connection.
    pub connect: Duration,
    /// Through a CONNECT listener: time from the TCP connection to its `200`.
    pub tunnel: Option<Duration>,
    /// Time from TCP connection to the end of the TLS handshake.
    pub handshake: Duration,
    /// Negotiated TLS version, like `TLS 1.3`.
    pub version: String,
    /// Negotiated ALPN protocol.
    pub alpn: Option<String>,
    /// The server certificate's subject, issuer and validity.
    pub subject: String,
    /// Its issuer.
    pub issuer: String,
    /// Not before.
    pub not_before: String,
    /// Not after.
    pub not_after: String,
}

/// Why the probe got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// `name` is not a DNS name.
    #[error("{0:?} is not a host name")]
    BadName(String),
    /// The CA file could not be used.
    #[error("--cacert {path}: {reason}")]
    CaFile {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// No trusted CA certificate at all.
    #[error("no trusted CA certificates found on this machine; pass --cacert")]
    NoRoots,
    /// TCP failed.
    #[error("TCP connection to {relay} failed: {source}")]
    Tcp {
        /// The relay address.
        relay: String,
        /// The OS error.
        source: io::Error,
    },
    /// The relay refused the name.
    #[error(
        "the relay refused {0}: TLS alert unrecognized_name (the name is not on its allowlist)"
    )]
    NotAllowed(String),
    /// Another alert.
    #[error("the server sent TLS alert {0:?}")]
    Alert(AlertDescription),
    /// The certificate does not fit.
    #[error("certificate rejected: {0}")]
    Certificate(String),
    /// Closed without an alert.
    #[error(
        "the connection closed during the handshake: the relay may have refused the client, \
         the hello or the destination (see its log for the reason)"
    )]
    Closed,
    /// Anything else in the handshake.
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
    /// Too slow.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The CONNECT listener refused the tunnel.
    #[error("the proxy answered {status}: {why}")]
    Refused {
        /// Its status line, like `403 Forbidden`.
        status: String,
        /// Its body's first line (the relay's says the reason and why), or its reason header.
        why: String,
    },
    /// The CONNECT listener's answer is not HTTP.
    #[error("the proxy's answer is not an HTTP response: {0:?}")]
    NotHttp(String),
}

/// Connects to `relay` (`host`, `host:port`, `ip`, `ip:port` or `[ipv6]:port`; port 443 by
/// default) and completes a handshake for `name`, trusting `cacert` or the system's CAs.
pub async fn probe(
    name: &str,
    via: &Via,
    cacert: Option<&Path>,
    limit: Duration,
) -> Result<Answer, ProbeError> {
    let server_name =
        ServerName::try_from(name.to_owned()).map_err(|_| ProbeError::BadName(name.to_owned()))?;
    let connector = tokio_rustls::TlsConnector::from(client_config(cacert)?);
    let target = with_default_port(via.addr());
    let started = Instant::now();
    let work = async {
        let mut tcp = TcpStream::connect(&target)
            .await
            .map_err(|source| ProbeError::Tcp {
                relay: target.clone(),
                source,
            })?;
        let connect = started.elapsed();
        let tunnel = match via {
            Via::Relay(_) => None,
            Via::Proxy(_) => {
                tunnel(&mut tcp, name, &target).await?;
                Some(started.elapsed() - connect)
            }
        };
        let tls = connector
            .connect(server_name, tcp)
            .await
            .map_err(|e| explain(e, name))?;
        let handshake = started.elapsed() - connect - tunnel.unwrap_or_default();
        let (_, session) = tls.get_ref();
        let version = session
            .protocol_version()
            .map(version_name)
            .unwrap_or_default();
        let alpn = session
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        let leaf = session.peer_certificates().and_then(|c| c.first()).cloned();
        close(tls).await;
        Ok((connect, tunnel, handshake, version, alpn, leaf))
    };
    let (connect, tunnel, handshake, version, alpn, leaf) = tokio::time::timeout(limit, work)
        .await
        .map_err(|_| ProbeError::Timeout(limit))??;
    let leaf =
        leaf.ok_or_else(|| ProbeError::Certificate("the server sent no certificate".into()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf)
        .map_err(|e| ProbeError::Certificate(format!("cannot parse it: {e}")))?;
    Ok(Answer {
        connect,
        tunnel,
        handshake,
        version,
        alpn,
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        not_before: cert.validity().not_before.to_string(),
        not_after: cert.validity().not_after.to_string(),
    })
}

/// Asks a CONNECT listener for a tunnel to `name`:443, as curl does, and reads its answer.
async fn tunnel(tcp: &mut TcpStream, name: &str, proxy: &str) -> Result<(), ProbeError> {
    let failed = |source| ProbeError::Tcp {
        relay: proxy.to_owned(),
        source,
    };
    let request = format!("CONNECT {name}:443 HTTP/1.1\r\nHost: {name}:443\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.map_err(failed)?;
    // Byte by byte up to the empty line: what follows a 200 is the server's TLS.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
        let mut byte = [0u8];
        if tcp.read(&mut byte).await.map_err(failed)? == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("HTTP/1."))
        .and_then(|rest| rest.get(2..))
        .map(str::trim)
        .filter(|status| status.len() >= 3)
        .ok_or_else(|| ProbeError::NotHttp(head.lines().next().unwrap_or_default().to_owned()))?;
    if status.starts_with("200") {
        return Ok(());
    }
    let mut body = Vec::new();
    let _ = tokio::time::timeout(CLOSE_WAIT, tcp.take(4096).read_to_end(&mut body)).await;
    let body = String::from_utf8_lossy(&body);
    let reason = head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case("x-snirelay-reason")
            .then(|| value.trim().to_owned())
    });
    let why = match (body.lines().next(), reason) {
        (Some(line), _) if !line.is_empty() => line.to_owned(),
        (_, Some(reason)) => reason,
        _ => "no reason given".to_owned(),
    };
    Err(ProbeError::Refused {
        status: status.to_owned(),
        why,
    })
}

/// Ends the connection the way a well-behaved client does: close_notify and FIN, then
/// whatever the server still sends (session tickets, its own close_notify) is read, so the
/// socket closes with nothing unread. Closing with unread bytes would be a reset, which
/// the relay logs as `client_reset` for what was a healthy probe.
async fn close(mut tls: tokio_rustls::client::TlsStream<TcpStream>) {
    if tls.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    let drain = async { while matches!(tls.read(&mut sink).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(CLOSE_WAIT, drain).await;
}

/// How long a probe waits for the server to close after its own close_notify.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Probes every exact name in `rules` through `relay` at once; for each name in rule order,
/// a one-line summary (`Ok`) or why it failed (`Err`). Wildcard rules are listed as skipped:
/// there is no one name to ask for.
pub async fn probe_all(
    rules: &Rules,
    via: &Via,
    cacert: Option<&Path>,
    limit: Duration,
) -> Vec<(String, Result<String, String>)> {
    let mut running = tokio::task::JoinSet::new();
    let mut lines = Vec::new();
    for (index, rule) in rules.iter().enumerate() {
        let name = rule.pattern.to_string();
        if let Pattern::Exact(_) = rule.pattern {
            let (via, cacert) = (via.clone(), cacert.map(Path::to_owned));
            let asked = name.clone();
            running.spawn(async move {
                let answer = probe(&asked, &via, cacert.as_deref(), limit).await;
                (index, answer)
            });
            lines.push((name, Err(String::new())));
        } else {
            let why = match rule.pattern {
                Pattern::Label(_) => "skipped: a label pattern; probe a name it matches",
                _ => "skipped: a wildcard; probe a name under it",
            };
            lines.push((name, Ok(why.to_owned())));
        }
    }
    while let Some(Ok((index, answer))) = running.join_next().await {
        lines[index].1 = match answer {
            Ok(a) => Ok(format!(
                "ok ({}, {:.1} ms, subject {})",
                a.version,
                (a.connect + a.handshake).as_secs_f64() * 1e3,
                a.subject
            )),
            Err(e) => Err(e.to_string()),
        };
    }
    lines
}

fn with_default_port(relay: &str) -> String {
    if relay.parse::<std::net::SocketAddr>().is_ok() {
        return relay.to_owned();
    }
    match relay.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]:443"),
        Ok(ip) => format!("{ip}:443"),
        Err(_) if relay.contains(':') => relay.to_owned(),
        Err(_) => format!("{relay}:443"),
    }
}

fn client_config(cacert: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, ProbeError> {
    let mut roots = RootCertStore::empty();
    match cacert {
        Some(path) => {
            let ca_error = |reason: String| ProbeError::CaFile {
                path: path.display().to_string(),
                reason,
            };
            let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(path)
                .map_err(|e| ca_error(e.to_string()))?
                .collect::<Result<_, _>>()
                .map_err(|e| ca_error(e.to_string()))?;
            if certs.is_empty() {
                return Err(ca_error("no PEM certificate in it".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(ProbeError::NoRoots);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ProbeError::Tls(io::Error::other(e)))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Turns a handshake failure into what the operator should know.
fn explain(error: io::Error, name: &str) -> ProbeError {
    if error.kind() == io::ErrorKind::UnexpectedEof
        || error.kind() == io::ErrorKind::ConnectionReset
    {
        return ProbeError::Closed;
    }
    match error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::AlertReceived(AlertDescription::UnrecognisedName)) => {
            ProbeError::NotAllowed(name.to_owned())
        }
        Some(rustls::Error::AlertReceived(alert)) => ProbeError::Alert(*alert),
        Some(rustls::Error::InvalidCertificate(cert)) => {
            ProbeError::Certificate(certificate_problem(cert, name))
        }
        _ => ProbeError::Tls(error),
    }
}

/// What is wrong with the server's certificate, as a sentence with what to do, and rustls's
/// own words as the detail.
fn certificate_problem(cert: &CertificateError, name: &str) -> String {
    use CertificateError as E;
    let raw = format!("{cert:?}");
    let sentence = match cert {
        E::NotValidForName | E::NotValidForNameContext { .. } => format!(
            "it is not valid for {name} (name mismatch: something other than the real server answered)"
        ),
        E::UnknownIssuer => {
            "it is not signed by a trusted CA (a private CA needs --cacert)".to_owned()
        }
        E::Expired | E::ExpiredContext { .. } => {
            "it has expired: renew it, or check this machine's clock".to_owned()
        }
        E::NotValidYet | E::NotValidYetContext { .. } => {
            "it is not valid yet: check this machine's clock".to_owned()
        }
        E::Revoked => "its issuer has revoked it".to_owned(),
        E::BadSignature => "its signature does not verify: it was altered or mis-issued".to_owned(),
        E::InvalidPurpose | E::InvalidPurposeContext { .. } => {
            "it is not for TLS servers (its extended key usage lacks serverAuth)".to_owned()
        }
        // webpki's error, wrapped: no public type to match on short of another dependency.
        E::Other(_) if raw.contains("CaUsedAsEndEntity") => {
            "the server's certificate is a CA certificate (CA:TRUE); use a leaf certificate signed by a CA"
                .to_owned()
        }
        _ => return format!("{raw} (rustls could not verify it)"),
    };
    format!("{sentence} [{raw}]")
}
/// A TLS version as people write it: `TLS 1.3`.
fn version_name(version: rustls::ProtocolVersion) -> String {
    match version {
        rustls::ProtocolVersion::TLSv1_3 => "TLS 1.3".to_owned(),
        rustls::ProtocolVersion::TLSv1_2 => "TLS 1.2".to_owned(),
        other => format!("{other:?}"),
    }
}
