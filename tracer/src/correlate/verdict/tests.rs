//! One test per verdict: the evidence each rule needs, and what it says.

use std::net::{IpAddr, Ipv4Addr};

use tracer_common::{hook::Hook, wire::tcp};

use super::*;
use crate::{
    correlate::{Hop, tests::event},
    decode::{DropInfo, IcmpError, Tuple},
};

fn tuple(proto: Proto) -> Tuple {
    Tuple {
        proto,
        src: IpAddr::V4(Ipv4Addr::new(172, 17, 0, 2)),
        src_port: 40000,
        dst: IpAddr::V4(Ipv4Addr::new(198, 19, 0, 252)),
        dst_port: 10001,
    }
}

/// A packet of `proto` with TCP `flags`, its path ending at `hook` on `dev` (a drop with
/// `reason` when given).
fn packet(proto: Proto, flags: u8, seq: u32, payload: u16, drop: Option<u32>) -> Vec<Hop> {
    let mut first = event(1_000, Hook::NetDevQueue, 1, "eth0", 0xa, tuple(proto));
    first.tcp_flags = flags;
    first.tcp_seq = seq;
    first.payload_len = payload;
    let mut last = first.clone();
    last.netns_inode = 2;
    last.ifname = crate::decode::IfName::new("docker0");
    if let Some(reason) = drop {
        last.hook = Hook::KfreeSkb;
        last.drop = Some(DropInfo {
            reason,
            location: 0xffff_0001,
        });
    } else {
        last.hook = Hook::NetifReceiveSkb;
    }
    [first, last]
        .into_iter()
        .map(|event| Hop {
            event,
            since_prev_ns: 0,
            since_first_ns: 0,
        })
        .collect()
}

fn reason_name(reason: u32) -> String {
    match reason {
        2 => "NOT_SPECIFIED".into(),
        3 => "NO_SOCKET".into(),
        5 => "NETFILTER_DROP".into(),
        6 => "PKT_TOO_BIG".into(),
        7 => "NEIGH_FAILED".into(),
        8 => "IP_OUTNOROUTES".into(),
        9 => "IP_RPFILTER".into(),
        10 => "IP_INADDRERRORS".into(),
        other => other.to_string(),
    }
}

/// Names the places the tests drop at: a socket's receive path, routing's error path, and
/// routing's discard.
fn function_name(location: u64) -> String {
    match location {
        0xffff_0001 => "tcp_rcv_state_process+0x1".into(),
        0xffff_0003 => "ip_error+0x94".into(),
        _ => "dst_discard+0x10".into(),
    }
}

fn verdict(evidence: &Evidence, proto: Proto, rule_text: Option<&str>) -> Verdict {
    decide(&Facts::new(
        evidence,
        proto,
        10001,
        1,
        reason_name,
        function_name,
        rule_text,
    ))
}

fn seen(packets: &[(Direction, Vec<Hop>)], proto: Proto) -> Evidence {
    let mut evidence = Evidence::default();
    for (direction, hops) in packets {
        if let Some(last) = evidence.observe(*direction, hops, proto) {
            evidence.last_seen = Some(HopLabel::of(last));
        }
    }
    evidence
}

use Direction::{Original, Reply};

const SYN: u8 = tcp::SYN;
const SYN_ACK: u8 = tcp::SYN | tcp::ACK;
const ACK: u8 = tcp::ACK;

#[test]
fn a_completed_handshake_is_delivered_and_normal_frees_do_not_count() {
    let evidence = seen(
        &[
            (Original, packet(Proto::TCP, SYN, 1, 0, None)),
            // The far end frees the SYN once it has the connection: NOT_SPECIFIED.
            (Original, packet(Proto::TCP, SYN, 1, 0, Some(2))),
            (Reply, packet(Proto::TCP, SYN_ACK, 9, 0, None)),
            (Original, packet(Proto::TCP, ACK, 2, 0, None)),
        ],
        Proto::TCP,
    );
    let v = verdict(&evidence, Proto::TCP, None);
    assert_eq!(v.kind, Kind::Delivered);
    // The SYN counted twice (its path in two packets here) is one retransmission.
    assert_eq!(v.retransmitted, 1);
}

#[test]
fn a_udp_reply_is_delivered() {
    let evidence = seen(
        &[
            (Original, packet(Proto::UDP, 0, 0, 10, None)),
            (Reply, packet(Proto::UDP, 0, 0, 10, None)),
        ],
        Proto::UDP,
    );
    assert_eq!(verdict(&evidence, Proto::UDP, None).kind, Kind::Delivered);
}

#[test]
fn a_reset_or_no_listener_is_refused() {
    let reset = seen(
        &[
            (Original, packet(Proto::TCP, SYN, 1, 0, None)),
            (Reply, packet(Proto::TCP, tcp::RST | ACK, 0, 0, None)),
        ],
        Proto::TCP,
    );
    assert_eq!(verdict(&reset, Proto::TCP, None).kind, Kind::Refused);
    let no_socket = seen(
        &[(Original, packet(Proto::UDP, 0, 0, 10, Some(3)))],
        Proto::UDP,
    );
    let v = verdict(&no_socket, Proto::UDP, None);
    assert_eq!(
        (v.kind, v.reason.as_deref()),
        (Kind::Refused, Some("NO_SOCKET"))
    );
    assert!(v.advice.contains("10001"), "{}", v.advice);
}

#[test]
fn a_netfilter_drop_is_dropped_with_its_place_and_rule() {
    let evidence = seen(
        &[
            (Original, packet(Proto::TCP, SYN, 1, 0, Some(5))),
            (Original, packet(Proto::TCP, SYN, 1, 0, Some(5))),
        ],
        Proto::TCP,
    );
    let v = verdict(&evidence, Proto::TCP, Some("tcp dport 10001 drop"));
    assert_eq!(v.kind, Kind::Dropped);
    assert_eq!(v.reason.as_deref(), Some("NETFILTER_DROP"));
    assert_eq!(v.place.map(|p| p.netns_inode), Some(2));
    assert_eq!((v.packets, v.retransmitted), (2, 1));
    assert_eq!(v.advice, "a netfilter rule drops it: see the rule above");
    let unnamed = verdict(&evidence, Proto::TCP, None);
    assert!(unnamed.advice.contains("--rules"), "{}", unnamed.advice);
}

#[test]
fn too_big_is_mtu_with_the_mtu_an_icmp_error_named() {
    let mut evidence = seen(
        &[(Original, packet(Proto::UDP, 0, 0, 1472, Some(6)))],
        Proto::UDP,
    );
    let mut error = packet(Proto::ICMP, 0, 0, 0, None);
    for hop in &mut error {
        hop.event.icmp = Some(Box::new(IcmpError {
            v6: false,
            kind: 3,
            code: 4,
            mtu: Some(1280),
            quoted: tuple(Proto::UDP),
            ip_id: 0,
            ip_len: 1500,
        }));
    }
    evidence.observe(Reply, &error, Proto::UDP);
    let v = verdict(&evidence, Proto::UDP, None);
    assert_eq!((v.kind, v.mtu), (Kind::Mtu, Some(1280)));
    assert_eq!(v.reason.as_deref(), Some("PKT_TOO_BIG"));
    assert!(v.advice.contains("1280"), "{}", v.advice);
    // An ICMP error is not a reply.
    assert_eq!(evidence.replies, 0);
}

#[test]
fn neighbour_route_and_reverse_path_failures_are_told_apart() {
    for (reason, kind) in [
        (7, Kind::Neighbour),
        (8, Kind::NoRoute),
        (9, Kind::RpFilter),
    ] {
        let evidence = seen(
            &[(Original, packet(Proto::TCP, SYN, 1, 0, Some(reason)))],
            Proto::TCP,
        );
        assert_eq!(verdict(&evidence, Proto::TCP, None).kind, kind, "{reason}");
    }
}

#[test]
fn a_drop_by_an_invalid_state_rule_is_conntrack_invalid() {
    let evidence = seen(
        &[(Original, packet(Proto::TCP, ACK, 1, 10, Some(5)))],
        Proto::TCP,
    );
    let v = verdict(&evidence, Proto::TCP, Some("ct state invalid counter drop"));
    assert_eq!(v.kind, Kind::ConntrackInvalid);
}

#[test]
fn packets_that_left_and_got_no_answer_are_unanswered() {
    let evidence = seen(
        &[(Original, packet(Proto::TCP, SYN, 1, 0, None))],
        Proto::TCP,
    );
    let v = verdict(&evidence, Proto::TCP, None);
    assert_eq!(v.kind, Kind::Unanswered);
    assert_eq!(v.place.map(|p| p.hook), Some(Hook::NetifReceiveSkb));
    assert_eq!(
        verdict(&Evidence::default(), Proto::TCP, None).kind,
        Kind::Unknown
    );
}

/// Every kind is decided by exactly one rule of the table, in [`Kind::ALL`]'s order.
#[test]
fn the_table_has_one_rule_per_kind() {
    let kinds: Vec<Kind> = RULES.iter().map(|rule| rule.kind).collect();
    assert_eq!(kinds, Kind::ALL);
    assert!(RULES.iter().all(|rule| !rule.needs.is_empty()));
}

/// `NOT_SPECIFIED` where a socket frees what it consumed is delivery; where routing discards
/// (a blackhole route) it is no route.
#[test]
fn the_same_reason_means_delivery_at_a_socket_and_no_route_where_routing_discards() {
    let mut discarded = packet(Proto::TCP, SYN, 1, 0, Some(2));
    discarded[1].event.drop = Some(DropInfo {
        reason: 2,
        location: 0xffff_0002,
    });
    let evidence = seen(&[(Original, discarded)], Proto::TCP);
    let v = verdict(&evidence, Proto::TCP, None);
    assert_eq!(
        (v.kind, v.reason.as_deref()),
        (Kind::NoRoute, Some("NOT_SPECIFIED"))
    );
    assert!(is_normal_free("NOT_SPECIFIED", "tcp_rcv_state_process+0x1"));
    assert!(!is_normal_free("NOT_SPECIFIED", "veth_xmit+0x20"));
    assert!(!is_normal_free("NETFILTER_DROP", "tcp_v4_rcv+0x1"));
}

/// An address error where routing refuses to forward is forwarding switched off; the same
/// reason anywhere else is only no route.
#[test]
fn an_address_error_in_ip_error_is_forwarding_disabled() {
    for (location, kind) in [
        (0xffff_0003, Kind::ForwardingDisabled),
        (0xffff_0001, Kind::NoRoute),
    ] {
        let mut refused = packet(Proto::TCP, SYN, 1, 0, Some(10));
        refused[1].event.drop = Some(DropInfo {
            reason: 10,
            location,
        });
        let evidence = seen(&[(Original, refused)], Proto::TCP);
        let v = verdict(&evidence, Proto::TCP, None);
        assert_eq!(
            (v.kind, v.reason.as_deref()),
            (kind, Some("IP_INADDRERRORS")),
            "{location:#x}"
        );
        if kind == Kind::ForwardingDisabled {
            assert!(v.advice.contains("ip_forward=1"), "{}", v.advice);
        }
    }
}
