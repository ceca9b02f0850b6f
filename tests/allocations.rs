//! Allocations on the connection path that are there only when they are needed, counted by
//! dhat's allocator (this test binary's global allocator; the relay's is untouched). dhat
//! counts every thread, and one profiler runs at a time, so this file has one test.

use snirelay::hello::parse;
use snirelay::net::transport::Legs;
use snirelay::outcome::{End, Transfer};
use snirelay::rules::Rule;
use snirelay::telemetry::metrics::Metrics;
use snirelay::telemetry::record::ConnectionRecord;
use std::net::SocketAddr;

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
}
