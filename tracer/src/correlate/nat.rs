//! What NAT a flow shows: the rewrites observed between two hops of a packet, and those only
//! conntrack knows.

use super::{Direction, Hop, HopLabel, NatKind, NatRecord, NatSource, flow::Flow};
use crate::{attribution::PacketKey, decode::Tuple};

impl Flow {
    /// NAT records for a rewrite between two hops, once per flow and direction.
    pub(super) fn observed_nat(
        &mut self,
        direction: Direction,
        before: &Hop,
        after: &Hop,
    ) -> Vec<NatRecord> {
        if self.nat_reported[direction as usize] {
            return Vec::new();
        }
        self.nat_reported[direction as usize] = true;
        if direction == Direction::Original && !self.reply_from_conntrack {
            self.rename(self.orig, after.event.tuple.reversed());
        }
        let flow_id = self.id;
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
                packet: Some(PacketKey::of(&before.event)),
                rule: None,
            })
            .collect()
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
                        packet: None,
                        rule: None,
                    }),
            );
        }
        records
    }
}

/// Which translations turn `before` into `after` in `direction`. In the reply direction the
/// translation is the inverse of the flow's: a rewritten destination undoes a source NAT.
pub fn nat_kinds(direction: Direction, before: &Tuple, after: &Tuple) -> Vec<NatKind> {
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
