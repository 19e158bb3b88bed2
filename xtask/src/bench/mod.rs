//! `cargo xtask bench`: what tracing costs on the Docker-like testbed, measured against the
//! untraced path and tcpdump in paired runs (`pairs`), with medians, their spread and
//! distribution-free confidence intervals (`stats`). Results go to `bench/results.md` and
//! `bench/results.json`.
//!
//! `--quick` runs every benchmark briefly: a smoke check that each one runs and reports
//! numbers, asserting nothing about speed (CI runs it).

mod collector;
mod config;
mod cpu;
mod datapath;
mod floor;
mod kernel;
mod loss;
mod observer;
mod pairs;
mod pcap;
mod report;
mod rules;
mod startup;
mod stats;
mod stream;
mod targets;
mod tools;

use std::fmt::Write as _;

use serde_json::json;
use tracer_tests::testbed::Testbed;

use crate::util::{commit, kernel, machine, require_root, use_tracer_build, workspace};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Short runs, one pair per configuration, debug build: checks that every benchmark
    /// works, not how fast.
    #[arg(long)]
    pub quick: bool,
    /// Throughput pairs (untraced + traced) per configuration; the CPU-cost benchmark runs
    /// 60% of this, rounded up (6 of 10, the fewest pairs with a 95% interval for a median).
    #[arg(long, default_value_t = 10)]
    pub repeats: usize,
    /// Run one benchmark and print its table, leaving bench/results.* as they are: for
    /// working on one part.
    #[arg(long, value_enum)]
    pub only: Option<Only>,
    /// Measure this tracer binary instead of building one (with --only): to compare two
    /// builds one after the other on the same machine.
    #[arg(long, value_name = "PATH", requires = "only")]
    pub tracer: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Only {
    /// The collector without the kernel (no testbed, no root needed).
    Collector,
    /// What `--rules` costs, beside the same tracer without it.
    Rules,
    /// The kernel programs' cost per run and per forwarded packet.
    Kernel,
    /// The HTML report of 100,000 flows: its size and how long Chromium takes to draw it.
    Report,
    /// Throughput with `tracer monitor` at its default sampling, paired with untraced runs.
    Monitor,
    /// Events lost at rising rates of UDP datagrams, and the collector's CPU at each.
    Loss,
    /// Time to the ready line with 1, 10 and 100 container namespaces, and the peak memory of
    /// a small trace.
    Startup,
    /// How much tracer slows the packets it watches, by tcpdump's clocks.
    Observer,
}

/// Seed of the random order of the pairs and of the runs within a pair: fixed, so that a run
/// can be repeated in the same order.
const SEED: u64 = 0x7ace_2026;

/// The tracer binary to measure: the one given, or a build of this workspace.
fn tracer_binary(args: &Args) -> anyhow::Result<std::path::PathBuf> {
    match &args.tracer {
        Some(path) => {
            let path = std::fs::canonicalize(path)
                .map_err(|err| anyhow::anyhow!("--tracer {}: {err}", path.display()))?;
            // SAFETY: xtask is single-threaded until its commands start their work.
            unsafe { std::env::set_var("TRACER_BIN", &path) };
            Ok(path)
        }
        None => use_tracer_build(!args.quick),
    }
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    if let Some(Only::Collector) = args.only {
        let binary = tracer_binary(args)?;
        print!("{}", collector::run(&binary, args.quick)?.markdown());
        return Ok(());
    }
    if let Some(Only::Report) = args.only {
        let binary = tracer_binary(args)?;
        print!("{}", report::run(&binary, args.quick)?.markdown());
        return Ok(());
    }
    require_root("the benchmarks")?;
    if let Some(Only::Loss) = args.only {
        tracer_binary(args)?;
        print!("{}", loss::run(args.quick)?.markdown());
        return Ok(());
    }
    if let Some(Only::Observer) = args.only {
        tracer_binary(args)?;
        let testbed = Testbed::up(1)?;
        let mut rng = stats::Rng::new(SEED);
        print!(
            "{}",
            observer::run(&testbed, args.quick, &mut rng)?.markdown()
        );
        return Ok(());
    }
    if let Some(Only::Startup) = args.only {
        tracer_binary(args)?;
        print!("{}", startup::run(args.quick)?.markdown());
        return Ok(());
    }
    if let Some(only @ (Only::Kernel | Only::Monitor | Only::Rules)) = args.only {
        // The parts that need the testbed and an iperf3 server on its remote end.
        tracer_binary(args)?;
        let testbed = Testbed::up(1)?;
        let _server = tools::IperfServer::start(&testbed.remote)?;
        let repeats = if args.quick { 1 } else { args.repeats };
        let mut rng = stats::Rng::new(SEED);
        let markdown = match only {
            Only::Kernel => kernel::run(&testbed, if args.quick { 2 } else { 5 })?.markdown(),
            Only::Monitor => datapath::run_only(
                &testbed,
                &[config::Config::Monitor],
                repeats,
                args.quick,
                &mut rng,
            )?
            .markdown(),
            _ => rules::run(&testbed, repeats, args.quick, true, &mut rng)?.markdown(),
        };
        print!("{markdown}");
        return Ok(());
    }
    // The smoke check only needs every benchmark to run: the debug build that the tests
    // already made saves CI a release build.
    let binary = use_tracer_build(!args.quick)?;
    let repeats = if args.quick { 1 } else { args.repeats };
    let cpu_pairs = (repeats * 6).div_ceil(10);
    let mut rng = stats::Rng::new(SEED);

    let testbed = Testbed::up(1)?;
    let server = tools::IperfServer::start(&testbed.remote)?;
    eprintln!("xtask: bench: datapath throughput, {repeats} pairs per configuration");
    let datapath = datapath::run(&testbed, repeats, args.quick, &mut rng)?;
    // Enough pairs for a confidence interval (6), fewer than the datapath rows.
    let rule_pairs = if args.quick {
        1
    } else {
        (repeats * 6).div_ceil(10).max(6)
    };
    eprintln!("xtask: bench: cost of --rules, {rule_pairs} pairs per configuration");
    let rules = rules::run(&testbed, rule_pairs, args.quick, false, &mut rng)?;
    eprintln!("xtask: bench: CPU cost at a fixed rate, {cpu_pairs} pairs per configuration");
    let cpu = cpu::run(&testbed, cpu_pairs, args.quick, &mut rng)?;
    eprintln!("xtask: bench: kernel program cost");
    let programs = kernel::run(&testbed, if args.quick { 2 } else { 5 })?;
    drop(server);
    eprintln!("xtask: bench: observer effect");
    let observer = observer::run(&testbed, args.quick, &mut rng)?;
    drop(testbed);
    eprintln!("xtask: bench: collector throughput and memory");
    let collector = collector::run(&binary, args.quick)?;
    eprintln!("xtask: bench: loss under load");
    let loss = loss::run(args.quick)?;
    eprintln!("xtask: bench: start-up time");
    let startup = startup::run(args.quick)?;
    eprintln!("xtask: bench: the HTML report of many flows");
    let report = report::run(&binary, args.quick)?;

    let mut md = String::new();
    let _ = writeln!(md, "# tracer benchmarks\n");
    let _ = writeln!(
        md,
        "`cargo xtask bench{}` on {}, kernel {}, commit {}, {}; {repeats} throughput pairs and {cpu_pairs} CPU pairs per configuration, order seed {:#x}.\n",
        if args.quick { " --quick" } else { "" },
        machine(),
        kernel(),
        commit(),
        date(),
        SEED,
    );
    md += &datapath.markdown();
    md += &rules.markdown();
    md += &cpu.markdown();
    md += &programs.markdown();
    md += &observer.markdown();
    md += &collector.markdown();
    md += &loss.markdown();
    md += &startup.markdown();
    md += &report.markdown();
    md += &targets::markdown(&targets::Inputs {
        quick: args.quick,
        datapath: &datapath,
        cpu: &cpu,
        kernel: &programs,
        observer: &observer,
        startup: &startup,
        collector: &collector,
        loss: &loss,
        report: &report,
    });
    // What limits the missed targets is written by hand, from profiles, and kept with the
    // numbers.
    if let Ok(limits) = std::fs::read_to_string(workspace().join("bench/limits.md")) {
        md += "\n";
        md += &limits;
    }

    let json = json!({
        "machine": machine(), "kernel": kernel(), "commit": commit(), "date": date(),
        "quick": args.quick, "seed": SEED,
        "throughput_pairs": repeats, "cpu_pairs": cpu_pairs,
        "datapath": datapath.json(), "rules": rules.json(), "cpu": cpu.json(), "kernel_programs": programs.json(),
        "observer": observer.json(), "collector": collector.json(),
        "loss": loss.json(), "startup": startup.json(), "report": report.json(),
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

fn date() -> String {
    crate::util::output(std::process::Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
