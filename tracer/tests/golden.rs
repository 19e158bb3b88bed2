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

/// The report's data for the records of a recording, as `tracer report` and `--html` collect
/// it.
fn report_data(recording: &str, names_file: &str) -> tracer::output::html::model::Report {
    let mut records = correlate(recording);
    let names = names(names_file);
    let mut collector = tracer::output::html::Collector::new("golden".to_owned(), 10);
    for record in &mut records {
        if let Record::Flow(flow) = record {
            flow.verdict = Some(tracer::session::judge(flow, None, &names));
        }
        collector.record(record, &names);
    }
    collector.finish(&stats(&records))
}

#[test]
fn report_data_of_a_masqueraded_handshake() {
    let report = report_data("snat-handshake.events", "snat-handshake.names");
    let json = serde_json::to_string_pretty(&report).expect("serializes") + "\n";
    check("snat-handshake.report.json", &json);
}

/// `tracer report` of the JSON Lines a trace wrote draws what the trace itself collected.
#[test]
fn a_report_of_json_lines_has_the_data_of_the_trace_that_wrote_them() {
    let from_trace = report_data("snat-handshake.events", "snat-handshake.names");
    let options = tracer::report::Options {
        inputs: vec![tracer::merge::Input::parse(
            data("snat-handshake.jsonl").to_str().expect("path"),
        )],
        output: std::env::temp_dir().join("unused.html"),
        detail: 10,
        reference: None,
    };
    let (mut from_json, _) = tracer::report::build(&options).expect("the golden JSON reads back");
    from_json.title = from_trace.title.clone();
    // JSON Lines carry no kernel counters: what was read is the trace's, not the file's.
    from_json.totals.events = from_trace.totals.events;
    assert_eq!(from_json.places, from_trace.places);
    assert_eq!(from_json.labels, from_trace.labels);
    assert_eq!(from_json.paths, from_trace.paths);
    assert_eq!(from_json.verdicts, from_trace.verdicts);
    assert_eq!(from_json.flows, from_trace.flows);
    assert_eq!(from_json.detail, from_trace.detail);
    assert_eq!(from_json, from_trace);
}

/// The golden flow's records again as flow `id`, its packets `times` over, its slowest packet
/// taking `slowest_ns` from first to last hop, and failed (dropped) or not.
fn copy_of_the_flow(id: u64, times: usize, slowest_ns: u64, failed: bool) -> Vec<Record> {
    let names = names("snat-handshake.names");
    let records = correlate("snat-handshake.events");
    let mut out = Vec::new();
    for _ in 0..times {
        for record in &records {
            if let Record::Packet(packet) = record {
                let mut packet = packet.clone();
                packet.flow_id = id;
                if let Some(last) = packet.hops.last_mut() {
                    last.since_first_ns = slowest_ns;
                }
                out.push(Record::Packet(packet));
            }
        }
    }
    for record in &records {
        if let Record::Flow(flow) = record {
            let mut flow = flow.clone();
            flow.flow_id = id;
            let mut verdict = tracer::session::judge(&flow, None, &names);
            if failed {
                verdict.kind = tracer::correlate::verdict::Kind::Dropped;
            }
            flow.verdict = Some(verdict);
            out.push(Record::Flow(flow));
        }
    }
    out
}

#[test]
fn the_report_keeps_the_failed_flows_then_the_slowest_in_detail() {
    let names = names("snat-handshake.names");
    let mut collector = tracer::output::html::Collector::new("kept".to_owned(), 5);
    for id in 1..=20 {
        for record in copy_of_the_flow(id, 1, id * 1_000, id == 3 || id == 7) {
            collector.record(&record, &names);
        }
    }
    let report = collector.finish(&RunStats::default());
    let detailed: Vec<u64> = report.detail.iter().map(|flow| flow.flow).collect();
    assert_eq!(detailed, [3, 7, 18, 19, 20]);
    let flagged: Vec<u64> = report
        .flows
        .iter()
        .filter(|row| row.11 == 1)
        .map(|row| row.0)
        .collect();
    assert_eq!(flagged, [3, 7, 18, 19, 20]);
    assert_eq!(report.flows.len(), 20);
    // Every flow took the same path.
    assert_eq!(report.paths.len(), 1);
    assert_eq!(report.paths[0].flows, 20);
    assert_eq!(report.totals.detailed, 5);
}

#[test]
fn a_flow_keeps_a_bounded_number_of_packets_and_counts_the_rest() {
    let names = names("snat-handshake.names");
    let mut collector = tracer::output::html::Collector::new("bounded".to_owned(), 5);
    for record in copy_of_the_flow(1, 7, 1_000, false) {
        collector.record(&record, &names);
    }
    let report = collector.finish(&RunStats::default());
    let flow = &report.detail[0];
    assert_eq!(flow.packets.len(), tracer::output::html::PACKETS_PER_FLOW);
    assert_eq!(
        flow.omitted,
        70 - tracer::output::html::PACKETS_PER_FLOW as u64
    );
    // Each hop pair counts every packet that took it, and its histogram holds each of them.
    for pair in &report.pairs {
        assert_eq!(
            pair.count, 35,
            "every pair is crossed once by each packet of its direction"
        );
        let in_buckets: u64 = pair.hist.iter().map(|[_, n]| u64::from(*n)).sum();
        assert_eq!(in_buckets, pair.count);
        assert!(pair.p50 <= pair.p99 && pair.p99 <= pair.max);
    }
}

/// `tracer replay` of a recording whose last record was cut short (a tracer killed while
/// writing) writes what the whole records hold, exactly as a replay of those alone, says how
/// many bytes it left out, and succeeds; read from a pipe, the same.
#[test]
fn a_replay_leaves_out_a_last_record_cut_short() {
    let whole = std::fs::read(data("snat-handshake.events")).expect("recording");
    let mut cut = whole.clone();
    cut.extend_from_slice(&100u32.to_le_bytes());
    cut.extend_from_slice(&[1; 10]);
    let path = std::env::temp_dir().join(format!("tracer-golden-cut-{}", std::process::id()));
    std::fs::write(&path, &cut).expect("write the cut recording");
    let replay = |path: &Path, stdin: Option<&[u8]>| {
        use std::{io::Write as _, process::Stdio};
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tracer"))
            .args(["replay", "--output", "json"])
            .arg(path)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tracer replay runs");
        if let Some(bytes) = stdin {
            let mut pipe = child.stdin.take().expect("stdin");
            pipe.write_all(bytes).expect("the recording into the pipe");
        }
        child.wait_with_output().expect("tracer replay ends")
    };
    let expected = replay(&data("snat-handshake.events"), None);
    let mapped = replay(&path, None);
    let piped = replay(Path::new("/dev/stdin"), Some(&cut));
    let _ = std::fs::remove_file(&path);
    assert!(expected.status.success());
    assert!(!expected.stdout.is_empty());
    for run in [mapped, piped] {
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(run.status.success(), "{stderr}");
        assert_eq!(run.stdout, expected.stdout);
        assert!(
            stderr.contains("ends within a record; its last 14 bytes are left out"),
            "{stderr}"
        );
    }
}
