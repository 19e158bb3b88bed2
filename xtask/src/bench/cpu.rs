//! CPU cost at a fixed offered rate: one paced iperf3 TCP stream well below saturation, so the
//! traffic is the same with and without an observer and what changes is the CPU the machine
//! spends on it. Busy CPU seconds are machine-wide, from /proc/stat, and include tracer's (or
//! tcpdump's) user space as well as the kernel programs; each run is paired with an untraced
//! one like the throughput runs.

use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::json;
use tracer_tests::testbed::Testbed;

use super::{
    config::Config,
    pairs::{self, Paired, Sample},
    stats::Rng,
    tools::{IPERF_PORT, iperf3},
};

/// The offered rate, far below the 10-16 Gbit/s this path reaches untraced.
pub const RATE: &str = "1G";

/// Time after iperf3 ends that still counts, so that events tracer reads from its ring after
/// the traffic has stopped are paid for in the run that caused them. Untraced runs wait too.
const TAIL: Duration = Duration::from_millis(500);

pub struct Results {
    pub paired: Paired,
    seconds: u64,
}

pub fn run(testbed: &Testbed, pairs: usize, quick: bool, rng: &mut Rng) -> anyhow::Result<Results> {
    let seconds = if quick { 2 } else { 10 };
    let hz = user_hz()?;
    let paired = pairs::run("CPU cost", &Config::OBSERVED, pairs, rng, |config| {
        measure(testbed, config, seconds, hz)
    })?;
    Ok(Results { paired, seconds })
}

fn measure(testbed: &Testbed, config: Config, seconds: u64, hz: f64) -> anyhow::Result<Sample> {
    let running = config.start(testbed, IPERF_PORT)?;
    let client = &testbed.containers[0].netns;
    let before = busy_ticks()?;
    let report = iperf3(client, &["-P", "1", "-b", RATE, "-t", &seconds.to_string()])?;
    std::thread::sleep(TAIL);
    let busy = (busy_ticks()? - before) as f64 / hz;
    let overhead = running.finish()?;
    let bytes = report["end"]["sum_received"]["bytes"]
        .as_f64()
        .context("no byte count in the iperf3 report")?;
    if bytes <= 0.0 {
        bail!("iperf3 moved no data under {}", config.name());
    }
    Ok(Sample {
        value: busy / (bytes / 1e9),
        overhead,
        detail: json!({"busy_cpu_seconds": busy, "bytes": bytes}),
    })
}

/// Busy time of all CPUs so far, in clock ticks: the `cpu` line of /proc/stat.
fn busy_ticks() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat").context("failed to read /proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    busy_of(line).context("unexpected cpu line in /proc/stat")
}

/// Every field of a /proc/stat `cpu` line but idle and iowait, which are time not spent
/// working, and guest and guest_nice, which proc(5) says are already counted in user and
/// nice.
fn busy_of(line: &str) -> Option<u64> {
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]
    if fields.len() < 8 {
        return None;
    }
    Some(
        fields
            .iter()
            .take(8)
            .enumerate()
            .filter(|(i, _)| *i != 3 && *i != 4)
            .map(|(_, v)| v)
            .sum(),
    )
}

/// USER_HZ, the unit of /proc/stat.
fn user_hz() -> anyhow::Result<f64> {
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        bail!("sysconf(_SC_CLK_TCK) failed");
    }
    Ok(hz as f64)
}

impl Results {
    pub fn markdown(&self) -> String {
        let mut md = format!(
            "## CPU cost at a fixed rate\n\niperf3, 1 TCP stream paced at {RATE}bit/s (`-b {RATE}`), {} s per run, container -> remote through MASQUERADE. Busy CPU seconds of the whole machine (all /proc/stat `cpu` fields but idle and iowait; guest time is part of user) from the start of iperf3 to {} ms after it ends, over the bytes iperf3 received: CPU seconds per GB. Pairs with untraced as for throughput.\n\n",
            self.seconds,
            TAIL.as_millis()
        );
        md += &self.paired.markdown("CPU s per GB", 3);
        md.push('\n');
        md
    }

    pub fn json(&self) -> serde_json::Value {
        json!({"rate": RATE, "seconds": self.seconds, "cpu_seconds_per_gb": self.paired.json()})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_excludes_idle_iowait_and_guest() {
        let line = "cpu  107057 1 33562 65424 948 2 10333 279 50 7";
        assert_eq!(busy_of(line), Some(107_057 + 1 + 33_562 + 2 + 10_333 + 279));
        assert_eq!(busy_of("cpu  1 2 3"), None);
        assert_eq!(busy_of("cpu  x 2 3 4 5 6 7 8"), None);
    }
}
