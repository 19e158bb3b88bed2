//! A live trace: discover, load and attach, read, correlate, write, detach.
//!
//! [`Trace::start`] checks what the user asked for, opens the outputs, discovers the topology,
//! loads the programs and attaches them, and starts the ring buffer reader; [`Trace::run`]
//! feeds the session until Ctrl-C, SIGTERM, `-c` or `--duration`; [`Trace::finish`] drains
//! the ring, writes what is left and the statistics, and detaches everything.

use std::{
    io::{self, IsTerminal},
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    sync::{mpsc, watch},
};
use tracer_common::event::SNAP_MAX;

use super::{
    Session,
    follow::{Applied, Follower},
    select::Selection,
};
use crate::{
    clock::{monotonic_ns, realtime_offset_ns},
    correlate::Limits,
    decode::HopEvent,
    error::UsageError,
    kernel::{
        self, LoadOptions, Programs,
        hooks::{HookSet, Outcome},
        tc::TcMode,
    },
    metrics::{Metrics, MetricsOutput},
    output::{self, Format, HookStats, Output, RunStats},
    reader::{self, ReaderStats},
    recording::Recorder,
    rules::{Detail, Rules},
};

/// How often idle packets are completed and flows expired.
const TICK: Duration = Duration::from_millis(20);
/// How often the topology is read again, to attach to new interfaces and name new namespaces.
const REFRESH: Duration = Duration::from_millis(500);
/// Batches of events the reader may have sent ahead of the session.
const BATCHES_IN_FLIGHT: usize = 64;
/// Records written between two chances for the reader to drain the ring: about a millisecond
/// of work. (A tick can complete thousands of packets at once; written in one go they kept the
/// reader from the ring for tens of milliseconds, enough to fill it under load.)
const WRITE_CHUNK: usize = 256;
/// Interfaces given TC programs at a time, between which the trace reads events: each attach
/// waits for the kernel (an RCU grace period), so TC never holds up the ready signal or the
/// reading of events for long.
const TC_ATTACH_BUDGET: usize = 2;

/// What a live trace is asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// The filter expression (tcpdump syntax), `None` for every packet.
    pub expression: Option<String>,
    /// What to look at (`-i`, `--container`, `--netns`).
    pub selection: Selection,
    pub hooks: HookSet,
    pub tc_mode: TcMode,
    /// Stop after this many packets.
    pub count: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Format on stdout.
    pub format: Format,
    pub ring_bytes: u32,
    /// A packet is complete when no hop joined it for this long.
    pub packet_timeout: Duration,
    /// Most flows tracked at once.
    pub max_flows: usize,
    /// `-w`: also a pcapng file.
    pub pcapng: Option<PathBuf>,
    /// `-s`: bytes per hop for the pcapng file; only headers when `None`.
    pub snap_len: Option<u32>,
    pub kernel_btf: Option<PathBuf>,
    /// `--record`: raw events to this file.
    pub record: Option<PathBuf>,
    /// Created once every hook is attached.
    pub ready_file: Option<PathBuf>,
    /// `--rules`: name the netfilter rule behind each NAT and drop, and with
    /// [`Detail::Walk`] show each packet's walk through the chains.
    pub rules: Option<Detail>,
    /// Keep one connection in this many, chosen in the kernel (1: every one).
    pub sample: u32,
    /// `tracer monitor`: feed these metrics instead of writing to stdout.
    pub metrics: Option<Arc<Metrics>>,
}

/// A running trace.
pub struct Trace {
    options: Options,
    session: Session<'static>,
    programs: Programs,
    follower: Follower,
    /// The reader's own thread.
    reader: std::thread::JoinHandle<anyhow::Result<()>>,
    reader_stats: Arc<ReaderStats>,
    batches: mpsc::Receiver<Vec<HopEvent>>,
    stop: watch::Sender<bool>,
    signals: [Signal; 2],
    /// Whether interfaces may still wait for their TC programs.
    tc_pending: bool,
    /// Whether the first round of TC attachments has ended (and was announced).
    tc_announced: bool,
}

impl Trace {
    /// Everything up to the ready signal.
    pub async fn start(options: Options) -> anyhow::Result<Trace> {
        crate::privileges::check()?;
        kernel::check_ring_bytes(options.ring_bytes).map_err(UsageError::from)?;
        let expression = match &options.expression {
            Some(expression) => Some(crate::filter::parse(expression).map_err(UsageError::from)?),
            None => None,
        };
        let filter = crate::filter::compile(expression.as_ref()).map_err(UsageError::from)?;
        options
            .selection
            .processes
            .check()
            .map_err(UsageError::from)?;
        let follower = Follower::start(&options.selection, options.hooks).await?;
        // Output files first: a path that cannot be written is reported before anything loads.
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
        let mut programs = Programs::load(&LoadOptions {
            hooks: options.hooks,
            filter,
            ring_bytes: options.ring_bytes,
            snap_len: match (&pcapng, options.snap_len) {
                (None, _) => 0,
                (Some(_), Some(bytes)) => bytes,
                (Some(_), None) => SNAP_MAX as u32,
            },
            // Payload only when asked for with -s.
            snap_headers_only: options.snap_len.is_none(),
            kernel_btf: options.kernel_btf.clone(),
            tc_mode: options.tc_mode,
            sample_every: options.sample,
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
        // Parsing the kernel's BTF took tens of MiB, all freed by now: give it back to the
        // system rather than keep it for the whole trace.
        // SAFETY: malloc_trim only releases free heap memory; no pointer is affected.
        unsafe { libc::malloc_trim(0) };
        for note in programs.notes() {
            eprintln!("tracer: note: {note}");
        }
        for cleaned in programs.tc_cleaned() {
            eprintln!("tracer: note: {cleaned}");
        }
        let ring = programs.take_events()?;

        let (stop, stop_rx) = watch::channel(false);
        let (batch_tx, batches) = mpsc::channel::<Vec<HopEvent>>(BATCHES_IN_FLIGHT);
        let reader_stats = Arc::new(ReaderStats::default());
        // The reader runs on a thread of its own, so that the ring is drained however long
        // the session takes over a burst of completed packets (on this thread it waited for
        // the session, and the ring filled under load).
        let reader = {
            let stats = Arc::clone(&reader_stats);
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

        let output_options = output::Options {
            realtime_offset_ns: realtime_offset_ns(),
            snap_len: options.snap_len.unwrap_or(SNAP_MAX as u32),
        };
        let mut outputs: Vec<Box<dyn Output>> = match &options.metrics {
            Some(metrics) => vec![Box::new(MetricsOutput::new(Arc::clone(metrics)))],
            None => vec![output::open(
                options.format,
                io::BufWriter::new(io::stdout()),
                &output_options,
            )?],
        };
        if let Some(file) = pcapng {
            outputs.push(output::open(
                Format::Pcapng,
                io::BufWriter::new(file),
                &output_options,
            )?);
        }
        let mut names = follower.names();
        names.set_drop_reasons(programs.drop_reasons().clone());
        let mut session = Session::new(
            Limits {
                packet_idle_ns: options.packet_timeout.as_nanos() as u64,
                max_flows: options.max_flows,
                ..Limits::default()
            },
            follower.places.clone(),
            options.count,
            outputs,
            names,
        );
        session.select_processes(options.selection.processes.clone());
        if let Some(detail) = options.rules {
            if crate::rules::doctor::legacy_iptables() {
                eprintln!(
                    "tracer: note: --rules: iptables is the legacy backend here; its rules are \
                     not nf_tables rules and cannot be named (drops still show their reason \
                     and kernel function, NAT its tuples)"
                );
            }
            let mut rules = Rules::new(expression.as_ref(), detail);
            follow_rules(&mut rules, &follower);
            if rules.namespaces() == 0 {
                eprintln!(
                    "tracer: note: --rules: no network namespace has nf_tables rules yet \
                     (with iptables-legacy there are none to name); namespaces that get some \
                     are followed"
                );
            }
            session.name_rules(rules);
        }

        // Signal handlers go in before the ready line, so a signal sent right after it is seen.
        let signals = [
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        ];
        announce_ready(&programs, &options)?;
        Ok(Trace {
            tc_pending: options.hooks.has_interface_hooks(),
            tc_announced: false,
            options,
            session,
            programs,
            follower,
            reader,
            reader_stats,
            batches,
            stop,
            signals,
        })
    }

    /// Feeds the session until a signal, `-c` or `--duration`, and until the reader has drained
    /// the ring after that.
    pub async fn run(&mut self) -> anyhow::Result<()> {
        let deadline = self
            .options
            .duration
            .map(|d| tokio::time::Instant::now() + d);
        let mut tick = tokio::time::interval(TICK);
        let mut refresh = tokio::time::interval(REFRESH);
        refresh.reset();
        // A live status line on stderr, only for a person watching a terminal.
        let live = io::stderr().is_terminal() && self.options.metrics.is_none();
        let mut status = tokio::time::interval(Duration::from_secs(1));
        let mut stopping = false;
        loop {
            let [sigint, sigterm] = &mut self.signals;
            tokio::select! {
                batch = self.batches.recv() => match batch {
                    Some(batch) => self.push(batch),
                    None => break,
                },
                _ = tick.tick() => {
                    // Events already read but not yet handed over come first, and packets are
                    // only declared complete up to the time the reader last found the ring
                    // empty: a reader running late must not cut a packet's path in two.
                    while let Ok(batch) = self.batches.try_recv() {
                        self.push(batch);
                    }
                    let horizon = self.reader_stats.drained_at.load(Ordering::Acquire);
                    self.session.tick(monotonic_ns().min(horizon));
                }
                _ = refresh.tick(), if !stopping => self.refresh().await,
                () = std::future::ready(()), if self.tc_pending && !stopping => self.attach_tc(),
                // Records left by the last chunk are written before the loop waits.
                () = std::future::ready(()), if self.session.has_ready() => {}
                _ = status.tick(), if live || self.options.metrics.is_some() => {
                    if live {
                        self.show_status();
                    }
                    self.export_lost();
                }
                _ = sigint.recv(), if !stopping => stopping = true,
                _ = sigterm.recv(), if !stopping => stopping = true,
                _ = sleep_until(deadline), if !stopping => stopping = true,
            }
            if self.session.write_some(WRITE_CHUNK)? {
                stopping = true;
            }
            if stopping {
                // The reader drains the ring once more and closes the channel.
                self.stop.send_replace(true);
            }
        }
        if live {
            eprint!("\r\x1b[K");
        }
        Ok(())
    }

    /// Writes what is left and the statistics, and detaches everything.
    pub async fn finish(self) -> anyhow::Result<RunStats> {
        let Trace {
            session,
            programs,
            reader,
            reader_stats,
            ..
        } = self;
        // The reader has ended: it closed the channel the loop read until the end.
        reader
            .join()
            .map_err(|_| anyhow::anyhow!("the ring buffer reader panicked"))?
            .context("ring buffer reader failed")?;
        let lost_rule_events = session.rule_events_lost();
        let mut hooks: Vec<_> = programs.counters()?.into_iter().collect();
        hooks.sort_by_key(|(hook, _)| *hook);
        let stats = session.finish(|stats| {
            stats.events = reader_stats.records.load(Ordering::Relaxed);
            stats.malformed = reader_stats.malformed.load(Ordering::Relaxed);
            for (hook, counters) in hooks {
                stats.lost += counters.lost;
                stats.filtered += counters.filtered;
                stats.hooks.push(HookStats {
                    hook: hook.name().to_owned(),
                    seen: counters.seen,
                    filtered: counters.filtered,
                    emitted: counters.emitted,
                    lost: counters.lost,
                });
            }
        })?;
        if lost_rule_events > 0 {
            eprintln!(
                "tracer: note: {lost_rule_events} nf_tables trace messages were lost; \
                 the rules of some packets are not named"
            );
        }
        eprintln!("{}", super::closing_line(&stats));
        drop(programs);
        Ok(stats)
    }

    /// Hands a batch to the session, naming the interfaces of TC events.
    fn push(&mut self, batch: Vec<HopEvent>) {
        let programs = &self.programs;
        self.session.push(batch.into_iter().map(|mut event| {
            resolve_tc_interface(programs, &mut event);
            event
        }));
    }

    /// Reads the topology again: new namespaces get names and TC programs.
    async fn refresh(&mut self) {
        if let Err(err) = self.follower.refresh().await {
            log::warn!("failed to read the topology: {err:#}");
        }
        // Names first, so that packets of a new namespace are named once it is followed.
        self.session.rename(self.follower.names());
        if let Some(rules) = self.session.rules_mut() {
            follow_rules(rules, &self.follower);
        }
        // New interfaces get their TC programs from the loop, a few at a time.
        self.tc_pending = self.options.hooks.has_interface_hooks();
    }

    /// Attaches TC programs to the next few interfaces that lack them. The first round, right
    /// after the ready line, ends with a line that says how many interfaces have them; later
    /// rounds name the interfaces they follow.
    fn attach_tc(&mut self) {
        let applied = self.follower.apply(&mut self.programs, TC_ATTACH_BUDGET);
        self.tc_pending = applied.pending;
        let verb = if self.tc_announced { "following" } else { "" };
        report_applied(applied, &mut self.programs, verb);
        if !self.tc_pending && !self.tc_announced {
            self.tc_announced = true;
            let (interfaces, mechanism) = self.programs.tc_summary();
            eprintln!(
                "tracer: TC programs attached to {interfaces} interfaces{}",
                mechanism.map_or_else(String::new, |m| format!(" ({})", m.name()))
            );
        }
    }

    /// Hands the kernel's lost-event count to the metrics.
    fn export_lost(&self) {
        if let (Some(metrics), Ok(counters)) = (&self.options.metrics, self.programs.counters()) {
            metrics.set_lost(counters.values().map(|c| c.lost).sum());
        }
    }

    fn show_status(&self) {
        let (emitted, lost) = self.programs.counters().map_or((0, 0), |counters| {
            counters
                .values()
                .fold((0, 0), |(e, l), c| (e + c.emitted, l + c.lost))
        });
        let (open_packets, open_flows) = self.session.sizes();
        eprint!(
            "\r\x1b[Ktracer: {emitted} events, {lost} lost; {} packets shown; {open_packets} packets and {open_flows} flows open",
            self.session.packets_shown()
        );
    }
}

/// Says what an attach round did: failures, interfaces newly followed (when `verb` is given)
/// and filters an earlier tracer left behind.
fn report_applied(applied: Applied, programs: &mut Programs, verb: &str) {
    for message in applied.failures {
        eprintln!("tracer: warning: {message}");
    }
    if !verb.is_empty() && !applied.attached.is_empty() {
        eprintln!("tracer: {verb} {}", applied.attached.join(", "));
    }
    for cleaned in programs.tc_cleaned() {
        eprintln!("tracer: note: {cleaned}");
    }
}

/// Says which hook could not be attached, and fails when tracing cannot go on without it.
fn report_unused(outcome: &Outcome) -> anyhow::Result<()> {
    if outcome.chosen().is_some() {
        return Ok(());
    }
    let tried: Vec<String> = outcome
        .tried
        .iter()
        .map(|(mechanism, result)| match result {
            Ok(()) => format!("{}: works", mechanism.name()),
            Err(refusal) => format!("{}: {refusal}", mechanism.name()),
        })
        .collect();
    let message = format!("no {} hop ({})", outcome.spec.target, tried.join("; "));
    if outcome.spec.required {
        anyhow::bail!("{message}; `tracer doctor` shows what this kernel allows");
    }
    eprintln!("tracer: note: {message}");
    Ok(())
}

/// Tells scripts that every hook is attached: a line on stderr and, if asked, a file.
fn announce_ready(programs: &Programs, options: &Options) -> anyhow::Result<()> {
    let stack = programs.attachments().len();
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
    eprintln!(
        "tracer: ready: {} hooks attached ({}){}",
        stack + tc * 2,
        parts.join(", "),
        options
            .expression
            .as_ref()
            .map(|e| format!(", filter '{e}'"))
            .unwrap_or_default(),
    );
    if let Some(path) = &options.ready_file {
        std::fs::write(path, b"ready\n")
            .with_context(|| format!("failed to write ready file {}", path.display()))?;
    }
    Ok(())
}

/// TC events carry only an interface index; name the interface and its namespace when only
/// one attached interface has that index. Otherwise the correlator takes them from the
/// packet's neighbouring hop on the same index.
fn resolve_tc_interface(programs: &Programs, event: &mut HopEvent) {
    if !event.tc {
        return;
    }
    let mut candidates = programs
        .tc_interfaces()
        .filter(|i| i.ifindex == event.ifindex);
    if let (Some(only), None) = (candidates.next(), candidates.next()) {
        event.netns_inode = only.netns_inode;
        event.ifname = only.ifname;
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Gives tracer's nf_tables table to the namespaces not seen before that have tables, saying
/// where that failed.
fn follow_rules(rules: &mut Rules, follower: &Follower) {
    let namespaces = follower
        .topology
        .namespaces
        .iter()
        .map(|ns| crate::rules::Namespace {
            inode: ns.inode,
            path: &ns.path,
            own: ns.own,
        });
    for problem in rules.follow(namespaces) {
        eprintln!("tracer: note: --rules: {problem}");
    }
}
