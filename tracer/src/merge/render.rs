//! The merged trace as records, written by the text and JSON writers.
//!
//! Every hop's time is moved onto the reference clock (the node's offset subtracted). The
//! packets of a chain are concatenated in path order, so a hop may come out before the one
//! before it on another node by at most the two nodes' uncertainties: its gap is shown as 0.
//! Namespaces of different nodes may share an inode (every node's initial namespace has the
//! same one), so each (node, inode) gets an inode of the merged trace, named
//! `node/namespace`; the flows are made again from the merged packets by the correlator's flow
//! table, so a connection between two nodes is one flow with the hops of both.
//!
//! Text goes through [`TextWriter`] with those names. JSON hops go through each node's own
//! [`JsonWriter`] one at a time, with the node's names, inodes and processes, and end with
//! `"node"` and the node's own time (`"node_ts_ns"`); NAT, flow and clock records are written
//! by [`super::json_out`].

use std::{
    cell::RefCell,
    collections::HashMap,
    io::{self, Write},
    rc::Rc,
    sync::Arc,
};

use super::{Merged, NodeTrace, json_out};
use crate::{
    correlate::{Hop, Limits, PacketProcess, PacketTrace, Record, flow::FlowTable},
    decode::Process,
    names::NameTable,
    output::{self, Output, RunStats, json::JsonWriter, text::TextWriter},
};

/// Where a hop of the merged trace comes from: node, packet of the node, hop of the packet.
#[derive(Debug, Clone, Copy)]
pub(super) struct Origin {
    pub node: usize,
    pub packet: usize,
    pub hop: usize,
}

/// Inodes of the merged trace for each (node, inode), and back.
#[derive(Debug, Default)]
pub(super) struct Places {
    merged: HashMap<(usize, u64), u64>,
    /// Indexed by merged inode - 1.
    pub origin: Vec<(usize, u64)>,
}

impl Places {
    fn get(&mut self, node: usize, inode: u64) -> u64 {
        *self.merged.entry((node, inode)).or_insert_with(|| {
            self.origin.push((node, inode));
            self.origin.len() as u64
        })
    }

    /// The node and its own inode of a merged inode.
    pub fn origin(&self, merged: u64) -> (usize, u64) {
        self.origin[merged as usize - 1]
    }
}

/// The merged trace's records, in the order they are written, and where their hops come from.
pub(super) struct Timeline {
    pub records: Vec<(Record, Vec<Origin>)>,
    pub places: Places,
    /// Names of the merged inodes (`node/namespace`) and of the nodes' processes.
    pub names: NameTable,
}

impl Timeline {
    pub fn build(nodes: &[NodeTrace], merged: &Merged) -> Timeline {
        let mut places = Places::default();
        let mut names = NameTable::default();
        // The reference node's drop reasons and locations, then those only the others name:
        // what JSON inputs named is named alike in every node (see `json_in::Symbols`), and a
        // recording names its own kernel's (the nodes of one cluster number reasons alike).
        names.keep_kernel_names(&nodes[merged.reference].names);
        for node in nodes {
            names.add_kernel_names(&node.names);
        }
        let mut cgroups: HashMap<(usize, u64), u64> = HashMap::new();
        let mut packets: Vec<(PacketTrace, Vec<Origin>)> = merged
            .packets
            .iter()
            .map(|parts| concatenate(nodes, merged, parts, &mut places, &mut names, &mut cgroups))
            .collect();
        packets.sort_by_key(|(packet, origin)| {
            let first = packet.hops.first().map_or(0, |hop| hop.event.ts_ns);
            (first, origin.first().map(|o| (o.node, o.packet)))
        });
        for (node, inode) in &places.origin {
            let merged_inode = places.merged[&(*node, *inode)];
            let own = &nodes[*node].names;
            if nodes.len() == 1 {
                // One node's trace read back: its places keep their own names and owners.
                match own.netns(*inode) {
                    Some(name) => names.set_netns(merged_inode, name),
                    None => names.set_netns(merged_inode, format!("netns:{inode}")),
                }
                if let Some(workload) = own.workload(*inode) {
                    names.set_workload(merged_inode, workload.clone());
                }
            } else {
                let place = format!("{}/{}", nodes[*node].name, own.place(*inode));
                names.set_netns(merged_inode, place);
            }
        }
        let mut flows = FlowTable::default();
        let limits = Limits::default();
        let mut records = Vec::new();
        for (id, (mut packet, origin)) in packets.into_iter().enumerate() {
            let first = packet.hops.first().map_or(0, |hop| hop.event.ts_ns);
            end(flows.expire(first, &limits), &mut records);
            let assignment = flows.assign(&packet.hops);
            end(assignment.ended.into_iter().collect(), &mut records);
            records.extend(
                assignment
                    .nat
                    .into_iter()
                    .map(|nat| (Record::Nat(nat), vec![])),
            );
            packet.packet_id = id as u64 + 1;
            packet.flow_id = assignment.flow_id;
            packet.direction = assignment.direction;
            records.push((Record::Packet(packet), origin));
        }
        end(flows.drain_some(usize::MAX), &mut records);
        Timeline {
            records,
            places,
            names,
        }
    }
}

/// The node packets of one chain as one packet on the reference clock, with merged inodes;
/// NAT rules and walks keep the hops they belong to.
fn concatenate(
    nodes: &[NodeTrace],
    merged: &Merged,
    parts: &[(usize, usize)],
    places: &mut Places,
    names: &mut NameTable,
    cgroups: &mut HashMap<(usize, u64), u64>,
) -> (PacketTrace, Vec<Origin>) {
    let mut trace = PacketTrace::new(0, 0, crate::correlate::Direction::Original, Vec::new());
    let mut origin = Vec::new();
    for &(node, index) in parts {
        let packet = &nodes[node].packets[index];
        let offset = merged.clocks[node].offset_ns;
        let start = trace.hops.len();
        for (at, hop) in packet.hops.iter().enumerate() {
            let mut event = hop.event.clone();
            event.ts_ns = corrected(event.ts_ns, offset);
            event.netns_inode = places.get(node, event.netns_inode);
            event.process = None;
            trace.hops.push(Hop {
                event,
                since_prev_ns: 0,
                since_first_ns: 0,
            });
            origin.push(Origin {
                node,
                packet: index,
                hop: at,
            });
        }
        for (at, rule) in &packet.nat_rules {
            trace.nat_rules.push((start + at, Arc::clone(rule)));
        }
        for (at, walk) in &packet.walks {
            trace.walks.push((start + at, walk.clone()));
        }
        if trace.drop_rule.is_none() {
            trace.drop_rule.clone_from(&packet.drop_rule);
        }
        if trace.process.is_none()
            && let Some(owner) = &packet.process
        {
            trace.process = Some(process(node, owner, nodes, places, names, cgroups));
        }
    }
    // Path order, not time order: a gap that the clocks' error makes negative shows as 0.
    let mut since_first = 0u64;
    for i in 1..trace.hops.len() {
        let gap = trace.hops[i]
            .event
            .ts_ns
            .saturating_sub(trace.hops[i - 1].event.ts_ns);
        since_first = since_first.saturating_add(gap);
        trace.hops[i].since_prev_ns = gap;
        trace.hops[i].since_first_ns = since_first;
    }
    (trace, origin)
}

/// A node's time on the reference clock.
pub(super) fn corrected(ts_ns: u64, offset_ns: i128) -> u64 {
    (i128::from(ts_ns) - offset_ns).clamp(0, i128::from(u64::MAX)) as u64
}

/// The process behind a packet, with its cgroup made unique across nodes and named as its
/// node names it.
fn process(
    node: usize,
    owner: &PacketProcess,
    nodes: &[NodeTrace],
    places: &mut Places,
    names: &mut NameTable,
    cgroups: &mut HashMap<(usize, u64), u64>,
) -> PacketProcess {
    let next = cgroups.len() as u64 + 1;
    let cgroup_id = *cgroups
        .entry((node, owner.process.cgroup_id))
        .or_insert(next);
    if let Some(workload) = nodes[node]
        .names
        .process_workload(&owner.process, owner.netns_inode)
    {
        names.set_cgroup(cgroup_id, workload.clone());
    }
    PacketProcess {
        process: Arc::new(Process {
            cgroup_id,
            ..Process::clone(&owner.process)
        }),
        netns_inode: places.get(node, owner.netns_inode),
    }
}

/// Flow summaries (and the NAT only conntrack showed) of flows that ended, as the correlator
/// writes them.
fn end(ended: Vec<crate::correlate::flow::EndedFlow>, records: &mut Vec<(Record, Vec<Origin>)>) {
    // Without verdicts, as the correlator writes them: the nodes' own traces have theirs.
    for flow in ended {
        records.extend(flow.into_records().map(|record| (record, vec![])));
    }
}

/// Writes the merged trace; returns its totals.
pub(super) fn write(
    nodes: &[NodeTrace],
    merged: &Merged,
    format: output::Format,
    mut out: impl Write,
) -> io::Result<RunStats> {
    let timeline = Timeline::build(nodes, merged);
    let stats = totals(nodes, &timeline);
    match format {
        output::Format::Json => {
            json_out::clocks(&mut out, nodes, merged)?;
            let mut hops = HopWriter::new(nodes);
            for (record, origin) in &timeline.records {
                match record {
                    Record::Packet(packet) => hops.packet(&mut out, nodes, packet, origin)?,
                    Record::Nat(nat) => json_out::nat(&mut out, nat, nodes, &timeline.places)?,
                    Record::Flow(flow) => json_out::flow(&mut out, flow, nodes, &timeline.places)?,
                }
            }
            let mut writer = JsonWriter::new(&mut out);
            writer.stats(&stats)?;
        }
        // pcapng is refused on the command line; text is the rest.
        _ => {
            json_out::clock_lines(&mut out, nodes, merged)?;
            let mut writer = TextWriter::new(&mut out, 0);
            for (record, _) in &timeline.records {
                writer.record(record, &timeline.names)?;
            }
            writer.stats(&stats)?;
        }
    }
    out.flush()?;
    Ok(stats)
}

/// The totals of the merged trace: what the nodes read, lost and could not decode, and the
/// merged packets and flows.
pub(super) fn totals(nodes: &[NodeTrace], timeline: &Timeline) -> RunStats {
    let mut stats = RunStats::default();
    for node in nodes {
        stats.events += node.stats.events;
        stats.lost += node.stats.lost;
        stats.malformed += node.stats.malformed;
        stats.filtered += node.stats.filtered;
        for hook in &node.stats.hooks {
            match stats.hooks.iter_mut().find(|h| h.hook == hook.hook) {
                Some(sum) => {
                    sum.seen += hook.seen;
                    sum.filtered += hook.filtered;
                    sum.emitted += hook.emitted;
                    sum.lost += hook.lost;
                }
                None => stats.hooks.push(hook.clone()),
            }
        }
    }
    for (record, _) in &timeline.records {
        match record {
            Record::Packet(_) => stats.packets += 1,
            Record::Flow(_) => stats.flows += 1,
            Record::Nat(_) => {}
        }
    }
    stats
}

/// A buffer the JSON writers write into and the merge takes each line from.
#[derive(Clone, Default)]
struct Shared(Rc<RefCell<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes hops of the merged trace as each node's tracer wrote them, plus the node.
struct HopWriter {
    writers: Vec<(JsonWriter<Shared>, Shared)>,
}

impl HopWriter {
    fn new(nodes: &[NodeTrace]) -> HopWriter {
        let writers = nodes
            .iter()
            .map(|_| {
                let shared = Shared::default();
                (JsonWriter::new(shared.clone()), shared)
            })
            .collect();
        HopWriter { writers }
    }

    fn packet(
        &mut self,
        out: &mut impl Write,
        nodes: &[NodeTrace],
        packet: &PacketTrace,
        origin: &[Origin],
    ) -> io::Result<()> {
        for (hop, from) in packet.hops.iter().zip(origin) {
            let node = &nodes[from.node];
            let own = &node.packets[from.packet];
            let single = PacketTrace {
                packet_id: packet.packet_id,
                flow_id: packet.flow_id,
                direction: packet.direction,
                hops: vec![Hop {
                    event: crate::decode::HopEvent {
                        netns_inode: own.hops[from.hop].event.netns_inode,
                        ..hop.event.clone()
                    },
                    since_prev_ns: hop.since_prev_ns,
                    since_first_ns: hop.since_first_ns,
                }],
                nat_rules: own
                    .nat_rules
                    .iter()
                    .filter(|(i, _)| *i == from.hop)
                    .map(|(_, rule)| (0, Arc::clone(rule)))
                    .collect(),
                drop_rule: own.drop_rule.clone(),
                walks: own
                    .walks
                    .iter()
                    .filter(|(i, _)| *i == from.hop)
                    .map(|(_, walk)| (0, walk.clone()))
                    .collect(),
                // The process as the node that saw the hop knows it.
                process: own.process.clone(),
            };
            let (writer, shared) = &mut self.writers[from.node];
            writer.record(&Record::Packet(single), &node.names)?;
            writer.flush()?;
            let mut line = std::mem::take(&mut *shared.0.borrow_mut());
            json_out::add_node(&mut line, &node.name, own.hops[from.hop].event.ts_ns);
            out.write_all(&line)?;
        }
        Ok(())
    }
}
