//! Groups hop events into packets.
//!
//! A packet keeps the same `sk_buff` along most of its path, but the address alone is not an
//! identity: skbs are freed and reused, cloned (same `head`, new skb), copied (new skb, new
//! head), and given a new head in place when they are made writable (NAT does that:
//! `pskb_expand_head` keeps the skb). An event joins an active packet when
//! - its skb is one the packet was seen with, and its content key (protocol, IP id, IP length,
//!   TCP sequence/ack/flags: the fields NAT leaves alone) is the packet's; or
//! - it has no skb (TC programs) or a new one, its content key is the packet's, and it came
//!   within [`Limits::content_window_ns`] of the packet's last hop.
//!
//! Otherwise it starts a new packet. A packet is complete once no hop has joined it for
//! [`Limits::packet_idle_ns`]; the table holds at most [`Limits::max_packets`] active
//! packets and completes the least recently active first when it is full.
//!
//! Expiry uses a queue, not an ordered set: every hop appends (time, packet) at the back, and
//! an entry is stale once its packet has a later hop (or is gone). Events arrive about in time
//! order, so the front is the least recently active packet, and packets complete in the
//! order they went idle (a SYN before the packets that follow it).

use std::collections::VecDeque;

use rustc_hash::FxHashMap as HashMap;

use super::{Hop, Limits};
use crate::decode::{HopEvent, Proto};

/// The fields that identify a packet across hops and survive NAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ContentKey {
    proto: Proto,
    ip_id: u16,
    ip_len: u16,
    tcp_seq: u32,
    tcp_ack: u32,
    tcp_flags: u8,
}

impl ContentKey {
    fn of(event: &HopEvent) -> ContentKey {
        ContentKey {
            proto: event.tuple.proto,
            ip_id: event.ip_id,
            ip_len: event.ip_len,
            tcp_seq: event.tcp_seq,
            tcp_ack: event.tcp_ack,
            tcp_flags: event.tcp_flags,
        }
    }
}

/// A packet still collecting hops; its hops are in the table's arena.
#[derive(Debug)]
struct ActivePacket {
    content: ContentKey,
    /// The skbs it was seen with; more than [`SKBS`] is rare (clones, copies).
    skbs: [u64; SKBS],
    more_skbs: Vec<u64>,
    last_ts: u64,
    /// First and last hop in the arena, and how many.
    head: u32,
    tail: u32,
    len: u32,
}

/// Skbs a packet keeps without allocating.
const SKBS: usize = 3;

impl ActivePacket {
    fn skbs(&self) -> impl Iterator<Item = u64> + '_ {
        self.skbs
            .iter()
            .copied()
            .filter(|&skb| skb != 0)
            .chain(self.more_skbs.iter().copied())
    }

    fn add_skb(&mut self, skb: u64) -> bool {
        if self.skbs().any(|known| known == skb) {
            return false;
        }
        match self.skbs.iter_mut().find(|slot| **slot == 0) {
            Some(slot) => *slot = skb,
            None => self.more_skbs.push(skb),
        }
        true
    }
}

/// A packet that is complete: its hops in the order they arrived.
#[derive(Debug)]
pub struct CompletedPacket {
    pub id: u64,
    pub hops: Vec<Hop>,
}

impl CompletedPacket {
    pub fn first_ts(&self) -> u64 {
        self.hops.first().map_or(0, |hop| hop.event.ts_ns)
    }
}

/// The end of an arena chain.
const NONE: u32 = u32::MAX;

/// One hop in the arena, and the next hop of its packet.
#[derive(Debug)]
struct Slot {
    event: Option<HopEvent>,
    next: u32,
}

/// Active packets and their indexes. The hops of every active packet live in one arena (a
/// free slot is reused first), so that a packet costs no allocation of its own and the arena
/// never holds more than the hops of the packets in the table.
#[derive(Debug, Default)]
pub struct PacketTable {
    active: HashMap<u64, ActivePacket>,
    by_skb: HashMap<u64, u64>,
    by_content: HashMap<ContentKey, u64>,
    /// (hop time, id) for every hop of the active packets; stale when the packet's last hop
    /// is later.
    idle: VecDeque<(u64, u64)>,
    arena: Vec<Slot>,
    /// Free slots of the arena.
    free: Vec<u32>,
    next_id: u64,
}

impl PacketTable {
    /// Adds `event` to its packet. Returns packets completed to make room.
    pub fn push(&mut self, event: HopEvent, limits: &Limits) -> Vec<CompletedPacket> {
        let content = ContentKey::of(&event);
        let skb = event.skb;
        let by_skb = (event.skb != 0)
            .then(|| self.by_skb.get(&skb))
            .flatten()
            .filter(|id| self.active[id].content == content);
        let by_content = || {
            self.by_content.get(&content).filter(|id| {
                event.ts_ns.saturating_sub(self.active[id].last_ts) <= limits.content_window_ns
            })
        };
        let mut completed = Vec::new();
        let id = match by_skb.or_else(by_content).copied() {
            Some(id) => id,
            None => {
                if self.active.len() >= limits.max_packets {
                    completed.extend(self.complete_oldest());
                }
                self.next_id += 1;
                let id = self.next_id;
                self.active.insert(
                    id,
                    ActivePacket {
                        content,
                        skbs: [0; SKBS],
                        more_skbs: Vec::new(),
                        last_ts: event.ts_ns,
                        head: NONE,
                        tail: NONE,
                        len: 0,
                    },
                );
                id
            }
        };
        self.by_content.insert(content, id);
        let ts = event.ts_ns;
        let slot = self.store(event);
        let packet = self.active.get_mut(&id).expect("indexed packet is active");
        if skb != 0 && packet.add_skb(skb) {
            self.by_skb.insert(skb, id);
        }
        if ts >= packet.last_ts {
            packet.last_ts = ts;
            self.idle.push_back((ts, id));
        }
        match packet.tail {
            NONE => packet.head = slot,
            tail => self.arena[tail as usize].next = slot,
        }
        packet.tail = slot;
        packet.len += 1;
        completed
    }

    /// Puts `event` in a free slot of the arena.
    fn store(&mut self, event: HopEvent) -> u32 {
        let slot = Slot {
            event: Some(event),
            next: NONE,
        };
        // Written out rather than through `reuse_or_push`: this runs once per event.
        match self.free.pop() {
            Some(index) => {
                self.arena[index as usize] = slot;
                index
            }
            None => {
                self.arena.push(slot);
                u32::try_from(self.arena.len() - 1).expect("fewer than 2^32 hops in flight")
            }
        }
    }

    /// Completes every packet idle since before `now_ns - packet_idle_ns`.
    pub fn expire(&mut self, now_ns: u64, limits: &Limits) -> Vec<CompletedPacket> {
        let mut done = Vec::new();
        while let Some(&(ts, id)) = self.idle.front() {
            if now_ns.saturating_sub(ts) < limits.packet_idle_ns {
                break;
            }
            self.idle.pop_front();
            if self.is_last_hop(ts, id) {
                done.extend(self.remove(id));
            }
        }
        done.sort_by_key(|p| (p.first_ts(), p.id));
        done
    }

    /// Completes the `max` least recently active packets (all when fewer).
    pub fn drain_some(&mut self, max: usize) -> Vec<CompletedPacket> {
        let mut done = Vec::new();
        while done.len() < max
            && let Some(packet) = self.complete_oldest()
        {
            done.push(packet);
        }
        done.sort_by_key(|p| (p.first_ts(), p.id));
        done
    }

    pub fn len(&self) -> usize {
        self.active.len()
    }

    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// Slots in the arena, used or free, for memory tests.
    pub fn arena_len(&self) -> usize {
        self.arena.len()
    }

    /// Whether the queue entry (`ts`, `id`) is its packet's last hop (not stale).
    fn is_last_hop(&self, ts: u64, id: u64) -> bool {
        self.active.get(&id).is_some_and(|p| p.last_ts == ts)
    }

    /// Completes the least recently active packet.
    fn complete_oldest(&mut self) -> Option<CompletedPacket> {
        while let Some((ts, id)) = self.idle.pop_front() {
            if self.is_last_hop(ts, id) {
                return self.remove(id);
            }
        }
        None
    }

    /// Takes a packet out of the table and its hops out of the arena; what the queue still
    /// holds for it is stale from now on.
    fn remove(&mut self, id: u64) -> Option<CompletedPacket> {
        let packet = self.active.remove(&id)?;
        for skb in packet.skbs() {
            if self.by_skb.get(&skb) == Some(&id) {
                self.by_skb.remove(&skb);
            }
        }
        if self.by_content.get(&packet.content) == Some(&id) {
            self.by_content.remove(&packet.content);
        }
        let mut hops = Vec::with_capacity(packet.len as usize);
        let mut at = packet.head;
        while at != NONE {
            let slot = &mut self.arena[at as usize];
            if let Some(event) = slot.event.take() {
                hops.push(Hop {
                    event,
                    since_prev_ns: 0,
                    since_first_ns: 0,
                });
            }
            self.free.push(at);
            at = slot.next;
        }
        Some(CompletedPacket { id, hops })
    }
}
