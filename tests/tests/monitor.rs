//! `tracer monitor` scraped by a real Prometheus server (Debian's `prometheus`): connections
//! through the testbed's SNAT and DNAT paths and datagrams dropped on the way. Prometheus'
//! own query of the hop latency agrees with what a trace of the same packets measures, the
//! drop counter counts the dropped datagrams exactly, the NAT counters count every
//! translation of every connection exactly, and
//! `promtool check metrics` accepts the exposition. Also: sampling keeps whole connections, and
//! the series of containers that went away expire (`--series-ttl`) while the hop latency carries
//! exemplars in OpenMetrics. Fails where Prometheus is not installed.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde_json::Value;
use tracer_tests::{
    machine::which,
    prometheus::{Prometheus, get, wait_until},
    skip::missing,
    testbed::{SERVER_ADDR, Testbed, UPLINK_ADDR},
    trace,
    tracer::Tracer,
    traffic,
};

const METRICS: u16 = 19491;
const PROMETHEUS: u16 = 19492;

/// How far apart two tracers time one gap between the same two hops, at most, but for a few
/// packets: their programs' clock reads differ by the time the programs before them on each
/// hook take (see the p50 check).
const CLOCK_READS: f64 = 0.5e-6;

/// The bucket of the monitor's latency histograms that holds `seconds`: (lower, upper], the
/// bounds doubling from 1 us for 15 buckets (`tracer/src/metrics`), the first from 0.
fn bucket(seconds: f64) -> Option<(f64, f64)> {
    let mut lower = 0.0;
    for i in 0..15 {
        let upper = 1e-6 * f64::from(1u32 << i);
        if seconds <= upper {
            return Some((lower, upper));
        }
        lower = upper;
    }
    None
}

/// The gaps, in ns, between consecutive hops `from` and `to` (interface and hook) of the
/// original-direction packets in a trace.
fn gaps(lines: &[Value], from: (&str, &str), to: (&str, &str)) -> Vec<u64> {
    let mut gaps = Vec::new();
    for packet in trace::packets(lines) {
        if packet.first()["direction"] != "original" {
            continue;
        }
        for pair in packet.hops.windows(2) {
            let at = |hop: &Value, (ifname, hook): (&str, &str)| {
                hop["ifname"] == ifname && hop["hook"] == hook && hop["netns"] != Value::Null
            };
            if at(&pair[0], from) && at(&pair[1], to) {
                gaps.push(pair[1]["since_prev_ns"].as_u64().unwrap_or(0));
            }
        }
    }
    gaps.sort_unstable();
    gaps
}

#[test]
fn prometheus_scrapes_what_the_monitor_measures() -> anyhow::Result<()> {
    let (snat, dnat, dropped, container_port) = (10041u16, 10042u16, 10043u16, 8042u16);
    let testbed = Testbed::up(1)?;
    let ctr = &testbed.containers[0];
    let host_veth = ctr.host_veth.clone();
    testbed.publish(dnat, 0, container_port)?;
    testbed.host.exec(
        "iptables",
        &[
            "-A",
            "FORWARD",
            "-p",
            "udp",
            "--dport",
            &dropped.to_string(),
            "-j",
            "DROP",
        ],
    )?;
    let filter = format!("port {snat} or port {dnat} or port {dropped} or port {container_port}");
    let metrics = format!("127.0.0.1:{METRICS}");
    // Every connection (the default keeps 1 in 16), to compare with a trace of them all.
    let monitor = Tracer::start(&["monitor", "--metrics", &metrics, "--sample", "1", &filter])?;
    let reference = Tracer::start(&["--output", "json", &filter])?;
    let prometheus = Prometheus::start(
        PROMETHEUS,
        &format!(
            "  - job_name: tracer\n    static_configs:\n      - targets: ['127.0.0.1:{METRICS}']\n"
        ),
    )?;
    assert!(get(METRICS, "/ready")?.starts_with("HTTP/1.0 200"));
    // An address that is taken: one line, exit 2, before anything is attached.
    let taken = tracer_tests::tracer::run(&["monitor", "--metrics", &metrics])?;
    assert_eq!(taken.status.code(), Some(2), "{}", taken.stderr);
    assert!(
        taken.stderr.trim().lines().count() == 1 && taken.stderr.contains("cannot listen on"),
        "{}",
        taken.stderr
    );

    // SNAT: the container connects out; DNAT: the remote connects to the published port;
    // drops: datagrams the host's FORWARD chain drops.
    let (outbound, inbound) = (20u32, 5u32);
    let server = traffic::listen(&testbed.remote, SocketAddr::from((SERVER_ADDR, snat)))?;
    for _ in 0..outbound {
        traffic::exchange(
            &ctr.netns,
            None,
            SocketAddr::from((SERVER_ADDR, snat)),
            &server,
        )?;
    }
    let inside = traffic::listen(&ctr.netns, SocketAddr::from((ctr.addr, container_port)))?;
    for _ in 0..inbound {
        traffic::exchange(
            &testbed.remote,
            None,
            SocketAddr::from((UPLINK_ADDR, dnat)),
            &inside,
        )?;
    }
    let datagrams = 7;
    let socket: UdpSocket = ctr
        .netns
        .enter(|| UdpSocket::bind(SocketAddr::from((ctr.addr, 0))))??;
    for _ in 0..datagrams {
        socket.send_to(b"lost", SocketAddr::from((SERVER_ADDR, dropped)))?;
    }

    let finished = reference.stop()?;
    assert!(finished.status.success(), "{}", finished.stderr);
    let lines = finished.json()?;
    let from = (host_veth.as_str(), "netif_receive_skb");
    let to = ("docker0", "netif_receive_skb");
    let measured = gaps(&lines, from, to);
    assert!(measured.len() >= 40, "{} gaps", measured.len());
    let pair =
        r#"from="host_veth:netif_receive_skb",to="bridge:netif_receive_skb",direction="original""#;
    // Prometheus has scraped every packet the trace saw on that pair.
    wait_until("Prometheus has every packet", || {
        let count =
            prometheus.scalar(&format!("sum(tracer_hop_latency_seconds_count{{{pair}}})"))?;
        Ok(count == Some(measured.len() as f64))
    })?;
    let estimate = prometheus
        .scalar(&format!(
            "histogram_quantile(0.5, sum by (le) (tracer_hop_latency_seconds_bucket{{{pair}}}))"
        ))?
        .context("no p50")?;
    // Prometheus' histogram_quantile takes the bucket where the rank 0.5 * N falls and
    // interpolates linearly inside it. The trace's exact p50, its ceil(N/2)-th smallest gap,
    // sits at that same rank, so over the same gaps the estimate lies in the very bucket that
    // holds the exact p50 (anywhere in it: the interpolation knows counts, not values). The
    // monitor times the hops with its own programs' clock reads, which put its gap of a packet
    // a few hundred ns from the reference tracer's (0.1-0.3 us for most packets, measured on
    // the development machine); only where the exact p50 is that close to a bucket bound may
    // the estimate fall in the bucket on the other side.
    let p50 = measured[(measured.len() - 1) / 2] as f64 / 1e9;
    let (mut lower, mut upper) = bucket(p50).context("p50 beyond the buckets")?;
    if p50 - lower <= CLOCK_READS && lower > 0.0 {
        lower = bucket(lower).map_or(0.0, |(below, _)| below);
    }
    if upper - p50 <= CLOCK_READS {
        upper *= 2.0;
    }
    assert!(
        lower < estimate && estimate <= upper,
        "Prometheus' p50 {estimate} s is not in ({lower}, {upper}], the bucket of the trace's \
         p50 {p50} s"
    );

    wait_until("Prometheus counts the drops", || {
        Ok(prometheus
            .scalar(r#"sum(tracer_drops_total{reason="NETFILTER_DROP"})"#)?
            .is_some_and(|n| n >= f64::from(datagrams)))
    })?;
    assert_eq!(
        prometheus.scalar(r#"sum(tracer_drops_total{reason="NETFILTER_DROP"})"#)?,
        Some(f64::from(datagrams)),
        "every dropped datagram, once"
    );
    // One translation each way for every connection: masqueraded out, or to the published
    // port.
    let translations = [
        ("snat", "original", outbound),
        ("snat", "reply", outbound),
        ("dnat", "original", inbound),
        ("dnat", "reply", inbound),
    ];
    let traced = trace::of_type(&lines, "nat");
    for (kind, direction, connections) in translations {
        let in_trace = traced
            .iter()
            .filter(|nat| nat["kind"] == kind && nat["direction"] == direction)
            .count();
        assert_eq!(
            u32::try_from(in_trace)?,
            connections,
            "{kind} {direction} in the trace"
        );
        let query = format!(
            r#"sum(tracer_nat_translations_total{{kind="{kind}",direction="{direction}"}})"#
        );
        // Compared also when the wait ran out, so that a count short of it shows.
        let counted = wait_until(
            &format!("Prometheus counts every {kind} {direction}"),
            || {
                Ok(prometheus
                    .scalar(&query)?
                    .is_some_and(|n| n >= f64::from(connections)))
            },
        );
        assert_eq!(
            prometheus.scalar(&query)?,
            Some(f64::from(connections)),
            "{kind} {direction}"
        );
        counted?;
    }
    assert_eq!(prometheus.scalar("tracer_ready")?, Some(1.0));
    assert_eq!(prometheus.scalar("tracer_events_lost_total")?, Some(0.0));

    // promtool accepts the exposition as curl (or any client not asking for OpenMetrics) gets it.
    let exposition = get(METRICS, "/metrics")?;
    let body = exposition
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    promtool_check(&body)?;

    drop(prometheus);
    let finished = monitor.stop()?;
    assert!(finished.status.success(), "{}", finished.stderr);
    // The endpoint went with the process.
    assert!(TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], METRICS))).is_err());
    Ok(())
}

/// The value of an unlabelled sample in the monitor's exposition.
fn sample(exposition: &str, name: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// The sum of a labelled sample's series whose labels contain `labels`.
fn sum(exposition: &str, name: &str, labels: &str) -> f64 {
    exposition
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")) && line.contains(labels))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `--sample 4` keeps exactly the connections whose key hashes to a multiple of 4 (computed
/// here from the tuples), and keeps each whole: its packets are measured inside the container
/// as often as beyond the NAT, at the uplink.
#[test]
fn sampling_keeps_whole_connections_chosen_by_their_hash() -> anyhow::Result<()> {
    let port = 10044u16;
    let testbed = Testbed::up(1)?;
    let ctr = &testbed.containers[0];
    let server = SocketAddr::from((SERVER_ADDR, port));
    let listener = traffic::listen(&testbed.remote, server)?;
    let metrics = format!("127.0.0.1:{}", METRICS + 10);
    let monitor = Tracer::start(&[
        "monitor",
        "--metrics",
        &metrics,
        "--sample",
        "4",
        &format!("port {port}"),
    ])?;
    let connections = 40u16;
    let mut kept = 0;
    for source in 0..connections {
        let src_port = 43100 + source;
        traffic::exchange(&ctr.netns, Some(src_port), server, &listener)?;
        // The container's tuple, as conntrack records it before MASQUERADE.
        let v4 = |ip: std::net::Ipv4Addr| {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&ip.octets());
            a
        };
        let key =
            tracer_common::flow::FlowKey::new(6, &v4(ctr.addr), src_port, &v4(SERVER_ADDR), port);
        if key.sample_hash().is_multiple_of(4) {
            kept += 1;
        }
    }
    assert!(
        0 < kept && kept < connections,
        "{kept} of {connections} kept"
    );
    let mut exposition = String::new();
    wait_until("every kept connection has ended", || {
        exposition = get(METRICS + 10, "/metrics")?;
        Ok(sample(&exposition, "tracer_flows_total") >= Some(f64::from(kept)))
    })?;
    assert_eq!(
        sample(&exposition, "tracer_flows_total"),
        Some(f64::from(kept)),
        "{exposition}"
    );
    // Whole connections: as many packets leave the container as reach the uplink.
    let leaving = sum(
        &exposition,
        "tracer_hop_latency_seconds_count",
        r#"from="container:net_dev_queue",to="host_veth:netif_receive_skb",direction="original""#,
    );
    let out = sum(
        &exposition,
        "tracer_hop_latency_seconds_count",
        r#"to="uplink:net_dev_queue",direction="original""#,
    );
    assert!(leaving >= f64::from(kept) * 3.0, "{exposition}");
    assert_eq!(leaving, out, "{exposition}");
    let finished = monitor.stop()?;
    assert!(finished.status.success(), "{}", finished.stderr);
    Ok(())
}

/// The body of the monitor's `/metrics` as a client that asks for OpenMetrics gets it, with its
/// content type.
fn openmetrics(port: u16) -> anyhow::Result<(String, String)> {
    let mut stream = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port)))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\
         Accept: application/openmetrics-text; version=1.0.0\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("no body: {response}"))?;
    let kind = head
        .lines()
        .find_map(|line| {
            line.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_owned)
        })
        .with_context(|| format!("no content type: {head}"))?;
    Ok((kind, body.to_owned()))
}

/// `promtool check metrics` on `body`.
fn promtool_check(body: &str) -> anyhow::Result<()> {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("failed to start promtool")?;
    promtool
        .stdin
        .take()
        .context("stdin")?
        .write_all(body.as_bytes())?;
    let checked = promtool.wait_with_output()?;
    if !checked.status.success() {
        bail!(
            "promtool: {}{}\n{body}",
            String::from_utf8_lossy(&checked.stdout),
            String::from_utf8_lossy(&checked.stderr)
        );
    }
    Ok(())
}

/// The resident memory of process `pid`, in bytes.
fn resident(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().strip_suffix(" kB")?.trim().parse().ok())
        .with_context(|| format!("no VmRSS in {status}"))?;
    Ok(kb * 1024)
}

/// `--series-ttl`: containers come, make one connection each and go, in rounds. Their series
/// (one per veth, with `--per-interface`) appear, are removed once idle for the TTL, and
/// `tracer_series` falls back to where it was; the monitor's memory after the last round is
/// where it was after the first. Meanwhile promtool accepts the classic exposition, and the
/// OpenMetrics one has exemplars on the hop latency buckets that name a flow and its tuple.
#[test]
fn the_series_of_containers_that_went_away_expire() -> anyhow::Result<()> {
    which("promtool").ok_or_else(|| missing("promtool is not installed (Debian's prometheus)"))?;
    let port = 10046u16;
    let mut testbed = Testbed::up(0)?;
    let server = SocketAddr::from((SERVER_ADDR, port));
    let listener = traffic::listen(&testbed.remote, server)?;
    let metrics_port = METRICS + 20;
    let metrics = format!("127.0.0.1:{metrics_port}");
    let monitor = Tracer::start(&[
        "monitor",
        "--metrics",
        &metrics,
        "--sample",
        "1",
        "--per-interface",
        "--series-ttl",
        "2s",
        &format!("port {port}"),
    ])?;
    let scrape = || -> anyhow::Result<String> {
        let response = get(metrics_port, "/metrics")?;
        Ok(response
            .split_once("\r\n\r\n")
            .unwrap_or_default()
            .1
            .to_owned())
    };
    let before = sample(&scrape()?, "tracer_series").context("no tracer_series")?;
    // How much the resident memory may grow from the first round to the last: what the
    // allocator and the runtime keep of what later rounds used (0.3 to 1 MiB on the development
    // machine, debug build), twice over. A round's 60 to 80 series take a few hundred KiB, so
    // this catches a leak per container or per flow, not the series of one round.
    const FLAT: u64 = 2 << 20;
    let (rounds, per_round) = (3, 10);
    let mut connections = 0;
    let mut after_first = None;
    for round in 0..rounds {
        for index in 0..per_round {
            testbed.add_container()?;
            let ctr = testbed.containers.last().context("just added")?;
            traffic::exchange_then_reset(&ctr.netns, None, server, &listener)?;
            connections += 1;
            // Its host veth, as `--per-interface` names it.
            let veth = format!("{}@", ctr.host_veth);
            let mut text = String::new();
            wait_until(&format!("the series of {} appear", ctr.netns.name), || {
                text = scrape()?;
                Ok(text.contains(&veth))
            })?;
            assert!(sample(&text, "tracer_series") > Some(before), "{text}");
            if round == 0 && index == 0 {
                promtool_check(&text)?;
                assert!(
                    text.lines()
                        .all(|line| line.starts_with('#') || !line.contains('#')),
                    "an exemplar in the classic format: {text}"
                );
                let (kind, text) = openmetrics(metrics_port)?;
                assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
                let tuple = format!("tuple=\"tcp {}:", ctr.addr);
                let exemplar = text.lines().find(|line| {
                    line.starts_with("tracer_hop_latency_seconds_bucket{")
                        && line.contains(&veth)
                        && line.contains(" # {flow_id=\"")
                        && line.contains(&tuple)
                });
                assert!(exemplar.is_some(), "no exemplar with {tuple}: {text}");
            }
            drop(testbed.containers.pop());
        }
        // Every connection has ended (its verdict is a series of its container's too), and
        // every series has had no observation for the TTL.
        wait_until("every connection has ended", || {
            Ok(sample(&scrape()?, "tracer_flows_total") >= Some(f64::from(connections)))
        })?;
        let mut text = String::new();
        wait_until("the series of the removed containers are gone", || {
            text = scrape()?;
            Ok(sample(&text, "tracer_series") == Some(before))
        })?;
        assert!(
            !text.contains(&format!("v{}c", testbed.id)),
            "a removed container's series is left: {text}"
        );
        assert!(
            !text.contains("tracer_hop_latency_seconds_count{"),
            "{text}"
        );
        promtool_check(&text)?;
        let now = resident(monitor.pid())?;
        match after_first {
            None => after_first = Some(now),
            Some(first) => assert!(
                now <= first + FLAT,
                "resident memory grew from {first} after the first round to {now} after round {}",
                round + 1
            ),
        }
    }
    let finished = monitor.stop()?;
    assert!(finished.status.success(), "{}", finished.stderr);
    Ok(())
}
