//! Records in, the report's data out: every flow as a row and a path, hop pairs with their
//! latency distributions, and the packets of the flows worth looking at in detail.
//!
//! Memory is bounded by what the page holds: a row per flow, the interned tables, at most
//! `detail_limit` detailed flows (and the packets of flows still open, at most
//! [`PACKETS_PER_FLOW`] each). When a flow ends and the detail is full, it replaces the least
//! interesting detailed flow if it is more interesting: a flow that failed before one that
//! did not, then the one whose slowest packet took longer.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
};

use super::model::{self, FlowDetail, Label, Packet, Pair, Path, Place, Report, Totals};
use crate::{
    correlate::{
        Direction, FlowSummary, HopLabel, NatRecord, PacketTrace, Record,
        stats::{Latency, SampleStore},
        verdict::{Kind, is_normal_free},
    },
    names::NameTable,
    output::{RunStats, TcpFlags, text, tuple},
};

/// Packets of a flow kept in detail; the rest are counted.
pub const PACKETS_PER_FLOW: usize = 32;

/// Packets held for open flows, in detail-limits: beyond `HELD × detail_limit ×
/// PACKETS_PER_FLOW`, open flows keep only the packets that were dropped (a failure is the
/// most interesting), and count the others as omitted.
const HELD: usize = 4;

/// The report's data as records arrive.
pub struct Collector {
    title: String,
    detail_limit: usize,
    places: HashMap<u64, u32>,
    labels: HashMap<(HopLabel, bool), u32>,
    pairs: HashMap<(u32, u32), u32>,
    pair_stats: Vec<PairStats>,
    store: SampleStore,
    paths: HashMap<Vec<[u32; 2]>, u32>,
    strings: HashMap<String, u32>,
    verdicts: HashMap<model::Verdict, u32>,
    open: HashMap<u64, OpenFlow>,
    /// Detailed flows by slot; a slot is emptied when its flow is replaced.
    detail: Vec<Option<FlowDetail>>,
    /// The detailed flows, least interesting on top.
    kept: BinaryHeap<Reverse<Kept>>,
    report: Report,
    first_ts: Option<u64>,
    /// Packets held by open flows.
    held: usize,
}

/// How interesting a detailed flow is (failed, then its slowest packet's time), where its
/// detail is, and its row.
type Kept = ((bool, u64), usize, usize);

/// A hop pair's samples.
struct PairStats {
    from: u32,
    to: u32,
    latency: Latency,
    count: u64,
    max: u64,
    hist: HashMap<u32, u32>,
}

/// What is kept of a flow until its summary arrives.
#[derive(Default)]
struct OpenFlow {
    packets: Vec<Packet>,
    omitted: u64,
    nat: Vec<model::Nat>,
    tuples: Vec<String>,
    first_ts: Option<u64>,
    /// The longest first-to-last-hop time of its packets.
    slowest: u64,
    /// The namespace of its first hop.
    origin: Option<u64>,
    process: Option<String>,
}

impl Collector {
    pub fn new(title: String, detail_limit: usize) -> Self {
        let mut collector = Collector {
            title,
            detail_limit,
            places: HashMap::new(),
            labels: HashMap::new(),
            pairs: HashMap::new(),
            pair_stats: Vec::new(),
            store: SampleStore::default(),
            paths: HashMap::new(),
            strings: HashMap::new(),
            verdicts: HashMap::new(),
            open: HashMap::new(),
            detail: Vec::new(),
            kept: BinaryHeap::new(),
            report: Report::default(),
            first_ts: None,
            held: 0,
        };
        // String 0 is "no workload".
        collector.string("");
        collector
    }

    pub fn record(&mut self, record: &Record, names: &NameTable) {
        match record {
            Record::Packet(packet) => self.packet(packet, names),
            Record::Nat(nat) => self.nat(nat, names),
            Record::Flow(flow) => self.flow(flow, names),
        }
    }

    /// The report, with the run's totals.
    pub fn finish(mut self, stats: &RunStats) -> Report {
        let first = self.first_ts.unwrap_or(0);
        for row in &mut self.report.flows {
            row.7 = row.7.saturating_sub(first);
        }
        let mut detail: Vec<FlowDetail> = self.detail.into_iter().flatten().collect();
        detail.sort_by_key(|flow| flow.flow);
        self.report.pairs = self
            .pair_stats
            .iter()
            .map(|stats| pair(stats, &self.store))
            .collect();
        self.report.totals = Totals {
            events: stats.events,
            lost: stats.lost,
            malformed: stats.malformed,
            packets: stats.packets,
            flows: stats.flows,
            detailed: detail.len() as u64,
            detail_limit: self.detail_limit as u64,
        };
        self.report.detail = detail;
        self.report.title = self.title;
        self.report.version = env!("CARGO_PKG_VERSION");
        self.report
    }

    fn packet(&mut self, packet: &PacketTrace, names: &NameTable) {
        let (Some(first), Some(last)) = (packet.hops.first(), packet.hops.last()) else {
            return;
        };
        self.first_ts = Some(
            self.first_ts
                .map_or(first.event.ts_ns, |t| t.min(first.event.ts_ns)),
        );
        let delivered = last.event.drop.is_some_and(|drop| {
            is_normal_free(
                &names.drop_reason(drop.reason),
                &names.symbol(drop.location),
            )
        });
        let count = packet.hops.len();
        let labels: Vec<u32> = packet
            .hops
            .iter()
            .enumerate()
            .map(|(at, hop)| self.label(HopLabel::of(hop), delivered && at + 1 == count, names))
            .collect();
        for (at, hop) in packet.hops.iter().enumerate().skip(1) {
            let index = self.pair(labels[at - 1], labels[at]);
            let stats = &mut self.pair_stats[index as usize];
            stats.latency.record(hop.since_prev_ns, &mut self.store);
            stats.count += 1;
            stats.max = stats.max.max(hop.since_prev_ns);
            *stats.hist.entry(bucket(hop.since_prev_ns)).or_default() += 1;
        }
        let open = self.open.entry(packet.flow_id).or_default();
        let flow_first = *open.first_ts.get_or_insert(first.event.ts_ns);
        open.origin.get_or_insert(first.event.netns_inode);
        open.slowest = open.slowest.max(last.since_first_ns);
        if open.process.is_none() {
            open.process = packet
                .process
                .as_ref()
                .map(|owner| crate::output::process_text(owner, names));
        }
        let budget = HELD * self.detail_limit * PACKETS_PER_FLOW;
        let dropped = last.event.drop.is_some() && !delivered;
        if open.packets.len() >= PACKETS_PER_FLOW || (self.held >= budget && !dropped) {
            open.omitted += 1;
            return;
        }
        self.held += 1;
        let tuples = &mut open.tuples;
        let mut shown = None;
        let hops = packet
            .hops
            .iter()
            .zip(&labels)
            .map(|(hop, &label)| {
                let event = &hop.event;
                let changed = (event.has_l4 || shown.is_none()) && shown != Some(event.tuple);
                let index = if changed {
                    shown = Some(event.tuple);
                    let text = tuple(&event.tuple);
                    let at = tuples.iter().position(|t| *t == text).unwrap_or_else(|| {
                        tuples.push(text);
                        tuples.len() - 1
                    });
                    at as i32
                } else {
                    -1
                };
                (label, hop.since_prev_ns, index)
            })
            .collect();
        let drop = last
            .event
            .drop
            .filter(|_| !delivered)
            .map(|drop| model::Drop {
                reason: names.drop_reason(drop.reason),
                function: names.symbol(drop.location),
                rule: packet.drop_rule.as_ref().map(|rule| rule.describe()),
            });
        let event = &first.event;
        open.packets.push(Packet {
            id: packet.packet_id,
            dir: packet.direction as u8,
            t: first.event.ts_ns.saturating_sub(flow_first),
            what: if event.tuple.proto == crate::decode::Proto::TCP {
                TcpFlags(event.tcp_flags).to_string()
            } else {
                event.tuple.proto.name().into_owned()
            },
            seq: event.tcp_seq,
            ip_len: event.ip_len,
            hops,
            drop,
            delivered,
        });
    }

    fn nat(&mut self, nat: &NatRecord, names: &NameTable) {
        let at = nat.at.map(|label| self.label(label, false, names));
        self.open
            .entry(nat.flow_id)
            .or_default()
            .nat
            .push(model::Nat {
                kind: nat.kind.name(),
                direction: nat.direction.name(),
                before: tuple(&nat.before),
                after: tuple(&nat.after),
                at,
                // What made it: the rule `--rules` named, or IPVS.
                rule: nat
                    .rule
                    .as_ref()
                    .map(|rule| rule.describe())
                    .or_else(|| nat.ipvs.then(|| "IPVS".to_owned())),
            });
    }

    fn flow(&mut self, flow: &FlowSummary, names: &NameTable) {
        let open = self.open.remove(&flow.flow_id).unwrap_or_default();
        self.held = self.held.saturating_sub(open.packets.len());
        let mut path = Vec::with_capacity(flow.hops.len());
        let mut own = Vec::with_capacity(flow.hops.len());
        for hop in &flow.hops {
            let from = self.known_label(hop.from, names);
            let to = self.known_label(hop.to, names);
            let index = self.pair(from, to);
            path.push([hop.direction as u32, index]);
            let latency = hop.latency;
            own.push([
                hop.direction as u64,
                u64::from(index),
                latency.count,
                latency.p50_ns,
                latency.p99_ns,
            ]);
        }
        let path = self.path(path);
        let verdict = self.verdict(flow, names);
        let workload = open
            .origin
            .and_then(|inode| {
                names
                    .pod(inode)
                    .or_else(|| names.container(inode))
                    .map(str::to_owned)
            })
            .map_or(0, |name| self.string(&name));
        let retransmitted = flow.verdict.as_ref().map_or(0, |v| v.retransmitted);
        let failed = flow
            .verdict
            .as_ref()
            .is_some_and(|v| v.kind != Kind::Delivered);
        let row = self.report.flows.len();
        self.report.flows.push((
            flow.flow_id,
            tuple(&flow.orig),
            workload,
            verdict,
            flow.packets[Direction::Original as usize],
            flow.packets[Direction::Reply as usize],
            retransmitted,
            flow.first_ts,
            flow.last_ts.saturating_sub(flow.first_ts),
            open.slowest,
            path,
            0,
        ));
        let detail = FlowDetail {
            flow: flow.flow_id,
            orig: tuple(&flow.orig),
            reply: tuple(&flow.reply),
            pairs: own,
            nat: open.nat,
            tuples: open.tuples,
            packets: open.packets,
            omitted: open.omitted,
            process: open.process,
        };
        self.keep((failed, open.slowest), detail, row);
    }

    /// Keeps `detail` if there is room, or in place of a less interesting flow.
    fn keep(&mut self, interest: (bool, u64), detail: FlowDetail, row: usize) {
        if self.detail_limit == 0 {
            return;
        }
        let slot = if self.kept.len() < self.detail_limit {
            self.detail.push(None);
            self.detail.len() - 1
        } else {
            let Some(Reverse((least, slot, old_row))) = self.kept.peek().copied() else {
                return;
            };
            if least >= interest {
                return;
            }
            self.kept.pop();
            self.report.flows[old_row].11 = 0;
            slot
        };
        self.detail[slot] = Some(detail);
        self.report.flows[row].11 = 1;
        self.kept.push(Reverse((interest, slot, row)));
    }

    fn verdict(&mut self, flow: &FlowSummary, names: &NameTable) -> u32 {
        let verdict = match &flow.verdict {
            Some(verdict) => model::Verdict {
                kind: verdict.kind.name(),
                at: verdict.place.map(|label| self.known_label(label, names)),
                reason: verdict.reason.clone(),
                function: verdict.location.map(|location| names.symbol(location)),
                rule: verdict.rule.as_ref().map(|rule| rule.describe()),
                mtu: verdict.mtu,
                advice: verdict.advice.clone(),
                text: text::verdict_text(verdict, names),
            },
            None => model::Verdict {
                kind: "none",
                at: None,
                reason: None,
                function: None,
                rule: None,
                mtu: None,
                advice: String::new(),
                text: "no verdict (the input has none)".to_owned(),
            },
        };
        let next = self.report.verdicts.len() as u32;
        *self.verdicts.entry(verdict.clone()).or_insert_with(|| {
            self.report.verdicts.push(verdict);
            next
        })
    }

    /// The label of a hop a flow summary names: as a packet's hop had it, delivery or not.
    fn known_label(&mut self, label: HopLabel, names: &NameTable) -> u32 {
        match self.labels.get(&(label, true)) {
            Some(&index) if !self.labels.contains_key(&(label, false)) => index,
            _ => self.label(label, false, names),
        }
    }

    fn label(&mut self, label: HopLabel, delivered: bool, names: &NameTable) -> u32 {
        if let Some(&index) = self.labels.get(&(label, delivered)) {
            return index;
        }
        let place = self.place(label.netns_inode, names);
        let index = self.report.labels.len() as u32;
        self.report.labels.push(Label {
            place,
            ifname: text::ifname(&label).to_string(),
            hook: if delivered {
                "delivered"
            } else {
                label.hook.name()
            },
            role: names.role(label.netns_inode, label.ifindex).name(),
        });
        self.labels.insert((label, delivered), index);
        index
    }

    fn place(&mut self, inode: u64, names: &NameTable) -> u32 {
        if let Some(&index) = self.places.get(&inode) {
            return index;
        }
        let name = names.place(inode);
        let container = names.container(inode).map(str::to_owned);
        let pod = names.pod(inode).map(str::to_owned);
        let kind = if container.is_some() || pod.is_some() {
            "container"
        } else if name == "host" || name.ends_with("/host") {
            "host"
        } else {
            "other"
        };
        let index = self.report.places.len() as u32;
        self.report.places.push(Place {
            name,
            container,
            pod,
            runtime: names.runtime(inode).map(crate::workload::Runtime::name),
            kind,
        });
        self.places.insert(inode, index);
        index
    }

    fn pair(&mut self, from: u32, to: u32) -> u32 {
        let next = self.pair_stats.len() as u32;
        *self.pairs.entry((from, to)).or_insert_with(|| {
            self.pair_stats.push(PairStats {
                from,
                to,
                latency: Latency::default(),
                count: 0,
                max: 0,
                hist: HashMap::new(),
            });
            next
        })
    }

    fn path(&mut self, pairs: Vec<[u32; 2]>) -> u32 {
        let next = self.report.paths.len() as u32;
        let index = *self.paths.entry(pairs.clone()).or_insert_with(|| {
            self.report.paths.push(Path { pairs, flows: 0 });
            next
        });
        self.report.paths[index as usize].flows += 1;
        index
    }

    fn string(&mut self, text: &str) -> u32 {
        if let Some(&index) = self.strings.get(text) {
            return index;
        }
        let index = self.report.strings.len() as u32;
        self.report.strings.push(text.to_owned());
        self.strings.insert(text.to_owned(), index);
        index
    }
}

/// The histogram bucket of `ns`: four per doubling.
fn bucket(ns: u64) -> u32 {
    if ns == 0 {
        return 0;
    }
    (4.0 * (ns as f64).log2()).floor() as u32
}

fn pair(stats: &PairStats, store: &SampleStore) -> Pair {
    let summary = stats.latency.summary(store);
    let mut hist: Vec<[u32; 2]> = stats.hist.iter().map(|(&b, &n)| [b, n]).collect();
    hist.sort_unstable();
    Pair {
        from: stats.from,
        to: stats.to,
        count: stats.count,
        p50: summary.map_or(0, |s| s.p50_ns),
        p99: summary.map_or(0, |s| s.p99_ns),
        max: stats.max,
        hist,
    }
}
