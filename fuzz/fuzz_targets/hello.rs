//! The ClientHello reader on arbitrary bytes: it must never panic, its answer must not
//! depend on how the bytes were split into reads, and no answer comes sooner than
//! `missing` says. The input is used as it is, so the real
//! captured hellos seed it directly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snirelay::hello::{parse, HelloReader};

const LIMIT: usize = 16 * 1024;

fuzz_target!(|data: &[u8]| {
    let whole = parse(data, LIMIT);
    for step in [1, 2, 5, 64, 517] {
        let mut reader = HelloReader::new(LIMIT);
        let mut end = 0;
        let chunked = loop {
            end = (end + step).min(data.len());
            match reader.advance(&data[..end]) {
                Ok(None) if end < data.len() => continue,
                answer => break answer,
            }
        };
        assert_eq!(whole, chunked, "answer depends on the split (step {step})");
    }
    // Waiting for what `missing` asks is safe: no answer comes sooner than it says.
    let mut reader = HelloReader::new(LIMIT);
    let mut end = 0;
    let waited = loop {
        match reader.advance(&data[..end]) {
            Ok(None) if end < data.len() => {
                let missing = reader.missing(&data[..end]);
                assert!(missing >= 1);
                let sooner = (end + missing - 1).min(data.len());
                assert_eq!(parse(&data[..sooner], LIMIT), Ok(None), "an answer came before {missing} more bytes");
                end = (end + missing).min(data.len());
            }
            answer => break answer,
        }
    };
    assert_eq!(whole, waited, "answer depends on waiting for what is missing");
    if let Ok(Some(hello)) = &whole {
        assert!(hello.len <= data.len() && hello.len <= LIMIT);
        assert_eq!(&parse(&data[..hello.len], LIMIT), &whole, "bytes after the hello changed the answer");
    }
});
