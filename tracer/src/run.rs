//! A tracing session: load and attach, read, correlate, write, detach.

use std::{
    io::{self, Write},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};

use crate::{
    cli::{Cli, Format},
    correlate::{self, Correlator, Record},
    decode::HopEvent,
    kernel::{self, Programs, STACK_HOOKS, Settings, TcTarget},
    names::NameTable,
    output::{HookStats, RunStats, json::JsonWriter, text::TextWriter},
    reader::{self, ReaderStats},
};

/// How often idle packets are completed and flows expired.
const TICK: Duration = Duration::from_millis(20);

/// Runs a trace as `cli` says, until Ctrl-C, SIGTERM, `-c` or `--duration`.
pub async fn trace(cli: Cli) -> anyhow::Result<()> {
    kernel::check_ring_bytes(cli.ring_size)?;
    let mut programs = Programs::load(&Settings {
        port: cli.port.unwrap_or(0),
        ring_bytes: cli.ring_size,
    })?;
    programs.attach_stack(&STACK_HOOKS)?;
    for ifname in &cli.interfaces {
        programs.attach_tc(&TcTarget {
            netns: cli.netns.clone(),
            ifname: ifname.clone(),
        })?;
    }
    for note in programs.notes() {
        eprintln!("tracer: note: {note}");
    }
    let ring = programs.take_events()?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let (batch_tx, mut batch_rx) = mpsc::channel::<Vec<HopEvent>>(64);
    let reader_stats = Arc::new(ReaderStats::default());
    let recorder = match &cli.record {
        Some(path) => Some(Box::new(io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("failed to create {}", path.display()))?,
        )) as reader::Recorder),
        None => None,
    };
    let reader = tokio::spawn(reader::run(
        ring,
        batch_tx,
        stop_rx,
        Arc::clone(&reader_stats),
        recorder,
    ));

    let mut names = NameTable::discover();
    let mut sink = Sink::new(cli.output);
    let mut correlator = Correlator::new(correlate::Settings {
        packet_idle_ns: cli.packet_timeout.as_nanos() as u64,
        ..correlate::Settings::default()
    });
    let mut stats = RunStats::default();

    // Signal handlers go in before the ready line, so a signal sent right after it is seen.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    announce_ready(&programs, &cli)?;

    let deadline = cli.duration.map(|d| tokio::time::Instant::now() + d);
    let mut tick = tokio::time::interval(TICK);
    let mut stopping = false;
    loop {
        tokio::select! {
            batch = batch_rx.recv() => match batch {
                Some(batch) => {
                    for mut event in batch {
                        resolve_tc_interface(&programs, &mut event);
                        if !names.knows(event.netns_inode) {
                            names = NameTable::discover();
                        }
                        correlator.push(event);
                    }
                }
                None => break,
            },
            _ = tick.tick() => correlator.tick(monotonic_ns()),
            _ = sigint.recv(), if !stopping => stopping = true,
            _ = sigterm.recv(), if !stopping => stopping = true,
            _ = sleep_until(deadline), if !stopping => stopping = true,
        }
        if sink.write_ready(&mut correlator, &names, &mut stats, cli.count)? {
            stopping = true;
        }
        if stopping {
            // The reader drains the ring once more and closes the channel.
            stop_tx.send_replace(true);
        }
    }
    reader.await.context("ring buffer reader failed")??;
    correlator.finish();
    sink.write_ready(&mut correlator, &names, &mut stats, cli.count)?;

    stats.events = reader_stats.records.load(Ordering::Relaxed);
    stats.malformed = reader_stats.malformed.load(Ordering::Relaxed);
    let mut hooks: Vec<_> = programs.counters()?.into_iter().collect();
    hooks.sort_by_key(|(hook, _)| *hook);
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
    sink.stats(&stats)?;
    drop(programs);
    Ok(())
}

/// Tells scripts that every hook is attached: a line on stderr and, if asked, a file.
fn announce_ready(programs: &Programs, cli: &Cli) -> anyhow::Result<()> {
    let attachments = programs.attachments();
    let count = |mechanism: &str| {
        attachments
            .iter()
            .filter(|a| a.mechanism == mechanism)
            .count()
    };
    let mut parts = vec![format!("{} tp_btf", count("tp_btf"))];
    for mechanism in ["tcx", "clsact"] {
        if count(mechanism) > 0 {
            parts.push(format!("{} {mechanism}", count(mechanism)));
        }
    }
    eprintln!(
        "tracer: ready: {} hooks attached ({}){}",
        attachments.len(),
        parts.join(", "),
        cli.port.map(|p| format!(", port {p}")).unwrap_or_default(),
    );
    if let Some(path) = &cli.ready_file {
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
        .iter()
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

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC) as u64
}

/// CLOCK_REALTIME minus CLOCK_MONOTONIC.
pub fn realtime_offset_ns() -> i128 {
    clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC)
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and a valid timespec to fill.
    unsafe { libc::clock_gettime(clock, &raw mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// The chosen output format on stdout.
enum Sink {
    Text(TextWriter<io::BufWriter<io::Stdout>>),
    Json(JsonWriter<io::BufWriter<io::Stdout>>),
}

impl Sink {
    fn new(format: Format) -> Sink {
        let out = io::BufWriter::new(io::stdout());
        match format {
            Format::Text => Sink::Text(TextWriter::new(out, realtime_offset_ns())),
            Format::Json => Sink::Json(JsonWriter::new(out)),
        }
    }

    /// Writes what the correlator has ready. Returns true once `count` packets were written;
    /// later packets are not written.
    fn write_ready(
        &mut self,
        correlator: &mut Correlator,
        names: &NameTable,
        stats: &mut RunStats,
        count: Option<u64>,
    ) -> io::Result<bool> {
        let mut wrote = false;
        while let Some(record) = correlator.pop() {
            match &record {
                Record::Packet(_) if count.is_some_and(|n| stats.packets >= n) => continue,
                Record::Packet(_) => stats.packets += 1,
                Record::Flow(_) => stats.flows += 1,
                Record::Nat(_) => {}
            }
            wrote = true;
            match self {
                Sink::Text(w) => w.record(&record, names)?,
                Sink::Json(w) => w.record(&record, names)?,
            }
        }
        if wrote {
            match self {
                Sink::Text(w) => w.flush()?,
                Sink::Json(w) => w.flush()?,
            }
        }
        Ok(count.is_some_and(|n| stats.packets >= n))
    }

    fn stats(&mut self, stats: &RunStats) -> io::Result<()> {
        match self {
            Sink::Text(w) => w.stats(stats),
            Sink::Json(w) => w.stats(stats),
        }
    }
}

/// Writes a line to stderr, ignoring a closed stderr.
pub fn note(message: &str) {
    let _ = writeln!(io::stderr(), "tracer: {message}");
}
