//! Output formats: text for people, JSON Lines for programs.
//!
//! Both render the correlator's [`Record`](crate::correlate::Record)s, naming namespaces and
//! containers through a [`NameTable`](crate::names::NameTable).

pub mod json;
pub mod pcapng;
pub mod sink;
pub mod text;
pub mod topology;

use std::{fmt::Write as _, fs::File, os::unix::fs::OpenOptionsExt, path::Path};

use anyhow::Context as _;

use crate::decode::Tuple;

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

impl std::fmt::Display for TcpFlags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Bit order FIN, SYN, RST, PSH, ACK, URG, ECE, CWR, as in tcpdump's print-tcp.c.
        const LETTERS: [char; 8] = ['F', 'S', 'R', 'P', '.', 'U', 'E', 'W'];
        if self.0 == 0 {
            return f.write_str("none");
        }
        for (bit, letter) in LETTERS.iter().enumerate() {
            if self.0 & (1 << bit) != 0 {
                f.write_char(*letter)?;
            }
        }
        Ok(())
    }
}

impl serde::Serialize for TcpFlags {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A kernel address, serialized as `0x...` without allocating.
#[derive(Debug, Clone, Copy)]
pub struct Hex(pub u64);

impl serde::Serialize for Hex {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{:#x}", self.0))
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
        assert_eq!(tcp_flags(0x02), "S");
        assert_eq!(tcp_flags(0x12), "S.");
        assert_eq!(tcp_flags(0x10), ".");
        assert_eq!(tcp_flags(0x18), "P.");
        assert_eq!(tcp_flags(0x11), "F.");
        assert_eq!(tcp_flags(0x04), "R");
        assert_eq!(tcp_flags(0x14), "R.");
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
