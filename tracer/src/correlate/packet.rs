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
//!
//! Most hops of a packet show it as the hop before them did: only the place, the time, the skb
//! and a few header fields move. Such a hop is kept as a [`Later`] (72 bytes, not a whole
//! event) that refers to the packet's last whole hop, and made whole again when the packet
//! completes. A hop that differs only in its tuple (NAT rewrote it) is a [`Translated`]: a
//! `Later` and the new tuple (112 bytes), which the hops after it repeat. A hop whose layers or
//! process differ, or that carries a drop or headers, is kept whole (200 bytes).

use std::{collections::VecDeque, sync::Arc};

use rustc_hash::FxHashMap as HashMap;
use smallvec::SmallVec;
use tracer_common::hook::Hook;

use super::{Hop, Limits};
use crate::decode::{Conntrack, HopEvent, IfName, Proto, Tuple};

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

/// A packet still collecting hops; its hops are in the table's arenas.
#[derive(Debug)]
struct ActivePacket {
    id: u64,
    content: ContentKey,
    /// The skbs it was seen with; more than [`SKBS`] is rare (clones, copies).
    skbs: [u64; SKBS],
    more_skbs: Vec<u64>,
    last_ts: u64,
    /// Its hops in the arenas, in the order they came (links, see [`LATER`]): kept here
    /// rather than chained through the arenas, so that completing the packet can ask for all
    /// its hops at once, and their loads, which miss the cache, overlap.
    hops: SmallVec<[u32; HOPS]>,
    /// The packet's last whole hop (an index in the whole hops' arena), which a [`Later`] hop
    /// repeats; [`NONE`] before the first.
    whole: u32,
    /// The packet's last [`Translated`] hop after `whole` (an index in their arena), whose
    /// tuple a later hop repeats; [`NONE`] if there is none.
    translated: u32,
}

/// An active packet's place in the table's slots.
type PacketSlot = u32;

/// Skbs a packet keeps without allocating.
const SKBS: usize = 3;

/// Hops a packet keeps the links of without allocating.
const HOPS: usize = 8;

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

/// No whole hop yet.
const NONE: u32 = u32::MAX;

/// A link to one of a packet's hops: an index in the whole hops' arena, or with this bit, in
/// the later hops' arena, or with this and [`TRANSLATED`], in the translated hops' arena.
const LATER: u32 = 1 << 31;
const TRANSLATED: u32 = 1 << 30;
/// The index in a link.
const INDEX: u32 = TRANSLATED - 1;

/// Hops of one kind in slots, a free one reused first: a packet costs no allocation of its
/// own, and an arena never holds more than the hops of the packets in the table.
#[derive(Debug)]
struct Arena<T> {
    slots: Vec<Option<T>>,
    free: Vec<u32>,
}

impl<T> Default for Arena<T> {
    fn default() -> Self {
        Arena {
            slots: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T> Arena<T> {
    /// Puts `hop` in a free slot; returns its index.
    fn store(&mut self, hop: T) -> u32 {
        let index = super::reuse_or_push(&mut self.slots, &mut self.free, Some(hop), "hops");
        assert!(index <= INDEX, "fewer than 2^30 hops of a kind in flight");
        index
    }

    fn get(&self, index: u32) -> &T {
        self.slots[index as usize]
            .as_ref()
            .expect("a linked slot holds a hop")
    }

    fn take(&mut self, index: u32) -> T {
        self.free.push(index);
        self.slots[index as usize]
            .take()
            .expect("a linked slot holds a hop")
    }

    fn prefetch(&self, index: u32) {
        prefetch(&self.slots[index as usize]);
    }

    /// Hops held.
    fn held(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}

/// A hop that shows its packet as the hop before it did (tuple, TCP and IP fields, layers,
/// process), with only what moves along a path of its own: place, time, skb, length, TTL,
/// mark and conntrack entry. No drop, headers, tunnel or ICMP error.
#[derive(Debug)]
struct Later {
    ts_ns: u64,
    skb: u64,
    skb_head: u64,
    netns_inode: u64,
    conntrack: Option<Arc<Conntrack>>,
    ifindex: u32,
    len: u32,
    mark: u32,
    ifname: IfName,
    hook: Hook,
    tc: bool,
    ttl: u8,
}

/// A [`Later`] hop whose tuple NAT rewrote.
#[derive(Debug)]
struct Translated {
    later: Later,
    tuple: Tuple,
}

impl Later {
    /// `event` as a later hop of a packet whose last whole hop is `whole`, if it is one, but for
    /// its tuple, which the caller compares.
    fn of(event: &HopEvent, whole: &HopEvent) -> Option<Later> {
        // Every field named, so that a field added to `HopEvent` has to be placed here (and in
        // `event` below): a hop's own, the packet's, or never in a short hop.
        let HopEvent {
            // The hop's own, kept.
            ts_ns,
            hook,
            skb,
            skb_head,
            netns_inode,
            tc,
            ifindex,
            ifname,
            ttl,
            len,
            mark,
            conntrack,
            // The packet's: as the whole hop showed it, or this hop is kept whole; the tuple
            // may have been translated since.
            tuple: _,
            has_l4,
            fragment,
            nonlinear,
            ipvs,
            payload_len,
            process: _,
            // The same in every hop of one packet (its content key).
            tcp_flags: _,
            tcp_seq: _,
            tcp_ack: _,
            ip_id: _,
            ip_len: _,
            // Never in a short hop.
            drop,
            headers,
            encap,
            icmp,
        } = event;
        let repeats = drop.is_none()
            && headers.is_none()
            && encap.is_none()
            && icmp.is_none()
            && *has_l4 == whole.has_l4
            && *fragment == whole.fragment
            && *nonlinear == whole.nonlinear
            && *ipvs == whole.ipvs
            && *payload_len == whole.payload_len
            && same_process(event, whole);
        repeats.then(|| Later {
            ts_ns: *ts_ns,
            skb: *skb,
            skb_head: *skb_head,
            netns_inode: *netns_inode,
            conntrack: conntrack.clone(),
            ifindex: *ifindex,
            len: *len,
            mark: *mark,
            ifname: *ifname,
            hook: *hook,
            tc: *tc,
            ttl: *ttl,
        })
    }

    /// The whole event again, from the hop before it, which it repeats.
    fn event(self, before: &HopEvent) -> HopEvent {
        HopEvent {
            ts_ns: self.ts_ns,
            hook: self.hook,
            skb: self.skb,
            skb_head: self.skb_head,
            netns_inode: self.netns_inode,
            tc: self.tc,
            ifindex: self.ifindex,
            ifname: self.ifname,
            ttl: self.ttl,
            len: self.len,
            mark: self.mark,
            conntrack: self.conntrack,
            process: before.process.clone(),
            drop: None,
            headers: None,
            encap: None,
            icmp: None,
            ..*before
        }
    }
}

/// Whether two events name the same process (the same shared one, or none).
fn same_process(a: &HopEvent, b: &HopEvent) -> bool {
    match (&a.process, &b.process) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

/// Active packets and their indexes. The hops of every active packet live in three arenas: whole
/// hops, [`Later`] ones and [`Translated`] ones.
#[derive(Debug, Default)]
pub struct PacketTable {
    /// Active packets in slots of their own (a free one is reused first): the indexes lead
    /// straight to a packet's slot, without a lookup by id.
    active: Vec<Option<ActivePacket>>,
    free_active: Vec<u32>,
    live: usize,
    by_skb: HashMap<u64, PacketSlot>,
    by_content: HashMap<ContentKey, PacketSlot>,
    /// (hop time, slot, the packet's id cut to 32 bits) for every hop of the active packets;
    /// stale when the slot's packet is another one or its last hop is later.
    idle: VecDeque<(u64, PacketSlot, u32)>,
    wholes: Arena<HopEvent>,
    laters: Arena<Later>,
    translated: Arena<Translated>,
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
            .filter(|&&slot| self.packet(slot).content == content);
        let by_content = || {
            self.by_content.get(&content).filter(|&&slot| {
                event.ts_ns.saturating_sub(self.packet(slot).last_ts) <= limits.content_window_ns
            })
        };
        let mut completed = Vec::new();
        let slot = match by_skb.or_else(by_content).copied() {
            Some(slot) => slot,
            None => {
                if self.live >= limits.max_packets {
                    completed.extend(self.complete_oldest());
                }
                self.next_id += 1;
                let packet = ActivePacket {
                    id: self.next_id,
                    content,
                    skbs: [0; SKBS],
                    more_skbs: Vec::new(),
                    last_ts: event.ts_ns,
                    hops: SmallVec::new(),
                    whole: NONE,
                    translated: NONE,
                };
                self.live += 1;
                super::reuse_or_push(
                    &mut self.active,
                    &mut self.free_active,
                    Some(packet),
                    "packets in flight",
                )
            }
        };
        self.by_content.insert(content, slot);
        let ts = event.ts_ns;
        let packet = self.packet(slot);
        // The packet's first hop is always whole.
        let short = (packet.whole != NONE)
            .then(|| {
                let whole = self.wholes.get(packet.whole);
                let tuple = match packet.translated {
                    NONE => &whole.tuple,
                    index => &self.translated.get(index).tuple,
                };
                Some((Later::of(&event, whole)?, event.tuple == *tuple))
            })
            .flatten();
        let link = match short {
            Some((later, true)) => LATER | self.laters.store(later),
            Some((later, false)) => {
                let tuple = event.tuple;
                LATER | TRANSLATED | self.translated.store(Translated { later, tuple })
            }
            None => self.wholes.store(event),
        };
        let packet = self.active[slot as usize]
            .as_mut()
            .expect("an indexed slot holds a packet");
        match link & (LATER | TRANSLATED) {
            0 => (packet.whole, packet.translated) = (link, NONE),
            LATER => {}
            _ => packet.translated = link & INDEX,
        }
        if skb != 0 && packet.add_skb(skb) {
            self.by_skb.insert(skb, slot);
        }
        if ts >= packet.last_ts {
            packet.last_ts = ts;
            self.idle.push_back((ts, slot, packet.id as u32));
        }
        packet.hops.push(link);
        completed
    }

    /// Completes every packet idle since before `now_ns - packet_idle_ns`.
    pub fn expire(&mut self, now_ns: u64, limits: &Limits) -> Vec<CompletedPacket> {
        let mut done = Vec::new();
        while let Some(&(ts, slot, tag)) = self.idle.front() {
            if now_ns.saturating_sub(ts) < limits.packet_idle_ns {
                break;
            }
            self.idle.pop_front();
            if self.is_last_hop(ts, slot, tag) {
                done.push(self.remove(slot));
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
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Hops held whole, later and translated, for tests.
    pub fn held(&self) -> (usize, usize, usize) {
        (
            self.wholes.held(),
            self.laters.held(),
            self.translated.held(),
        )
    }

    /// Slots in the arenas, used or free, for memory tests.
    pub fn arena_len(&self) -> usize {
        self.wholes.slots.len() + self.laters.slots.len() + self.translated.slots.len()
    }

    /// Whether the queue entry (`ts`, `slot`, `tag`) is its packet's last hop (not stale).
    fn is_last_hop(&self, ts: u64, slot: PacketSlot, tag: u32) -> bool {
        self.active[slot as usize]
            .as_ref()
            .is_some_and(|p| p.id as u32 == tag && p.last_ts == ts)
    }

    /// The packet in `slot`, which an index or the queue led to.
    fn packet(&self, slot: PacketSlot) -> &ActivePacket {
        self.active[slot as usize]
            .as_ref()
            .expect("an indexed slot holds a packet")
    }

    /// Completes the least recently active packet.
    fn complete_oldest(&mut self) -> Option<CompletedPacket> {
        while let Some((ts, slot, tag)) = self.idle.pop_front() {
            if self.is_last_hop(ts, slot, tag) {
                return Some(self.remove(slot));
            }
        }
        None
    }

    /// Takes a packet out of the table and its hops out of the arena; what the queue still
    /// holds for it is stale from now on.
    fn remove(&mut self, slot: PacketSlot) -> CompletedPacket {
        let packet = self.active[slot as usize]
            .take()
            .expect("a packet's slot holds it until it completes");
        for &link in &packet.hops {
            let index = link & INDEX;
            match link & (LATER | TRANSLATED) {
                0 => self.wholes.prefetch(index),
                LATER => self.laters.prefetch(index),
                _ => self.translated.prefetch(index),
            }
        }
        self.free_active.push(slot);
        self.live -= 1;
        for skb in packet.skbs() {
            if self.by_skb.get(&skb) == Some(&slot) {
                self.by_skb.remove(&skb);
            }
        }
        if self.by_content.get(&packet.content) == Some(&slot) {
            self.by_content.remove(&packet.content);
        }
        let mut hops: Vec<Hop> = Vec::with_capacity(packet.hops.len());
        for link in packet.hops {
            let index = link & INDEX;
            let before = || &hops.last().expect("a later hop follows a whole one").event;
            let event = match link & (LATER | TRANSLATED) {
                0 => self.wholes.take(index),
                LATER => self.laters.take(index).event(before()),
                _ => {
                    let Translated { later, tuple } = self.translated.take(index);
                    HopEvent {
                        tuple,
                        ..later.event(before())
                    }
                }
            };
            hops.push(Hop {
                event,
                since_prev_ns: 0,
                since_first_ns: 0,
            });
        }
        CompletedPacket {
            id: packet.id,
            hops,
        }
    }
}

/// Asks the CPU to bring `value`'s cache lines in. A hop was written `--packet-timeout`
/// before its packet completes, so it is out of the cache by then; asked for together, the
/// hops of a packet arrive in the time of one miss rather than one after another.
fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let start = std::ptr::from_ref(value).cast::<i8>();
        for offset in (0..size_of::<T>()).step_by(64) {
            // SAFETY: a prefetch is a hint: it reads nothing into the program and cannot
            // fault, and the address is within `value`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.add(offset)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}
