//! Datapath throughput: iperf3 with several TCP streams from a container through veth, docker0,
//! MASQUERADE and the uplink to the remote, untraced and under each observed configuration,
//! in pairs (see `pairs`).

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tracer_tests::testbed::Testbed;

use super::{
    config::Config,
    pairs::{self, CI_METHOD, Paired, Sample},
    stats::Rng,
    tools::{IPERF_PORT, iperf3},
};

const STREAMS: &str = "4";

pub struct Results {
    pub paired: Paired,
    seconds: u64,
}

/// Seconds per iperf3 run.
pub fn seconds(quick: bool) -> u64 {
    if quick { 2 } else { 10 }
}

pub fn run(testbed: &Testbed, pairs: usize, quick: bool, rng: &mut Rng) -> anyhow::Result<Results> {
    run_only(testbed, &Config::OBSERVED, pairs, quick, rng)
}

/// [`run`] for `configs` only.
pub fn run_only(
    testbed: &Testbed,
    configs: &[Config],
    pairs: usize,
    quick: bool,
    rng: &mut Rng,
) -> anyhow::Result<Results> {
    let seconds = seconds(quick);
    // The first run on a fresh testbed warms caches, ARP and conntrack; it is not recorded.
    iperf3(&testbed.containers[0].netns, &["-P", STREAMS, "-t", "1"])?;
    let paired = pairs::run("throughput", configs, pairs, rng, |config| {
        measure(testbed, config, seconds)
    })?;
    Ok(Results { paired, seconds })
}

/// One iperf3 run under `config`.
pub fn measure(testbed: &Testbed, config: Config, seconds: u64) -> anyhow::Result<Sample> {
    let running = config.start(testbed, IPERF_PORT)?;
    let client = &testbed.containers[0].netns;
    let report = iperf3(client, &["-P", STREAMS, "-t", &seconds.to_string()]);
    let overhead = running.finish()?;
    let report = report?;
    let gbps = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("no throughput in the iperf3 report")?
        / 1e9;
    if gbps <= 0.0 {
        bail!("iperf3 moved no data under {}", config.name());
    }
    Ok(Sample {
        value: gbps,
        overhead,
        detail: json!({"retransmits": report["end"]["sum_sent"]["retransmits"]}),
    })
}

impl Results {
    pub fn markdown(&self) -> String {
        let mut md = format!(
            "## Datapath throughput\n\niperf3, {STREAMS} TCP streams, {} s per run, container -> veth -> docker0 -> MASQUERADE -> uplink -> remote. tracer runs with default hooks and `--output json` to /dev/null; tcpdump runs on the container's host veth, docker0 and the uplink (`tcpdump -i IF -s 128 -w /dev/null`, with the filter `port 1` when it matches nothing), its drops being what it reports on exit. Every configuration is paired with an untraced run, back to back in random order; the pairs of all configurations run in a random order too.\n\n{CI_METHOD}\n\n",
            self.seconds
        );
        md += &self.paired.markdown("Gbit/s", 2);
        md.push('\n');
        md
    }

    pub fn json(&self) -> Value {
        json!({"streams": STREAMS, "seconds": self.seconds, "gbps": self.paired.json()})
    }
}
