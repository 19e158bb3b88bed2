//! `tracer probe` run to completion, and the verdict of the one flow it traced.

use std::process::ExitStatus;

use serde_json::Value;

use crate::{trace, tracer};

/// What one `tracer probe -o json` printed: its exit status, the verdict of its flow, and
/// stderr.
pub struct Probed {
    pub status: ExitStatus,
    pub verdict: Value,
    pub stderr: String,
}

impl Probed {
    /// The verdict's kind, namespace, interface and hook.
    pub fn at(&self) -> (String, String, String, String) {
        (
            trace::text(&self.verdict["kind"]),
            trace::text(&self.verdict["netns"]),
            trace::text(&self.verdict["ifname"]),
            trace::text(&self.verdict["hook"]),
        )
    }
}

/// The place [`Probed::at`] is compared with.
pub fn place(
    kind: &str,
    netns: &str,
    ifname: &str,
    hook: &str,
) -> (String, String, String, String) {
    (kind.into(), netns.into(), ifname.into(), hook.into())
}

/// Runs `tracer probe -o json ARGS` and checks that it traced exactly one flow.
pub fn run(args: &[&str]) -> anyhow::Result<Probed> {
    let mut full = vec!["probe", "-o", "json"];
    full.extend_from_slice(args);
    let finished = tracer::run(&full)?;
    let lines = finished
        .json()
        .map_err(|err| err.context(format!("tracer {full:?}: {}", finished.stderr)))?;
    let flows = trace::of_type(&lines, "flow");
    anyhow::ensure!(
        flows.len() == 1,
        "tracer {full:?} traced {} flows, not one: {flows:#?}\n{}",
        flows.len(),
        finished.stderr
    );
    Ok(Probed {
        status: finished.status,
        verdict: flows[0]["verdict"].clone(),
        stderr: finished.stderr,
    })
}
