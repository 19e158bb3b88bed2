//! Command line: clap's view of the options, turned into the plain options of the layers
//! below (`From` conversions at the end). Nothing below this module knows about clap.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use tracer_common::event::SNAP_MAX;

use crate::{
    kernel::{hooks::HookSet, tc::TcMode},
    merge,
    output::{self, html},
    report,
    rules::Detail,
    session::{
        live,
        select::{ProcessFilter, Selection},
    },
};

/// Follow packets hop by hop through container networking: from a container's eth0 through
/// its veth pair, the bridge, NAT and the host's uplink, and the replies back.
#[derive(Debug, Parser)]
#[command(
    name = "tracer",
    version,
    about,
    max_term_width = 100,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub trace: TraceArgs,
}

/// The commands that never load programs into the kernel.
const WITHOUT_PROGRAMS: [&str; 4] = ["topology", "replay", "merge", "report"];

/// Whether the command line (`args`, the program's name first) is for a command that loads
/// programs, judged before it is parsed, so that [`crate::kernel::prepare_loader`] can run
/// while the process is smallest: every command except those named first in
/// [`WITHOUT_PROGRAMS`]. A wrong guess costs a moment's memory or a parse that is not needed
/// (the loader is made when programs are loaded if it was not made here), never a wrong result.
pub fn may_load_programs(mut args: impl Iterator<Item = std::ffi::OsString>) -> bool {
    args.nth(1)
        .is_none_or(|first| !WITHOUT_PROGRAMS.iter().any(|name| first == *name))
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show every container and namespace with its interfaces, veth peers, bridges and
    /// addresses.
    Topology {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Text)]
        output: Format,
    },
    /// Show which hooks this kernel offers, which tracer would use, and why.
    Doctor,
    /// Run continuously and serve per-hop latency, path latency, drops and NAT as Prometheus
    /// metrics at http://ADDR/metrics (readiness at /ready).
    Monitor(MonitorArgs),
    /// Decode, correlate and print events recorded with --record, without the kernel.
    Replay {
        /// The recording.
        file: PathBuf,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Text)]
        output: Format,
        /// Most flows tracked at once, as for a trace.
        #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_FLOWS,
              value_parser = clap::value_parser!(u64).range(1..))]
        max_flows: u64,
    },
    /// Merge the traces of several nodes into one.
    ///
    /// Takes what each node's tracer wrote (a --record file or -o json output, one per node)
    /// and prints one trace in which a packet that crossed nodes is one packet, its hops in
    /// order, every node's clock corrected by an offset estimated from the packets themselves.
    Merge(MergeArgs),
    /// Answer "why can't this container reach HOST:PORT": open one connection (or send one
    /// datagram with --udp) from inside the container, pod or namespace, trace it, and print
    /// its path and its verdict. This is the one tracer command that sends a packet itself.
    /// Exit code 0 when the far end answered, 1 when not, 2 for a usage error.
    Probe(ProbeArgs),
    /// Write an HTML report of traces: the path of each flow drawn hop by hop with its
    /// latencies, NAT and drops, its packets over time, and a list of every flow to filter and
    /// sort. One self-contained file that makes no request; open it in any browser.
    Report(ReportArgs),
}

/// Options of `tracer report`.
#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// What tracer wrote: a --record file or -o json output; several (one per node, named
    /// NAME=FILE as for `tracer merge`) are merged into one trace first.
    #[arg(value_name = "[NAME=]FILE", required = true)]
    pub inputs: Vec<String>,

    /// The report's file.
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: PathBuf,

    /// Most flows whose packets and hops the report keeps (the failed and the slowest first);
    /// every flow has a row and a path whatever this is.
    #[arg(long, value_name = "N", default_value_t = html::DETAIL_LIMIT as u64)]
    pub detail: u64,

    /// For several nodes: the node whose clock the trace is on (default: the first).
    #[arg(long, value_name = "NAME")]
    pub reference: Option<String>,
}

impl From<ReportArgs> for report::Options {
    fn from(args: ReportArgs) -> Self {
        report::Options {
            inputs: args
                .inputs
                .iter()
                .map(|arg| merge::Input::parse(arg))
                .collect(),
            output: args.output,
            detail: args.detail as usize,
            reference: args.reference,
        }
    }
}

/// Options of `tracer probe`.
#[derive(Debug, Clone, Args)]
pub struct ProbeArgs {
    /// Where to connect: an IPv4 or IPv6 address and a port (`[fd00::1]:80` for IPv6).
    #[arg(value_name = "HOST:PORT")]
    pub target: String,

    /// Probe from this container's network namespace (Docker, Podman or containerd name, or
    /// an id prefix).
    #[arg(long, value_name = "NAME", conflicts_with_all = ["pod", "netns"])]
    pub container: Option<String>,

    /// Probe from this pod's network namespace (`namespace/name`, or a Podman pod's name).
    #[arg(long, value_name = "NS/NAME", conflicts_with = "netns")]
    pub pod: Option<String>,

    /// Probe from this named network namespace (`ip netns`). Without any of the three, from
    /// tracer's own.
    #[arg(long, value_name = "NAME")]
    pub netns: Option<String>,

    /// Send one UDP datagram (and wait for a reply) instead of opening a TCP connection.
    #[arg(long)]
    pub udp: bool,

    /// With --udp: the datagram's payload in bytes, sent with DF set (path MTU discovery on),
    /// to find where a packet of that size is refused.
    #[arg(long, value_name = "BYTES", requires = "udp", value_parser = clap::value_parser!(u16).range(1..=65507))]
    pub size: Option<u16>,

    /// How long to wait for the connection or a reply.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// Also name the netfilter rule behind each NAT and drop.
    #[arg(long)]
    pub rules: bool,

    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Text)]
    pub output: Format,

    /// Read structure layouts from this BTF file instead of /sys/kernel/btf/vmlinux.
    #[arg(long, value_name = "FILE")]
    pub kernel_btf: Option<PathBuf>,
}

/// Options of `tracer merge`.
#[derive(Debug, Clone, Args)]
pub struct MergeArgs {
    /// One trace per node, at least two: a --record file or -o json output. The node is
    /// named after the file (its name without extension), or NAME as given.
    #[arg(value_name = "[NAME=]FILE")]
    pub inputs: Vec<String>,

    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Text)]
    pub output: Format,

    /// The node whose clock the merged trace is on (default: the first).
    #[arg(long, value_name = "NAME")]
    pub reference: Option<String>,
}

impl From<MergeArgs> for merge::Options {
    fn from(args: MergeArgs) -> Self {
        merge::Options {
            inputs: args
                .inputs
                .iter()
                .map(|arg| merge::Input::parse(arg))
                .collect(),
            format: args.output.into(),
            reference: args.reference,
        }
    }
}

/// Options of `tracer monitor`.
#[derive(Debug, Clone, Args)]
pub struct MonitorArgs {
    /// Where to serve the metrics (`/metrics`), readiness (`/ready`) and liveness (`/healthz`).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:9477")]
    pub metrics: std::net::SocketAddr,

    /// TLS, basic authentication and headers for the endpoint, from a web configuration file
    /// in the format of Prometheus' exporters (node_exporter's `--web.config.file`); read
    /// again when it changes. See "Securing the endpoint" in the README.
    #[arg(long, value_name = "FILE")]
    pub web_config: Option<PathBuf>,

    /// Keep one connection in N, chosen in the kernel by a hash of the connection, so that a
    /// connection is kept or skipped whole (1 keeps every one).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_SAMPLE,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub sample: u32,

    /// Most label sets across the labelled metrics; beyond it observations go to one
    /// `_overflow` series per metric.
    #[arg(long, value_name = "N", default_value_t = 5000)]
    pub max_series: usize,

    /// Remove a label set's series once it has had no observation for this long (a pod that
    /// went away, say), which gives its room back to --max-series; 0 keeps series for ever.
    #[arg(long, value_name = "DURATION", default_value = "15m",
          value_parser = humantime::parse_duration)]
    pub series_ttl: Duration,

    /// Name places by interface and namespace (`eth0@web:net_dev_queue`) instead of by role
    /// (`container:net_dev_queue`, `host_veth:...`, `bridge:...`, `overlay:...`, `uplink:...`):
    /// one series per veth, so many more series.
    #[arg(long)]
    pub per_interface: bool,

    /// Which hooks to use, as for a trace.
    #[arg(
        long,
        value_name = "HOOKS",
        default_value = "default",
        value_parser = parse_hooks,
        allow_hyphen_values = true
    )]
    pub hooks: HookSet,

    /// Ring buffer size in bytes: a power of two, at least 4096.
    #[arg(long, value_name = "BYTES", default_value_t = 4 << 20)]
    pub ring_size: u32,

    /// Most flows tracked at once.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_FLOWS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_flows: u64,

    /// Stop after this long (runs until SIGTERM or Ctrl-C otherwise).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,

    /// Read kernel structure layouts from this BTF file instead of /sys/kernel/btf/vmlinux.
    #[arg(long, value_name = "FILE")]
    pub kernel_btf: Option<PathBuf>,

    /// Create this file once every hook is attached.
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,

    /// A tcpdump filter expression: only connections it matches are measured.
    #[arg(value_name = "EXPRESSION", trailing_var_arg = true)]
    pub filter: Vec<String>,
}

/// The default of `tracer monitor --sample`: one connection in 16. What tracing costs grows
/// with the share of packets that match (`cargo xtask bench`: 0.93x untraced throughput when
/// none matches, 0.59x when all do), so 1 in 16 adds about 2% to the unmatched cost, while a
/// busy node still gives the histograms thousands of packets a minute.
pub const DEFAULT_SAMPLE: u32 = 16;

impl From<MonitorArgs> for live::Options {
    fn from(args: MonitorArgs) -> Self {
        let expression = args.filter.join(" ");
        live::Options {
            expression: (!expression.trim().is_empty()).then_some(expression),
            selection: Selection::default(),
            hooks: args.hooks,
            tc_mode: TcModeArg::Auto.into(),
            count: None,
            duration: args.duration,
            format: output::Format::Text,
            ring_bytes: args.ring_size,
            packet_timeout: Duration::from_millis(100),
            max_flows: args.max_flows as usize,
            pcapng: None,
            snap_len: None,
            kernel_btf: args.kernel_btf,
            record: None,
            html: None,
            ready_file: args.ready_file,
            rules: None,
            sample: args.sample,
            metrics: None,
            until: None,
        }
    }
}

/// The default of `--max-flows`.
const DEFAULT_MAX_FLOWS: u64 = crate::correlate::DEFAULT_MAX_FLOWS as u64;

/// Options of a trace (the default command).
#[derive(Debug, Clone, Args)]
pub struct TraceArgs {
    /// Trace packets with this TCP/UDP/SCTP port as source or destination, on either side of
    /// a NAT.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,

    /// Only this interface (repeatable): only packets that cross it are shown, and with
    /// `--hooks +tc` TC programs go on it. Looked up in the namespace given by --netns, or in
    /// tracer's own.
    #[arg(short = 'i', long = "interface", value_name = "IFACE")]
    pub interfaces: Vec<String>,

    /// Only this container (repeatable): a Docker, Podman or containerd (Kubernetes) container
    /// name, or an id prefix. Only packets that touch its network namespace are shown, and with
    /// `--hooks +tc` its interfaces, their veth peers and bridges get TC programs.
    #[arg(long, value_name = "NAME")]
    pub container: Vec<String>,

    /// Only this pod (repeatable): `namespace/name` of a Kubernetes pod run by containerd, or
    /// a Podman pod's name. Selects as --container does.
    #[arg(long, value_name = "NS/NAME")]
    pub pod: Vec<String>,

    /// Only connections of this process (repeatable): those whose packets come from a socket
    /// the process created while tracer ran, with their replies. Forwarded packets have no
    /// process and are not shown.
    #[arg(long, value_name = "PID")]
    pub pid: Vec<u32>,

    /// Only connections of processes with this command name (repeatable; `comm`, at most 15
    /// characters), as --pid.
    #[arg(long, value_name = "NAME")]
    pub comm: Vec<String>,

    /// Only this named network namespace (`ip netns`, repeatable); with -i, the namespace of
    /// those interfaces.
    #[arg(long, value_name = "NAME")]
    pub netns: Vec<String>,

    /// Which hooks to use, as comma-separated changes to the default set (queue, receive,
    /// drop, nat): `+tc` adds TC programs, `+xmit` and `+rx` the transmit and backlog
    /// tracepoints, `-nat` removes one; `all`, `stack` (all but TC) or a bare list (`queue,drop`)
    /// start over. See the README for what each adds and costs.
    #[arg(
        long,
        value_name = "HOOKS",
        default_value = "default",
        value_parser = parse_hooks,
        allow_hyphen_values = true
    )]
    pub hooks: HookSet,

    /// How TC programs are attached: TCX links where the kernel has them (auto), or filters on
    /// a clsact qdisc (as `tc filter show` lists them).
    #[arg(long, value_enum, default_value_t = TcModeArg::Auto)]
    pub tc_mode: TcModeArg,

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

    /// Most flows tracked at once; beyond it the least recently active end early (their
    /// summary is written then). Each costs a few hundred bytes.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_FLOWS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_flows: u64,

    /// Also write every hop as a packet record to this pcapng file (for Wireshark): one
    /// interface per hop's interface and namespace, flow, packet and latency in comments.
    #[arg(short = 'w', long = "write", value_name = "FILE")]
    pub pcapng: Option<PathBuf>,

    /// Bytes of each packet to capture for -w, from the IP header on, payload included. By
    /// default only the IP and L4 headers are captured, never payload.
    #[arg(short = 's', long = "snaplen", value_name = "BYTES",
          value_parser = clap::value_parser!(u32).range(1..=SNAP_MAX as i64))]
    pub snap_len: Option<u32>,

    /// Read kernel structure layouts from this BTF file instead of /sys/kernel/btf/vmlinux.
    #[arg(long, value_name = "FILE")]
    pub kernel_btf: Option<PathBuf>,

    /// Also write an HTML report of the trace to this file when it ends (see `tracer report`).
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,

    /// Also copy the raw kernel events to this file, for replay and bug reports.
    #[arg(long, value_name = "PATH")]
    pub record: Option<PathBuf>,

    /// Create this file once every hook is attached (for scripts and tests); TC programs, when
    /// asked for, attach after it.
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,

    /// Name the netfilter rule behind each NAT and each drop (nf_tables tracing); `--rules=all`
    /// also shows each packet's whole walk through the chains, every rule that matched with
    /// its verdict. tracer adds a table of its own, `inet tracer-PID`, in each namespace with
    /// rules, marking the filter's packets; the kernel removes it when tracer exits, however
    /// it exits.
    #[arg(long, value_enum, num_args = 0..=1, require_equals = true,
          default_missing_value = "acting", value_name = "WHICH")]
    pub rules: Option<RulesArg>,

    /// A tcpdump filter expression, e.g. `tcp port 10001 and host 172.17.0.2`; it matches a
    /// flow on either side of a NAT. See the README for what is supported.
    #[arg(value_name = "EXPRESSION", trailing_var_arg = true)]
    pub filter: Vec<String>,
}

impl TraceArgs {
    /// The whole filter: `--port` and the expression, joined with `and`.
    pub fn expression(&self) -> Option<String> {
        let expression = self.filter.join(" ");
        match (self.port, expression.trim().is_empty()) {
            (None, true) => None,
            (Some(port), true) => Some(format!("port {port}")),
            (None, false) => Some(expression),
            (Some(port), false) => Some(format!("port {port} and ({expression})")),
        }
    }
}

impl From<TraceArgs> for live::Options {
    fn from(args: TraceArgs) -> Self {
        live::Options {
            expression: args.expression(),
            selection: Selection {
                interfaces: args.interfaces,
                containers: args.container,
                pods: args.pod,
                netns: args.netns,
                processes: ProcessFilter {
                    pids: args.pid,
                    comms: args.comm,
                },
            },
            hooks: args.hooks,
            tc_mode: args.tc_mode.into(),
            count: args.count,
            duration: args.duration,
            format: args.output.into(),
            ring_bytes: args.ring_size,
            packet_timeout: args.packet_timeout,
            max_flows: args.max_flows as usize,
            pcapng: args.pcapng,
            snap_len: args.snap_len,
            kernel_btf: args.kernel_btf,
            record: args.record,
            html: args.html,
            ready_file: args.ready_file,
            rules: args.rules.map(|which| match which {
                RulesArg::Acting => Detail::Acting,
                RulesArg::All => Detail::Walk,
            }),
            sample: 1,
            metrics: None,
            until: None,
        }
    }
}

/// Output formats on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// For people.
    Text,
    /// JSON Lines (see the README for the contract).
    Json,
}

impl From<Format> for output::Format {
    fn from(format: Format) -> Self {
        match format {
            Format::Text => output::Format::Text,
            Format::Json => output::Format::Json,
        }
    }
}

fn parse_hooks(spec: &str) -> Result<HookSet, String> {
    HookSet::parse(spec)
}

/// Which rules `--rules` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RulesArg {
    /// The rules that translated or dropped a packet.
    Acting,
    /// Also every rule each packet matched, chain by chain, with its verdict.
    All,
}

/// How TC programs are attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TcModeArg {
    /// TCX links where the kernel has them (6.6+), clsact qdisc filters otherwise.
    Auto,
    /// TCX links only.
    Tcx,
    /// Filters on a clsact qdisc, through netlink, even where TCX exists.
    Clsact,
}

impl From<TcModeArg> for TcMode {
    fn from(mode: TcModeArg) -> Self {
        match mode {
            TcModeArg::Auto => TcMode::Auto,
            TcModeArg::Tcx => TcMode::Tcx,
            TcModeArg::Clsact => TcMode::Clsact,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    /// Every command is either one that loads programs or named in `WITHOUT_PROGRAMS`: a new
    /// command fails here until it is put on one side, and a renamed one too.
    #[test]
    fn every_command_is_judged_for_loading_programs() {
        use clap::CommandFactory as _;
        let mut loading: Vec<String> = Cli::command()
            .get_subcommands()
            .map(|command| command.get_name().to_owned())
            .filter(|name| !WITHOUT_PROGRAMS.contains(&name.as_str()))
            .collect();
        loading.sort();
        assert_eq!(loading, ["doctor", "monitor", "probe"]);
        for name in WITHOUT_PROGRAMS {
            assert!(Cli::command().find_subcommand(name).is_some(), "{name}");
        }
        let guess = |args: &[&str]| may_load_programs(args.iter().map(std::ffi::OsString::from));
        assert!(guess(&["tracer"]));
        assert!(guess(&["tracer", "--port", "10001"]));
        assert!(guess(&["tracer", "monitor", "--listen", "127.0.0.1:9100"]));
        assert!(guess(&["tracer", "probe", "198.18.0.2:80"]));
        assert!(!guess(&["tracer", "replay", "trace.events"]));
        assert!(!guess(&["tracer", "topology"]));
    }

    fn hooks_of(args: &[&str]) -> HookSet {
        let cli = Cli::try_parse_from(args).unwrap_or_else(|err| panic!("{args:?}: {err}"));
        match cli.command {
            Some(Command::Monitor(monitor)) => monitor.hooks,
            _ => cli.trace.hooks,
        }
    }

    /// `--hooks -nat` as the README writes it: a value that starts with `-` is the option's
    /// value, not another option.
    #[test]
    fn a_hook_change_that_starts_with_a_minus_is_a_value() {
        let expected = HookSet::parse("-nat").unwrap();
        assert_ne!(expected, HookSet::parse("default").unwrap());
        for args in [
            &["tracer", "--hooks", "-nat", "--port", "10001"][..],
            &["tracer", "--hooks=-nat", "--port", "10001"],
            &["tracer", "--port", "10001", "--hooks", "-nat"],
            &["tracer", "monitor", "--hooks", "-nat"],
        ] {
            assert_eq!(hooks_of(args), expected, "{args:?}");
        }
        assert_eq!(
            hooks_of(&["tracer", "--hooks", "-nat,+tc"]),
            HookSet::parse("-nat,+tc").unwrap()
        );
    }

    /// `--series-ttl`: 15 minutes unless given, and 0 (no expiry) is a valid value.
    #[test]
    fn the_series_ttl_defaults_to_15_minutes_and_may_be_0() {
        let ttl = |args: &[&str]| match Cli::try_parse_from(args).unwrap().command {
            Some(Command::Monitor(monitor)) => monitor.series_ttl,
            _ => unreachable!("{args:?} is a monitor"),
        };
        assert_eq!(ttl(&["tracer", "monitor"]), Duration::from_secs(900));
        assert_eq!(
            ttl(&["tracer", "monitor", "--series-ttl", "0"]),
            Duration::ZERO
        );
        assert_eq!(
            ttl(&["tracer", "monitor", "--series-ttl", "2s"]),
            Duration::from_secs(2)
        );
    }
}
