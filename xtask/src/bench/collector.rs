//! The collector without the kernel, `tracer replay` pinned to one core with JSON to
//! /dev/null, on generated streams (`stream`):
//! - throughput on the mixed stream (5-15 hops per packet, conntrack, NAT, drops, short and
//!   long flows), repeated;
//! - peak RSS (the kernel's high-water mark, VmHWM, from tracer's closing line) while holding
//!   100k, 550k and 1M open flows, and from it the memory per flow and whether it grows
//!   linearly; replay has no ring buffer, so none of it is the ring's;
//! - the accuracy of the per-hop p50 and p99 in the flow lines against exact quantiles
//!   computed here from the same run's hop lines.

use std::{
    collections::HashMap,
    fmt::Write as _,
    io::{BufRead, BufReader, BufWriter},
    path::Path,
    process::{Child, Command, Stdio},
    time::Instant,
};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::{
    stats::{self, Interval, Stat},
    stream,
};

pub struct Results {
    events: u64,
    packets: u64,
    flows: u64,
    runs: usize,
    events_per_second: Stat,
    ci: Option<Interval>,
    /// (flows held, VmHWM in bytes)
    memory: Vec<(u64, u64)>,
    accuracy: Accuracy,
}

/// Seed of the mixed stream.
const SEED: u64 = 0x5eed_c011;

pub fn run(binary: &Path, quick: bool) -> anyhow::Result<Results> {
    let dir = std::env::temp_dir();
    let path = dir.join(format!("tracer-bench-{}.events", std::process::id()));
    let _cleanup = Remove(&path);
    let target = if quick { 200_000 } else { 3_000_000 };
    let written = stream::mixed(
        &mut BufWriter::new(std::fs::File::create(&path)?),
        target,
        SEED,
    )?;
    let runs = if quick { 1 } else { 7 };
    let mut rates = Vec::new();
    for _ in 0..runs {
        let seconds = replay(binary, &path, &[], Stdio::null())?.seconds;
        rates.push(written.events as f64 / seconds);
    }
    let json_path = dir.join(format!("tracer-bench-{}.jsonl", std::process::id()));
    let _cleanup_json = Remove(&json_path);
    replay(
        binary,
        &path,
        &[],
        Stdio::from(std::fs::File::create(&json_path)?),
    )?;
    let accuracy = Accuracy::of(&json_path)?;

    let held: &[u64] = if quick {
        &[10_000, 55_000, 100_000]
    } else {
        &[100_000, 550_000, 1_000_000]
    };
    let mut memory = Vec::new();
    for &flows in held {
        memory.push((flows, hold(binary, flows)?));
    }
    Ok(Results {
        events: written.events,
        packets: written.packets,
        flows: written.flows,
        runs,
        events_per_second: Stat::of(&rates),
        ci: stats::median_ci(&rates, stats::LEVEL),
        memory,
        accuracy,
    })
}

/// Removes a file when dropped.
struct Remove<'a>(&'a Path);

impl Drop for Remove<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}

struct Run {
    seconds: f64,
    /// VmHWM, bytes.
    peak_rss: u64,
}

/// Runs `tracer replay` of `input` pinned to CPU 0 and waits for it.
fn replay(binary: &Path, input: &Path, extra: &[&str], stdout: Stdio) -> anyhow::Result<Run> {
    let child = spawn(binary, input, extra, stdout, Stdio::null())?;
    let start = Instant::now();
    wait(child, start)
}

fn spawn(
    binary: &Path,
    input: &Path,
    extra: &[&str],
    stdout: Stdio,
    stdin: Stdio,
) -> anyhow::Result<Child> {
    Ok(Command::new("taskset")
        .args(["-c", "0"])
        .arg(binary)
        .args(["replay", "--output", "json"])
        .args(extra)
        .arg(input)
        .stdin(stdin)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()?)
}

fn wait(child: Child, start: Instant) -> anyhow::Result<Run> {
    let output = child.wait_with_output()?;
    let seconds = start.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!("tracer replay failed ({}): {stderr}", output.status);
    }
    // tracer's own VmHWM from its closing line. (Not wait4's ru_maxrss: that also counts the
    // memory of the process that spawned it, this one, whose address space the child had
    // until it called exec.)
    let peak =
        super::tools::peak_mib(&stderr).context("tracer replay did not report its peak memory")?;
    Ok(Run {
        seconds,
        peak_rss: (peak * f64::from(1 << 20)) as u64,
    })
}

/// Peak RSS of a replay that holds `flows` open flows at its end, the stream piped in as it
/// is generated.
fn hold(binary: &Path, flows: u64) -> anyhow::Result<u64> {
    let max = (flows + flows / 4).to_string();
    let mut child = spawn(
        binary,
        Path::new("/dev/stdin"),
        &["--max-flows", &max],
        Stdio::null(),
        Stdio::piped(),
    )?;
    let start = Instant::now();
    let stdin = child.stdin.take().context("replay's stdin")?;
    stream::handshakes(&mut BufWriter::with_capacity(1 << 20, stdin), flows)?;
    Ok(wait(child, start)?.peak_rss)
}

/// How far the flow lines' p50 and p99 are from the exact quantiles of the same hop gaps.
#[derive(Debug, Default)]
pub struct Accuracy {
    /// Segments (flow, direction, two consecutive places) with at most 64 gaps, and how many
    /// of them had their p50 (and p99) exact.
    pub small: u64,
    pub small_exact: u64,
    /// Segments with more, and the largest relative error of their p99 and p50.
    pub large: u64,
    pub large_p99_error: f64,
    pub large_p50_error: f64,
    pub largest_count: u64,
}

/// A hop's place, as the JSON lines write it.
fn place(v: &Value) -> String {
    format!(
        "{}|{}|{}|{}",
        v["hook"], v["ifname"], v["ifindex"], v["netns_inode"]
    )
}

impl Accuracy {
    fn of(jsonl: &Path) -> anyhow::Result<Accuracy> {
        // (flow, direction, from, to) -> gaps; each packet's hops are consecutive lines.
        let mut gaps: HashMap<(u64, String, String, String), Vec<u64>> = HashMap::new();
        let mut reported = Vec::new();
        let mut previous: Option<(u64, String)> = None;
        for line in BufReader::new(std::fs::File::open(jsonl)?).lines() {
            let v: Value = serde_json::from_str(&line?)?;
            match v["type"].as_str() {
                Some("hop") => {
                    let packet = v["packet_id"].as_u64().unwrap_or(0);
                    let here = place(&v);
                    if let Some((p, from)) = &previous
                        && *p == packet
                    {
                        let key = (
                            v["flow_id"].as_u64().unwrap_or(0),
                            v["direction"].to_string(),
                            from.clone(),
                            here.clone(),
                        );
                        gaps.entry(key)
                            .or_default()
                            .push(v["since_prev_ns"].as_u64().unwrap_or(0));
                    }
                    previous = Some((packet, here));
                }
                Some("flow") => reported.push(v),
                _ => {}
            }
        }
        let mut accuracy = Accuracy::default();
        for flow in reported {
            let id = flow["flow_id"].as_u64().unwrap_or(0);
            for pair in flow["hops"].as_array().into_iter().flatten() {
                let key = (
                    id,
                    pair["direction"].to_string(),
                    place(&pair["from"]),
                    place(&pair["to"]),
                );
                let Some(exact) = gaps.get_mut(&key) else {
                    bail!("flow {id} reports a segment no hop lines show: {key:?}");
                };
                exact.sort_unstable();
                let (p50, p99) = (nearest_rank(exact, 50), nearest_rank(exact, 99));
                let (got50, got99) = (
                    pair["p50_ns"].as_u64().unwrap_or(0),
                    pair["p99_ns"].as_u64().unwrap_or(0),
                );
                let count = exact.len() as u64;
                if pair["count"].as_u64() != Some(count) {
                    bail!("flow {id}: count {} for {count} gaps", pair["count"]);
                }
                accuracy.largest_count = accuracy.largest_count.max(count);
                if count <= 64 {
                    accuracy.small += 1;
                    accuracy.small_exact += u64::from(got50 == p50 && got99 == p99);
                } else {
                    accuracy.large += 1;
                    let error =
                        |got: u64, exact: u64| got.abs_diff(exact) as f64 / exact.max(1) as f64;
                    accuracy.large_p99_error = accuracy.large_p99_error.max(error(got99, p99));
                    accuracy.large_p50_error = accuracy.large_p50_error.max(error(got50, p50));
                }
            }
        }
        Ok(accuracy)
    }
}

/// Nearest-rank percentile of sorted, non-empty `values`.
fn nearest_rank(values: &[u64], pct: u64) -> u64 {
    let rank = (values.len() as u64 * pct).div_ceil(100).max(1);
    values[rank as usize - 1]
}

impl Results {
    /// Bytes per flow between the first and last number of flows held, and the two slopes
    /// between consecutive points (equal when memory grows linearly).
    pub fn per_flow(&self) -> Option<(f64, f64, f64)> {
        let [(f0, m0), (f1, m1), (f2, m2)] = self.memory[..] else {
            return None;
        };
        let slope = |fa: u64, ma: u64, fb: u64, mb: u64| (mb as f64 - ma as f64) / (fb - fa) as f64;
        Some((
            slope(f0, m0, f2, m2),
            slope(f0, m0, f1, m1),
            slope(f1, m1, f2, m2),
        ))
    }

    /// Peak RSS in MiB while holding the first number of flows (100k in a full run).
    pub fn first_rss_mib(&self) -> Option<(u64, f64)> {
        self.memory
            .first()
            .map(|&(flows, rss)| (flows, rss as f64 / f64::from(1 << 20)))
    }

    pub fn events_per_second(&self) -> Stat {
        self.events_per_second
    }

    pub fn accuracy(&self) -> &Accuracy {
        &self.accuracy
    }

    pub fn markdown(&self) -> String {
        let mut md = String::from(
            "## Collector\n\n`taskset -c 0 tracer replay --output json` to /dev/null: decode, correlate, JSON. No ring buffer.\n\n",
        );
        let e = &self.events_per_second;
        let _ = writeln!(
            md,
            "Mixed stream (5-15 hops per packet, conntrack, NAT, drops; short, medium and long flows): {} events, {} packets, {} flows; {} runs.\n",
            self.events, self.packets, self.flows, self.runs
        );
        let _ = writeln!(
            md,
            "| Events/s (median) | 95% CI | Range |\n|---|---|---|\n| {:.0} | {} | {:.0}-{:.0} |\n",
            e.median,
            self.ci.map_or_else(
                || "n/a".to_owned(),
                |ci| format!("{:.0}-{:.0}", ci.lo, ci.hi)
            ),
            e.min,
            e.max
        );
        md += "Memory: open masqueraded flows (SYN and SYN-ACK, 5 hops each) held until the stream ends; peak RSS is VmHWM.\n\n| Flows held | Peak RSS |\n|---|---|\n";
        for (flows, rss) in &self.memory {
            let _ = writeln!(
                md,
                "| {flows} | {:.1} MiB |",
                *rss as f64 / f64::from(1 << 20)
            );
        }
        if let Some((overall, first, second)) = self.per_flow() {
            let _ = writeln!(
                md,
                "\nPer flow: {overall:.0} bytes ({first:.0} over the first interval, {second:.0} over the second).\n"
            );
        }
        let a = &self.accuracy;
        let _ = writeln!(
            md,
            "Latency quantiles against exact ones from the same run's hop lines: {} of {} segments with <= 64 gaps have p50 and p99 exact; {} segments with more (up to {}): largest p50 error {:.2}%, largest p99 error {:.2}%.\n",
            a.small_exact,
            a.small,
            a.large,
            a.largest_count,
            a.large_p50_error * 100.0,
            a.large_p99_error * 100.0
        );
        md
    }

    pub fn json(&self) -> Value {
        json!({
            "events": self.events, "packets": self.packets, "flows": self.flows,
            "runs": self.runs, "events_per_second": self.events_per_second.json(),
            "events_per_second_ci": self.ci.map(|ci| ci.json()),
            "memory": self.memory.iter().map(|(flows, rss)| json!({"flows": flows, "peak_rss_bytes": rss})).collect::<Vec<_>>(),
            "bytes_per_flow": self.per_flow().map(|(overall, first, second)| json!({"overall": overall, "first": first, "second": second})),
            "accuracy": {
                "small_segments": self.accuracy.small, "small_exact": self.accuracy.small_exact,
                "large_segments": self.accuracy.large, "largest_count": self.accuracy.largest_count,
                "large_p50_error": self.accuracy.large_p50_error,
                "large_p99_error": self.accuracy.large_p99_error,
            },
        })
    }
}
