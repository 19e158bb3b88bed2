//! Command line.

use std::{path::PathBuf, time::Duration};

use clap::{Parser, ValueEnum};

/// Follow packets hop by hop through container networking: from a container's eth0 through
/// its veth pair, the bridge, NAT and the host's uplink, and the replies back.
#[derive(Debug, Parser)]
#[command(name = "tracer", version, about, max_term_width = 100)]
pub struct Cli {
    /// Trace packets with this TCP/UDP/SCTP port as source or destination, on either side of
    /// a NAT.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,

    /// Also attach TC programs to this interface (repeatable); it is looked up in the
    /// namespace given by --netns, or in tracer's own.
    #[arg(short = 'i', long = "interface", value_name = "IFACE")]
    pub interfaces: Vec<String>,

    /// Named network namespace (`ip netns`) of the interfaces given with -i.
    #[arg(long, value_name = "NAME", requires = "interfaces")]
    pub netns: Option<String>,

    /// Exit after N packets have been traced.
    #[arg(short = 'c', long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,

    /// Stop after this long (e.g. `10s`, `500ms`, `2m`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,

    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Text)]
    pub output: Format,

    /// Ring buffer size in bytes: a power of two, at least 4096.
    #[arg(long, value_name = "BYTES", default_value_t = 4 << 20)]
    pub ring_size: u32,

    /// A packet is complete when no hop has joined it for this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "100ms")]
    pub packet_timeout: Duration,

    /// Also copy the raw kernel events to this file, for replay and bug reports.
    #[arg(long, value_name = "PATH")]
    pub record: Option<PathBuf>,

    /// Create this file once every hook is attached (for scripts and tests).
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Packets as indented hop lists, flows as latency tables.
    Text,
    /// JSON Lines: hop, nat, flow and stats objects (see the README).
    Json,
}
