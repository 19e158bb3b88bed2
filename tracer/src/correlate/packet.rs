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
//! Packets wait in a queue in the order they were last looked at, not an ordered set: a hop
//! costs no queue operation, and expiry looks only at the front, moving a packet that was
//! active since to the back. A packet can so complete up to one idle time late, never early.

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
    /// (last hop time when queued, id) of every active packet, each once.
    idle: VecDeque<(u64, u64)>,
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
                self.idle.push_back((event.ts_ns, id));
                id
            }
        };
        let packet = self.active.get_mut(&id).expect("indexed packet is active");
        if event.skb != 0 && !packet.skbs.contains(&skb) {
            packet.skbs.push(skb);
            self.by_skb.insert(skb, id);
        }
        self.by_content.insert(content, id);
        packet.last_ts = packet.last_ts.max(event.ts_ns);
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
        while let Some(&(queued_ts, id)) = self.idle.front() {
            if now_ns.saturating_sub(queued_ts) < limits.packet_idle_ns {
                break;
            }
            self.idle.pop_front();
            let last_ts = self.active.get(&id).map_or(queued_ts, |p| p.last_ts);
            if now_ns.saturating_sub(last_ts) < limits.packet_idle_ns {
                self.idle.push_back((last_ts, id));
            } else {
                done.extend(self.remove(id));
            }
        }
        done.sort_by_key(|p| (p.first_ts(), p.id));
        done
    }

    /// Completes the `max` least recently active packets (all when fewer).
    pub fn drain_some(&mut self, max: usize) -> Vec<ActivePacket> {
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

    /// Completes the packet at the front of the queue, after moving those active since they
    /// were queued to the back.
    fn complete_oldest(&mut self) -> Option<ActivePacket> {
        while let Some((queued_ts, id)) = self.idle.pop_front() {
            match self.active.get(&id) {
                Some(packet) if packet.last_ts != queued_ts => {
                    self.idle.push_back((packet.last_ts, id));
                }
                _ => return self.remove(id),
            }
        }
        None
    }

    /// Takes a packet out of the table; its place in the queue is already gone.
    fn remove(&mut self, id: u64) -> Option<ActivePacket> {
        let packet = self.active.remove(&id)?;
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
