//! Loss under load, and the live collector's speed: UDP datagrams from a container to the
//! remote at increasing rates, every one matching the filter, default hooks and ring size,
//! JSON to /dev/null. The highest rate with no lost event is what tracer follows in full.
//!
//! At each rate the collector's CPU time while the datagrams flow (utime + stime of the
//! tracer process, from /proc) gives the events it handles per second of one CPU: ring buffer
//! to JSON, the live path.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::Context;
use serde_json::{Value, json};
use tracer_tests::{
    testbed::{SERVER_ADDR, Testbed},
    tracer::Tracer,
    traffic,
};

use super::tools::lost_from;

const PORT: u16 = 10095;

/// One rate.
pub struct Rate {
    offered: u64,
    achieved: f64,
    events: u64,
    lost: u64,
    /// Collector CPU seconds while the datagrams flowed.
    cpu_seconds: f64,
    seconds: f64,
}

impl Rate {
    /// Events the collector handled per second of CPU.
    fn events_per_cpu_second(&self) -> f64 {
        self.events as f64 / self.cpu_seconds.max(1e-3)
    }
}

pub struct Results {
    rates: Vec<Rate>,
    /// Datagrams per second the senders reach with nothing attached.
    ceiling: f64,
}

pub fn run(quick: bool) -> anyhow::Result<Results> {
    let rates: &[u64] = if quick {
        &[5_000]
    } else {
        &[
            10_000, 25_000, 50_000, 100_000, 150_000, 200_000, 250_000, 300_000, 400_000,
        ]
    };
    let seconds = if quick { 0.5 } else { 3.0 };
    let testbed = Testbed::up(1)?;
    let ctr = &testbed.containers[0];
    let server = SocketAddr::from((SERVER_ADDR, PORT));
    let receiver = traffic::udp_bind(&testbed.remote, server)?;
    receiver.set_read_timeout(Some(Duration::from_millis(20)))?;
    let senders = (0..SENDERS)
        .map(|_| {
            let sender = traffic::udp_bind(&ctr.netns, SocketAddr::from((ctr.addr, 0)))?;
            sender.connect(server)?;
            sender.send(b"warm-up")?;
            Ok(sender)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // What the path carries with nothing attached: the senders' ceiling on this machine.
    let ceiling = offer(&senders, &receiver, None, seconds)?;
    let mut results = Vec::new();
    for &rate in rates {
        let tracer = Tracer::start_with_stdout(
            &["--port", &PORT.to_string(), "--output", "json"],
            Stdio::null(),
        )?;
        let pid = tracer.pid();
        let cpu_before = cpu_seconds(pid)?;
        let offered = offer(&senders, &receiver, Some(rate), seconds)?;
        // What is still in the ring is read within a few milliseconds of the last datagram.
        std::thread::sleep(Duration::from_millis(100));
        let cpu = cpu_seconds(pid)? - cpu_before;
        let finished = tracer.stop()?;
        results.push(Rate {
            offered: rate,
            achieved: offered.sent as f64 / offered.seconds,
            events: events_from(&finished.stderr)?,
            lost: lost_from(&finished.stderr),
            cpu_seconds: cpu,
            seconds: offered.seconds,
        });
    }
    Ok(Results {
        rates: results,
        ceiling: ceiling.sent as f64 / ceiling.seconds,
    })
}

/// Sending sockets, one thread each: one process's `sendto` runs the whole path (the veth
/// pair, the bridge, NAT, the uplink and the receiving socket) on its own CPU, which on this
/// machine stops near 125k datagrams/s; two threads with batched sends go beyond 200k.
const SENDERS: usize = 2;
/// Datagrams per `sendmmsg` call.
const BATCH: usize = 64;

/// What one offer sent.
struct Offered {
    sent: u64,
    seconds: f64,
}

/// Sends 32-byte datagrams from every sender for `seconds`, together `rate` per second in 1 ms
/// steps (as fast as they go with `None`), while a thread of its own drains the receiver.
fn offer(
    senders: &[std::net::UdpSocket],
    receiver: &std::net::UdpSocket,
    rate: Option<u64>,
    seconds: f64,
) -> anyhow::Result<Offered> {
    let done = std::sync::atomic::AtomicBool::new(false);
    let start = Instant::now();
    let sent = std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut drain = [0u8; 64];
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = receiver.recv(&mut drain);
            }
        });
        let threads: Vec<_> = senders
            .iter()
            .map(|sender| {
                let share = rate.map(|rate| rate as f64 / senders.len() as f64);
                scope.spawn(move || send_for(sender, share, start, seconds))
            })
            .collect();
        let sent = threads
            .into_iter()
            .map(|thread| thread.join().expect("a sender thread panicked"))
            .sum::<anyhow::Result<u64>>();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        sent
    })?;
    Ok(Offered {
        sent,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// One sender's part of [`offer`]: `rate` datagrams per second (or as many as it can) until
/// `seconds` after `start`, in batches of up to [`BATCH`].
fn send_for(
    sender: &std::net::UdpSocket,
    rate: Option<f64>,
    start: Instant,
    seconds: f64,
) -> anyhow::Result<u64> {
    use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrIn, sendmmsg};
    use std::{io::IoSlice, os::fd::AsRawFd};

    let payload = [0u8; 32];
    let slices = [[IoSlice::new(&payload)]; BATCH];
    let addrs = [None::<SockaddrIn>; BATCH];
    let mut headers = MultiHeaders::<SockaddrIn>::preallocate(BATCH, None);
    let mut sent = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        let due = rate.map_or(sent + BATCH as u64, |rate| {
            (start.elapsed().as_secs_f64() * rate) as u64
        });
        while sent < due {
            let batch = (due - sent).min(BATCH as u64) as usize;
            match sendmmsg(
                sender.as_raw_fd(),
                &mut headers,
                &slices[..batch],
                &addrs[..batch],
                [],
                MsgFlags::empty(),
            ) {
                Ok(results) => sent += results.count() as u64,
                // The socket's send buffer is full for a moment: try again.
                Err(nix::errno::Errno::ENOBUFS | nix::errno::Errno::EAGAIN) => {}
                Err(err) => return Err(err).context("sendmmsg"),
            }
        }
        if rate.is_some() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Ok(sent)
}

/// utime + stime of process `pid`, in seconds.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').context("malformed /proc/PID/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Ok(ticks as f64 / hz as f64)
}

/// Events read, from tracer's closing line (`tracer: N events, ...`).
fn events_from(stderr: &str) -> anyhow::Result<u64> {
    stderr
        .lines()
        .rev()
        .find_map(|line| {
            let rest = line.strip_prefix("tracer: ")?;
            rest.split_once(" events, ")?.0.parse().ok()
        })
        .context("tracer printed no closing line")
}

impl Results {
    /// Datagrams per second the senders reach with nothing attached.
    pub fn ceiling(&self) -> f64 {
        self.ceiling
    }

    pub fn max_without_loss(&self) -> Option<f64> {
        self.rates
            .iter()
            .filter(|r| r.lost == 0)
            .map(|r| r.achieved)
            .reduce(f64::max)
    }

    /// Events per CPU-second at the busiest rate the collector kept up with (no loss), or at
    /// the busiest rate when it kept up with none.
    pub fn live_events_per_cpu_second(&self) -> Option<f64> {
        let busiest = |rates: &mut dyn Iterator<Item = &Rate>| {
            rates
                .max_by(|a, b| a.events.cmp(&b.events))
                .map(Rate::events_per_cpu_second)
        };
        busiest(&mut self.rates.iter().filter(|r| r.lost == 0))
            .or_else(|| busiest(&mut self.rates.iter()))
    }

    pub fn markdown(&self) -> String {
        let mut md = String::from(
            "## Loss under load and the live collector\n\nUDP from a container to the remote (32-byte datagrams from two sockets, one thread each, sent with `sendmmsg` in batches of up to 64, in 1 ms steps), every datagram matching, default hooks, default 4 MiB ring, JSON to /dev/null. Collector CPU is tracer's utime + stime while the datagrams flow (one thread: reader, correlator and writer).\n\n| Offered pps | Achieved pps | Events | Events lost | Collector CPU | Events per CPU-second |\n|---|---|---|---|---|---|\n",
        );
        for r in &self.rates {
            let _ = writeln!(
                md,
                "| {} | {:.0} | {} | {} | {:.0}% | {:.0} |",
                r.offered,
                r.achieved,
                r.events,
                r.lost,
                r.cpu_seconds / r.seconds * 100.0,
                r.events_per_cpu_second()
            );
        }
        let _ = writeln!(
            md,
            "\nThe senders' ceiling with nothing attached: {:.0} datagrams/s.",
            self.ceiling
        );
        let _ = writeln!(
            md,
            "\nHighest rate with no lost event: {}.\n",
            self.max_without_loss()
                .map_or("none of those tried".to_owned(), |pps| format!(
                    "{pps:.0} packets/s"
                ))
        );
        md
    }

    pub fn json(&self) -> Value {
        json!({
            "rates": self.rates.iter().map(|r| json!({
                "offered_pps": r.offered, "achieved_pps": r.achieved, "events": r.events,
                "lost": r.lost, "cpu_seconds": r.cpu_seconds, "seconds": r.seconds,
                "events_per_cpu_second": r.events_per_cpu_second(),
            })).collect::<Vec<_>>(),
            "max_pps_without_loss": self.max_without_loss(),
            "ceiling_pps": self.ceiling,
            "live_events_per_cpu_second": self.live_events_per_cpu_second(),
        })
    }
}
