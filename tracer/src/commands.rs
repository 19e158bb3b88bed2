//! The commands besides tracing: `tracer topology` and `tracer doctor`.

use std::io::{self, Write};

use crate::{cli::Format, output, topology::Topology};

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
