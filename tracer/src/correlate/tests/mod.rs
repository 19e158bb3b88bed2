//! Correlator tests on hand-built events: packet identity, flows, NAT and bounded memory.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
};

use tracer_common::hook::Hook;

use super::{packet::PacketTable, *};
use crate::decode::{Conntrack, DropInfo, HopEvent, IfName, Process, Proto, Tuple};

mod layers;

const CTR: u64 = 1;
const HOST: u64 = 2;
const REMOTE: u64 = 3;

fn addr(last: u8, net: [u8; 3]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(net[0], net[1], net[2], last))
}

fn tuple(src: IpAddr, src_port: u16, dst: IpAddr, dst_port: u16) -> Tuple {
    Tuple {
        proto: Proto::TCP,
        src,
        src_port,
        dst,
        dst_port,
    }
}

/// 172.17.0.2:40000 > 198.19.0.252:10001, as the container sends it.
fn inner() -> Tuple {
    tuple(addr(2, [172, 17, 0]), 40000, addr(252, [198, 19, 0]), 10001)
}

/// The same after MASQUERADE to 198.18.0.2.
fn outer() -> Tuple {
    tuple(addr(2, [198, 18, 0]), 40000, addr(252, [198, 19, 0]), 10001)
}

/// A TCP SYN at one hook (ifindex 2), to be adjusted by the test.
pub(crate) fn event(
    ts_ns: u64,
    hook: Hook,
    netns: u64,
    ifname: &str,
    skb: u64,
    tuple: Tuple,
) -> HopEvent {
    HopEvent {
        ts_ns,
        hook,
        skb,
        skb_head: skb + 0x1000,
        netns_inode: netns,
        tc: false,
        ifindex: 2,
        ifname: IfName::new(ifname),
        tuple,
        has_l4: true,
        fragment: false,
        nonlinear: false,
        ipvs: false,
        tcp_flags: 0x02,
        tcp_seq: 1000,
        tcp_ack: 0,
        ip_id: 7,
        ttl: 64,
        len: 60,
        ip_len: 60,
        payload_len: 0,
        mark: 0,
        conntrack: None,
        drop: None,
        headers: None,
        process: None,
        encap: None,
        icmp: None,
    }
}

/// The SYN's path from the container to the remote, masqueraded after docker0.
fn syn_path(start: u64, skb: u64, conntrack: Option<Conntrack>) -> Vec<HopEvent> {
    let mut hops = vec![
        event(start, Hook::NetDevQueue, CTR, "eth0", skb, inner()),
        event(start + 2_000, Hook::NetifRx, HOST, "veth1", skb, inner()),
        event(
            start + 5_000,
            Hook::NetifReceiveSkb,
            HOST,
            "docker0",
            skb,
            inner(),
        ),
        event(start + 9_000, Hook::NetDevQueue, HOST, "eth0", skb, outer()),
        event(
            start + 12_000,
            Hook::NetifReceiveSkb,
            REMOTE,
            "eth0",
            skb,
            outer(),
        ),
    ];
    for hop in &mut hops[2..4] {
        hop.conntrack = conntrack.map(Arc::new);
    }
    hops
}

/// The SYN-ACK back from the remote, un-NATed after the uplink.
fn syn_ack_path(start: u64, skb: u64) -> Vec<HopEvent> {
    let mut hops = vec![
        event(
            start,
            Hook::NetDevQueue,
            REMOTE,
            "eth0",
            skb,
            outer().reversed(),
        ),
        event(
            start + 2_000,
            Hook::NetifReceiveSkb,
            HOST,
            "eth0",
            skb,
            outer().reversed(),
        ),
        event(
            start + 6_000,
            Hook::NetDevQueue,
            HOST,
            "docker0",
            skb,
            inner().reversed(),
        ),
        event(
            start + 9_000,
            Hook::NetifReceiveSkb,
            CTR,
            "eth0",
            skb,
            inner().reversed(),
        ),
    ];
    for hop in &mut hops {
        hop.tcp_flags = 0x12;
        hop.tcp_seq = 5000;
        hop.tcp_ack = 1001;
        hop.ip_id = 0;
    }
    hops
}

fn masquerade_ct() -> Conntrack {
    Conntrack {
        id: 0xffff_0000,
        info: 2,
        orig: inner(),
        reply: outer().reversed(),
    }
}

fn run(events: Vec<HopEvent>) -> Vec<Record> {
    let mut correlator = Correlator::new(Limits::default());
    for event in events {
        correlator.push(event);
    }
    correlator.finish();
    std::iter::from_fn(|| correlator.pop()).collect()
}

fn packets(records: &[Record]) -> Vec<&PacketTrace> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Packet(p) => Some(p),
            _ => None,
        })
        .collect()
}

fn nats(records: &[Record]) -> Vec<&NatRecord> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Nat(n) => Some(n),
            _ => None,
        })
        .collect()
}

#[test]
fn one_skb_across_namespaces_is_one_packet_with_timing() {
    let records = run(syn_path(1_000_000, 0xa000, Some(masquerade_ct())));
    let packets = packets(&records);
    assert_eq!(packets.len(), 1);
    let gaps: Vec<u64> = packets[0].hops.iter().map(|h| h.since_prev_ns).collect();
    assert_eq!(gaps, [0, 2_000, 3_000, 4_000, 3_000]);
    assert_eq!(packets[0].hops.last().unwrap().since_first_ns, 12_000);
}

#[test]
fn syn_and_syn_ack_share_a_flow_and_each_direction_reports_its_nat_once() {
    let mut events = syn_path(1_000_000, 0xa000, Some(masquerade_ct()));
    events.extend(syn_ack_path(2_000_000, 0xb000));
    events.extend(
        syn_path(3_000_000, 0xc000, Some(masquerade_ct()))
            .into_iter()
            .map(|mut e| {
                e.tcp_flags = 0x10;
                e.tcp_seq = 1001;
                e.ip_id = 8;
                e
            }),
    );
    let records = run(events);
    let packets = packets(&records);
    assert_eq!(packets.len(), 3);
    assert!(packets.iter().all(|p| p.flow_id == packets[0].flow_id));
    let directions: Vec<Direction> = packets.iter().map(|p| p.direction).collect();
    assert_eq!(
        directions,
        [Direction::Original, Direction::Reply, Direction::Original]
    );
    let nats = nats(&records);
    assert_eq!(nats.len(), 2, "{nats:#?}");
    assert_eq!(
        (nats[0].direction, nats[0].kind),
        (Direction::Original, NatKind::Snat)
    );
    assert_eq!((nats[0].before, nats[0].after), (inner(), outer()));
    assert_eq!(nats[0].at.map(|at| at.netns_inode), Some(HOST));
    assert_eq!(
        (nats[1].direction, nats[1].kind),
        (Direction::Reply, NatKind::Snat)
    );
    assert_eq!(nats[1].after, inner().reversed());
}

#[test]
fn observed_rewrites_stitch_flows_without_conntrack() {
    let mut events = syn_path(1_000_000, 0xa000, None);
    events.extend(syn_ack_path(2_000_000, 0xb000));
    let records = run(events);
    let packets = packets(&records);
    assert_eq!(packets[0].flow_id, packets[1].flow_id);
    assert_eq!(packets[1].direction, Direction::Reply);
    let Some(Record::Flow(flow)) = records.last() else {
        panic!("flow summary last: {records:#?}");
    };
    assert_eq!(flow.orig, inner());
    assert_eq!(flow.reply, outer().reversed());
}

/// A SYN to a virtual service: IPVS rewrites the destination to a real server (the packet
/// is marked IPVS's from then on), and MASQUERADE the source one hop later. Each step is a
/// record of its own, only the first said to be IPVS's.
#[test]
fn two_rewrites_of_one_packet_are_two_records_and_ipvs_is_named() {
    let service = tuple(
        addr(2, [172, 17, 0]),
        40000,
        addr(10, [198, 18, 100]),
        10001,
    );
    let mut hops = syn_path(1_000_000, 0xa000, None);
    for hop in &mut hops[..3] {
        hop.tuple = service;
    }
    let mut rewritten = hops[2].clone();
    rewritten.ts_ns += 1_000;
    rewritten.hook = Hook::NfNatManipPkt;
    rewritten.ifname = IfName::new("eth0");
    rewritten.tuple = inner();
    for hop in [&mut rewritten].into_iter().chain(&mut hops[3..4]) {
        hop.ipvs = true;
    }
    hops.insert(3, rewritten);
    let records = run(hops);
    let nats = nats(&records);
    let found: Vec<_> = nats
        .iter()
        .map(|n| (n.direction, n.kind, n.before, n.after, n.ipvs))
        .collect();
    assert_eq!(
        found,
        [
            (Direction::Original, NatKind::Dnat, service, inner(), true),
            (Direction::Original, NatKind::Snat, inner(), outer(), false),
        ]
    );
}

#[test]
fn conntrack_shows_nat_that_no_hop_observed() {
    // Only the post-NAT hops were traced (say, tracer filtered by interface).
    let events: Vec<HopEvent> = syn_path(1_000_000, 0xa000, Some(masquerade_ct()))
        .into_iter()
        .skip(3)
        .map(|mut e| {
            e.conntrack = Some(Arc::new(masquerade_ct()));
            e
        })
        .collect();
    let nats_seen = nats(&run(events)).into_iter().cloned().collect::<Vec<_>>();
    assert_eq!(nats_seen.len(), 1);
    assert_eq!(nats_seen[0].source, NatSource::Conntrack);
    assert_eq!(
        (nats_seen[0].before, nats_seen[0].after),
        (inner(), outer())
    );
}

#[test]
fn a_reused_skb_address_with_other_content_is_a_new_packet() {
    let mut events = syn_path(1_000_000, 0xa000, None);
    let mut other = event(1_020_000, Hook::NetDevQueue, CTR, "eth0", 0xa000, inner());
    other.ip_id = 99;
    other.tcp_seq = 77;
    events.push(other);
    assert_eq!(packets(&run(events)).len(), 2);
}

#[test]
fn clones_and_tc_events_join_by_content_within_the_window() {
    let mut events = syn_path(1_000_000, 0xa000, None);
    // A clone: new skb, same content, 1 us after the last hop.
    events.push(event(
        1_013_000,
        Hook::NetDevQueue,
        HOST,
        "veth2",
        0xd000,
        inner(),
    ));
    // A TC hop: no skb at all.
    let mut tc = event(1_014_000, Hook::TcIngress, 0, "", 0, outer());
    tc.tc = true;
    tc.skb_head = 0;
    events.push(tc);
    // The same content much later is a retransmission: a new packet.
    events.push(event(
        901_000_000,
        Hook::NetDevQueue,
        CTR,
        "eth0",
        0xe000,
        inner(),
    ));
    let records = run(events);
    let packets = packets(&records);
    assert_eq!(packets.len(), 2);
    assert_eq!(packets[0].hops.len(), 7);
}

#[test]
fn tc_hops_take_the_place_of_their_neighbour_on_the_same_interface() {
    let mut events = syn_path(1_000_000, 0xa000, None);
    let mut tc = event(1_005_500, Hook::TcIngress, 0, "", 0, inner());
    tc.tc = true;
    tc.ifindex = 2;
    events.push(tc);
    let records = run(events);
    let hop = &packets(&records)[0].hops[3];
    assert_eq!(hop.event.hook, Hook::TcIngress);
    assert_eq!(
        (hop.event.netns_inode, hop.event.ifname),
        (HOST, IfName::new("docker0"))
    );
}

#[test]
fn packets_complete_after_the_idle_time_and_flows_after_closing() {
    let limits = Limits::default();
    let mut correlator = Correlator::new(limits.clone());
    for event in syn_path(1_000_000, 0xa000, None) {
        correlator.push(event);
    }
    correlator.tick(1_012_000 + limits.packet_idle_ns - 1);
    assert!(correlator.pop().is_none(), "still within the idle time");
    correlator.tick(1_012_000 + limits.packet_idle_ns);
    assert!(matches!(correlator.pop(), Some(Record::Nat(_))));
    assert!(matches!(correlator.pop(), Some(Record::Packet(_))));
    // An RST closes the flow; it ends after the grace time.
    let mut rst = event(500_000_000, Hook::NetDevQueue, CTR, "eth0", 0xf000, inner());
    rst.tcp_flags = 0x04;
    correlator.push(rst);
    correlator.tick(500_000_000 + limits.packet_idle_ns);
    assert!(matches!(correlator.pop(), Some(Record::Packet(_))));
    assert_eq!(correlator.sizes(), (0, 1));
    correlator.tick(500_000_000 + limits.closed_flow_grace_ns);
    assert!(matches!(correlator.pop(), Some(Record::Flow(f)) if f.packets == [2, 0]));
    assert_eq!(correlator.sizes(), (0, 0));
}

/// Sends single-hop TCP packets (time, flags, sequence number) from the container, each
/// completed before the next; the records of all of them, with the flows ended at the finish.
fn records_of_segments(segments: &[(u64, u8, u32)]) -> Vec<Record> {
    let limits = Limits::default();
    let mut correlator = Correlator::new(limits.clone());
    let mut records = Vec::new();
    for (n, &(ts, flags, seq)) in segments.iter().enumerate() {
        let mut e = event(
            ts,
            Hook::NetDevQueue,
            CTR,
            "eth0",
            0xa000 + n as u64,
            inner(),
        );
        e.tcp_flags = flags;
        e.tcp_seq = seq;
        correlator.push(e);
        correlator.tick(ts + limits.packet_idle_ns);
        records.extend(std::iter::from_fn(|| correlator.pop()));
    }
    correlator.finish();
    records.extend(std::iter::from_fn(|| correlator.pop()));
    records
}

/// (flow id, packets per direction) of every flow record, in order.
fn flows(records: &[Record]) -> Vec<(u64, [u64; 2])> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Flow(f) => Some((f.flow_id, f.packets)),
            _ => None,
        })
        .collect()
}

/// A connection that closed, and a new one from the same port within the grace time (the
/// kernel chose the port again): two flows, the first ended by the second's SYN.
#[test]
fn a_new_connection_on_a_closed_flows_tuple_is_a_new_flow() {
    let records = records_of_segments(&[
        (1_000_000, 0x02, 1000),
        (2_000_000, 0x14, 1001),
        (3_000_000, 0x02, 9000),
    ]);
    let flows = flows(&records);
    assert_eq!(flows.len(), 2, "{flows:?}");
    assert_eq!(flows[0].1, [2, 0], "SYN and RST in the first flow");
    assert_eq!(flows[1].1, [1, 0], "the new SYN alone in the second");
    let packets = packets(&records);
    assert_eq!(packets[2].flow_id, flows[1].0);
}

/// A SYN reset and sent again with the same sequence number (the client's answer when the
/// server replied from TIME_WAIT with an ACK): one connection attempt, one flow.
#[test]
fn a_syn_retried_after_a_reset_stays_in_its_flow() {
    let records = records_of_segments(&[
        (1_000_000, 0x02, 1000),
        (2_000_000, 0x04, 77),
        (3_000_000, 0x02, 1000),
    ]);
    let flows = flows(&records);
    assert_eq!(flows.len(), 1, "{flows:?}");
    assert_eq!(flows[0].1, [3, 0]);
}

/// Interfaces that come and go (a container per flow): the segments of flows that ended are
/// forgotten, so the shared table does not grow with every interface ever seen.
#[test]
fn segments_of_ended_flows_are_forgotten() {
    let limits = Limits::default();
    let mut correlator = Correlator::new(limits.clone());
    let (mut most, mut most_places, mut most_paths) = (0, 0, 0);
    for i in 0..10_000u64 {
        let start = i * limits.flow_idle_ns / 4;
        let src = tuple(
            addr(2, [10, (i >> 8) as u8, i as u8]),
            40_000,
            addr(1, [10, 255, 0]),
            10001,
        );
        for (hop, hook) in [Hook::NetDevQueue, Hook::NetifRx].into_iter().enumerate() {
            let mut e = event(
                start + hop as u64 * 1_000,
                hook,
                CTR,
                "eth0",
                0x10_0000 + i,
                src,
            );
            // A new interface for every flow.
            e.ifindex = 100 + i as u32;
            correlator.push(e);
        }
        correlator.tick(start + limits.packet_idle_ns);
        while correlator.pop().is_some() {}
        most = most.max(correlator.segments());
        most_places = most_places.max(correlator.places());
        most_paths = most_paths.max(correlator.paths());
    }
    assert!(
        correlator.sizes().1 < 10,
        "flows expire: {:?}",
        correlator.sizes()
    );
    assert!(
        most < 200,
        "{most} segments kept for 10000 flows of which a few are live"
    );
    assert!(
        most_places < 200,
        "{most_places} last places kept for 10000 flows of which a few are live"
    );
    assert!(
        most_paths < 200,
        "{most_paths} paths kept for 10000 flows of which a few are live"
    );
    correlator.finish();
    while correlator.pop().is_some() {}
    assert_eq!(
        (
            correlator.segments(),
            correlator.places(),
            correlator.paths()
        ),
        (0, 0, 0)
    );
}

/// Flows long enough to keep samples give them back when they end, so the shared sample
/// store holds only the live flows' and their percentiles stay their own.
#[test]
fn samples_of_ended_flows_are_given_back() {
    let limits = Limits::default();
    let mut correlator = Correlator::new(limits.clone());
    let mut most = 0;
    let mut summaries = 0;
    for i in 0..2_000u64 {
        let start = i * limits.flow_idle_ns / 4;
        let src = tuple(
            addr(2, [10, (i >> 8) as u8, i as u8]),
            40_000,
            addr(1, [10, 255, 0]),
            10001,
        );
        // Five packets, the gap between their hops 1 to 5 us plus the flow's number.
        for packet in 0..5u64 {
            let at = start + packet * 10 * limits.packet_idle_ns;
            for (hop, hook) in [Hook::NetDevQueue, Hook::NetifRx].into_iter().enumerate() {
                let gap = hop as u64 * ((packet + 1) * 1_000 + i);
                let skb = 0x10_0000 + i * 8 + packet;
                correlator.push(event(at + gap, hook, CTR, "eth0", skb, src));
            }
            correlator.tick(at + limits.packet_idle_ns);
        }
        while let Some(record) = correlator.pop() {
            if let Record::Flow(flow) = record {
                let latency = flow.hops[0].latency;
                let own = flow.flow_id - 1;
                assert_eq!(latency.count, 5);
                assert_eq!((latency.min_ns, latency.max_ns), (1_000 + own, 5_000 + own));
                assert_eq!(latency.p50_ns, 3_000 + own, "flow {}", flow.flow_id);
                summaries += 1;
            }
        }
        most = most.max(correlator.sampled());
    }
    assert!(summaries > 1_900, "{summaries} flows ended");
    assert!(
        most < 10,
        "{most} sample series kept for 2000 flows of which a few are live"
    );
}

/// More packets and flows than the tables hold, each packet three hops interleaved with the
/// next packet's, and no tick ever comes: the tables and the hop arena stay within their
/// limits, and every packet is reported exactly once and whole, every flow once.
#[test]
fn memory_is_bounded_and_every_packet_is_reported_once() {
    let limits = Limits {
        max_packets: 1_000,
        max_flows: 2_000,
        ..Limits::default()
    };
    let mut correlator = Correlator::new(limits.clone());
    let mut hops_of: std::collections::HashMap<u32, usize> = std::collections::HashMap::new();
    let mut flows = 0;
    let mut drain = |correlator: &mut Correlator| {
        while let Some(record) = correlator.pop() {
            match record {
                Record::Packet(packet) => {
                    let seq = packet.hops[0].event.tcp_seq;
                    assert!(packet.hops.iter().all(|h| h.event.tcp_seq == seq));
                    let again = hops_of.insert(seq, packet.hops.len());
                    assert!(again.is_none(), "packet {seq} reported twice");
                }
                Record::Flow(_) => flows += 1,
                Record::Nat(_) => {}
            }
        }
    };
    let n = 20_000u64;
    let hop = |i: u64, hop: u64| {
        let src = tuple(
            addr((i % 250) as u8, [10, (i >> 16) as u8, (i >> 8) as u8]),
            (i % 60_000) as u16 + 1024,
            addr(1, [10, 255, 0]),
            10001,
        );
        let hook = [Hook::NetDevQueue, Hook::NetifRx, Hook::NetifReceiveSkb][hop as usize];
        let mut e = event(i * 1_000 + hop * 100, hook, CTR, "eth0", 0x10_0000 + i, src);
        e.tcp_seq = i as u32;
        e
    };
    for i in 0..=n {
        if i < n {
            correlator.push(hop(i, 0));
        }
        if i > 0 {
            correlator.push(hop(i - 1, 1));
            correlator.push(hop(i - 1, 2));
        }
        let (packets, open_flows) = correlator.sizes();
        assert!(packets <= limits.max_packets, "{packets} packets at {i}");
        assert!(open_flows <= limits.max_flows, "{open_flows} flows at {i}");
        let held = correlator.held_hops();
        assert!(held <= 3 * limits.max_packets, "{held} hops held at {i}");
        drain(&mut correlator);
    }
    correlator.finish();
    drain(&mut correlator);
    assert_eq!(hops_of.len() as u64, n, "every packet reported");
    assert!(
        hops_of.values().all(|&hops| hops == 3),
        "every packet whole"
    );
    assert_eq!(flows, n, "every flow reported once");
}

/// NAT makes the skb writable, which can give it a new head in place; with a slow hop in
/// between (here 20 ms, past the content window) the packet is still one packet.
#[test]
fn a_new_head_for_the_same_skb_is_the_same_packet() {
    let mut events = syn_path(1_000_000, 0xa000, None);
    for (i, event) in events.iter_mut().enumerate().skip(3) {
        event.skb_head = 0x7777_0000;
        event.ts_ns += 20_000_000 + i as u64;
    }
    assert_eq!(packets(&run(events)).len(), 1);
}

/// A hop that repeats its packet's last whole hop is kept short and comes out whole again,
/// exactly as it went in: its own place, time, skb, TTL, length, mark and conntrack entry, the
/// rest from the whole hop (the process too). A hop whose tuple alone differs is kept short with
/// its tuple, and the hops after it repeat that tuple. A hop whose process or drop differs is
/// kept whole.
#[test]
fn hops_kept_short_come_out_as_they_went_in() {
    let ct = Conntrack {
        id: 0xc7,
        info: 2,
        orig: inner(),
        reply: outer().reversed(),
    };
    let owner = Arc::new(Process {
        pid: 42,
        comm: "curl".into(),
        cgroup_id: 7,
    });
    let mut events = syn_path(1_000_000, 0xa000, Some(ct));
    for event in &mut events {
        event.process = Some(Arc::clone(&owner));
    }
    // On the bridge: another TTL, length and mark, still the packet the first hop showed.
    (events[2].ttl, events[2].len, events[2].mark) = (63, 74, 0x10);
    // The same process, but not the same shared one: kept whole.
    events[3].tuple = inner();
    events[3].process = Some(Arc::new(Process::clone(&owner)));
    // A drop is always whole.
    events[4].tuple = inner();
    events[4].drop = Some(DropInfo {
        reason: 2,
        location: 0xffff_0003,
    });
    let mut extra = events[1].clone();
    extra.ts_ns += 100;
    extra.hook = Hook::NetDevQueue;
    extra.tuple = outer();
    // After the translated hop, one that repeats its tuple.
    let mut after = extra.clone();
    (after.ts_ns, after.hook, after.ttl) = (after.ts_ns + 100, Hook::NetifRx, 62);
    events.extend([extra, after]);
    let limits = Limits::default();
    let mut table = PacketTable::default();
    for event in events.clone() {
        assert!(table.push(event, &limits).is_empty());
    }
    // Whole: the first hop, the other process, the drop; later: the veth and the bridge hop,
    // and the hop after the rewritten tuple; translated: the rewritten tuple.
    assert_eq!(table.held(), (3, 3, 1));
    let done = table.drain_some(usize::MAX);
    assert_eq!(done.len(), 1);
    let out: Vec<HopEvent> = done[0].hops.iter().map(|hop| hop.event.clone()).collect();
    assert_eq!(out, events);
    assert!(Arc::ptr_eq(out[2].process.as_ref().unwrap(), &owner));
    assert_eq!(table.held(), (0, 0, 0));
}

/// Every connection tracer holds costs a `Flow` (`bench/limits.md`, memory holding 100k
/// flows): its two IPv4 tuples are kept in 28 bytes rather than 80, its evidence in 40, and
/// its path as an id beside 12 bytes of latency per segment.
#[test]
fn a_flow_and_its_evidence_stay_small() {
    assert_eq!(std::mem::size_of::<verdict::Evidence<u32>>(), 40);
    assert_eq!(std::mem::size_of::<flow::Flow>(), 160);
}

/// A masqueraded IPv6 connection: its tuples are kept as they are (not in the IPv4 form), the
/// SYN and the SYN-ACK are one flow, and its summary names the tuples before and after NAT.
#[test]
fn an_ipv6_flow_keeps_its_tuples_whole() {
    let v6 = |tuple: Tuple| {
        let map = |addr: IpAddr| match addr {
            IpAddr::V4(v4) => {
                let [a, b, c, d] = v4.octets();
                IpAddr::from([
                    0xfd00,
                    0,
                    0,
                    0,
                    u16::from(a),
                    u16::from(b),
                    u16::from(c),
                    u16::from(d),
                ])
            }
            IpAddr::V6(_) => addr,
        };
        Tuple {
            src: map(tuple.src),
            dst: map(tuple.dst),
            ..tuple
        }
    };
    let mut events = syn_path(1_000_000, 0xa000, None);
    events.extend(syn_ack_path(1_100_000, 0xb000));
    for event in &mut events {
        event.tuple = v6(event.tuple);
    }
    let records = run(events);
    let packets = packets(&records);
    assert_eq!(packets.len(), 2);
    assert_eq!(packets[0].flow_id, packets[1].flow_id);
    let flows: Vec<&FlowSummary> = records
        .iter()
        .filter_map(|r| match r {
            Record::Flow(f) => Some(f),
            _ => None,
        })
        .collect();
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].orig, v6(inner()));
    assert_eq!(flows[0].reply, v6(outer()).reversed());
    assert_eq!(flows[0].packets, [1, 1]);
}
