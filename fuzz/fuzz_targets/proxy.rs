//! The PROXY protocol reader on arbitrary bytes: it must never panic, a header must never
//! claim more bytes than it was given or than its version's bound, and an answer must not
//! change as more bytes arrive. Seeded with real HAProxy headers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snirelay::proxy::{parse, Accept, V1_MAX, V2_MAX};

fuzz_target!(|data: &[u8]| {
    for accept in [Accept::V1, Accept::V2, Accept::Any] {
        let whole = parse(data, accept);
        if let Ok(Some(parsed)) = &whole {
            assert!(parsed.len <= data.len() && parsed.len <= V1_MAX.max(V2_MAX));
            assert_eq!(&parse(&data[..parsed.len], accept), &whole, "bytes after the header changed the answer");
        }
        for end in 0..data.len().min(V2_MAX + 1) {
            match parse(&data[..end], accept) {
                Ok(None) => {}
                earlier => assert_eq!(earlier, whole, "answer at {end} bytes changed later"),
            }
        }
    }
});
