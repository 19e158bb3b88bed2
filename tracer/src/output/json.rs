//! JSON Lines output: one object per line, a stable contract documented in the README.
//!
//! Objects: `hop` (one per hop of every packet), `nat` (once per flow and direction where a
//! translation happens), `flow` (when a flow ends or tracing stops) and `stats` (last line).
//! Fields are only ever added, never renamed or removed.

use std::io::{self, Write};

use serde::Serialize;

use std::{borrow::Cow, net::IpAddr};

use super::{Hex, Output, RunStats, TcpFlags};
use crate::{
    correlate::{FlowSummary, Hop, HopLabel, NatRecord, PacketTrace, Record},
    decode::{Conntrack, Tuple},
    names::NameTable,
};

/// Writes records as JSON Lines.
pub struct JsonWriter<W: Write> {
    out: W,
}

impl<W: Write> JsonWriter<W> {
    pub fn new(out: W) -> Self {
        JsonWriter { out }
    }

    fn packet(&mut self, packet: &PacketTrace, names: &NameTable) -> io::Result<()> {
        for hop in &packet.hops {
            self.line(&HopJson::new(packet, hop, names))?;
        }
        Ok(())
    }

    fn line(&mut self, value: &impl Serialize) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, value)?;
        self.out.write_all(b"\n")
    }
}

impl<W: Write> Output for JsonWriter<W> {
    fn record(&mut self, record: &Record, names: &NameTable) -> io::Result<()> {
        match record {
            Record::Packet(packet) => self.packet(packet, names),
            Record::Nat(nat) => self.line(&NatJson::new(nat, names)),
            Record::Flow(flow) => self.line(&FlowJson::new(flow, names)),
        }
    }

    fn stats(&mut self, stats: &RunStats) -> io::Result<()> {
        self.line(&StatsJson {
            kind: "stats",
            stats,
        })?;
        self.out.flush()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[derive(Serialize)]
struct HopJson<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    flow_id: u64,
    packet_id: u64,
    direction: &'static str,
    ts_ns: u64,
    hook: &'static str,
    ifname: Cow<'a, str>,
    ifindex: u32,
    netns_inode: u64,
    netns: Option<&'a str>,
    container: Option<&'a str>,
    proto: Cow<'static, str>,
    src_ip: IpAddr,
    src_port: u16,
    dst_ip: IpAddr,
    dst_port: u16,
    tcp_flags: Option<TcpFlags>,
    tcp_seq: Option<u32>,
    tcp_ack: Option<u32>,
    ip_id: u16,
    ttl: u8,
    len: u32,
    ip_len: u16,
    mark: u32,
    since_prev_ns: u64,
    since_first_ns: u64,
    skb: Hex,
    conntrack: Option<ConntrackJson>,
    /// `kfree_skb` only: the kernel's drop reason, without the `SKB_DROP_REASON_` prefix.
    drop_reason: Option<String>,
    /// `kfree_skb` only: the function that dropped the packet, as `name+0xoffset`.
    drop_location: Option<String>,
}

impl<'a> HopJson<'a> {
    fn new(packet: &PacketTrace, hop: &'a Hop, names: &'a NameTable) -> Self {
        let e = &hop.event;
        let tcp = e.has_l4 && e.tuple.proto == crate::decode::Proto::TCP;
        HopJson {
            kind: "hop",
            flow_id: packet.flow_id,
            packet_id: packet.packet_id,
            direction: packet.direction.name(),
            ts_ns: e.ts_ns,
            hook: e.hook.name(),
            ifname: e.ifname.as_str(),
            ifindex: e.ifindex,
            netns_inode: e.netns_inode,
            netns: names.netns(e.netns_inode),
            container: names.container(e.netns_inode),
            proto: e.tuple.proto.name(),
            src_ip: e.tuple.src,
            src_port: e.tuple.src_port,
            dst_ip: e.tuple.dst,
            dst_port: e.tuple.dst_port,
            tcp_flags: tcp.then_some(TcpFlags(e.tcp_flags)),
            tcp_seq: tcp.then_some(e.tcp_seq),
            tcp_ack: tcp.then_some(e.tcp_ack),
            ip_id: e.ip_id,
            ttl: e.ttl,
            len: e.len,
            ip_len: e.ip_len,
            mark: e.mark,
            since_prev_ns: hop.since_prev_ns,
            since_first_ns: hop.since_first_ns,
            skb: Hex(e.skb),
            conntrack: e.conntrack.as_ref().map(ConntrackJson::new),
            drop_reason: e.drop.map(|d| names.drop_reason(d.reason)),
            drop_location: e.drop.map(|d| names.symbol(d.location)),
        }
    }
}

#[derive(Serialize)]
struct TupleJson {
    proto: Cow<'static, str>,
    src_ip: IpAddr,
    src_port: u16,
    dst_ip: IpAddr,
    dst_port: u16,
}

impl TupleJson {
    fn new(t: &Tuple) -> Self {
        TupleJson {
            proto: t.proto.name(),
            src_ip: t.src,
            src_port: t.src_port,
            dst_ip: t.dst,
            dst_port: t.dst_port,
        }
    }
}

#[derive(Serialize)]
struct ConntrackJson {
    id: Hex,
    /// `enum ip_conntrack_info`
    info: u8,
    orig: TupleJson,
    reply: TupleJson,
}

impl ConntrackJson {
    fn new(ct: &Conntrack) -> Self {
        ConntrackJson {
            id: Hex(ct.id),
            info: ct.info,
            orig: TupleJson::new(&ct.orig),
            reply: TupleJson::new(&ct.reply),
        }
    }
}

/// Where a hop is, for `nat` and `flow` objects.
#[derive(Serialize)]
struct PlaceJson<'a> {
    hook: &'static str,
    ifname: String,
    ifindex: u32,
    netns_inode: u64,
    netns: Option<&'a str>,
    container: Option<&'a str>,
}

impl<'a> PlaceJson<'a> {
    fn new(label: &HopLabel, names: &'a NameTable) -> Self {
        PlaceJson {
            hook: label.hook.name(),
            ifname: label.ifname.to_string(),
            ifindex: label.ifindex,
            netns_inode: label.netns_inode,
            netns: names.netns(label.netns_inode),
            container: names.container(label.netns_inode),
        }
    }
}

#[derive(Serialize)]
struct NatJson<'a> {
    #[serde(rename = "type")]
    kind_tag: &'static str,
    flow_id: u64,
    kind: &'static str,
    direction: &'static str,
    before: TupleJson,
    after: TupleJson,
    /// Interface of the first hop that saw the translated packet; null when only conntrack
    /// showed the translation.
    ifname: Option<String>,
    at: Option<PlaceJson<'a>>,
    source: &'static str,
}

impl<'a> NatJson<'a> {
    fn new(nat: &NatRecord, names: &'a NameTable) -> Self {
        NatJson {
            kind_tag: "nat",
            flow_id: nat.flow_id,
            kind: nat.kind.name(),
            direction: nat.direction.name(),
            before: TupleJson::new(&nat.before),
            after: TupleJson::new(&nat.after),
            ifname: nat.at.map(|at| at.ifname.to_string()),
            at: nat.at.as_ref().map(|at| PlaceJson::new(at, names)),
            source: match nat.source {
                crate::correlate::NatSource::Observed => "observed",
                crate::correlate::NatSource::Conntrack => "conntrack",
            },
        }
    }
}

#[derive(Serialize)]
struct HopPairJson<'a> {
    direction: &'static str,
    from: PlaceJson<'a>,
    to: PlaceJson<'a>,
    count: u64,
    min_ns: u64,
    p50_ns: u64,
    p99_ns: u64,
    max_ns: u64,
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
    hops: Vec<HopPairJson<'a>>,
}

impl<'a> FlowJson<'a> {
    fn new(flow: &FlowSummary, names: &'a NameTable) -> Self {
        FlowJson {
            kind: "flow",
            flow_id: flow.flow_id,
            orig: TupleJson::new(&flow.orig),
            reply: TupleJson::new(&flow.reply),
            packets: flow.packets[0] + flow.packets[1],
            packets_original: flow.packets[0],
            packets_reply: flow.packets[1],
            first_ts_ns: flow.first_ts,
            last_ts_ns: flow.last_ts,
            hops: flow
                .hops
                .iter()
                .map(|pair| HopPairJson {
                    direction: pair.direction.name(),
                    from: PlaceJson::new(&pair.from, names),
                    to: PlaceJson::new(&pair.to, names),
                    count: pair.latency.count,
                    min_ns: pair.latency.min_ns,
                    p50_ns: pair.latency.p50_ns,
                    p99_ns: pair.latency.p99_ns,
                    max_ns: pair.latency.max_ns,
                })
                .collect(),
        }
    }
}

#[derive(Serialize)]
struct StatsJson<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    stats: &'a RunStats,
}
