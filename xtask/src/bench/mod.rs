//! `cargo xtask bench`: what tracing costs, measured side by side with the untraced path and
//! with tcpdump on the same testbed, with repeats interleaved (A, B, A, B, ...) and medians
//! reported with their spread. Results go to `bench/results.md` and `bench/results.json`.
//!
//! `--quick` runs every benchmark briefly: a smoke check that each one runs and reports
//! numbers, asserting nothing about speed (CI runs it).

mod collector;
mod datapath;
mod floor;
mod loss;
mod startup;

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::util::{commit, kernel, machine, require_root, use_tracer_build, workspace};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Short runs, one repeat, debug build: checks that every benchmark works, not how fast.
    #[arg(long)]
    pub quick: bool,
    /// Repeats of each datapath configuration.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
}

/// Median and spread of repeated measurements.
#[derive(Debug, Clone, Copy)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    pub fn of(values: &[f64]) -> Stat {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let median = if sorted.is_empty() {
            f64::NAN
        } else if sorted.len() % 2 == 1 {
            sorted[sorted.len() / 2]
        } else {
            (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
        };
        Stat {
            median,
            min: sorted.first().copied().unwrap_or(f64::NAN),
            max: sorted.last().copied().unwrap_or(f64::NAN),
        }
    }

    fn json(&self) -> Value {
        json!({"median": self.median, "min": self.min, "max": self.max})
    }
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    require_root("the benchmarks")?;
    // The smoke check only needs every benchmark to run: the debug build that the tests
    // already made saves CI a release build.
    let binary = use_tracer_build(!args.quick)?;
    let repeats = if args.quick { 1 } else { args.repeats };

    let mut md = String::new();
    let _ = writeln!(md, "# tracer benchmarks\n");
    let _ = writeln!(
        md,
        "`cargo xtask bench{}` on {}, kernel {}, commit {}, {}.\n",
        if args.quick { " --quick" } else { "" },
        machine(),
        kernel(),
        commit(),
        date()
    );
    let _ = writeln!(
        md,
        "Medians of {repeats} interleaved repeats, with the range (min-max) in brackets. Ratios are to the baseline measured in the same run.\n"
    );

    eprintln!("xtask: bench: datapath throughput and per-packet kernel cost");
    let datapath = datapath::run(repeats, args.quick)?;
    md += &datapath.markdown();
    eprintln!("xtask: bench: collector throughput and memory");
    let collector = collector::run(&binary, args.quick)?;
    md += &collector.markdown();
    eprintln!("xtask: bench: loss under load");
    let loss = loss::run(args.quick)?;
    md += &loss.markdown();
    eprintln!("xtask: bench: start-up time");
    let startup = startup::run(args.quick)?;
    md += &startup.markdown();
    md += &targets(&datapath, &collector, &startup);
    // What limits the missed targets is written by hand, from profiles, and kept with the
    // numbers.
    if let Ok(limits) = std::fs::read_to_string(workspace().join("bench/limits.md")) {
        md += "\n";
        md += &limits;
    }

    let json = json!({
        "machine": machine(), "kernel": kernel(), "commit": commit(), "date": date(),
        "quick": args.quick, "repeats": repeats,
        "datapath": datapath.json(), "collector": collector.json(),
        "loss": loss.json(), "startup": startup.json(),
    });
    let dir = workspace().join("bench");
    std::fs::create_dir_all(&dir)?;
    let name = if args.quick {
        "results-quick"
    } else {
        "results"
    };
    std::fs::write(dir.join(format!("{name}.md")), &md)?;
    std::fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_string_pretty(&json)?,
    )?;
    print!("{md}");
    Ok(())
}

/// The targets, met or not, from this run's numbers.
fn targets(
    datapath: &datapath::Results,
    collector: &collector::Results,
    startup: &startup::Results,
) -> String {
    let mut md = String::from("## Targets\n\n| Target | Measured | Met |\n|---|---|---|\n");
    let mut row = |target: &str, measured: String, met: bool| {
        let _ = writeln!(
            md,
            "| {target} | {measured} | {} |",
            if met { "yes" } else { "no" }
        );
    };
    let ratio = |config: &str| datapath.ratio(config).unwrap_or(f64::NAN);
    row(
        "non-matching traffic >= 97% of untraced throughput",
        format!("{:.1}%", ratio("tracer, filter matches nothing") * 100.0),
        ratio("tracer, filter matches nothing") >= 0.97,
    );
    row(
        "matching every packet >= 85% of untraced",
        format!("{:.1}%", ratio("tracer, every packet matches") * 100.0),
        ratio("tracer, every packet matches") >= 0.85,
    );
    row(
        "matching every packet better than tcpdump",
        format!(
            "{:.1}% vs {:.1}%",
            ratio("tracer, every packet matches") * 100.0,
            ratio("tcpdump on veth, docker0, uplink") * 100.0
        ),
        ratio("tracer, every packet matches") > ratio("tcpdump on veth, docker0, uplink"),
    );
    let (miss, hit) = datapath.kernel_cost();
    let (floor_miss, floor_hit) = datapath.floor();
    row(
        "kernel programs <= 100 ns per non-matching packet",
        format!("{miss:.0} ns (empty program: {floor_miss:.0} ns)"),
        miss <= 100.0,
    );
    row(
        "kernel programs <= 400 ns per emitted event",
        format!("{hit:.0} ns (empty program: {floor_hit:.0} ns)"),
        hit <= 400.0,
    );
    row(
        "collector >= 1,000,000 events/s on one core",
        format!("{:.0} events/s", collector.events_per_second),
        collector.events_per_second >= 1_000_000.0,
    );
    row(
        "RSS <= 64 MiB with 100k flows",
        format!("{:.1} MiB", collector.peak_rss_mib),
        collector.peak_rss_mib <= 64.0,
    );
    if let Some(seconds) = startup.seconds_for(100) {
        row(
            "start-up with 100 container namespaces <= 2 s",
            format!("{seconds:.2} s"),
            seconds <= 2.0,
        );
    }
    md
}

fn date() -> String {
    crate::util::output(std::process::Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
