//! The HTML report at scale: `tracer report` of a recording of the mixed stream with about
//! 100,000 flows (drops, NAT, short and long flows), the page's size, and how long Chromium
//! takes from navigation to a drawn page: the page's own `performance.now()` when it is ready
//! (`data-render-ms`, read from `--dump-dom`), repeated, on a fresh profile each time.

use std::{
    fmt::Write as _,
    io::{BufWriter, Write as _},
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::{
    stats::{self, Interval, Stat},
    stream,
    tools::peak_mib,
};

/// Seed of the stream: the collector benchmark's, so that the two describe the same traffic.
const SEED: u64 = 0x5eed_c011;

/// The most a report of 100,000 flows may weigh, and the longest it may take to draw.
pub const SIZE_TARGET_BYTES: u64 = 16 << 20;
pub const RENDER_TARGET_MS: f64 = 5_000.0;

pub struct Results {
    flows: u64,
    events: u64,
    detailed: u64,
    bytes: u64,
    make_seconds: f64,
    make_peak_mib: f64,
    /// `tracer replay -o json` of the same recording.
    replay_peak_mib: f64,
    render_ms: Stat,
    ci: Option<Interval>,
    runs: usize,
}

pub fn run(binary: &Path, quick: bool) -> anyhow::Result<Results> {
    let flows_wanted: u64 = if quick { 5_000 } else { 100_000 };
    // Events per flow of the mixed stream, from a sample of it.
    let sample = stream::mixed(&mut std::io::sink(), 200_000, SEED)?;
    let events = flows_wanted * sample.events / sample.flows.max(1);
    let dir = std::env::temp_dir().join(format!("tracer-bench-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = RemoveDir(&dir);
    let recording = dir.join("mixed.events");
    let written = {
        let mut out = BufWriter::new(std::fs::File::create(&recording)?);
        let written = stream::mixed(&mut out, events, SEED)?;
        out.flush()?;
        written
    };
    let html = dir.join("report.html");
    let start = Instant::now();
    let output = Command::new(binary)
        .arg("report")
        .arg(&recording)
        .arg("-o")
        .arg(&html)
        .stdin(Stdio::null())
        .output()
        .context("failed to run tracer report")?;
    let make_seconds = start.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!("tracer report failed ({}): {stderr}", output.status);
    }
    let make_peak_mib =
        peak_mib(&stderr).context("tracer report did not report its peak memory")?;
    // The same recording through `tracer replay`, for what the report itself adds.
    let replayed = Command::new(binary)
        .args(["replay", "--output", "json"])
        .arg(&recording)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .output()
        .context("failed to run tracer replay")?;
    let replay_peak_mib = peak_mib(&String::from_utf8_lossy(&replayed.stderr))
        .context("tracer replay did not report its peak memory")?;
    let page = std::fs::read_to_string(&html)?;
    let bytes = page.len() as u64;
    let detailed = page
        .split_once("\"detailed\":")
        .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .context("the report has no totals")?;
    // Six runs: the fewest with a 95% interval for the median.
    let runs = if quick { 1 } else { 6 };
    let mut render = Vec::new();
    for _ in 0..runs {
        render.push(render_ms(&html, &dir.join("profile"))?);
    }
    Ok(Results {
        flows: written.flows,
        events: written.events,
        detailed,
        bytes,
        make_seconds,
        make_peak_mib,
        replay_peak_mib,
        render_ms: Stat::of(&render),
        ci: stats::median_ci(&render, stats::LEVEL),
        runs,
    })
}

/// Milliseconds from navigation to the drawn page, as the page measured them.
fn render_ms(html: &Path, profile: &Path) -> anyhow::Result<f64> {
    let _ = std::fs::remove_dir_all(profile);
    let output = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=60000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("file://{}", html.display()))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .context("failed to run chromium (cargo xtask setup installs it)")?;
    let dom = String::from_utf8_lossy(&output.stdout);
    if dom.contains("data-ready=\"error\"") {
        bail!("the report failed to draw in Chromium");
    }
    dom.split_once("data-render-ms=\"")
        .and_then(|(_, rest)| rest.split('"').next())
        .and_then(|ms| ms.parse().ok())
        .context("the report did not say it was drawn (no data-render-ms in the DOM)")
}

struct RemoveDir<'a>(&'a Path);

impl Drop for RemoveDir<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.0);
    }
}

impl Results {
    pub fn markdown(&self) -> String {
        let mut md = String::from("## HTML report\n\n");
        let _ = writeln!(
            md,
            "`tracer report` of a recording of the mixed stream: {} events, {} flows ({} kept in detail). Drawn in Chromium {} times (headless, fresh profile); time from navigation to the drawn page, by the page's own clock.\n",
            self.events, self.flows, self.detailed, self.runs
        );
        let r = &self.render_ms;
        let _ = writeln!(
            md,
            "| Report size | Per flow | Making it | Its peak memory (`tracer replay` of the same) | Drawn in (median) | 95% CI | Range |\n|---|---|---|---|---|---|---|\n| {:.1} MiB | {:.0} bytes | {:.2} s | {:.1} MiB ({:.1} MiB) | {:.0} ms | {} | {:.0}-{:.0} ms |\n",
            self.bytes as f64 / f64::from(1 << 20),
            self.bytes as f64 / self.flows.max(1) as f64,
            self.make_seconds,
            self.make_peak_mib,
            self.replay_peak_mib,
            r.median,
            self.ci.map_or_else(
                || "n/a".to_owned(),
                |ci| format!("{:.0}-{:.0} ms", ci.lo, ci.hi)
            ),
            r.min,
            r.max
        );
        let _ = writeln!(
            md,
            "Targets for 100,000 flows: at most {} MiB, drawn within {:.0} s.\n",
            SIZE_TARGET_BYTES >> 20,
            RENDER_TARGET_MS / 1000.0
        );
        md
    }

    pub fn json(&self) -> Value {
        json!({
            "flows": self.flows, "events": self.events, "detailed": self.detailed,
            "bytes": self.bytes, "make_seconds": self.make_seconds,
            "make_peak_mib": self.make_peak_mib, "replay_peak_mib": self.replay_peak_mib,
            "render_ms": self.render_ms.json(),
            "render_ms_ci": self.ci.map(|ci| ci.json()), "runs": self.runs,
        })
    }

    /// `12.3 MiB, drawn in 1234 ms`.
    pub fn summary(&self) -> String {
        format!(
            "{:.1} MiB, drawn in {:.0} ms ({} flows)",
            self.bytes as f64 / f64::from(1 << 20),
            self.render_ms.median,
            self.flows
        )
    }

    /// Whether the report met its targets (only meaningful at 100,000 flows).
    pub fn within_targets(&self) -> bool {
        self.bytes <= SIZE_TARGET_BYTES && self.render_ms.median <= RENDER_TARGET_MS
    }
}
