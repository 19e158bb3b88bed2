//! The metrics a monitor derives from packets, flows and translations, and the series cap.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tracer_common::hook::Hook;

use super::*;
use crate::{
    correlate::{
        FlowSummary, Hop, NatKind, NatRecord, NatSource,
        verdict::{Kind, Verdict},
    },
    decode::{DropInfo, Proto, Tuple},
    workload::{Runtime, Workload},
};

const CTR: u64 = 10;
const HOST: u64 = 20;

fn tuple() -> Tuple {
    Tuple {
        proto: Proto::TCP,
        src: IpAddr::V4(Ipv4Addr::new(172, 17, 0, 2)),
        src_port: 40000,
        dst: IpAddr::V4(Ipv4Addr::new(198, 19, 0, 252)),
        dst_port: 80,
    }
}

fn hop(ts_ns: u64, first_ns: u64, hook: Hook, netns: u64, ifindex: u32, ifname: &str) -> Hop {
    let mut event = crate::correlate::tests::event(ts_ns, hook, netns, ifname, 1, tuple());
    event.ifindex = ifindex;
    Hop {
        event,
        since_prev_ns: 0,
        since_first_ns: first_ns,
    }
}

/// A packet from the container's eth0 through its host veth and the bridge to the uplink,
/// 2, 3 and 5 us apart.
fn egress(flow_id: u64) -> PacketTrace {
    let mut hops = vec![
        hop(1_000, 0, Hook::NetDevQueue, CTR, 2, "eth0"),
        hop(3_000, 2_000, Hook::NetifReceiveSkb, HOST, 5, "veth1"),
        hop(6_000, 5_000, Hook::NetifReceiveSkb, HOST, 3, "docker0"),
        hop(11_000, 10_000, Hook::NetDevQueue, HOST, 2, "eth0"),
    ];
    for i in 1..hops.len() {
        hops[i].since_prev_ns = hops[i].event.ts_ns - hops[i - 1].event.ts_ns;
    }
    PacketTrace::new(flow_id, flow_id, Direction::Original, hops)
}

fn names() -> NameTable {
    let mut names = NameTable::default();
    names.set_workload(
        CTR,
        Workload {
            runtime: Runtime::Docker,
            pod: None,
            containers: vec!["web".to_owned()],
        },
    );
    names.set_netns(HOST, "host");
    names.set_role(CTR, 2, Role::Container);
    names.set_role(HOST, 5, Role::HostVeth);
    names.set_role(HOST, 3, Role::Bridge);
    names.set_role(HOST, 2, Role::Uplink);
    names.set_drop_reasons([(5, "NETFILTER_DROP".to_owned())].into());
    names
}

/// The value of the first sample whose line starts with `prefix`, before any exemplar.
fn line_value(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.split(" # ").next()?.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[test]
fn hops_become_latency_per_hop_pair_and_path() {
    let metrics = Metrics::new(Limits::default());
    let mut output = MetricsOutput::new(Arc::clone(&metrics));
    let names = names();
    for flow in 1..=3 {
        output
            .record(&Record::Packet(egress(flow)), &names)
            .unwrap();
    }
    let text = metrics.encode().unwrap();
    let pair = r#"{workload="web",from="host_veth:netif_receive_skb",to="bridge:netif_receive_skb",direction="original"}"#;
    assert_eq!(
        line_value(&text, &format!("tracer_hop_latency_seconds_count{pair}")),
        Some(3.0),
        "{text}"
    );
    // 3 us each: above the 2 us bucket, within the 4 us one.
    let bucket = |le: &str| {
        let labels = format!(
            r#"{{le="{le}",workload="web",from="host_veth:netif_receive_skb",to="bridge:netif_receive_skb",direction="original"}}"#
        );
        line_value(&text, &format!("tracer_hop_latency_seconds_bucket{labels}"))
    };
    assert_eq!(bucket("0.000002"), Some(0.0), "{text}");
    assert_eq!(bucket("0.000004"), Some(3.0), "{text}");
    assert_eq!(
        line_value(
            &text,
            r#"tracer_path_latency_seconds_count{path="egress",workload="web",direction="original"}"#
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        line_value(
            &text,
            r#"tracer_path_latency_seconds_sum{path="egress",workload="web",direction="original"}"#
        ),
        Some(3.0 * 10e-6),
        "{text}"
    );
    // Three hop pairs and one path: four label sets.
    assert_eq!(metrics.series(), 4);
    assert!(text.ends_with("# EOF\n"), "{text}");
}

#[test]
fn drops_nat_and_flows_are_counted() {
    let metrics = Metrics::new(Limits::default());
    let mut output = MetricsOutput::new(Arc::clone(&metrics));
    let names = names();
    let mut dropped = egress(7);
    dropped.hops.truncate(3);
    let last = dropped.hops.last_mut().unwrap();
    last.event.hook = Hook::KfreeSkb;
    last.event.drop = Some(DropInfo {
        reason: 5,
        location: 0,
    });
    for _ in 0..2 {
        output
            .record(&Record::Packet(dropped.clone()), &names)
            .unwrap();
    }
    output
        .record(
            &Record::Nat(NatRecord {
                flow_id: 7,
                direction: Direction::Original,
                kind: NatKind::Snat,
                before: tuple(),
                after: tuple(),
                at: None,
                source: NatSource::Conntrack,
                packet: None,
                rule: None,
                ipvs: false,
            }),
            &names,
        )
        .unwrap();
    output
        .record(
            &Record::Flow(FlowSummary {
                flow_id: 7,
                orig: tuple(),
                reply: tuple(),
                packets: [2, 0],
                first_ts: 0,
                last_ts: 0,
                hops: Vec::new(),
                evidence: Default::default(),
                verdict: None,
            }),
            &names,
        )
        .unwrap();
    metrics.set_lost(9);
    let text = metrics.encode().unwrap();
    let drops =
        r#"tracer_drops_total{reason="NETFILTER_DROP",place="bridge:kfree_skb",workload="web"}"#;
    assert_eq!(line_value(&text, drops), Some(2.0), "{text}");
    assert_eq!(
        line_value(
            &text,
            r#"tracer_nat_translations_total{kind="snat",direction="original"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        line_value(&text, "tracer_flows_total "),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        line_value(&text, "tracer_events_lost_total "),
        Some(9.0),
        "{text}"
    );
    // A dropped packet has no path latency.
    assert!(
        !text.contains("tracer_path_latency_seconds_count{"),
        "{text}"
    );
}

/// tracer's own cost, under the names of the Prometheus client libraries' process collectors,
/// with the values of the process that runs the test.
#[test]
fn the_process_metrics_are_those_of_this_process() {
    let metrics = Metrics::new(Limits::default());
    let began = Instant::now();
    // Work until the CPU time is at least one clock tick, so that it is seen to count.
    let text = loop {
        let text = metrics.encode().unwrap();
        if line_value(&text, "process_cpu_seconds_total ") > Some(0.0) {
            break text;
        }
        assert!(began.elapsed() < Duration::from_secs(10), "{text}");
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(20) {
            std::hint::black_box(spin.elapsed());
        }
    };
    let value = |name: &str| {
        line_value(&text, &format!("{name} ")).unwrap_or_else(|| panic!("no {name}: {text}"))
    };
    assert!(
        text.contains("# TYPE process_cpu_seconds counter\n"),
        "{text}"
    );
    assert!(text.contains("# TYPE process_open_fds gauge\n"), "{text}");
    let resident = value("process_resident_memory_bytes");
    assert!(resident > 0.0, "{text}");
    assert!(value("process_virtual_memory_bytes") >= resident, "{text}");
    assert!(value("process_threads") >= 1.0, "{text}");
    // At least standard input, output and error.
    let open = value("process_open_fds");
    assert!(open >= 3.0, "{text}");
    assert!(value("process_max_fds") >= open, "{text}");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let start = value("process_start_time_seconds");
    // The boot time is in whole seconds, and the wall clock may have been set since boot.
    assert!(
        start <= now + 2.0 && start > now - 86_400.0,
        "started at {start}, now {now}: {text}"
    );
    // No more CPU time than every CPU for as long as the process has run.
    let cpus = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    assert!(
        value("process_cpu_seconds_total") <= (now - start + 2.0) * cpus,
        "{text}"
    );
}

#[test]
fn label_sets_beyond_the_cap_go_to_the_overflow_series() {
    let metrics = Metrics::new(Limits {
        max_series: 2,
        interfaces: true,
        ..Limits::default()
    });
    let mut output = MetricsOutput::new(Arc::clone(&metrics));
    let names = names();
    output.record(&Record::Packet(egress(1)), &names).unwrap();
    let text = metrics.encode().unwrap();
    assert_eq!(metrics.series(), 2);
    // Per interface: places are named by interface and namespace.
    assert!(
        text.contains(r#"from="eth0@web:net_dev_queue",to="veth1@host:netif_receive_skb""#),
        "{text}"
    );
    let overflow = r#"tracer_hop_latency_seconds_count{workload="_overflow",from="_overflow",to="_overflow",direction="original"}"#;
    assert_eq!(line_value(&text, overflow), Some(1.0), "{text}");
    assert_eq!(
        line_value(&text, "tracer_series_overflowed_total "),
        Some(2.0),
        "{text}"
    );
    assert_eq!(line_value(&text, "tracer_series "), Some(2.0), "{text}");
}

/// [`EXPORTED`] is every sample name the exposition has once each metric has a sample, and
/// nothing else (the dashboard and the deploy tests rely on the list).
#[test]
fn the_exported_names_are_those_of_the_exposition() {
    let metrics = Metrics::new(Limits {
        max_series: 1,
        ..Limits::default()
    });
    let mut output = MetricsOutput::new(Arc::clone(&metrics));
    let names = names();
    output.record(&Record::Packet(egress(1)), &names).unwrap();
    let mut dropped = egress(2);
    dropped.hops.truncate(2);
    let last = dropped.hops.last_mut().unwrap();
    last.event.hook = Hook::KfreeSkb;
    last.event.drop = Some(DropInfo {
        reason: 5,
        location: 0,
    });
    output.record(&Record::Packet(dropped), &names).unwrap();
    output
        .record(
            &Record::Nat(NatRecord {
                flow_id: 1,
                direction: Direction::Original,
                kind: NatKind::Dnat,
                before: tuple(),
                after: tuple(),
                at: None,
                source: NatSource::Conntrack,
                packet: None,
                rule: None,
                ipvs: false,
            }),
            &names,
        )
        .unwrap();
    output
        .record(&Record::Flow(ended(1, Kind::Delivered)), &names)
        .unwrap();
    metrics.set_lost(1);
    metrics.set_ready();
    let text = metrics.encode().unwrap();
    let exposed: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .collect();
    let expected: std::collections::BTreeSet<&str> = EXPORTED.into_iter().collect();
    assert_eq!(exposed, expected, "{text}");
}

/// Flow `flow_id` ending with a verdict of `kind`.
fn ended(flow_id: u64, kind: Kind) -> FlowSummary {
    FlowSummary {
        flow_id,
        orig: tuple(),
        reply: tuple(),
        packets: [1, 0],
        first_ts: 0,
        last_ts: 0,
        hops: Vec::new(),
        evidence: Default::default(),
        verdict: Some(Verdict {
            kind,
            place: None,
            reason: None,
            location: None,
            packets: 1,
            retransmitted: 0,
            mtu: None,
            advice: String::new(),
            rule: None,
        }),
    }
}

#[test]
fn verdicts_are_counted_by_kind_and_the_workload_of_the_flow() {
    let metrics = Metrics::new(Limits::default());
    let mut output = MetricsOutput::new(Arc::clone(&metrics));
    let names = names();
    // Flow 1's packets leave container `web`; flow 2 was never seen as a packet.
    output.record(&Record::Packet(egress(1)), &names).unwrap();
    output
        .record(&Record::Flow(ended(1, Kind::Dropped)), &names)
        .unwrap();
    output
        .record(&Record::Flow(ended(2, Kind::Dropped)), &names)
        .unwrap();
    output
        .record(&Record::Flow(ended(3, Kind::Delivered)), &names)
        .unwrap();
    let text = metrics.encode().unwrap();
    let count =
        |labels: &str| line_value(&text, &format!("tracer_flow_verdicts_total{{{labels}}}"));
    assert_eq!(
        count(r#"kind="dropped",workload="web""#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        count(r#"kind="dropped",workload="none""#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        count(r#"kind="delivered",workload="none""#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        line_value(&text, "tracer_flows_total "),
        Some(3.0),
        "{text}"
    );
}

/// A clock set by hand, shared with the metrics that read it.
#[derive(Debug, Clone, Default)]
struct Hand(Arc<AtomicU64>);

impl Hand {
    fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_nanos() as u64, Ordering::Relaxed);
    }
}

impl Clock for Hand {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }
}

/// Metrics whose series expire after a minute, on a clock set by hand.
fn expiring(max_series: usize) -> (Arc<Metrics>, Hand) {
    let hand = Hand::default();
    let limits = Limits {
        max_series,
        series_ttl: Some(Duration::from_secs(60)),
        ..Limits::default()
    };
    (Metrics::with_clock(limits, Box::new(hand.clone())), hand)
}

fn snat(flow_id: u64) -> Record {
    Record::Nat(NatRecord {
        flow_id,
        direction: Direction::Original,
        kind: NatKind::Snat,
        before: tuple(),
        after: tuple(),
        at: None,
        source: NatSource::Conntrack,
        packet: None,
        rule: None,
        ipvs: false,
    })
}

const HOP_COUNT: &str = r#"tracer_hop_latency_seconds_count{workload="web",from="host_veth:netif_receive_skb",to="bridge:netif_receive_skb",direction="original"}"#;
const NAT_COUNT: &str = r#"tracer_nat_translations_total{kind="snat",direction="original"}"#;

/// A label set not observed for the TTL is gone from the exposition and gives its room back;
/// one observed within the TTL stays.
#[test]
fn a_series_unobserved_for_the_ttl_is_removed() {
    let (metrics, hand) = expiring(5000);
    let mut output = MetricsOutput::new(Arc::clone(&metrics));
    let names = names();
    output.record(&Record::Packet(egress(1)), &names).unwrap();
    output.record(&snat(1), &names).unwrap();
    // Three hop pairs, one path, one translation.
    assert_eq!(metrics.series(), 5);
    hand.advance(Duration::from_secs(50));
    output.record(&snat(2), &names).unwrap();
    hand.advance(Duration::from_secs(9));
    let text = metrics.encode().unwrap();
    assert_eq!(line_value(&text, HOP_COUNT), Some(1.0), "{text}");
    assert_eq!(line_value(&text, "tracer_series "), Some(5.0), "{text}");
    // A minute after the packet, 10 s after the last translation.
    hand.advance(Duration::from_secs(1));
    let text = metrics.encode().unwrap();
    assert!(!text.contains("tracer_hop_latency_seconds"), "{text}");
    assert!(!text.contains("tracer_path_latency_seconds"), "{text}");
    assert_eq!(line_value(&text, NAT_COUNT), Some(2.0), "{text}");
    assert_eq!(line_value(&text, "tracer_series "), Some(1.0), "{text}");
    assert_eq!(metrics.series(), 1);
    // The label set comes back as a new series.
    output.record(&Record::Packet(egress(3)), &names).unwrap();
    let text = metrics.encode().unwrap();
    assert_eq!(line_value(&text, HOP_COUNT), Some(1.0), "{text}");
    assert_eq!(metrics.series(), 5);
}

/// Without scrapes too: observing sweeps.
#[test]
fn observing_removes_the_expired_series() {
    let (metrics, hand) = expiring(5000);
    let mut output = MetricsOutput::new(Arc::clone(&metrics));
    let names = names();
    output.record(&Record::Packet(egress(1)), &names).unwrap();
    hand.advance(Duration::from_secs(61));
    output.record(&snat(1), &names).unwrap();
    assert_eq!(metrics.series(), 1);
}

/// Once the series that filled the cap expire, a new label set has its own series instead of
/// the overflow series, which expires as well.
#[test]
fn after_expiry_a_new_label_set_gets_its_own_series() {
    let (metrics, hand) = expiring(4);
    let mut output = MetricsOutput::new(Arc::clone(&metrics));
    let names = names();
    output.record(&Record::Packet(egress(1)), &names).unwrap();
    assert_eq!(metrics.series(), 4);
    let verdict = |workload: &str| {
        format!(r#"tracer_flow_verdicts_total{{kind="delivered",workload="{workload}"}}"#)
    };
    output
        .record(&Record::Flow(ended(2, Kind::Delivered)), &names)
        .unwrap();
    let text = metrics.encode().unwrap();
    assert_eq!(
        line_value(&text, &verdict("_overflow")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(line_value(&text, &verdict("none")), None, "{text}");
    hand.advance(Duration::from_secs(60));
    output
        .record(&Record::Flow(ended(3, Kind::Delivered)), &names)
        .unwrap();
    let text = metrics.encode().unwrap();
    assert_eq!(line_value(&text, &verdict("none")), Some(1.0), "{text}");
    assert_eq!(line_value(&text, &verdict("_overflow")), None, "{text}");
    assert_eq!(line_value(&text, "tracer_series "), Some(1.0), "{text}");
    assert_eq!(
        line_value(&text, "tracer_series_overflowed_total "),
        Some(1.0),
        "{text}"
    );
}

/// `--series-ttl 0`: series stay for ever.
#[test]
fn without_a_ttl_series_stay() {
    let hand = Hand::default();
    let limits = Limits {
        series_ttl: None,
        ..Limits::default()
    };
    let metrics = Metrics::with_clock(limits, Box::new(hand.clone()));
    let mut output = MetricsOutput::new(Arc::clone(&metrics));
    output.record(&Record::Packet(egress(1)), &names()).unwrap();
    hand.advance(Duration::from_secs(365 * 86_400));
    let text = metrics.encode().unwrap();
    assert_eq!(line_value(&text, HOP_COUNT), Some(1.0), "{text}");
    assert_eq!(metrics.series(), 4);
}

/// The exemplar of the 4 us bucket of the pair host veth to bridge, in the OpenMetrics text.
fn bucket_exemplar(text: &str) -> Option<&str> {
    let bucket = r#"tracer_hop_latency_seconds_bucket{le="0.000004",workload="web",from="host_veth:netif_receive_skb",to="bridge:netif_receive_skb",direction="original"} "#;
    let line = text.lines().find(|line| line.starts_with(bucket))?;
    Some(line.split_once(" # ")?.1)
}

/// Each hop latency bucket carries the flow and tuple of its latest packet, in OpenMetrics.
#[test]
fn hop_latency_buckets_carry_an_exemplar_of_a_recent_packet() {
    let metrics = Metrics::new(Limits::default());
    let mut output = MetricsOutput::new(Arc::clone(&metrics));
    let names = names();
    output.record(&Record::Packet(egress(41)), &names).unwrap();
    output.record(&Record::Packet(egress(42)), &names).unwrap();
    let text = metrics.encode().unwrap();
    let exemplar = bucket_exemplar(&text).unwrap_or_else(|| panic!("no exemplar: {text}"));
    let (labels, rest) = exemplar.split_once("} ").unwrap();
    assert_eq!(
        labels,
        r#"{flow_id="42",tuple="tcp 172.17.0.2:40000 > 198.19.0.252:80""#
    );
    // The observed value, then when it was observed.
    let (value, timestamp) = rest.split_once(' ').unwrap();
    assert_eq!(value.parse::<f64>(), Ok(3e-6), "{text}");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let timestamp: f64 = timestamp.parse().unwrap();
    assert!(timestamp <= now && timestamp > now - 60.0, "{text}");
    // Empty buckets have none; path latency has none.
    assert!(
        text.lines()
            .filter(|line| line.contains(" # {"))
            .all(
                |line| line.starts_with("tracer_hop_latency_seconds_bucket{")
                    && !line.starts_with("tracer_hop_latency_seconds_bucket{le=\"0.000001\"")
            ),
        "{text}"
    );
}

/// The classic text format, for clients that do not ask for OpenMetrics, has no exemplars.
#[test]
fn the_classic_text_has_no_exemplars() {
    let metrics = Metrics::new(Limits::default());
    let mut output = MetricsOutput::new(Arc::clone(&metrics));
    output
        .record(&Record::Packet(egress(42)), &names())
        .unwrap();
    let openmetrics = metrics.encode().unwrap();
    assert!(bucket_exemplar(&openmetrics).is_some(), "{openmetrics}");
    let text = http::prometheus_text(&openmetrics);
    assert!(
        text.lines()
            .all(|line| line.starts_with('#') || !line.contains('#')),
        "{text}"
    );
    assert!(!text.contains("flow_id"), "{text}");
    assert_eq!(
        line_value(
            &text,
            r#"tracer_hop_latency_seconds_bucket{le="0.000004",workload="web",from="host_veth:netif_receive_skb",to="bridge:netif_receive_skb",direction="original"}"#
        ),
        Some(1.0),
        "{text}"
    );
}
