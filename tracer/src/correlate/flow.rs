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
    net::IpAddr,
};

use rustc_hash::{FxHashMap as HashMap, FxHasher};
use tracer_common::wire::tcp;

pub use super::intern::Segment;
use super::{
    Direction, FlowSummary, Hop, HopLabel, HopPair, Limits, NatRecord, Record,
    intern::{Paths, Places},
    stats::{Latency, SampleStore, Summary},
    verdict::Evidence,
};
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
    /// The original-direction tuple, as the initiator sent it (before any NAT), and the tuple
    /// the replies carry before they are translated back (after NAT, reversed):
    /// [`Flow::orig`] and [`Flow::reply`].
    tuples: FlowTuples,
    pub packets: [u64; 2],
    pub first_ts: u64,
    pub last_ts: u64,
    /// The segments its packets crossed, in first-seen order: an id in the table's [`Paths`],
    /// which the flows of one route share.
    path: u32,
    /// The latency of each segment of `path`, in its order.
    latencies: Box<[Latency]>,
    /// Translations reported, a bit per direction and kind (see `nat::reported_bit`).
    pub(super) nat_reported: u8,
    /// What is true of the flow, a bit each: [`FIN_SENT`] per direction, [`CLOSED`],
    /// [`REPLY_FROM_CONNTRACK`], [`SYN_SEEN`].
    state: u8,
    /// When the flow closed (last activity then), if [`CLOSED`].
    closed_at: u64,
    /// Initial sequence number of the SYN that opened the flow, if [`SYN_SEEN`].
    syn_seq: u32,
    /// Tuples in the index besides `orig` and `reply` (and their reverses): tuples seen on one
    /// side of a NAT that conntrack did not show, or what `orig` and `reply` were before
    /// conntrack named them. Most flows have none.
    #[expect(
        clippy::box_collection,
        reason = "one pointer in every flow, where a Vec would be three for the few that have any"
    )]
    extra: Option<Box<Vec<Tuple>>>,
    /// What its packets showed, for its verdict; its last place as an id in the table's
    /// [`Places`].
    pub evidence: Evidence<u32>,
}

/// A FIN was sent in the direction (by index).
const FIN_SENT: [u8; 2] = [1, 1 << 1];
/// Both sides sent FIN, or either reset the connection.
const CLOSED: u8 = 1 << 2;
/// `reply` comes from conntrack rather than from observed rewrites.
const REPLY_FROM_CONNTRACK: u8 = 1 << 3;
/// The SYN that opened the flow was seen: `syn_seq` holds its sequence number.
const SYN_SEEN: u8 = 1 << 4;

/// A flow's original and reply tuples: 32 bytes in the flow where both are IPv4, as most
/// flows' are, and behind a pointer otherwise (two `Tuple`s, which hold any address, are 80).
#[derive(Debug)]
enum FlowTuples {
    V4([TupleV4; 2]),
    Other(Box<[Tuple; 2]>),
}

impl FlowTuples {
    fn new(orig: Tuple, reply: Tuple) -> FlowTuples {
        match (TupleV4::of(&orig), TupleV4::of(&reply)) {
            (Some(orig), Some(reply)) => FlowTuples::V4([orig, reply]),
            _ => FlowTuples::Other(Box::new([orig, reply])),
        }
    }

    fn get(&self) -> [Tuple; 2] {
        match self {
            FlowTuples::V4([orig, reply]) => [orig.tuple(), reply.tuple()],
            FlowTuples::Other(tuples) => **tuples,
        }
    }
}

/// An IPv4 tuple in 14 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TupleV4 {
    src: [u8; 4],
    dst: [u8; 4],
    src_port: u16,
    dst_port: u16,
    proto: Proto,
}

impl TupleV4 {
    fn of(tuple: &Tuple) -> Option<TupleV4> {
        match (tuple.src, tuple.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => Some(TupleV4 {
                src: src.octets(),
                dst: dst.octets(),
                src_port: tuple.src_port,
                dst_port: tuple.dst_port,
                proto: tuple.proto,
            }),
            _ => None,
        }
    }

    fn reversed(&self) -> TupleV4 {
        TupleV4 {
            src: self.dst,
            dst: self.src,
            src_port: self.dst_port,
            dst_port: self.src_port,
            proto: self.proto,
        }
    }

    fn tuple(&self) -> Tuple {
        Tuple {
            proto: self.proto,
            src: IpAddr::from(self.src),
            src_port: self.src_port,
            dst: IpAddr::from(self.dst),
            dst_port: self.dst_port,
        }
    }
}

/// A flow that ended, with the latency of each segment of its path, in first-seen order.
#[derive(Debug)]
pub struct EndedFlow {
    pub flow: Flow,
    pub path: Vec<(Segment, Summary)>,
    /// What its packets showed, with the place it was last seen.
    pub evidence: Evidence,
}

impl EndedFlow {
    /// What the flow's end writes: the NAT only conntrack showed, then its summary.
    pub fn into_records(self) -> impl Iterator<Item = Record> {
        let EndedFlow {
            flow,
            path,
            evidence,
        } = self;
        let hops = path
            .into_iter()
            .map(|((direction, from, to), latency)| HopPair {
                direction,
                from,
                to,
                latency,
            })
            .collect();
        let summary = FlowSummary {
            flow_id: flow.id,
            orig: flow.orig(),
            reply: flow.reply(),
            packets: flow.packets,
            first_ts: flow.first_ts,
            last_ts: flow.last_ts,
            hops,
            evidence,
            // Judged where it is written, with the rules and names known there.
            verdict: None,
        };
        let nat = flow.unobserved_nat();
        nat.into_iter()
            .map(Record::Nat)
            .chain(std::iter::once(Record::Flow(summary)))
    }
}

/// The index key of a tuple and of its reverse: a 64-bit hash of the smaller of the two,
/// checked against the flow it leads to; and whether `tuple` is that smaller one.
fn tuple_key(tuple: &Tuple) -> (u64, bool) {
    let reversed = tuple.reversed();
    let canonical = *tuple <= reversed;
    let mut hasher = FxHasher::default();
    if canonical { tuple } else { &reversed }.hash(&mut hasher);
    (hasher.finish(), canonical)
}

/// The direction of `tuple`, given the direction its index entry holds for the smaller of it
/// and its reverse.
fn direction_of(entry: Direction, canonical: bool) -> Direction {
    if canonical { entry } else { entry.other() }
}

/// A flow's place in the table's slots; reused once the flow ends.
type Slot = u32;

/// Flows and the index from every known tuple to its flow and direction.
#[derive(Debug, Default)]
pub struct FlowTable {
    /// Every flow in a slot of its own; a free slot is reused first, so that the table grows
    /// only with the number of flows alive at once, and no rehashing copies a flow.
    slots: Vec<Option<Flow>>,
    free: Vec<Slot>,
    live: usize,
    /// [`tuple_key`] of every tuple of every flow (one entry serves a tuple and its reverse)
    /// to the flow and the direction of the smaller of the two.
    index: HashMap<u64, (Slot, Direction)>,
    paths: Paths,
    /// The places flows were last seen, by id.
    places: Places,
    samples: SampleStore,
    /// (last packet time, slot) of every flow, so that expiry looks only at flows that are due.
    activity: BTreeSet<(u64, Slot)>,
    /// (close time, slot) of closed TCP flows.
    closing: BTreeSet<(u64, Slot)>,
    /// Flows still to end at the end of the trace, newest first ([`FlowTable::drain_some`]).
    draining: Vec<(u64, Slot)>,
    next_id: u64,
}

/// The flow a completed packet belongs to, and the NAT it revealed.
pub struct Assignment {
    pub flow_id: u64,
    pub direction: Direction,
    pub nat: Vec<NatRecord>,
    /// A closed flow this packet ended, by opening a new connection on its tuple.
    pub ended: Option<EndedFlow>,
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
        if let Some(assigned) = self.assign_icmp_error(hops) {
            return assigned;
        }
        let sighting = Sighting::of(hops);
        let (found, ended) = self.lookup(&sighting);
        let slot = match found {
            Some(slot) => slot,
            None => self.create(
                sighting.conntrack.map_or(sighting.first, |ct| ct.orig),
                hops,
            ),
        };
        if let Some(ct) = sighting.conntrack {
            self.learn_conntrack(slot, ct);
        }
        let direction = self
            .find(&sighting.first)
            .map_or(Direction::Original, |(_, dir)| dir);
        let nat = self.learn_rewrites(slot, direction, &sighting.with_l4);
        let flow = self.flow_mut(slot);
        let proto = flow.proto();
        let last = flow.evidence.observe(direction, hops, proto);
        self.note_last_seen(slot, last);
        self.count_packet(slot, direction, &sighting);
        self.record_latencies(slot, direction, hops);
        self.track_close(slot, direction, &sighting);
        Assignment {
            flow_id: self.flow(slot).id,
            direction,
            nat,
            ended,
        }
    }

    /// An ICMP error belongs to the flow of the packet it quotes, travelling back towards that
    /// packet's sender; its own tuples say nothing about the flow and are not learned. `None`
    /// for any other packet, and for an error about a packet of no known flow.
    fn assign_icmp_error(&mut self, hops: &[Hop]) -> Option<Assignment> {
        let (slot, quoted) = hops
            .iter()
            .filter_map(|hop| hop.event.icmp.as_deref())
            .find_map(|error| self.find(&error.quoted))?;
        let sighting = Sighting::of(hops);
        let direction = quoted.other();
        let flow = self.flow_mut(slot);
        let proto = flow.proto();
        let last = flow.evidence.observe(direction, hops, proto);
        self.note_last_seen(slot, last);
        self.count_packet(slot, direction, &sighting);
        self.record_latencies(slot, direction, hops);
        Some(Assignment {
            flow_id: self.flow(slot).id,
            direction,
            nat: Vec::new(),
            ended: None,
        })
    }

    fn flow(&self, slot: Slot) -> &Flow {
        self.slots[slot as usize]
            .as_ref()
            .expect("a slot in use holds a flow")
    }

    fn flow_mut(&mut self, slot: Slot) -> &mut Flow {
        in_use(&mut self.slots, slot)
    }

    /// The flow the packet belongs to, by its conntrack entry or any tuple it was seen with.
    /// A SYN on the tuple of a connection that closed is a new connection (the port was used
    /// again within the closed flow's grace time): that flow ends here, and is returned. Unless
    /// it is the flow's own SYN sent again: a SYN answered from TIME_WAIT with an ACK, reset by
    /// the client and retried is one connection attempt, and stays one flow.
    fn lookup(&mut self, sighting: &Sighting) -> (Option<Slot>, Option<EndedFlow>) {
        let found = sighting
            .conntrack
            .and_then(|ct| self.find(&ct.orig))
            .or_else(|| {
                sighting
                    .with_l4
                    .iter()
                    .find_map(|h| self.find(&h.event.tuple))
            })
            .map(|(slot, _)| slot);
        match (found, sighting.syn_seq) {
            (Some(slot), Some(seq)) if self.flow(slot).closed() => {
                if self.flow(slot).syn_seq() == Some(seq) {
                    self.reopen(slot);
                    (Some(slot), None)
                } else {
                    (None, Some(self.remove(slot)))
                }
            }
            (found, _) => (found, None),
        }
    }

    /// Registers every tuple the packet was seen with, and reports the NAT between hops where
    /// its tuple changed.
    fn learn_rewrites(
        &mut self,
        slot: Slot,
        direction: Direction,
        with_l4: &[&Hop],
    ) -> Vec<NatRecord> {
        let mut nat = Vec::new();
        for pair in with_l4.windows(2) {
            let (before, after) = (pair[0], pair[1]);
            if before.event.tuple != after.event.tuple {
                self.learn(slot, after.event.tuple, direction);
                nat.extend(self.flow_mut(slot).observed_nat(direction, before, after));
            }
        }
        for hop in with_l4 {
            self.learn(slot, hop.event.tuple, direction);
        }
        nat
    }

    /// Keeps where the flow's last packet of the original direction was last seen, as the id
    /// of its place: most packets of a flow end where the one before ended.
    fn note_last_seen(&mut self, slot: Slot, last: Option<&Hop>) {
        let Some(last) = last else {
            return;
        };
        let place = HopLabel::of(last);
        let flow = in_use(&mut self.slots, slot);
        match flow.evidence.last_seen {
            Some(id) if *self.places.get(id) == place => {}
            old => {
                flow.evidence.last_seen = Some(self.places.intern(place));
                if let Some(old) = old {
                    self.places.release(old);
                }
            }
        }
    }

    /// Counts the packet and moves the flow's last activity to its last hop.
    fn count_packet(&mut self, slot: Slot, direction: Direction, sighting: &Sighting) {
        let flow = in_use(&mut self.slots, slot);
        flow.packets[direction as usize] += 1;
        if let (None, Some(seq)) = (flow.syn_seq(), sighting.syn_seq) {
            flow.syn_seq = seq;
            flow.state |= SYN_SEEN;
        }
        let last = sighting.hops.last().map_or(0, |h| h.event.ts_ns);
        if last > flow.last_ts {
            self.activity.remove(&(flow.last_ts, slot));
            flow.last_ts = last;
            self.activity.insert((last, slot));
        }
    }

    /// Adds the time between each two consecutive hops to the flow's segment between them.
    fn record_latencies(&mut self, slot: Slot, direction: Direction, hops: &[Hop]) {
        let flow = in_use(&mut self.slots, slot);
        for pair in hops.windows(2) {
            let key = (direction, HopLabel::of(&pair[0]), HopLabel::of(&pair[1]));
            let paths = &mut self.paths;
            let known = paths.segments(flow.path);
            let at = match known.iter().position(|&id| *paths.segment(id) == key) {
                Some(at) => at,
                None => {
                    // Most flows see a few segments, all in their first packets: room for
                    // exactly as many as there are.
                    let longer = paths.extend(flow.path, key);
                    paths.release(flow.path);
                    flow.path = longer;
                    push_exact(&mut flow.latencies, Latency::default());
                    flow.latencies.len() - 1
                }
            };
            flow.latencies[at].record(pair[1].since_prev_ns, &mut self.samples);
        }
    }

    /// Marks a TCP flow closed once both sides sent FIN, or either reset it.
    fn track_close(&mut self, slot: Slot, direction: Direction, sighting: &Sighting) {
        if sighting.first.proto != Proto::TCP {
            return;
        }
        let flow = in_use(&mut self.slots, slot);
        let flags = sighting
            .hops
            .iter()
            .fold(0, |acc, h| acc | h.event.tcp_flags);
        if flags & tcp::FIN != 0 {
            flow.state |= FIN_SENT[direction as usize];
        }
        let both_fin = FIN_SENT[0] | FIN_SENT[1];
        if (flags & tcp::RST != 0 || flow.state & both_fin == both_fin) && !flow.closed() {
            flow.state |= CLOSED;
            flow.closed_at = flow.last_ts;
            self.closing.insert((flow.last_ts, slot));
        }
    }

    /// Takes a closed flow back to open: its connection goes on.
    fn reopen(&mut self, slot: Slot) {
        let flow = in_use(&mut self.slots, slot);
        if flow.closed() {
            self.closing.remove(&(flow.closed_at, slot));
        }
        flow.state &= !(CLOSED | FIN_SENT[0] | FIN_SENT[1]);
    }

    fn create(&mut self, orig: Tuple, hops: &[Hop]) -> Slot {
        self.next_id += 1;
        let ts = hops.first().map_or(0, |h| h.event.ts_ns);
        let flow = Flow {
            id: self.next_id,
            tuples: FlowTuples::new(orig, orig.reversed()),
            packets: [0, 0],
            first_ts: ts,
            last_ts: ts,
            path: Paths::EMPTY,
            latencies: Box::default(),
            nat_reported: 0,
            state: 0,
            closed_at: 0,
            syn_seq: 0,
            extra: None,
            evidence: Evidence::default(),
        };
        let slot = super::reuse_or_push(&mut self.slots, &mut self.free, Some(flow), "flows");
        self.live += 1;
        self.activity.insert((ts, slot));
        self.learn(slot, orig, Direction::Original);
        slot
    }

    /// The flow and direction of `tuple`.
    fn find(&self, tuple: &Tuple) -> Option<(Slot, Direction)> {
        let (key, canonical) = tuple_key(tuple);
        let &(slot, direction) = self.index.get(&key)?;
        self.knows(slot, tuple)
            .then_some((slot, direction_of(direction, canonical)))
    }

    /// Whether the flow in `slot` (if any) has `tuple`.
    fn knows(&self, slot: Slot, tuple: &Tuple) -> bool {
        self.slots[slot as usize]
            .as_ref()
            .is_some_and(|flow| flow.knows(tuple))
    }

    /// Registers a tuple (and its reverse, for the other direction) as belonging to the flow
    /// in `slot`, unless another flow has it.
    fn learn(&mut self, slot: Slot, tuple: Tuple, direction: Direction) {
        let (key, canonical) = tuple_key(&tuple);
        // An entry whose flow does not know the tuple is another tuple's with the same hash, or
        // one left over: this tuple takes it.
        let taken = self
            .index
            .get(&key)
            .is_some_and(|&(owner, _)| owner == slot || self.knows(owner, &tuple));
        let added = !taken;
        if added {
            self.index
                .insert(key, (slot, direction_of(direction, canonical)));
        }
        let flow = self.flow_mut(slot);
        if added && !flow.knows(&tuple) {
            flow.extra.get_or_insert_default().push(tuple);
        }
    }

    fn learn_conntrack(&mut self, slot: Slot, ct: &Conntrack) {
        let flow = self.flow_mut(slot);
        flow.rename(ct.orig, ct.reply);
        flow.state |= REPLY_FROM_CONNTRACK;
        self.learn(slot, ct.orig, Direction::Original);
        self.learn(slot, ct.reply, Direction::Reply);
    }

    /// Removes and returns flows that ended: idle too long, or closed and past the grace time.
    pub fn expire(&mut self, now_ns: u64, limits: &Limits) -> Vec<EndedFlow> {
        let due = |set: &BTreeSet<(u64, Slot)>, after: u64| -> Vec<Slot> {
            set.iter()
                .take_while(|(ts, _)| now_ns.saturating_sub(*ts) >= after)
                .map(|&(_, slot)| slot)
                .collect()
        };
        let mut ended = due(&self.activity, limits.flow_idle_ns);
        ended.extend(due(&self.closing, limits.closed_flow_grace_ns));
        self.remove_all(ended)
    }

    /// Removes the least recently active flows until at most `max` remain.
    pub fn shrink_to(&mut self, max: usize) -> Vec<EndedFlow> {
        if self.live <= max {
            return Vec::new();
        }
        // Evict an eighth more than needed, so that a full table does not evict on every packet.
        let excess = self.live - max + max / 8;
        let oldest = self
            .activity
            .iter()
            .take(excess)
            .map(|&(_, slot)| slot)
            .collect();
        self.remove_all(oldest)
    }

    /// Removes and returns the `max` oldest flows (all when fewer), by id: the order they
    /// began in. Meant for the end of a trace, when no flow is added any more.
    pub fn drain_some(&mut self, max: usize) -> Vec<EndedFlow> {
        if self.draining.is_empty() {
            self.draining = (0..self.slots.len())
                .filter_map(|slot| {
                    let flow = self.slots[slot].as_ref()?;
                    Some((flow.id, Slot::try_from(slot).expect("slots fit in u32")))
                })
                .collect();
            // Newest first, so that the oldest are taken from the end.
            self.draining.sort_unstable_by(|a, b| b.cmp(a));
        }
        let keep = self.draining.len().saturating_sub(max);
        let slots = self
            .draining
            .split_off(keep)
            .into_iter()
            .map(|(_, slot)| slot)
            .collect();
        self.remove_all(slots)
    }

    pub fn len(&self) -> usize {
        self.live
    }

    pub fn segments(&self) -> usize {
        self.paths.segment_count()
    }

    pub fn paths(&self) -> usize {
        self.paths.path_count()
    }

    pub fn places(&self) -> usize {
        self.places.len()
    }

    /// Segment series whose samples are kept beyond min and max, for memory tests.
    pub fn sampled(&self) -> usize {
        self.samples.in_use()
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Removes the flows in `slots` (each once, a slot already free is skipped), oldest first.
    fn remove_all(&mut self, mut slots: Vec<Slot>) -> Vec<EndedFlow> {
        slots.sort_unstable();
        slots.dedup();
        let mut ended = Vec::with_capacity(slots.len());
        for slot in slots {
            if self.slots[slot as usize].is_some() {
                ended.push(self.remove(slot));
            }
        }
        ended.sort_unstable_by_key(|ended| ended.flow.id);
        ended
    }

    fn remove(&mut self, slot: Slot) -> EndedFlow {
        let mut flow = self.slots[slot as usize]
            .take()
            .expect("a slot in use holds a flow");
        self.free.push(slot);
        self.live -= 1;
        self.activity.remove(&(flow.last_ts, slot));
        if flow.closed() {
            self.closing.remove(&(flow.closed_at, slot));
        }
        for tuple in flow.tuples.get().iter().chain(flow.extra()) {
            let (key, _) = tuple_key(tuple);
            if self
                .index
                .get(&key)
                .is_some_and(|&(owner, _)| owner == slot)
            {
                self.index.remove(&key);
            }
        }
        let path = self
            .paths
            .segments(flow.path)
            .iter()
            .zip(std::mem::take(&mut flow.latencies))
            .filter_map(|(&segment, latency)| {
                let summary = latency.summary(&self.samples);
                latency.release(&mut self.samples);
                Some((*self.paths.segment(segment), summary?))
            })
            .collect();
        self.paths
            .release(std::mem::replace(&mut flow.path, Paths::EMPTY));
        let last_seen = flow.evidence.last_seen.take().map(|id| {
            let place = *self.places.get(id);
            self.places.release(id);
            place
        });
        let evidence = std::mem::take(&mut flow.evidence).seen_last_at(last_seen);
        EndedFlow {
            flow,
            path,
            evidence,
        }
    }
}

impl Flow {
    /// The original-direction tuple, as the initiator sent it (before any NAT).
    pub fn orig(&self) -> Tuple {
        self.tuples.get()[0]
    }

    /// The tuple the replies carry before they are translated back (after NAT, reversed).
    pub fn reply(&self) -> Tuple {
        self.tuples.get()[1]
    }

    /// Whether `reply` comes from conntrack rather than from observed rewrites.
    pub fn reply_from_conntrack(&self) -> bool {
        self.state & REPLY_FROM_CONNTRACK != 0
    }

    /// Both sides sent FIN, or either reset the connection.
    fn closed(&self) -> bool {
        self.state & CLOSED != 0
    }

    /// The initial sequence number of the SYN that opened the flow, if it was seen.
    fn syn_seq(&self) -> Option<u32> {
        (self.state & SYN_SEEN != 0).then_some(self.syn_seq)
    }

    /// The tuples in the index besides `orig` and `reply`.
    fn extra(&self) -> &[Tuple] {
        self.extra.as_deref().map_or(&[], Vec::as_slice)
    }

    /// The protocol of the flow's tuples.
    pub fn proto(&self) -> Proto {
        match &self.tuples {
            FlowTuples::V4([orig, _]) => orig.proto,
            FlowTuples::Other(tuples) => tuples[0].proto,
        }
    }

    /// Whether `tuple` is one of the flow's, either way round. Every lookup of a packet's flow
    /// asks this: IPv4 tuples are compared as they are kept.
    fn knows(&self, tuple: &Tuple) -> bool {
        let ours = match (&self.tuples, TupleV4::of(tuple)) {
            (FlowTuples::V4(ours), Some(theirs)) => {
                let reversed = theirs.reversed();
                ours.iter().any(|t| *t == theirs || *t == reversed)
            }
            (FlowTuples::V4(_), None) => false,
            (FlowTuples::Other(ours), _) => {
                let reversed = tuple.reversed();
                ours.iter().any(|t| t == tuple || *t == reversed)
            }
        };
        ours || {
            let reversed = tuple.reversed();
            self.extra().iter().any(|t| t == tuple || *t == reversed)
        }
    }

    /// Names the flow's tuples anew, keeping the old ones it is indexed by.
    pub(super) fn rename(&mut self, orig: Tuple, reply: Tuple) {
        for old in self.tuples.get() {
            let reversed = old.reversed();
            let kept = [orig, reply]
                .iter()
                .chain(self.extra())
                .any(|t| *t == old || *t == reversed);
            if !kept {
                self.extra.get_or_insert_default().push(old);
            }
        }
        self.tuples = FlowTuples::new(orig, reply);
    }
}

/// The flow in a slot that is in use. A free function, so that it borrows only the slots and
/// the table's other parts stay usable beside it.
fn in_use(slots: &mut [Option<Flow>], slot: Slot) -> &mut Flow {
    slots[slot as usize]
        .as_mut()
        .expect("a slot in use holds a flow")
}

/// Appends `item`, with room for no more: a flow's lists grow rarely and stay short.
fn push_exact<T: Copy>(list: &mut Box<[T]>, item: T) {
    let mut grown = Vec::with_capacity(list.len() + 1);
    grown.extend_from_slice(list);
    grown.push(item);
    *list = grown.into_boxed_slice();
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
