//! `tracer report`: the HTML report of what tracer wrote.
//!
//! The inputs are read as `tracer merge` reads them (a `--record` file or `-o json` output; one
//! file, or one per node, merged); the flows are judged as a live trace judges them, and the
//! page is written whole or not at all ([`crate::output::html`]). Everything that can be wrong
//! with the inputs or the destination is found before the page is written.

use std::{collections::HashMap, path::PathBuf, sync::Arc};

use crate::{
    attribution::Rule,
    correlate::Record,
    error::UsageError,
    merge::{self, Input},
    names::NameTable,
    output::{
        RunStats,
        html::{self, Collector, model::Report},
    },
    session::{judge, name_locations},
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
    let (report, stats) = build(options)?;
    let page = html::render(&report)?;
    html::write_whole(&options.output, page.as_bytes())
        .map_err(|err| anyhow::anyhow!("cannot write {}: {err}", options.output.display()))?;
    Ok(stats)
}

/// The report's data from the inputs, and the trace's totals.
pub fn build(options: &Options) -> Result<(Report, RunStats), UsageError> {
    let trace = merge::trace(&options.inputs, options.reference.clone())
        .map_err(|err| UsageError(err.to_string()))?;
    let mut names = trace.names;
    name_kernel_values(&trace.records, &mut names);
    let title = options
        .inputs
        .iter()
        .map(|input| input.path.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let mut collector = Collector::new(title, options.detail);
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
