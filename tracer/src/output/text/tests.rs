//! Column widths of text output with long names.
use std::net::{IpAddr, Ipv4Addr};

use tracer_common::hook::Hook;

use super::*;
use crate::{
    correlate::{Hop, HopPair, stats::Summary, tests::event},
    decode::DropInfo,
    workload::{Runtime, Workload},
};

const HOST: u64 = 1;
const CONTAINER: u64 = 2;
const POD: u64 = 3;
const LONG_CONTAINER: &str = "affectionate_nightingale";
const LONG_POD: &str = "default/affectionate-nightingale-7d9f8b6c5-x2x9q";

fn names() -> NameTable {
    let mut names = NameTable::default();
    names.set_netns(HOST, "host");
    names.set_container(CONTAINER, LONG_CONTAINER);
    names.set_workload(
        POD,
        Workload {
            runtime: Runtime::Containerd,
            pod: Some(LONG_POD.to_owned()),
            containers: Vec::from(["web".to_owned()]),
        },
    );
    names.set_drop_reasons([(5, "NETFILTER_DROP".to_owned())].into());
    names.set_symbol(0xffff_ffff_8100_0010, "nf_hook_slow+0x10");
    names
}

fn written(record: &Record, names: &NameTable) -> String {
    let mut out = Vec::new();
    TextWriter::new(&mut out, 0).record(record, names).unwrap();
    String::from_utf8(out).unwrap()
}

fn tuple(src: [u8; 4], dst: [u8; 4]) -> Tuple {
    Tuple {
        proto: Proto::TCP,
        src: IpAddr::V4(Ipv4Addr::from(src)),
        src_port: 40_000,
        dst: IpAddr::V4(Ipv4Addr::from(dst)),
        dst_port: 10_001,
    }
}

/// Packet 1 of flow 1, original direction, with a hop per event (times from the first).
fn packet(events: &[HopEvent]) -> Record {
    let hops = events
        .iter()
        .scan(0, |prev, event| {
            let hop = Hop {
                event: event.clone(),
                since_prev_ns: event.ts_ns - *prev,
                since_first_ns: event.ts_ns,
            };
            *prev = event.ts_ns;
            Some(hop)
        })
        .collect();
    Record::Packet(PacketTrace::new(1, 1, Direction::Original, hops))
}

/// The character offsets where the words of `line` start.
fn word_starts(line: &str) -> Vec<usize> {
    let chars: Vec<char> = line.chars().collect();
    (0..chars.len())
        .filter(|&i| chars[i] != ' ' && (i == 0 || chars[i - 1] == ' '))
        .collect()
}

/// The character offsets where the words of `line` end.
fn word_ends(line: &str) -> Vec<usize> {
    let chars: Vec<char> = line.chars().collect();
    (1..=chars.len())
        .filter(|&i| chars[i - 1] != ' ' && (i == chars.len() || chars[i] == ' '))
        .collect()
}

#[test]
fn hop_lines_align_past_a_long_container_name() {
    let inner = tuple([172, 17, 0, 2], [198, 19, 0, 252]);
    let outer = tuple([198, 18, 0, 2], [198, 19, 0, 252]);
    let mut dropped = event(9_000, Hook::KfreeSkb, HOST, "eth0", 7, outer);
    dropped.drop = Some(DropInfo {
        reason: 5,
        location: 0xffff_ffff_8100_0010,
    });
    let events = [
        event(0, Hook::NetDevQueue, CONTAINER, "eth0", 7, inner),
        event(1_000, Hook::NetifRx, HOST, "veth3a1b2c4", 7, inner),
        event(3_000, Hook::NetifReceiveSkb, HOST, "docker0", 7, inner),
        event(6_000, Hook::NetDevQueue, HOST, "eth0", 7, outer),
        dropped,
    ];
    let text = written(&packet(&events), &names());
    let lines: Vec<&str> = text.lines().skip(1).collect();
    let (hop_lines, notes): (Vec<&str>, Vec<&str>) =
        lines.iter().partition(|l| l.trim_start().starts_with('+'));
    assert_eq!(hop_lines.len(), 5, "{text}");
    assert_eq!(notes.len(), 2, "a NAT and a DROPPED line: {text}");
    // Place, interface, hook and (where shown) tuple: each column starts at one offset.
    let columns = word_starts(hop_lines[0]);
    assert!(hop_lines[0].contains(LONG_CONTAINER), "{text}");
    for line in &hop_lines {
        let starts = word_starts(line);
        assert_eq!(starts[2..5], columns[2..5], "{line}\nin\n{text}");
        if starts.len() > 5 {
            assert_eq!(starts[5], columns[5], "{line}\nin\n{text}");
        }
    }
    // As wide as the longest name, no wider.
    assert_eq!(columns[3], columns[2] + LONG_CONTAINER.len() + 1, "{text}");
    // What happened between hops starts under the place column.
    for note in &notes {
        assert_eq!(word_starts(note)[0], columns[2], "{note}\nin\n{text}");
    }
    assert!(
        notes[1].starts_with(&format!("{:INDENT$}DROPPED in host at", "")),
        "{text}"
    );
}

#[test]
fn flow_table_aligns_past_a_long_pod_name() {
    let label = |netns_inode, ifname, hook| HopLabel {
        hook,
        ifname: crate::decode::IfName::new(ifname),
        ifindex: 2,
        netns_inode,
    };
    let latency = Summary {
        count: 3,
        min_ns: 1_200,
        p50_ns: 1_500,
        p99_ns: 12_000_000,
        max_ns: 12_000_000,
    };
    let pair = |direction, from, to| HopPair {
        direction,
        from,
        to,
        latency,
    };
    let pod = label(POD, "eth0", Hook::NetDevQueue);
    let veth = label(HOST, "veth3a1b2c4", Hook::NetifReceiveSkb);
    let uplink = label(HOST, "eth0", Hook::NetDevQueue);
    let flow = Record::Flow(FlowSummary {
        flow_id: 1,
        orig: tuple([10, 244, 1, 2], [198, 19, 0, 252]),
        reply: tuple([198, 19, 0, 252], [10, 244, 1, 2]),
        packets: [3, 3],
        first_ts: 0,
        last_ts: 1_000_000,
        hops: Vec::from([
            pair(Direction::Original, pod, veth),
            pair(Direction::Original, veth, uplink),
            pair(Direction::Reply, uplink, veth),
            pair(Direction::Reply, veth, pod),
        ]),
        evidence: Default::default(),
        verdict: None,
    });
    let text = written(&flow, &names());
    let table: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("  dir"))
        .collect();
    assert_eq!(table.len(), 5, "{text}");
    let header = table[0];
    let (header_starts, header_ends) = (word_starts(header), word_ends(header));
    let widest = format!("{LONG_POD} eth0 net_dev_queue");
    for row in &table[1..] {
        let (starts, ends) = (word_starts(row), word_ends(row));
        // From and to start under their headings, and the latencies end where theirs do.
        assert_eq!(starts[1], header_starts[1], "{row}\nin\n{text}");
        assert!(starts.contains(&header_starts[2]), "{row}\nin\n{text}");
        assert_eq!(
            ends[ends.len() - 5..],
            header_ends[header_ends.len() - 5..],
            "{row}\nin\n{text}"
        );
    }
    // The columns are as wide as the widest cell, no wider.
    assert_eq!(
        header_starts[2],
        header_starts[1] + widest.len() + 1,
        "{text}"
    );
    assert!(table[1].contains(&format!("{widest} host veth3a1b2c4")));
}

#[test]
fn a_rewrite_ipvs_made_says_so() {
    let service = tuple([172, 17, 0, 2], [198, 18, 100, 10]);
    let server = tuple([172, 17, 0, 2], [198, 19, 0, 252]);
    let mut rewritten = event(2_000, Hook::NetDevQueue, HOST, "eth0", 7, server);
    rewritten.ipvs = true;
    let events = [
        event(0, Hook::NetifReceiveSkb, HOST, "docker0", 7, service),
        rewritten,
    ];
    let text = written(&packet(&events), &names());
    let nat = text
        .lines()
        .find(|l| l.trim_start().starts_with("NAT"))
        .unwrap_or_else(|| panic!("no NAT line: {text}"));
    assert_eq!(
        nat.trim(),
        "NAT dst 198.18.100.10:10001 -> 198.19.0.252:10001  by IPVS"
    );
}
