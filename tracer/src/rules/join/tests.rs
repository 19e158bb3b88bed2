use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::{decode::Proto, rules::netlink};

fn ipv4_headers(
    src: [u8; 4],
    dst: [u8; 4],
    id: u16,
    sport: u16,
    dport: u16,
    seq: u32,
) -> (Vec<u8>, Vec<u8>) {
    let mut ip = vec![0x45, 0, 0, 60];
    ip.extend(id.to_be_bytes());
    ip.extend([0x40, 0, 64, 6, 0, 0]);
    ip.extend(src);
    ip.extend(dst);
    let mut tcp = Vec::new();
    tcp.extend(sport.to_be_bytes());
    tcp.extend(dport.to_be_bytes());
    tcp.extend(seq.to_be_bytes());
    tcp.extend([0; 12]);
    (ip, tcp)
}

fn event(
    chain: &str,
    handle: Option<u64>,
    kind: TraceKind,
    verdict: Verdict,
    headers: &(Vec<u8>, Vec<u8>),
) -> TraceEvent {
    TraceEvent {
        family: "ip",
        table: "filter".into(),
        chain: chain.into(),
        handle,
        kind,
        verdict,
        id: 7,
        netns: 0,
        nfproto: 2,
        network: headers.0.clone(),
        transport: headers.1.clone(),
    }
}

#[test]
fn a_drop_is_joined_by_ip_id_sequence_and_tuple() {
    let headers = ipv4_headers([172, 17, 0, 2], [198, 18, 0, 1], 0x1234, 40000, 10001, 99);
    let mut book = RuleBook::default();
    book.add(
        event(
            "FORWARD",
            Some(3),
            TraceKind::Rule,
            Verdict::Jump("DOCKER-USER".into()),
            &headers,
        ),
        1,
    );
    book.add(
        event(
            "DOCKER-USER",
            Some(21),
            TraceKind::Rule,
            Verdict::Drop,
            &headers,
        ),
        2,
    );
    // Another packet of another flow with the same IP id and sequence: not this one's.
    let other = ipv4_headers([172, 17, 0, 3], [198, 18, 0, 1], 0x1234, 40000, 10001, 99);
    book.add(
        event("FORWARD", None, TraceKind::Policy, Verdict::Drop, &other),
        3,
    );
    let key = PacketKey {
        proto: 6,
        id: 0x1234,
        seq: 99,
    };
    let tuple = Tuple {
        proto: Proto::TCP,
        src: IpAddr::V4(Ipv4Addr::new(172, 17, 0, 2)),
        src_port: 40000,
        dst: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
        dst_port: 10001,
    };
    let rule = book.drop_rule(key, &[tuple]).unwrap();
    assert_eq!(
        (rule.chain.as_str(), rule.handle, rule.verdict.as_str()),
        ("DOCKER-USER", Some(21), "drop")
    );
    let other_tuple = Tuple {
        src: IpAddr::V4(Ipv4Addr::new(172, 17, 0, 3)),
        ..tuple
    };
    let policy = book.drop_rule(key, &[other_tuple]).unwrap();
    assert_eq!(
        (policy.handle, policy.text.as_deref()),
        (None, Some("policy drop"))
    );
    assert_eq!(policy.describe(), "ip filter FORWARD: policy drop");
    assert!(
        book.drop_rule(PacketKey { seq: 100, ..key }, &[tuple])
            .is_none()
    );
}

#[test]
fn events_of_tracers_own_table_and_old_packets_are_forgotten() {
    let headers = ipv4_headers([10, 0, 0, 1], [10, 0, 0, 2], 1, 1, 2, 3);
    let mut book = RuleBook::default();
    let mut own = event(
        "prerouting",
        Some(2),
        TraceKind::Rule,
        Verdict::Drop,
        &headers,
    );
    own.family = "inet";
    own.table = netlink::table_name();
    book.add(own, 0);
    assert!(book.packets.is_empty());
    book.add(
        event("INPUT", Some(5), TraceKind::Rule, Verdict::Drop, &headers),
        0,
    );
    assert_eq!(book.packets.len(), 1);
    let later = ipv4_headers([10, 0, 0, 1], [10, 0, 0, 2], 2, 1, 2, 3);
    book.add(
        event("INPUT", Some(5), TraceKind::Rule, Verdict::Drop, &later),
        KEEP_NS + 1,
    );
    assert_eq!(book.packets.len(), 1, "the first packet expired");
}

/// Only a walk's first event carries the packet's headers: a policy verdict after a rule that
/// jumped (or did not end the walk) is joined by the walk's id.
#[test]
fn events_without_headers_join_their_walk_by_id() {
    let headers = ipv4_headers([172, 17, 0, 2], [198, 18, 0, 1], 9, 40000, 10001, 5);
    let none = (Vec::new(), Vec::new());
    let mut book = RuleBook::default();
    book.add(
        event(
            "FORWARD",
            None,
            TraceKind::Rule,
            Verdict::Continue,
            &headers,
        ),
        1,
    );
    let mut policy = event("FORWARD", None, TraceKind::Policy, Verdict::Drop, &none);
    book.add(policy.clone(), 2);
    // The same id in another namespace is another walk, of a packet not seen there.
    policy.netns = 1;
    book.add(policy, 3);
    let key = PacketKey {
        proto: 6,
        id: 9,
        seq: 5,
    };
    let (_, tuple) = event("x", None, TraceKind::Rule, Verdict::Drop, &headers)
        .packet()
        .unwrap();
    let rule = book.drop_rule(key, &[tuple]).unwrap();
    assert_eq!(
        (rule.handle, rule.text.as_deref()),
        (None, Some("policy drop"))
    );
    assert_eq!(book.packets[&key].len(), 2);
}

/// A full book forgets its oldest walks, not every walk: a walk that began just before it
/// filled up still joins the events that carry only its id.
#[test]
fn a_full_book_forgets_the_oldest_walks_first() {
    let none = (Vec::new(), Vec::new());
    let mut book = RuleBook::default();
    let recent = MAX_PACKETS as u32 - 1;
    let mut packet = None;
    for n in 0..=MAX_PACKETS as u32 {
        let headers = ipv4_headers([10, 0, 0, 1], [10, 0, 0, 2], n as u16, 1, 2, n);
        let mut first = event(
            "FORWARD",
            None,
            TraceKind::Rule,
            Verdict::Continue,
            &headers,
        );
        first.id = n;
        if n == recent {
            packet = first.packet();
        }
        book.add(first, 0);
    }
    let (key, tuple) = packet.unwrap();
    let mut policy = event("FORWARD", None, TraceKind::Policy, Verdict::Drop, &none);
    policy.id = recent;
    book.add(policy, 1);
    let rule = book.drop_rule(key, &[tuple]);
    assert_eq!(
        rule.and_then(|r| r.text.clone()).as_deref(),
        Some("policy drop"),
        "a recent walk was forgotten"
    );
    // The oldest walk is the one that went.
    let mut old = event("FORWARD", None, TraceKind::Policy, Verdict::Drop, &none);
    old.id = 0;
    let before = book.packets.values().map(Vec::len).sum::<usize>();
    book.add(old, 2);
    assert_eq!(book.packets.values().map(Vec::len).sum::<usize>(), before);
}

#[test]
fn remembered_rules_outlive_a_full_book_but_the_oldest() {
    let mut book = RuleBook::default();
    let rule = Arc::new(Rule {
        family: "ip",
        table: "nat".into(),
        chain: "OUTPUT".into(),
        handle: Some(4),
        text: None,
        verdict: "accept".into(),
    });
    for flow in 0..=MAX_PACKETS as u64 {
        book.remember(flow, Translation::Destination, Arc::clone(&rule));
    }
    assert!(book.remembered(0, Translation::Destination).is_none());
    assert!(book.remembered(1, Translation::Destination).is_some());
    assert!(
        book.remembered(MAX_PACKETS as u64, Translation::Destination)
            .is_some()
    );
}

/// IPv6 has no IP id: two UDP datagrams of one flow that differ in size are two packets, and
/// the one that was dropped is not the one that was let through.
#[test]
fn ipv6_datagrams_of_one_flow_are_told_apart() {
    let datagram = |payload: u16| -> (Vec<u8>, Vec<u8>) {
        let mut ip = vec![0x60, 0x0a, 0xbc, 0xde];
        ip.extend(payload.to_be_bytes());
        ip.extend([17, 64]);
        ip.extend(std::net::Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2).octets());
        ip.extend(std::net::Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 1).octets());
        let udp = [0x9c, 0x40, 0x27, 0x11, 0, 0, 0, 0].to_vec();
        (ip, udp)
    };
    let (small, large) = (datagram(100), datagram(1000));
    let mut book = RuleBook::default();
    let mut dropped = event("FORWARD", Some(8), TraceKind::Rule, Verdict::Drop, &large);
    dropped.family = "ip6";
    book.add(dropped, 1);
    let mut accepted = event("FORWARD", Some(9), TraceKind::Rule, Verdict::Accept, &small);
    accepted.family = "ip6";
    accepted.id = 8;
    book.add(accepted, 2);
    let (small_key, tuple) = PacketKey::from_headers(&small.0, &small.1).unwrap();
    let (large_key, _) = PacketKey::from_headers(&large.0, &large.1).unwrap();
    assert!(book.drop_rule(small_key, &[tuple]).is_none());
    assert_eq!(
        book.drop_rule(large_key, &[tuple]).map(|r| r.handle),
        Some(Some(8))
    );
}
