//! The ClientHello reader on arbitrary bytes: it must never panic, and its answer must not
//! depend on how the bytes were split into reads. The input is used as it is, so the real
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
    if let Ok(Some(hello)) = &whole {
        assert!(hello.len <= data.len() && hello.len <= LIMIT);
        assert_eq!(&parse(&data[..hello.len], LIMIT), &whole, "bytes after the hello changed the answer");
    }
});
