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
//! packets and completes the least recently active first when it is full. Packets are kept in
//! order of last activity, so expiry only looks at the packets that are due.

use std::collections::BTreeSet;

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

/// A packet still collecting hops.
#[derive(Debug)]
pub struct ActivePacket {
    pub id: u64,
    pub hops: Vec<Hop>,
    content: ContentKey,
    skbs: Vec<u64>,
    last_ts: u64,
}

impl ActivePacket {
    pub fn first_ts(&self) -> u64 {
        self.hops.first().map_or(0, |hop| hop.event.ts_ns)
    }
}

/// Active packets and their indexes.
#[derive(Debug, Default)]
pub struct PacketTable {
    active: HashMap<u64, ActivePacket>,
    by_skb: HashMap<u64, u64>,
    by_content: HashMap<ContentKey, u64>,
    /// (last hop time, id) of every active packet.
    idle: BTreeSet<(u64, u64)>,
    next_id: u64,
}

impl PacketTable {
    /// Adds `event` to its packet. Returns packets completed to make room.
    pub fn push(&mut self, event: HopEvent, limits: &Limits) -> Vec<ActivePacket> {
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
                        id,
                        hops: Vec::new(),
                        content,
                        skbs: Vec::new(),
                        last_ts: event.ts_ns,
                    },
                );
                self.idle.insert((event.ts_ns, id));
                id
            }
        };
        let packet = self.active.get_mut(&id).expect("indexed packet is active");
        if event.skb != 0 && !packet.skbs.contains(&skb) {
            packet.skbs.push(skb);
            self.by_skb.insert(skb, id);
        }
        self.by_content.insert(content, id);
        if event.ts_ns > packet.last_ts {
            self.idle.remove(&(packet.last_ts, id));
            packet.last_ts = event.ts_ns;
            self.idle.insert((packet.last_ts, id));
        }
        packet.hops.push(Hop {
            event,
            since_prev_ns: 0,
            since_first_ns: 0,
        });
        completed
    }

    /// Completes every packet idle since before `now_ns - packet_idle_ns`.
    pub fn expire(&mut self, now_ns: u64, limits: &Limits) -> Vec<ActivePacket> {
        let mut done = Vec::new();
        while let Some(&(last_ts, id)) = self.idle.first() {
            if now_ns.saturating_sub(last_ts) < limits.packet_idle_ns {
                break;
            }
            done.extend(self.remove(id));
        }
        done.sort_by_key(|p| (p.first_ts(), p.id));
        done
    }

    /// Completes every packet.
    pub fn drain(&mut self) -> Vec<ActivePacket> {
        self.expire(
            u64::MAX,
            &Limits {
                packet_idle_ns: 0,
                ..Limits::default()
            },
        )
    }

    pub fn len(&self) -> usize {
        self.active.len()
    }

    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    fn complete_oldest(&mut self) -> Option<ActivePacket> {
        let &(_, id) = self.idle.first()?;
        self.remove(id)
    }

    fn remove(&mut self, id: u64) -> Option<ActivePacket> {
        let packet = self.active.remove(&id)?;
        self.idle.remove(&(packet.last_ts, id));
        for skb in &packet.skbs {
            if self.by_skb.get(skb) == Some(&id) {
                self.by_skb.remove(skb);
            }
        }
        if self.by_content.get(&packet.content) == Some(&id) {
            self.by_content.remove(&packet.content);
        }
        Some(packet)
    }
}
