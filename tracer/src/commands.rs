//! The commands besides tracing: `tracer topology` and `tracer doctor`.

use std::{
    io::{self, Write},
    path::Path,
};

use anyhow::Context as _;

use crate::{
    cli::{Format, UsageError},
    correlate::{self, Correlator},
    decode::decode,
    names::NameTable,
    output::{self, RunStats, sink::Sink},
    reader::Recording,
    topology::Topology,
};

/// `tracer topology`: containers and namespaces with their interfaces, peers and bridges.
pub async fn topology(format: Format) -> anyhow::Result<()> {
    let containers = crate::topology::docker::containers()
        .await
        .unwrap_or_else(|err| {
            eprintln!("tracer: warning: could not list Docker containers: {err}");
            Default::default()
        });
    let topology = tokio::task::spawn_blocking(move || Topology::discover(&containers)).await?;
    let mut out = io::BufWriter::new(io::stdout());
    match format {
        Format::Text => output::topology::text(&mut out, &topology)?,
        Format::Json => output::topology::json(&mut out, &topology)?,
    }
    out.flush()?;
    Ok(())
}

/// `tracer doctor`: what the kernel offers and what tracer would use.
pub fn doctor() -> anyhow::Result<()> {
    let report = crate::doctor::probe();
    io::stdout().lock().write_all(report.text().as_bytes())?;
    if let Some(err) = report.load_error {
        anyhow::bail!("the programs could not be loaded: {err}");
    }
    Ok(())
}

/// `tracer replay FILE`: what `tracer` would have printed for a recording (`--record`), from
/// the recording alone. The events' own timestamps are the clock, so packets complete and
/// flows end as they did live.
pub fn replay(path: &Path, format: Format) -> anyhow::Result<()> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read {}", path.display()))
        .map_err(UsageError::from)?;
    let mut recording = Recording::new(io::BufReader::new(file));
    let mut correlator = Correlator::new(correlate::Settings::default());
    let mut sink = Sink::new(format, 0, Default::default(), None);
    let mut names = NameTable::default();
    let mut stats = RunStats::default();
    let mut record = Vec::new();
    let mut latest = 0;
    while recording.next_into(&mut record)? {
        stats.events += 1;
        match decode(&record) {
            Ok(event) => {
                latest = latest.max(event.ts_ns);
                correlator.push(event);
            }
            Err(_) => stats.malformed += 1,
        }
        if stats.events % 1024 == 0 {
            correlator.tick(latest);
            sink.write_ready(&mut correlator, &mut names, &mut stats)?;
        }
    }
    correlator.finish();
    sink.write_ready(&mut correlator, &mut names, &mut stats)?;
    sink.stats(&stats)?;
    Ok(())
}
