//! `tracer report`: the HTML report of what tracer wrote.
//!
//! The inputs are read as `tracer merge` reads them (a `--record` file or `-o json` output; one
//! file, or one per node, merged); the flows are judged as a live trace judges them, and the
//! page is written whole or not at all ([`crate::output::html`]). Everything that can be wrong
//! with the inputs or the destination is found before the page is written.

use std::{
    collections::HashMap,
    io::{Read as _, Seek as _, SeekFrom},
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context as _;

use crate::{
    attribution::Rule,
    correlate::Limits,
    correlate::Record,
    error::UsageError,
    merge::{self, Input},
    names::NameTable,
    output::{
        RunStats,
        html::{self, Collector, model::Report},
    },
    recording::Source,
    session::{Session, judge, name_locations},
};

/// What `tracer report` is asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub inputs: Vec<Input>,
    pub output: PathBuf,
    /// The most flows kept in detail.
    pub detail: usize,
    /// The node whose clock a merged trace is on.
    pub reference: Option<String>,
}

/// Writes the report; returns the trace's totals.
pub fn run(options: &Options) -> anyhow::Result<RunStats> {
    html::check_destination(&options.output).map_err(|err| UsageError(err.to_string()))?;
    if let [input] = options.inputs.as_slice()
        && let Some(complete) = recording_length(&input.path)?
    {
        return replay(options, &input.path, complete);
    }
    let (report, stats) = build(options)?;
    let page = html::render(&report)?;
    html::write_whole(&options.output, page.as_bytes())
        .map_err(|err| anyhow::anyhow!("cannot write {}: {err}", options.output.display()))?;
    Ok(stats)
}

/// How many bytes of `path` are whole records, when it is a recording (`None` for JSON Lines);
/// a recording's last record cut short is left out with a warning. Reads only the length
/// prefixes.
fn recording_length(path: &Path) -> Result<Option<u64>, UsageError> {
    let fail = |err: std::io::Error| UsageError(format!("cannot read {}: {err}", path.display()));
    let file = std::fs::File::open(path).map_err(fail)?;
    let size = file.metadata().map_err(fail)?.len();
    let mut reader = std::io::BufReader::new(file);
    let mut first = [0u8; 1];
    let mut at = 0u64;
    while at < size {
        reader.read_exact(&mut first).map_err(fail)?;
        if !first[0].is_ascii_whitespace() {
            break;
        }
        at += 1;
    }
    if at == size {
        return Err(UsageError(format!(
            "{} is empty: its tracer wrote nothing",
            path.display()
        )));
    }
    if first[0] == b'{' {
        return Ok(None);
    }
    reader.seek(SeekFrom::Start(0)).map_err(fail)?;
    let (mut complete, mut records) = (0u64, 0u64);
    let mut len = [0u8; 4];
    while complete + 4 <= size {
        reader.read_exact(&mut len).map_err(fail)?;
        let len = u64::from(u32::from_le_bytes(len));
        if len == 0 || complete + 4 + len > size {
            break;
        }
        reader.seek_relative(len as i64).map_err(fail)?;
        complete += 4 + len;
        records += 1;
    }
    if records == 0 {
        return Err(UsageError(format!(
            "{} is neither a --record file nor -o json output of tracer (no record fits its \
             length prefix)",
            path.display()
        )));
    }
    if complete < size {
        crate::recording::warn_cut_short(path, size - complete);
    }
    Ok(Some(complete))
}

/// One recording through the session a live trace uses, into the report: memory stays
/// bounded by the flows open at once and what the page keeps, however long the recording.
fn replay(options: &Options, path: &Path, complete: u64) -> anyhow::Result<RunStats> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut names = NameTable::default();
    names.set_drop_reasons(crate::btf::running_drop_reasons());
    let writer = html::HtmlWriter::new(&options.output, title(options), options.detail);
    let session = Session::new(
        Limits::default(),
        Default::default(),
        None,
        vec![Box::new(writer)],
        names,
    );
    let mut input = Source::open_first(file, Some(complete))
        .with_context(|| format!("cannot read {}", path.display()))?;
    let stats = crate::session::replay::run(&mut input, session)?;
    if stats.events > 0 && stats.malformed == stats.events {
        let _ = std::fs::remove_file(&options.output);
        return Err(UsageError(format!(
            "{} is neither a --record file nor -o json output of tracer (none of its records is \
             an event tracer knows)",
            path.display()
        ))
        .into());
    }
    Ok(stats)
}

fn title(options: &Options) -> String {
    options
        .inputs
        .iter()
        .map(|input| input.path.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The report's data from the inputs, and the trace's totals.
pub fn build(options: &Options) -> Result<(Report, RunStats), UsageError> {
    let trace = merge::trace(&options.inputs, options.reference.clone())
        .map_err(|err| UsageError(err.to_string()))?;
    let mut names = trace.names;
    name_kernel_values(&trace.records, &mut names);
    let mut collector = Collector::new(title(options), options.detail);
    // The rule that dropped a packet of each flow (`--rules`), for its verdict.
    let mut drop_rules: HashMap<u64, Arc<Rule>> = HashMap::new();
    for mut record in trace.records {
        match &mut record {
            Record::Packet(packet) => {
                if let Some(rule) = &packet.drop_rule {
                    drop_rules.insert(packet.flow_id, Arc::clone(rule));
                }
            }
            Record::Flow(flow) => {
                let rule = drop_rules.remove(&flow.flow_id);
                flow.verdict = Some(judge(flow, rule, &names));
            }
            Record::Nat(_) => {}
        }
        collector.record(&record, &names);
    }
    Ok((collector.finish(&trace.stats), trace.stats))
}

/// A recording names no drop reason and no kernel function: name them as this machine's
/// kernel does (a recording is usually read where it was made).
fn name_kernel_values(records: &[Record], names: &mut NameTable) {
    if !names.knows_drop_reasons() {
        names.set_drop_reasons(crate::btf::running_drop_reasons());
    }
    let locations: Vec<u64> = records
        .iter()
        .filter_map(|record| match record {
            Record::Packet(packet) => Some(packet),
            _ => None,
        })
        .flat_map(|packet| &packet.hops)
        .filter_map(|hop| hop.event.drop.map(|drop| drop.location))
        .collect();
    name_locations(&locations, names);
}
