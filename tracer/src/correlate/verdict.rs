//! Why a connection worked or failed: the evidence a flow's packets leave ([`Evidence`],
//! gathered as they complete) and, when the flow ends, the verdict it supports ([`decide`]).
//!
//! The verdicts are a fixed vocabulary ([`Kind`]), decided by one table ([`RULES`]): each
//! entry names the evidence it needs, and the first that holds is the verdict. Adding a kind
//! is one entry (and one test). Drop reasons are the kernel's names (`enum skb_drop_reason`,
//! read from its BTF), which the caller supplies: the evidence keeps their numbers.

use std::sync::Arc;

use tracer_common::wire::tcp;

use super::{Direction, Hop, HopLabel};
use crate::{
    attribution::Rule as NetfilterRule,
    decode::{IcmpError, Proto},
};

/// What a flow's packets showed, kept while the flow lives (40 bytes in every flow, whose
/// last place is an id among the flow table's places); when it ends, with the place itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence<Place = HopLabel> {
    /// TCP: SYNs (without ACK) sent, SYN-ACKs that came back.
    pub syns: u16,
    pub syn_acks: u16,
    /// Packets sent again: a TCP segment (or SYN, FIN) whose sequence range was sent before.
    pub retransmitted: u16,
    /// What is true of the flow, a bit each: [`HANDSHAKE`], [`RESET`], and a sequence end in
    /// `seq_end`, per direction ([`SEQ_SENT`]).
    flags: u8,
    /// Replies that are not ICMP errors.
    pub replies: u64,
    /// The end of the highest sequence range sent, per direction (TCP), where its
    /// [`SEQ_SENT`] bit is set.
    seq_end: [u32; 2],
    /// Where the last packet of the original direction was last seen.
    pub last_seen: Option<Place>,
    /// Drops and ICMP errors, rare: kept out of line.
    pub incidents: Option<Box<Incidents>>,
}

/// The initiator acknowledged a SYN-ACK: the handshake completed.
const HANDSHAKE: u8 = 1;
/// A reset came back from the far end.
const RESET: u8 = 1 << 1;
/// A sequence range was sent in the direction (by index): `seq_end` holds its end.
const SEQ_SENT: [u8; 2] = [1 << 2, 1 << 3];

/// Drops and ICMP errors a flow met.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Incidents {
    /// Each place and reason a packet of the flow was dropped with, with how many were; the
    /// first ones seen, at most [`MAX_DROPS`].
    pub drops: Vec<Drop>,
    /// The first ICMP error about a packet of the flow, and where it was first seen.
    pub icmp: Option<(IcmpError, HopLabel)>,
}

/// Distinct drops kept per flow.
const MAX_DROPS: usize = 4;

/// Packets of a flow dropped at one place for one reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drop {
    pub direction: Direction,
    pub place: HopLabel,
    /// `enum skb_drop_reason`.
    pub reason: u32,
    pub location: u64,
    pub packets: u64,
}

impl<Place> Default for Evidence<Place> {
    fn default() -> Self {
        Evidence {
            syns: 0,
            syn_acks: 0,
            retransmitted: 0,
            flags: 0,
            replies: 0,
            seq_end: [0, 0],
            last_seen: None,
            incidents: None,
        }
    }
}

impl<Place> Evidence<Place> {
    /// The same evidence, with `last_seen` as the place it was last seen.
    pub fn seen_last_at<Other>(self, last_seen: Option<Other>) -> Evidence<Other> {
        Evidence {
            syns: self.syns,
            syn_acks: self.syn_acks,
            retransmitted: self.retransmitted,
            flags: self.flags,
            replies: self.replies,
            seq_end: self.seq_end,
            last_seen,
            incidents: self.incidents,
        }
    }

    /// The initiator acknowledged a SYN-ACK: the TCP handshake completed.
    pub fn handshake(&self) -> bool {
        self.flags & HANDSHAKE != 0
    }

    /// A reset came back from the far end.
    pub fn reset(&self) -> bool {
        self.flags & RESET != 0
    }

    /// Takes in a completed packet of the flow, travelling in `direction`. A packet of the
    /// original direction gives back the hop where it was last seen, which the caller keeps as
    /// `last_seen` (a flow keeps it as an id).
    pub fn observe<'h>(
        &mut self,
        direction: Direction,
        hops: &'h [Hop],
        proto: Proto,
    ) -> Option<&'h Hop> {
        let first = hops.iter().find(|h| h.event.has_l4).or(hops.first())?;
        let e = &first.event;
        if let Some(error) = &e.icmp {
            let incidents = self.incidents.get_or_insert_with(Box::default);
            if incidents.icmp.is_none() {
                incidents.icmp = Some(((**error).clone(), HopLabel::of(first)));
            }
        } else if proto == Proto::TCP && e.has_l4 {
            self.tcp(direction, e.tcp_flags, e.tcp_seq, e.payload_len);
        } else if direction == Direction::Reply {
            self.replies += 1;
        }
        if let Some(hop) = hops.iter().rev().find(|h| h.event.drop.is_some()) {
            self.dropped(direction, hop);
        }
        if direction == Direction::Original {
            hops.iter().rev().find(|h| h.event.drop.is_none())
        } else {
            None
        }
    }

    fn tcp(&mut self, direction: Direction, flags: u8, seq: u32, payload: u16) {
        let (syn, ack) = (flags & tcp::SYN != 0, flags & tcp::ACK != 0);
        match direction {
            Direction::Original if syn && !ack => self.syns = self.syns.saturating_add(1),
            Direction::Original if ack && self.syn_acks > 0 => self.flags |= HANDSHAKE,
            Direction::Reply if syn && ack => self.syn_acks = self.syn_acks.saturating_add(1),
            _ => {}
        }
        if direction == Direction::Reply {
            if flags & tcp::RST != 0 {
                self.flags |= RESET;
            } else {
                self.replies += 1;
            }
        }
        // SYN and FIN take a sequence number each; a segment without either and without
        // payload (a pure ACK) takes none and is never a retransmission.
        let length = u32::from(payload) + u32::from(syn) + u32::from(flags & tcp::FIN != 0);
        if length == 0 || flags & tcp::RST != 0 {
            return;
        }
        let end = seq.wrapping_add(length);
        let (sent, known) = (
            SEQ_SENT[direction as usize],
            &mut self.seq_end[direction as usize],
        );
        // Sequence numbers wrap: "not after" is a difference below 2^31.
        if self.flags & sent != 0 && known.wrapping_sub(end) < 1 << 31 {
            self.retransmitted = self.retransmitted.saturating_add(1);
        } else {
            *known = end;
            self.flags |= sent;
        }
    }

    fn dropped(&mut self, direction: Direction, hop: &Hop) {
        let Some(info) = hop.event.drop else {
            return;
        };
        let place = HopLabel::of(hop);
        let drops = &mut self.incidents.get_or_insert_with(Box::default).drops;
        let known = drops
            .iter()
            .position(|d| d.reason == info.reason && d.place == place && d.direction == direction);
        match known {
            Some(at) => drops[at].packets += 1,
            None if drops.len() < MAX_DROPS => drops.push(Drop {
                direction,
                place,
                reason: info.reason,
                location: info.location,
                packets: 1,
            }),
            None => {}
        }
    }
}

/// The verdicts, a fixed vocabulary (the JSON `verdict.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// The far end answered: the TCP handshake completed, or a reply came back.
    Delivered,
    /// The far end answered with a reset, or an ICMP port unreachable; or nothing listened.
    Refused,
    /// A packet of the flow was dropped on the path.
    Dropped,
    /// A packet was too big for the path.
    Mtu,
    /// No route to the destination.
    NoRoute,
    /// The packet had to be forwarded where forwarding is off (`ip_forward=0`).
    ForwardingDisabled,
    /// The next hop did not answer ARP or neighbour discovery.
    Neighbour,
    /// The reverse-path filter dropped it (an asymmetric route).
    RpFilter,
    /// Conntrack found the packet invalid, and a rule dropped it for that.
    ConntrackInvalid,
    /// The packet left through the last place tracer sees, and nothing came back.
    Unanswered,
    /// Nothing decisive was seen (only replies, or a flow tracer saw the middle of).
    Unknown,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Delivered => "delivered",
            Kind::Refused => "refused",
            Kind::Dropped => "dropped",
            Kind::Mtu => "mtu",
            Kind::NoRoute => "no_route",
            Kind::ForwardingDisabled => "forwarding_disabled",
            Kind::Neighbour => "neighbour",
            Kind::RpFilter => "rp_filter",
            Kind::ConntrackInvalid => "conntrack_invalid",
            Kind::Unanswered => "unanswered",
            Kind::Unknown => "unknown",
        }
    }

    /// Every kind, in the order [`RULES`] tries them.
    pub const ALL: [Kind; 11] = [
        Kind::Refused,
        Kind::Delivered,
        Kind::Mtu,
        Kind::Neighbour,
        Kind::ForwardingDisabled,
        Kind::NoRoute,
        Kind::RpFilter,
        Kind::ConntrackInvalid,
        Kind::Dropped,
        Kind::Unanswered,
        Kind::Unknown,
    ];
}

/// What a verdict says, for the outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub kind: Kind,
    /// Where it was decided: the drop, the ICMP error's origin, or the last place reached.
    pub place: Option<HopLabel>,
    /// The kernel's drop reason, by name.
    pub reason: Option<String>,
    /// The kernel function that dropped the packet (an address; named by the outputs).
    pub location: Option<u64>,
    /// Packets that showed it (dropped, refused, ...).
    pub packets: u64,
    pub retransmitted: u16,
    /// The MTU an ICMP error named.
    pub mtu: Option<u32>,
    /// One sentence a person can act on.
    pub advice: String,
    /// The rule that dropped a packet of the flow (`--rules`), for a drop.
    pub rule: Option<Arc<NetfilterRule>>,
}

/// What the rules look at: the evidence, with drop reasons by name.
pub struct Facts<'a> {
    pub evidence: &'a Evidence,
    pub proto: Proto,
    /// The flow's destination port, for advice.
    pub port: u16,
    /// Packets of the original direction.
    pub sent: u64,
    /// Drops that are failures (not a socket freeing what it consumed), with their reason's
    /// name.
    pub drops: Vec<(&'a Drop, String)>,
    /// Rules' texts of drops, when `--rules` named them (for conntrack's INVALID).
    pub rule_text: Option<&'a str>,
    /// The kernel functions of the drops, by address.
    functions: std::collections::HashMap<u64, String>,
}

impl Facts<'_> {
    fn icmp(&self) -> Option<&(IcmpError, HopLabel)> {
        self.evidence.incidents.as_ref()?.icmp.as_ref()
    }

    /// The first drop whose reason is one of `reasons`.
    fn drop_of(&self, reasons: &[&str]) -> Option<&(&Drop, String)> {
        self.drops
            .iter()
            .find(|(_, name)| reasons.contains(&name.as_str()))
    }

    /// The first drop in one of `functions` (by prefix).
    fn drop_in(&self, functions: &[&str]) -> Option<&(&Drop, String)> {
        self.drops.iter().find(|(drop, _)| {
            self.functions
                .get(&drop.location)
                .is_some_and(|f| functions.iter().any(|d| f.starts_with(d)))
        })
    }

    /// A drop where routing discards (`ip_error`, `dst_discard`).
    fn route_discard(&self) -> Option<&(&Drop, String)> {
        self.drop_in(&ROUTE_DISCARD)
    }

    /// A drop because forwarding is off where the packet had to be forwarded: the kernel counts
    /// it as an address error (`IP_INADDRERRORS`) in the function that would have forwarded
    /// it (`ip_error` takes the packet when the route lookup refused to forward,
    /// `ip6_forward` checks the switch itself).
    fn forwarding_off(&self) -> Option<&(&Drop, String)> {
        self.drop_in(&FORWARDING_CHECKS)
            .filter(|(_, name)| name == "IP_INADDRERRORS")
    }

    fn icmp_is(&self, test: impl Fn(&IcmpError) -> bool) -> bool {
        self.icmp().is_some_and(|(error, _)| test(error))
    }
}

/// Frees that are not failures when a socket makes them: a socket freeing a packet it consumed
/// (the far end's SYN after the handshake is `NOT_SPECIFIED` in `tcp_rcv_state_process`), a
/// closing socket's queues.
const NORMAL_FREES: [&str; 4] = ["NOT_SPECIFIED", "SOCKET_CLOSE", "TCP_CLOSE", "QUEUE_PURGE"];
/// Where a socket (or the protocol under it) frees what it was given: kernel functions by
/// prefix. `NOT_SPECIFIED` elsewhere (`dst_discard` of a blackhole route, a veth whose peer is
/// down) is a drop.
const SOCKET_FUNCTIONS: [&str; 9] = [
    "tcp_",
    "udp",
    "__udp",
    "sk_",
    "sock_",
    "inet_",
    "raw_",
    "icmp",
    "skb_consume_udp",
];
/// Where routing discards (a blackhole route, an unreachable one): `NOT_SPECIFIED` there
/// means no route.
const ROUTE_DISCARD: [&str; 4] = ["dst_discard", "ip_error", "ip6_pkt_discard", "ip6_pkt_drop"];
const MTU: [&str; 1] = ["PKT_TOO_BIG"];
const NO_LISTENER: [&str; 1] = ["NO_SOCKET"];
const NEIGHBOUR: [&str; 5] = [
    "NEIGH_FAILED",
    "NEIGH_QUEUEFULL",
    "NEIGH_DEAD",
    "NEIGH_CREATEFAIL",
    "NEIGH_HH_FILLFAIL",
];
const NO_ROUTE: [&str; 3] = ["IP_OUTNOROUTES", "IP_INNOROUTES", "IP_INADDRERRORS"];
const RP_FILTER: [&str; 1] = ["IP_RPFILTER"];
/// Where the kernel drops a packet it would forward when forwarding is off.
const FORWARDING_CHECKS: [&str; 2] = ["ip_error", "ip6_forward"];

/// One verdict rule: the kind, the evidence it needs (for the documentation), whether it holds,
/// and the advice it gives.
pub struct Rule {
    pub kind: Kind,
    pub needs: &'static str,
    holds: fn(&Facts) -> bool,
    advice: fn(&Facts) -> String,
}

/// The rules, tried in order; the first that holds is the verdict.
pub const RULES: [Rule; 11] = [
    Rule {
        kind: Kind::Refused,
        needs: "a reset from the far end, an ICMP port unreachable, or a NO_SOCKET drop",
        holds: |f| {
            f.evidence.reset()
                || f.drop_of(&NO_LISTENER).is_some()
                || f.icmp_is(|e| e.describe() == "port unreachable")
        },
        advice: |f| {
            format!(
                "nothing listens on port {} there: start the service, or check the port and \
                 the address",
                f.port
            )
        },
    },
    Rule {
        kind: Kind::Delivered,
        needs: "the TCP handshake completed, or a reply that is not an ICMP error came back",
        holds: |f| {
            f.evidence.handshake()
                || (f.proto == Proto::TCP && f.evidence.syn_acks > 0)
                || (f.proto != Proto::TCP && f.evidence.replies > 0)
        },
        advice: |_| "the far end answered".to_owned(),
    },
    Rule {
        kind: Kind::Mtu,
        needs: "a PKT_TOO_BIG drop, or an ICMP fragmentation needed / packet too big",
        holds: |f| f.drop_of(&MTU).is_some() || f.icmp_is(IcmpError::too_big),
        advice: |f| match f.icmp().and_then(|(e, _)| e.mtu) {
            Some(mtu) => format!(
                "the path takes at most {mtu} bytes there: lower the container's MTU to \
                 {mtu}, or let ICMP fragmentation-needed through to the sender"
            ),
            None => "a packet was too big for the next link: lower the container's MTU, or let \
                     ICMP fragmentation-needed through to the sender"
                .to_owned(),
        },
    },
    Rule {
        kind: Kind::Neighbour,
        needs: "a NEIGH_* drop, or an ICMP host unreachable",
        holds: |f| {
            f.drop_of(&NEIGHBOUR).is_some() || f.icmp_is(|e| e.describe() == "host unreachable")
        },
        advice: |_| {
            "the next hop did not answer ARP (or neighbour discovery): check that it is up and \
             has the address the route names"
                .to_owned()
        },
    },
    Rule {
        kind: Kind::ForwardingDisabled,
        needs: "an IP_INADDRERRORS drop in ip_error or ip6_forward (forwarding is off there)",
        holds: |f| f.forwarding_off().is_some(),
        advice: |_| {
            "forwarding is off where the packet is routed on: set net.ipv4.ip_forward=1 (or \
             net.ipv6.conf.all.forwarding=1) there"
                .to_owned()
        },
    },
    Rule {
        kind: Kind::NoRoute,
        needs: "an IP_OUTNOROUTES, IP_INNOROUTES or IP_INADDRERRORS drop, a blackhole route's \
                discard, or an ICMP network unreachable",
        holds: |f| {
            f.drop_of(&NO_ROUTE).is_some()
                || f.route_discard().is_some()
                || f.icmp_is(|e| e.describe() == "network unreachable")
        },
        advice: |_| {
            "there is no route to the destination there: add one, or check the default route \
             (and that forwarding is on where the packet is routed)"
                .to_owned()
        },
    },
    Rule {
        kind: Kind::RpFilter,
        needs: "an IP_RPFILTER drop",
        holds: |f| f.drop_of(&RP_FILTER).is_some(),
        advice: |_| {
            "the reverse-path filter dropped it: the route back to the source leaves through \
             another interface; make the routes symmetric, or set rp_filter to 2 (loose) there"
                .to_owned()
        },
    },
    Rule {
        kind: Kind::ConntrackInvalid,
        needs: "a drop by a rule that matches conntrack's INVALID state (with --rules)",
        holds: |f| {
            f.rule_text.is_some_and(|text| {
                let text = text.to_ascii_lowercase();
                text.contains("ct state invalid") || text.contains("ctstate invalid")
            })
        },
        advice: |_| {
            "conntrack found the packet invalid (out of window, or a connection it does not \
             know) and a rule dropped it: see the rule above"
                .to_owned()
        },
    },
    Rule {
        kind: Kind::Dropped,
        needs: "any other drop",
        holds: |f| !f.drops.is_empty(),
        advice: |f| match f.drops.first().map(|(_, name)| name.as_str()) {
            Some("NETFILTER_DROP") if f.rule_text.is_some() => {
                "a netfilter rule drops it: see the rule above".to_owned()
            }
            Some("NETFILTER_DROP") => {
                "a netfilter rule drops it: run with --rules to name the rule".to_owned()
            }
            Some(reason) => format!("the kernel dropped it ({reason})"),
            None => String::new(),
        },
    },
    Rule {
        kind: Kind::Unanswered,
        needs: "packets of the original direction, nothing back, no drop",
        holds: |f| f.evidence.last_seen.is_some(),
        advice: |_| {
            "the packets left through the last place tracer sees and nothing came back: the \
             far end, or the network beyond, does not answer"
                .to_owned()
        },
    },
    Rule {
        kind: Kind::Unknown,
        needs: "nothing else",
        holds: |_| true,
        advice: |_| "tracer saw nothing that decides it".to_owned(),
    },
];

/// The drop reasons that decide `kind`, if drops decide it.
fn reasons_of(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Refused => &NO_LISTENER,
        Kind::Mtu => &MTU,
        Kind::Neighbour => &NEIGHBOUR,
        Kind::NoRoute => &NO_ROUTE,
        Kind::RpFilter => &RP_FILTER,
        _ => &[],
    }
}

/// The verdict the evidence supports: the first rule that holds, with the drop (or ICMP error,
/// or last place) that showed it.
pub fn decide(facts: &Facts) -> Verdict {
    let rule = RULES
        .iter()
        .find(|rule| (rule.holds)(facts))
        .unwrap_or(&RULES[RULES.len() - 1]);
    let drop = match rule.kind {
        Kind::Delivered | Kind::Unanswered | Kind::Unknown => None,
        Kind::Dropped | Kind::ConntrackInvalid => facts.drops.first(),
        Kind::ForwardingDisabled => facts.forwarding_off(),
        Kind::NoRoute => facts
            .drop_of(reasons_of(Kind::NoRoute))
            .or_else(|| facts.route_discard()),
        kind => facts.drop_of(reasons_of(kind)),
    };
    let (place, packets) = match (rule.kind, drop) {
        (_, Some((drop, _))) => (Some(drop.place), drop.packets),
        (Kind::Unanswered, None) => (facts.evidence.last_seen, facts.sent),
        (Kind::Delivered | Kind::Unknown, None) => (None, 0),
        (_, None) => (facts.icmp().map(|(_, at)| *at), 1),
    };
    Verdict {
        kind: rule.kind,
        place,
        reason: drop.map(|(_, name)| name.clone()),
        location: drop.map(|(drop, _)| drop.location),
        packets,
        retransmitted: facts.evidence.retransmitted,
        mtu: facts.icmp().and_then(|(error, _)| error.mtu),
        advice: (rule.advice)(facts),
        rule: None,
    }
}

impl<'a> Facts<'a> {
    /// The facts of `evidence`, drop reasons named by `reason_name` and kernel functions by
    /// `function_name`; normal frees left out.
    pub fn new(
        evidence: &'a Evidence,
        proto: Proto,
        port: u16,
        sent: u64,
        reason_name: impl Fn(u32) -> String,
        function_name: impl Fn(u64) -> String,
        rule_text: Option<&'a str>,
    ) -> Facts<'a> {
        let all = evidence
            .incidents
            .iter()
            .flat_map(|incidents| &incidents.drops);
        let functions: std::collections::HashMap<u64, String> = all
            .clone()
            .map(|drop| (drop.location, function_name(drop.location)))
            .collect();
        let drops = all
            .map(|drop| (drop, reason_name(drop.reason)))
            .filter(|(drop, name)| !is_normal_free(name, &functions[&drop.location]))
            .collect();
        Facts {
            evidence,
            proto,
            port,
            sent,
            drops,
            rule_text,
            functions,
        }
    }
}

/// Whether a free with `reason` in kernel `function` is a socket freeing what it was given,
/// not a failure: such a `kfree_skb` hop is the packet's delivery.
pub fn is_normal_free(reason: &str, function: &str) -> bool {
    NORMAL_FREES.contains(&reason) && SOCKET_FUNCTIONS.iter().any(|f| function.starts_with(f))
}

#[cfg(test)]
mod tests;
