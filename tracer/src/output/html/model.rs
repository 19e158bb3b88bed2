//! The report's data: what the page draws, as the JSON embedded in it.
//!
//! Interned tables keep it small: a place (namespace), a hop label (namespace, interface,
//! hook), a hop pair and a path are written once and referred to by index. Every flow has a
//! row (so that the page can filter and sort all of them) and a path; the hops of each packet
//! are kept for a bounded number of flows, the failed and the slowest first. The field names
//! are short where they repeat per flow, packet or hop.

use serde::Serialize;

/// Everything the page shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    /// What the report was made from (file names, or `live trace`).
    pub title: String,
    pub version: &'static str,
    pub totals: Totals,
    /// Network namespaces, by index.
    pub places: Vec<Place>,
    /// Where hops are (namespace, interface, hook), by index.
    pub labels: Vec<Label>,
    /// Consecutive hop pairs with the latency of every packet that took them.
    pub pairs: Vec<Pair>,
    /// The shapes of flows: the hop pairs they took in each direction.
    pub paths: Vec<Path>,
    /// Strings rows refer to: workloads (containers, pods) and verdict kinds.
    pub strings: Vec<String>,
    /// Verdicts, shared by the flows that ended alike.
    pub verdicts: Vec<Verdict>,
    /// One row per flow.
    pub flows: Vec<FlowRow>,
    /// The packets and hops of the flows kept in detail, by flow id.
    pub detail: Vec<FlowDetail>,
}

/// What was read and lost, and how many flows the page has in detail.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub events: u64,
    pub lost: u64,
    pub malformed: u64,
    pub packets: u64,
    pub flows: u64,
    /// Flows whose packets and hops are in the page.
    pub detailed: u64,
    /// The most flows kept in detail.
    pub detail_limit: u64,
}

/// A network namespace and who owns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Place {
    /// What outputs call it (pod, container, `ip netns` name, `host`).
    pub name: String,
    pub container: Option<String>,
    pub pod: Option<String>,
    pub runtime: Option<&'static str>,
    /// `container` (a container's or pod's), `host` (tracer's own namespace, or a node's in
    /// a merged trace) or `other`.
    pub kind: &'static str,
}

/// A hop's place: namespace, interface, hook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Label {
    pub place: u32,
    /// The interface's name; `(socket)` for a packet freed by its socket with no device.
    pub ifname: String,
    pub hook: &'static str,
    /// What the interface is on the container path (`container`, `host_veth`, `bridge`,
    /// `uplink`, `overlay`, ...).
    pub role: &'static str,
}

/// Two consecutive hops, over every packet of the trace that took them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pair {
    pub from: u32,
    pub to: u32,
    pub count: u64,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
    /// A histogram: `[bucket, count]`, bucket `b` holding latencies in
    /// `[2^(b/4), 2^((b+1)/4))` nanoseconds; empty buckets left out.
    pub hist: Vec<[u32; 2]>,
}

/// The hop pairs a flow took: `[direction (0 original, 1 reply), pair]`, in the order the
/// flow's summary lists them (path order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Path {
    pub pairs: Vec<[u32; 2]>,
    /// Flows that took this path.
    pub flows: u64,
}

/// A flow's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Verdict {
    pub kind: &'static str,
    /// The label where it was decided.
    pub at: Option<u32>,
    pub reason: Option<String>,
    /// The kernel function that dropped the packet.
    pub function: Option<String>,
    pub rule: Option<String>,
    pub mtu: Option<u32>,
    pub advice: String,
    /// The verdict as one line, as text output writes it.
    pub text: String,
}

/// One flow in the list: `[id, tuple, workload, verdict, packets original, packets reply,
/// retransmitted, first seen (ns since the trace's first), duration (ns), slowest packet's
/// transit (ns), path, detailed (1 or 0)]`; string and table fields as indexes.
pub type FlowRow = (u64, String, u32, u32, u64, u64, u16, u64, u64, u64, u32, u8);

/// A flow's packets and hops.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlowDetail {
    pub flow: u64,
    /// `original` and `reply` tuples.
    pub orig: String,
    pub reply: String,
    /// The flow's own latency per hop pair: `[direction, pair, count, p50, p99]`.
    pub pairs: Vec<[u64; 5]>,
    pub nat: Vec<Nat>,
    /// Tuples the flow's packets had, referred to by their hops.
    pub tuples: Vec<String>,
    pub packets: Vec<Packet>,
    /// Packets beyond those kept.
    pub omitted: u64,
    /// The process behind the flow's first packet, where known.
    pub process: Option<String>,
}

/// A translation of the flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Nat {
    pub kind: &'static str,
    pub direction: &'static str,
    pub before: String,
    pub after: String,
    /// The label of the first hop that saw the translated tuple.
    pub at: Option<u32>,
    pub rule: Option<String>,
}

/// A packet of a detailed flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Packet {
    pub id: u64,
    /// 0 original, 1 reply.
    pub dir: u8,
    /// Its first hop, in ns since the flow's first packet.
    pub t: u64,
    /// What it was: TCP flags as tcpdump spells them, or the protocol.
    pub what: String,
    /// TCP sequence number and IP length, which a retransmission repeats.
    pub seq: u32,
    pub ip_len: u16,
    /// `[label, ns since the previous hop, tuple (index into the flow's `tuples`, or -1 when
    /// unchanged)]`.
    pub hops: Vec<(u32, u64, i32)>,
    /// How it ended when it was dropped: reason, function, rule.
    pub drop: Option<Drop>,
    /// The hop that was its delivery (a socket freeing what it consumed).
    pub delivered: bool,
}

/// A drop of a packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drop {
    pub reason: String,
    pub function: String,
    pub rule: Option<String>,
}
