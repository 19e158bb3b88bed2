//! What the decode fuzz target asserts, for any bytes from the ring buffer: the decoder
//! returns an event or an error and never panics, and what it accepts is a whole record of a
//! known kind. Shared by the fuzz target and the corpus test (`tracer/tests/fuzz_corpus.rs`).

use tracer::decode::decode;

/// Size of one `PacketEvent` record.
const RECORD: usize = 216;

pub fn check(data: &[u8]) {
    if let Ok(event) = decode(data) {
        assert!(data.len() >= RECORD);
        assert!(event.headers.as_ref().is_none_or(|h| h.len() <= 256));
    }
}
