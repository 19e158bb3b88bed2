//! A live trace: discover, load and attach, read, correlate, write, detach.
//!
//! [`Trace::start`] takes the steps of [`super::start`]: checks what the user asked for,
//! discovers the topology, creates the output files, loads the programs and attaches them,
//! starts the ring buffer reader and opens the outputs; [`Trace::run`]
//! feeds the session until Ctrl-C, SIGTERM, `-c` or `--duration`; [`Trace::finish`] drains
//! the ring, writes what is left and the statistics, and detaches everything.

use std::{
    io::{self, IsTerminal},
    path::PathBuf,
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    sync::{mpsc, watch},
};

use super::{
    Session,
    follow::{Applied, Follower},
    select::Selection,
    start::{
        Files, Reader, Request, announce_ready, follow_rules, load_programs, open_outputs,
        start_rules, tunnels,
    },
};
use crate::{
    clock::monotonic_ns,
    correlate::Limits,
    decode::HopEvent,
    kernel::{Programs, hooks::HookSet, tc::TcMode},
    metrics::Metrics,
    output::{Format, HookStats, RunStats},
    reader::ReaderStats,
    recording::{self, SharedRecorder},
    rules::Detail,
};

/// How often idle packets are completed and flows expired.
const TICK: Duration = Duration::from_millis(20);
/// How often the topology is read again, to attach to new interfaces and name new namespaces.
const REFRESH: Duration = Duration::from_millis(500);
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
    /// What to look at (`-i`, `--container`, `--pod`, `--netns`, `--pid`, `--comm`).
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
    /// `--html`: the HTML report, written when the trace ends.
    pub html: Option<PathBuf>,
    /// Created once every hook is attached.
    pub ready_file: Option<PathBuf>,
    /// `--rules`: name the netfilter rule behind each NAT and drop, and with
    /// [`Detail::Walk`] show each packet's walk through the chains.
    pub rules: Option<Detail>,
    /// Keep one connection in this many, chosen in the kernel (1: every one).
    pub sample: u32,
    /// `tracer monitor`: feed these metrics instead of writing to stdout.
    pub metrics: Option<Arc<Metrics>>,
    /// Stop once this turns true (`tracer probe`, when its probe is done).
    pub until: Option<watch::Receiver<bool>>,
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
    /// `--record`, which the reader copies the ring's records to, and this appends the names
    /// of drop locations to.
    recorder: Option<SharedRecorder>,
    batches: mpsc::Receiver<Vec<HopEvent>>,
    stop: watch::Sender<bool>,
    signals: [Signal; 2],
    /// Whether interfaces may still wait for their TC programs.
    tc_pending: bool,
    /// Whether the first round of TC attachments has ended (and was announced).
    tc_announced: bool,
    /// Stop once this turns true.
    until: Option<watch::Receiver<bool>>,
}

impl Trace {
    /// Everything up to the ready signal, step by step (see [`super::start`]).
    pub async fn start(options: Options) -> anyhow::Result<Trace> {
        crate::privileges::check()?;
        let request = Request::check(&options)?;
        if options.rules.is_some() {
            crate::rules::follow::check_kernel()?;
        }
        let follower = Follower::start(&options.selection, options.hooks).await?;
        let files = Files::create(&options)?;
        let tunnels = tunnels(&follower.topology);
        let mut programs =
            load_programs(&options, request.filter, files.pcapng.is_some(), &tunnels)?;
        let mut recorder = files.recorder;
        if let Some(recorder) = recorder.as_mut() {
            let names = recording::Names {
                drop_reasons: programs.drop_reasons().clone(),
                boot_id: recording::this_boot(),
                drop_locations: Default::default(),
            };
            recording::write_names(recorder, &names).context("failed to write --record")?;
        }
        let recorder = recorder.map(|recorder| Arc::new(Mutex::new(recorder)));
        let reader = Reader::spawn(programs.take_events()?, recorder.clone())?;
        let outputs = open_outputs(&options, files.pcapng, io::stdout())?;
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
        if recorder.is_some() {
            session.keep_named();
        }
        if let Some(detail) = options.rules {
            let expression = request.expression.as_ref();
            session.name_rules(start_rules(expression, detail, &tunnels, &follower));
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
            until: options.until.clone(),
            options,
            session,
            programs,
            follower,
            reader: reader.thread,
            reader_stats: reader.stats,
            recorder,
            batches: reader.batches,
            stop: reader.stop,
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
            let until = &mut self.until;
            tokio::select! {
                batch = self.batches.recv() => match batch {
                    Some(batch) => self.push(batch)?,
                    None => break,
                },
                _ = tick.tick() => {
                    // Events already read but not yet handed over come first, and packets are
                    // only declared complete up to the time the reader last found the ring
                    // empty: a reader running late must not cut a packet's path in two.
                    while let Ok(batch) = self.batches.try_recv() {
                        self.push(batch)?;
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
                () = turns_true(until), if !stopping => stopping = true,
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
            mut session,
            programs,
            reader,
            reader_stats,
            recorder,
            ..
        } = self;
        // The reader has ended: it closed the channel the loop read until the end.
        reader
            .join()
            .map_err(|_| anyhow::anyhow!("the ring buffer reader panicked"))?
            .context("ring buffer reader failed")?;
        record_named(&mut session, recorder.as_ref())?;
        if let Some(recorder) = &recorder {
            recording::lock(recorder)
                .flush()
                .context("failed to write --record")?;
        }
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
    fn push(&mut self, batch: Vec<HopEvent>) -> anyhow::Result<()> {
        let programs = &self.programs;
        self.session.push(batch.into_iter().map(|mut event| {
            resolve_tc_interface(programs, &mut event);
            event
        }));
        record_named(&mut self.session, self.recorder.as_ref())
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

/// Waits until `until` turns true (or its sender is gone); forever without one.
async fn turns_true(until: &mut Option<watch::Receiver<bool>>) {
    match until {
        Some(until) => {
            let _ = until.wait_for(|done| *done).await;
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Appends the drop locations `session` named since the last call to the recording, if any.
fn record_named(
    session: &mut Session<'_>,
    recorder: Option<&SharedRecorder>,
) -> anyhow::Result<()> {
    let Some(recorder) = recorder else {
        return Ok(());
    };
    let named = session.take_named();
    if named.is_empty() {
        return Ok(());
    }
    let names = recording::Names::of_locations(named);
    recording::write_names(&mut *recording::lock(recorder), &names)
        .context("failed to write --record")
}
