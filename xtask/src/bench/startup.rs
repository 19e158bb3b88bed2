//! Start-up: from starting tracer to its ready line, with 1, 10 and 100 container namespaces
//! on the bridge (topology discovery, program load and attachment), with the default hooks
//! and with `--hooks all`, whose TC programs attach after the ready line (until they are all
//! attached is reported too). And the peak memory of a small trace (a TCP handshake, three
//! packets): start-up is where it is reached, and it is what a memory limit must allow.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    process::{Command, Stdio},
};

use anyhow::Context as _;
use serde_json::{Value, json};
use tracer_tests::{
    testbed::{SERVER_ADDR, Testbed},
    tracer::Tracer,
    traffic,
};

use super::{
    stats::Stat,
    tools::{packets_from, peak_mib},
};

/// One row: which hooks, how many container namespaces, seconds to ready (and until TC
/// programs were attached, when they were asked for).
struct Row {
    hooks: &'static str,
    containers: usize,
    seconds: Stat,
    tc_seconds: Option<Stat>,
}

pub struct Results {
    rows: Vec<Row>,
    small: SmallTrace,
}

/// Peak memory (VmHWM, from tracer's closing line) of traces of one TCP handshake.
struct SmallTrace {
    peak_mib: Stat,
    /// Packets each run traced, as its closing line says (the handshake's three when nothing
    /// else crossed).
    packets: Vec<u64>,
}

/// Port of the small trace's server in the remote namespace.
const SMALL_TRACE_PORT: u16 = 10_931;

pub fn run(quick: bool) -> anyhow::Result<Results> {
    let (sizes, repeats): (&[usize], usize) = if quick {
        (&[1, 10], 1)
    } else {
        (&[1, 10, 100], 3)
    };
    // `--hooks all` on the largest testbed only: that is where attaching TC everywhere costs.
    let largest = sizes.last().copied().unwrap_or(1);
    let all_hooks = accepts_hooks_all();
    let mut rows = Vec::new();
    let mut small = None;
    for &containers in sizes {
        let testbed = Testbed::up(containers)?;
        if containers == 1 {
            small = Some(small_trace(&testbed, if quick { 1 } else { 5 })?);
        }
        let mut variants = vec![("default", &[][..])];
        if all_hooks && containers == largest {
            variants.push(("--hooks all", &["--hooks", "all"][..]));
        }
        for (hooks, extra) in variants {
            let mut args = vec!["--port", "1"];
            args.extend_from_slice(extra);
            let (mut samples, mut tc_samples) = (Vec::new(), Vec::new());
            for _ in 0..repeats {
                let tracer = Tracer::start_with_stdout(&args, Stdio::null())?;
                samples.push(tracer.ready_after.as_secs_f64());
                tc_samples.extend(tracer.tc_attached_after.map(|d| d.as_secs_f64()));
                tracer.stop()?;
            }
            rows.push(Row {
                hooks,
                containers,
                seconds: Stat::of(&samples),
                tc_seconds: (!tc_samples.is_empty()).then(|| Stat::of(&tc_samples)),
            });
        }
    }
    let small = small.ok_or_else(|| anyhow::anyhow!("no testbed of one container was measured"))?;
    Ok(Results { rows, small })
}

/// `runs` traces of one TCP handshake from the container to the remote namespace, each read
/// for its peak memory and its packet count when it has ended.
fn small_trace(testbed: &Testbed, runs: usize) -> anyhow::Result<SmallTrace> {
    let server = SocketAddr::from((SERVER_ADDR, SMALL_TRACE_PORT));
    let listener = traffic::listen(&testbed.remote, server)?;
    let port = SMALL_TRACE_PORT.to_string();
    let (mut peaks, mut packets) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let tracer = Tracer::start_with_stdout(&["--port", &port], Stdio::null())?;
        // accept returns once the handshake's last packet has reached the server.
        let client = traffic::connect_from(&testbed.containers[0].netns, None, server)?;
        let accepted = traffic::accept(&listener)?;
        let finished = tracer.stop()?;
        drop((client, accepted));
        let closing = &finished.stderr;
        peaks.push(
            peak_mib(closing)
                .with_context(|| format!("tracer did not report its peak memory: {closing}"))?,
        );
        packets.push(
            packets_from(closing)
                .with_context(|| format!("tracer did not report its packets: {closing}"))?,
        );
    }
    Ok(SmallTrace {
        peak_mib: Stat::of(&peaks),
        packets,
    })
}

/// Whether the tracer binary takes `--hooks all` (clap checks the value before `--version`
/// exits).
fn accepts_hooks_all() -> bool {
    Command::new(tracer_tests::tracer::binary())
        .args(["--hooks", "all", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

impl Results {
    /// Median seconds to ready with the default hooks.
    pub fn seconds_for(&self, containers: usize) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| r.hooks == "default" && r.containers == containers)
            .map(|r| r.seconds.median)
    }

    /// Median peak memory of a small trace, MiB, and the packets its runs traced.
    pub fn small_trace(&self) -> (f64, &[u64]) {
        (self.small.peak_mib.median, &self.small.packets)
    }

    pub fn markdown(&self) -> String {
        let mut md = String::from(
            "## Start-up\n\nFrom starting tracer (`--port 1`) to `tracer: ready`, on a machine with that many container namespaces; with `--hooks all`, also until `tracer: TC programs attached` (they attach after the ready line).\n\n| Hooks | Container namespaces | Seconds to ready | Seconds until TC attached |\n|---|---|---|---|\n",
        );
        for row in &self.rows {
            let s = row.seconds;
            let tc = row.tc_seconds.map_or_else(
                || "-".to_owned(),
                |t| format!("{:.2} [{:.2}-{:.2}]", t.median, t.min, t.max),
            );
            let _ = writeln!(
                md,
                "| {} | {} | {:.2} [{:.2}-{:.2}] | {tc} |",
                row.hooks, row.containers, s.median, s.min, s.max
            );
        }
        let (peak, packets) = (self.small.peak_mib, &self.small.packets);
        let _ = writeln!(
            md,
            "\nPeak memory of a small trace: `tracer --port {SMALL_TRACE_PORT}` while the container opens one TCP connection to the remote namespace (SYN, SYN-ACK, ACK), stopped once the server has accepted it; VmHWM from the closing line, start-up included, {} runs.\n\n| Peak memory (median) | Range | Packets traced per run |\n|---|---|---|\n| {:.1} MiB | {:.1}-{:.1} MiB | {packets:?} |\n",
            packets.len(),
            peak.median,
            peak.min,
            peak.max,
        );
        md
    }

    pub fn json(&self) -> Value {
        json!({
            "rows": self
                .rows
                .iter()
                .map(|r| json!({
                    "hooks": r.hooks, "containers": r.containers, "seconds": r.seconds.json(),
                    "tc_attached_seconds": r.tc_seconds.map(|t| t.json()),
                }))
                .collect::<Vec<_>>(),
            "small_trace": {
                "peak_mib": self.small.peak_mib.json(), "packets": self.small.packets,
            },
        })
    }
}
