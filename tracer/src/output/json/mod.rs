//! JSON Lines output: one object per line, a stable contract documented in the README.
//!
//! Objects: `hop` (one per hop of every packet), `nat` (once per flow and direction where a
//! translation happens), `flow` (when a flow ends or tracing stops) and `stats` (last line).
//! Fields are only ever added, never renamed or removed.
//!
//! A hop line is written once per event, so the writer builds lines itself into one large
//! buffer (keys pre-escaped, numbers and addresses without `fmt`, each place's names rendered
//! once, and the last conntrack entry kept rendered: the hops of one connection share one
//! entry) and hands the buffer to the destination when it is full or flushed. The field order
//! and every byte match what serde wrote before; the golden files and the reference test in
//! `tests.rs` hold it to that.

mod line;

use std::{
    io::{self, Write},
    sync::Arc,
};

use rustc_hash::FxHashMap;

use self::line::{Line, key, open};
use super::{Output, RunStats, TcpFlags};
use crate::{
    attribution::Rule,
    correlate::{
        FlowSummary, HopLabel, NatRecord, NatSource, PacketProcess, PacketTrace, Record,
        verdict::Verdict,
    },
    decode::{Conntrack, Encap, IcmpError, Proto, Tuple},
    names::NameTable,
    workload::{Runtime, Workload},
};

/// Bytes buffered before they are written to the destination.
const BUFFER: usize = 256 * 1024;
/// Places whose names are kept rendered; the cache starts over beyond this.
const MAX_PLACES: usize = 4096;

/// Writes records as JSON Lines.
pub struct JsonWriter<W: Write> {
    out: W,
    buf: Vec<u8>,
    places: PlaceNames,
    conntrack: RenderedConntrack,
}

impl<W: Write> JsonWriter<W> {
    pub fn new(out: W) -> Self {
        JsonWriter {
            out,
            buf: Vec::with_capacity(BUFFER),
            places: PlaceNames::default(),
            conntrack: RenderedConntrack::default(),
        }
    }

    fn packet(&mut self, packet: &PacketTrace, names: &NameTable) {
        for (at, hop) in packet.hops.iter().enumerate() {
            let nat_rule = packet.nat_rules.iter().find(|(hop, _)| *hop == at);
            let drop_rule = packet
                .drop_rule
                .as_deref()
                .filter(|_| hop.event.drop.is_some());
            let rule = nat_rule.map(|(_, rule)| rule.as_ref()).or(drop_rule);
            self.hop(packet, at, rule, names);
        }
    }

    /// The packet's hop `at`, with the rule that translated the packet on its way here or
    /// dropped it here (`--rules`) and the walks through the chains that followed it
    /// (`--rules=all`); the `rule` and `rules` keys are only written when there are some.
    fn hop(&mut self, packet: &PacketTrace, at: usize, rule: Option<&Rule>, names: &NameTable) {
        let hop = &packet.hops[at];
        let e = &hop.event;
        let b = &mut self.buf;
        b.raw(b"{\"type\":\"hop\"");
        b.raw(key!("flow_id"));
        b.uint(packet.flow_id);
        b.raw(key!("packet_id"));
        b.uint(packet.packet_id);
        b.raw(key!("direction"));
        b.str(packet.direction.name());
        b.raw(key!("ts_ns"));
        b.uint(e.ts_ns);
        b.raw(key!("hook"));
        b.str(e.hook.name());
        b.raw(key!("ifname"));
        b.str(&e.ifname.as_str());
        b.raw(key!("ifindex"));
        b.uint(e.ifindex);
        b.raw(key!("netns_inode"));
        b.uint(e.netns_inode);
        b.raw(self.places.get(e.netns_inode, names));
        b.raw(key!("proto"));
        b.str(&e.tuple.proto.name());
        b.raw(key!("src_ip"));
        b.ip(e.tuple.src);
        b.raw(key!("src_port"));
        b.uint(e.tuple.src_port);
        b.raw(key!("dst_ip"));
        b.ip(e.tuple.dst);
        b.raw(key!("dst_port"));
        b.uint(e.tuple.dst_port);
        let tcp = e.has_l4 && e.tuple.proto == Proto::TCP;
        b.raw(key!("tcp_flags"));
        if tcp {
            b.push(b'"');
            TcpFlags(e.tcp_flags).write_to(b);
            b.push(b'"');
            b.raw(key!("tcp_seq"));
            b.uint(e.tcp_seq);
            b.raw(key!("tcp_ack"));
            b.uint(e.tcp_ack);
        } else {
            b.raw(b"null,\"tcp_seq\":null,\"tcp_ack\":null");
        }
        b.raw(key!("ip_id"));
        b.uint(e.ip_id);
        b.raw(key!("ttl"));
        b.uint(e.ttl);
        b.raw(key!("len"));
        b.uint(e.len);
        b.raw(key!("ip_len"));
        b.uint(e.ip_len);
        b.raw(key!("mark"));
        b.uint(e.mark);
        b.raw(key!("since_prev_ns"));
        b.uint(hop.since_prev_ns);
        b.raw(key!("since_first_ns"));
        b.uint(hop.since_first_ns);
        b.raw(key!("skb"));
        b.hex(e.skb);
        b.raw(key!("conntrack"));
        match &e.conntrack {
            Some(ct) => self.conntrack.write(b, ct),
            None => b.null(),
        }
        b.raw(key!("drop_reason"));
        match e.drop {
            Some(drop) => {
                b.str(&names.drop_reason(drop.reason));
                b.raw(key!("drop_location"));
                b.str(&names.symbol(drop.location));
            }
            None => b.raw(b"null,\"drop_location\":null"),
        }
        b.raw(key!("process"));
        match &packet.process {
            Some(owner) => process(b, owner, names),
            None => b.null(),
        }
        if let Some(outer) = &e.encap {
            b.raw(key!("encap"));
            encap_object(b, outer);
        }
        if let Some(error) = &e.icmp {
            b.raw(key!("icmp"));
            icmp_object(b, error);
        }
        if let Some(rule) = rule {
            b.raw(key!("rule"));
            rule_object(b, rule);
        }
        let mut walked = packet
            .walks
            .iter()
            .filter(|(hop, _)| *hop == at)
            .flat_map(|(_, walk)| walk)
            .peekable();
        if walked.peek().is_some() {
            b.raw(key!("rules"));
            b.push(b'[');
            for (i, rule) in walked.enumerate() {
                if i > 0 {
                    b.push(b',');
                }
                rule_object(b, rule);
            }
            b.push(b']');
        }
        b.raw(b"}\n");
    }

    fn nat(&mut self, nat: &NatRecord, names: &NameTable) {
        let b = &mut self.buf;
        b.raw(b"{\"type\":\"nat\"");
        b.raw(key!("flow_id"));
        b.uint(nat.flow_id);
        b.raw(key!("kind"));
        b.str(nat.kind.name());
        b.raw(key!("direction"));
        b.str(nat.direction.name());
        b.raw(key!("before"));
        tuple(b, &nat.before);
        b.raw(key!("after"));
        tuple(b, &nat.after);
        // The interface of the first hop that saw the translated packet; null when only
        // conntrack showed the translation.
        b.raw(key!("ifname"));
        match &nat.at {
            Some(at) => {
                b.str(&at.ifname.as_str());
                b.raw(key!("at"));
                self.places.place(b, at, names);
            }
            None => b.raw(b"null,\"at\":null"),
        }
        b.raw(key!("source"));
        b.str(match nat.source {
            NatSource::Observed => "observed",
            NatSource::Conntrack => "conntrack",
        });
        if let Some(rule) = &nat.rule {
            b.raw(key!("rule"));
            rule_object(b, rule);
        }
        if nat.ipvs {
            b.raw(key!("translator"));
            b.str("ipvs");
        }
        b.raw(b"}\n");
    }

    fn flow(&mut self, flow: &FlowSummary, names: &NameTable) {
        let b = &mut self.buf;
        b.raw(b"{\"type\":\"flow\"");
        b.raw(key!("flow_id"));
        b.uint(flow.flow_id);
        b.raw(key!("orig"));
        tuple(b, &flow.orig);
        b.raw(key!("reply"));
        tuple(b, &flow.reply);
        b.raw(key!("packets"));
        b.uint(flow.packets[0] + flow.packets[1]);
        b.raw(key!("packets_original"));
        b.uint(flow.packets[0]);
        b.raw(key!("packets_reply"));
        b.uint(flow.packets[1]);
        b.raw(key!("first_ts_ns"));
        b.uint(flow.first_ts);
        b.raw(key!("last_ts_ns"));
        b.uint(flow.last_ts);
        b.raw(key!("hops"));
        b.push(b'[');
        for (i, pair) in flow.hops.iter().enumerate() {
            if i > 0 {
                b.push(b',');
            }
            b.raw(open!("direction"));
            b.str(pair.direction.name());
            b.raw(key!("from"));
            self.places.place(b, &pair.from, names);
            b.raw(key!("to"));
            self.places.place(b, &pair.to, names);
            let latency = &pair.latency;
            b.raw(key!("count"));
            b.uint(latency.count);
            b.raw(key!("min_ns"));
            b.uint(latency.min_ns);
            b.raw(key!("p50_ns"));
            b.uint(latency.p50_ns);
            b.raw(key!("p99_ns"));
            b.uint(latency.p99_ns);
            b.raw(key!("max_ns"));
            b.uint(latency.max_ns);
            b.push(b'}');
        }
        b.raw(b"]");
        b.raw(key!("verdict"));
        match &flow.verdict {
            Some(verdict) => verdict_object(b, verdict, names),
            None => b.null(),
        }
        b.raw(b"}\n");
    }

    fn write_out(&mut self) -> io::Result<()> {
        self.out.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }
}

impl<W: Write> Output for JsonWriter<W> {
    fn record(&mut self, record: &Record, names: &NameTable) -> io::Result<()> {
        match record {
            Record::Packet(packet) => self.packet(packet, names),
            Record::Nat(nat) => self.nat(nat, names),
            Record::Flow(flow) => self.flow(flow, names),
        }
        if self.buf.len() >= BUFFER {
            self.write_out()?;
        }
        Ok(())
    }

    fn stats(&mut self, stats: &RunStats) -> io::Result<()> {
        // Once per run: serde writes it.
        #[derive(serde::Serialize)]
        struct StatsJson<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            #[serde(flatten)]
            stats: &'a RunStats,
        }
        serde_json::to_writer(
            &mut self.buf,
            &StatsJson {
                kind: "stats",
                stats,
            },
        )?;
        self.buf.push(b'\n');
        self.flush()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_out()?;
        self.out.flush()
    }
}

/// `{"proto":...,"src_ip":...,"src_port":...,"dst_ip":...,"dst_port":...}`
fn tuple(b: &mut Vec<u8>, t: &Tuple) {
    b.raw(open!("proto"));
    b.str(&t.proto.name());
    b.raw(key!("src_ip"));
    b.ip(t.src);
    b.raw(key!("src_port"));
    b.uint(t.src_port);
    b.raw(key!("dst_ip"));
    b.ip(t.dst);
    b.raw(key!("dst_port"));
    b.uint(t.dst_port);
    b.push(b'}');
}

/// `{"kind":"vxlan","vni":1,"key":null,"proto":"udp","src_ip":...,"src_port":...,...}`: the
/// outer headers of an encapsulated packet.
fn encap_object(b: &mut Vec<u8>, encap: &Encap) {
    b.raw(b"{\"kind\":");
    b.str(encap.kind.name());
    let (vni, key) = match encap.id {
        Some(id) if encap.kind.has_vni() => (Some(id), None),
        key => (None, key),
    };
    b.raw(key!("vni"));
    match vni {
        Some(vni) => b.uint(vni),
        None => b.null(),
    }
    b.raw(key!("key"));
    match key {
        Some(key) => b.uint(key),
        None => b.null(),
    }
    b.raw(key!("proto"));
    b.str(&encap.outer.proto.name());
    b.raw(key!("src_ip"));
    b.ip(encap.outer.src);
    b.raw(key!("src_port"));
    b.uint(encap.outer.src_port);
    b.raw(key!("dst_ip"));
    b.ip(encap.outer.dst);
    b.raw(key!("dst_port"));
    b.uint(encap.outer.dst_port);
    b.raw(key!("ip_id"));
    b.uint(encap.ip_id);
    b.raw(key!("ip_len"));
    b.uint(encap.ip_len);
    b.raw(key!("ttl"));
    b.uint(encap.ttl);
    b.push(b'}');
}

/// `{"kind":"dropped","netns":...,"ifname":...,"hook":...,"reason":...,"function":...,
/// "rule":...,"packets":...,"retransmitted":...,"mtu":...,"advice":...}`: a flow's verdict.
fn verdict_object(b: &mut Vec<u8>, verdict: &Verdict, names: &NameTable) {
    b.raw(b"{\"kind\":");
    b.str(verdict.kind.name());
    let at = verdict.place.as_ref();
    b.raw(key!("netns"));
    b.opt_str(at.map(|at| names.place(at.netns_inode)).as_deref());
    b.raw(key!("ifname"));
    b.opt_str(at.map(|at| at.ifname.as_str()).as_deref());
    b.raw(key!("hook"));
    b.opt_str(at.map(|at| at.hook.name()));
    b.raw(key!("reason"));
    b.opt_str(verdict.reason.as_deref());
    b.raw(key!("function"));
    b.opt_str(verdict.location.map(|l| names.symbol(l)).as_deref());
    b.raw(key!("rule"));
    match &verdict.rule {
        Some(rule) => rule_object(b, rule),
        None => b.null(),
    }
    b.raw(key!("packets"));
    b.uint(verdict.packets);
    b.raw(key!("retransmitted"));
    b.uint(verdict.retransmitted);
    b.raw(key!("mtu"));
    match verdict.mtu {
        Some(mtu) => b.uint(mtu),
        None => b.null(),
    }
    b.raw(key!("advice"));
    b.str(&verdict.advice);
    b.push(b'}');
}

/// `{"type":3,"code":4,"error":"fragmentation needed (mtu 1450)","mtu":1450,"quoted":{...}}`:
/// an ICMP error and the packet it quotes.
fn icmp_object(b: &mut Vec<u8>, error: &IcmpError) {
    b.raw(b"{\"type\":");
    b.uint(error.kind);
    b.raw(key!("code"));
    b.uint(error.code);
    b.raw(key!("error"));
    b.str(&error.describe());
    b.raw(key!("mtu"));
    match error.mtu {
        Some(mtu) => b.uint(mtu),
        None => b.null(),
    }
    b.raw(key!("quoted"));
    tuple(b, &error.quoted);
    b.push(b'}');
}

/// `{"family":...,"table":...,"chain":...,"handle":...,"text":...,"verdict":...}`; `handle`
/// is null for a chain's policy, `text` when `nft` could not list the rule.
fn rule_object(b: &mut Vec<u8>, rule: &Rule) {
    b.raw(open!("family"));
    b.str(rule.family);
    b.raw(key!("table"));
    b.str(&rule.table);
    b.raw(key!("chain"));
    b.str(&rule.chain);
    b.raw(key!("handle"));
    match rule.handle {
        Some(handle) => b.uint(handle),
        None => b.null(),
    }
    b.raw(key!("text"));
    match &rule.text {
        Some(text) => b.str(text),
        None => b.null(),
    }
    b.raw(key!("verdict"));
    b.str(&rule.verdict);
    b.push(b'}');
}

/// `{"pid":...,"comm":...,"cgroup_id":...,"container":...,"pod":...,"runtime":...}`: the
/// process behind a packet and the container or pod it runs in (null where unknown).
fn process(b: &mut Vec<u8>, owner: &PacketProcess, names: &NameTable) {
    let process = &owner.process;
    let workload = names.process_workload(process, owner.netns_inode);
    b.raw(open!("pid"));
    b.uint(process.pid);
    b.raw(key!("comm"));
    b.str(&process.comm);
    b.raw(key!("cgroup_id"));
    b.uint(process.cgroup_id);
    b.raw(key!("container"));
    b.opt_str(workload.and_then(Workload::container));
    b.raw(key!("pod"));
    b.opt_str(workload.and_then(|w| w.pod.as_deref()));
    b.raw(key!("runtime"));
    b.opt_str(workload.map(|w| w.runtime.name()));
    b.push(b'}');
}

/// `{"id":...,"info":...,"orig":{...},"reply":{...}}`; `info` is `enum ip_conntrack_info`.
fn conntrack(b: &mut Vec<u8>, ct: &Conntrack) {
    b.raw(open!("id"));
    b.hex(ct.id);
    b.raw(key!("info"));
    b.uint(ct.info);
    b.raw(key!("orig"));
    tuple(b, &ct.orig);
    b.raw(key!("reply"));
    tuple(b, &ct.reply);
    b.push(b'}');
}

/// The last conntrack entry written, rendered. The decoder gives the events of one connection
/// one shared entry (the same `Arc`) while its tuples and state stay the same, so most hop lines
/// copy these bytes instead of writing four addresses and ports again.
#[derive(Default)]
struct RenderedConntrack {
    /// Held, so that its address is not another entry's while it is compared.
    entry: Option<Arc<Conntrack>>,
    bytes: Vec<u8>,
}

impl RenderedConntrack {
    fn write(&mut self, b: &mut Vec<u8>, ct: &Arc<Conntrack>) {
        if !self
            .entry
            .as_ref()
            .is_some_and(|known| Arc::ptr_eq(known, ct))
        {
            self.bytes.clear();
            conntrack(&mut self.bytes, ct);
            self.entry = Some(Arc::clone(ct));
        }
        b.raw(&self.bytes);
    }
}

/// The `,"netns":...,"container":...,"pod":...,"runtime":...` of every place seen, rendered
/// once while the names stay the same.
#[derive(Default)]
struct PlaceNames {
    version: u64,
    rendered: FxHashMap<u64, Box<[u8]>>,
}

impl PlaceNames {
    /// The names of the namespace with `inode`, as the bytes that follow `netns_inode`.
    fn get(&mut self, inode: u64, names: &NameTable) -> &[u8] {
        if self.version != names.places_version() || self.rendered.len() >= MAX_PLACES {
            self.version = names.places_version();
            self.rendered.clear();
        }
        self.rendered.entry(inode).or_insert_with(|| {
            let mut b = Vec::new();
            b.raw(key!("netns"));
            b.opt_str(names.netns(inode));
            b.raw(key!("container"));
            b.opt_str(names.container(inode));
            b.raw(key!("pod"));
            b.opt_str(names.pod(inode));
            b.raw(key!("runtime"));
            b.opt_str(names.runtime(inode).map(Runtime::name));
            b.into_boxed_slice()
        })
    }

    /// `{"hook":...,"ifname":...,"ifindex":...,"netns_inode":...,"netns":...,"container":...,
    /// "pod":...,"runtime":...}`
    fn place(&mut self, b: &mut Vec<u8>, label: &HopLabel, names: &NameTable) {
        b.raw(open!("hook"));
        b.str(label.hook.name());
        b.raw(key!("ifname"));
        b.str(&label.ifname.as_str());
        b.raw(key!("ifindex"));
        b.uint(label.ifindex);
        b.raw(key!("netns_inode"));
        b.uint(label.netns_inode);
        b.raw(self.get(label.netns_inode, names));
        b.push(b'}');
    }
}

#[cfg(test)]
mod tests;
