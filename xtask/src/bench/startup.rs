//! Start-up: from starting tracer to its ready line, with 1, 10 and 100 container namespaces
//! on the bridge (topology discovery, program load and attachment), with the default hooks
//! and with `--hooks all`, whose TC programs attach after the ready line (until they are all
//! attached is reported too).

use std::{
    fmt::Write as _,
    process::{Command, Stdio},
};

use serde_json::{Value, json};
use tracer_tests::{testbed::Testbed, tracer::Tracer};

use super::stats::Stat;

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
}

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
    for &containers in sizes {
        let _testbed = Testbed::up(containers)?;
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
    Ok(Results { rows })
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
        md.push('\n');
        md
    }

    pub fn json(&self) -> Value {
        json!(
            self.rows
                .iter()
                .map(|r| json!({
                    "hooks": r.hooks, "containers": r.containers, "seconds": r.seconds.json(),
                    "tc_attached_seconds": r.tc_seconds.map(|t| t.json()),
                }))
                .collect::<Vec<_>>()
        )
    }
}
