//! The CONNECT request reader on arbitrary bytes: it must never panic, a request must never
//! claim more bytes than it was given or than the limit, no prefix of a request may be
//! taken for one, and a refusal must not turn into a request as more bytes arrive. Seeded
//! with the requests real clients send (curl, Python's http.client, grpcio).
#![no_main]

use libfuzzer_sys::fuzz_target;
use snirelay::http_connect::{parse, DEFAULT_MAX_REQUEST};

fuzz_target!(|data: &[u8]| {
    for limit in [64, DEFAULT_MAX_REQUEST] {
        let whole = parse(data, limit);
        if let Ok(Some(request)) = &whole {
            assert!(request.len <= data.len() && request.len <= limit);
            assert_eq!(&parse(&data[..request.len], limit), &whole, "bytes after the head changed the answer");
        }
        let end = match &whole {
            Ok(Some(request)) => request.len,
            _ => data.len(),
        };
        for cut in 0..end.min(limit + 1) {
            match parse(&data[..cut], limit) {
                Ok(None) => {}
                Ok(Some(_)) => panic!("a request found in {cut} bytes, before its end"),
                Err(e) => assert!(whole.is_err(), "refused at {cut} bytes ({e:?}), accepted whole"),
            }
        }
    }
});
