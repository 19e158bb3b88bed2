//! One hop line of JSON Lines as the event it was written from, with the names, rule and
//! process the line carries; the fields as the README's JSON contract names them.

use std::{net::IpAddr, sync::Arc};

use serde::Deserialize;
use tracer_common::{hook::Hook, wire::ipproto};

use super::Symbols;
use crate::{
    attribution::Rule,
    correlate::PacketProcess,
    decode::{
        Conntrack, DropInfo, Encap, EncapKind, HopEvent, IcmpError, IfName, Process, Proto, Tuple,
    },
    names::NameTable,
    output::TcpFlags,
    workload::{Runtime, Workload},
};

#[derive(Deserialize)]
pub(super) struct HopLine {
    pub packet_id: u64,
    #[serde(default)]
    pub flow_id: u64,
    #[serde(default)]
    pub direction: Option<String>,
    ts_ns: u64,
    hook: String,
    ifname: String,
    ifindex: u32,
    netns_inode: u64,
    netns: Option<String>,
    container: Option<String>,
    pod: Option<String>,
    runtime: Option<String>,
    #[serde(flatten)]
    tuple: TupleLine,
    tcp_flags: Option<String>,
    tcp_seq: Option<u32>,
    tcp_ack: Option<u32>,
    ip_id: u16,
    #[serde(default)]
    ttl: u8,
    #[serde(default)]
    len: u32,
    ip_len: u16,
    #[serde(default)]
    mark: u32,
    skb: Option<String>,
    conntrack: Option<ConntrackLine>,
    drop_reason: Option<String>,
    drop_location: Option<String>,
    process: Option<ProcessLine>,
    encap: Option<EncapLine>,
    icmp: Option<IcmpLine>,
    rule: Option<RuleLine>,
    rules: Option<Vec<RuleLine>>,
}

#[derive(Deserialize)]
struct TupleLine {
    proto: String,
    src_ip: IpAddr,
    src_port: u16,
    dst_ip: IpAddr,
    dst_port: u16,
}

#[derive(Deserialize)]
struct ConntrackLine {
    id: String,
    info: u8,
    orig: TupleLine,
    reply: TupleLine,
}

#[derive(Deserialize)]
struct ProcessLine {
    pid: u32,
    comm: String,
    cgroup_id: u64,
    container: Option<String>,
    pod: Option<String>,
    runtime: Option<String>,
}

#[derive(Deserialize)]
struct EncapLine {
    kind: String,
    vni: Option<u32>,
    key: Option<u32>,
    #[serde(flatten)]
    outer: TupleLine,
    ip_id: u16,
    ip_len: u16,
    ttl: u8,
}

#[derive(Deserialize)]
struct IcmpLine {
    #[serde(rename = "type")]
    kind: u8,
    code: u8,
    mtu: Option<u32>,
    quoted: TupleLine,
}

#[derive(Deserialize)]
struct RuleLine {
    family: String,
    table: String,
    chain: String,
    handle: Option<u64>,
    text: Option<String>,
    verdict: String,
}

/// A hop's event, the rule shown on it, the walk that followed it and its packet's process.
pub(super) type Parsed = (HopEvent, Option<Rule>, Vec<Rule>, Option<PacketProcess>);

/// A hop line as the event it was written from, naming its place in `names`.
pub(super) fn hop_event(
    hop: HopLine,
    names: &mut NameTable,
    symbols: &mut Symbols,
) -> Result<Parsed, String> {
    let hook = Hook::ALL
        .into_iter()
        .find(|h| h.name() == hop.hook)
        .ok_or_else(|| format!("unknown hook {:?}", hop.hook))?;
    name_place(names, hop.netns_inode, &hop);
    let tuple = tuple(&hop.tuple)?;
    let tcp = tuple.proto == Proto::TCP;
    let has_l4 = if tcp {
        hop.tcp_flags.is_some()
    } else {
        ipproto::has_ports(tuple.proto.0) && (tuple.src_port != 0 || tuple.dst_port != 0)
    };
    let tcp_flags = match &hop.tcp_flags {
        Some(letters) => flags(letters)?,
        None => 0,
    };
    let drop = match (&hop.drop_reason, &hop.drop_location) {
        (Some(reason), location) => Some(DropInfo {
            reason: symbols.reason(reason),
            location: location.as_deref().map_or(0, |l| symbols.location(l)),
        }),
        (None, _) => None,
    };
    let conntrack = match &hop.conntrack {
        Some(ct) => Some(Arc::new(Conntrack {
            id: hex(&ct.id)?,
            info: ct.info,
            orig: self::tuple(&ct.orig)?,
            reply: self::tuple(&ct.reply)?,
        })),
        None => None,
    };
    let encap = match &hop.encap {
        Some(encap) => Some(Box::new(self::encap(encap)?)),
        None => None,
    };
    let icmp = match &hop.icmp {
        Some(line) => Some(Box::new(IcmpError {
            v6: tuple.proto == Proto::ICMPV6,
            kind: line.kind,
            code: line.code,
            mtu: line.mtu,
            quoted: self::tuple(&line.quoted)?,
            // The quoted packet's IP id and length are not in JSON.
            ip_id: 0,
            ip_len: 0,
        })),
        None => None,
    };
    let process = hop.process.as_ref().map(|p| process(p, names));
    let event = HopEvent {
        ts_ns: hop.ts_ns,
        hook,
        skb: hop.skb.as_deref().map(hex).transpose()?.unwrap_or(0),
        skb_head: 0,
        netns_inode: hop.netns_inode,
        tc: matches!(hook, Hook::TcIngress | Hook::TcEgress),
        ifindex: hop.ifindex,
        ifname: IfName::new(&hop.ifname),
        tuple,
        has_l4,
        fragment: false,
        nonlinear: false,
        ipvs: false,
        tcp_flags,
        tcp_seq: hop.tcp_seq.unwrap_or(0),
        tcp_ack: hop.tcp_ack.unwrap_or(0),
        ip_id: hop.ip_id,
        ttl: hop.ttl,
        len: hop.len,
        ip_len: hop.ip_len,
        // Not in JSON.
        payload_len: 0,
        mark: hop.mark,
        conntrack,
        drop,
        headers: None,
        process: None,
        encap,
        icmp,
    };
    let shown = hop.rule.and_then(rule);
    let walk = hop.rules.into_iter().flatten().filter_map(rule).collect();
    Ok((event, shown, walk, process))
}

/// Names the namespace `inode` as the hop names it.
fn name_place(names: &mut NameTable, inode: u64, hop: &HopLine) {
    if let Some(netns) = &hop.netns
        && names.netns(inode) != Some(netns)
    {
        names.set_netns(inode, netns.clone());
    }
    // Naming again only what changed keeps the JSON writer's rendered names valid.
    if let Some(workload) = workload(hop.runtime.as_deref(), &hop.pod, &hop.container)
        && (names.runtime(inode) != Some(workload.runtime)
            || names.pod(inode) != workload.pod.as_deref()
            || names.container(inode) != workload.container())
    {
        names.set_workload(inode, workload);
    }
}

fn workload(
    runtime: Option<&str>,
    pod: &Option<String>,
    container: &Option<String>,
) -> Option<Workload> {
    let runtime = match runtime? {
        "docker" => Runtime::Docker,
        "podman" => Runtime::Podman,
        "containerd" => Runtime::Containerd,
        _ => return None,
    };
    Some(Workload {
        runtime,
        pod: pod.clone(),
        containers: container.iter().cloned().collect(),
    })
}

fn process(line: &ProcessLine, names: &mut NameTable) -> PacketProcess {
    if let Some(workload) = workload(line.runtime.as_deref(), &line.pod, &line.container) {
        names.set_cgroup(line.cgroup_id, workload);
    }
    PacketProcess {
        process: Arc::new(Process {
            pid: line.pid,
            comm: line.comm.clone(),
            cgroup_id: line.cgroup_id,
        }),
        // Where the socket was seen is not in JSON; the cgroup names the process.
        netns_inode: 0,
    }
}

fn tuple(line: &TupleLine) -> Result<Tuple, String> {
    Ok(Tuple {
        proto: proto(&line.proto)?,
        src: line.src_ip,
        src_port: line.src_port,
        dst: line.dst_ip,
        dst_port: line.dst_port,
    })
}

/// A protocol as [`Proto::name`] spells it.
fn proto(name: &str) -> Result<Proto, String> {
    [
        Proto::TCP,
        Proto::UDP,
        Proto::ICMP,
        Proto::ICMPV6,
        Proto::SCTP,
    ]
    .into_iter()
    .find(|p| p.name() == name)
    .or_else(|| name.parse().ok().map(Proto))
    .ok_or_else(|| format!("unknown protocol {name:?}"))
}

/// TCP flags as [`TcpFlags`] spells them.
fn flags(letters: &str) -> Result<u8, String> {
    if letters == "none" {
        return Ok(0);
    }
    letters.chars().try_fold(0u8, |bits, letter| {
        (0..8)
            .map(|bit| 1u8 << bit)
            .find(|&bit| TcpFlags(bit).to_string().starts_with(letter))
            .map(|bit| bits | bit)
            .ok_or_else(|| format!("unknown TCP flag {letter:?} in {letters:?}"))
    })
}

fn hex(text: &str) -> Result<u64, String> {
    text.strip_prefix("0x")
        .and_then(|digits| u64::from_str_radix(digits, 16).ok())
        .ok_or_else(|| format!("{text:?} is not a hex number"))
}

/// Every kind of encapsulation, to read one back by its name.
const ENCAP_KINDS: [EncapKind; 9] = [
    EncapKind::Vxlan,
    EncapKind::Geneve,
    EncapKind::Ipip,
    EncapKind::Sit,
    EncapKind::Ip6tnl,
    EncapKind::Gre,
    EncapKind::Ip6gre,
    EncapKind::Gretap,
    EncapKind::Ip6gretap,
];

fn encap(line: &EncapLine) -> Result<Encap, String> {
    let kind = ENCAP_KINDS
        .into_iter()
        .find(|k| k.name() == line.kind)
        .ok_or_else(|| format!("unknown encapsulation {:?}", line.kind))?;
    Ok(Encap {
        kind,
        id: line.vni.or(line.key),
        outer: tuple(&line.outer)?,
        ip_id: line.ip_id,
        ip_len: line.ip_len,
        ttl: line.ttl,
    })
}

/// The nf_tables families [`Rule::family`] holds.
const FAMILIES: [&str; 6] = ["ip", "ip6", "inet", "arp", "bridge", "netdev"];

fn rule(line: RuleLine) -> Option<Rule> {
    let family = FAMILIES.into_iter().find(|f| *f == line.family)?;
    Some(Rule {
        family,
        table: line.table,
        chain: line.chain,
        handle: line.handle,
        text: line.text,
        verdict: line.verdict,
    })
}
