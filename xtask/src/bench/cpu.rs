//! CPU cost at a fixed offered rate: one paced iperf3 TCP stream well below saturation, so the
//! traffic is the same with and without an observer and what changes is the CPU the machine
//! spends on it. Busy CPU seconds are machine-wide, from /proc/stat, and include tracer's (or
//! tcpdump's) user space as well as the kernel programs; each run is paired with an untraced
//! one like the throughput runs.

use std::time::{Duration, Instant};

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
    let before = CpuTimes::read()?;
    let report = iperf3(client, &["-P", "1", "-b", RATE, "-t", &seconds.to_string()])?;
    std::thread::sleep(TAIL);
    let after = CpuTimes::read()?;
    let overhead = running.finish()?;
    let bytes = report["end"]["sum_received"]["bytes"]
        .as_f64()
        .context("no byte count in the iperf3 report")?;
    if bytes <= 0.0 {
        bail!("iperf3 moved no data under {}", config.name());
    }
    let busy = after.busy_since(&before, hz);
    let sampled = after.sampled.saturating_sub(before.sampled) as f64 / hz;
    Ok(Sample {
        value: busy / (bytes / 1e9),
        overhead,
        detail: json!({"busy_cpu_seconds": busy, "busy_sampled_cpu_seconds": sampled,
                       "bytes": bytes}),
    })
}

/// One reading of /proc/stat, with the time it was taken.
#[derive(Debug, Clone, Copy)]
struct CpuTimes {
    at: Instant,
    /// CPUs online (`cpuN` lines).
    cpus: usize,
    /// Idle and iowait of all CPUs, in clock ticks.
    idle: u64,
    /// The other fields of the `cpu` line, in clock ticks.
    sampled: u64,
}

impl CpuTimes {
    fn read() -> anyhow::Result<CpuTimes> {
        let stat = std::fs::read_to_string("/proc/stat").context("failed to read /proc/stat")?;
        let at = Instant::now();
        parse(&stat, at).context("unexpected contents of /proc/stat")
    }

    /// Busy CPU seconds since `before`: elapsed time on every CPU less idle and iowait.
    /// That is the sum of the other fields, but exact: the kernel measures idle and iowait
    /// time from the moments a CPU goes idle and wakes (NO_HZ), while with tick-based
    /// accounting it charges user, system and softirq time a whole tick at a time to
    /// whatever runs at the tick, missing short bursts of work on CPUs whose tick is stopped.
    fn busy_since(&self, before: &CpuTimes, hz: f64) -> f64 {
        let elapsed = self.at.duration_since(before.at).as_secs_f64();
        let idle = self.idle.saturating_sub(before.idle) as f64 / hz;
        (elapsed * self.cpus as f64 - idle).max(0.0)
    }
}

/// The `cpu` line of /proc/stat split into idle + iowait and every other field but guest and
/// guest_nice (which proc(5) says are already counted in user and nice), and the CPU count.
fn parse(stat: &str, at: Instant) -> Option<CpuTimes> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
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
    let idle = fields[3] + fields[4];
    let sampled = fields.iter().take(8).sum::<u64>() - idle;
    let cpus = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count();
    Some(CpuTimes {
        at,
        cpus,
        idle,
        sampled,
    })
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
            "## CPU cost at a fixed rate\n\niperf3, 1 TCP stream paced at {RATE}bit/s (`-b {RATE}`), {} s per run, container -> remote through MASQUERADE. Busy CPU seconds of the whole machine from the start of iperf3 to {} ms after it ends, over the bytes iperf3 received: CPU seconds per GB. Busy is what /proc/stat's `cpu` line has besides idle and iowait, taken as elapsed time x online CPUs less idle and iowait: the kernel measures idle time exactly, whereas with tick-based accounting (this kernel's) it charges user, system and softirq time a tick at a time to whatever runs at the tick, which misses short bursts of work on an otherwise idle CPU and under-counts light traffic like this several-fold. The sum of the sampled fields is kept in results.json (`busy_sampled_cpu_seconds`). Pairs with untraced as for throughput.\n\n",
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
    fn busy_is_elapsed_less_idle_and_iowait() {
        let at = Instant::now();
        let stat = "cpu  107057 1 33562 65424 948 2 10333 279 50 7\ncpu0 1 2 3 4 5 6 7 8 0 0\ncpu1 1 2 3 4 5 6 7 8 0 0\nintr 5\n";
        let before = parse(stat, at).unwrap();
        assert_eq!(before.cpus, 2);
        assert_eq!(before.idle, 65_424 + 948);
        assert_eq!(before.sampled, 107_057 + 1 + 33_562 + 2 + 10_333 + 279);
        // Ten seconds on two CPUs, 1.5 s of them idle: 18.5 busy CPU seconds.
        let after = CpuTimes {
            at: at + Duration::from_secs(10),
            idle: before.idle + 150,
            ..before
        };
        assert!((after.busy_since(&before, 100.0) - 18.5).abs() < 1e-9);
        assert!(parse("cpu  1 2 3\n", at).is_none());
        assert!(parse("cpu  x 2 3 4 5 6 7 8\n", at).is_none());
    }
}
