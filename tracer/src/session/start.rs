//! The steps of starting a live trace, in the order [`super::live::Trace::start`] takes them:
//! check what was asked ([`Request::check`]), create the output files ([`Files::create`]),
//! load and attach the programs ([`load_programs`]), start the ring buffer reader
//! ([`Reader::spawn`]), open the outputs ([`open_outputs`]), follow the rules of every
//! namespace ([`start_rules`]), and say that tracing has begun ([`announce_ready`]).

use std::{fs::File, io, sync::Arc};

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};
use tracer_common::{config::Filter, event::SNAP_MAX, wire::tunnel};

use super::{follow::Follower, live::Options};
use crate::{
    decode::HopEvent,
    error::UsageError,
    filter::Expr,
    kernel::{self, LoadOptions, Programs, Tunnels, hooks::Outcome},
    metrics::MetricsOutput,
    output::{self, Format, Output},
    reader::{self, ReaderStats},
    recording::{Recorder, SharedRecorder},
    rules::{Detail, Namespace, Rules, TunnelPorts, doctor::legacy_iptables},
    topology::Topology,
};

/// Batches of events the reader may have sent ahead of the session.
const BATCHES_IN_FLIGHT: usize = 64;

/// What the user asked for, checked before anything is created or loaded: the filter parsed
/// and compiled, the ring size and the process selection valid.
pub struct Request {
    pub expression: Option<Expr>,
    pub filter: Filter,
}

impl Request {
    /// Every mistake here is a usage error: one line, exit code 2.
    pub fn check(options: &Options) -> anyhow::Result<Request> {
        kernel::check_ring_bytes(options.ring_bytes).map_err(UsageError::from)?;
        let expression = options
            .expression
            .as_deref()
            .map(crate::filter::parse)
            .transpose()
            .map_err(UsageError::from)?;
        let filter = crate::filter::compile(expression.as_ref()).map_err(UsageError::from)?;
        options
            .selection
            .processes
            .check()
            .map_err(UsageError::from)?;
        Ok(Request { expression, filter })
    }
}

/// The files a trace writes besides stdout, created before anything loads so that a path
/// that cannot be written is reported first.
pub struct Files {
    /// `-w`.
    pub pcapng: Option<File>,
    /// `--record`.
    pub recorder: Option<Recorder>,
}

impl Files {
    pub fn create(options: &Options) -> anyhow::Result<Files> {
        let pcapng = options
            .pcapng
            .as_deref()
            .map(output::create_private)
            .transpose()
            .map_err(UsageError::from)?;
        let recorder = match &options.record {
            Some(path) => Some(Box::new(io::BufWriter::new(
                output::create_private(path).map_err(UsageError::from)?,
            )) as Recorder),
            None => None,
        };
        if let Some(path) = &options.html {
            output::html::check_destination(path).map_err(|err| UsageError(err.to_string()))?;
        }
        Ok(Files { pcapng, recorder })
    }
}

/// The tunnels to look into: VXLAN on every port a VXLAN device on the machine uses (and the
/// two usual ones), Geneve on its port (or the one a Geneve device uses instead), IP in IP and
/// GRE. Devices made after the start with other ports are not looked into.
pub fn tunnels(topology: &Topology) -> Tunnels {
    let geneve = topology.geneve_ports();
    Tunnels {
        enabled: true,
        vxlan_ports: topology.vxlan_ports(),
        geneve_port: geneve
            .iter()
            .copied()
            .find(|&port| port != tunnel::GENEVE_PORT)
            .or(geneve.first().copied()),
    }
}

/// Bytes of each packet the programs copy: none without `-w`; with it, `-s` or the most.
pub fn snap_len(pcapng: bool, snap_len: Option<u32>) -> u32 {
    match (pcapng, snap_len) {
        (false, _) => 0,
        (true, Some(bytes)) => bytes,
        (true, None) => SNAP_MAX as u32,
    }
}

/// Loads the programs with the filter, attaches every hook the kernel allows (failing when a
/// required one cannot be), and the socket programs where they can be.
pub fn load_programs(
    options: &Options,
    filter: Filter,
    pcapng: bool,
    tunnels: &Tunnels,
) -> anyhow::Result<Programs> {
    let mut programs = Programs::load(&LoadOptions {
        hooks: options.hooks,
        filter,
        ring_bytes: options.ring_bytes,
        snap_len: snap_len(pcapng, options.snap_len),
        // Payload only when asked for with -s.
        snap_headers_only: options.snap_len.is_none(),
        kernel_btf: options.kernel_btf.clone(),
        tc_mode: options.tc_mode,
        sample_every: options.sample,
        tunnels: tunnels.clone(),
    })?;
    for outcome in programs.climb(false) {
        report_unused(&outcome)?;
    }
    if let Err(err) = programs.watch_sockets() {
        if !options.selection.processes.is_empty() {
            return Err(err.context("--pid and --comm need the socket programs"));
        }
        eprintln!("tracer: note: packets are not tied to processes: {err:#}");
    }
    // What loading took (the types the BTF-typed programs were loaded against, the object's
    // relocation tables) is freed by now: give it back rather than keep it for the whole trace.
    crate::memory::release_free_memory();
    for note in programs.notes() {
        eprintln!("tracer: note: {note}");
    }
    for cleaned in programs.tc_cleaned() {
        eprintln!("tracer: note: {cleaned}");
    }
    Ok(programs)
}

/// Says which hook could not be attached, and fails when tracing cannot go on without it.
pub fn report_unused(outcome: &Outcome) -> anyhow::Result<()> {
    if outcome.chosen().is_some() {
        return Ok(());
    }
    let tried: Vec<String> = outcome
        .tried
        .iter()
        .map(|(rung, result)| match result {
            Ok(()) => format!("{}: works", rung.mechanism.name()),
            Err(refusal) => format!("{}: {refusal}", rung.mechanism.name()),
        })
        .collect();
    let message = format!("no {} hop ({})", outcome.spec.target, tried.join("; "));
    if outcome.spec.required {
        anyhow::bail!("{message}; `tracer doctor` shows what this kernel allows");
    }
    eprintln!("tracer: note: {message}");
    Ok(())
}

/// The ring buffer reader, on a thread of its own, so that the ring is drained however long
/// the session takes over a burst of completed packets (on the session's thread it waited for
/// the session, and the ring filled under load).
pub struct Reader {
    pub thread: std::thread::JoinHandle<anyhow::Result<()>>,
    pub stats: Arc<ReaderStats>,
    pub batches: mpsc::Receiver<Vec<HopEvent>>,
    /// Set to stop: the reader drains the ring once more and closes `batches`.
    pub stop: watch::Sender<bool>,
}

impl Reader {
    pub fn spawn(
        ring: aya::maps::RingBuf<aya::maps::MapData>,
        recorder: Option<SharedRecorder>,
    ) -> anyhow::Result<Reader> {
        let (stop, stop_rx) = watch::channel(false);
        let (batch_tx, batches) = mpsc::channel::<Vec<HopEvent>>(BATCHES_IN_FLIGHT);
        let stats = Arc::new(ReaderStats::default());
        let thread = {
            let stats = Arc::clone(&stats);
            std::thread::Builder::new()
                .name("tracer-reader".to_owned())
                .spawn(move || {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?
                        .block_on(reader::run(ring, batch_tx, stop_rx, stats, recorder))
                })
                .context("failed to start the ring buffer reader")?
        };
        Ok(Reader {
            thread,
            stats,
            batches,
            stop,
        })
    }
}

/// The outputs: the metrics of `tracer monitor`, or the format asked for on stdout; and the
/// pcapng file of `-w`.
pub fn open_outputs(
    options: &Options,
    pcapng: Option<File>,
    stdout: impl io::Write + Send + 'static,
) -> anyhow::Result<Vec<Box<dyn Output>>> {
    let output_options = output::Options {
        realtime_offset_ns: crate::clock::realtime_offset_ns(),
        snap_len: options.snap_len.unwrap_or(SNAP_MAX as u32),
    };
    let mut outputs: Vec<Box<dyn Output>> = match &options.metrics {
        Some(metrics) => vec![Box::new(MetricsOutput::new(Arc::clone(metrics)))],
        None => vec![output::open(
            options.format,
            io::BufWriter::new(stdout),
            &output_options,
        )?],
    };
    if let Some(path) = &options.html {
        let title = match &options.expression {
            Some(expression) => format!("live trace of {expression}"),
            None => "live trace".to_owned(),
        };
        outputs.push(Box::new(output::html::HtmlWriter::new(
            path,
            title,
            output::html::DETAIL_LIMIT,
        )));
    }
    if let Some(file) = pcapng {
        outputs.push(output::open(
            Format::Pcapng,
            io::BufWriter::new(file),
            &output_options,
        )?);
    }
    Ok(outputs)
}

/// `--rules`: tracer's table in every namespace that has nf_tables rules now (others are
/// followed as they get some), saying what cannot be named here.
pub fn start_rules(
    expression: Option<&Expr>,
    detail: Detail,
    tunnels: &Tunnels,
    follower: &Follower,
) -> Rules {
    if legacy_iptables() {
        eprintln!(
            "tracer: note: --rules: iptables is the legacy backend here; its rules are not \
             nf_tables rules and cannot be named (drops still show their reason and kernel \
             function, NAT its tuples)"
        );
    }
    let mut ports = tunnels.vxlan_ports.clone();
    ports.extend(tunnels.geneve_port);
    let tunnel_ports = TunnelPorts(tunnels.enabled.then_some(ports));
    let mut rules = Rules::new(expression, detail, &tunnel_ports);
    follow_rules(&mut rules, follower);
    if rules.namespaces() == 0 {
        eprintln!(
            "tracer: note: --rules: no network namespace has nf_tables rules yet (with \
             iptables-legacy there are none to name); namespaces that get some are followed"
        );
    }
    rules
}

/// Gives tracer's nf_tables table to the namespaces not seen before that have tables, saying
/// where that failed.
pub fn follow_rules(rules: &mut Rules, follower: &Follower) {
    let namespaces = follower.topology.namespaces.iter().map(|ns| Namespace {
        inode: ns.inode,
        path: &ns.path,
        own: ns.own,
    });
    for problem in rules.follow(namespaces) {
        eprintln!("tracer: note: --rules: {problem}");
    }
}

/// The ready line: how many hooks of each mechanism are attached, and the filter.
pub fn ready_line(programs: &Programs, expression: Option<&str>) -> String {
    let (tc, mechanism) = programs.tc_summary();
    let mut parts: Vec<String> = Vec::new();
    for (_, mechanism) in programs.attachments() {
        let count = programs
            .attachments()
            .iter()
            .filter(|(_, m)| m == mechanism)
            .count();
        let part = format!("{count} {}", mechanism.name());
        if !parts.contains(&part) {
            parts.push(part);
        }
    }
    if let Some(mechanism) = mechanism {
        parts.push(format!(
            "{} {} on {tc} interfaces",
            tc * 2,
            mechanism.name()
        ));
    }
    format!(
        "tracer: ready: {} hooks attached ({}){}",
        programs.attachments().len() + tc * 2,
        parts.join(", "),
        expression
            .map(|e| format!(", filter '{e}'"))
            .unwrap_or_default(),
    )
}

/// Tells scripts that every hook is attached: a line on stderr and, if asked, a file.
pub fn announce_ready(programs: &Programs, options: &Options) -> anyhow::Result<()> {
    eprintln!("{}", ready_line(programs, options.expression.as_deref()));
    if let Some(path) = &options.ready_file {
        std::fs::write(path, b"ready\n")
            .with_context(|| format!("failed to write ready file {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
