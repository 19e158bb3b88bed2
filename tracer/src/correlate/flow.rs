//! Groups packets into flows and finds where NAT rewrote them.
//!
//! A flow is keyed by its conntrack-style original tuple. Every tuple a flow's packets were
//! seen with, in either direction and on either side of a NAT, points back to the flow, so the
//! SYN, the SYN-ACK and every later packet share one flow id wherever they were observed.
//! Conntrack is the ground truth where a hop carried an entry (its original and reply tuples
//! register all four views of the connection); otherwise rewrites observed between consecutive
//! hops of one packet link the tuple before NAT to the tuple after it.

use std::{
    collections::BTreeSet,
    hash::{Hash, Hasher},
};

use rustc_hash::{FxHashMap as HashMap, FxHasher};
use tracer_common::wire::tcp;

use super::{Direction, Hop, HopLabel, Limits, NatKind, NatRecord, NatSource, stats::Latency};
use crate::decode::{Conntrack, Proto, Tuple};

/// The initial sequence number of a packet that opens a TCP connection (SYN without ACK).
fn opening_seq(hops: &[Hop]) -> Option<u32> {
    hops.iter()
        .find(|h| {
            h.event.has_l4
                && h.event.tuple.proto == Proto::TCP
                && h.event.tcp_flags & (tcp::SYN | tcp::ACK) == tcp::SYN
        })
        .map(|h| h.event.tcp_seq)
}

/// A flow being tracked.
#[derive(Debug)]
pub struct Flow {
    pub id: u64,
    /// Original-direction tuple, as the initiator sent it (before any NAT).
    pub orig: Tuple,
    /// Tuple the replies carry before they are translated back (after NAT, reversed).
    pub reply: Tuple,
    /// Whether `reply` comes from conntrack rather than from observed rewrites.
    pub reply_from_conntrack: bool,
    pub packets: [u64; 2],
    pub first_ts: u64,
    pub last_ts: u64,
    /// Latency per segment (an id in the table's [`Segments`]), in first-seen order.
    pub hops: Vec<(u32, Latency)>,
    /// The segments of `hops`, filled in when the flow ends.
    pub path: Vec<Segment>,
    nat_reported: [bool; 2],
    fin: [bool; 2],
    closed_at: Option<u64>,
    /// Initial sequence number of the SYN that opened the flow, if it was seen.
    syn_seq: Option<u32>,
    /// Tuples in the index besides `orig` and `reply` (and their reverses): tuples seen on one
    /// side of a NAT that conntrack did not show, or what `orig` and `reply` were before
    /// conntrack named them.
    extra: Vec<Tuple>,
}

/// A direction and two consecutive places on a packet's path.
pub type Segment = (Direction, HopLabel, HopLabel);

/// Segments many flows share, each stored once, by id, with the number of flows using it; an
/// id is reused once no flow uses its segment (interfaces and namespaces come and go).
#[derive(Debug, Default)]
struct Segments {
    all: Vec<(Segment, u32)>,
    ids: HashMap<Segment, u32>,
    free: Vec<u32>,
}

impl Segments {
    /// The id of `segment`, counting one more user.
    fn intern(&mut self, segment: Segment) -> u32 {
        if let Some(&id) = self.ids.get(&segment) {
            self.all[id as usize].1 += 1;
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.all[id as usize] = (segment, 1);
                id
            }
            None => {
                self.all.push((segment, 1));
                u32::try_from(self.all.len() - 1).expect("fewer than 2^32 segments")
            }
        };
        self.ids.insert(segment, id);
        id
    }

    fn get(&self, id: u32) -> &Segment {
        &self.all[id as usize].0
    }

    /// One user fewer; the id is free once none is left.
    fn release(&mut self, id: u32) {
        let (segment, users) = &mut self.all[id as usize];
        *users -= 1;
        if *users == 0 {
            self.ids.remove(segment);
            self.free.push(id);
        }
    }

    fn len(&self) -> usize {
        self.ids.len()
    }
}

/// The index key of a tuple: a 64-bit hash, checked against the flow it leads to.
fn tuple_key(tuple: &Tuple) -> u64 {
    let mut hasher = FxHasher::default();
    tuple.hash(&mut hasher);
    hasher.finish()
}

/// Flows and the index from every known tuple to its flow and direction.
#[derive(Debug, Default)]
pub struct FlowTable {
    flows: HashMap<u64, Flow>,
    /// [`tuple_key`] of every tuple of every flow, both ways, to the flow and direction.
    index: HashMap<u64, (u64, Direction)>,
    segments: Segments,
    /// (last packet time, id) of every flow, so that expiry looks only at flows that are due.
    activity: BTreeSet<(u64, u64)>,
    /// (close time, id) of closed TCP flows.
    closing: BTreeSet<(u64, u64)>,
    /// Ids still to end at the end of the trace, newest first ([`FlowTable::drain_some`]).
    draining: Vec<u64>,
    next_id: u64,
}

/// The flow a completed packet belongs to, and the NAT it revealed.
pub struct Assignment {
    pub flow_id: u64,
    pub direction: Direction,
    pub nat: Vec<NatRecord>,
    /// A closed flow this packet ended, by opening a new connection on its tuple.
    pub ended: Option<Flow>,
}

/// What a completed packet says about its flow, read once from its hops.
struct Sighting<'h> {
    hops: &'h [Hop],
    /// Hops whose ports and TCP fields were read, in time order.
    with_l4: Vec<&'h Hop>,
    /// The tuple the packet was first seen with.
    first: Tuple,
    /// The conntrack entry of the first hop that carried one.
    conntrack: Option<&'h Conntrack>,
    /// The initial sequence number, when the packet opens a TCP connection.
    syn_seq: Option<u32>,
}

impl<'h> Sighting<'h> {
    fn of(hops: &'h [Hop]) -> Self {
        let with_l4: Vec<&Hop> = hops.iter().filter(|h| h.event.has_l4).collect();
        let conntrack = hops.iter().find_map(|h| h.event.conntrack.as_deref());
        let first = with_l4
            .first()
            .copied()
            .or(hops.first())
            .map(|h| h.event.tuple)
            .unwrap_or_else(|| conntrack.map_or_else(unknown_tuple, |ct| ct.orig));
        Sighting {
            hops,
            with_l4,
            first,
            conntrack,
            syn_seq: opening_seq(hops),
        }
    }
}

impl FlowTable {
    /// Finds or creates the flow of a completed packet (hops sorted by time), registers what the
    /// packet revealed, and records its per-hop latencies.
    pub fn assign(&mut self, hops: &[Hop]) -> Assignment {
        let sighting = Sighting::of(hops);
        let (found, ended) = self.lookup(&sighting);
        let flow_id = match found {
            Some(id) => id,
            None => self.create(
                sighting.conntrack.map_or(sighting.first, |ct| ct.orig),
                hops,
            ),
        };
        if let Some(ct) = sighting.conntrack {
            self.learn_conntrack(flow_id, ct);
        }
        let direction = self
            .find(&sighting.first)
            .map_or(Direction::Original, |(_, dir)| dir);
        let nat = self.learn_rewrites(flow_id, direction, &sighting.with_l4);
        self.count_packet(flow_id, direction, &sighting);
        self.record_latencies(flow_id, direction, hops);
        self.track_close(flow_id, direction, &sighting);
        Assignment {
            flow_id,
            direction,
            nat,
            ended,
        }
    }

    /// The flow the packet belongs to, by its conntrack entry or any tuple it was seen with.
    /// A SYN on the tuple of a connection that closed is a new connection (the port was used
    /// again within the closed flow's grace time): that flow ends here, and is returned. Unless
    /// it is the flow's own SYN sent again: a SYN answered from TIME_WAIT with an ACK, reset by
    /// the client and retried is one connection attempt, and stays one flow.
    fn lookup(&mut self, sighting: &Sighting) -> (Option<u64>, Option<Flow>) {
        let found = sighting
            .conntrack
            .and_then(|ct| self.find(&ct.orig))
            .or_else(|| {
                sighting
                    .with_l4
                    .iter()
                    .find_map(|h| self.find(&h.event.tuple))
            })
            .map(|(id, _)| id);
        match (found, sighting.syn_seq) {
            (Some(id), Some(seq)) if self.is_closed(id) => {
                if self.flows[&id].syn_seq == Some(seq) {
                    self.reopen(id);
                    (Some(id), None)
                } else {
                    (None, self.remove_all(vec![id]).pop())
                }
            }
            (found, _) => (found, None),
        }
    }

    /// Registers every tuple the packet was seen with, and reports the NAT between hops where
    /// its tuple changed.
    fn learn_rewrites(
        &mut self,
        flow_id: u64,
        direction: Direction,
        with_l4: &[&Hop],
    ) -> Vec<NatRecord> {
        let mut nat = Vec::new();
        for pair in with_l4.windows(2) {
            let (before, after) = (pair[0], pair[1]);
            if before.event.tuple != after.event.tuple {
                self.learn(flow_id, after.event.tuple, direction);
                nat.extend(self.observed_nat(flow_id, direction, before, after));
            }
        }
        for hop in with_l4 {
            self.learn(flow_id, hop.event.tuple, direction);
        }
        nat
    }

    /// Counts the packet and moves the flow's last activity to its last hop.
    fn count_packet(&mut self, flow_id: u64, direction: Direction, sighting: &Sighting) {
        let flow = self.flows.get_mut(&flow_id).expect("assigned flow exists");
        flow.packets[direction as usize] += 1;
        if flow.syn_seq.is_none() {
            flow.syn_seq = sighting.syn_seq;
        }
        let last = sighting.hops.last().map_or(0, |h| h.event.ts_ns);
        if last > flow.last_ts {
            self.activity.remove(&(flow.last_ts, flow_id));
            flow.last_ts = last;
            self.activity.insert((last, flow_id));
        }
    }

    /// Adds the time between each two consecutive hops to the flow's segment between them.
    fn record_latencies(&mut self, flow_id: u64, direction: Direction, hops: &[Hop]) {
        let flow = self.flows.get_mut(&flow_id).expect("assigned flow exists");
        for pair in hops.windows(2) {
            let key = (direction, HopLabel::of(&pair[0]), HopLabel::of(&pair[1]));
            let segments = &mut self.segments;
            match flow
                .hops
                .iter_mut()
                .find(|(id, _)| *segments.get(*id) == key)
            {
                Some((_, latency)) => latency.record(pair[1].since_prev_ns),
                None => {
                    let mut latency = Latency::default();
                    latency.record(pair[1].since_prev_ns);
                    flow.hops.push((segments.intern(key), latency));
                }
            }
        }
    }

    /// Marks a TCP flow closed once both sides sent FIN, or either reset it.
    fn track_close(&mut self, flow_id: u64, direction: Direction, sighting: &Sighting) {
        if sighting.first.proto != Proto::TCP {
            return;
        }
        let flow = self.flows.get_mut(&flow_id).expect("assigned flow exists");
        let flags = sighting
            .hops
            .iter()
            .fold(0, |acc, h| acc | h.event.tcp_flags);
        if flags & tcp::FIN != 0 {
            flow.fin[direction as usize] = true;
        }
        if (flags & tcp::RST != 0 || flow.fin == [true, true]) && flow.closed_at.is_none() {
            flow.closed_at = Some(flow.last_ts);
            self.closing.insert((flow.last_ts, flow_id));
        }
    }

    /// Takes a closed flow back to open: its connection goes on.
    fn reopen(&mut self, flow_id: u64) {
        let Some(flow) = self.flows.get_mut(&flow_id) else {
            return;
        };
        if let Some(closed_at) = flow.closed_at.take() {
            self.closing.remove(&(closed_at, flow_id));
        }
        flow.fin = [false, false];
    }

    fn is_closed(&self, flow_id: u64) -> bool {
        self.flows
            .get(&flow_id)
            .is_some_and(|flow| flow.closed_at.is_some())
    }

    fn create(&mut self, orig: Tuple, hops: &[Hop]) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        let ts = hops.first().map_or(0, |h| h.event.ts_ns);
        self.flows.insert(
            id,
            Flow {
                id,
                orig,
                reply: orig.reversed(),
                reply_from_conntrack: false,
                packets: [0, 0],
                first_ts: ts,
                last_ts: ts,
                hops: Vec::new(),
                path: Vec::new(),
                nat_reported: [false, false],
                fin: [false, false],
                closed_at: None,
                syn_seq: None,
                extra: Vec::new(),
            },
        );
        self.activity.insert((ts, id));
        self.learn(id, orig, Direction::Original);
        id
    }

    /// The flow and direction of `tuple`.
    fn find(&self, tuple: &Tuple) -> Option<(u64, Direction)> {
        let &(id, direction) = self.index.get(&tuple_key(tuple))?;
        self.flows
            .get(&id)
            .is_some_and(|flow| flow.knows(tuple))
            .then_some((id, direction))
    }

    /// Registers a tuple (and its reverse, for the other direction) as belonging to `flow_id`,
    /// unless another flow has it.
    fn learn(&mut self, flow_id: u64, tuple: Tuple, direction: Direction) {
        if !self.flows.contains_key(&flow_id) {
            return;
        }
        let mut added = false;
        for (tuple, direction) in [(tuple, direction), (tuple.reversed(), direction.other())] {
            let key = tuple_key(&tuple);
            // An entry whose flow does not know the tuple is another tuple's with the same
            // hash, or one left over: this tuple takes it.
            let taken = self.index.get(&key).is_some_and(|&(owner, _)| {
                owner == flow_id || self.flows.get(&owner).is_some_and(|f| f.knows(&tuple))
            });
            if !taken {
                self.index.insert(key, (flow_id, direction));
                added = true;
            }
        }
        let flow = self.flows.get_mut(&flow_id).expect("checked above");
        if added && !flow.knows(&tuple) {
            flow.extra.push(tuple);
        }
    }

    fn learn_conntrack(&mut self, flow_id: u64, ct: &Conntrack) {
        if let Some(flow) = self.flows.get_mut(&flow_id) {
            flow.rename(ct.orig, ct.reply);
            flow.reply_from_conntrack = true;
        }
        self.learn(flow_id, ct.orig, Direction::Original);
        self.learn(flow_id, ct.reply, Direction::Reply);
    }

    /// NAT records for a rewrite between two hops, once per flow and direction.
    fn observed_nat(
        &mut self,
        flow_id: u64,
        direction: Direction,
        before: &Hop,
        after: &Hop,
    ) -> Vec<NatRecord> {
        let flow = self.flows.get_mut(&flow_id).expect("flow exists");
        if flow.nat_reported[direction as usize] {
            return Vec::new();
        }
        flow.nat_reported[direction as usize] = true;
        if direction == Direction::Original && !flow.reply_from_conntrack {
            flow.rename(flow.orig, after.event.tuple.reversed());
        }
        let (b, a) = (before.event.tuple, after.event.tuple);
        nat_kinds(direction, &b, &a)
            .into_iter()
            .map(|kind| NatRecord {
                flow_id,
                direction,
                kind,
                before: b,
                after: a,
                at: Some(HopLabel::of(after)),
                source: NatSource::Observed,
            })
            .collect()
    }

    /// Removes and returns flows that ended: idle too long, or closed and past the grace time.
    pub fn expire(&mut self, now_ns: u64, limits: &Limits) -> Vec<Flow> {
        let due = |set: &BTreeSet<(u64, u64)>, after: u64| -> Vec<u64> {
            set.iter()
                .take_while(|(ts, _)| now_ns.saturating_sub(*ts) >= after)
                .map(|&(_, id)| id)
                .collect()
        };
        let mut ended = due(&self.activity, limits.flow_idle_ns);
        ended.extend(due(&self.closing, limits.closed_flow_grace_ns));
        ended.sort_unstable();
        ended.dedup();
        self.remove_all(ended)
    }

    /// Removes the least recently active flows until at most `max` remain.
    pub fn shrink_to(&mut self, max: usize) -> Vec<Flow> {
        if self.flows.len() <= max {
            return Vec::new();
        }
        // Evict an eighth more than needed, so that a full table does not evict on every packet.
        let excess = self.flows.len() - max + max / 8;
        let oldest = self
            .activity
            .iter()
            .take(excess)
            .map(|&(_, id)| id)
            .collect();
        self.remove_all(oldest)
    }

    /// Removes and returns the `max` oldest flows (all when fewer), by id: the order they
    /// began in. Meant for the end of a trace, when no flow is added any more.
    pub fn drain_some(&mut self, max: usize) -> Vec<Flow> {
        if self.draining.is_empty() {
            self.draining = self.flows.keys().copied().collect();
            // Newest first, so that the oldest are taken from the end.
            self.draining.sort_unstable_by(|a, b| b.cmp(a));
        }
        let keep = self.draining.len().saturating_sub(max);
        let ids = self.draining.split_off(keep);
        self.remove_all(ids)
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn segments(&self) -> usize {
        self.segments.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    fn remove_all(&mut self, mut ids: Vec<u64>) -> Vec<Flow> {
        ids.sort_unstable();
        ids.into_iter()
            .filter_map(|id| {
                let mut flow = self.flows.remove(&id)?;
                self.activity.remove(&(flow.last_ts, id));
                if let Some(closed_at) = flow.closed_at {
                    self.closing.remove(&(closed_at, id));
                }
                for tuple in flow.tuples().flat_map(|t| [*t, t.reversed()]) {
                    let key = tuple_key(&tuple);
                    if self.index.get(&key).is_some_and(|&(owner, _)| owner == id) {
                        self.index.remove(&key);
                    }
                }
                flow.path = flow
                    .hops
                    .iter()
                    .map(|&(segment, _)| *self.segments.get(segment))
                    .collect();
                for &(segment, _) in &flow.hops {
                    self.segments.release(segment);
                }
                Some(flow)
            })
            .collect()
    }
}

impl Flow {
    /// Every tuple of the flow in the index, one of each reversed pair.
    fn tuples(&self) -> impl Iterator<Item = &Tuple> {
        [&self.orig, &self.reply].into_iter().chain(&self.extra)
    }

    /// Whether `tuple` is one of the flow's, either way round.
    fn knows(&self, tuple: &Tuple) -> bool {
        let reversed = tuple.reversed();
        self.tuples().any(|t| t == tuple || *t == reversed)
    }

    /// Names the flow's tuples anew, keeping the old ones it is indexed by.
    fn rename(&mut self, orig: Tuple, reply: Tuple) {
        for old in [self.orig, self.reply] {
            let reversed = old.reversed();
            let kept = [orig, reply]
                .iter()
                .chain(&self.extra)
                .any(|t| *t == old || *t == reversed);
            if !kept {
                self.extra.push(old);
            }
        }
        (self.orig, self.reply) = (orig, reply);
    }

    /// NAT that conntrack shows for a direction in which no rewrite was observed (for example
    /// when only one side of the NAT was traced).
    pub fn unobserved_nat(&self) -> Vec<NatRecord> {
        if !self.reply_from_conntrack {
            return Vec::new();
        }
        let mut records = Vec::new();
        for direction in [Direction::Original, Direction::Reply] {
            if self.nat_reported[direction as usize] || self.packets[direction as usize] == 0 {
                continue;
            }
            let (before, after) = match direction {
                Direction::Original => (self.orig, self.reply.reversed()),
                Direction::Reply => (self.reply, self.orig.reversed()),
            };
            records.extend(
                nat_kinds(direction, &before, &after)
                    .into_iter()
                    .map(|kind| NatRecord {
                        flow_id: self.id,
                        direction,
                        kind,
                        before,
                        after,
                        at: None,
                        source: NatSource::Conntrack,
                    }),
            );
        }
        records
    }
}

/// Which translations turn `before` into `after` in `direction`. In the reply direction the
/// translation is the inverse of the flow's: a rewritten destination undoes a source NAT.
fn nat_kinds(direction: Direction, before: &Tuple, after: &Tuple) -> Vec<NatKind> {
    let src = (before.src, before.src_port) != (after.src, after.src_port);
    let dst = (before.dst, before.dst_port) != (after.dst, after.dst_port);
    let (snat, dnat) = match direction {
        Direction::Original => (src, dst),
        Direction::Reply => (dst, src),
    };
    let mut kinds = Vec::new();
    if snat {
        kinds.push(NatKind::Snat);
    }
    if dnat {
        kinds.push(NatKind::Dnat);
    }
    kinds
}

fn unknown_tuple() -> Tuple {
    use std::net::{IpAddr, Ipv4Addr};
    Tuple {
        proto: Proto(0),
        src: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        src_port: 0,
        dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        dst_port: 0,
    }
}
