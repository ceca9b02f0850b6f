//! The work bound of reading a hello that arrives slowly: each read costs what it reads,
//! not what is already buffered. The work a read does beside the kernel's copy is what it
//! allocates (growing the buffer copies it) and what it writes to the buffer beyond the
//! bytes received (zero-filling room before reading into it); both are counted. A test
//! binary of its own, so its counting allocator sees only this test.

use snirelay::net::read::{Parsed, read_until};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::mem::MaybeUninit;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// Counts the bytes this thread allocates; the test runs on a current-thread runtime.
struct Counting;

thread_local! {
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is passed to the system allocator unchanged; the counter is a
// const-initialised thread-local, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.with(|a| a.set(a.get() + layout.size()));
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout (above).
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn allocated() -> usize {
    ALLOCATED.with(Cell::get)
}

/// What the spare capacity is filled with before a read.
const MARK: u8 = 0xA5;

/// The buffer's allocation, to tell whether a read moved it.
fn allocation(buf: &Vec<u8>) -> (*const u8, usize) {
    (buf.as_ptr(), buf.capacity())
}

/// How many bytes past what `buf` holds no longer read MARK: written by the read beyond
/// what it received. Only meaningful while `buf` is in the allocation it was marked in.
fn written_beyond_received(buf: &mut Vec<u8>) -> usize {
    buf.spare_capacity_mut()
        .iter()
        // SAFETY: the caller checked that `buf` has not moved or grown since every spare
        // byte was written with MARK, and the read under test writes only initialised
        // bytes (the kernel's), so every spare byte is still initialised.
        .filter(|byte| unsafe { byte.assume_init_read() } != MARK)
        .count()
}

/// A hello sent a byte at a time after half a megabyte (`max_hello_bytes` 1 MiB). Reading
/// goes into spare capacity and the buffer grows geometrically, so the late bytes cost what
/// the early ones did. Zero-filling a buffer the size of what was received on each read,
/// as an earlier version did, costs half a megabyte per byte here, whether it allocates
/// the zeroes or writes them into room it already has.
#[tokio::test(flavor = "current_thread")]
async fn the_work_of_a_read_does_not_grow_with_the_bytes_buffered() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut peer = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (client, _) = listener.accept().await.unwrap();
    let limit = 1 << 20;
    let mut received = Vec::new();
    let mut read = async |received: &mut Vec<u8>, bytes: &[u8]| {
        peer.write_all(bytes).await.unwrap();
        let target = received.len() + bytes.len();
        received.spare_capacity_mut().fill(MaybeUninit::new(MARK));
        let before = (allocated(), allocation(received));
        read_until(&client, received, limit, |got| {
            Ok::<_, std::convert::Infallible>(Parsed::from((got.len() >= target).then_some(())))
        })
        .await
        .unwrap();
        let grown = allocated() - before.0;
        let written = if allocation(received) == before.1 {
            written_beyond_received(received)
        } else {
            0
        };
        grown + written
    };
    let mut early = 0;
    for _ in 0..1000 {
        early += read(&mut received, &[0x16]).await;
    }
    for _ in 0..8 {
        read(&mut received, &[0x16; 64 * 1024]).await;
    }
    let mut late = 0;
    for _ in 0..1000 {
        late += read(&mut received, &[0x16]).await;
    }
    assert_eq!(received.len(), 2000 + 512 * 1024);
    // At most one growth of the buffer (to the limit) among the late reads.
    assert!(
        late <= early + limit,
        "1,000 one-byte reads allocated or wrote {late} bytes after 512 KiB, {early} at the start"
    );
}
