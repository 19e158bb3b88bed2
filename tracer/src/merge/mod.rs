//! `tracer merge`: one trace from the traces several nodes wrote.
//!
//! Each node runs its own tracer and writes a `--record` file or `-o json` output. [`input`]
//! reads each file back into that node's packet traces, on the node's own clock: a recording
//! through the decoder and the correlator (as `tracer replay` does), JSON Lines parsed back into
//! hops ([`json_in`]). [`join`] then finds the packets that crossed from one node to another:
//! the last hop of a packet on the node it left and the first hop on the node it reached are
//! the same packet when what survives the wire is the same (the inner tuple, IP id and length,
//! TCP flags, sequence and acknowledgement numbers, and the VNI or key of an encapsulation),
//! never kernel addresses. [`offset`] estimates each node's clock offset from those packets
//! (two-way, NTP-style, median over packets) with a bound on its error, and [`render`] builds
//! the merged trace on the reference node's clock: a packet that crossed nodes is one packet,
//! its hops in order, each place named `node/namespace`, flows merged by the correlator's flow
//! table, written by the text and JSON writers of [`crate::output`].
//!
//! Everything that can be wrong with the input is found before anything is written.

mod input;
mod join;
mod json_in;
mod json_out;
mod offset;
mod render;
#[cfg(test)]
mod tests;

use std::{
    collections::HashSet,
    io::Write,
    path::{Path, PathBuf},
};

pub use input::Input;
pub use offset::{Basis, Clock};

use crate::{
    correlate::{PacketTrace, Record},
    names::NameTable,
    output::{self, RunStats},
};

/// What `tracer merge` is asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// One trace per node.
    pub inputs: Vec<Input>,
    pub format: output::Format,
    /// The node whose clock the merged trace is on (the first input's when `None`).
    pub reference: Option<String>,
}

/// Why the inputs cannot be merged: each a mistake in what was given, one line for the user.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("tracer merge needs the traces of at least two nodes (one file per node)")]
    TooFew,
    #[error("cannot read {}: {err}", file.display())]
    Read { file: PathBuf, err: std::io::Error },
    #[error("{} is empty: its tracer wrote nothing", file.display())]
    Empty { file: PathBuf },
    #[error(
        "{} is neither a --record file nor -o json output of tracer ({why})",
        file.display()
    )]
    NotATrace { file: PathBuf, why: String },
    #[error("{} line {line}: {why}", file.display())]
    BadLine {
        file: PathBuf,
        line: usize,
        why: String,
    },
    #[error("{} is the output of tracer merge, not the trace of one node", file.display())]
    AlreadyMerged { file: PathBuf },
    #[error(
        "{} holds no packets (was the trace stopped before anything matched?)",
        file.display()
    )]
    NoPackets { file: PathBuf },
    #[error("two inputs are named {name}: name the nodes apart with NAME=FILE")]
    SameName { name: String },
    #[error(
        "{} and {} come from the same node: {count} hop events are in both (same kernel time, \
         sk_buff and hook); give each node's trace once",
        first.display(),
        second.display()
    )]
    SameNode {
        first: PathBuf,
        second: PathBuf,
        count: usize,
    },
    #[error("--reference {0} names no input (the nodes are {1})")]
    UnknownReference(String, String),
    #[error(
        "no packet of node {nodes} crossed to or from another node's trace, so its clock cannot be \
         placed: trace the same traffic on every node, with a filter that matches there too \
         (see \"One trace from several nodes\" in the README)"
    )]
    NothingInCommon { nodes: String },
}

/// One node's trace, read back from its file.
#[derive(Debug)]
pub struct NodeTrace {
    /// The node's name, as hops of the merged trace are prefixed with it.
    pub name: String,
    pub file: PathBuf,
    /// Packets in the order the node completed them, hops on the node's own clock.
    pub packets: Vec<PacketTrace>,
    /// The node's names of its namespaces, containers, processes and drop reasons.
    pub names: NameTable,
    /// What the node's tracer read, lost and could not decode.
    pub stats: RunStats,
}

/// The traces joined: which node packets are one packet, and every node's clock.
#[derive(Debug)]
pub struct Merged {
    /// Per node, its clock against the reference.
    pub clocks: Vec<Clock>,
    pub reference: usize,
    /// The merged packets, each the node packets it is made of in path order, as (node,
    /// index in the node's `packets`).
    pub packets: Vec<Vec<(usize, usize)>>,
}

impl Merged {
    /// Packets that crossed from one node to another.
    pub fn crossed(&self) -> usize {
        self.packets.iter().filter(|parts| parts.len() > 1).count()
    }
}

/// Reads every input and joins them: everything that can fail because of the input.
pub fn prepare(options: &Options) -> Result<(Vec<NodeTrace>, Merged), MergeError> {
    if options.inputs.len() < 2 {
        return Err(MergeError::TooFew);
    }
    let mut seen = HashSet::new();
    for input in &options.inputs {
        if !seen.insert(input.name.as_str()) {
            return Err(MergeError::SameName {
                name: input.name.clone(),
            });
        }
    }
    let reference = match &options.reference {
        None => 0,
        Some(name) => options
            .inputs
            .iter()
            .position(|input| input.name == *name)
            .ok_or_else(|| {
                let names: Vec<&str> = options.inputs.iter().map(|i| i.name.as_str()).collect();
                MergeError::UnknownReference(name.clone(), names.join(", "))
            })?,
    };
    let mut symbols = json_in::Symbols::default();
    let mut nodes = Vec::with_capacity(options.inputs.len());
    for input in &options.inputs {
        nodes.push(input::read(input, &mut symbols)?);
    }
    symbols.name_in(nodes.iter_mut().map(|node| &mut node.names));
    same_node(&nodes)?;
    let merged = join_and_time(&nodes, reference)?;
    Ok((nodes, merged))
}

/// One trace as records, for writers that take a whole trace (`tracer report`): a node's file
/// read back, or the files of several nodes merged. Flows are made again from the packets and
/// have no verdict yet.
pub struct Trace {
    pub records: Vec<Record>,
    pub names: NameTable,
    pub stats: RunStats,
}

/// Reads one input, or reads and merges several (see [`prepare`]).
pub fn trace(inputs: &[Input], reference: Option<String>) -> Result<Trace, MergeError> {
    let (nodes, merged) = if let [input] = inputs {
        let mut symbols = json_in::Symbols::default();
        let mut node = input::read(input, &mut symbols)?;
        symbols.name_in(std::iter::once(&mut node.names));
        let merged = Merged {
            clocks: vec![Clock::reference()],
            reference: 0,
            packets: (0..node.packets.len())
                .map(|index| vec![(0, index)])
                .collect(),
        };
        (vec![node], merged)
    } else {
        prepare(&Options {
            inputs: inputs.to_vec(),
            format: output::Format::Json,
            reference,
        })?
    };
    let timeline = render::Timeline::build(&nodes, &merged);
    let stats = render::totals(&nodes, &timeline);
    Ok(Trace {
        records: timeline
            .records
            .into_iter()
            .map(|(record, _)| record)
            .collect(),
        names: timeline.names,
        stats,
    })
}

/// Joins the nodes' packets and places every node's clock against `reference`.
pub fn join_and_time(nodes: &[NodeTrace], reference: usize) -> Result<Merged, MergeError> {
    let packets: Vec<&[PacketTrace]> = nodes.iter().map(|n| n.packets.as_slice()).collect();
    let mut links = join::Links::find(&packets);
    let delays = links.delays(&packets);
    let clocks = offset::estimate(&delays, nodes.len(), reference);
    let lost: Vec<&str> = clocks
        .iter()
        .zip(nodes)
        .filter(|(clock, _)| clock.is_none())
        .map(|(_, node)| node.name.as_str())
        .collect();
    if !lost.is_empty() {
        return Err(MergeError::NothingInCommon {
            nodes: lost.join(", "),
        });
    }
    let mut clocks: Vec<Clock> = clocks.into_iter().flatten().collect();
    // Packets whose wire identity repeats are joined by time, now that the clocks are known;
    // the uncertainties then cover them too.
    links.join_repeated(&packets, &clocks, &delays);
    offset::cover(&mut clocks, &links.delays(&packets));
    Ok(Merged {
        clocks,
        reference,
        packets: links.chains(&packets),
    })
}

/// Refuses two traces of one node: hop events with the same kernel time, `sk_buff` and hook
/// cannot come from two machines.
fn same_node(nodes: &[NodeTrace]) -> Result<(), MergeError> {
    let fingerprints: Vec<HashSet<(u64, u64, u8)>> = nodes
        .iter()
        .map(|node| {
            node.packets
                .iter()
                .flat_map(|packet| &packet.hops)
                .filter(|hop| hop.event.skb != 0)
                .map(|hop| (hop.event.ts_ns, hop.event.skb, hop.event.hook as u8))
                .collect()
        })
        .collect();
    for (i, first) in fingerprints.iter().enumerate() {
        for (j, second) in fingerprints.iter().enumerate().skip(i + 1) {
            let count = first.intersection(second).count();
            if count > 0 {
                return Err(MergeError::SameNode {
                    first: nodes[i].file.clone(),
                    second: nodes[j].file.clone(),
                    count,
                });
            }
        }
    }
    Ok(())
}

/// Writes the merged trace in `format`: the clocks first, then packets, NAT and flows as the
/// correlator orders them, then the totals. Returns the totals.
pub fn write(
    nodes: &[NodeTrace],
    merged: &Merged,
    format: output::Format,
    out: impl Write,
) -> std::io::Result<RunStats> {
    render::write(nodes, merged, format, out)
}

/// The name of a node from its file: the file name without its extension.
fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .filter(|stem| !stem.is_empty())
        .unwrap_or_else(|| path.display().to_string())
}
