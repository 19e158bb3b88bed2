//! The fuzz targets' checks on their minimized corpora (`fuzz/corpus/`), so that every
//! `cargo test` replays what the fuzzers found interesting, without the fuzzer.

use std::path::Path;

#[path = "../../fuzz/checks/correlate.rs"]
mod correlate;
#[path = "../../fuzz/checks/decode.rs"]
mod decode;

/// Runs `check` on every input of one target's corpus; returns how many there were.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut inputs = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory") {
        let path = entry.expect("corpus entry").path();
        let data = std::fs::read(&path).expect("corpus input");
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{} fails its check", path.display());
        inputs += 1;
    }
    inputs
}

#[test]
fn decode_corpus_passes_its_checks() {
    assert!(replay("decode", decode::check) > 0, "the corpus is empty");
}

#[test]
fn correlate_corpus_passes_its_checks() {
    assert!(
        replay("correlate", correlate::check) > 0,
        "the corpus is empty"
    );
}
