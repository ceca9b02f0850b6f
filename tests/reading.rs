//! The work bound of reading a hello that arrives slowly: each read costs what it reads,
//! not what is already buffered. A test binary of its own, so its counting allocator sees
//! only this test.

use snirelay::net::read::{Parsed, read_until};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
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

/// A hello sent a byte at a time after half a megabyte (`max_hello_bytes` 1 MiB). Reading
/// goes into spare capacity and the buffer grows geometrically, so the late bytes cost what
/// the early ones did. Zero-filling a buffer the size of what was received on each read,
/// as an earlier version did, allocates half a megabyte per byte here.
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
        let before = allocated();
        read_until(&client, received, limit, |got| {
            Ok::<_, std::convert::Infallible>(Parsed::from((got.len() >= target).then_some(())))
        })
        .await
        .unwrap();
        allocated() - before
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
        "1,000 one-byte reads allocated {late} bytes after 512 KiB, {early} at the start"
    );
}
