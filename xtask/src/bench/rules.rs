//! What `--rules` costs: iperf3 through the testbed (container -> docker0 -> MASQUERADE ->
//! uplink) with tracer naming rules, paired with untraced runs as in `datapath`. With a
//! filter that matches nothing only tracer's own chain runs (a few comparisons per packet at
//! prerouting and output); with every packet matching, the kernel reports every packet's walk
//! through the chains over netlink, and the collector reads it.

use std::fmt::Write as _;

use serde_json::{Value, json};
use tracer_tests::testbed::Testbed;

use super::{
    config::Config,
    datapath,
    pairs::{self, CI_METHOD, Paired},
    stats::Rng,
};

pub struct Results {
    pub paired: Paired,
    seconds: u64,
    /// Whether the plain tracer configurations ran here too (`--only rules`), or come from
    /// the datapath table of the same run.
    with_plain: bool,
}

/// `pairs` pairs of each `--rules` configuration, and of the plain tracer ones too when
/// `with_plain` (when the datapath benchmark does not run beside it).
pub fn run(
    testbed: &Testbed,
    pairs: usize,
    quick: bool,
    with_plain: bool,
    rng: &mut Rng,
) -> anyhow::Result<Results> {
    let seconds = datapath::seconds(quick);
    let mut configs = vec![Config::TracerRulesNoMatch, Config::TracerRulesAll];
    if with_plain {
        configs.extend([Config::TracerNoMatch, Config::TracerAll]);
    }
    let paired = pairs::run("rules", &configs, pairs, rng, |config| {
        datapath::measure(testbed, config, seconds)
    })?;
    Ok(Results {
        paired,
        seconds,
        with_plain,
    })
}

impl Results {
    pub fn markdown(&self) -> String {
        let mut md = format!(
            "## Cost of --rules\n\nAs the datapath throughput above ({} s per run, paired with untraced runs), with `--rules`: tracer's own nf_tables table in the testbed's host namespace marks the filter's packets for nf_tables tracing. {}\n\n{CI_METHOD}\n\n",
            self.seconds,
            if self.with_plain {
                "The same tracer without `--rules` ran in the same pairs for comparison."
            } else {
                "Compare with the rows of the same tracer without `--rules` in the datapath table, from the same run."
            }
        );
        md += &self.paired.markdown("Gbit/s", 2);
        md +=
            "\n| Configuration | nf_tables trace messages lost: total / max per run |\n|---|---|\n";
        for config in [Config::TracerRulesNoMatch, Config::TracerRulesAll] {
            let lost: Vec<u64> = self
                .paired
                .pairs
                .iter()
                .filter(|p| p.config == config)
                .filter_map(|p| p.traced.overhead.rule_messages_lost)
                .collect();
            let _ = writeln!(
                md,
                "| {} | {} / {} |",
                config.name(),
                lost.iter().sum::<u64>(),
                lost.iter().max().copied().unwrap_or(0)
            );
        }
        md.push('\n');
        md
    }

    pub fn json(&self) -> Value {
        json!({"seconds": self.seconds, "gbps": self.paired.json()})
    }
}
