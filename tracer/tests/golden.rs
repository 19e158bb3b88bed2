//! Golden tests: a recorded event stream in, exact text and JSON out.
//!
//! Inputs and expected outputs live in `tests/data/golden/`. After an intended change to an
//! output format, regenerate the expected files with `UPDATE_GOLDEN=1 cargo test --test golden`
//! and review the diff.

use std::path::{Path, PathBuf};

use tracer::{
    correlate::{Correlator, Limits, Record},
    decode::decode,
    names::NameTable,
    output::{self, Format, RunStats},
    recording::read_recording,
};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/golden")
        .join(name)
}

/// Decodes and correlates a recording, returning every record in output order.
fn correlate(recording: &str) -> Vec<Record> {
    let file = std::fs::File::open(data(recording)).expect("recording");
    let mut correlator = Correlator::new(Limits::default());
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

/// Everything `format` writes for the records of a recording.
fn render(format: Format, recording: &str, names_file: &str) -> String {
    let mut records = correlate(recording);
    let names = names(names_file);
    // As a session does when it writes a flow.
    for record in &mut records {
        if let Record::Flow(flow) = record {
            flow.verdict = Some(tracer::session::judge(flow, None, &names));
        }
    }
    let mut out = Vec::new();
    let mut writer = output::open(format, &mut out, &output::Options::default()).expect("open");
    for record in &records {
        writer.record(record, &names).expect("write");
    }
    writer.stats(&stats(&records)).expect("write");
    drop(writer);
    String::from_utf8(out).expect("utf-8")
}

#[test]
fn text_output_of_a_masqueraded_handshake() {
    check(
        "snat-handshake.txt",
        &render(
            Format::Text,
            "snat-handshake.events",
            "snat-handshake.names",
        ),
    );
}

#[test]
fn json_output_of_a_masqueraded_handshake() {
    check(
        "snat-handshake.jsonl",
        &render(
            Format::Json,
            "snat-handshake.events",
            "snat-handshake.names",
        ),
    );
}
