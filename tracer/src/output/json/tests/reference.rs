//! The reference for the JSON writer: the serde structs it replaced, which define the JSON
//! Lines contract field by field, and the line they write for a record.

use std::{borrow::Cow, net::IpAddr};

use serde::Serialize;

use crate::{
    attribution::Rule,
    correlate::{FlowSummary, Hop, HopLabel, NatRecord, NatSource, PacketTrace, Record},
    decode::{Conntrack, Encap, Proto, Tuple},
    names::NameTable,
    output::TcpFlags,
    workload::{Runtime, Workload},
};

/// A kernel address, serialized as `0x...`.
#[derive(Debug, Clone, Copy)]
struct Hex(u64);

impl Serialize for Hex {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{:#x}", self.0))
    }
}

#[derive(Debug, Clone, Copy)]
struct Flags(u8);

impl Serialize for Flags {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&TcpFlags(self.0))
    }
}

/// The line the serde structs write for `record`.
pub(super) fn reference(record: &Record, names: &NameTable) -> String {
    let mut out = String::new();
    let mut line = |value: String| {
        out.push_str(&value);
        out.push('\n');
    };
    match record {
        Record::Packet(packet) => {
            for (at, hop) in packet.hops.iter().enumerate() {
                let rule = packet
                    .nat_rules
                    .iter()
                    .find(|(hop, _)| *hop == at)
                    .map(|(_, rule)| rule.as_ref())
                    .or(packet
                        .drop_rule
                        .as_deref()
                        .filter(|_| hop.event.drop.is_some()));
                let rules: Vec<&Rule> = packet
                    .walks
                    .iter()
                    .filter(|(hop, _)| *hop == at)
                    .flat_map(|(_, walk)| walk.iter().map(AsRef::as_ref))
                    .collect();
                line(
                    serde_json::to_string(&HopJson::new(packet, hop, rule, rules, names)).unwrap(),
                );
            }
        }
        Record::Nat(nat) => line(serde_json::to_string(&NatJson::new(nat, names)).unwrap()),
        Record::Flow(flow) => line(serde_json::to_string(&FlowJson::new(flow, names)).unwrap()),
    }
    out
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
    pod: Option<&'a str>,
    runtime: Option<Runtime>,
    proto: Cow<'static, str>,
    src_ip: IpAddr,
    src_port: u16,
    dst_ip: IpAddr,
    dst_port: u16,
    tcp_flags: Option<Flags>,
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
    process: Option<ProcessJson<'a>>,
    /// Only for an encapsulated packet: its outer headers.
    #[serde(skip_serializing_if = "Option::is_none")]
    encap: Option<EncapJson>,
    /// Only for an ICMP error: what it says, and the packet it quotes.
    #[serde(skip_serializing_if = "Option::is_none")]
    icmp: Option<IcmpJson>,
    /// `--rules` only, and only where a rule was named.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "rule_json")]
    rule: Option<&'a Rule>,
    /// `--rules=all` only, and only after a hop a walk through the chains followed.
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "rules_json")]
    rules: Vec<&'a Rule>,
}

/// Serializes rules through [`RuleJson`].
fn rules_json<S: serde::Serializer>(rules: &[&Rule], s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Wrap<'r>(#[serde(with = "RuleJson")] &'r Rule);
    s.collect_seq(rules.iter().map(|rule| Wrap(rule)))
}

#[derive(Serialize)]
#[serde(remote = "Rule")]
struct RuleJson {
    family: &'static str,
    table: String,
    chain: String,
    handle: Option<u64>,
    text: Option<String>,
    verdict: String,
}

/// Serializes a rule through [`RuleJson`].
fn rule_json<S: serde::Serializer>(rule: &Option<&Rule>, s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Wrap<'r>(#[serde(with = "RuleJson")] &'r Rule);
    rule.map(Wrap).serialize(s)
}

impl<'a> HopJson<'a> {
    fn new(
        packet: &PacketTrace,
        hop: &'a Hop,
        rule: Option<&'a Rule>,
        rules: Vec<&'a Rule>,
        names: &'a NameTable,
    ) -> Self {
        let e = &hop.event;
        let tcp = e.has_l4 && e.tuple.proto == Proto::TCP;
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
            pod: names.pod(e.netns_inode),
            runtime: names.runtime(e.netns_inode),
            proto: e.tuple.proto.name(),
            src_ip: e.tuple.src,
            src_port: e.tuple.src_port,
            dst_ip: e.tuple.dst,
            dst_port: e.tuple.dst_port,
            tcp_flags: tcp.then_some(Flags(e.tcp_flags)),
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
            conntrack: e.conntrack.as_deref().map(ConntrackJson::new),
            drop_reason: e.drop.map(|d| names.drop_reason(d.reason)),
            drop_location: e.drop.map(|d| names.symbol(d.location)),
            process: packet.process.as_ref().map(|owner| {
                let workload = names.process_workload(&owner.process, owner.netns_inode);
                ProcessJson {
                    pid: owner.process.pid,
                    comm: owner.process.comm.clone(),
                    cgroup_id: owner.process.cgroup_id,
                    container: workload.and_then(Workload::container),
                    pod: workload.and_then(|w| w.pod.as_deref()),
                    runtime: workload.map(|w| w.runtime),
                }
            }),
            encap: e.encap.as_deref().map(EncapJson::new),
            icmp: e.icmp.as_deref().map(|error| IcmpJson {
                kind: error.kind,
                code: error.code,
                error: error.describe(),
                mtu: error.mtu,
                quoted: TupleJson::new(&error.quoted),
            }),
            rule,
            rules,
        }
    }
}

#[derive(Serialize)]
struct IcmpJson {
    #[serde(rename = "type")]
    kind: u8,
    code: u8,
    error: String,
    mtu: Option<u32>,
    quoted: TupleJson,
}

#[derive(Serialize)]
struct EncapJson {
    kind: &'static str,
    vni: Option<u32>,
    key: Option<u32>,
    proto: Cow<'static, str>,
    src_ip: IpAddr,
    src_port: u16,
    dst_ip: IpAddr,
    dst_port: u16,
    ip_id: u16,
    ip_len: u16,
    ttl: u8,
}

impl EncapJson {
    fn new(encap: &Encap) -> EncapJson {
        let vni = encap.id.filter(|_| encap.kind.has_vni());
        EncapJson {
            kind: encap.kind.name(),
            vni,
            key: encap.id.filter(|_| !encap.kind.has_vni()),
            proto: encap.outer.proto.name(),
            src_ip: encap.outer.src,
            src_port: encap.outer.src_port,
            dst_ip: encap.outer.dst,
            dst_port: encap.outer.dst_port,
            ip_id: encap.ip_id,
            ip_len: encap.ip_len,
            ttl: encap.ttl,
        }
    }
}

#[derive(Serialize)]
struct ProcessJson<'a> {
    pid: u32,
    comm: String,
    cgroup_id: u64,
    container: Option<&'a str>,
    pod: Option<&'a str>,
    runtime: Option<Runtime>,
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
    pod: Option<&'a str>,
    runtime: Option<Runtime>,
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
            pod: names.pod(label.netns_inode),
            runtime: names.runtime(label.netns_inode),
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
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "rule_json")]
    rule: Option<&'a Rule>,
}

impl<'a> NatJson<'a> {
    fn new(nat: &'a NatRecord, names: &'a NameTable) -> Self {
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
                NatSource::Observed => "observed",
                NatSource::Conntrack => "conntrack",
            },
            rule: nat.rule.as_deref(),
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
    verdict: Option<VerdictJson<'a>>,
}

#[derive(Serialize)]
struct VerdictJson<'a> {
    kind: &'static str,
    netns: Option<String>,
    ifname: Option<String>,
    hook: Option<&'static str>,
    reason: Option<&'a str>,
    function: Option<String>,
    #[serde(serialize_with = "rule_json")]
    rule: Option<&'a Rule>,
    packets: u64,
    retransmitted: u16,
    mtu: Option<u32>,
    advice: &'a str,
}

impl<'a> FlowJson<'a> {
    fn new(flow: &'a FlowSummary, names: &'a NameTable) -> Self {
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
            verdict: flow.verdict.as_ref().map(|v| VerdictJson {
                kind: v.kind.name(),
                netns: v.place.map(|at| names.place(at.netns_inode)),
                ifname: v.place.map(|at| at.ifname.as_str().into_owned()),
                hook: v.place.map(|at| at.hook.name()),
                reason: v.reason.as_deref(),
                function: v.location.map(|l| names.symbol(l)),
                rule: v.rule.as_deref(),
                packets: v.packets,
                retransmitted: v.retransmitted,
                mtu: v.mtu,
                advice: &v.advice,
            }),
        }
    }
}
