//! Each node's clock against the reference node's, from the packets that crossed between them.
//!
//! Every node stamps hops with its own `CLOCK_MONOTONIC`, which starts at its boot. For two
//! nodes X and Y with joined packets both ways, take per packet the apparent one-way time on
//! the two clocks: `d1 = t_Y(arrival) - t_X(departure)` for packets from X to Y, `d2` the same
//! from Y to X. If Y's clock reads `theta` more than X's and the true one-way times are `o1`,
//! `o2`, then `d1 = o1 + theta` and `d2 = o2 - theta`. As NTP does, assume the two directions
//! take about as long: `theta ~ (median d1 - median d2) / 2` (medians, so that a few packets
//! held up in a queue do not move it). Since no packet arrives before it left (`o1, o2 >= 0`),
//! the true offset lies in `[-min d2, min d1]`; the estimate is kept inside that interval, so
//! no packet of the pair comes out arriving before it left, and the uncertainty `U` is the
//! farthest the interval reaches from it: `max(min d1 - theta, theta + min d2)`.
//!
//! The reference node's clock is the merged trace's. Other nodes are placed through pairs of
//! nodes, each time through the pair that adds the least uncertainty (a node reached through
//! another adds their uncertainties). A node with packets in one direction only has no
//! estimate: tracer assumes the fastest of those packets took no time on the wire, so none
//! arrives before it left, and says that the offset is not known.

use std::collections::HashMap;

/// How a node's clock was placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// The merged trace's clock.
    Reference,
    /// From packets both ways between this node and `via`.
    TwoWay {
        via: usize,
        /// This node's clock minus `via`'s.
        offset_ns: i128,
        /// The pair's own share of the uncertainty.
        uncertainty_ns: u64,
        /// Joined packets from `via` to this node and back.
        packets: [usize; 2],
    },
    /// Packets went one way only, between this node and `via`: the fastest is assumed to have
    /// taken no time.
    OneWay {
        via: usize,
        /// Joined packets from `via` to this node and back (one of them 0).
        packets: [usize; 2],
    },
}

/// A node's clock against the reference node's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    /// The node's clock minus the reference's: subtracted from the node's times.
    pub offset_ns: i128,
    /// How far the true offset can be from `offset_ns`; `None` where it is not known.
    pub uncertainty_ns: Option<u64>,
    pub basis: Basis,
}

impl Clock {
    pub(super) fn reference() -> Clock {
        Clock {
            offset_ns: 0,
            uncertainty_ns: Some(0),
            basis: Basis::Reference,
        }
    }
}

/// Apparent one-way times of joined packets, per (from, to) pair of nodes.
#[derive(Debug, Default)]
pub struct Delays {
    pairs: HashMap<(usize, usize), PairDelays>,
}

#[derive(Debug, Default, Clone)]
struct PairDelays {
    /// Packets joined by an identity seen once: what the medians are taken of.
    unique: Vec<i128>,
    /// Every joined packet: what the bounds are taken of.
    all: Vec<i128>,
}

impl Delays {
    /// Adds a packet from node `from` to node `to` that took `delay` on their two clocks.
    pub fn add(&mut self, from: usize, to: usize, delay: i128, unique: bool) {
        let pair = self.pairs.entry((from, to)).or_default();
        pair.all.push(delay);
        if unique {
            pair.unique.push(delay);
        }
    }

    /// The longest time a packet joined by a unique identity took from `from` to `to`.
    pub fn longest(&self, from: usize, to: usize) -> Option<i128> {
        self.pairs.get(&(from, to))?.unique.iter().max().copied()
    }

    fn get(&self, from: usize, to: usize) -> Option<&PairDelays> {
        self.pairs.get(&(from, to)).filter(|d| !d.all.is_empty())
    }
}

/// `(offset, uncertainty)` of `to`'s clock against `from`'s, from packets both ways.
fn two_way(out: &PairDelays, back: &PairDelays) -> Option<(i128, u64)> {
    let (min_out, min_back) = (*out.all.iter().min()?, *back.all.iter().min()?);
    let medians = median(&out.unique).zip(median(&back.unique));
    let estimate = medians.map_or((min_out - min_back) / 2, |(d1, d2)| (d1 - d2) / 2);
    // Inside [-min d2, min d1] when that is an interval; bad input may make it empty.
    let offset = estimate.min(min_out).max(-min_back);
    Some((offset, bound(offset, min_out, min_back)))
}

/// How far the offsets `[-min_back, min_out]` allows are from `offset`: then no packet either
/// way arrives more than this before it left.
fn bound(offset: i128, min_out: i128, min_back: i128) -> u64 {
    let reach = (min_out - offset).abs().max((offset + min_back).abs());
    u64::try_from(reach).unwrap_or(u64::MAX)
}

fn median(values: &[i128]) -> Option<i128> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2
    })
}

/// Every node's clock from `delays`, against `reference`; `None` for a node no packet
/// joins to the others.
pub fn estimate(delays: &Delays, nodes: usize, reference: usize) -> Vec<Option<Clock>> {
    let mut clocks: Vec<Option<Clock>> = vec![None; nodes];
    clocks[reference] = Some(Clock::reference());
    loop {
        // The two-way pair from a placed node to one not placed that adds the least
        // uncertainty; failing that, the one-way pair with the most packets.
        let mut best: Option<(u64, Clock, usize)> = None;
        let mut one_way: Option<(usize, Clock, usize)> = None;
        for (via, placed) in clocks.iter().enumerate() {
            let Some(placed) = placed else { continue };
            for node in (0..nodes).filter(|&n| clocks[n].is_none()) {
                let (out, back) = (delays.get(via, node), delays.get(node, via));
                let packets = [out, back].map(|d| d.map_or(0, |d| d.all.len()));
                match (out, back) {
                    (Some(out), Some(back)) => {
                        let Some((offset_ns, pair)) = two_way(out, back) else {
                            continue;
                        };
                        let total = placed.uncertainty_ns.map(|u| u.saturating_add(pair));
                        let cost = total.unwrap_or(u64::MAX);
                        let clock = Clock {
                            offset_ns: placed.offset_ns + offset_ns,
                            uncertainty_ns: total,
                            basis: Basis::TwoWay {
                                via,
                                offset_ns,
                                uncertainty_ns: pair,
                                packets,
                            },
                        };
                        if best.as_ref().is_none_or(|(c, _, _)| cost < *c) {
                            best = Some((cost, clock, node));
                        }
                    }
                    (Some(_), None) | (None, Some(_)) => {
                        let count = packets[0] + packets[1];
                        if one_way.as_ref().is_none_or(|(c, _, _)| count > *c) {
                            let clock = one_way_clock(placed, via, out, back, packets);
                            one_way = Some((count, clock, node));
                        }
                    }
                    (None, None) => {}
                }
            }
        }
        match best
            .map(|(_, c, n)| (c, n))
            .or(one_way.map(|(_, c, n)| (c, n)))
        {
            Some((clock, node)) => clocks[node] = Some(clock),
            None => return clocks,
        }
    }
}

/// A node reached by packets one way only: the fastest took no time.
fn one_way_clock(
    placed: &Clock,
    via: usize,
    out: Option<&PairDelays>,
    back: Option<&PairDelays>,
    packets: [usize; 2],
) -> Clock {
    let fastest = |d: Option<&PairDelays>| d.and_then(|d| d.all.iter().min().copied());
    let offset = match (fastest(out), fastest(back)) {
        (Some(out), _) => out,
        (None, Some(back)) => -back,
        (None, None) => 0,
    };
    Clock {
        offset_ns: placed.offset_ns + offset,
        uncertainty_ns: None,
        basis: Basis::OneWay { via, packets },
    }
}

/// Widens every uncertainty to cover all the joined packets in `delays` (those joined by time
/// too), keeping the offsets, so that no joined packet arrives earlier than its nodes'
/// uncertainties allow; counts the packets each clock was placed from.
pub fn cover(clocks: &mut [Clock], delays: &Delays) {
    for node in placing_order(clocks) {
        let clock = clocks[node];
        let via = match clock.basis {
            Basis::Reference => continue,
            Basis::TwoWay { via, .. } | Basis::OneWay { via, .. } => via,
        };
        let (out, back) = (delays.get(via, node), delays.get(node, via));
        let packets = [out, back].map(|d| d.map_or(0, |d| d.all.len()));
        let min = |d: Option<&PairDelays>| d.and_then(|d| d.all.iter().min().copied());
        let placed = clocks[via];
        clocks[node] = match clock.basis {
            Basis::TwoWay { offset_ns, .. } => {
                let (Some(min_out), Some(min_back)) = (min(out), min(back)) else {
                    continue;
                };
                let pair = bound(offset_ns, min_out, min_back);
                Clock {
                    offset_ns: placed.offset_ns + offset_ns,
                    uncertainty_ns: placed.uncertainty_ns.map(|u| u.saturating_add(pair)),
                    basis: Basis::TwoWay {
                        via,
                        offset_ns,
                        uncertainty_ns: pair,
                        packets,
                    },
                }
            }
            _ => one_way_clock(&placed, via, out, back, packets),
        };
    }
}

/// Nodes in an order where each comes after the node it was placed through.
fn placing_order(clocks: &[Clock]) -> Vec<usize> {
    let mut order = Vec::with_capacity(clocks.len());
    let mut placed = vec![false; clocks.len()];
    while order.len() < clocks.len() {
        let before = order.len();
        for (node, clock) in clocks.iter().enumerate() {
            let ready = match clock.basis {
                Basis::Reference => true,
                Basis::TwoWay { via, .. } | Basis::OneWay { via, .. } => placed[via],
            };
            if ready && !placed[node] {
                placed[node] = true;
                order.push(node);
            }
        }
        if order.len() == before {
            break;
        }
    }
    order
}
