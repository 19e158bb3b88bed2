//! Paired comparisons with the untraced path. Each observed configuration is measured in pairs
//! (one untraced run and one run under the configuration, back to back, in random order), and
//! the pairs of all configurations run in a random order too, from a seeded generator. Slow
//! drifts of this noisy VM then hit both halves of a pair alike, and what is reported is the
//! median of the per-pair ratios with a distribution-free confidence interval.

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::{
    config::{Config, Overhead},
    stats::{Interval, LEVEL, Rng, Stat, median_ci},
};

/// One measured run: the value compared, what the configuration lost, and raw numbers for
/// the JSON results.
#[derive(Debug, Clone)]
pub struct Sample {
    pub value: f64,
    pub overhead: Overhead,
    pub detail: Value,
}

/// An untraced run and a run under `config`, back to back.
#[derive(Debug, Clone)]
pub struct Pair {
    pub config: Config,
    pub traced_first: bool,
    pub untraced: Sample,
    pub traced: Sample,
}

impl Pair {
    pub fn ratio(&self) -> f64 {
        self.traced.value / self.untraced.value
    }
}

/// Every pair, in the order they ran.
#[derive(Debug, Clone)]
pub struct Paired {
    pub pairs: Vec<Pair>,
    /// Why pairs were run again: one line per failed attempt.
    pub retried: Vec<String>,
}

/// How often a pair whose run failed (iperf3 or an observer did not work) is run again
/// before the benchmark gives up. On this VM a run very rarely stalls; one bad run should
/// not cost the other hundred.
const RETRIES: usize = 2;

/// Runs `repeats` pairs of every configuration in `configs`, in an order drawn from `rng`.
/// `measure` runs one configuration once.
pub fn run(
    what: &str,
    configs: &[Config],
    repeats: usize,
    rng: &mut Rng,
    mut measure: impl FnMut(Config) -> anyhow::Result<Sample>,
) -> anyhow::Result<Paired> {
    let mut order: Vec<Config> = configs
        .iter()
        .flat_map(|&c| std::iter::repeat_n(c, repeats))
        .collect();
    rng.shuffle(&mut order);
    let mut paired = Paired {
        pairs: Vec::new(),
        retried: Vec::new(),
    };
    for (index, config) in order.into_iter().enumerate() {
        let traced_first = rng.coin();
        eprintln!(
            "xtask: bench: {what}: pair {}/{}: {}{}",
            index + 1,
            configs.len() * repeats,
            config.name(),
            if traced_first {
                ", then untraced"
            } else {
                ", after untraced"
            }
        );
        let mut attempt = 0;
        let (untraced, traced) = loop {
            let both = if traced_first {
                measure(config).and_then(|traced| Ok((measure(Config::Untraced)?, traced)))
            } else {
                measure(Config::Untraced).and_then(|untraced| Ok((untraced, measure(config)?)))
            };
            match both {
                Ok(both) => break both,
                Err(err) if attempt < RETRIES => {
                    attempt += 1;
                    eprintln!(
                        "xtask: bench: {what}: pair {}: {err:#}; running it again",
                        index + 1
                    );
                    paired.retried.push(format!("{}: {err:#}", config.name()));
                }
                Err(err) => return Err(err),
            }
        };
        paired.pairs.push(Pair {
            config,
            traced_first,
            untraced,
            traced,
        });
    }
    Ok(paired)
}

/// Sum and per-run maximum of a count.
#[derive(Debug, Clone, Copy)]
pub struct Tally {
    pub sum: u64,
    pub max: u64,
}

impl Tally {
    fn of(counts: impl Iterator<Item = Option<u64>>) -> Option<Tally> {
        counts.flatten().fold(None, |tally, n| {
            let Tally { sum, max } = tally.unwrap_or(Tally { sum: 0, max: 0 });
            Some(Tally {
                sum: sum + n,
                max: max.max(n),
            })
        })
    }

    fn json(tally: Option<Tally>) -> Value {
        tally.map_or(Value::Null, |t| json!({"sum": t.sum, "max_per_run": t.max}))
    }
}

/// A configuration's summary over its pairs.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    pub config: Config,
    pub pairs: usize,
    /// The configuration's own values.
    pub traced: Stat,
    /// The per-pair ratios to untraced.
    pub ratio: Stat,
    pub ci: Option<Interval>,
    /// Events tracer lost; `None` for configurations without tracer.
    pub lost: Option<Tally>,
    /// Packets tcpdump's sockets dropped; `None` for configurations without tcpdump.
    pub dropped: Option<Tally>,
}

impl Row {
    /// Whether tracer lost events in any run, so that the row is not a full trace.
    pub fn partial(&self) -> bool {
        self.lost.is_some_and(|l| l.sum > 0)
    }
}

impl Paired {
    /// The untraced runs of all pairs.
    pub fn baseline(&self) -> Stat {
        let values: Vec<f64> = self.pairs.iter().map(|p| p.untraced.value).collect();
        Stat::of(&values)
    }

    pub fn row(&self, config: Config) -> Option<Row> {
        let pairs: Vec<&Pair> = self.pairs.iter().filter(|p| p.config == config).collect();
        if pairs.is_empty() {
            return None;
        }
        let values: Vec<f64> = pairs.iter().map(|p| p.traced.value).collect();
        let ratios: Vec<f64> = pairs.iter().map(|p| p.ratio()).collect();
        Some(Row {
            config,
            pairs: pairs.len(),
            traced: Stat::of(&values),
            ratio: Stat::of(&ratios),
            ci: median_ci(&ratios, LEVEL),
            lost: Tally::of(pairs.iter().map(|p| p.traced.overhead.lost)),
            dropped: Tally::of(pairs.iter().map(|p| p.traced.overhead.dropped)),
        })
    }

    fn rows(&self) -> Vec<Row> {
        let mut configs: Vec<Config> = self.pairs.iter().map(|p| p.config).collect();
        configs.sort_unstable();
        configs.dedup();
        configs.into_iter().filter_map(|c| self.row(c)).collect()
    }

    /// The comparison table: `unit` names the compared value, printed with `decimals`.
    pub fn markdown(&self, unit: &str, decimals: usize) -> String {
        let mut md = format!(
            "| Configuration | {unit}, median [min-max] | Ratio to untraced: median of pairs [95% CI] | Pairs | Events lost: total / max per run | tcpdump drops: total / max per run |\n|---|---|---|---|---|---|\n"
        );
        let base = self.baseline();
        let _ = writeln!(
            md,
            "| untraced | {:.decimals$} [{:.decimals$}-{:.decimals$}] | baseline | {} | - | - |",
            base.median,
            base.min,
            base.max,
            self.pairs.len()
        );
        for row in self.rows() {
            let mut name = row.config.name().to_owned();
            let mut ratio = format!("{:.3} [{}]", row.ratio.median, ci_text(row.ci));
            if let (true, Some(lost)) = (row.partial(), row.lost) {
                let _ = write!(name, " **PARTIAL: {} events lost**", human(lost.sum));
                ratio = format!("partial trace, not a full-trace result: {ratio}");
            }
            let _ = writeln!(
                md,
                "| {name} | {:.decimals$} [{:.decimals$}-{:.decimals$}] | {ratio} | {} | {} | {} |",
                row.traced.median,
                row.traced.min,
                row.traced.max,
                row.pairs,
                tally_text(row.lost),
                tally_text(row.dropped),
            );
        }
        if !self.retried.is_empty() {
            let _ = writeln!(
                md,
                "\nPairs run again after a failed run ({}): {}.",
                self.retried.len(),
                self.retried.join("; ")
            );
        }
        md
    }

    pub fn json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows()
            .iter()
            .map(|r| {
                json!({
                    "config": r.config.name(), "pairs": r.pairs, "value": r.traced.json(),
                    "ratio": r.ratio.json(), "ratio_ci": r.ci.map(|ci| ci.json()),
                    "partial": r.partial(), "lost": Tally::json(r.lost),
                    "tcpdump_dropped": Tally::json(r.dropped),
                })
            })
            .collect();
        let side = |s: &Sample| {
            json!({"value": s.value, "lost": s.overhead.lost,
                   "tcpdump_dropped": s.overhead.dropped, "detail": s.detail})
        };
        let pairs: Vec<Value> = self
            .pairs
            .iter()
            .map(|p| {
                json!({"config": p.config.name(), "traced_first": p.traced_first,
                       "untraced": side(&p.untraced), "traced": side(&p.traced), "ratio": p.ratio()})
            })
            .collect();
        json!({"untraced": self.baseline().json(), "configs": rows, "pairs_in_run_order": pairs,
               "retried": self.retried})
    }
}

/// The interval as `lo-hi`, or why there is none.
pub fn ci_text(ci: Option<Interval>) -> String {
    ci.map_or_else(
        || "CI n/a: fewer than 6 pairs".to_owned(),
        |ci| format!("{:.3}-{:.3}", ci.lo, ci.hi),
    )
}

/// The sentence that says how the intervals are computed, for the results.
pub const CI_METHOD: &str = "The 95% confidence interval of a median ratio is distribution-free: with n pairs and their ratios sorted, it runs from the k-th smallest to the k-th largest ratio, with the largest k for which 1 - 2 P(B <= k-1) >= 0.95, B ~ Binomial(n, 1/2) (for 10 pairs: the 2nd to the 9th ratio, coverage 97.9%). With fewer than 6 pairs no such interval exists and none is given.";

fn tally_text(tally: Option<Tally>) -> String {
    tally.map_or_else(
        || "-".to_owned(),
        |t| format!("{} / {}", human(t.sum), human(t.max)),
    )
}

/// A count for people: 950, 12.3 k, 1.2 M.
pub fn human(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1} k", n as f64 / 1e3),
        _ => format!("{:.1} M", n as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(value: f64, lost: Option<u64>) -> Sample {
        Sample {
            value,
            overhead: Overhead {
                lost,
                dropped: None,
                rule_messages_lost: None,
            },
            detail: Value::Null,
        }
    }

    #[test]
    fn pairs_run_every_config_in_a_seeded_order() {
        let configs = [Config::TracerNoMatch, Config::TcpdumpAll];
        let mut ran = Vec::new();
        let paired = run("test", &configs, 3, &mut Rng::new(5), |c| {
            ran.push(c);
            Ok(sample(if c == Config::Untraced { 10.0 } else { 8.0 }, None))
        })
        .unwrap();
        assert_eq!(paired.pairs.len(), 6);
        assert_eq!(ran.len(), 12);
        assert_eq!(ran.iter().filter(|&&c| c == Config::Untraced).count(), 6);
        let row = paired.row(Config::TcpdumpAll).unwrap();
        assert_eq!((row.pairs, row.ratio.median), (3, 0.8));
        assert!(row.ci.is_none());
        let mut again = Vec::new();
        run("test", &configs, 3, &mut Rng::new(5), |c| {
            again.push(c);
            Ok(sample(1.0, None))
        })
        .unwrap();
        assert_eq!(ran, again);
    }

    #[test]
    fn a_failed_pair_runs_again() {
        let mut calls = 0;
        let paired = run("test", &[Config::TracerAll], 1, &mut Rng::new(1), |_| {
            calls += 1;
            if calls == 1 {
                anyhow::bail!("iperf3 stalled");
            }
            Ok(sample(1.0, Some(0)))
        })
        .unwrap();
        assert_eq!((paired.pairs.len(), calls), (1, 3));
        assert_eq!(
            paired.retried,
            ["tracer, every packet matches: iperf3 stalled"]
        );
        let always = run("test", &[Config::TracerAll], 1, &mut Rng::new(1), |_| {
            anyhow::bail!("broken")
        });
        assert!(always.is_err());
    }

    #[test]
    fn lost_events_make_a_row_partial() {
        let pair = |lost| Pair {
            config: Config::TracerAll,
            traced_first: false,
            untraced: sample(10.0, None),
            traced: sample(9.0, Some(lost)),
        };
        let paired = Paired {
            pairs: vec![pair(0), pair(1_200_000), pair(5)],
            retried: Vec::new(),
        };
        let row = paired.row(Config::TracerAll).unwrap();
        assert!(row.partial());
        let lost = row.lost.unwrap();
        assert_eq!((lost.sum, lost.max), (1_200_005, 1_200_000));
        let md = paired.markdown("Gbit/s", 2);
        assert!(md.contains("**PARTIAL: 1.2 M events lost**"), "{md}");
        assert!(md.contains("partial trace, not a full-trace result: 0.900"));
        assert!(row.dropped.is_none());
    }

    #[test]
    fn counts_for_people() {
        assert_eq!(human(950), "950");
        assert_eq!(human(12_345), "12.3 k");
        assert_eq!(human(1_234_567), "1.2 M");
    }
}
