//! Golden tests: a recorded event stream in, exact text and JSON out.
//!
//! Inputs and expected outputs live in `tests/data/golden/`. After an intended change to an
//! output format, regenerate the expected files with `UPDATE_GOLDEN=1 cargo test --test golden`
//! and review the diff.

use std::path::{Path, PathBuf};

use tracer::{
    correlate::{Correlator, Record, Settings},
    decode::decode,
    names::NameTable,
    output::{RunStats, json::JsonWriter, text::TextWriter},
    reader::read_recording,
};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/golden")
        .join(name)
}

/// Decodes and correlates a recording, returning every record in output order.
fn correlate(recording: &str) -> Vec<Record> {
    let file = std::fs::File::open(data(recording)).expect("recording");
    let mut correlator = Correlator::new(Settings::default());
    for raw in read_recording(file).expect("readable recording") {
        correlator.push(decode(&raw).expect("recorded events decode"));
    }
    correlator.finish();
    std::iter::from_fn(|| correlator.pop()).collect()
}

fn names(file: &str) -> NameTable {
    let mut table = NameTable::default();
    let text = std::fs::read_to_string(data(file)).expect("names file");
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (inode, name) = line.split_once(' ').expect("inode name");
        table.set_netns(inode.parse().expect("inode"), name.trim());
    }
    table
}

fn stats(records: &[Record]) -> RunStats {
    let count = |f: fn(&Record) -> bool| records.iter().filter(|r| f(r)).count() as u64;
    RunStats {
        events: 94,
        packets: count(|r| matches!(r, Record::Packet(_))),
        flows: count(|r| matches!(r, Record::Flow(_))),
        ..RunStats::default()
    }
}

/// Compares `actual` with the expected file, or rewrites it when UPDATE_GOLDEN is set.
fn check(expected_file: &str, actual: &str) {
    let path = data(expected_file);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path).expect("golden file");
    if expected != actual {
        for (n, (e, a)) in expected.lines().zip(actual.lines()).enumerate() {
            assert_eq!(e, a, "{expected_file} line {}", n + 1);
        }
        panic!(
            "{expected_file}: {} lines expected, {} written",
            expected.lines().count(),
            actual.lines().count()
        );
    }
}

#[test]
fn text_output_of_a_masqueraded_handshake() {
    let records = correlate("snat-handshake.events");
    let names = names("snat-handshake.names");
    let mut out = Vec::new();
    let mut writer = TextWriter::new(&mut out, 0);
    for record in &records {
        writer.record(record, &names).expect("write");
    }
    writer.stats(&stats(&records)).expect("write");
    check(
        "snat-handshake.txt",
        &String::from_utf8(out).expect("utf-8"),
    );
}

#[test]
fn json_output_of_a_masqueraded_handshake() {
    let records = correlate("snat-handshake.events");
    let names = names("snat-handshake.names");
    let mut out = Vec::new();
    let mut writer = JsonWriter::new(&mut out);
    for record in &records {
        writer.record(record, &names).expect("write");
    }
    writer.stats(&stats(&records)).expect("write");
    check(
        "snat-handshake.jsonl",
        &String::from_utf8(out).expect("utf-8"),
    );
}
