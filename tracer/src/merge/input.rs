//! Reading one node's trace: which format a file is, and its packets on the node's clock.
//!
//! A file whose first non-blank byte is `{` is JSON Lines (`-o json`, or `tracer replay -o
//! json`), parsed back into hops by [`super::json_in`]. Anything else must be a recording
//! (`--record`): length-prefixed ring buffer records, which go through the decoder and the
//! correlator as `tracer replay` sends them, with the events' own clock completing packets.
//! Text output cannot be merged: it leaves out what joins packets (IP id, lengths).

use std::path::PathBuf;

use super::{MergeError, NodeTrace, json_in, stem};
use crate::{
    correlate::{Correlator, Limits, Record},
    decode::{Decoder, Entry},
    names::NameTable,
    output::RunStats,
    recording,
};

/// Records between two clock ticks of the correlator, as in `tracer replay`.
const TICK_EVERY: u64 = 1024;

/// One node's file, and the node's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    pub name: String,
    pub path: PathBuf,
}

impl Input {
    /// `NAME=FILE`, or `FILE` for a node named after the file (its name without extension).
    /// `NAME` is letters, digits, `-`, `_` and `.`; an argument whose part before the first
    /// `=` is not such a name is a file name.
    pub fn parse(arg: &str) -> Input {
        if let Some((name, path)) = arg.split_once('=')
            && !name.is_empty()
            && !path.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Input {
                name: name.to_owned(),
                path: path.into(),
            };
        }
        let path = PathBuf::from(arg);
        Input {
            name: stem(&path),
            path,
        }
    }
}

/// Reads the trace in `input`'s file; `symbols` names the drop reasons and locations that
/// JSON files give by name.
pub fn read(input: &Input, symbols: &mut json_in::Symbols) -> Result<NodeTrace, MergeError> {
    let file = input.path.clone();
    let bytes = std::fs::read(&file).map_err(|err| MergeError::Read {
        file: file.clone(),
        err,
    })?;
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    let (packets, names, stats) = match first {
        None => return Err(MergeError::Empty { file }),
        Some(b'{') => json_in::read(&file, &bytes, symbols)?,
        Some(_) => replay(&file, &bytes)?,
    };
    if packets.is_empty() {
        return Err(MergeError::NoPackets { file });
    }
    Ok(NodeTrace {
        name: input.name.clone(),
        file,
        packets,
        names,
        stats,
    })
}

type Read = (Vec<crate::correlate::PacketTrace>, NameTable, RunStats);

/// A recording through the decoder and the correlator.
fn replay(file: &std::path::Path, bytes: &[u8]) -> Result<Read, MergeError> {
    let (records, rest) = recording::split(bytes);
    let not_a_trace = |why: &str| MergeError::NotATrace {
        file: file.to_owned(),
        why: why.to_owned(),
    };
    if records.is_empty() {
        return Err(not_a_trace("no record fits its length prefix"));
    }
    if !rest.is_empty() {
        crate::recording::warn_cut_short(file, rest.len() as u64);
    }
    let mut decoder = Decoder::new();
    let mut correlator = Correlator::new(Limits::default());
    let mut stats = RunStats::default();
    let mut packets = Vec::new();
    let mut names = NameTable::default();
    let mut latest = 0;
    for record in records {
        match decoder.entry(record) {
            Entry::Event(event) => {
                stats.events += 1;
                latest = latest.max(event.ts_ns);
                correlator.push(event);
            }
            Entry::Names(read) => names.learn(read),
            Entry::Nothing => {}
            Entry::Malformed => {
                stats.events += 1;
                stats.malformed += 1;
            }
        }
        if stats.events % TICK_EVERY == 0 {
            correlator.tick(latest);
            collect(&mut correlator, &mut packets);
        }
    }
    if stats.events > 0 && stats.malformed == stats.events {
        return Err(not_a_trace("none of its records is an event tracer knows"));
    }
    correlator.finish();
    collect(&mut correlator, &mut packets);
    Ok((packets, names, stats))
}

/// Keeps the packet traces the correlator completed; its flows are made again for the merged
/// trace, across nodes.
fn collect(correlator: &mut Correlator, packets: &mut Vec<crate::correlate::PacketTrace>) {
    while let Some(record) = correlator.pop() {
        if let Record::Packet(packet) = record {
            packets.push(packet);
        }
    }
}
