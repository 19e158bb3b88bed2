//! Collector throughput and memory without the kernel: a generated event stream (100k flows,
//! each a masqueraded SYN and its SYN-ACK, 10 hops) replayed with `tracer replay`, pinned to
//! one core, JSON to /dev/null. Peak RSS is the process's own high-water mark, reached while it
//! holds all the flows (none ends before the stream does).

use std::{
    fmt::Write as _,
    io::{BufWriter, Write},
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::bail;
use serde_json::{Value, json};
use tracer_common::{
    event::{FAMILY_IPV4, FLAG_L4, PacketEvent},
    hook::Hook,
};

pub struct Results {
    pub flows: u64,
    pub events: u64,
    pub seconds: f64,
    pub events_per_second: f64,
    pub peak_rss_mib: f64,
}

pub fn run(binary: &Path, quick: bool) -> anyhow::Result<Results> {
    let flows = if quick { 10_000 } else { 100_000 };
    let path = std::env::temp_dir().join(format!("tracer-bench-{}.events", std::process::id()));
    let events = generate(&path, flows)?;
    let mut child = Command::new("taskset")
        .args(["-c", "0"])
        .arg(binary)
        .args(["replay", "--output", "json"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let start = Instant::now();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own child, and both out-pointers are to live locals.
    let rc = unsafe { libc::wait4(pid, &raw mut status, 0, &raw mut usage) };
    let seconds = start.elapsed().as_secs_f64();
    let _ = child.try_wait();
    std::fs::remove_file(&path)?;
    if rc != pid || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("tracer replay failed (status {status})");
    }
    Ok(Results {
        flows,
        events,
        seconds,
        events_per_second: events as f64 / seconds,
        peak_rss_mib: usage.ru_maxrss as f64 / 1024.0,
    })
}

/// Writes a recording of `flows` masqueraded handshakes; returns the number of events.
fn generate(path: &Path, flows: u64) -> anyhow::Result<u64> {
    let mut out = BufWriter::new(std::fs::File::create(path)?);
    let mut events = 0;
    let hooks = [
        (Hook::NetDevQueue, 1u32),
        (Hook::NetifRx, 2),
        (Hook::NetifReceiveSkb, 2),
        (Hook::NetDevQueue, 3),
        (Hook::NetifReceiveSkb, 4),
    ];
    for flow in 0..flows {
        let client = [10, (flow >> 16) as u8, (flow >> 8) as u8, flow as u8];
        let port = 1024 + (flow % 60_000) as u16;
        for (direction, flags) in [(0, 0x02u8), (1, 0x12)] {
            let skb = 0xffff_8880_0000_0000 + flow * 0x1000 + direction * 0x800;
            for (hop, (hook, netns)) in hooks.iter().enumerate() {
                let mut e = PacketEvent::zeroed();
                e.hook = *hook as u8;
                e.family = FAMILY_IPV4;
                e.l4_proto = 6;
                e.flags = FLAG_L4;
                e.tcp_flags = flags;
                e.ts_ns = 1_000_000_000 + flow * 100_000 + direction * 50_000 + hop as u64 * 2_000;
                e.skb = skb;
                e.skb_head = skb + 0x100;
                e.ifindex = *netns;
                e.netns_inode = 4_026_531_000 + netns;
                e.ifname[..4].copy_from_slice(b"eth0");
                e.len = 60;
                e.ip_len = 60;
                e.ip_id = flow as u16;
                e.tcp_seq = flow as u32 + direction as u32 * 7;
                // Masqueraded after the third hop on the way out, before it on the way back.
                let translated = (direction == 0) == (hop >= 3);
                let (mine, mine_port) = if translated {
                    ([198, 18, 0, 2], port)
                } else {
                    (client, port)
                };
                let server = [198, 19, 0, 252];
                let (src, src_port, dst, dst_port) = if direction == 0 {
                    (mine, mine_port, server, 10001)
                } else {
                    (server, 10001, mine, mine_port)
                };
                e.src_addr[..4].copy_from_slice(&src);
                e.dst_addr[..4].copy_from_slice(&dst);
                e.src_port = src_port;
                e.dst_port = dst_port;
                write_record(&mut out, &e)?;
                events += 1;
            }
        }
    }
    out.flush()?;
    Ok(events)
}

/// One record as the kernel writes it, in the `--record` format (length, bytes).
fn write_record(out: &mut impl Write, event: &PacketEvent) -> std::io::Result<()> {
    // SAFETY: PacketEvent is repr(C) plain data with explicit padding fields.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            std::ptr::from_ref(event).cast::<u8>(),
            size_of::<PacketEvent>(),
        )
    };
    out.write_all(&(bytes.len() as u32).to_le_bytes())?;
    out.write_all(bytes)
}

impl Results {
    pub fn markdown(&self) -> String {
        let mut md = String::from(
            "## Collector\n\n`taskset -c 0 tracer replay` of a generated stream, decode + correlate + JSON to /dev/null.\n\n| Flows | Events | Seconds | Events/s | Peak RSS |\n|---|---|---|---|---|\n",
        );
        let _ = writeln!(
            md,
            "| {} | {} | {:.2} | {:.0} | {:.1} MiB |\n",
            self.flows, self.events, self.seconds, self.events_per_second, self.peak_rss_mib
        );
        md
    }

    pub fn json(&self) -> Value {
        json!({"flows": self.flows, "events": self.events, "seconds": self.seconds,
               "events_per_second": self.events_per_second, "peak_rss_mib": self.peak_rss_mib})
    }
}
