//! JSON Lines (`-o json`) read back into packet traces: the hops of each packet as the
//! correlator made them, with the names the node's tracer gave its places.
//!
//! Hop lines are read as the README's contract writes them; `nat` and `flow` lines are left
//! out (the merged trace makes its flows again, across nodes), `stats` gives the node's counts.
//! What JSON carries by name only (drop reasons, drop locations) gets a number of its own, the
//! same on every node, which [`Symbols`] names in each node's [`NameTable`]. [`hop`] reads one
//! hop line.

mod hop;

use std::{collections::HashMap, path::Path, sync::Arc};

use serde::Deserialize;

use self::hop::{HopLine, hop_event};
use super::MergeError;
use crate::{
    attribution::Rule,
    correlate::{Direction, Hop, PacketProcess, PacketTrace},
    decode::HopEvent,
    names::NameTable,
    output::{HookStats, RunStats},
    recording::Names,
};

/// Numbers for the drop reasons and locations JSON names: reasons above any the kernel has,
/// locations below any kernel address.
#[derive(Debug, Default)]
pub struct Symbols {
    reasons: HashMap<String, u32>,
    locations: HashMap<String, u64>,
}

/// The first number given to a reason named in JSON.
const FIRST_REASON: u32 = 1 << 31;

impl Symbols {
    fn reason(&mut self, name: &str) -> u32 {
        let next = FIRST_REASON + self.reasons.len() as u32;
        *self.reasons.entry(name.to_owned()).or_insert(next)
    }

    fn location(&mut self, name: &str) -> u64 {
        let next = 1 + self.locations.len() as u64;
        *self.locations.entry(name.to_owned()).or_insert(next)
    }

    /// Names every reason and location in each of `tables`, beside what a recording named
    /// there: a recording's reasons are the kernel's numbers, below FIRST_REASON, and its
    /// locations kernel addresses, far above the numbers given here.
    pub fn name_in<'a>(&self, tables: impl Iterator<Item = &'a mut NameTable>) {
        let names = Names {
            drop_reasons: self
                .reasons
                .iter()
                .map(|(name, &n)| (n, name.clone()))
                .collect(),
            drop_locations: self
                .locations
                .iter()
                .map(|(name, &address)| (address, name.clone()))
                .collect(),
            ..Names::default()
        };
        for table in tables {
            table.learn(names.clone());
        }
    }
}

#[derive(Deserialize)]
struct TypeOnly {
    #[serde(rename = "type")]
    kind: Option<String>,
    node: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct StatsLine {
    events: u64,
    lost: u64,
    malformed: u64,
    #[serde(default)]
    filtered: u64,
    #[serde(default)]
    hooks: Vec<HookLine>,
}

#[derive(Deserialize)]
struct HookLine {
    hook: String,
    seen: u64,
    filtered: u64,
    emitted: u64,
    lost: u64,
}

type Read = (Vec<PacketTrace>, NameTable, RunStats);

/// The packets, names and counts of one node's JSON Lines.
pub fn read(file: &Path, bytes: &[u8], symbols: &mut Symbols) -> Result<Read, MergeError> {
    let text = std::str::from_utf8(bytes).map_err(|_| MergeError::NotATrace {
        file: file.to_owned(),
        why: "not UTF-8 text".to_owned(),
    })?;
    let mut names = NameTable::default();
    let mut stats = RunStats::default();
    let mut packets: Vec<PacketTrace> = Vec::new();
    let mut by_id: HashMap<u64, usize> = HashMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for (at, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why: String| MergeError::BadLine {
            file: file.to_owned(),
            line: at + 1,
            why,
        };
        let head: TypeOnly = match serde_json::from_str(line) {
            Ok(head) => head,
            // A tracer killed while writing leaves its last line cut short.
            Err(_) if at + 1 == lines.len() && !text.ends_with('\n') => {
                eprintln!(
                    "tracer: warning: the last line of {} is cut short and left out",
                    file.display()
                );
                break;
            }
            Err(err) => return Err(bad(format!("not JSON: {err}"))),
        };
        if head.node.is_some() {
            return Err(MergeError::AlreadyMerged {
                file: file.to_owned(),
            });
        }
        match head.kind.as_deref() {
            Some("hop") => {
                let mut hop: HopLine = serde_json::from_str(line)
                    .map_err(|err| bad(format!("not a hop of tracer's JSON: {err}")))?;
                let (packet_id, flow_id) = (hop.packet_id, hop.flow_id);
                let direction = hop.direction.take();
                let (at, rule, walk, process) = hop_event(hop, &mut names, symbols).map_err(bad)?;
                let slot = *by_id.entry(packet_id).or_insert_with(|| {
                    packets.push(packet(packet_id, flow_id, direction.as_deref()));
                    packets.len() - 1
                });
                attach(&mut packets[slot], at, rule, walk, process);
            }
            Some("nat" | "flow") => {}
            Some("stats") => {
                let line: StatsLine = serde_json::from_str(line)
                    .map_err(|err| bad(format!("not tracer's stats: {err}")))?;
                stats.events += line.events;
                stats.lost += line.lost;
                stats.malformed += line.malformed;
                stats.filtered += line.filtered;
                stats
                    .hooks
                    .extend(line.hooks.into_iter().map(|h| HookStats {
                        hook: h.hook,
                        seen: h.seen,
                        filtered: h.filtered,
                        emitted: h.emitted,
                        lost: h.lost,
                    }));
            }
            Some("clock") => {
                return Err(MergeError::AlreadyMerged {
                    file: file.to_owned(),
                });
            }
            Some(other) => {
                return Err(MergeError::NotATrace {
                    file: file.to_owned(),
                    why: format!("line {}: an object of unknown type {other:?}", at + 1),
                });
            }
            None => {
                return Err(MergeError::NotATrace {
                    file: file.to_owned(),
                    why: format!("line {}: a JSON value without \"type\"", at + 1),
                });
            }
        }
    }
    for packet in &mut packets {
        timings(packet);
    }
    Ok((packets, names, stats))
}

fn packet(packet_id: u64, flow_id: u64, direction: Option<&str>) -> PacketTrace {
    let direction = match direction {
        Some("reply") => Direction::Reply,
        _ => Direction::Original,
    };
    PacketTrace::new(packet_id, flow_id, direction, Vec::new())
}

/// Adds a hop to its packet, with the rule shown on it and the walk that followed it.
fn attach(
    packet: &mut PacketTrace,
    event: HopEvent,
    rule: Option<Rule>,
    walk: Vec<Rule>,
    process: Option<PacketProcess>,
) {
    let at = packet.hops.len();
    if let Some(rule) = rule {
        if event.drop.is_some() {
            packet.drop_rule = Some(Arc::new(rule));
        } else {
            packet.nat_rules.push((at, Arc::new(rule)));
        }
    }
    if !walk.is_empty() {
        packet
            .walks
            .push((at, walk.into_iter().map(Arc::new).collect()));
    }
    if packet.process.is_none() {
        packet.process = process;
    }
    packet.hops.push(Hop {
        event,
        since_prev_ns: 0,
        since_first_ns: 0,
    });
}

/// Hops in time order (as written), with the times between them.
fn timings(packet: &mut PacketTrace) {
    let first = packet.hops.first().map_or(0, |hop| hop.event.ts_ns);
    let mut prev = first;
    for hop in &mut packet.hops {
        hop.since_prev_ns = hop.event.ts_ns.saturating_sub(prev);
        hop.since_first_ns = hop.event.ts_ns.saturating_sub(first);
        prev = hop.event.ts_ns;
    }
}
