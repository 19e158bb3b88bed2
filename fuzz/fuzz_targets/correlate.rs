//! Any stream of events through the correlator (see `checks/correlate.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/correlate.rs"]
mod correlate;

fuzz_target!(|data: &[u8]| correlate::check(data));
