use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::filter::parse;

fn matches_of(expr: &str) -> Vec<Match> {
    matches(Some(&parse(expr).unwrap()))
}

#[test]
fn no_filter_traces_every_packet() {
    assert_eq!(matches(None), vec![Match::default()]);
}

#[test]
fn a_port_is_traced_both_ways_for_each_transport() {
    let all = matches_of("port 10001");
    // Source or destination port, each for TCP, UDP and SCTP; the reverse adds nothing new.
    assert_eq!(all.len(), 6, "{all:?}");
    for proto in [6, 17, 132] {
        for dst in [false, true] {
            assert!(all.contains(&Match {
                proto: Some(proto),
                ports: vec![PortMatch {
                    dst,
                    lo: 10001,
                    hi: 10001
                }],
                ..Match::default()
            }));
        }
    }
}

#[test]
fn a_source_host_is_traced_in_the_reply_direction_too() {
    let all = matches_of("tcp and src host 172.17.0.2");
    let net = |dst| NetMatch {
        dst,
        addr: IpAddr::V4(Ipv4Addr::new(172, 17, 0, 2)),
        prefix: 32,
    };
    assert_eq!(
        all,
        vec![
            Match {
                family: Some(2),
                proto: Some(6),
                nets: vec![net(false)],
                ports: vec![]
            },
            Match {
                family: Some(2),
                proto: Some(6),
                nets: vec![net(true)],
                ports: vec![]
            },
        ]
    );
}

#[test]
fn what_nf_tables_cannot_test_widens_the_match() {
    assert_eq!(matches_of("not port 22"), vec![Match::default()]);
    // `tcp and not port 22`: every TCP packet.
    let all = matches_of("tcp and not port 22");
    assert_eq!(
        all,
        vec![Match {
            proto: Some(6),
            ..Match::default()
        }]
    );
    // A contradiction marks nothing.
    assert_eq!(matches_of("tcp and udp"), vec![]);
}

#[test]
fn too_many_alternatives_trace_every_packet() {
    let expr = (1..=40)
        .map(|p| format!("port {p}"))
        .collect::<Vec<_>>()
        .join(" or ");
    assert_eq!(matches_of(&expr), vec![Match::default()]);
}

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
        ip_id: 0x1234,
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
        ip_id: 9,
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
