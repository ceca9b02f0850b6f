//! The second half of a handover (protocol 2): once the new relay serves, the old one
//! hands it its connections, then its metrics' totals.
//!
//! 1. old → new: `connections N fds M`;
//! 2. new → old: `send` once it can hold M more descriptors (it raises its own limit if
//!    it must), else `refuse WHY`;
//! 3. old → new: batches, each a fixed-size header `batch LINES FDS BYTES` carrying up to
//!    [`MAX_BATCH_FDS`] descriptors, then BYTES of text: one line per connection, `K JSON`,
//!    K being how many of the batch's descriptors are its own, in order;
//! 4. old → new: `metrics BYTES`, then the OpenMetrics text of its totals;
//! 5. new → old: `taken N`, or `refuse WHY` for what it cannot use;
//! 6. old → new: `bye`. Only now does either side act on the outcome: the new relay
//!    resumes the connections, the old one closes its copies and exits. Without `bye`
//!    (the old relay gave up waiting), the new one drops what it received.
//!
//! The old relay keeps every connection, and resumes them itself, until `taken`.

use rustix::net::{
    RecvAncillaryBuffer, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, recvmsg,
    sendmsg,
};
use std::io::{self, IoSlice, IoSliceMut, Read};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use tokio::io::Interest;

/// The kernel passes at most 253 descriptors in one message (SCM_MAX_FD).
pub const MAX_BATCH_FDS: usize = 250;
/// A batch's header: fixed size, so the reader asks for exactly it and the descriptors
/// that come with it.
const HEADER: usize = 48;
/// No connection's line comes near this (a few hundred bytes, and a direction's unsent
/// bytes, at most 64 KiB, in base64); a batch's text is bounded by it times its lines.
const MAX_LINE: usize = 256 * 1024;
/// The metrics' text, at most.
const MAX_METRICS: usize = 64 * 1024 * 1024;
/// Descriptors kept free beyond what comes, for the new relay's own work.
const SPARE_FDS: u64 = 256;

/// One connection as it travels: its line of text and its descriptors.
pub type Item<Fd> = (String, Vec<Fd>);

/// Sends `connections` and `metrics` to the new relay over `stream` (steps 1-5); the
/// number it took, or why not. The descriptors stay this relay's until [`say_bye`].
pub async fn send(
    stream: &tokio::net::UnixStream,
    connections: &[Item<BorrowedFd<'_>>],
    metrics: &str,
) -> Result<usize, NotTaken> {
    let fds: usize = connections.iter().map(|(_, fds)| fds.len()).sum();
    write_all(
        stream,
        format!("connections {} fds {fds}\n", connections.len()).as_bytes(),
    )
    .await?;
    let answer = read_line(stream).await?;
    if answer != "send" {
        return Err(refused(&answer));
    }
    let mut rest = connections;
    while !rest.is_empty() {
        let mut count = 0;
        let mut batch_fds = 0;
        while count < rest.len() && batch_fds + rest[count].1.len() <= MAX_BATCH_FDS {
            batch_fds += rest[count].1.len();
            count += 1;
        }
        if count == 0 {
            return Err(io::Error::other("a connection with too many descriptors").into());
        }
        let (batch, after) = rest.split_at(count);
        rest = after;
        let mut text = String::new();
        for (line, fds) in batch {
            text.push_str(&format!("{} {line}\n", fds.len()));
        }
        let fds: Vec<BorrowedFd<'_>> = batch
            .iter()
            .flat_map(|(_, fds)| fds.iter().copied())
            .collect();
        let header = format!("batch {count} {} {}", fds.len(), text.len());
        let header = format!("{header:<width$}\n", width = HEADER - 1);
        send_with_fds(stream, header.as_bytes(), &fds).await?;
        write_all(stream, text.as_bytes()).await?;
    }
    write_all(stream, format!("metrics {}\n", metrics.len()).as_bytes()).await?;
    write_all(stream, metrics.as_bytes()).await?;
    let answer = read_line(stream).await?;
    match answer.strip_prefix("taken ").map(str::parse::<usize>) {
        Some(Ok(taken)) if taken == connections.len() => Ok(taken),
        _ => Err(refused(&answer)),
    }
}

/// Step 6: the connections are the new relay's now.
pub async fn say_bye(stream: &tokio::net::UnixStream) -> io::Result<()> {
    write_all(stream, b"bye\n").await
}

/// Why the new relay has not taken the connections.
#[derive(Debug, thiserror::Error)]
pub enum NotTaken {
    /// It answered, and refused them: it serves, without them.
    #[error("the new relay refused: {0}")]
    Refused(String),
    /// It closed the connection, did not answer in time, or said something else: it may
    /// be gone.
    #[error("{0}")]
    Failed(#[from] io::Error),
}

fn refused(answer: &str) -> NotTaken {
    match answer.strip_prefix("refuse ") {
        Some(why) => NotTaken::Refused(why.to_owned()),
        None if answer.is_empty() => io::Error::other("the new relay closed the connection").into(),
        None => io::Error::other(format!("the new relay said {answer:?}")).into(),
    }
}

async fn write_all(stream: &tokio::net::UnixStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes `bytes` with `fds` attached to the first of them.
async fn send_with_fds(
    stream: &tokio::net::UnixStream,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_BATCH_FDS))];
    loop {
        stream.writable().await?;
        let sent = stream.try_io(Interest::WRITABLE, || {
            let mut control = SendAncillaryBuffer::new(&mut space);
            control.push(SendAncillaryMessage::ScmRights(fds));
            Ok(sendmsg(
                stream,
                &[IoSlice::new(bytes)],
                &mut control,
                SendFlags::empty(),
            )?)
        });
        match sent {
            Ok(n) => return write_all(stream, &bytes[n..]).await,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// One line, without its newline; empty at the end of the stream.
async fn read_line(stream: &tokio::net::UnixStream) -> io::Result<String> {
    let mut line = Vec::new();
    loop {
        stream.readable().await?;
        let mut byte = [0u8];
        match stream.try_read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if line.len() >= 4096 => return Err(io::Error::other("an overlong line")),
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    String::from_utf8(line).map_err(|_| io::Error::other("a line that is not text"))
}

/// What the new relay received (steps 1-4, blocking).
pub struct Received {
    /// The connections, each with its descriptors.
    pub connections: Vec<Item<OwnedFd>>,
    /// The old relay's metrics, as OpenMetrics text.
    pub metrics: String,
}

/// Steps 1-4 on the new relay's side, `first` being the line that opened them; `Err` with
/// why, which the caller sends as `refuse`.
pub fn receive(stream: &UnixStream, first: &str) -> Result<Received, String> {
    let (count, fds) = parse_counts(first)
        .ok_or_else(|| format!("expected the connection count, got {first:?}"))?;
    make_room_for(fds)?;
    write_line(stream, "send").map_err(|e| e.to_string())?;
    let mut reader = stream;
    let mut connections = Vec::with_capacity(count);
    while connections.len() < count {
        let mut header = [0u8; HEADER];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_BATCH_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = recvmsg(
            stream,
            &mut [IoSliceMut::new(&mut header)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .map_err(|e| format!("receiving a batch: {e}"))?;
        let mut batch_fds = super::descriptors(&mut control);
        if got.bytes == 0 {
            return Err("the old relay closed the connection mid-handover".into());
        }
        reader
            .read_exact(&mut header[got.bytes..])
            .map_err(|e| e.to_string())?;
        let header = std::str::from_utf8(&header).unwrap_or("").trim_end();
        let (lines, fd_count, bytes) =
            parse_batch(header).ok_or_else(|| format!("expected a batch, got {header:?}"))?;
        if fd_count != batch_fds.len() || lines == 0 || bytes > lines.saturating_mul(MAX_LINE) {
            return Err(format!("a batch that does not match its header {header:?}"));
        }
        let mut text = vec![0u8; bytes];
        reader.read_exact(&mut text).map_err(|e| e.to_string())?;
        let text = String::from_utf8(text).map_err(|_| "a batch that is not text")?;
        let mut taken = 0;
        for line in text.lines() {
            let (k, json) = line
                .split_once(' ')
                .ok_or("a connection line without its count")?;
            let k: usize = k
                .parse()
                .map_err(|_| "a connection line without its count")?;
            let own: Vec<OwnedFd> = batch_fds.drain(..k.min(batch_fds.len())).collect();
            if own.len() != k {
                return Err("a connection line naming more descriptors than came".into());
            }
            connections.push((json.to_owned(), own));
            taken += 1;
        }
        if taken != lines || !batch_fds.is_empty() {
            return Err(format!("a batch that does not match its header {header:?}"));
        }
    }
    let line = read_line_blocking(stream)?;
    let bytes = line
        .strip_prefix("metrics ")
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|&n| n <= MAX_METRICS)
        .ok_or_else(|| format!("expected the metrics, got {line:?}"))?;
    let mut metrics = vec![0u8; bytes];
    reader.read_exact(&mut metrics).map_err(|e| e.to_string())?;
    let metrics = String::from_utf8(metrics).map_err(|_| "metrics that are not text")?;
    Ok(Received {
        connections,
        metrics,
    })
}

/// Step 5 and 6 on the new relay's side: says `answer` (`taken N` or `refuse WHY`) and
/// waits for `bye`; `Ok` only once it came.
pub fn answer(stream: &UnixStream, answer: &str) -> io::Result<()> {
    write_line(stream, answer)?;
    match read_line_blocking(stream) {
        Ok(line) if line == "bye" => Ok(()),
        Ok(line) => Err(io::Error::other(format!("expected bye, got {line:?}"))),
        Err(e) => Err(io::Error::other(e)),
    }
}

fn write_line(mut stream: &UnixStream, line: &str) -> io::Result<()> {
    io::Write::write_all(&mut stream, format!("{line}\n").as_bytes())
}

fn read_line_blocking(mut stream: &UnixStream) -> Result<String, String> {
    let mut line = Vec::new();
    let mut byte = [0u8];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if line.len() >= 4096 => return Err("an overlong line".into()),
            Ok(_) => line.push(byte[0]),
            Err(e) => return Err(e.to_string()),
        }
    }
    String::from_utf8(line).map_err(|_| "a line that is not text".into())
}

/// `connections N fds M`. Pure.
fn parse_counts(line: &str) -> Option<(usize, usize)> {
    let rest = line.strip_prefix("connections ")?;
    let (count, fds) = rest.split_once(" fds ")?;
    Some((count.parse().ok()?, fds.parse().ok()?))
}

/// `batch LINES FDS BYTES`. Pure.
fn parse_batch(header: &str) -> Option<(usize, usize, usize)> {
    let mut words = header.strip_prefix("batch ")?.split(' ');
    let mut number = || words.next()?.parse().ok();
    let parsed = (number()?, number()?, number()?);
    words.next().is_none().then_some(parsed)
}

/// Raises the soft descriptor limit so `coming` more fit beside those open now (and a
/// spare), within the hard limit; says why not where they cannot.
fn make_room_for(coming: usize) -> Result<(), String> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let open = std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count) as u64;
    let needed = open + coming as u64 + SPARE_FDS;
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_none_or(|soft| soft >= needed) {
        return Ok(());
    }
    if limit.maximum.is_some_and(|hard| hard < needed) {
        return Err(format!(
            "{coming} descriptors would not fit: {open} open, hard limit {} (raise LimitNOFILE=)",
            limit.maximum.unwrap_or_default()
        ));
    }
    let raised = rustix::process::Rlimit {
        current: Some(needed),
        maximum: limit.maximum,
    };
    setrlimit(Resource::Nofile, raised)
        .map_err(|e| format!("cannot raise the descriptor limit to {needed}: {e}"))?;
    tracing::info!(
        limit = needed,
        "upgrade: raised the descriptor limit for the connections coming"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_batch_headers_parse_exactly() {
        assert_eq!(parse_counts("connections 3 fds 7"), Some((3, 7)));
        assert_eq!(parse_counts("connections 3"), None);
        assert_eq!(parse_counts("connection 3 fds 7"), None);
        assert_eq!(parse_batch("batch 2 5 900"), Some((2, 5, 900)));
        assert_eq!(parse_batch("batch 2 5"), None);
        assert_eq!(parse_batch("batch 2 5 900 1"), None);
        assert_eq!(parse_batch("batch x 5 900"), None);
    }

    #[test]
    fn a_limit_already_high_enough_is_left_alone() {
        assert_eq!(make_room_for(0), Ok(()));
    }
}
