//! `tracer monitor`: what traces show, as Prometheus metrics (OpenMetrics text, through
//! `prometheus-client`), served over HTTP by [`http`].
//!
//! [`MetricsOutput`] is one more [`Output`]: it turns each completed packet into observations
//! of the time between its hops (per hop pair) and from its first hop to its last (per path
//! kind), and counts drops, translations and flows. Places are named by their role on the
//! container path ([`Role`]: container, host veth, bridge, overlay, uplink) with the hook, unless
//! interface names are asked for; workloads by their pod or container. The number of series is
//! capped ([`Limits::max_series`]): label sets beyond the cap go to one overflow series per
//! metric, labelled `_overflow`, and the overflow is counted. A series not observed for
//! [`Limits::series_ttl`] is removed and gives its room back ([`series`]). Each bucket of the
//! hop latency carries an exemplar: the flow and tuple of a recent packet in it ([`exemplar`]).

mod exemplar;
pub mod http;
mod process;
mod series;
pub mod web;

use std::{
    collections::HashMap,
    io,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _},
    metrics::{
        counter::{ConstCounter, Counter},
        exemplar::HistogramWithExemplars,
        gauge::ConstGauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use self::{
    exemplar::Exemplar,
    series::{Clock, Monotonic, Seen, Tracked},
};
use crate::{
    correlate::{Direction, HopLabel, PacketTrace, Record},
    names::{NameTable, Role},
    output::{Output, RunStats},
};

/// The names of every sample tracer exports, as Prometheus sees them (the unit test
/// `the_exported_names_are_those_of_the_exposition` checks this list against the exposition).
pub const EXPORTED: [&str; 22] = [
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
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_threads",
    "process_start_time_seconds",
    "process_open_fds",
    "process_max_fds",
];

/// Label value for what no container or pod owns, and for a path of no known kind.
const NONE: &str = "none";
/// Label value of the series that take label sets beyond the cap.
const OVERFLOW: &str = "_overflow";

/// Bucket bounds of the latency histograms, in seconds: 1 us, doubling up to about 16 ms.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(1e-6, 2.0, 15)
}

/// How places are named, and how many series may exist and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Label sets across the labelled metrics, overflow series not counted.
    pub max_series: usize,
    /// How long a series may go without an observation before it is removed; for ever if
    /// `None`.
    pub series_ttl: Option<Duration>,
    /// Name places by interface (`eth0@web:net_dev_queue`) rather than by role.
    pub interfaces: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_series: 5000,
            series_ttl: Some(Duration::from_secs(15 * 60)),
            interfaces: false,
        }
    }
}

/// How often expired series are looked for, at most: a series goes between its TTL and its
/// TTL and this after its last observation.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

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

fn new_histogram() -> Seen<Histogram> {
    Seen::new(Histogram::new(latency_buckets()))
}

fn new_hop_histogram() -> Seen<HistogramWithExemplars<Exemplar>> {
    Seen::new(HistogramWithExemplars::new(latency_buckets()))
}

/// The metrics of one monitor, shared by the session (which observes) and the HTTP server
/// (which encodes).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    hop_latency: Tracked<HopLabels, HistogramWithExemplars<Exemplar>>,
    path_latency: Tracked<PathLabels, Histogram>,
    drops: Tracked<DropLabels, Counter>,
    nat: Tracked<NatLabels, Counter>,
    flows: Counter,
    verdicts: Tracked<VerdictLabels, Counter>,
    state: Arc<State>,
    limits: Limits,
    clock: Box<dyn Clock>,
    /// When the next sweep for expired series may run, in nanoseconds on `clock`.
    next_sweep: AtomicU64,
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
        Metrics::with_clock(limits, Box::new(Monotonic::default()))
    }

    /// The metrics, with the times of observations read from `clock`.
    pub fn with_clock(limits: Limits, clock: Box<dyn Clock>) -> Arc<Metrics> {
        let mut registry = Registry::default();
        let hop_latency = Tracked::new(new_hop_histogram);
        let path_latency = Tracked::new(new_histogram);
        let drops = Tracked::new(Seen::default);
        let nat = Tracked::new(Seen::default);
        let flows = Counter::default();
        registry.register(
            "tracer_hop_latency_seconds",
            "Time between two consecutive hops of a packet, per hop pair",
            hop_latency.family(),
        );
        registry.register(
            "tracer_path_latency_seconds",
            "Time from a packet's first hop to its last, per path kind",
            path_latency.family(),
        );
        registry.register(
            "tracer_drops",
            "Packets the kernel dropped, by reason, place and workload",
            drops.family(),
        );
        registry.register(
            "tracer_nat_translations",
            "Flows translated by netfilter NAT, by kind and direction",
            nat.family(),
        );
        registry.register("tracer_flows", "Flows traced to their end", flows.clone());
        let verdicts = Tracked::new(Seen::default);
        registry.register(
            "tracer_flow_verdicts",
            "Flows that ended, by verdict (why they worked or failed) and workload",
            verdicts.family(),
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
            clock,
            next_sweep: AtomicU64::new(0),
        })
    }

    /// The exposition, OpenMetrics text, expired series removed first.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        self.expire(self.now());
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

    /// The time on the clock, in nanoseconds.
    fn now(&self) -> u64 {
        u64::try_from(self.clock.now().as_nanos()).unwrap_or(u64::MAX - 1)
    }

    /// Removes the series last observed a TTL or longer before `now`, from every family, and
    /// gives their room back to the cap. Runs once a second at most, whoever calls: the session
    /// as it observes, so that memory stays bounded without scrapes, and the endpoint before it
    /// encodes, so that a scrape never shows a series past its TTL and a second.
    fn expire(&self, now: u64) {
        let Some(ttl) = self.limits.series_ttl else {
            return;
        };
        let due = self.next_sweep.load(Ordering::Relaxed);
        let next = now.saturating_add(SWEEP_EVERY.as_nanos() as u64);
        if now < due
            || self
                .next_sweep
                .compare_exchange(due, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let ttl = u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX);
        let release = |n| {
            self.state.series.fetch_sub(n, Ordering::Relaxed);
        };
        self.hop_latency.expire(now, ttl, release);
        self.path_latency.expire(now, ttl, release);
        self.drops.expire(now, ttl, release);
        self.nat.expire(now, ttl, release);
        self.verdicts.expire(now, ttl, release);
    }
}

/// Calls `with` on the family's metric for `labels`, observed at `now`, or on its overflow
/// series when the cap is reached.
fn observe<S: Clone + std::hash::Hash + Eq, M>(
    metrics: &Metrics,
    now: u64,
    family: &Tracked<S, M>,
    labels: S,
    overflow: impl FnOnce() -> S,
    with: impl FnOnce(&M),
) {
    family.observe(now, labels, overflow, || metrics.admit(), with);
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
        process::encode(&mut encoder)
    }
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

    fn packet(&mut self, packet: &PacketTrace, names: &NameTable, now: u64) {
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
        let exemplar = Exemplar {
            flow_id: packet.flow_id,
            tuple: first.event.tuple,
        };
        let observed = SystemTime::now();
        let mut previous_place = self.place(&HopLabel::of(first), names);
        for hop in &packet.hops[1..] {
            let label = HopLabel::of(hop);
            let place = self.place(&label, names);
            let seconds = hop.since_prev_ns as f64 / 1e9;
            observe(
                &metrics,
                now,
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
                |histogram| histogram.observe(seconds, Some(exemplar), Some(observed)),
            );
            previous_place = place;
        }
        if let Some(drop) = last.event.drop {
            observe(
                &metrics,
                now,
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
                now,
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
        let now = self.metrics.now();
        self.metrics.expire(now);
        match record {
            Record::Packet(packet) => self.packet(packet, names, now),
            Record::Nat(nat) => {
                let metrics = &self.metrics;
                observe(
                    metrics,
                    now,
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
                        now,
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
