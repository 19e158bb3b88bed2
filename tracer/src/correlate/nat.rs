//! What NAT a flow shows: the rewrites observed between two hops of a packet, and those only
//! conntrack knows.

use super::{Direction, Hop, HopLabel, NatKind, NatRecord, NatSource, flow::Flow};
use crate::{attribution::PacketKey, decode::Tuple};

impl Flow {
    /// NAT records for a rewrite between two hops, once per flow, direction and kind: a
    /// packet can be rewritten in two steps (IPVS, then MASQUERADE), each seen on a hop.
    pub(super) fn observed_nat(
        &mut self,
        direction: Direction,
        before: &Hop,
        after: &Hop,
    ) -> Vec<NatRecord> {
        let (b, a) = (before.event.tuple, after.event.tuple);
        // Every packet of a NATed flow gets here: nothing is allocated unless a record is new.
        let reported = self.nat_reported;
        let mut fresh = nat_kinds(direction, &b, &a)
            .filter(|&kind| reported & reported_bit(direction, kind) == 0)
            .peekable();
        if fresh.peek().is_none() {
            return Vec::new();
        }
        let kinds: Vec<NatKind> = fresh.collect();
        for &kind in &kinds {
            self.nat_reported |= reported_bit(direction, kind);
        }
        if direction == Direction::Original && !self.reply_from_conntrack() {
            self.rename(self.orig(), after.event.tuple.reversed());
        }
        let flow_id = self.id;
        // IPVS in NAT mode rewrites the virtual service's address (the destination of the
        // original direction, the source of the reply), and marks the packets it handled.
        let ipvs = after.event.ipvs;
        kinds
            .into_iter()
            .map(|kind| NatRecord {
                ipvs: ipvs && kind == NatKind::Dnat,
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
        if !self.reply_from_conntrack() {
            return Vec::new();
        }
        let mut records = Vec::new();
        for direction in [Direction::Original, Direction::Reply] {
            let observed =
                reported_bit(direction, NatKind::Snat) | reported_bit(direction, NatKind::Dnat);
            if self.nat_reported & observed != 0 || self.packets[direction as usize] == 0 {
                continue;
            }
            let (before, after) = match direction {
                Direction::Original => (self.orig(), self.reply().reversed()),
                Direction::Reply => (self.reply(), self.orig().reversed()),
            };
            records.extend(nat_kinds(direction, &before, &after).map(|kind| NatRecord {
                flow_id: self.id,
                direction,
                kind,
                before,
                after,
                at: None,
                source: NatSource::Conntrack,
                packet: None,
                rule: None,
                // No packet of this direction was seen on both sides of it.
                ipvs: false,
            }));
        }
        records
    }
}

/// The bit of [`Flow::nat_reported`] that says a `kind` translation in `direction` was
/// reported.
fn reported_bit(direction: Direction, kind: NatKind) -> u8 {
    1 << (direction as u8 * 2 + kind as u8)
}

/// Which translations turn `before` into `after` in `direction`. In the reply direction the
/// translation is the inverse of the flow's: a rewritten destination undoes a source NAT.
pub fn nat_kinds(
    direction: Direction,
    before: &Tuple,
    after: &Tuple,
) -> impl Iterator<Item = NatKind> + use<> {
    let src = (before.src, before.src_port) != (after.src, after.src_port);
    let dst = (before.dst, before.dst_port) != (after.dst, after.dst_port);
    let (snat, dnat) = match direction {
        Direction::Original => (src, dst),
        Direction::Reply => (dst, src),
    };
    [snat.then_some(NatKind::Snat), dnat.then_some(NatKind::Dnat)]
        .into_iter()
        .flatten()
}
