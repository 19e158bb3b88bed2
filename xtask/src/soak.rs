//! `cargo xtask soak`: a bounded run with connections opening and closing all the time, to
//! show that tracer's memory stays flat, that flows are expired, and that every connection is
//! reported as exactly one flow; with `tracer monitor` running through it, that the monitor's
//! memory stays flat too and its series stay within the documented bound. Results go to
//! `bench/soak.md`.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tracer_tests::{
    testbed::{SERVER_ADDR, Testbed},
    tracer::Tracer,
    traffic,
};

use crate::util::{require_root, use_tracer_build, workspace};

const PORT: u16 = 10091;
/// Where the soak's monitor serves its metrics.
const MONITOR: &str = "127.0.0.1:19498";
/// Overflow series beyond `--max-series` at most (README, "Cardinality").
const OVERFLOW_SERIES: f64 = 11.0;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// How long to run.
    #[arg(long, default_value_t = 5)]
    minutes: u64,
    /// Connections per second.
    #[arg(long, default_value_t = 50)]
    rate: u64,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    require_root("the soak run")?;
    use_tracer_build(true)?;
    let testbed = Testbed::up(2).context("failed to create the testbed")?;
    let server = SocketAddr::from((SERVER_ADDR, PORT));
    let listener = traffic::listen(&testbed.remote, server)?;
    let output = std::env::temp_dir().join(format!("tracer-soak-{}.jsonl", std::process::id()));
    let file = std::fs::File::create(&output)?;
    let tracer = Tracer::start_with_stdout(
        &[
            "--port",
            &PORT.to_string(),
            "--output",
            "json",
            "--hooks",
            "stack",
        ],
        file.into(),
    )?;
    let pid = tracer.pid();
    let monitor = Tracer::start_with_stdout(
        &[
            "monitor",
            "--metrics",
            MONITOR,
            "--sample",
            "1",
            "port",
            &PORT.to_string(),
        ],
        std::process::Stdio::null(),
    )?;
    let monitor_pid = monitor.pid();
    let mut monitor_rss = Vec::new();

    let duration = Duration::from_secs(args.minutes * 60);
    let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
    let start = Instant::now();
    let mut connections: u64 = 0;
    let mut rss = Vec::new();
    let mut next_sample = start;
    let mut next_connection = start;
    while start.elapsed() < duration {
        if Instant::now() >= next_sample {
            rss.push((start.elapsed().as_secs(), rss_kib(pid)?));
            monitor_rss.push((start.elapsed().as_secs(), rss_kib(monitor_pid)?));
            next_sample += Duration::from_secs(10);
        }
        let container = &testbed.containers[(connections % 2) as usize];
        traffic::exchange(&container.netns, None, server, &listener)?;
        connections += 1;
        next_connection += interval;
        if let Some(wait) = next_connection.checked_duration_since(Instant::now()) {
            // Pacing the load generator, not waiting for tracer: nothing here depends on it.
            std::thread::sleep(wait);
        }
    }
    rss.push((start.elapsed().as_secs(), rss_kib(pid)?));
    monitor_rss.push((start.elapsed().as_secs(), rss_kib(monitor_pid)?));
    let exposition = metrics_text(MONITOR)?;
    let value = |name: &str| -> f64 {
        exposition
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(f64::NAN)
    };
    let (series, limit, monitor_flows) = (
        value("tracer_series"),
        value("tracer_series_limit"),
        value("tracer_flows_total"),
    );
    let monitor_finished = monitor.stop()?;
    anyhow::ensure!(
        monitor_finished.status.success(),
        "tracer monitor failed: {}",
        monitor_finished.stderr
    );
    let finished = tracer.stop()?;
    anyhow::ensure!(
        finished.status.success(),
        "tracer failed: {}",
        finished.stderr
    );

    // Count flow records: each connection must be exactly one. A tuple can recur, when the
    // kernel gives a later connection a port an earlier one used; each is still its own flow.
    let mut flows: HashMap<String, u64> = HashMap::new();
    let (mut packets, mut lost) = (0u64, 0u64);
    for line in BufReader::new(std::fs::File::open(&output)?).lines() {
        let line = line?;
        if line.starts_with("{\"type\":\"flow\"") {
            let value: serde_json::Value = serde_json::from_str(&line)?;
            let key = format!("{}", value["orig"]);
            *flows.entry(key).or_default() += 1;
        } else if line.starts_with("{\"type\":\"stats\"") {
            let value: serde_json::Value = serde_json::from_str(&line)?;
            packets = value["packets"].as_u64().unwrap_or(0);
            lost = value["lost"].as_u64().unwrap_or(0);
        }
    }
    let reported: u64 = flows.values().sum();
    let reused = flows.values().filter(|&&n| n > 1).count();
    let (first, last) = (rss[1.min(rss.len() - 1)].1, rss[rss.len() - 1].1);
    let max = rss.iter().map(|(_, kib)| *kib).max().unwrap_or(0);

    let mut report = format!(
        "# Soak run\n\n`cargo xtask soak --minutes {} --rate {}` on {}, kernel {}, commit {}.\n\n",
        args.minutes,
        args.rate,
        crate::util::machine(),
        crate::util::kernel(),
        crate::util::commit()
    );
    report += &format!(
        "| connections | flows reported | tuples reused by a later connection | packets | events lost | RSS at 10 s | RSS at end | RSS max |\n|---|---|---|---|---|---|---|---|\n| {connections} | {reported} | {reused} | {packets} | {lost} | {first} KiB | {last} KiB | {max} KiB |\n\n"
    );
    let (monitor_first, monitor_last) = (
        monitor_rss[1.min(monitor_rss.len() - 1)].1,
        monitor_rss[monitor_rss.len() - 1].1,
    );
    report += &format!(
        "`tracer monitor --sample 1` through the same run: {monitor_flows} flows counted, {series} label sets (cap {limit}, at most {OVERFLOW_SERIES} overflow series beyond it), RSS {monitor_first} KiB at 10 s, {monitor_last} KiB at the end.\n\n"
    );
    report += "RSS over time (seconds, trace KiB, monitor KiB):\n\n";
    for ((secs, kib), (_, monitor_kib)) in rss.iter().zip(&monitor_rss) {
        report += &format!("- {secs}: {kib}, {monitor_kib}\n");
    }
    let path = workspace().join("bench/soak.md");
    std::fs::write(&path, &report)?;
    print!("{report}");
    // On a mismatch the trace stays behind, to find the flows that were split or merged.
    anyhow::ensure!(
        reported == connections,
        "{connections} connections but {reported} flows reported (trace kept in {})",
        output.display()
    );
    std::fs::remove_file(&output)?;
    anyhow::ensure!(
        last <= first + first / 2,
        "memory grew from {first} KiB to {last} KiB"
    );
    anyhow::ensure!(
        monitor_last <= monitor_first + monitor_first / 2,
        "the monitor's memory grew from {monitor_first} KiB to {monitor_last} KiB"
    );
    anyhow::ensure!(
        series <= limit + OVERFLOW_SERIES,
        "{series} label sets beyond the bound ({limit} + {OVERFLOW_SERIES})"
    );
    // Flows end 2 s after their FIN: the last seconds' connections may not have ended yet.
    let pending = (args.rate * 5) as f64;
    anyhow::ensure!(
        monitor_flows >= connections as f64 - pending,
        "the monitor counted {monitor_flows} flows of {connections} connections"
    );
    Ok(())
}

/// The classic-format exposition at `addr`'s `/metrics`.
fn metrics_text(addr: &str) -> anyhow::Result<String> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr)
        .with_context(|| format!("cannot reach the monitor at {addr}"))?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default())
}

/// Resident memory of a process.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}
