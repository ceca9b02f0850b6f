//! Reading a socket without the wasted system call.
//!
//! tokio keeps a socket marked readable until a read fails with `WouldBlock`, so after a
//! read that took everything the kernel had, the next poll reads again only to learn there
//! is nothing: one wasted `recv` per message and direction on a persistent connection. A TCP
//! read that returns fewer bytes than it had room for has emptied the receive queue, so the
//! readiness can be cleared right then, as tokio's own `AsyncRead` does and as nginx gets
//! from edge-triggered epoll. tokio clears only the readiness it had seen before the read
//! (readiness carries a tick), so an event that arrives meanwhile is kept, not lost.
//!
//! And reading a preamble (the PROXY header, the hello) until a parser is satisfied, with
//! work per read that does not grow with what is already buffered.

use crate::outcome::Rejection;
use std::io;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Reads into the spare capacity of `buf`, which grows by what was read; `Ok(0)` is end
/// of stream (or no spare capacity). tokio clears readiness only when the function it runs
/// says `WouldBlock`, so a short read says that, and its count is handed back beside it.
pub fn read_buf(stream: &TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let room = buf.capacity() - buf.len();
    let mut short = None;
    let result = stream.try_io(Interest::READABLE, || {
        let n = stream.try_read_buf(buf)?;
        if n > 0 && n < room {
            short = Some(n);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match short {
        Some(n) => Ok(n),
        None => result,
    }
}

/// Reads from `client` into `received` until `parse` finds what it looks for in the bytes
/// so far (it is asked first about what is already there). Reads go into spare capacity,
/// so no byte is zeroed or copied twice and the cost of a read does not grow with what is
/// buffered; the buffer never holds more than `limit` bytes (one more, at 0 room, for a
/// parser to refuse).
pub async fn read_until<T>(
    client: &TcpStream,
    received: &mut Vec<u8>,
    limit: usize,
    mut parse: impl FnMut(&[u8]) -> Result<Option<T>, Rejection>,
) -> Result<T, Rejection> {
    loop {
        if let Some(found) = parse(received)? {
            return Ok(found);
        }
        // Exact, so a read never takes the buffer past `limit` (plain `reserve` may double
        // the capacity, and a read fills whatever is spare); growth stays geometric.
        let room = limit.saturating_sub(received.len()).max(1);
        received.reserve_exact(room.min(received.len().max(4096)));
        loop {
            client.readable().await.map_err(Rejection::ClientError)?;
            match read_buf(client, received) {
                Ok(0) => return Err(Rejection::ClientClosed),
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(Rejection::ClientError(e)),
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::task::Poll;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// Two ends of a loopback TCP connection.
    pub(crate) async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let near = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (far, _) = listener.accept().await.unwrap();
        (near, far)
    }

    /// Whether the stream says it is readable right now, without waiting.
    async fn marked_readable(stream: &TcpStream) -> bool {
        poll_fn(|cx| Poll::Ready(stream.poll_read_ready(cx).is_ready())).await
    }

    #[tokio::test]
    async fn a_short_read_clears_readiness_and_new_bytes_set_it_again() {
        let (reader, mut writer) = pair().await;
        writer.write_all(b"first").await.unwrap();
        reader.readable().await.unwrap();
        let mut buf = Vec::with_capacity(64);
        assert_eq!(read_buf(&reader, &mut buf).unwrap(), 5);
        assert!(
            !marked_readable(&reader).await,
            "a drained socket still marked readable costs a wasted read"
        );
        writer.write_all(b"second").await.unwrap();
        reader.readable().await.unwrap();
        let mut grown = Vec::with_capacity(64);
        assert_eq!(read_buf(&reader, &mut grown).unwrap(), 6);
        assert_eq!(grown, b"second");
        drop(writer);
        reader.readable().await.unwrap();
        assert_eq!(read_buf(&reader, &mut buf).unwrap(), 0, "end of stream");
    }

    #[tokio::test]
    async fn a_full_read_keeps_readiness_for_the_bytes_left() {
        let (reader, mut writer) = pair().await;
        writer.write_all(&[7u8; 100]).await.unwrap();
        let mut got = 0;
        while got < 100 {
            reader.readable().await.unwrap();
            let mut buf = Vec::with_capacity(10);
            match read_buf(&reader, &mut buf) {
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
            if got < 100 && got % 10 == 0 {
                assert!(marked_readable(&reader).await, "after {got} of 100 bytes");
            }
        }
    }

    #[tokio::test]
    async fn reading_never_takes_the_buffer_past_its_limit() {
        let (client, mut peer) = pair().await;
        peer.write_all(&[0x16; 10_000]).await.unwrap();
        let limit = 5_000;
        let mut received = Vec::new();
        let refused = read_until(&client, &mut received, limit, |bytes| {
            if bytes.len() >= limit {
                Err(Rejection::HelloTimeout)
            } else {
                Ok(None::<()>)
            }
        })
        .await;
        assert!(refused.is_err());
        assert_eq!(received.len(), limit);
        assert!(
            received.capacity() <= limit,
            "capacity {}",
            received.capacity()
        );
    }
}
