//! Any bytes from the ring buffer through the decoder (see `checks/decode.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/decode.rs"]
mod decode;

fuzz_target!(|data: &[u8]| decode::check(data));
