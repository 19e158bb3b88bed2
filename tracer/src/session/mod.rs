//! A trace session: what connects the stages. [`Session`] is the collector's side, shared by
//! a live trace ([`live::Trace`]) and `tracer replay` ([`replay`]): decoded events in, the
//! correlator's records out to every output, with the user's selection and `-c` applied.
//!
//! This is the only layer that knows about both the kernel and the outputs, and (with
//! [`select`] and [`follow`]) about what the user selected.

pub mod follow;
pub mod live;
pub mod replay;
pub mod select;
pub mod start;

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    io,
    sync::Arc,
};

use crate::{
    attribution::Rule,
    clock::monotonic_ns,
    correlate::{
        Correlator, Direction, FlowSummary, Limits, Record,
        verdict::{self, Facts, Kind, Verdict},
    },
    decode::HopEvent,
    names::{NameTable, kernel_symbols},
    output::{Output, RunStats},
    recording::Names,
    rules::{self, Rules},
};
use select::{Place, ProcessFilter, touches};

/// Packets or flows ended between two writes when a trace finishes.
const FINISH_CHUNK: usize = 1024;

/// The collector's side of a trace.
pub struct Session<'a> {
    correlator: Correlator,
    shown: Shown,
    outputs: Vec<Box<dyn Output + 'a>>,
    names: NameTable,
    /// Drop locations of events pushed since the last write that are not named yet: named
    /// together, in one read of kallsyms, before the next record is written.
    unnamed: Vec<u64>,
    /// With a recording (`--record`): drop locations named and not yet handed to it. They are
    /// then named as soon as their events are pushed, so that the recording names them well
    /// before the record of the packet that needs them.
    named: Option<Vec<(u64, String)>>,
    stats: RunStats,
    /// `--rules`: what nf_tables reported of the traced packets.
    rules: Option<Rules>,
}

impl<'a> Session<'a> {
    /// A session writing to `outputs`, showing packets that touch `places` (all when empty),
    /// at most `count` of them.
    pub fn new(
        limits: Limits,
        places: BTreeSet<Place>,
        count: Option<u64>,
        outputs: Vec<Box<dyn Output + 'a>>,
        names: NameTable,
    ) -> Session<'a> {
        Session {
            correlator: Correlator::new(limits),
            shown: Shown {
                places,
                processes: ProcessFilter::default(),
                count,
                flows: HashSet::new(),
                held: HashMap::new(),
            },
            outputs,
            names,
            unnamed: Vec::new(),
            named: None,
            stats: RunStats::default(),
            rules: None,
        }
    }

    /// Shows only the connections of these processes (`--pid`, `--comm`).
    pub fn select_processes(&mut self, processes: ProcessFilter) {
        self.shown.processes = processes;
    }

    /// Names the netfilter rules behind NAT and drops from now on.
    pub fn name_rules(&mut self, rules: Rules) {
        self.rules = Some(rules);
    }

    /// The rule attribution, with `--rules`.
    pub fn rules_mut(&mut self) -> Option<&mut Rules> {
        self.rules.as_mut()
    }

    /// Trace messages the kernel could not deliver, with `--rules`.
    pub fn rule_events_lost(&self) -> u64 {
        self.rules.as_ref().map_or(0, |rules| rules.lost)
    }

    /// Adds decoded events.
    pub fn push(&mut self, events: impl IntoIterator<Item = HopEvent>) {
        for event in events {
            if let Some(drop) = &event.drop
                && !self.names.has_symbol(drop.location)
                && !self.unnamed.contains(&drop.location)
            {
                self.unnamed.push(drop.location);
            }
            self.correlator.push(event);
        }
        if self.named.is_some() && !self.unnamed.is_empty() {
            self.name_unnamed();
        }
    }

    /// Keeps the drop locations it names for a recording, which takes them with
    /// [`Session::take_named`].
    pub fn keep_named(&mut self) {
        self.named = Some(Vec::new());
    }

    /// Drop locations named since the last call (with [`Session::keep_named`]).
    pub fn take_named(&mut self) -> Vec<(u64, String)> {
        self.named.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Names the drop locations noted as unnamed, in one read of kallsyms.
    fn name_unnamed(&mut self) {
        let named = name_locations(&std::mem::take(&mut self.unnamed), &mut self.names);
        if let Some(kept) = &mut self.named {
            kept.extend(named);
        }
    }

    /// Whether records wait to be written.
    pub fn has_ready(&self) -> bool {
        self.correlator.has_ready()
    }

    /// Completes idle packets and ends idle flows as of `now_ns` (the events' clock).
    pub fn tick(&mut self, now_ns: u64) {
        self.correlator.tick(now_ns);
    }

    /// Writes what the correlator has ready. Returns true once `-c` packets were written.
    pub fn write_ready(&mut self) -> io::Result<bool> {
        self.write_some(usize::MAX)
    }

    /// Writes up to `max` of the records the correlator has ready, so that a live trace can
    /// read the ring between two chunks. Returns true once `-c` packets were written.
    pub fn write_some(&mut self, max: usize) -> io::Result<bool> {
        let mut wrote = false;
        if let Some(rules) = &mut self.rules {
            rules.poll(monotonic_ns());
        }
        if !self.unnamed.is_empty() && self.correlator.has_ready() {
            self.name_unnamed();
        }
        for _ in 0..max {
            let Some(record) = self.correlator.pop() else {
                break;
            };
            if !self.shown.admits(&record, &mut self.stats) {
                continue;
            }
            let held = match &record {
                Record::Packet(packet) => self.shown.held.remove(&packet.flow_id),
                _ => None,
            };
            self.write_record(record)?;
            // The translations of its flow that waited for the flow to be shown.
            for record in held.into_iter().flatten() {
                self.write_record(record)?;
            }
            wrote = true;
        }
        if wrote {
            for output in &mut self.outputs {
                output.flush()?;
            }
        }
        Ok(self.shown.count_reached(&self.stats))
    }

    /// Names the rules `record` refers to and writes it to every output (its drop locations
    /// were named when its events were pushed: `unnamed`).
    fn write_record(&mut self, mut record: Record) -> io::Result<()> {
        if let Some(found) = &mut self.rules {
            rules::annotate(&mut found.book, found.detail, &mut record);
        }
        if let Record::Flow(flow) = &mut record {
            let rule = self
                .rules
                .as_mut()
                .and_then(|found| found.book.remembered_drop(flow.flow_id));
            let verdict = judge(flow, rule, &self.names);
            self.stats.verdicts.push(verdict.kind);
            flow.verdict = Some(verdict);
        }
        for output in &mut self.outputs {
            output.record(&record, &self.names)?;
        }
        Ok(())
    }

    /// Completes every packet and flow, writes them, and ends every output with the
    /// statistics: the session's own counts (packets, flows) and what `totals` adds (the
    /// reader's and the kernel's counts).
    pub fn finish(mut self, totals: impl FnOnce(&mut RunStats)) -> io::Result<RunStats> {
        // A chunk at a time, written as it ends, to keep memory flat.
        while self.correlator.finish_some(FINISH_CHUNK) {
            self.write_ready()?;
        }
        self.write_ready()?;
        totals(&mut self.stats);
        for output in &mut self.outputs {
            output.stats(&self.stats)?;
        }
        Ok(self.stats)
    }

    /// Packets collecting hops and flows open, for the live status line.
    pub fn sizes(&self) -> (usize, usize) {
        self.correlator.sizes()
    }

    /// Packets written so far.
    pub fn packets_shown(&self) -> u64 {
        self.stats.packets
    }

    /// Takes a recording's [`Names`] record: the names of `enum skb_drop_reason` values and of
    /// drop locations from now on. A recording made in another boot has the code addresses it
    /// does not name left unnamed. Returns whether the recording was made in another boot.
    pub fn name_from_recording(&mut self, names: Names) -> bool {
        let elsewhere = names.made_elsewhere();
        if elsewhere {
            self.names.set_kernel_elsewhere();
        }
        self.names.learn(names);
        elsewhere
    }

    /// Replaces the names of namespaces and containers (the topology changed), keeping what
    /// was learnt of the kernel's names.
    pub fn rename(&mut self, mut names: NameTable) {
        names.keep_kernel_names(&self.names);
        self.names = names;
    }
}

/// The closing line, on stderr like tcpdump's so that it is seen whatever stdout is: what was
/// read, lost and reported, and the collector's peak memory (VmHWM: the most resident memory
/// the process ever had; live, that includes the ring buffer pages it read).
pub fn closing_line(stats: &RunStats) -> String {
    let mut line = format!(
        "tracer: {} events, {} lost, {} malformed; {} packets in {} flows",
        stats.events, stats.lost, stats.malformed, stats.packets, stats.flows
    );
    if let Some(kib) = peak_memory_kib() {
        line += &format!("; peak memory {:.1} MiB", kib as f64 / 1024.0);
    }
    line
}

/// The process's `VmHWM` from `/proc/self/status`, in KiB.
fn peak_memory_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    line.trim().strip_suffix("kB")?.trim().parse().ok()
}

/// Which records are shown: the selection (`-i`, `--container`, `--pod`, `--netns`, `--pid`,
/// `--comm`) and `-c`.
struct Shown {
    places: BTreeSet<Place>,
    processes: ProcessFilter,
    count: Option<u64>,
    /// Flows with a shown packet, when a selection hides some.
    flows: HashSet<u64>,
    /// Translations of flows with no packet shown yet, when a selection hides some: the
    /// correlator reports a translation before the packet that showed it, and the packet
    /// decides whether the flow is shown.
    held: HashMap<u64, Vec<Record>>,
}

impl Shown {
    /// Whether to show `record`, counting what is shown.
    fn admits(&mut self, record: &Record, stats: &mut RunStats) -> bool {
        let selective = !self.places.is_empty() || !self.processes.is_empty();
        match record {
            Record::Packet(packet) => {
                if self.count_reached(stats) || !touches(packet, &self.places) {
                    return false;
                }
                // A connection is the process's from its first packet the process sent: its
                // replies, which have no process, are shown with it.
                if !self.processes.is_empty()
                    && !self.flows.contains(&packet.flow_id)
                    && !self.processes.matches(packet)
                {
                    return false;
                }
                if selective {
                    self.flows.insert(packet.flow_id);
                }
                stats.packets += 1;
                true
            }
            Record::Nat(nat) => {
                if !selective || self.flows.contains(&nat.flow_id) {
                    return true;
                }
                self.held
                    .entry(nat.flow_id)
                    .or_default()
                    .push(record.clone());
                false
            }
            Record::Flow(flow) => {
                self.held.remove(&flow.flow_id);
                let shown = !selective || self.flows.remove(&flow.flow_id);
                if shown {
                    stats.flows += 1;
                }
                shown
            }
        }
    }

    fn count_reached(&self, stats: &RunStats) -> bool {
        self.count.is_some_and(|n| stats.packets >= n)
    }
}

/// The verdict of a flow that ended, with the rule that dropped one of its packets
/// (`--rules`).
pub fn judge(flow: &FlowSummary, rule: Option<Arc<Rule>>, names: &NameTable) -> Verdict {
    let facts = Facts::new(
        &flow.evidence,
        flow.orig.proto,
        flow.orig.dst_port,
        flow.packets[Direction::Original as usize],
        |reason| names.drop_reason(reason),
        |location| names.symbol(location),
        rule.as_ref().and_then(|rule| rule.text.as_deref()),
    );
    let mut verdict = verdict::decide(&facts);
    if matches!(verdict.kind, Kind::Dropped | Kind::ConntrackInvalid) {
        verdict.rule = rule;
    }
    verdict
}

/// Looks up the kernel functions at `locations` not named yet, in one read of kallsyms.
/// Returns those kallsyms named (an address it does not know is shown as the address).
pub fn name_locations(locations: &[u64], names: &mut NameTable) -> Vec<(u64, String)> {
    if !names.kernel_is_here() {
        return Vec::new();
    }
    let mut unknown: Vec<u64> = locations
        .iter()
        .copied()
        .filter(|&address| !names.has_symbol(address))
        .collect();
    if unknown.is_empty() {
        return Vec::new();
    }
    unknown.sort_unstable();
    unknown.dedup();
    let symbols = kernel_symbols(&unknown);
    let mut named = Vec::new();
    for (address, symbol) in unknown.into_iter().zip(symbols) {
        match symbol {
            Some(symbol) => {
                names.set_symbol(address, symbol.clone());
                named.push((address, symbol));
            }
            None => names.set_symbol(address, format!("{address:#x}")),
        }
    }
    named
}
