//! What the merged trace adds to the outputs: each node's clock (a line in text, a `clock`
//! record in JSON), the `node` of every JSON hop, and `nat` and `flow` records whose places
//! say which node they are on.
//!
//! `nat` and `flow` records have the fields of the README's contract, with the node's own
//! inode and names in each place and `"node"` added to it.

use std::{
    io::{self, Write},
    net::IpAddr,
};

use serde::Serialize;

use super::{Basis, Merged, NodeTrace, render::Places};
use crate::{
    correlate::{FlowSummary, HopLabel, NatRecord, NatSource},
    decode::Tuple,
    output::duration,
    workload::Runtime,
};

/// Ends a JSON hop line of a node's writer with the node and the node's own time of the hop.
pub(super) fn add_node(line: &mut Vec<u8>, node: &str, node_ts_ns: u64) {
    while line.last().is_some_and(u8::is_ascii_whitespace) {
        line.pop();
    }
    if line.last() == Some(&b'}') {
        line.pop();
        line.extend_from_slice(b",\"node\":");
        serde_json::to_writer(&mut *line, node).expect("writing to a Vec cannot fail");
        line.extend_from_slice(b",\"node_ts_ns\":");
        line.extend_from_slice(itoa::Buffer::new().format(node_ts_ns).as_bytes());
        line.push(b'}');
    }
    line.push(b'\n');
}

/// `+12.3us`, `-20.134512s`: an offset with its sign, to the microsecond in seconds.
pub(super) fn signed(ns: i128) -> String {
    let sign = if ns < 0 { '-' } else { '+' };
    let magnitude = ns.unsigned_abs();
    if magnitude >= 1_000_000_000 {
        format!("{sign}{:.6}s", magnitude as f64 / 1e9)
    } else {
        format!("{sign}{}", duration(magnitude as u64))
    }
}

/// One line per node: its clock against the reference, and how that was found.
pub(super) fn clock_lines(
    out: &mut impl Write,
    nodes: &[NodeTrace],
    merged: &Merged,
) -> io::Result<()> {
    let reference = &nodes[merged.reference].name;
    for (node, clock) in nodes.iter().zip(&merged.clocks) {
        let file = node.file.display();
        let name = &node.name;
        match clock.basis {
            Basis::Reference => {
                writeln!(out, "node {name} ({file}): reference clock")?;
            }
            Basis::TwoWay { via, packets, .. } => {
                let via = &nodes[via].name;
                // Through a node whose offset is not estimated, the error is not known either.
                let uncertainty = clock
                    .uncertainty_ns
                    .map_or_else(|| "unknown".to_owned(), duration);
                writeln!(
                    out,
                    "node {name} ({file}): offset {} +/- {uncertainty} against {reference} \
                     (from {} packets {via}->{name}, {} {name}->{via})",
                    signed(clock.offset_ns),
                    packets[0],
                    packets[1],
                )?;
            }
            Basis::OneWay { via, packets } => {
                let via = &nodes[via].name;
                let (count, way) = match packets {
                    [0, back] => (back, format!("{name}->{via}")),
                    [out, _] => (out, format!("{via}->{name}")),
                };
                writeln!(
                    out,
                    "node {name} ({file}): offset {} against {reference} NOT ESTIMATED: packets \
                     went one way only ({count} {way}); assumed the fastest took no time",
                    signed(clock.offset_ns),
                )?;
            }
        }
    }
    writeln!(
        out,
        "{} packets, {} of them crossed between nodes",
        merged.packets.len(),
        merged.crossed()
    )
}

#[derive(Serialize)]
struct ClockRecord<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    node: &'a str,
    file: String,
    reference: &'a str,
    /// The node's clock minus the reference's.
    offset_ns: i128,
    uncertainty_ns: Option<u64>,
    /// `reference`, `two-way` or `one-way`.
    basis: &'static str,
    /// The node the offset was estimated against.
    via: Option<&'a str>,
    /// Joined packets from `via` to the node, and back.
    packets: Option<[usize; 2]>,
}

/// A `clock` record per node.
pub(super) fn clocks(out: &mut impl Write, nodes: &[NodeTrace], merged: &Merged) -> io::Result<()> {
    for (node, clock) in nodes.iter().zip(&merged.clocks) {
        let (basis, via, packets) = match clock.basis {
            Basis::Reference => ("reference", None, None),
            Basis::TwoWay { via, packets, .. } => ("two-way", Some(via), Some(packets)),
            Basis::OneWay { via, packets } => ("one-way", Some(via), Some(packets)),
        };
        let record = ClockRecord {
            kind: "clock",
            node: &node.name,
            file: node.file.display().to_string(),
            reference: &nodes[merged.reference].name,
            offset_ns: clock.offset_ns,
            uncertainty_ns: clock.uncertainty_ns,
            basis,
            via: via.map(|via| nodes[via].name.as_str()),
            packets,
        };
        serde_json::to_writer(&mut *out, &record)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

#[derive(Serialize)]
struct TupleJson {
    proto: String,
    src_ip: IpAddr,
    src_port: u16,
    dst_ip: IpAddr,
    dst_port: u16,
}

impl From<&Tuple> for TupleJson {
    fn from(t: &Tuple) -> Self {
        TupleJson {
            proto: t.proto.name().into_owned(),
            src_ip: t.src,
            src_port: t.src_port,
            dst_ip: t.dst,
            dst_port: t.dst_port,
        }
    }
}

#[derive(Serialize)]
struct PlaceJson<'a> {
    hook: &'static str,
    ifname: String,
    ifindex: u32,
    netns_inode: u64,
    netns: Option<&'a str>,
    container: Option<&'a str>,
    pod: Option<&'a str>,
    runtime: Option<&'static str>,
    node: &'a str,
}

fn place<'a>(label: &HopLabel, nodes: &'a [NodeTrace], places: &Places) -> PlaceJson<'a> {
    let (node, inode) = places.origin(label.netns_inode);
    let names = &nodes[node].names;
    PlaceJson {
        hook: label.hook.name(),
        ifname: label.ifname.as_str().into_owned(),
        ifindex: label.ifindex,
        netns_inode: inode,
        netns: names.netns(inode),
        container: names.container(inode),
        pod: names.pod(inode),
        runtime: names.runtime(inode).map(Runtime::name),
        node: &nodes[node].name,
    }
}

#[derive(Serialize)]
struct NatJson<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    flow_id: u64,
    #[serde(rename = "kind")]
    nat: &'static str,
    direction: &'static str,
    before: TupleJson,
    after: TupleJson,
    ifname: Option<String>,
    at: Option<PlaceJson<'a>>,
    source: &'static str,
}

/// A `nat` record.
pub(super) fn nat(
    out: &mut impl Write,
    nat: &NatRecord,
    nodes: &[NodeTrace],
    places: &Places,
) -> io::Result<()> {
    let record = NatJson {
        kind: "nat",
        flow_id: nat.flow_id,
        nat: nat.kind.name(),
        direction: nat.direction.name(),
        before: (&nat.before).into(),
        after: (&nat.after).into(),
        ifname: nat.at.map(|at| at.ifname.as_str().into_owned()),
        at: nat.at.as_ref().map(|at| place(at, nodes, places)),
        source: match nat.source {
            NatSource::Observed => "observed",
            NatSource::Conntrack => "conntrack",
        },
    };
    serde_json::to_writer(&mut *out, &record)?;
    out.write_all(b"\n")
}

#[derive(Serialize)]
struct FlowJson<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    flow_id: u64,
    orig: TupleJson,
    reply: TupleJson,
    packets: u64,
    packets_original: u64,
    packets_reply: u64,
    first_ts_ns: u64,
    last_ts_ns: u64,
    hops: Vec<PairJson<'a>>,
}

#[derive(Serialize)]
struct PairJson<'a> {
    direction: &'static str,
    from: PlaceJson<'a>,
    to: PlaceJson<'a>,
    count: u64,
    min_ns: u64,
    p50_ns: u64,
    p99_ns: u64,
    max_ns: u64,
}

/// A `flow` record.
pub(super) fn flow(
    out: &mut impl Write,
    flow: &FlowSummary,
    nodes: &[NodeTrace],
    places: &Places,
) -> io::Result<()> {
    let record = FlowJson {
        kind: "flow",
        flow_id: flow.flow_id,
        orig: (&flow.orig).into(),
        reply: (&flow.reply).into(),
        packets: flow.packets[0] + flow.packets[1],
        packets_original: flow.packets[0],
        packets_reply: flow.packets[1],
        first_ts_ns: flow.first_ts,
        last_ts_ns: flow.last_ts,
        hops: flow
            .hops
            .iter()
            .map(|pair| PairJson {
                direction: pair.direction.name(),
                from: place(&pair.from, nodes, places),
                to: place(&pair.to, nodes, places),
                count: pair.latency.count,
                min_ns: pair.latency.min_ns,
                p50_ns: pair.latency.p50_ns,
                p99_ns: pair.latency.p99_ns,
                max_ns: pair.latency.max_ns,
            })
            .collect(),
    };
    serde_json::to_writer(&mut *out, &record)?;
    out.write_all(b"\n")
}
