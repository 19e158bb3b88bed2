//! The commands: a trace (the default), `tracer topology`, `tracer doctor`, `tracer replay` and
//! `tracer merge`.

use std::{
    io::{self, Write},
    path::Path,
    sync::Arc,
};

use anyhow::Context as _;

use crate::{
    cli::{Format, MonitorArgs, TraceArgs},
    correlate::Limits,
    error::UsageError,
    metrics::Metrics,
    names::NameTable,
    output,
    recording::Source,
    session::{Session, live::Trace, replay},
    topology::{Topology, runtime::Workloads},
};

/// A trace, as `args` say, until Ctrl-C, SIGTERM, `-c` or `--duration`.
pub async fn trace(args: TraceArgs) -> anyhow::Result<()> {
    let mut trace = Trace::start(args.into()).await?;
    trace.run().await?;
    trace.finish().await?;
    Ok(())
}

/// `tracer monitor`: the endpoint first (it answers, not ready, while the programs attach),
/// then a trace that feeds the metrics until SIGTERM or Ctrl-C.
pub async fn monitor(args: MonitorArgs) -> anyhow::Result<()> {
    let web = match &args.web_config {
        Some(path) => crate::metrics::web::Web::load(path).map_err(UsageError)?,
        None => crate::metrics::web::Web::none(),
    };
    let scheme = if web.current().tls.is_some() {
        "https"
    } else {
        "http"
    };
    let metrics = Metrics::new(crate::metrics::Limits {
        max_series: args.max_series,
        series_ttl: (!args.series_ttl.is_zero()).then_some(args.series_ttl),
        interfaces: args.per_interface,
    });
    let listener = crate::metrics::http::bind(args.metrics)
        .await
        .map_err(UsageError::from)?;
    eprintln!(
        "tracer: serving metrics at {scheme}://{}/metrics",
        listener.local_addr()?
    );
    let server = tokio::spawn(crate::metrics::http::serve(
        listener,
        Arc::clone(&metrics),
        web,
    ));
    let mut options: crate::session::live::Options = args.into();
    options.metrics = Some(Arc::clone(&metrics));
    let result = async {
        let mut trace = Trace::start(options).await?;
        metrics.set_ready();
        trace.run().await?;
        trace.finish().await?;
        anyhow::Ok(())
    }
    .await;
    server.abort();
    result
}

/// `tracer topology`: containers, pods and namespaces with their interfaces, peers and bridges.
pub async fn topology(format: Format) -> anyhow::Result<()> {
    let workloads = Workloads::discover(|warning| eprintln!("tracer: warning: {warning}")).await;
    let topology = tokio::task::spawn_blocking(move || Topology::discover(&workloads)).await?;
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
/// the recording alone.
pub fn replay(path: &Path, format: Format, max_flows: usize) -> anyhow::Result<()> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read {}", path.display()))
        .map_err(UsageError::from)?;
    let out = output::open(
        format.into(),
        io::BufWriter::new(io::stdout()),
        &output::Options::default(),
    )?;
    let session = Session::new(
        Limits {
            max_flows,
            ..Limits::default()
        },
        Default::default(),
        None,
        vec![out],
        NameTable::default(),
    );
    let mut input = Source::open(file)
        .with_context(|| format!("cannot read {}", path.display()))
        .map_err(UsageError::from)?;
    let stats = replay::run(&mut input, session)?;
    if input.left_out() > 0 {
        crate::recording::warn_cut_short(path, input.left_out() as u64);
    }
    eprintln!("{}", crate::session::closing_line(&stats));
    Ok(())
}

/// `tracer report FILE... -o FILE`: the HTML report of traces.
pub fn report(options: &crate::report::Options) -> anyhow::Result<()> {
    let stats = crate::report::run(options)?;
    eprintln!("tracer: report written to {}", options.output.display());
    eprintln!("{}", crate::session::closing_line(&stats));
    if stats.lost > 0 {
        eprintln!(
            "tracer: warning: the trace lost {} events (its ring buffer was full): some packets \
             miss hops",
            stats.lost
        );
    }
    Ok(())
}

/// `tracer merge FILE...`: one trace from the traces of several nodes. Every input is read and
/// joined before anything is written, so a bad input leaves no half-written output.
pub fn merge(options: &crate::merge::Options) -> anyhow::Result<()> {
    let (nodes, merged) =
        crate::merge::prepare(options).map_err(|err| UsageError(err.to_string()))?;
    for node in nodes.iter().filter(|node| node.stats.lost > 0) {
        eprintln!(
            "tracer: warning: node {} lost {} events (its ring buffer was full): some of its \
             packets miss hops and may not join",
            node.name, node.stats.lost
        );
    }
    let stats = crate::merge::write(
        &nodes,
        &merged,
        options.format,
        io::BufWriter::new(io::stdout()),
    )?;
    eprintln!(
        "tracer: merged {} nodes: {} packets, {} crossed between nodes, in {} flows",
        nodes.len(),
        stats.packets,
        merged.crossed(),
        stats.flows
    );
    Ok(())
}
