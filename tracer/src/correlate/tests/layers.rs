//! Packets with a second layer of headers: tunnels (the underlay hops of a pod's packet) and
//! ICMP errors (about a packet of a known flow).

use std::net::{IpAddr, Ipv4Addr};

use tracer_common::hook::Hook;

use super::{event, nats, packets, run, tuple};
use crate::{
    correlate::{Direction, Record},
    decode::{Encap, EncapKind, HopEvent, IcmpError, Proto, Tuple},
};

const POD_A: u64 = 11;
const NODE_A: u64 = 12;
const NODE_B: u64 = 13;
const POD_B: u64 = 14;

fn ip(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

/// Pod A's SYN to pod B.
fn pods() -> Tuple {
    tuple(ip(10, 244, 1, 2), 40_000, ip(10, 244, 2, 2), 10_001)
}

fn vxlan(src_port: u16) -> Box<Encap> {
    Box::new(Encap {
        kind: EncapKind::Vxlan,
        id: Some(1),
        outer: Tuple {
            proto: Proto::UDP,
            src: ip(198, 18, 50, 1),
            src_port,
            dst: ip(198, 18, 50, 2),
            dst_port: 8472,
        },
        ip_id: 3,
        ip_len: 110,
        ttl: 64,
    })
}

/// A pod's SYN from pod A to pod B across a VXLAN overlay: one skb, the inner tuple all the
/// way, outer headers on the two underlay hops.
fn across(start: u64, skb: u64) -> Vec<HopEvent> {
    let at =
        |ns: u64, dev: &str, hook: Hook, dt: u64| event(start + dt, hook, ns, dev, skb, pods());
    let mut hops = vec![
        at(POD_A, "eth0", Hook::NetDevQueue, 0),
        at(NODE_A, "cni0", Hook::NetifReceiveSkb, 4_000),
        at(NODE_A, "flannel.1", Hook::NetDevQueue, 8_000),
        at(NODE_A, "eth0", Hook::NetDevQueue, 11_000),
        at(NODE_B, "eth0", Hook::NetifReceiveSkb, 13_000),
        at(NODE_B, "flannel.1", Hook::NetifReceiveSkb, 17_000),
        at(POD_B, "eth0", Hook::NetifReceiveSkb, 22_000),
    ];
    for hop in &mut hops[3..5] {
        hop.encap = Some(vxlan(41_234));
        hop.len += 50;
    }
    hops
}

#[test]
fn the_underlay_hops_join_the_inner_packet_in_order() {
    let records = run(across(1_000_000, 0xa000));
    let packets = packets(&records);
    assert_eq!(packets.len(), 1);
    let path: Vec<(u64, String, bool)> = packets[0]
        .hops
        .iter()
        .map(|h| {
            let name = h.event.ifname.as_str().into_owned();
            (h.event.netns_inode, name, h.event.encap.is_some())
        })
        .collect();
    let expected: Vec<(u64, String, bool)> = [
        (POD_A, "eth0", false),
        (NODE_A, "cni0", false),
        (NODE_A, "flannel.1", false),
        (NODE_A, "eth0", true),
        (NODE_B, "eth0", true),
        (NODE_B, "flannel.1", false),
        (POD_B, "eth0", false),
    ]
    .map(|(ns, name, encap)| (ns, name.to_owned(), encap))
    .into();
    assert_eq!(path, expected);
    let gaps: Vec<u64> = packets[0].hops.iter().map(|h| h.since_prev_ns).collect();
    assert_eq!(gaps, [0, 4_000, 4_000, 3_000, 2_000, 4_000, 5_000]);
    // The tunnel is not a NAT.
    assert!(nats(&records).is_empty());
}

/// A "fragmentation needed" that node A sends back to pod A about its too-big datagram.
fn frag_needed(start: u64, skb: u64, quoted: Tuple) -> Vec<HopEvent> {
    let icmp = Tuple {
        proto: Proto::ICMP,
        src: ip(10, 244, 1, 1),
        src_port: 0,
        dst: ip(10, 244, 1, 2),
        dst_port: 0,
    };
    let mut hops = vec![
        event(start, Hook::NetDevQueue, NODE_A, "cni0", skb, icmp),
        event(
            start + 3_000,
            Hook::NetifReceiveSkb,
            POD_A,
            "eth0",
            skb,
            icmp,
        ),
    ];
    for hop in &mut hops {
        hop.has_l4 = false;
        hop.tcp_flags = 0;
        hop.ip_id = 99;
        hop.icmp = Some(Box::new(IcmpError {
            v6: false,
            kind: 3,
            code: 4,
            mtu: Some(1450),
            quoted,
            ip_id: 7,
            ip_len: 1500,
        }));
    }
    hops
}

#[test]
fn an_icmp_error_joins_the_flow_of_the_packet_it_quotes_going_back() {
    let datagram = Tuple {
        proto: Proto::UDP,
        ..pods()
    };
    let mut events: Vec<HopEvent> = across(1_000_000, 0xa000)
        .into_iter()
        .take(2)
        .map(|mut hop| {
            hop.tuple = datagram;
            hop
        })
        .collect();
    events.extend(frag_needed(2_000_000, 0xb000, datagram));
    // An echo request between the same two addresses later is not part of that flow: the
    // error's own tuple was not learned.
    let mut echo = frag_needed(3_000_000, 0xc000, datagram);
    for hop in &mut echo {
        hop.icmp = None;
        hop.ip_id = 100;
    }
    events.extend(echo);
    let records = run(events);
    let packets = packets(&records);
    assert_eq!(packets.len(), 3);
    assert_eq!(packets[1].flow_id, packets[0].flow_id);
    assert_eq!(packets[1].direction, Direction::Reply);
    assert_ne!(packets[2].flow_id, packets[0].flow_id);
    let flow = records
        .iter()
        .find_map(|r| match r {
            Record::Flow(f) if f.flow_id == packets[0].flow_id => Some(f),
            _ => None,
        })
        .unwrap();
    assert_eq!(flow.packets, [1, 1]);
}
