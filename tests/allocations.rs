//! Allocations on the connection path that are there only when they are needed, counted by
//! dhat's allocator (this test binary's global allocator; the relay's is untouched). dhat
//! counts every thread, and one profiler runs at a time, so this file has one test.

use snirelay::hello::{HelloReader, parse};
use snirelay::net::tcp_info::Legs;
use snirelay::outcome::{End, Transfer};
use snirelay::rules::Rule;
use snirelay::tcp::forward;
use snirelay::tcp::stopping::Stopping;
use snirelay::tcp_options::Keepalive;
use snirelay::telemetry::metrics::Metrics;
use snirelay::telemetry::record::ConnectionRecord;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

const HELLO: &[u8] = include_bytes!("fixtures/hellos/real_chromium.bin");

/// How many blocks `f` allocates (a realloc counts as one).
fn allocations(f: impl FnOnce()) -> u64 {
    let before = dhat::HeapStats::get().total_blocks;
    f();
    dhat::HeapStats::get().total_blocks - before
}

#[test]
fn a_forwarded_connection_is_parsed_logged_and_counted_without_needless_allocations() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let hello = parse(HELLO, 65536).unwrap().unwrap();
    assert!(!hello.alpn.is_empty() && hello.versions.len() > 1);
    let addr: SocketAddr = "127.0.0.1:443".parse().unwrap();
    let hello_logged = |expected: u64| {
        // The first look at the log's level registers its callsite, which allocates once.
        ConnectionRecord::new(addr, addr).hello(&hello, false);
        let mut log = ConnectionRecord::new(addr, addr);
        assert_eq!(allocations(|| log.hello(&hello, false)), expected);
    };
    // No subscriber, as when the relay logs at warn: nothing is copied.
    hello_logged(0);
    // At info: the name, the ALPN list and the versions, a string each.
    let info = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(std::io::sink)
        .finish();
    tracing::subscriber::with_default(info, || hello_logged(3));

    // Once the rule's counters and labels exist (its first connection), the next
    // connection's rule label, byte counters and metrics record reuse them: the label is
    // the rule's own, shared, not formatted per connection.
    let metrics = Metrics::default();
    let rule = Rule::new("translate.googleapis.com".parse().unwrap(), None, None);
    let transfer = Transfer {
        up: 2000,
        down: 9000,
        spliced: 0,
        end: End::Closed,
    };
    let forwarded = || {
        let mut log = ConnectionRecord::new(addr, addr);
        log.hello(&hello, false);
        log.rule(rule.label.clone());
        log.connected(addr);
        let counters = metrics.byte_counters(log.rule_label());
        counters.moved(snirelay::telemetry::bytes::Direction::Up, 2000);
        log.emit(Ok(transfer), Legs::default(), &metrics);
    };
    forwarded();
    assert_eq!(allocations(forwarded), 0);

    // A hello in one record is parsed where it lies: what parsing allocates is tls-parser's
    // lists and the name (about 400 bytes for this one), not a copy of the 1,964 bytes.
    let before = dhat::HeapStats::get().total_bytes;
    let parsed = parse(HELLO, 65536).unwrap().unwrap();
    let bytes = dhat::HeapStats::get().total_bytes - before;
    drop(parsed);
    assert!(
        bytes < HELLO.len() as u64 / 2,
        "parsing allocated {bytes} bytes"
    );

    // A relay that shows no hello (logging at warn, no audit log) reads it briefly: the
    // ALPN list and the versions are left out, and what is left is tls-parser's cipher and
    // compression lists, the extension types (for the duplicate check) and the name.
    let brief = || {
        let hello = HelloReader::new(65536).brief(true).advance(HELLO).unwrap();
        assert!(hello.is_some_and(|h| h.alpn.is_empty() && h.versions.is_empty()));
    };
    brief();
    assert_eq!(allocations(brief), 4);

    // Forwarding: an exchange of small messages allocates nothing (each read lands in a
    // chunk on the stack and is written on from there), and neither does the read that
    // finds the end of the stream.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(exchanges_allocate_nothing(&metrics));
}

async fn exchanges_allocate_nothing(metrics: &Metrics) {
    let pair = || async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let near = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        (near, listener.accept().await.unwrap().0)
    };
    let (mut client_end, client) = pair().await;
    let (upstream, mut upstream_end) = pair().await;
    let stopping = Stopping::default();
    let copying = forward::copy(
        &client,
        &upstream,
        forward::Start::Preface(Vec::new()),
        Duration::from_secs(60),
        &stopping,
        metrics.byte_counters(None),
        None,
        &Keepalive::DEFAULT,
    );
    let peers = async {
        let (mut request, mut response) = ([7u8; 256], [0u8; 1024]);
        let mut exchange = async || {
            client_end.write_all(&request).await.unwrap();
            upstream_end.read_exact(&mut request).await.unwrap();
            upstream_end.write_all(&response).await.unwrap();
            client_end.read_exact(&mut response).await.unwrap();
        };
        // The first exchange registers the sockets' wakers; the rest are counted.
        exchange().await;
        let before = dhat::HeapStats::get().total_blocks;
        for _ in 0..100 {
            exchange().await;
        }
        client_end.shutdown().await.unwrap();
        upstream_end.shutdown().await.unwrap();
        before
    };
    let (transfer, before) = tokio::join!(copying, peers);
    let allocated = dhat::HeapStats::get().total_blocks - before;
    let forward::Copied::Ended(transfer) = transfer else {
        panic!("nothing hands this connection over");
    };
    assert_eq!(transfer.end, End::Closed);
    assert_eq!(allocated, 0, "100 exchanges and both ends of the stream");
}
