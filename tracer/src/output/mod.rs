//! Output formats: text for people, JSON Lines for programs, pcapng for Wireshark.
//!
//! Every format implements [`Output`]: it renders the correlator's [`Record`]s, naming
//! namespaces and containers through a [`NameTable`], and is made by the one factory, [`open`].
//! Which records are shown (the selection, `-c`) is decided before they get here.
//!
//! Adding a format: a module with a writer that implements [`Output`], a [`Format`] value, and
//! its arm in [`open`].

pub mod html;
pub mod json;
pub mod pcapng;
pub mod text;
pub mod topology;

use std::{
    fmt::Write as _,
    fs::File,
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::Path,
};

use anyhow::Context as _;
use tracer_common::wire::tcp;

use crate::{
    correlate::{PacketProcess, Record},
    decode::Tuple,
    names::NameTable,
};

/// Where a trace's records go.
pub trait Output {
    /// Writes one record.
    fn record(&mut self, record: &Record, names: &NameTable) -> io::Result<()>;
    /// Writes the closing statistics and flushes (formats with no place for them only flush).
    fn stats(&mut self, stats: &RunStats) -> io::Result<()>;
    /// Pushes what is buffered to the destination.
    fn flush(&mut self) -> io::Result<()>;
}

/// The output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// For people: a block per packet, a latency table per flow.
    Text,
    /// JSON Lines, the contract in the README.
    Json,
    /// pcapng: a packet record per hop, for Wireshark.
    Pcapng,
}

/// What formats need to know besides their destination.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC, to print wall-clock times for kernel timestamps.
    pub realtime_offset_ns: i128,
    /// Bytes captured per hop (pcapng's interface snap length).
    pub snap_len: u32,
}

/// `pid 1234 (wget) in shop/web, container httpd`: the process behind a packet, for text and
/// pcapng comments.
pub fn process_text(owner: &PacketProcess, names: &NameTable) -> String {
    let process = &owner.process;
    let mut text = format!("pid {} ({})", process.pid, process.comm);
    if let Some(workload) = names.process_workload(process, owner.netns_inode) {
        let _ = write!(text, " in {}", workload.name());
        if workload.pod.is_some()
            && let Some(container) = workload.container()
        {
            let _ = write!(text, ", container {container}");
        }
    }
    text
}

/// Makes the writer of `format` on `out`.
pub fn open<'a>(
    format: Format,
    out: impl Write + 'a,
    options: &Options,
) -> anyhow::Result<Box<dyn Output + 'a>> {
    Ok(match format {
        Format::Text => Box::new(text::TextWriter::new(out, options.realtime_offset_ns)),
        Format::Json => Box::new(json::JsonWriter::new(out)),
        Format::Pcapng => Box::new(pcapng::PcapngWriter::new(
            out,
            options.snap_len,
            options.realtime_offset_ns,
        )?),
    })
}

/// Creates an output file readable by its owner only, refusing to follow a symlink at `path`
/// (an attacker's link must not redirect root's output).
pub fn create_private(path: &Path) -> anyhow::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// TCP flags spelled as tcpdump prints them: `S`, `S.`, `.`, `P.`, `F.`, `R`, ... and `none`.
pub fn tcp_flags(flags: u8) -> String {
    TcpFlags(flags).to_string()
}

/// TCP flags that format themselves like tcpdump, without allocating.
#[derive(Debug, Clone, Copy)]
pub struct TcpFlags(pub u8);

/// Each flag and its letter, in the order of tcpdump's print-tcp.c.
const FLAG_LETTERS: [(u8, u8); 8] = [
    (tcp::FIN, b'F'),
    (tcp::SYN, b'S'),
    (tcp::RST, b'R'),
    (tcp::PSH, b'P'),
    (tcp::ACK, b'.'),
    (tcp::URG, b'U'),
    (tcp::ECE, b'E'),
    (tcp::CWR, b'W'),
];

impl TcpFlags {
    /// Appends the letters (or `none`) to `out`.
    pub fn write_to(self, out: &mut Vec<u8>) {
        if self.0 == 0 {
            out.extend_from_slice(b"none");
            return;
        }
        for (bit, letter) in FLAG_LETTERS {
            if self.0 & bit != 0 {
                out.push(letter);
            }
        }
    }
}

impl std::fmt::Display for TcpFlags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0 == 0 {
            return f.write_str("none");
        }
        for (bit, letter) in FLAG_LETTERS {
            if self.0 & bit != 0 {
                f.write_char(char::from(letter))?;
            }
        }
        Ok(())
    }
}

/// `addr:port > addr:port`, with IPv6 addresses in brackets.
pub fn tuple(t: &Tuple) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "{} > {}",
        endpoint(t.src, t.src_port),
        endpoint(t.dst, t.dst_port)
    );
    s
}

/// An encapsulation as text outputs show it: `vxlan vni 1 198.18.50.1:41234 > 198.18.50.2:8472`,
/// `gre key 7 198.18.50.1 > 198.18.50.2`, `ipip 198.18.50.1 > 198.18.50.2`.
pub fn encap_text(encap: &crate::decode::Encap) -> String {
    let id = match encap.id {
        Some(id) if encap.kind.has_vni() => format!(" vni {id}"),
        Some(key) => format!(" key {key}"),
        None => String::new(),
    };
    format!("{}{id} {}", encap.kind.name(), tuple(&encap.outer))
}

/// An ICMP error as text outputs show it: `fragmentation needed (mtu 1450) for udp
/// 10.244.1.2:46522 > 10.244.2.2:10003`.
pub fn icmp_text(error: &crate::decode::IcmpError) -> String {
    format!(
        "{} for {} {}",
        error.describe(),
        error.quoted.proto.name(),
        tuple(&error.quoted)
    )
}

/// `addr:port`, with an IPv6 address in brackets; the bare address when there is no port.
pub fn endpoint(addr: std::net::IpAddr, port: u16) -> String {
    match (addr, port) {
        (addr, 0) => addr.to_string(),
        (std::net::IpAddr::V6(v6), port) => format!("[{v6}]:{port}"),
        (addr, port) => format!("{addr}:{port}"),
    }
}

/// A duration in the unit that reads best: `850ns`, `12.3us`, `4.56ms`, `1.20s`.
pub fn duration(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns}ns"),
        1_000..1_000_000 => format!("{:.1}us", ns as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.2}ms", ns as f64 / 1e6),
        _ => format!("{:.2}s", ns as f64 / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_like_tcpdump() {
        assert_eq!(tcp_flags(tcp::SYN), "S");
        assert_eq!(tcp_flags(tcp::SYN | tcp::ACK), "S.");
        assert_eq!(tcp_flags(tcp::ACK), ".");
        assert_eq!(tcp_flags(tcp::PSH | tcp::ACK), "P.");
        assert_eq!(tcp_flags(tcp::FIN | tcp::ACK), "F.");
        assert_eq!(tcp_flags(tcp::RST), "R");
        assert_eq!(tcp_flags(tcp::RST | tcp::ACK), "R.");
        assert_eq!(tcp_flags(0xc0), "EW");
        assert_eq!(tcp_flags(0), "none");
    }

    #[test]
    fn durations_pick_a_unit() {
        assert_eq!(duration(850), "850ns");
        assert_eq!(duration(12_345), "12.3us");
        assert_eq!(duration(4_560_000), "4.56ms");
        assert_eq!(duration(1_200_000_000), "1.20s");
    }
}

/// Totals reported when tracing ends.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RunStats {
    /// Events read from the ring buffer.
    pub events: u64,
    /// Events the kernel could not write because the ring buffer was full.
    pub lost: u64,
    /// Records that failed to decode.
    pub malformed: u64,
    /// Packets seen by the programs but not matching the filter (counted per hook).
    pub filtered: u64,
    /// Packet traces reported.
    pub packets: u64,
    /// Flows reported.
    pub flows: u64,
    /// Per-hook kernel counters.
    pub hooks: Vec<HookStats>,
    /// The verdicts of the flows reported, in order (for `tracer probe`'s exit code).
    #[serde(skip)]
    pub verdicts: Vec<crate::correlate::verdict::Kind>,
}

/// Kernel counters of one hook.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct HookStats {
    pub hook: String,
    pub seen: u64,
    pub filtered: u64,
    pub emitted: u64,
    pub lost: u64,
}
