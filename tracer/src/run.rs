//! A tracing session: discover, load and attach, read, correlate, write, detach.

use std::{
    io::{self, IsTerminal},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};
use tracer_common::event::SNAP_MAX;

use crate::{
    cli::{TraceArgs, UsageError},
    clock::{monotonic_ns, realtime_offset_ns},
    correlate::{self, Correlator},
    decode::HopEvent,
    follow::Follower,
    kernel::{self, Programs, Settings},
    output::{self, HookStats, RunStats, pcapng::PcapngWriter, sink::Sink},
    reader::{self, ReaderStats},
};

/// How often idle packets are completed and flows expired.
const TICK: Duration = Duration::from_millis(20);
/// How often the topology is read again, to attach to new interfaces and name new namespaces.
const REFRESH: Duration = Duration::from_millis(500);

/// Runs a trace as `args` say, until Ctrl-C, SIGTERM, `-c` or `--duration`.
pub async fn trace(args: TraceArgs) -> anyhow::Result<()> {
    crate::privileges::check()?;
    kernel::check_ring_bytes(args.ring_size).map_err(UsageError::from)?;
    let filter = args.filter().map_err(UsageError::from)?;
    let mut follower = Follower::start(&args).await?;
    // Output files first: a path that cannot be written is reported before anything loads.
    let pcapng = args
        .pcapng
        .as_deref()
        .map(output::create_private)
        .transpose()
        .map_err(UsageError::from)?;
    let recorder = match &args.record {
        Some(path) => Some(Box::new(io::BufWriter::new(
            output::create_private(path).map_err(UsageError::from)?,
        )) as reader::Recorder),
        None => None,
    };
    let mut programs = Programs::load(&Settings {
        filter,
        ring_bytes: args.ring_size,
        snap_len: match (&pcapng, args.snap_len) {
            (None, _) => 0,
            (Some(_), Some(bytes)) => bytes,
            (Some(_), None) => SNAP_MAX as u32,
        },
        // Payload only when asked for with -s.
        snap_headers_only: args.snap_len.is_none(),
        kernel_btf: args.kernel_btf.clone(),
        tc_mode: args.tc_mode,
    })?;
    for outcome in programs.climb(false) {
        if outcome.chosen().is_some() {
            continue;
        }
        let tried: Vec<String> = outcome
            .tried
            .iter()
            .map(|(mechanism, result)| match result {
                Ok(()) => format!("{}: works", mechanism.name()),
                Err(refusal) => format!("{}: {refusal}", mechanism.name()),
            })
            .collect();
        let message = format!("no {} hop ({})", outcome.ladder.target, tried.join("; "));
        if outcome.ladder.required {
            anyhow::bail!("{message}; `tracer doctor` shows what this kernel allows");
        }
        eprintln!("tracer: note: {message}");
    }
    for message in follower.apply(&mut programs).failures {
        eprintln!("tracer: warning: {message}");
    }
    for note in programs.notes() {
        eprintln!("tracer: note: {note}");
    }
    for cleaned in programs.tc_cleaned() {
        eprintln!("tracer: note: {cleaned}");
    }
    let ring = programs.take_events()?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let (batch_tx, mut batch_rx) = mpsc::channel::<Vec<HopEvent>>(64);
    let reader_stats = Arc::new(ReaderStats::default());
    let reader = tokio::spawn(reader::run(
        ring,
        batch_tx,
        stop_rx,
        Arc::clone(&reader_stats),
        recorder,
    ));

    let mut names = follower.names();
    names.set_drop_reasons(programs.drop_reasons().clone());
    let mut sink = Sink::new(
        args.output,
        realtime_offset_ns(),
        follower.places.clone(),
        args.count,
    );
    if let Some(file) = pcapng {
        let writer = PcapngWriter::new(
            io::BufWriter::new(file),
            args.snap_len.unwrap_or(SNAP_MAX as u32),
            realtime_offset_ns(),
        )?;
        sink.write_pcapng(writer);
    }
    let mut correlator = Correlator::new(correlate::Settings {
        packet_idle_ns: args.packet_timeout.as_nanos() as u64,
        ..correlate::Settings::default()
    });
    let mut stats = RunStats::default();

    // Signal handlers go in before the ready line, so a signal sent right after it is seen.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    announce_ready(&programs, &args)?;

    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let mut tick = tokio::time::interval(TICK);
    let mut refresh = tokio::time::interval(REFRESH);
    refresh.reset();
    // A live status line on stderr, only for a person watching a terminal.
    let live = io::stderr().is_terminal();
    let mut status = tokio::time::interval(Duration::from_secs(1));
    let mut stopping = false;
    loop {
        tokio::select! {
            batch = batch_rx.recv() => match batch {
                Some(batch) => {
                    for mut event in batch {
                        resolve_tc_interface(&programs, &mut event);
                        correlator.push(event);
                    }
                }
                None => break,
            },
            _ = tick.tick() => {
                // Events already read but not yet handed over come first, and packets are only
                // declared complete up to the time the reader last found the ring empty: a
                // reader running late must not cut a packet's path in two.
                while let Ok(batch) = batch_rx.try_recv() {
                    for mut event in batch {
                        resolve_tc_interface(&programs, &mut event);
                        correlator.push(event);
                    }
                }
                let horizon = reader_stats.drained_at.load(Ordering::Acquire);
                correlator.tick(monotonic_ns().min(horizon));
            }
            _ = refresh.tick(), if !stopping => {
                if let Err(err) = follower.refresh().await {
                    log::warn!("failed to read the topology: {err:#}");
                }
                // Names first, so that packets of a new namespace are named once it is followed.
                let mut fresh = follower.names();
                fresh.keep_kernel_names(&names);
                names = fresh;
                let applied = follower.apply(&mut programs);
                for message in applied.failures {
                    eprintln!("tracer: warning: {message}");
                }
                if !applied.attached.is_empty() {
                    eprintln!("tracer: following {}", applied.attached.join(", "));
                }
                for cleaned in programs.tc_cleaned() {
                    eprintln!("tracer: note: {cleaned}");
                }
            }
            _ = status.tick(), if live => {
                let (emitted, lost) = programs.counters().map_or((0, 0), |counters| {
                    counters.values().fold((0, 0), |(e, l), c| (e + c.emitted, l + c.lost))
                });
                let (open_packets, open_flows) = correlator.sizes();
                eprint!(
                    "\r\x1b[Ktracer: {emitted} events, {lost} lost; {} packets shown; {open_packets} packets and {open_flows} flows open",
                    stats.packets
                );
            }
            _ = sigint.recv(), if !stopping => stopping = true,
            _ = sigterm.recv(), if !stopping => stopping = true,
            _ = sleep_until(deadline), if !stopping => stopping = true,
        }
        if sink.write_ready(&mut correlator, &mut names, &mut stats)? {
            stopping = true;
        }
        if stopping {
            // The reader drains the ring once more and closes the channel.
            stop_tx.send_replace(true);
        }
    }
    if live {
        eprint!("\r\x1b[K");
    }
    reader.await.context("ring buffer reader failed")??;
    correlator.finish();
    sink.write_ready(&mut correlator, &mut names, &mut stats)?;

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
    // Like tcpdump's closing line: on stderr too, so it is seen whatever stdout is.
    eprintln!(
        "tracer: {} events, {} lost, {} malformed; {} packets in {} flows",
        stats.events, stats.lost, stats.malformed, stats.packets, stats.flows
    );
    drop(programs);
    Ok(())
}

/// Tells scripts that every hook is attached: a line on stderr and, if asked, a file.
fn announce_ready(programs: &Programs, args: &TraceArgs) -> anyhow::Result<()> {
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
        parts.push(format!("{} {mechanism} on {tc} interfaces", tc * 2));
    }
    eprintln!(
        "tracer: ready: {} hooks attached ({}){}",
        stack + tc * 2,
        parts.join(", "),
        args.expression()
            .map(|e| format!(", filter '{e}'"))
            .unwrap_or_default(),
    );
    if let Some(path) = &args.ready_file {
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
