//! Merge tests on synthetic nodes: two pods talking over a VXLAN overlay between nodes whose
//! clocks differ by a known offset, with known one-way times on the wire.

mod input;
mod join;
mod output;

use std::net::{IpAddr, Ipv4Addr};

use tracer_common::{hook::Hook, wire::tcp};

use super::*;
use crate::{
    correlate::{Hop, PacketTrace, tests::event},
    decode::{Encap, EncapKind, HopEvent, Proto, Tuple},
};

/// The host namespace's inode: the same on every node, as on real machines.
const HOST: u64 = 4_026_531_840;
/// Each node's pod namespace.
const POD: [u64; 3] = [4_026_532_301, 4_026_532_302, 4_026_532_303];
/// Time between two hops of a packet on one node.
const STEP: u64 = 3_000;

fn pod_ip(node: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 244, node as u8 + 1, 2))
}

fn underlay(node: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, 50, node as u8 + 1))
}

/// The connection from node 0's pod (port 40000) to node 1's (port 10001), from `from`.
fn tuple(from: usize) -> Tuple {
    let client = (pod_ip(0), 40_000);
    let server = (pod_ip(1), 10_001);
    let ((src, src_port), (dst, dst_port)) = if from == 0 {
        (client, server)
    } else {
        (server, client)
    };
    Tuple {
        proto: Proto::TCP,
        src,
        src_port,
        dst,
        dst_port,
    }
}

/// What a packet carries: flags, sequence, acknowledgement, IP id and length.
#[derive(Debug, Clone, Copy)]
struct Key {
    flags: u8,
    seq: u32,
    ack: u32,
    ip_id: u16,
    ip_len: u16,
}

fn hop(ts: u64, hook: Hook, netns: u64, ifname: &str, skb: u64, t: Tuple, k: Key) -> HopEvent {
    let mut e = event(ts, hook, netns, ifname, skb, t);
    e.tcp_flags = k.flags;
    e.tcp_seq = k.seq;
    e.tcp_ack = k.ack;
    e.ip_id = k.ip_id;
    e.ip_len = k.ip_len;
    e.len = u32::from(k.ip_len) + 14;
    e
}

fn vxlan(from: usize, to: usize, k: Key) -> Option<Box<Encap>> {
    Some(Box::new(Encap {
        kind: EncapKind::Vxlan,
        id: Some(1),
        outer: Tuple {
            proto: Proto::UDP,
            src: underlay(from),
            src_port: 41_000 + k.ip_id,
            dst: underlay(to),
            dst_port: 8472,
        },
        ip_id: k.ip_id.wrapping_add(100),
        ip_len: k.ip_len + 50,
        ttl: 64,
    }))
}

/// A packet's hops on the node it leaves, from `start` (its pod's `eth0`, the host's veth and
/// bridge, the VXLAN device, the uplink where it is encapsulated).
fn leaving(node: usize, to: usize, start: u64, skb: u64, t: Tuple, k: Key) -> Vec<HopEvent> {
    let places = [
        (Hook::NetDevQueue, POD[node], "eth0"),
        (Hook::NetifReceiveSkb, HOST, "veth0"),
        (Hook::NetifReceiveSkb, HOST, "cni0"),
        (Hook::NetDevQueue, HOST, "flannel.1"),
        (Hook::NetDevQueue, HOST, "eth0"),
    ];
    let mut hops: Vec<HopEvent> = places
        .iter()
        .enumerate()
        .map(|(i, &(h, ns, dev))| hop(start + i as u64 * STEP, h, ns, dev, skb, t, k))
        .collect();
    hops[4].encap = vxlan(node, to, k);
    hops
}

/// The same packet's hops on the node it reaches, from `start` on that node's clock.
fn reaching(node: usize, from: usize, start: u64, skb: u64, t: Tuple, k: Key) -> Vec<HopEvent> {
    let places = [
        (Hook::NetifReceiveSkb, HOST, "eth0"),
        (Hook::NetifReceiveSkb, HOST, "flannel.1"),
        (Hook::NetDevQueue, HOST, "cni0"),
        (Hook::NetDevQueue, HOST, "veth0"),
        (Hook::NetifReceiveSkb, POD[node], "eth0"),
    ];
    let mut hops: Vec<HopEvent> = places
        .iter()
        .enumerate()
        .map(|(i, &(h, ns, dev))| hop(start + i as u64 * STEP, h, ns, dev, skb, t, k))
        .collect();
    hops[0].encap = vxlan(from, node, k);
    hops
}

/// The time a hop list spends on its node.
const ON_NODE: u64 = 4 * STEP;

fn trace(packet_id: u64, events: Vec<HopEvent>) -> PacketTrace {
    let first = events[0].ts_ns;
    let mut prev = first;
    let hops = events
        .into_iter()
        .map(|event| {
            let hop = Hop {
                since_prev_ns: event.ts_ns - prev,
                since_first_ns: event.ts_ns - first,
                event,
            };
            prev = hop.event.ts_ns;
            hop
        })
        .collect();
    PacketTrace::new(packet_id, 1, crate::correlate::Direction::Original, hops)
}

fn node(name: &str, packets: Vec<PacketTrace>) -> NodeTrace {
    NodeTrace {
        name: name.to_owned(),
        file: format!("{name}.rec").into(),
        packets,
        names: NameTable::default(),
        stats: RunStats::default(),
    }
}

/// A conversation of `rounds` request/response pairs between node 0's pod and node 1's, on
/// clocks where node 1 reads `theta` more than node 0; one-way times on the wire differ per
/// packet (40-80 us from 0 to 1, 60-120 us back). Returns the nodes and the true one-way
/// times of each packet, in sending order.
fn conversation(rounds: u32, theta: i128) -> (Vec<NodeTrace>, Vec<u64>) {
    let mut packets: [Vec<PacketTrace>; 2] = [Vec::new(), Vec::new()];
    let mut wire = Vec::new();
    let on_b = |t: u64| (i128::from(t) + theta) as u64;
    let mut id = 0;
    let mut next_id = || {
        id += 1;
        id
    };
    for i in 0..rounds {
        let start = 100_000_000_000 + u64::from(i) * 1_000_000;
        let out = 40_000 + u64::from(i) * 7_919 % 40_000;
        let back = 60_000 + u64::from(i) * 104_729 % 60_000;
        let request = Key {
            flags: if i == 0 {
                tcp::SYN
            } else {
                tcp::PSH | tcp::ACK
            },
            seq: 1_000 + i * 64,
            ack: 5_000 + i * 64,
            ip_id: 7 + i as u16,
            ip_len: 104,
        };
        let skb = 0xffff_8880_0000_0000 + u64::from(i) * 0x1000;
        packets[0].push(trace(
            next_id(),
            leaving(0, 1, start, skb, tuple(0), request),
        ));
        let arrives = start + ON_NODE + out;
        let skb_b = 0xffff_9990_0000_0000 + u64::from(i) * 0x1000;
        packets[1].push(trace(
            next_id(),
            reaching(1, 0, on_b(arrives), skb_b, tuple(0), request),
        ));
        let response = Key {
            flags: if i == 0 {
                tcp::SYN | tcp::ACK
            } else {
                tcp::PSH | tcp::ACK
            },
            seq: 5_000 + i * 64,
            ack: 1_064 + i * 64,
            ip_id: 900 + i as u16,
            ip_len: 104,
        };
        let leaves = arrives + ON_NODE + 100_000;
        let skb_b = skb_b + 0x800;
        packets[1].push(trace(
            next_id(),
            leaving(1, 0, on_b(leaves), skb_b, tuple(1), response),
        ));
        let skb = skb + 0x800;
        let back_at = leaves + ON_NODE + back;
        packets[0].push(trace(
            next_id(),
            reaching(0, 1, back_at, skb, tuple(1), response),
        ));
        wire.extend([out, back]);
    }
    let [a, b] = packets;
    (vec![node("a", a), node("b", b)], wire)
}

#[test]
fn merge_recovers_a_known_offset_within_its_uncertainty() {
    for theta in [5_000_000_000, -20_123_456_789, 0, 37] {
        let (nodes, _) = conversation(25, theta);
        let merged = join_and_time(&nodes, 0).unwrap();
        assert_eq!(merged.clocks[0].basis, Basis::Reference);
        let clock = merged.clocks[1];
        let uncertainty = i128::from(clock.uncertainty_ns.unwrap());
        assert!(
            (clock.offset_ns - theta).abs() <= uncertainty,
            "offset {} is {} from the true {theta}, beyond +/- {uncertainty}",
            clock.offset_ns,
            clock.offset_ns - theta
        );
        // The bound is the spread of the fastest packets, not of the clocks.
        assert!(uncertainty <= 60_000, "uncertainty {uncertainty}");
        match clock.basis {
            Basis::TwoWay { via, packets, .. } => assert_eq!((via, packets), (0, [25, 25])),
            other => panic!("not two-way: {other:?}"),
        }
    }
}

#[test]
fn merge_places_the_other_nodes_against_the_reference_asked_for() {
    let theta = 3_000_000_000;
    let (nodes, _) = conversation(9, theta);
    let merged = join_and_time(&nodes, 1).unwrap();
    assert_eq!(merged.clocks[1].basis, Basis::Reference);
    let clock = merged.clocks[0];
    let uncertainty = i128::from(clock.uncertainty_ns.unwrap());
    assert!((clock.offset_ns + theta).abs() <= uncertainty);
}

#[test]
fn merge_joins_each_crossing_packet_once_in_path_order() {
    let (nodes, _) = conversation(10, -7_000_000_000);
    let merged = join_and_time(&nodes, 0).unwrap();
    // Every packet crossed: 20 merged packets of two parts, each node packet in one of them.
    assert_eq!(merged.packets.len(), 20);
    assert_eq!(merged.crossed(), 20);
    let mut seen: Vec<(usize, usize)> = merged.packets.iter().flatten().copied().collect();
    seen.sort_unstable();
    let expected: Vec<(usize, usize)> = (0..2).flat_map(|n| (0..20).map(move |i| (n, i))).collect();
    assert_eq!(seen, expected);
    for parts in &merged.packets {
        let [(from, i), (to, j)] = parts[..] else {
            panic!("{parts:?}")
        };
        assert_ne!(from, to);
        let (left, reached) = (&nodes[from].packets[i], &nodes[to].packets[j]);
        assert_eq!(
            left.hops.last().unwrap().event.ip_id,
            reached.hops[0].event.ip_id
        );
        assert_eq!(left.hops[0].event.tuple, reached.hops[0].event.tuple);
    }
}

#[test]
fn merge_shows_no_hop_before_the_one_before_it_beyond_the_uncertainty() {
    let (nodes, wire) = conversation(30, 12_345_678_901);
    let merged = join_and_time(&nodes, 0).unwrap();
    let uncertainty = i128::from(merged.clocks[1].uncertainty_ns.unwrap());
    let timeline = render::Timeline::build(&nodes, &merged);
    let mut gaps = Vec::new();
    for (record, origin) in &timeline.records {
        let crate::correlate::Record::Packet(packet) = record else {
            continue;
        };
        assert_eq!(packet.hops.len(), 10);
        for (pair, from) in packet.hops.windows(2).zip(origin.windows(2)) {
            let gap = i128::from(pair[1].event.ts_ns) - i128::from(pair[0].event.ts_ns);
            if from[0].node != from[1].node {
                assert!(gap >= -uncertainty, "gap {gap} beyond -{uncertainty}");
                gaps.push(gap);
            } else {
                assert_eq!(gap, i128::from(STEP));
            }
        }
    }
    // Packets are in time order, each crossing once: the corrected gaps are the true one-way
    // times moved by the estimate's error, the same for every packet of a direction.
    assert_eq!(gaps.len(), wire.len());
    let error = gaps[0] - i128::from(wire[0]);
    for (i, (gap, true_time)) in gaps.iter().zip(&wire).enumerate() {
        let moved = if i % 2 == 0 { error } else { -error };
        assert_eq!(gap - i128::from(*true_time), moved);
    }
    assert!(error.abs() <= uncertainty);
}

#[test]
fn merge_refuses_nodes_without_a_packet_in_common() {
    let (mut nodes, _) = conversation(3, 0);
    // Node b saw other traffic: different IP ids.
    for packet in &mut nodes[1].packets {
        for hop in &mut packet.hops {
            hop.event.ip_id ^= 0x5555;
        }
    }
    let err = join_and_time(&nodes, 0).unwrap_err();
    assert!(matches!(err, MergeError::NothingInCommon { ref nodes } if nodes == "b"));
    assert!(err.to_string().contains("filter that matches there too"));
}

#[test]
fn merge_refuses_the_same_node_twice() {
    let (nodes, _) = conversation(3, 0);
    let copy = node("a-again", nodes[0].packets.clone());
    let err = same_node(&[nodes.into_iter().next().unwrap(), copy]).unwrap_err();
    assert!(
        matches!(err, MergeError::SameNode { count: 30, .. }),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "a.rec and a-again.rec come from the same node: 30 hop events are in both (same kernel \
         time, sk_buff and hook); give each node's trace once"
    );
}
