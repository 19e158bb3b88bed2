//! Which packets of different nodes are one packet.
//!
//! A packet leaves a node at its last hop (a transmit: `net_dev_queue`, `net_dev_start_xmit`
//! or TC egress, not a drop) and reaches the next node at its first hop (a receive:
//! `netif_receive_skb`, `netif_rx` or TC ingress). The two are one packet when their wire
//! identity is the same: what a hop shows of the packet and nothing on the wire changes (the
//! inner tuple, IP id and length, TCP flags, sequence and acknowledgement numbers, and the
//! kind and VNI or key of an encapsulation). Kernel addresses (`sk_buff`, conntrack) mean
//! nothing on another machine and are never compared.
//!
//! An identity seen once leaving node X and once reaching node Y joins at once. An identity
//! that repeats (IPv4 datagrams with id 0, retransmissions that kept their id) is joined by
//! time once the clocks are known: in time order (packets do not overtake each other on a
//! wire), each departure with the first arrival after it that is no later than twice the
//! longest crossing between the two nodes seen among the packets joined at once; a departure
//! without one was lost on the way. A departure that would join arrivals on two nodes, or an arrival
//! two departures, joins none (a flooded packet is shown per node). Joined packets form chains
//! (X -> Y -> Z), one merged packet each.

use std::collections::HashMap;

use tracer_common::hook::Hook;

use super::offset::{Clock, Delays};
use crate::{
    correlate::{Hop, PacketTrace},
    decode::{EncapKind, HopEvent, Proto, Tuple},
};

/// How long a packet may take from one node to the next when no packet joined by a unique
/// identity says how long they take.
const WIRE_WINDOW_NS: i128 = 1_000_000_000;

/// What a packet shows at a hop that no wire between two nodes changes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct WireKey {
    tuple: Tuple,
    ip_id: u16,
    ip_len: u16,
    /// TCP flags, sequence and acknowledgement numbers.
    tcp: Option<(u8, u32, u32)>,
    /// The encapsulation's kind and VNI or key.
    tunnel: Option<(EncapKind, Option<u32>)>,
}

impl WireKey {
    fn of(e: &HopEvent) -> WireKey {
        WireKey {
            tuple: e.tuple,
            ip_id: e.ip_id,
            ip_len: e.ip_len,
            tcp: (e.has_l4 && e.tuple.proto == Proto::TCP).then_some((
                e.tcp_flags,
                e.tcp_seq,
                e.tcp_ack,
            )),
            tunnel: e.encap.as_deref().map(|encap| (encap.kind, encap.id)),
        }
    }
}

/// The hop at which a packet left its node, if it did.
pub(super) fn departure(packet: &PacketTrace) -> Option<&Hop> {
    packet
        .hops
        .last()
        .filter(|hop| hop.event.hook.is_egress() && hop.event.drop.is_none())
}

/// The hop at which a packet reached its node from outside, if it did.
pub(super) fn arrival(packet: &PacketTrace) -> Option<&Hop> {
    packet.hops.first().filter(|hop| {
        matches!(
            hop.event.hook,
            Hook::NetifReceiveSkb | Hook::NetifRx | Hook::TcIngress
        )
    })
}

/// A packet of one node: (node, index in the node's packets).
type Part = (usize, usize);

/// The joins found between the nodes' packets.
pub(super) struct Links {
    /// Per packet (indexed by [`Links::id`]), the packet it became on the next node.
    next: Vec<Option<usize>>,
    /// Per packet, the packet it was on the previous node.
    prev: Vec<Option<usize>>,
    /// Whether the join to the next node was by a unique identity.
    unique: Vec<bool>,
    /// First id of each node's packets.
    base: Vec<usize>,
    /// Departures from one node and arrivals on another with one identity that repeats.
    repeated: Vec<(Vec<usize>, Vec<usize>)>,
}

impl Links {
    /// Joins every identity seen once leaving one node and once reaching another.
    pub fn find(nodes: &[&[PacketTrace]]) -> Links {
        let mut base = Vec::with_capacity(nodes.len());
        let mut total = 0;
        for packets in nodes {
            base.push(total);
            total += packets.len();
        }
        let mut links = Links {
            next: vec![None; total],
            prev: vec![None; total],
            unique: vec![false; total],
            base,
            repeated: Vec::new(),
        };
        let mut groups: HashMap<WireKey, (Vec<usize>, Vec<usize>)> = HashMap::new();
        for (node, packets) in nodes.iter().enumerate() {
            for (index, packet) in packets.iter().enumerate() {
                let id = links.id((node, index));
                if let Some(hop) = departure(packet) {
                    groups
                        .entry(WireKey::of(&hop.event))
                        .or_default()
                        .0
                        .push(id);
                }
                if let Some(hop) = arrival(packet) {
                    groups
                        .entry(WireKey::of(&hop.event))
                        .or_default()
                        .1
                        .push(id);
                }
            }
        }
        let mut candidates = Vec::new();
        for (departures, arrivals) in groups.into_values() {
            for from in links.by_node(&departures) {
                for to in links.by_node(&arrivals) {
                    if links.node(from[0]) == links.node(to[0]) {
                        continue;
                    }
                    match (from.as_slice(), to.as_slice()) {
                        ([one], [other]) => candidates.push((*one, *other)),
                        _ => links.repeated.push((from.clone(), to.clone())),
                    }
                }
            }
        }
        // Of several arrivals a departure could join (or departures an arrival could), the
        // one with the same TTL; failing that, none.
        let ttl = |id: usize, hop: fn(&PacketTrace) -> Option<&Hop>| {
            let (node, index) = links.part(id);
            hop(&nodes[node][index]).map(|hop| hop.event.ttl)
        };
        let candidates: Vec<(usize, usize, bool)> = candidates
            .into_iter()
            .map(|(from, to)| (from, to, ttl(from, departure) == ttl(to, arrival)))
            .collect();
        let count = |candidates: &[(usize, usize, bool)]| {
            let mut counts = [vec![[0u32; 2]; total], vec![[0u32; 2]; total]];
            for &(from, to, same) in candidates {
                for (role, id) in [(0, from), (1, to)] {
                    counts[role][id][0] += 1;
                    counts[role][id][1] += u32::from(same);
                }
            }
            counts
        };
        let [outgoing, incoming] = count(&candidates);
        let chosen = |[all, same]: [u32; 2], is_same: bool| all == 1 || (is_same && same == 1);
        let kept: Vec<(usize, usize, bool)> = candidates
            .into_iter()
            .filter(|&(from, to, same)| chosen(outgoing[from], same) && chosen(incoming[to], same))
            .collect();
        let [outgoing, incoming] = count(&kept);
        for (from, to, _) in kept {
            if outgoing[from][0] == 1 && incoming[to][0] == 1 {
                links.link(from, to, true);
            }
        }
        links
    }

    fn id(&self, (node, index): Part) -> usize {
        self.base[node] + index
    }

    fn node(&self, id: usize) -> usize {
        self.base.partition_point(|&first| first <= id) - 1
    }

    fn part(&self, id: usize) -> Part {
        let node = self.node(id);
        (node, id - self.base[node])
    }

    /// `ids` (in node order) split by node.
    fn by_node(&self, ids: &[usize]) -> Vec<Vec<usize>> {
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for &id in ids {
            match groups.last_mut() {
                Some(group) if self.node(group[0]) == self.node(id) => group.push(id),
                _ => groups.push(vec![id]),
            }
        }
        groups
    }

    fn link(&mut self, from: usize, to: usize, unique: bool) {
        self.next[from] = Some(to);
        self.prev[to] = Some(from);
        self.unique[from] = unique;
    }

    /// The time from each joined departure to its arrival, per pair of nodes, on the nodes'
    /// own clocks.
    pub fn delays(&self, nodes: &[&[PacketTrace]]) -> Delays {
        let mut delays = Delays::default();
        for (from, to) in self.next.iter().enumerate() {
            let Some(to) = *to else { continue };
            let ((a, i), (b, j)) = (self.part(from), self.part(to));
            let left = departure(&nodes[a][i]).map_or(0, |hop| hop.event.ts_ns);
            let reached = arrival(&nodes[b][j]).map_or(0, |hop| hop.event.ts_ns);
            let delay = i128::from(reached) - i128::from(left);
            delays.add(a, b, delay, self.unique[from]);
        }
        delays
    }

    /// Joins the departures and arrivals of repeated identities by time: in time order, each
    /// departure with the first free arrival after it (allowing for the two clocks' error),
    /// within twice the longest crossing between the two nodes in `delays`.
    pub fn join_repeated(&mut self, nodes: &[&[PacketTrace]], clocks: &[Clock], delays: &Delays) {
        let corrected = |links: &Links, id: usize, hop: fn(&PacketTrace) -> Option<&Hop>| {
            let (node, index) = links.part(id);
            let ts = hop(&nodes[node][index]).map_or(0, |hop| hop.event.ts_ns);
            i128::from(ts) - clocks[node].offset_ns
        };
        for (mut departures, mut arrivals) in std::mem::take(&mut self.repeated) {
            departures.retain(|&id| self.next[id].is_none());
            arrivals.retain(|&id| self.prev[id].is_none());
            let (from, to) = match (departures.first(), arrivals.first()) {
                (Some(&from), Some(&to)) => (self.node(from), self.node(to)),
                _ => continue,
            };
            let slack = [from, to]
                .iter()
                .map(|&node| i128::from(clocks[node].uncertainty_ns.unwrap_or(0)))
                .sum::<i128>();
            let between = clocks[to].offset_ns - clocks[from].offset_ns;
            let limit = [(from, to, between), (to, from, -between)]
                .into_iter()
                .filter_map(|(a, b, offset)| Some(delays.longest(a, b)? - offset))
                .max()
                .map_or(WIRE_WINDOW_NS, |longest| 2 * longest.max(0) + slack);
            departures.sort_by_key(|&id| corrected(self, id, departure));
            arrivals.sort_by_key(|&id| corrected(self, id, arrival));
            let mut free = arrivals;
            for id in departures {
                let left = corrected(self, id, departure);
                let found = free.iter().position(|&to| {
                    let gap = corrected(self, to, arrival) - left;
                    (-slack..=limit).contains(&gap)
                });
                if let Some(at) = found {
                    let to = free.remove(at);
                    self.link(id, to, false);
                }
            }
        }
    }

    /// Every packet once: chains of joined packets in path order, and packets joined to
    /// none alone, in node order.
    pub fn chains(&self, nodes: &[&[PacketTrace]]) -> Vec<Vec<Part>> {
        let total = self.next.len();
        let mut seen = vec![false; total];
        let mut chains = Vec::new();
        let starts = (0..total).filter(|&id| self.prev[id].is_none());
        // A loop of joins (which only bad input can make) is cut where it closes.
        let rest: Vec<usize> = (0..total).collect();
        for start in starts.chain(rest) {
            if seen[start] {
                continue;
            }
            let mut chain = Vec::new();
            let mut at = Some(start);
            while let Some(id) = at.filter(|&id| !seen[id]) {
                seen[id] = true;
                chain.push(self.part(id));
                at = self.next[id];
            }
            chains.push(chain);
        }
        debug_assert_eq!(
            chains.iter().map(Vec::len).sum::<usize>(),
            nodes.iter().map(|packets| packets.len()).sum::<usize>()
        );
        chains
    }
}
