//! The writer against a reference: the serde structs it replaced, which define the JSON Lines
//! contract field by field. Every kind of record, with and without the optional parts, with
//! IPv6, names that need escaping and drops, must come out byte for byte the same.

mod reference;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use tracer_common::hook::Hook;

use self::reference::reference;
use super::JsonWriter;
use crate::{
    attribution::Rule,
    correlate::{
        Direction, FlowSummary, Hop, HopLabel, HopPair, NatKind, NatRecord, NatSource,
        PacketProcess, PacketTrace, Record,
        stats::Summary,
        verdict::{Kind, Verdict},
    },
    decode::{
        Conntrack, DropInfo, Encap, EncapKind, HopEvent, IcmpError, IfName, Process, Proto, Tuple,
    },
    names::NameTable,
    output::Output,
    workload::{Runtime, Workload},
};

fn written(records: &[Record], names: &NameTable) -> String {
    let mut out = Vec::new();
    let mut writer = JsonWriter::new(&mut out);
    for record in records {
        writer.record(record, names).unwrap();
    }
    writer.flush().unwrap();
    drop(writer);
    String::from_utf8(out).unwrap()
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn tcp(src: IpAddr, src_port: u16, dst: IpAddr, dst_port: u16) -> Tuple {
    Tuple {
        proto: Proto::TCP,
        src,
        src_port,
        dst,
        dst_port,
    }
}

fn event(netns_inode: u64, ifname: &str, tuple: Tuple) -> HopEvent {
    HopEvent {
        ts_ns: 5_957_406_977_487,
        hook: Hook::NetDevQueue,
        skb: 0xffff_8881_3dae_60e0,
        skb_head: 0xffff_8881_3dae_7000,
        netns_inode,
        tc: false,
        ifindex: 4,
        ifname: IfName::new(ifname),
        tuple,
        has_l4: true,
        fragment: false,
        nonlinear: false,
        ipvs: false,
        tcp_flags: 0x12,
        tcp_seq: 2_849_804_705,
        tcp_ack: 17,
        ip_id: 24_635,
        ttl: 64,
        len: 74,
        ip_len: 60,
        payload_len: 0,
        mark: 0x10,
        conntrack: None,
        drop: None,
        headers: None,
        process: None,
        encap: None,
        icmp: None,
    }
}

fn label(netns_inode: u64, ifname: &str) -> HopLabel {
    HopLabel {
        hook: Hook::NetifReceiveSkb,
        ifname: IfName::new(ifname),
        ifindex: 3,
        netns_inode,
    }
}

fn names() -> NameTable {
    let mut names = NameTable::default();
    names.set_netns(1, "host");
    names.set_netns(2, "ctr \"one\"\t");
    names.set_container(2, "web\\1");
    names.set_workload(
        3,
        Workload {
            runtime: Runtime::Containerd,
            pod: Some("shop/web".to_owned()),
            containers: Vec::from(["httpd".to_owned(), "log\"s".to_owned()]),
        },
    );
    names.set_cgroup(
        77,
        Workload {
            runtime: Runtime::Containerd,
            pod: Some("shop/web".to_owned()),
            containers: Vec::from(["httpd".to_owned()]),
        },
    );
    names.set_drop_reasons([(5, "NETFILTER_DROP".to_owned())].into());
    names.set_symbol(0xffff_ffff_8100_0010, "nf_hook_slow+0x10");
    names
}

fn records() -> Vec<Record> {
    let outer = tcp(v4(172, 17, 0, 2), 42_598, v4(198, 19, 0, 252), 10_001);
    let six = tcp(
        IpAddr::V6("fd00::2".parse().unwrap()),
        1,
        IpAddr::V6(Ipv6Addr::LOCALHOST),
        65_535,
    );
    let mut plain = event(1, "eth0", outer);
    plain.tcp_flags = 0;
    let mut udp = event(2, "veth\u{1}x", outer);
    udp.tuple.proto = Proto::UDP;
    let mut fragment = event(3, "", six);
    fragment.has_l4 = false;
    fragment.tuple.proto = Proto(200);
    let mut tracked = event(2, "eth0", six);
    let entry = |id, info, orig: Tuple| {
        Some(Arc::new(Conntrack {
            id,
            info,
            orig,
            reply: orig.reversed(),
        }))
    };
    tracked.conntrack = entry(0xffff_8880_0abc_d000, 3, outer);
    // The writer keeps the last entry rendered: another entry between two hops of the first
    // must come out as its own, and the first again as the first.
    let mut other_entry = event(2, "eth1", outer);
    other_entry.conntrack = entry(0xffff_8880_0abc_e000, 2, six);
    let tracked_again = tracked.clone();
    let mut dropped = event(1, "docker0", outer);
    dropped.skb = 0;
    dropped.drop = Some(DropInfo {
        reason: 5,
        location: 0xffff_ffff_8100_0010,
    });
    let mut unnamed = dropped.clone();
    unnamed.drop = Some(DropInfo {
        reason: 77,
        location: 0x1234,
    });
    let mut vxlan = event(4, "eth0", outer);
    vxlan.encap = Some(Box::new(Encap {
        kind: EncapKind::Vxlan,
        id: Some(1),
        outer: Tuple {
            proto: Proto::UDP,
            ..tcp(v4(198, 18, 50, 1), 41_234, v4(198, 18, 50, 2), 8472)
        },
        ip_id: 7,
        ip_len: 110,
        ttl: 64,
    }));
    let mut gre = event(4, "eth0", six);
    gre.encap = Some(Box::new(Encap {
        kind: EncapKind::Ip6gre,
        id: Some(0xdead),
        outer: Tuple {
            proto: Proto(47),
            ..tcp(
                IpAddr::V6("fd00::1".parse().unwrap()),
                0,
                IpAddr::V6("fd00::2".parse().unwrap()),
                0,
            )
        },
        ip_id: 0,
        ip_len: 150,
        ttl: 1,
    }));
    let mut frag_needed = event(1, "docker0", outer);
    frag_needed.tuple.proto = Proto::ICMP;
    frag_needed.has_l4 = false;
    frag_needed.icmp = Some(Box::new(IcmpError {
        v6: false,
        kind: 3,
        code: 4,
        mtu: Some(1280),
        quoted: Tuple {
            proto: Proto::UDP,
            ..outer.reversed()
        },
        ip_id: 1,
        ip_len: 1500,
    }));
    let hops = [
        plain,
        udp,
        fragment,
        tracked,
        other_entry,
        tracked_again,
        vxlan,
        gre,
        frag_needed,
        dropped,
        unnamed,
    ]
    .into_iter()
    .enumerate()
    .map(|(i, event)| Hop {
        event,
        since_prev_ns: i as u64 * 1_000,
        since_first_ns: i as u64 * 2_500,
    })
    .collect();
    let masquerade = Arc::new(Rule {
        family: "ip",
        table: "nat".into(),
        chain: "POSTROUTING".into(),
        handle: Some(8),
        text: Some("oifname != \"docker0\" ip saddr 172.17.0.0/16 counter masquerade".into()),
        verdict: "accept".into(),
    });
    let nat = |at: Option<HopLabel>, source| {
        Record::Nat(NatRecord {
            flow_id: 9,
            direction: Direction::Reply,
            kind: NatKind::Dnat,
            before: outer,
            after: six,
            at,
            source,
            packet: None,
            rule: (source == NatSource::Observed).then(|| Arc::clone(&masquerade)),
            ipvs: false,
        })
    };
    let summary = Summary {
        count: 5,
        min_ns: 1,
        p50_ns: 2,
        p99_ns: 3,
        max_ns: u64::MAX,
    };
    Vec::from([
        Record::Packet(PacketTrace {
            packet_id: 3,
            flow_id: 9,
            direction: Direction::Original,
            hops,
            process: Some(PacketProcess {
                process: Arc::new(Process {
                    pid: 4242,
                    comm: "wget \"x\"".to_owned(),
                    cgroup_id: 77,
                }),
                netns_inode: 2,
            }),
            nat_rules: Vec::from([(2, Arc::clone(&masquerade))]),
            walks: Vec::from([
                (0, Vec::from([Arc::clone(&masquerade)])),
                (
                    4,
                    Vec::from([
                        Arc::new(Rule {
                            family: "ip",
                            table: "filter".into(),
                            chain: "FORWARD".into(),
                            handle: Some(3),
                            text: Some("counter jump DOCKER-USER".into()),
                            verdict: "jump DOCKER-USER".into(),
                        }),
                        Arc::clone(&masquerade),
                    ]),
                ),
            ]),
            drop_rule: Some(Arc::new(Rule {
                family: "inet",
                table: "filter".into(),
                chain: "forward".into(),
                handle: None,
                text: Some("policy drop".into()),
                verdict: "drop".into(),
            })),
        }),
        nat(Some(label(2, "eth0")), NatSource::Observed),
        nat(None, NatSource::Conntrack),
        Record::Flow(FlowSummary {
            flow_id: 9,
            orig: outer,
            reply: six,
            packets: [4, 0],
            first_ts: 1,
            last_ts: u64::MAX,
            hops: Vec::from([
                HopPair {
                    direction: Direction::Original,
                    from: label(1, "eth0"),
                    to: label(4, "eth1"),
                    latency: summary,
                },
                HopPair {
                    direction: Direction::Reply,
                    from: label(4, "eth1"),
                    to: label(2, "eth0"),
                    latency: summary,
                },
            ]),
            evidence: Default::default(),
            verdict: Some(Verdict {
                kind: Kind::Dropped,
                place: Some(label(1, "docker0")),
                reason: Some("NETFILTER_DROP".to_owned()),
                location: Some(0xffff_ffff_8100_0010),
                packets: 2,
                retransmitted: 1,
                mtu: None,
                advice: "a netfilter rule drops it: see the \"rule\" above".to_owned(),
                rule: Some(Arc::clone(&masquerade)),
            }),
        }),
        Record::Flow(FlowSummary {
            flow_id: 10,
            orig: six,
            reply: outer,
            packets: [0, 0],
            first_ts: 0,
            last_ts: 0,
            hops: Vec::new(),
            evidence: Default::default(),
            verdict: Some(Verdict {
                kind: Kind::Unanswered,
                place: None,
                reason: None,
                location: None,
                packets: 0,
                retransmitted: 0,
                mtu: Some(1280),
                advice: String::new(),
                rule: None,
            }),
        }),
        Record::Flow(FlowSummary {
            flow_id: 11,
            orig: six,
            reply: outer,
            packets: [0, 0],
            first_ts: 0,
            last_ts: 0,
            hops: Vec::new(),
            evidence: Default::default(),
            verdict: None,
        }),
    ])
}

#[test]
fn every_record_is_written_as_the_reference_writes_it() {
    let names = names();
    let mut records = records();
    // The same packet from a process whose cgroup is not a container's, and from none.
    let Record::Packet(packet) = &records[0] else {
        panic!("the first record is a packet");
    };
    let mut outside = packet.clone();
    if let Some(owner) = &mut outside.process {
        owner.process = Arc::new(Process {
            cgroup_id: 1,
            ..(*owner.process).clone()
        });
    }
    let mut unowned = packet.clone();
    unowned.process = None;
    records.extend([Record::Packet(outside), Record::Packet(unowned)]);
    for record in records {
        assert_eq!(
            written(std::slice::from_ref(&record), &names),
            reference(&record, &names),
            "{record:?}"
        );
    }
}

#[test]
fn renamed_places_are_rendered_again() {
    let records = records();
    let mut names = names();
    let mut out = Vec::new();
    let mut writer = JsonWriter::new(&mut out);
    writer.record(&records[0], &names).unwrap();
    names.set_container(1, "db");
    writer.record(&records[0], &names).unwrap();
    writer.flush().unwrap();
    drop(writer);
    let written = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = written.lines().collect();
    let (before, after) = lines.split_at(lines.len() / 2);
    assert!(before[0].contains("\"container\":null"), "{}", before[0]);
    assert_eq!(after.join("\n") + "\n", reference(&records[0], &names));
    assert!(after[0].contains("\"container\":\"db\""), "{}", after[0]);
}

#[test]
fn every_line_is_one_json_object() {
    let names = names();
    let text = written(&records(), &names);
    for line in text.lines() {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(value.is_object(), "{line}");
    }
}
