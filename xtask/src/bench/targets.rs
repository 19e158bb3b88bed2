//! The targets, met or not, from one run's numbers. A result from runs in which tracer
//! lost events is a partial trace and never counts as meeting a target.

use std::fmt::Write as _;

use super::{
    collector, config::Config, cpu, datapath, kernel, loss, observer, pairs::Row, pairs::ci_text,
    report, startup,
};

/// Whether a target is met.
enum Met {
    Yes,
    No,
    /// tracer lost events in the runs behind the number.
    LostEvents,
    /// The number cannot decide it, for the reason given.
    Undecided(&'static str),
}

impl Met {
    fn from(met: bool) -> Met {
        if met { Met::Yes } else { Met::No }
    }

    fn text(&self) -> String {
        match self {
            Met::Yes => "yes".to_owned(),
            Met::No => "no".to_owned(),
            Met::LostEvents => "not met (lost events)".to_owned(),
            Met::Undecided(why) => format!("not established ({why})"),
        }
    }
}

pub struct Inputs<'a> {
    /// Numbers from `--quick`: a smoke check, not a measurement.
    pub quick: bool,
    pub datapath: &'a datapath::Results,
    pub cpu: &'a cpu::Results,
    pub kernel: &'a kernel::Results,
    pub observer: &'a observer::Results,
    pub startup: &'a startup::Results,
    pub collector: &'a collector::Results,
    pub loss: &'a loss::Results,
    pub report: &'a report::Results,
}

pub fn markdown(r: &Inputs) -> String {
    let mut md =
        String::from("## Targets\n\n2-vCPU machine, default hooks, ratios within this run.");
    if r.quick {
        md += " These numbers come from `--quick` (one short pair per configuration, one observer pair of rounds): they show that every benchmark runs and judge nothing; a full run does.";
    }
    md += "\n\n| Target | Measured | Met |\n|---|---|---|\n";
    let mut row = |target: &str, measured: String, met: Met| {
        let met = if r.quick {
            "not judged (--quick)".to_owned()
        } else {
            met.text()
        };
        let _ = writeln!(md, "| {target} | {measured} | {met} |");
    };
    let throughput = |c| r.datapath.paired.row(c);
    let nothing = throughput(Config::TracerNoMatch);
    row(
        "throughput, filter matches nothing >= 0.97x (95% CI lower bound >= 0.95x)",
        ratio_text(nothing),
        checked(nothing, |row| match row.ci {
            None => Met::Undecided("no confidence interval"),
            Some(ci) => Met::from(row.ratio.median >= 0.97 && ci.lo >= 0.95),
        }),
    );
    let cpu = r.cpu.paired.row(Config::TracerNoMatch);
    row(
        "CPU per GB, filter matches nothing <= +3%",
        ratio_text(cpu),
        checked(cpu, |row| Met::from(row.ratio.median <= 1.03)),
    );
    let every = throughput(Config::TracerAll);
    row(
        "throughput, every packet matching, 0 events lost >= 0.85x",
        ratio_text(every),
        checked(every, |row| Met::from(row.ratio.median >= 0.85)),
    );
    let monitor = throughput(Config::Monitor);
    row(
        "throughput with tracer monitor at its default sampling >= 0.98x",
        ratio_text(monitor),
        checked(monitor, |row| Met::from(row.ratio.median >= 0.98)),
    );
    let monitor_cpu = r.cpu.paired.row(Config::Monitor);
    row(
        "CPU per GB with tracer monitor at its default sampling (reported)",
        ratio_text(monitor_cpu),
        checked(monitor_cpu, |_| Met::Undecided("no target of its own")),
    );
    let tcpdump = throughput(Config::TcpdumpAll);
    row(
        "throughput, every packet matching, better than tcpdump -s 128 capturing all",
        format!(
            "{} vs tcpdump {}",
            ratio_text(every),
            tcpdump.map_or_else(|| "-".to_owned(), |t| format!("{:.3}", t.ratio.median))
        ),
        checked(every, |row| match tcpdump {
            Some(t) => Met::from(row.ratio.median > t.ratio.median),
            None => Met::Undecided("no tcpdump runs"),
        }),
    );
    let (miss, hit) = (&r.kernel.miss, &r.kernel.hit);
    row(
        "kernel cost per run, non-matching, net of floor <= 30 ns",
        format!(
            "{:.0} ns (floor {:.0} ns)",
            miss.net_per_run(),
            miss.floor.ns_per_run()
        ),
        Met::from(miss.net_per_run() <= 30.0),
    );
    row(
        "kernel cost per emitted event, net of floor <= 200 ns",
        format!(
            "{:.0} ns (floor {:.0} ns, {} events lost)",
            hit.net_per_run(),
            hit.floor.ns_per_run(),
            hit.lost
        ),
        if hit.lost > 0 {
            Met::LostEvents
        } else {
            Met::from(hit.net_per_run() <= 200.0)
        },
    );
    row(
        "programs run per forwarded packet (SNAT path) <= 6",
        format!(
            "{:.2} (filter matching everything: {:.2})",
            miss.runs_per_forwarded(),
            hit.runs_per_forwarded()
        ),
        Met::from(miss.runs_per_forwarded() <= 6.0),
    );
    let observer = r.observer.ratio();
    row(
        "observer effect on container -> uplink latency <= +10%",
        format!(
            "{:+.1}%, 95% CI {} ({} events lost)",
            (observer - 1.0) * 100.0,
            r.observer.ratio_ci().map_or_else(
                || "n/a".to_owned(),
                |ci| format!(
                    "{:+.1}% to {:+.1}%",
                    (ci.lo - 1.0) * 100.0,
                    (ci.hi - 1.0) * 100.0
                )
            ),
            r.observer.lost()
        ),
        if r.observer.lost() > 0 {
            Met::LostEvents
        } else {
            Met::from(observer <= 1.10)
        },
    );
    match r.startup.seconds_for(100) {
        Some(seconds) => row(
            "ready with 100 container namespaces <= 1 s",
            format!("{seconds:.2} s"),
            Met::from(seconds <= 1.0),
        ),
        None => row(
            "ready with 100 container namespaces <= 1 s",
            "-".to_owned(),
            Met::Undecided("not measured by --quick"),
        ),
    }
    let (peak, packets) = r.startup.small_trace();
    row(
        "peak RSS, small trace (a TCP handshake) <= 24 MiB",
        format!("{peak:.1} MiB, packets per run {packets:?}"),
        Met::from(peak <= 24.0),
    );
    collector_rows(r, &mut row);
    row(
        "HTML report of 100,000 flows: <= 16 MiB, drawn in Chromium within 5 s (median)",
        r.report.summary(),
        Met::from(r.report.within_targets()),
    );
    md.push('\n');
    md
}

/// The collector's targets: speed, memory, accuracy.
fn collector_rows(r: &Inputs, row: &mut impl FnMut(&str, String, Met)) {
    let replay = r.collector.events_per_second();
    row(
        "replay: decode + correlate + JSON >= 1.5 M events/s (one core)",
        format!("{:.0} events/s", replay.median),
        Met::from(replay.median >= 1.5e6),
    );
    match r.loss.live_events_per_cpu_second() {
        Some(live) => row(
            "live: ring buffer -> JSON >= 1 M events/s (per CPU-second)",
            format!("{live:.0} events/s"),
            Met::from(live >= 1e6),
        ),
        None => row(
            "live: ring buffer -> JSON >= 1 M events/s (per CPU-second)",
            "-".to_owned(),
            Met::Undecided("not measured"),
        ),
    }
    let loss_free = r.loss.max_without_loss();
    row(
        "highest rate with 0 lost events, every datagram matching >= 200k packets/s",
        loss_free.map_or_else(
            || "none".to_owned(),
            |pps| {
                format!(
                    "{pps:.0} packets/s (the senders reach {:.0} untraced)",
                    r.loss.ceiling()
                )
            },
        ),
        Met::from(loss_free.is_some_and(|pps| pps >= 200_000.0)),
    );
    if let Some((flows, mib)) = r.collector.first_rss_mib() {
        row(
            &format!("peak RSS holding {flows} flows <= 48 MiB"),
            format!("{mib:.1} MiB"),
            Met::from(mib <= 48.0),
        );
    }
    if let Some((overall, first, second)) = r.collector.per_flow() {
        let linear = (first - second).abs() <= 0.25 * overall.abs().max(1.0);
        row(
            "memory per flow at 1M flows <= 400 bytes, growing linearly",
            format!("{overall:.0} bytes ({first:.0} then {second:.0})"),
            Met::from(overall <= 400.0 && linear),
        );
    }
    let a = r.collector.accuracy();
    row(
        "p50 exact for flows of <= 64 packets; p99 within 5%",
        format!(
            "{}/{} short segments exact; p99 error up to {:.2}% over {} long ones",
            a.small_exact,
            a.small,
            a.large_p99_error * 100.0,
            a.large
        ),
        Met::from(a.small_exact == a.small && a.large_p99_error <= 0.05),
    );
}

/// "median [CI]" of a paired row, marked when it is a partial trace.
fn ratio_text(row: Option<Row>) -> String {
    row.map_or_else(
        || "-".to_owned(),
        |row| {
            let text = format!("{:.3}x [{}]", row.ratio.median, ci_text(row.ci));
            if row.partial() {
                format!("partial trace: {text}")
            } else {
                text
            }
        },
    )
}

/// `judge` on a full-trace row; lost events and missing rows decide first.
fn checked(row: Option<Row>, judge: impl FnOnce(&Row) -> Met) -> Met {
    match row {
        None => Met::Undecided("not measured"),
        Some(row) if row.partial() => Met::LostEvents,
        Some(row) => judge(&row),
    }
}
