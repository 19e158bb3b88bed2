//! Joining: chains through several nodes, one-way traffic, repeated identities, and what the
//! join compares.

use super::*;
use crate::merge::join::Links;

/// The hops of one packet on every node of `route`, leaving its first node at `start` (true
/// time) and taking `wire` on each link; `clocks[n]` is what node n's clock reads more than
/// the true time. Returns (node, hops) per node of the route.
fn path(
    route: &[usize],
    clocks: &[i128],
    start: u64,
    wire: u64,
    t: Tuple,
    k: Key,
    skb: u64,
) -> Vec<(usize, Vec<HopEvent>)> {
    let on = |node: usize, true_ts: u64| (i128::from(true_ts) + clocks[node]) as u64;
    let mut at = start;
    let mut ttl = 64;
    let mut out = Vec::new();
    for (i, &node) in route.iter().enumerate() {
        let skb = skb + node as u64 * 0x10_0000;
        let mut hops = if i == 0 {
            leaving(node, route[1], on(node, at), skb, t, k)
        } else if i + 1 == route.len() {
            reaching(node, route[i - 1], on(node, at), skb, t, k)
        } else {
            // Forwarded: in on the uplink and through the VXLAN device, and out again.
            let mut hops = reaching(node, route[i - 1], on(node, at), skb, t, k);
            hops.truncate(2);
            let mut out = leaving(node, route[i + 1], on(node, at) + 2 * STEP, skb, t, k);
            hops.extend(out.drain(3..));
            hops
        };
        for (at, e) in hops.iter_mut().enumerate() {
            // Routed on by a node in the middle: one hop less to live from there.
            e.ttl = if at >= 2 && i > 0 && i + 1 < route.len() {
                ttl - 1
            } else {
                ttl
            };
        }
        ttl = hops.last().unwrap().ttl;
        at += hops.last().unwrap().ts_ns - hops[0].ts_ns + wire;
        out.push((node, hops));
    }
    out
}

/// Requests along `route` and responses back, `rounds` times; packets per node.
fn traffic(route: &[usize], clocks: &[i128], rounds: u32) -> Vec<NodeTrace> {
    let mut packets: Vec<Vec<PacketTrace>> = vec![Vec::new(); clocks.len()];
    let (first, last) = (route[0], route[route.len() - 1]);
    let request_tuple = Tuple {
        src: pod_ip(first),
        dst: pod_ip(last),
        ..tuple(0)
    };
    let back: Vec<usize> = route.iter().rev().copied().collect();
    for i in 0..rounds {
        let start = 5_000_000_000 + u64::from(i) * 1_000_000;
        let request = Key {
            flags: tcp::PSH | tcp::ACK,
            seq: 100 + i,
            ack: 200 + i,
            ip_id: i as u16,
            ip_len: 80,
        };
        let response = Key {
            ip_id: 1_000 + i as u16,
            ..request
        };
        let skb = 0xffff_8880_0000_0000 + u64::from(i) * 0x1000;
        let wire = 30_000 + u64::from(i % 5) * 10_000;
        for (node, hops) in path(route, clocks, start, wire, request_tuple, request, skb) {
            let id = packets[node].len() as u64 + 1;
            packets[node].push(trace(id, hops));
        }
        let start = start + 400_000;
        let reply = request_tuple.reversed();
        for (node, hops) in path(&back, clocks, start, wire + 5_000, reply, response, skb + 8) {
            let id = packets[node].len() as u64 + 1;
            packets[node].push(trace(id, hops));
        }
    }
    packets
        .into_iter()
        .enumerate()
        .map(|(n, p)| node(["a", "b", "c"][n], p))
        .collect()
}

#[test]
fn merge_chains_a_packet_through_three_nodes() {
    let clocks = [0, 2_000_000_000, -3_000_000_000];
    let nodes = traffic(&[0, 1, 2], &clocks, 8);
    let merged = join_and_time(&nodes, 0).unwrap();
    assert_eq!(merged.packets.len(), 16);
    for parts in &merged.packets {
        let route: Vec<usize> = parts.iter().map(|&(node, _)| node).collect();
        assert!(route == [0, 1, 2] || route == [2, 1, 0], "{route:?}");
    }
    // c is placed through b, and its uncertainty adds b's.
    let (b, c) = (merged.clocks[1], merged.clocks[2]);
    let Basis::TwoWay {
        via,
        uncertainty_ns: pair,
        ..
    } = c.basis
    else {
        panic!("{:?}", c.basis)
    };
    assert_eq!(via, 1);
    assert_eq!(c.uncertainty_ns, Some(b.uncertainty_ns.unwrap() + pair));
    for (clock, truth) in merged.clocks.iter().zip(clocks) {
        let uncertainty = i128::from(clock.uncertainty_ns.unwrap());
        assert!((clock.offset_ns - truth).abs() <= uncertainty, "{clock:?}");
    }
}

#[test]
fn merge_assumes_the_fastest_packet_took_no_time_when_packets_went_one_way() {
    let theta = 8_000_000_000;
    let (mut nodes, wire) = conversation(6, theta);
    // Only the requests: node a's packets that left, node b's that arrived.
    nodes[0]
        .packets
        .retain(|p| crate::merge::join::departure(p).is_some());
    nodes[1]
        .packets
        .retain(|p| crate::merge::join::arrival(p).is_some());
    let merged = join_and_time(&nodes, 0).unwrap();
    let clock = merged.clocks[1];
    assert_eq!(clock.uncertainty_ns, None);
    assert_eq!(
        clock.basis,
        Basis::OneWay {
            via: 0,
            packets: [6, 0]
        }
    );
    let fastest = wire.iter().step_by(2).min().unwrap();
    assert_eq!(clock.offset_ns, theta + i128::from(*fastest));
    let mut text = Vec::new();
    json_out::clock_lines(&mut text, &nodes, &merged).unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.contains(
            "node b (b.rec): offset +8.000040s against a NOT ESTIMATED: packets went one way \
             only (6 a->b); assumed the fastest took no time"
        ),
        "{text}"
    );
}

/// A UDP datagram from node 0's pod that leaves at `start` (node 0's clock) and reaches node 1
/// `wire` later; `mark` tells the copies apart (the join does not look at it).
fn datagram(start: u64, wire: u64, theta: i128, mark: u32) -> [Vec<HopEvent>; 2] {
    let t = Tuple {
        proto: Proto::UDP,
        ..tuple(0)
    };
    let k = Key {
        flags: 0,
        seq: 0,
        ack: 0,
        ip_id: 0,
        ip_len: 60,
    };
    let skb = 0xffff_7770_0000_0000 + u64::from(mark) * 0x1000;
    let mut out = leaving(0, 1, start, skb, t, k);
    let arrives = (i128::from(start + ON_NODE + wire) + theta) as u64;
    let mut back = reaching(1, 0, arrives, skb + 0x800, t, k);
    for e in out.iter_mut().chain(&mut back) {
        e.mark = mark;
        e.has_l4 = true;
        e.tcp_flags = 0;
    }
    [out, back]
}

#[test]
fn merge_joins_datagrams_that_look_alike_by_time() {
    let theta = -4_000_000_000;
    let (mut nodes, _) = conversation(10, theta);
    // Three identical datagrams leave a, two reach b: the second was lost on the way.
    for (mark, start, wire, reached) in [
        (1, 100_100_000_000, 50_000, true),
        (2, 100_300_000_000, 70_000, false),
        (3, 100_500_000_000, 60_000, true),
    ] {
        let [out, back] = datagram(start, wire, theta, mark);
        nodes[0].packets.push(trace(100 + u64::from(mark), out));
        if reached {
            nodes[1].packets.push(trace(100 + u64::from(mark), back));
        }
    }
    let merged = join_and_time(&nodes, 0).unwrap();
    let marks: Vec<Vec<u32>> = merged
        .packets
        .iter()
        .map(|parts| {
            parts
                .iter()
                .map(|&(n, i)| nodes[n].packets[i].hops[0].event.mark)
                .collect()
        })
        .filter(|marks: &Vec<u32>| marks[0] != 0)
        .collect();
    assert_eq!(marks, [vec![1, 1], vec![2], vec![3, 3]]);
}

#[test]
fn merge_joins_by_what_survives_the_wire_and_never_by_kernel_addresses() {
    let (mut nodes, _) = conversation(4, 1_000_000_000);
    // The same sk_buff addresses on both nodes mean nothing...
    let a_skbs: Vec<u64> = nodes[0]
        .packets
        .iter()
        .map(|p| p.hops[0].event.skb)
        .collect();
    for (packet, skb) in nodes[1].packets.iter_mut().zip(a_skbs) {
        for hop in &mut packet.hops {
            hop.event.skb = skb;
        }
    }
    // ...while an IP length that differs keeps a request from joining.
    for hop in &mut nodes[1].packets[2].hops {
        hop.event.ip_len += 4;
    }
    let merged = join_and_time(&nodes, 0).unwrap();
    assert_eq!(merged.crossed(), 7);
    assert_eq!(merged.packets.len(), 9);
    assert!(merged.packets.contains(&vec![(1, 2)]));
}

#[test]
fn merge_joins_a_packet_that_reached_two_nodes_to_neither() {
    let clocks = [0, 0, 0];
    let mut nodes = traffic(&[0, 1], &clocks, 2);
    let k = Key {
        flags: tcp::ACK,
        seq: 9,
        ack: 9,
        ip_id: 4242,
        ip_len: 52,
    };
    let t = tuple(0);
    nodes[0]
        .packets
        .push(trace(50, leaving(0, 1, 7_000_000_000, 0x1, t, k)));
    nodes[1]
        .packets
        .push(trace(50, reaching(1, 0, 7_000_100_000, 0x2, t, k)));
    nodes[2]
        .packets
        .push(trace(50, reaching(2, 0, 7_000_100_000, 0x3, t, k)));
    let packets: Vec<&[PacketTrace]> = nodes.iter().map(|n| n.packets.as_slice()).collect();
    let links = Links::find(&packets);
    let chains = links.chains(&packets);
    assert_eq!(chains.iter().filter(|c| c.len() == 2).count(), 4);
    for flooded in [(0, 4), (1, 4), (2, 0)] {
        assert!(chains.contains(&vec![flooded]), "{flooded:?} joined");
    }
}
