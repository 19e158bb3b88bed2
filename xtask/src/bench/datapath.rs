//! Datapath throughput (iperf3, several streams, container -> bridge -> MASQUERADE -> uplink ->
//! remote) untraced, traced, and under tcpdump; and the kernel programs' cost per packet from
//! `kernel.bpf_stats_enabled`.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tracer_tests::{
    netns::Netns,
    testbed::{SERVER_ADDR, Testbed},
    tracer::Tracer,
};

use tracer_common::hook::program;

use super::Stat;

const IPERF_PORT: u16 = 5201;
const STREAMS: &str = "4";

/// The configurations compared, in the order they are interleaved.
const CONFIGS: [&str; 4] = [
    "untraced",
    "tracer, filter matches nothing",
    "tracer, every packet matches",
    "tcpdump on veth, docker0, uplink",
];

/// One program's mean run time and how many runs it is the mean of.
#[derive(Clone, Copy)]
pub struct Cost {
    ns: f64,
    runs: f64,
}

const NO_COST: Cost = Cost {
    ns: f64::NAN,
    runs: 0.0,
};

pub struct Results {
    throughput: Vec<(String, Stat)>,
    lost: BTreeMap<String, Vec<u64>>,
    /// Per program: (name, ns per run when nothing matches, ns per run when everything does).
    kernel: Vec<(String, Cost, Cost)>,
}

pub fn run(repeats: usize, quick: bool) -> anyhow::Result<Results> {
    let seconds = if quick { 2 } else { 10 };
    let testbed = Testbed::up(1)?;
    let _server = IperfServer::start(&testbed.remote)?;
    let mut samples: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut lost: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for _ in 0..repeats {
        for config in CONFIGS {
            let (gbps, lost_events) = measure(&testbed, config, seconds)?;
            samples.entry(config).or_default().push(gbps);
            if let Some(lost_events) = lost_events {
                lost.entry(config.to_owned()).or_default().push(lost_events);
            }
        }
    }
    let throughput = CONFIGS
        .iter()
        .map(|c| (c.to_string(), Stat::of(&samples[c])))
        .collect();
    let kernel = kernel_cost(&testbed, if quick { 1 } else { 3 })?;
    Ok(Results {
        throughput,
        lost,
        kernel,
    })
}

/// One iperf3 run under `config`: Gbit/s, and events lost when tracer ran.
fn measure(testbed: &Testbed, config: &str, seconds: u64) -> anyhow::Result<(f64, Option<u64>)> {
    let port = IPERF_PORT.to_string();
    let tracer = match config {
        "tracer, filter matches nothing" => Some(Tracer::start_with_stdout(
            &["--port", "1", "--output", "json"],
            Stdio::null(),
        )?),
        "tracer, every packet matches" => Some(Tracer::start_with_stdout(
            &["--port", &port, "--output", "json"],
            Stdio::null(),
        )?),
        _ => None,
    };
    let dumps = if config.starts_with("tcpdump") {
        let ctr = &testbed.containers[0];
        let mut dumps = Vec::new();
        for iface in [ctr.host_veth.as_str(), "docker0", "eth0"] {
            dumps.push(Tcpdump::start(&testbed.host, iface)?);
        }
        dumps
    } else {
        Vec::new()
    };
    let gbps = iperf(&testbed.containers[0].netns, seconds)?;
    drop(dumps);
    let lost = match tracer {
        Some(tracer) => Some(lost_from(&tracer.stop()?.stderr)),
        None => None,
    };
    Ok((gbps, lost))
}

/// Lost events from tracer's closing line on stderr (`tracer: N events, M lost, ...`).
pub fn lost_from(stderr: &str) -> u64 {
    stderr
        .lines()
        .rev()
        .find_map(|line| {
            let rest = line.strip_prefix("tracer: ")?;
            let (_, rest) = rest.split_once(" events, ")?;
            rest.split(" lost").next()?.parse().ok()
        })
        .unwrap_or(0)
}

fn iperf(client: &Netns, seconds: u64) -> anyhow::Result<f64> {
    let output = client.exec(
        "iperf3",
        &[
            "-c",
            &SERVER_ADDR.to_string(),
            "-p",
            &IPERF_PORT.to_string(),
            "-P",
            STREAMS,
            "-t",
            &seconds.to_string(),
            "-J",
        ],
    )?;
    let report: Value = serde_json::from_str(&output).context("iperf3 -J output")?;
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|bps| bps / 1e9)
        .context("no throughput in the iperf3 report")
}

/// iperf3 server in a namespace, killed on drop.
struct IperfServer(Child);

impl IperfServer {
    fn start(netns: &Netns) -> anyhow::Result<IperfServer> {
        let child = Command::new("ip")
            .args(["netns", "exec", &netns.name, "iperf3", "-s", "-B"])
            .arg(SERVER_ADDR.to_string())
            .args(["-p", &IPERF_PORT.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let server = IperfServer(child);
        // Ready when it accepts a connection.
        let addr = SocketAddr::from((SERVER_ADDR, IPERF_PORT));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while netns
            .enter(|| std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)))?
            .is_err()
        {
            if std::time::Instant::now() > deadline {
                bail!("iperf3 server did not start");
            }
        }
        Ok(server)
    }
}

impl Drop for IperfServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// tcpdump writing one interface to /dev/null, ready once it says it is listening.
struct Tcpdump(Child);

impl Tcpdump {
    fn start(netns: &Netns, iface: &str) -> anyhow::Result<Tcpdump> {
        use std::io::{BufRead, BufReader};
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &netns.name,
                "tcpdump",
                "-i",
                iface,
                "-w",
                "/dev/null",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().context("tcpdump stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("listening on") => break,
                Some(Ok(_)) => {}
                _ => bail!("tcpdump on {iface} did not start"),
            }
        }
        // Keep draining stderr so tcpdump never blocks on it.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(Tcpdump(child))
    }
}

impl Drop for Tcpdump {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = self.0.wait();
    }
}

/// Mean run time per program invocation, with nothing matching and with everything matching,
/// from the kernel's own statistics.
fn kernel_cost(testbed: &Testbed, seconds: u64) -> anyhow::Result<Vec<(String, Cost, Cost)>> {
    let _stats = BpfStats::enable()?;
    let _floor = super::floor::Floor::attach(c"netif_receive_skb")?;
    let mut per_config = Vec::new();
    for port in ["1", &IPERF_PORT.to_string()] {
        let tracer =
            Tracer::start_with_stdout(&["--port", port, "--output", "json"], Stdio::null())?;
        iperf(&testbed.containers[0].netns, seconds)?;
        let costs = program_costs()?;
        tracer.stop()?;
        per_config.push(costs);
    }
    let names: Vec<String> = per_config[0].keys().cloned().collect();
    Ok(names
        .into_iter()
        .map(|name| {
            let miss = per_config[0].get(&name).copied().unwrap_or(NO_COST);
            let hit = per_config[1].get(&name).copied().unwrap_or(NO_COST);
            (name, miss, hit)
        })
        .collect())
}

/// Our programs' (and the floor's) run_time_ns / run_cnt, by name, from `bpftool prog show`.
fn program_costs() -> anyhow::Result<BTreeMap<String, Cost>> {
    const OURS: [&str; 8] = [
        super::floor::NAME,
        program::NET_DEV_QUEUE,
        program::NET_DEV_START_XMIT,
        program::NETIF_RX,
        program::NETIF_RECEIVE_SKB,
        program::KFREE_SKB,
        program::TC_INGRESS,
        program::TC_EGRESS,
    ];
    let output = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()?;
    let programs: Value = serde_json::from_slice(&output.stdout)?;
    let mut costs = BTreeMap::new();
    for program in programs.as_array().into_iter().flatten() {
        let name = program["name"].as_str().unwrap_or_default();
        if !OURS.contains(&name) {
            continue;
        }
        let (time, count) = (program["run_time_ns"].as_f64(), program["run_cnt"].as_f64());
        if let (Some(time), Some(count)) = (time, count)
            && count > 0.0
        {
            costs.insert(
                name.to_owned(),
                Cost {
                    ns: time / count,
                    runs: count,
                },
            );
        }
    }
    Ok(costs)
}

/// `kernel.bpf_stats_enabled`, on while this lives and restored after.
struct BpfStats(String);

impl BpfStats {
    fn enable() -> anyhow::Result<BpfStats> {
        let path = "/proc/sys/kernel/bpf_stats_enabled";
        let before = std::fs::read_to_string(path)?;
        std::fs::write(path, "1")?;
        Ok(BpfStats(before))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", self.0.trim());
    }
}

impl Results {
    /// Median throughput of `config` over the untraced median.
    pub fn ratio(&self, config: &str) -> Option<f64> {
        let find = |c: &str| {
            self.throughput
                .iter()
                .find(|(n, _)| n == c)
                .map(|(_, s)| s.median)
        };
        Some(find(config)? / find(CONFIGS[0])?)
    }

    /// Mean run time per packet over all of tracer's programs, weighted by how often each
    /// ran: (ns per non-matching packet, ns per matching one).
    pub fn kernel_cost(&self) -> (f64, f64) {
        let ours: Vec<_> = self
            .kernel
            .iter()
            .filter(|(n, _, _)| n != super::floor::NAME)
            .collect();
        let mean = |cost: fn(&(String, Cost, Cost)) -> Cost| {
            let (time, runs) = ours.iter().map(|p| cost(p)).fold((0.0, 0.0), |(t, r), c| {
                if c.runs > 0.0 {
                    (t + c.ns * c.runs, r + c.runs)
                } else {
                    (t, r)
                }
            });
            if runs > 0.0 { time / runs } else { f64::NAN }
        };
        (mean(|p| p.1), mean(|p| p.2))
    }

    /// The empty program's cost on the same traffic: (no match, match).
    pub fn floor(&self) -> (f64, f64) {
        self.kernel
            .iter()
            .find(|(n, _, _)| n == super::floor::NAME)
            .map_or((f64::NAN, f64::NAN), |p| (p.1.ns, p.2.ns))
    }

    pub fn markdown(&self) -> String {
        let mut md = String::from(
            "## Datapath throughput\n\niperf3, 4 TCP streams, container -> veth -> docker0 -> MASQUERADE -> uplink -> remote.\n\n| Configuration | Gbit/s | Ratio to untraced |\n|---|---|---|\n",
        );
        for (config, stat) in &self.throughput {
            let _ = writeln!(
                md,
                "| {config} | {:.2} [{:.2}-{:.2}] | {:.3} |",
                stat.median,
                stat.min,
                stat.max,
                self.ratio(config).unwrap_or(f64::NAN)
            );
        }
        md += "\n## Kernel program cost\n\n`kernel.bpf_stats_enabled=1`, run_time_ns / run_cnt per program, during iperf3 with tracer filtering on a port nothing uses and on the iperf3 port. `trc_floor` is an empty program (`r0 = 0; exit`) on `netif_receive_skb` during the same runs: the cost of the tracepoint call and of the accounting on this machine, under any program.\n\n| Program | ns per packet, no match | runs | ns per packet, match | runs |\n|---|---|---|---|---|\n";
        for (name, miss, hit) in &self.kernel {
            let _ = writeln!(
                md,
                "| {name} | {:.0} | {} | {:.0} | {} |",
                miss.ns, miss.runs, hit.ns, hit.runs
            );
        }
        let (miss, hit) = self.kernel_cost();
        let _ = writeln!(
            md,
            "| all of tracer's, weighted by runs | {miss:.0} | | {hit:.0} | |"
        );
        md.push('\n');
        md
    }

    pub fn json(&self) -> Value {
        json!({
            "throughput_gbps": self.throughput.iter().map(|(c, s)| json!({"config": c, "gbps": s.json(), "ratio": self.ratio(c)})).collect::<Vec<_>>(),
            "lost": self.lost,
            "kernel_ns": self.kernel.iter().map(|(n, miss, hit)| json!({"program": n, "no_match_ns": miss.ns, "no_match_runs": miss.runs, "match_ns": hit.ns, "match_runs": hit.runs})).collect::<Vec<_>>(),
        })
    }
}
