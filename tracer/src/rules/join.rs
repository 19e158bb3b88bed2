//! Joining the kernel's trace reports to traced packets: [`RuleBook`] keeps the recent
//! reports by packet identity ([`PacketKey`]: IP id or flow label, TCP sequence or length) and
//! tuple, and names the rule behind a translation, a drop, or every step of a packet's walk
//! through the chains. [`annotate`] puts those names on the correlator's records.

use std::{
    collections::{HashMap, VecDeque},
    num::NonZeroUsize,
    sync::Arc,
};

use lru::LruCache;

use super::{
    Detail, listing,
    netlink::is_tracers,
    trace::{TraceEvent, TraceKind, Verdict},
};
use crate::{
    attribution::{PacketKey, Rule},
    correlate::{Direction, NatKind, NatSource, PacketTrace, Record, nat_kinds},
    decode::{HopEvent, Tuple},
};

/// How long trace events are kept for a packet to be joined to them.
const KEEP_NS: u64 = 5_000_000_000;
/// Most packets whose trace events are kept, walks followed, and flows' rules remembered.
pub(super) const MAX_PACKETS: usize = 65_536;

/// Which side of the packet a NAT rule rewrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Translation {
    /// SNAT, MASQUERADE: made at postrouting (or input).
    Source,
    /// DNAT, REDIRECT: made at prerouting (or output).
    Destination,
}

impl From<NatKind> for Translation {
    fn from(kind: NatKind) -> Translation {
        match kind {
            NatKind::Snat => Translation::Source,
            NatKind::Dnat => Translation::Destination,
        }
    }
}

/// The trace events of recent packets, and the rule texts read so far. Every map is bounded:
/// the oldest entries go first.
pub struct RuleBook {
    /// Events of each packet, in the order received, with their tuple.
    packets: HashMap<PacketKey, Vec<(Tuple, TraceEvent)>>,
    /// The packet each trace id (in a namespace) was last seen as. The kernel puts the
    /// packet's headers only in the first event of each walk through a base chain; the events
    /// after it carry the walk's id alone.
    walking: LruCache<(u64, u32), (PacketKey, Tuple)>,
    /// Rules of translations not seen between hops, by flow, until their NAT record.
    flows: LruCache<(u64, Translation), Arc<Rule>>,
    /// The rule that dropped a packet of a flow, until the flow's summary (its verdict).
    drops: LruCache<u64, Arc<Rule>>,
    /// (receive time, key) in arrival order, to forget old packets.
    order: VecDeque<(u64, PacketKey)>,
    pub(super) texts: listing::Texts,
}

impl Default for RuleBook {
    fn default() -> RuleBook {
        let max = NonZeroUsize::new(MAX_PACKETS).expect("a bound above zero");
        RuleBook {
            packets: HashMap::new(),
            walking: LruCache::new(max),
            flows: LruCache::new(max),
            drops: LruCache::new(max),
            order: VecDeque::new(),
            texts: listing::Texts::default(),
        }
    }
}

impl RuleBook {
    /// Adds a trace event received at `now_ns`; events of tracer's own table are skipped.
    pub fn add(&mut self, event: TraceEvent, now_ns: u64) {
        if is_tracers(event.family, &event.table) {
            return;
        }
        let walk = (event.netns, event.id);
        let (key, tuple) = match event.packet() {
            Some(packet) => {
                self.walking.put(walk, packet);
                packet
            }
            None => match self.walking.get(&walk) {
                Some(&packet) => packet,
                None => return,
            },
        };
        let events = self.packets.entry(key).or_default();
        if events.is_empty() {
            self.order.push_back((now_ns, key));
        }
        events.push((tuple, event));
        while let Some(&(at, key)) = self.order.front() {
            if now_ns.saturating_sub(at) < KEEP_NS && self.order.len() <= MAX_PACKETS {
                break;
            }
            self.order.pop_front();
            self.packets.remove(&key);
        }
    }

    /// The rule that made the `translation` of the packet `key`: the last rule that accepted
    /// it in a walk through a `nat` chain at a hook where that translation is made, among the
    /// walks that saw the side it rewrites (the source for SNAT, the destination for DNAT) as
    /// in `before` (any, when `None`). Only that side: a packet translated both ways between
    /// two hops (a NodePort's DNAT, then MASQUERADE) meets the SNAT rule already DNATed.
    pub fn nat_rule(
        &mut self,
        key: PacketKey,
        before: Option<&Tuple>,
        translation: Translation,
    ) -> Option<Arc<Rule>> {
        let events = self.packets.get(&key)?;
        let side = |t: &Tuple| match translation {
            Translation::Source => (t.proto, t.src, t.src_port),
            Translation::Destination => (t.proto, t.dst, t.dst_port),
        };
        let walks = walks(events, |tuple| {
            before.is_none_or(|b| side(tuple) == side(b))
        });
        let event = walks
            .iter()
            .filter_map(|(_, walk)| {
                let last = walk.last()?;
                let base = &walk.first()?.chain;
                let (kind, hook) =
                    self.texts
                        .base_chain(last.netns, last.family, &last.table, base)?;
                let hooks: &[&str] = match translation {
                    Translation::Source => &["postrouting", "input"],
                    Translation::Destination => &["prerouting", "output"],
                };
                (kind == "nat"
                    && hooks.contains(&hook)
                    && last.kind == TraceKind::Rule
                    && last.verdict == Verdict::Accept)
                    .then_some(*last)
            })
            .last()?
            .clone();
        Some(self.rule_of(&event))
    }

    /// Remembers the rule behind a flow's translation, for a NAT record that comes later
    /// (one known from conntrack, written when the flow ends).
    pub fn remember(&mut self, flow_id: u64, translation: Translation, rule: Arc<Rule>) {
        self.flows.put((flow_id, translation), rule);
    }

    /// The rule remembered for a flow's translation, forgotten as it is given.
    pub fn remembered(&mut self, flow_id: u64, translation: Translation) -> Option<Arc<Rule>> {
        self.flows.pop(&(flow_id, translation))
    }

    /// The rule that dropped a packet of `flow_id`, forgotten as it is given.
    pub fn remembered_drop(&mut self, flow_id: u64) -> Option<Arc<Rule>> {
        self.drops.pop(&flow_id)
    }

    /// The packet's walks through the chains: every rule that matched it (and the policies
    /// and returns), in order, with the namespace and the tuple the walk saw.
    pub fn walks_of(&mut self, key: PacketKey) -> Vec<(u64, Tuple, Vec<Arc<Rule>>)> {
        let Some(events) = self.packets.get(&key) else {
            return Vec::new();
        };
        // The kernel also reports reaching the end of a chain, as a rule without a handle
        // that continues: nothing to show.
        let shown = |e: &&TraceEvent| e.kind != TraceKind::Rule || e.handle.is_some();
        let walks: Vec<(Tuple, Vec<TraceEvent>)> = walks(events, |_| true)
            .into_iter()
            .map(|(tuple, walk)| (tuple, walk.into_iter().filter(shown).cloned().collect()))
            .filter(|(_, walk): &(Tuple, Vec<TraceEvent>)| !walk.is_empty())
            .collect();
        walks
            .into_iter()
            .map(|(tuple, walk)| {
                let netns = walk.first().map_or(0, |e| e.netns);
                (netns, tuple, walk.iter().map(|e| self.rule_of(e)).collect())
            })
            .collect()
    }

    /// The rule or policy that dropped the packet `key`, seen with one of `tuples`.
    pub fn drop_rule(&mut self, key: PacketKey, tuples: &[Tuple]) -> Option<Arc<Rule>> {
        let events = self.packets.get(&key)?;
        let event = events
            .iter()
            .filter(|(tuple, _)| tuples.contains(tuple))
            .map(|(_, event)| event)
            .find(|event| event.verdict == Verdict::Drop)?
            .clone();
        Some(self.rule_of(&event))
    }

    fn rule_of(&mut self, event: &TraceEvent) -> Arc<Rule> {
        let text = match (event.kind, event.handle) {
            (TraceKind::Policy, _) => Some(format!("policy {}", event.verdict.name())),
            (_, Some(handle)) => self.texts.rule(
                event.netns,
                event.family,
                &event.table,
                &event.chain,
                handle,
            ),
            (_, None) => None,
        };
        Arc::new(Rule {
            family: event.family,
            table: event.table.clone(),
            chain: event.chain.clone(),
            handle: event.handle.filter(|_| event.kind != TraceKind::Policy),
            text,
            verdict: event.verdict.name(),
        })
    }
}

/// The packet's walks through base chains, among the events seen with a tuple `seen`
/// accepts: each from the event that entered a base chain (the one with the packet's headers)
/// to the one that ended the walk (accept, drop, a policy), with the tuple it saw.
fn walks(
    events: &[(Tuple, TraceEvent)],
    seen: impl Fn(&Tuple) -> bool,
) -> Vec<(Tuple, Vec<&TraceEvent>)> {
    let mut walks = Vec::new();
    let mut walk: Vec<&TraceEvent> = Vec::new();
    let mut tuple = None;
    for (t, event) in events {
        if !seen(t) {
            continue;
        }
        let other_walk = walk.first().is_some_and(|first| first.id != event.id);
        if (event.enters() || other_walk) && !walk.is_empty() {
            walks.push((tuple.unwrap_or(*t), std::mem::take(&mut walk)));
        }
        if walk.is_empty() {
            tuple = Some(*t);
        }
        walk.push(event);
        if event.ends_walk() {
            walks.push((tuple.unwrap_or(*t), std::mem::take(&mut walk)));
        }
    }
    if let (Some(t), false) = (tuple, walk.is_empty()) {
        walks.push((t, walk));
    }
    walks
}

/// Names the rules behind the record's translations and drop (a translation in the original
/// direction: the reply's is conntrack's, not a rule's), and with [`Detail::Walk`] puts each
/// of a packet's walks through the chains after the hop it followed.
pub fn annotate(book: &mut RuleBook, detail: Detail, record: &mut Record) {
    match record {
        Record::Nat(nat) if nat.direction == Direction::Original => {
            let translation = Translation::from(nat.kind);
            nat.rule = match (nat.source, nat.packet) {
                (NatSource::Observed, Some(key)) => {
                    book.nat_rule(key, Some(&nat.before), translation)
                }
                _ => book.remembered(nat.flow_id, translation),
            };
        }
        Record::Packet(packet) => {
            name_packet_rules(book, packet);
            if detail == Detail::Walk {
                place_walks(book, packet);
            }
        }
        _ => {}
    }
}

/// The NAT rules seen between the packet's hops, those of translations made before its first
/// hop (remembered for the flow's NAT record), and the rule that dropped it.
fn name_packet_rules(book: &mut RuleBook, packet: &mut PacketTrace) {
    let mut seen: Vec<Tuple> = Vec::new();
    let mut observed = Vec::new();
    for (at, hop) in packet.hops.iter().enumerate() {
        let event = &hop.event;
        if !event.has_l4 {
            continue;
        }
        if let Some(&before) = seen.last()
            && before != event.tuple
            && packet.direction == Direction::Original
        {
            for kind in nat_kinds(Direction::Original, &before, &event.tuple) {
                let translation = Translation::from(kind);
                if let Some(rule) = book.nat_rule(PacketKey::of(event), Some(&before), translation)
                {
                    packet.nat_rules.push((at, rule));
                    observed.push(translation);
                }
            }
        }
        if !seen.contains(&event.tuple) {
            seen.push(event.tuple);
        }
    }
    // A translation made before the first hop (DNAT of a locally made packet in the output
    // hook) is known from conntrack only: its record comes when the flow ends.
    if packet.direction == Direction::Original
        && let Some(first) = packet.hops.iter().find(|h| h.event.has_l4)
    {
        let key = PacketKey::of(&first.event);
        for translation in [Translation::Source, Translation::Destination] {
            if !observed.contains(&translation)
                && let Some(rule) = book.nat_rule(key, None, translation)
            {
                book.remember(packet.flow_id, translation, rule);
            }
        }
    }
    if let Some(hop) = packet.hops.iter().rev().find(|h| h.event.drop.is_some()) {
        // A tunnel's datagram dropped on the underlay: the kernel reported the outer packet.
        packet.drop_rule = match PacketKey::outer_of(&hop.event) {
            Some((key, outer)) => book.drop_rule(key, &[outer]),
            None => book.drop_rule(PacketKey::of(&hop.event), &seen),
        };
        if let Some(rule) = &packet.drop_rule {
            book.drops
                .get_or_insert(packet.flow_id, || Arc::clone(rule));
        }
    }
}

/// Puts each of the packet's walks through the chains after the hop it followed: the last hop
/// in the walk's namespace that saw the packet as the walk did (the one that dropped it
/// aside, which comes after the walk), or else the namespace's first hop.
fn place_walks(book: &mut RuleBook, packet: &mut PacketTrace) {
    let mut keys = Vec::new();
    for hop in &packet.hops {
        let key = PacketKey::of(&hop.event);
        if hop.event.has_l4 && !keys.contains(&key) {
            keys.push(key);
        }
    }
    for key in keys {
        for (netns, tuple, rules) in book.walks_of(key) {
            let in_netns = |e: &HopEvent| e.netns_inode == netns;
            let at = packet
                .hops
                .iter()
                .rposition(|h| {
                    in_netns(&h.event) && h.event.tuple == tuple && h.event.drop.is_none()
                })
                .or_else(|| packet.hops.iter().position(|h| in_netns(&h.event)));
            if let Some(at) = at {
                packet.walks.push((at, rules));
            }
        }
    }
    packet.walks.sort_by_key(|(at, _)| *at);
}

#[cfg(test)]
mod tests;
