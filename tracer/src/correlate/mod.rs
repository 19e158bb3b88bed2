//! Turns hop events into packet traces, flows and NAT records.
//!
//! Pure code: events and a clock go in, [`Record`]s come out. [`packet`] groups the hops of
//! one packet, [`flow`] groups packets into flows and finds NAT, [`stats`] keeps the per-hop
//! latencies. Memory is bounded: packets complete after an idle time or when the table is full,
//! flows end after an idle time, after they close, or when the table is full.

pub mod flow;
mod intern;
mod nat;
pub mod packet;
pub mod stats;
pub mod verdict;

use std::{collections::VecDeque, sync::Arc};

use flow::{EndedFlow, FlowTable};
pub use nat::nat_kinds;
use packet::{CompletedPacket, PacketTable};
use tracer_common::hook::Hook;

use crate::{
    attribution::{PacketKey, Rule},
    decode::{HopEvent, IfName, Process, Tuple},
};

/// Puts `value` in the first free slot of `slots` (a slot index from `free`), or in a new one
/// at the end; returns its index. `what` names the slots for the 2^32 limit's message.
fn reuse_or_push<T>(slots: &mut Vec<T>, free: &mut Vec<u32>, value: T, what: &str) -> u32 {
    if let Some(index) = free.pop() {
        slots[index as usize] = value;
        return index;
    }
    slots.push(value);
    u32::try_from(slots.len() - 1).unwrap_or_else(|_| panic!("fewer than 2^32 {what}"))
}

/// Flows tracked at once unless the user says otherwise (`--max-flows`).
pub const DEFAULT_MAX_FLOWS: usize = 262_144;

/// Limits and timeouts.
#[derive(Debug, Clone)]
pub struct Limits {
    /// A packet is complete when no hop joined it for this long.
    pub packet_idle_ns: u64,
    /// How far apart two hops of one packet may be when only their content links them.
    pub content_window_ns: u64,
    /// A flow ends when none of its packets was seen for this long.
    pub flow_idle_ns: u64,
    /// A closed TCP flow (FIN both ways, or RST) ends this long after closing.
    pub closed_flow_grace_ns: u64,
    /// Most packets collecting hops at once.
    pub max_packets: usize,
    /// Most flows tracked at once.
    pub max_flows: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            packet_idle_ns: 100_000_000,
            content_window_ns: 10_000_000,
            flow_idle_ns: 30_000_000_000,
            closed_flow_grace_ns: 2_000_000_000,
            max_packets: 65_536,
            max_flows: DEFAULT_MAX_FLOWS,
        }
    }
}

/// Which way a packet goes within its flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// From the connection's initiator.
    Original = 0,
    /// Back to the initiator.
    Reply = 1,
}

impl Direction {
    pub fn other(self) -> Direction {
        match self {
            Direction::Original => Direction::Reply,
            Direction::Reply => Direction::Original,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Direction::Original => "original",
            Direction::Reply => "reply",
        }
    }
}

/// One hop of a packet, with its timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub event: HopEvent,
    /// Time since the packet's previous hop (0 for the first).
    pub since_prev_ns: u64,
    /// Time since the packet's first hop.
    pub since_first_ns: u64,
}

/// Where a hop is: hook, interface and namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HopLabel {
    pub hook: Hook,
    pub ifname: IfName,
    pub ifindex: u32,
    pub netns_inode: u64,
}

impl HopLabel {
    pub fn of(hop: &Hop) -> HopLabel {
        HopLabel {
            hook: hop.event.hook,
            ifname: hop.event.ifname,
            ifindex: hop.event.ifindex,
            netns_inode: hop.event.netns_inode,
        }
    }
}

/// A packet's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketTrace {
    pub packet_id: u64,
    pub flow_id: u64,
    pub direction: Direction,
    /// Hops in time order.
    pub hops: Vec<Hop>,
    /// The NAT rules that translated the packet (`--rules`), each with the index of the first
    /// hop that saw the translation.
    pub nat_rules: Vec<(usize, Arc<Rule>)>,
    /// The rule (or policy) that dropped the packet (`--rules`).
    pub drop_rule: Option<Arc<Rule>>,
    /// The packet's walks through netfilter's chains (`--rules=all`), each with the index of
    /// the hop it followed: every rule that matched, with its verdict, in order.
    pub walks: Vec<(usize, Vec<Arc<Rule>>)>,
    /// The process that created the packet's socket, from the first hop that had the socket;
    /// it holds for every hop of the packet.
    pub process: Option<PacketProcess>,
}

impl PacketTrace {
    /// A packet's path with nothing attributed to it yet: no rules, walks or process.
    pub fn new(packet_id: u64, flow_id: u64, direction: Direction, hops: Vec<Hop>) -> Self {
        PacketTrace {
            packet_id,
            flow_id,
            direction,
            hops,
            nat_rules: Vec::new(),
            drop_rule: None,
            walks: Vec::new(),
            process: None,
        }
    }
}

/// The process behind a packet, and the namespace where its socket was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketProcess {
    pub process: Arc<Process>,
    pub netns_inode: u64,
}

/// Source or destination NAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    Snat,
    Dnat,
}

impl NatKind {
    pub fn name(self) -> &'static str {
        match self {
            NatKind::Snat => "snat",
            NatKind::Dnat => "dnat",
        }
    }
}

/// How a translation was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatSource {
    /// The tuple changed between two hops of one packet.
    Observed,
    /// Conntrack's tuples show it, but no hop on both sides of it was traced.
    Conntrack,
}

/// A translation, reported once per flow and direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatRecord {
    pub flow_id: u64,
    pub direction: Direction,
    pub kind: NatKind,
    pub before: Tuple,
    pub after: Tuple,
    /// First hop that saw the translated tuple, when observed.
    pub at: Option<HopLabel>,
    pub source: NatSource,
    /// The packet the translation was observed on.
    pub packet: Option<PacketKey>,
    /// The rule that made the translation, when `--rules` named it.
    pub rule: Option<Arc<Rule>>,
    /// IPVS made the translation: a virtual service's address, rewritten to a real server's
    /// (or back), seen on a packet IPVS handled.
    pub ipvs: bool,
}

/// Latency between two consecutive hops of a flow, in one direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HopPair {
    pub direction: Direction,
    pub from: HopLabel,
    pub to: HopLabel,
    pub latency: stats::Summary,
}

/// A flow that ended (or was still open when tracing stopped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowSummary {
    pub flow_id: u64,
    pub orig: Tuple,
    pub reply: Tuple,
    /// Packets in the original and the reply direction.
    pub packets: [u64; 2],
    pub first_ts: u64,
    pub last_ts: u64,
    pub hops: Vec<HopPair>,
    /// What the flow's packets showed.
    pub evidence: verdict::Evidence,
    /// Why the flow worked or failed; decided by the session when it writes the flow (it
    /// knows the kernel's drop reasons and the rules), none before.
    pub verdict: Option<verdict::Verdict>,
}

/// Gives TC hops whose interface could not be named from its index alone the namespace and
/// name of the nearest hop of the same packet on the same interface index: TC ingress runs
/// right after `netif_receive_skb`, TC egress right before `net_dev_queue`.
fn name_tc_hops(hops: &mut [Hop]) {
    for i in 0..hops.len() {
        if !hops[i].event.tc || hops[i].event.netns_inode != 0 {
            continue;
        }
        let (ifindex, ts) = (hops[i].event.ifindex, hops[i].event.ts_ns);
        let nearest = hops
            .iter()
            .filter(|h| !h.event.tc && h.event.ifindex == ifindex && h.event.netns_inode != 0)
            .min_by_key(|h| h.event.ts_ns.abs_diff(ts))
            .map(|h| (h.event.netns_inode, h.event.ifname));
        if let Some((inode, ifname)) = nearest {
            hops[i].event.netns_inode = inode;
            hops[i].event.ifname = ifname;
        }
    }
}

/// A hop without a device (a packet freed before it had one, on the local output path) is
/// placed in the namespace of the hop before it.
fn place_deviceless_hops(hops: &mut [Hop]) {
    for i in 1..hops.len() {
        if hops[i].event.netns_inode == 0 && hops[i].event.ifindex == 0 {
            hops[i].event.netns_inode = hops[i - 1].event.netns_inode;
        }
    }
}

/// What the correlator produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Packet(PacketTrace),
    Nat(NatRecord),
    Flow(FlowSummary),
}

/// The stage between the decoder and the outputs.
#[derive(Debug, Default)]
pub struct Correlator {
    limits: Limits,
    packets: PacketTable,
    flows: FlowTable,
    out: VecDeque<Record>,
}

impl Correlator {
    pub fn new(limits: Limits) -> Correlator {
        Correlator {
            limits,
            ..Correlator::default()
        }
    }

    /// Adds one hop event.
    pub fn push(&mut self, event: HopEvent) {
        let evicted = self.packets.push(event, &self.limits);
        self.complete(evicted);
    }

    /// Completes idle packets and ends idle or closed flows, as of `now_ns` (same clock as the
    /// events).
    pub fn tick(&mut self, now_ns: u64) {
        let done = self.packets.expire(now_ns, &self.limits);
        self.complete(done);
        let ended = self.flows.expire(now_ns, &self.limits);
        self.end(ended);
    }

    /// Completes every packet and ends every flow.
    pub fn finish(&mut self) {
        while self.finish_some(usize::MAX) {}
    }

    /// Completes up to `max` packets, or once none is left, ends up to `max` flows (in the
    /// order they began). True while some remain: the caller writes what is ready between
    /// calls, so that ending a large table never holds all its records at once.
    pub fn finish_some(&mut self, max: usize) -> bool {
        if !self.packets.is_empty() {
            let done = self.packets.drain_some(max);
            self.complete(done);
            return true;
        }
        let ended = self.flows.drain_some(max);
        self.end(ended);
        !self.flows.is_empty()
    }

    /// The next output record.
    pub fn pop(&mut self) -> Option<Record> {
        self.out.pop_front()
    }

    /// Whether records wait to be popped.
    pub fn has_ready(&self) -> bool {
        !self.out.is_empty()
    }

    /// Packets collecting hops and flows tracked, for statistics and memory tests.
    pub fn sizes(&self) -> (usize, usize) {
        (self.packets.len(), self.flows.len())
    }

    /// Slots of the arena that holds the hops of active packets, used or free, for memory
    /// tests.
    pub fn held_hops(&self) -> usize {
        self.packets.arena_len()
    }

    /// Distinct segments (direction and two consecutive places) the tracked flows share, for
    /// memory tests.
    pub fn segments(&self) -> usize {
        self.flows.segments()
    }

    /// Distinct paths (lists of segments, each prefix counting) the tracked flows share, for
    /// memory tests.
    pub fn paths(&self) -> usize {
        self.flows.paths()
    }

    /// Distinct places where the tracked flows were last seen, for memory tests.
    pub fn places(&self) -> usize {
        self.flows.places()
    }

    /// Segment series of tracked flows that keep samples beyond their min and max, for memory
    /// tests.
    pub fn sampled(&self) -> usize {
        self.flows.sampled()
    }

    fn complete(&mut self, packets: Vec<CompletedPacket>) {
        for packet in packets {
            let mut hops = packet.hops;
            hops.sort_by_key(|hop| hop.event.ts_ns);
            name_tc_hops(&mut hops);
            place_deviceless_hops(&mut hops);
            let first = hops.first().map_or(0, |hop| hop.event.ts_ns);
            let mut prev = first;
            for hop in &mut hops {
                hop.since_prev_ns = hop.event.ts_ns - prev;
                hop.since_first_ns = hop.event.ts_ns - first;
                prev = hop.event.ts_ns;
            }
            let assignment = self.flows.assign(&hops);
            self.end(assignment.ended.into_iter().collect());
            self.out.extend(assignment.nat.into_iter().map(Record::Nat));
            self.out.push_back(Record::Packet(PacketTrace {
                packet_id: packet.id,
                flow_id: assignment.flow_id,
                direction: assignment.direction,
                process: hops.iter().find_map(|hop| {
                    Some(PacketProcess {
                        process: Arc::clone(hop.event.process.as_ref()?),
                        netns_inode: hop.event.netns_inode,
                    })
                }),
                hops,
                nat_rules: Vec::new(),
                drop_rule: None,
                walks: Vec::new(),
            }));
        }
        let evicted = self.flows.shrink_to(self.limits.max_flows);
        self.end(evicted);
    }

    fn end(&mut self, flows: Vec<EndedFlow>) {
        for ended in flows {
            self.out.extend(ended.into_records());
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
