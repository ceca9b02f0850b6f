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
//! work per read that does not grow with what is already buffered, and without a wake-up
//! per TCP segment when the parser knows how many bytes it still needs.

use crate::net::sys::set_receive_low_water;
use rustix::net::RecvFlags;
use std::io;
use std::mem::MaybeUninit;
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

/// Reads into `chunk`, whose bytes need not be initialised (none is zeroed), and returns
/// what was read; empty is end of stream. A short read clears the readiness, as
/// [`read_buf`]'s does. For a copy that writes the bytes on at once: nothing to allocate.
pub fn read_chunk<'b>(
    stream: &TcpStream,
    chunk: &'b mut [MaybeUninit<u8>],
) -> io::Result<&'b [u8]> {
    let room = chunk.len();
    let mut short = None;
    let kept = &mut short;
    let result = stream.try_io(Interest::READABLE, move || {
        let ((read, _), _) = rustix::net::recv(stream, chunk, RecvFlags::empty())?;
        let read: &'b [u8] = read;
        if !read.is_empty() && read.len() < room {
            *kept = Some(read);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(read)
    });
    match short {
        Some(read) => Ok(read),
        None => result,
    }
}

/// What a preamble parser makes of the bytes so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<T> {
    /// What it looked for.
    Found(T),
    /// Not yet, and the answer cannot change before this many more bytes arrive (at least 1).
    Missing(usize),
}

/// A parser that cannot say how much it needs needs one more byte.
impl<T> From<Option<T>> for Parsed<T> {
    fn from(found: Option<T>) -> Self {
        found.map_or(Parsed::Missing(1), Parsed::Found)
    }
}

/// Why a preamble could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError<E> {
    /// The peer closed before the parser found what it looks for.
    #[error("closed before the preamble was complete")]
    Closed,
    /// The socket failed.
    #[error(transparent)]
    Io(io::Error),
    /// The parser refused the bytes.
    #[error(transparent)]
    Refused(E),
}

/// Reads from `client` into `received` until `parse` finds what it looks for in the bytes
/// so far (it is asked first about what is already there). Reads go into spare capacity,
/// so no byte is zeroed or copied twice and the cost of a read does not grow with what is
/// buffered; the buffer never holds more than `limit` bytes (one more, at 0 room, for a
/// parser to refuse).
///
/// When the parser says more than one byte is missing, the socket's low-water mark is set
/// to that, so a peer sending its hello a byte per segment wakes the relay once per record,
/// not once per byte; it is back at 1 when this returns what it found. The caller's
/// deadline still applies, and the end of stream or an error still wakes the reader.
pub async fn read_until<T, E>(
    client: &TcpStream,
    received: &mut Vec<u8>,
    limit: usize,
    parse: impl FnMut(&[u8]) -> Result<Parsed<T>, E>,
) -> Result<T, ReadError<E>> {
    read_until_after(client, received, 0, limit, parse).await
}

/// [`read_until`] for a preamble that starts at `received[from..]`, after one already read
/// (a PROXY header, a CONNECT request), which stays where it is: a connection handed to the
/// next relay before it is forwarded goes with every byte its client sent.
pub async fn read_until_after<T, E>(
    client: &TcpStream,
    received: &mut Vec<u8>,
    from: usize,
    limit: usize,
    mut parse: impl FnMut(&[u8]) -> Result<Parsed<T>, E>,
) -> Result<T, ReadError<E>> {
    let limit = limit.saturating_add(from);
    let mut low_water = 1;
    loop {
        let missing = match parse(&received[from..]).map_err(ReadError::Refused)? {
            Parsed::Found(found) => {
                if low_water != 1 {
                    set_receive_low_water(client, 1).map_err(ReadError::Io)?;
                }
                return Ok(found);
            }
            Parsed::Missing(missing) => missing.max(1),
        };
        // Exact, so a read never takes the buffer past `limit` (plain `reserve` may double
        // the capacity, and a read fills whatever is spare); growth stays geometric, and
        // one read can take all that is missing.
        let room = limit.saturating_sub(received.len()).max(1);
        let held = received.len() - from;
        received.reserve_exact(room.min(held.max(4096).max(missing)));
        let wanted = missing.min(room);
        // Best effort: if the kernel refuses, the reader wakes per segment, as it would
        // without.
        if wanted != low_water && set_receive_low_water(client, wanted).is_ok() {
            low_water = wanted;
        }
        loop {
            client.readable().await.map_err(ReadError::Io)?;
            match read_buf(client, received) {
                Ok(0) => return Err(ReadError::Closed),
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::task::Poll;
    use std::time::Duration;
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

    /// A real hello sent a byte per segment: with the low-water mark at what the record
    /// still needs, the reader wakes for the header and once more for the whole body, not
    /// once per byte; afterwards a single byte wakes it again.
    #[tokio::test(flavor = "current_thread")]
    async fn a_hello_in_pieces_wakes_the_reader_once_its_record_is_complete() {
        let hello = include_bytes!("../../tests/fixtures/hellos/real_chromium.bin");
        let (mut sender, reader) = pair().await;
        sender.set_nodelay(true).unwrap();
        sender.write_all(&hello[..8]).await.unwrap();
        let task = tokio::spawn(async move {
            let mut hellos = crate::hello::HelloReader::new(1 << 16);
            let mut looks = 0;
            let mut received = Vec::new();
            let found = read_until(&reader, &mut received, 1 << 16, |bytes| {
                looks += 1;
                Ok::<_, crate::hello::HelloError>(match hellos.advance(bytes)? {
                    Some(hello) => Parsed::Found(hello.len),
                    None => Parsed::Missing(hellos.missing(bytes)),
                })
            })
            .await;
            (found.ok(), looks, reader)
        });
        for byte in &hello[8..] {
            sender.write_all(std::slice::from_ref(byte)).await.unwrap();
            // Lets the runtime poll for IO, so a reader woken by this byte runs now.
            tokio::task::yield_now().await;
        }
        let (found, looks, reader) = task.await.unwrap();
        assert_eq!(found, Some(hello.len()));
        assert!(
            looks <= 4,
            "looked {looks} times at a hello sent in {} pieces",
            hello.len() - 7
        );
        sender.write_all(b"x").await.unwrap();
        let mut next = Vec::with_capacity(16);
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                reader.readable().await.unwrap();
                if read_buf(&reader, &mut next).is_ok() {
                    break;
                }
            }
        })
        .await
        .expect(
            "one byte wakes the reader once the hello is read: the low-water mark is back at 1",
        );
        assert_eq!(next, b"x");
    }

    #[tokio::test]
    async fn reading_never_takes_the_buffer_past_its_limit() {
        let (client, mut peer) = pair().await;
        peer.write_all(&[0x16; 10_000]).await.unwrap();
        let limit = 5_000;
        let mut received = Vec::new();
        let refused = read_until(&client, &mut received, limit, |bytes| {
            if bytes.len() >= limit {
                Err("too long")
            } else {
                Ok(Parsed::<()>::Missing(1))
            }
        })
        .await;
        assert!(matches!(refused, Err(ReadError::Refused("too long"))));
        assert_eq!(received.len(), limit);
        assert!(
            received.capacity() <= limit,
            "capacity {}",
            received.capacity()
        );
    }
}
