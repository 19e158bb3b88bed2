//! `tracer monitor`: what traces show, as Prometheus metrics (OpenMetrics text, through
//! `prometheus-client`), served over HTTP by [`http`].
//!
//! [`MetricsOutput`] is one more [`Output`]: it turns each completed packet into observations
//! of the time between its hops (per hop pair) and from its first hop to its last (per path
//! kind), and counts drops, translations and flows. Places are named by their role on the
//! container path ([`Role`]: container, host veth, bridge, overlay, uplink) with the hook, unless
//! interface names are asked for; workloads by their pod or container. The number of series is
//! capped ([`Limits::max_series`]): label sets beyond the cap go to one overflow series per
//! metric, labelled `_overflow`, and the overflow is counted.

pub mod http;

use std::{
    collections::HashMap,
    io,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::{
    correlate::{Direction, HopLabel, PacketTrace, Record},
    names::{NameTable, Role},
    output::{Output, RunStats},
};

/// The names of every sample tracer exports, as Prometheus sees them (the unit test
/// `the_exported_names_are_those_of_the_exposition` checks this list against the exposition).
pub const EXPORTED: [&str; 17] = [
    "tracer_hop_latency_seconds_bucket",
    "tracer_hop_latency_seconds_count",
    "tracer_hop_latency_seconds_sum",
    "tracer_path_latency_seconds_bucket",
    "tracer_path_latency_seconds_count",
    "tracer_path_latency_seconds_sum",
    "tracer_drops_total",
    "tracer_nat_translations_total",
    "tracer_flows_total",
    "tracer_flow_verdicts_total",
    "tracer_events_lost_total",
    "tracer_series_overflowed_total",
    "tracer_series",
    "tracer_series_limit",
    "tracer_ready",
    "tracer_cpu_seconds_total",
    "tracer_resident_memory_bytes",
];

/// Label value for what no container or pod owns, and for a path of no known kind.
const NONE: &str = "none";
/// Label value of the series that take label sets beyond the cap.
const OVERFLOW: &str = "_overflow";

/// Bucket bounds of the latency histograms, in seconds: 1 us, doubling up to about 16 ms.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(1e-6, 2.0, 15)
}

/// How places are named and how many series may exist.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Label sets across the labelled metrics, overflow series not counted.
    pub max_series: usize,
    /// Name places by interface (`eth0@web:net_dev_queue`) rather than by role.
    pub interfaces: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_series: 5000,
            interfaces: false,
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HopLabels {
    workload: String,
    from: String,
    to: String,
    direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabels {
    path: &'static str,
    workload: String,
    direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    reason: String,
    place: String,
    workload: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    kind: &'static str,
    workload: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NatLabels {
    kind: &'static str,
    direction: &'static str,
}

fn new_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

/// The metrics of one monitor, shared by the session (which observes) and the HTTP server
/// (which encodes).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    hop_latency: Family<HopLabels, Histogram, fn() -> Histogram>,
    path_latency: Family<PathLabels, Histogram, fn() -> Histogram>,
    drops: Family<DropLabels, Counter>,
    nat: Family<NatLabels, Counter>,
    flows: Counter,
    verdicts: Family<VerdictLabels, Counter>,
    state: Arc<State>,
    limits: Limits,
}

/// What the collector exports besides the families: tracer's own cost, events lost, series.
#[derive(Debug, Default)]
struct State {
    series: AtomicUsize,
    overflowed: AtomicU64,
    lost: AtomicU64,
    ready: AtomicBool,
    max_series: usize,
}

impl Metrics {
    pub fn new(limits: Limits) -> Arc<Metrics> {
        let mut registry = Registry::default();
        let hop_latency =
            Family::<HopLabels, Histogram, fn() -> Histogram>::new_with_constructor(new_histogram);
        let path_latency =
            Family::<PathLabels, Histogram, fn() -> Histogram>::new_with_constructor(new_histogram);
        let drops = Family::<DropLabels, Counter>::default();
        let nat = Family::<NatLabels, Counter>::default();
        let flows = Counter::default();
        registry.register(
            "tracer_hop_latency_seconds",
            "Time between two consecutive hops of a packet, per hop pair",
            hop_latency.clone(),
        );
        registry.register(
            "tracer_path_latency_seconds",
            "Time from a packet's first hop to its last, per path kind",
            path_latency.clone(),
        );
        registry.register(
            "tracer_drops",
            "Packets the kernel dropped, by reason, place and workload",
            drops.clone(),
        );
        registry.register(
            "tracer_nat_translations",
            "Flows translated by netfilter NAT, by kind and direction",
            nat.clone(),
        );
        registry.register("tracer_flows", "Flows traced to their end", flows.clone());
        let verdicts = Family::<VerdictLabels, Counter>::default();
        registry.register(
            "tracer_flow_verdicts",
            "Flows that ended, by verdict (why they worked or failed) and workload",
            verdicts.clone(),
        );
        let state = Arc::new(State {
            max_series: limits.max_series,
            ..State::default()
        });
        registry.register_collector(Box::new(Arc::clone(&state)));
        Arc::new(Metrics {
            registry,
            hop_latency,
            path_latency,
            drops,
            nat,
            flows,
            verdicts,
            state,
            limits,
        })
    }

    /// The exposition, OpenMetrics text.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    /// Events the kernel programs lost so far (the ring buffer was full).
    pub fn set_lost(&self, lost: u64) {
        self.state.lost.store(lost, Ordering::Relaxed);
    }

    /// Marks the monitor attached and tracing.
    pub fn set_ready(&self) {
        self.state.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.state.ready.load(Ordering::Acquire)
    }

    /// Label sets in use, overflow series not counted.
    pub fn series(&self) -> usize {
        self.state.series.load(Ordering::Relaxed)
    }

    /// Whether a new label set may have its own series; counts it if so.
    fn admit(&self) -> bool {
        let admitted = self
            .state
            .series
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.limits.max_series).then_some(n + 1)
            })
            .is_ok();
        if !admitted {
            self.state.overflowed.fetch_add(1, Ordering::Relaxed);
        }
        admitted
    }
}

/// Calls `with` on the family's metric for `labels`, or on its overflow series when the cap
/// is reached.
fn observe<S, M, C>(
    metrics: &Metrics,
    family: &Family<S, M, C>,
    labels: S,
    overflow: impl FnOnce() -> S,
    with: impl Fn(&M),
) where
    S: Clone + std::hash::Hash + Eq,
    C: prometheus_client::metrics::family::MetricConstructor<M>,
{
    if let Some(metric) = family.get(&labels) {
        with(&metric);
        return;
    }
    let labels = if metrics.admit() { labels } else { overflow() };
    with(&family.get_or_create(&labels));
}

impl Collector for State {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counter = |encoder: &mut DescriptorEncoder, name, help, value: u64| {
            let metric = ConstCounter::new(value);
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
        };
        let gauge = |encoder: &mut DescriptorEncoder, name, help, value: f64| {
            let metric = ConstGauge::new(value);
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
        };
        counter(
            &mut encoder,
            "tracer_events_lost",
            "Events the kernel programs could not write (ring buffer full)",
            self.lost.load(Ordering::Relaxed),
        )?;
        counter(
            &mut encoder,
            "tracer_series_overflowed",
            "Observations that went to an overflow series because of the series cap",
            self.overflowed.load(Ordering::Relaxed),
        )?;
        gauge(
            &mut encoder,
            "tracer_series",
            "Label sets in use, overflow series not counted",
            self.series.load(Ordering::Relaxed) as f64,
        )?;
        gauge(
            &mut encoder,
            "tracer_series_limit",
            "The cap on label sets (--max-series)",
            self.max_series as f64,
        )?;
        gauge(
            &mut encoder,
            "tracer_ready",
            "1 once every hook is attached",
            if self.ready.load(Ordering::Acquire) {
                1.0
            } else {
                0.0
            },
        )?;
        let (cpu, rss) = own_usage();
        let metric = ConstCounter::new(cpu);
        metric.encode(encoder.encode_descriptor(
            "tracer_cpu_seconds",
            "CPU time tracer's process used, user and system",
            None,
            metric.metric_type(),
        )?)?;
        gauge(
            &mut encoder,
            "tracer_resident_memory_bytes",
            "tracer's resident memory",
            rss as f64,
        )
    }
}

/// tracer's CPU seconds (user + system) and resident bytes, from `/proc/self/stat`.
fn own_usage() -> (f64, u64) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return (0.0, 0);
    };
    // The command name is in parentheses and may hold spaces: fields start after the last `)`.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let field = |n: usize| -> u64 { fields.get(n).and_then(|f| f.parse().ok()).unwrap_or(0) };
    // SAFETY: sysconf has no memory effects.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    // After the `)`: state is field 0, utime 11, stime 12, rss 21 (proc(5) numbers minus 3).
    ((field(11) + field(12)) as f64 / ticks, field(21) * page)
}

/// The kind of path a flow takes, from where its first packet starts and ends.
fn path_kind(first: Role, last: Role) -> &'static str {
    match (first, last) {
        (Role::Container, Role::Uplink) => "egress",
        (Role::Uplink, Role::Container) => "ingress",
        (Role::Container, Role::Container) => "container_to_container",
        _ => "other",
    }
}

/// Flows whose path kind is remembered, at most (the rest count as `other`).
const MAX_FLOW_KINDS: usize = 1 << 16;

/// The [`Output`] that feeds [`Metrics`].
pub struct MetricsOutput {
    metrics: Arc<Metrics>,
    /// Path kind by flow, from the flow's first packet; forgotten when the flow ends.
    kinds: HashMap<u64, &'static str>,
    /// Workload by flow, from the flow's first packet; forgotten when the flow ends.
    workloads: HashMap<u64, String>,
}

impl MetricsOutput {
    pub fn new(metrics: Arc<Metrics>) -> MetricsOutput {
        MetricsOutput {
            metrics,
            kinds: HashMap::new(),
            workloads: HashMap::new(),
        }
    }

    /// A place as a label value: role and hook, or interface, namespace and hook.
    fn place(&self, label: &HopLabel, names: &NameTable) -> String {
        if self.metrics.limits.interfaces {
            return format!(
                "{}@{}:{}",
                label.ifname,
                names.place(label.netns_inode),
                label.hook.name()
            );
        }
        format!(
            "{}:{}",
            names.role(label.netns_inode, label.ifindex).name(),
            label.hook.name()
        )
    }

    fn packet(&mut self, packet: &PacketTrace, names: &NameTable) {
        let (Some(first), Some(last)) = (packet.hops.first(), packet.hops.last()) else {
            return;
        };
        let role =
            |hop: &crate::correlate::Hop| names.role(hop.event.netns_inode, hop.event.ifindex);
        // The container or pod the packet leaves or reaches.
        let workload = packet
            .hops
            .iter()
            .find(|hop| role(hop) == Role::Container)
            .map_or_else(|| NONE.to_owned(), |hop| names.place(hop.event.netns_inode));
        if self.workloads.len() < MAX_FLOW_KINDS {
            self.workloads
                .entry(packet.flow_id)
                .or_insert_with(|| workload.clone());
        }
        let direction = packet.direction.name();
        let metrics = Arc::clone(&self.metrics);
        let mut previous_place = self.place(&HopLabel::of(first), names);
        for hop in &packet.hops[1..] {
            let label = HopLabel::of(hop);
            let place = self.place(&label, names);
            let seconds = hop.since_prev_ns as f64 / 1e9;
            observe(
                &metrics,
                &metrics.hop_latency,
                HopLabels {
                    workload: workload.clone(),
                    from: previous_place.clone(),
                    to: place.clone(),
                    direction,
                },
                || HopLabels {
                    workload: OVERFLOW.to_owned(),
                    from: OVERFLOW.to_owned(),
                    to: OVERFLOW.to_owned(),
                    direction,
                },
                |histogram| histogram.observe(seconds),
            );
            previous_place = place;
        }
        if let Some(drop) = last.event.drop {
            observe(
                &metrics,
                &metrics.drops,
                DropLabels {
                    reason: names.drop_reason(drop.reason),
                    place: self.place(&HopLabel::of(last), names),
                    workload: workload.clone(),
                },
                || DropLabels {
                    reason: OVERFLOW.to_owned(),
                    place: OVERFLOW.to_owned(),
                    workload: OVERFLOW.to_owned(),
                },
                |counter| {
                    counter.inc();
                },
            );
            return;
        }
        let kind = match (packet.direction, self.kinds.get(&packet.flow_id)) {
            (_, Some(kind)) => *kind,
            (Direction::Original, None) => {
                let kind = path_kind(role(first), role(last));
                if self.kinds.len() < MAX_FLOW_KINDS {
                    self.kinds.insert(packet.flow_id, kind);
                }
                kind
            }
            (Direction::Reply, None) => "other",
        };
        if packet.hops.len() > 1 {
            let seconds = last.since_first_ns as f64 / 1e9;
            observe(
                &metrics,
                &metrics.path_latency,
                PathLabels {
                    path: kind,
                    workload,
                    direction,
                },
                || PathLabels {
                    path: kind,
                    workload: OVERFLOW.to_owned(),
                    direction,
                },
                |histogram| histogram.observe(seconds),
            );
        }
    }
}

impl Output for MetricsOutput {
    fn record(&mut self, record: &Record, names: &NameTable) -> io::Result<()> {
        match record {
            Record::Packet(packet) => self.packet(packet, names),
            Record::Nat(nat) => {
                let metrics = &self.metrics;
                observe(
                    metrics,
                    &metrics.nat,
                    NatLabels {
                        kind: nat.kind.name(),
                        direction: nat.direction.name(),
                    },
                    || NatLabels {
                        kind: nat.kind.name(),
                        direction: nat.direction.name(),
                    },
                    |counter| {
                        counter.inc();
                    },
                );
            }
            Record::Flow(flow) => {
                self.kinds.remove(&flow.flow_id);
                let workload = self.workloads.remove(&flow.flow_id);
                self.metrics.flows.inc();
                if let Some(verdict) = &flow.verdict {
                    let kind = verdict.kind.name();
                    observe(
                        &self.metrics,
                        &self.metrics.verdicts,
                        VerdictLabels {
                            kind,
                            workload: workload.unwrap_or_else(|| NONE.to_owned()),
                        },
                        || VerdictLabels {
                            kind,
                            workload: OVERFLOW.to_owned(),
                        },
                        |counter| {
                            counter.inc();
                        },
                    );
                }
            }
        }
        Ok(())
    }

    fn stats(&mut self, stats: &RunStats) -> io::Result<()> {
        self.metrics.set_lost(stats.lost);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
