//! What runs beside the traffic in each compared configuration: nothing, tracer (a filter that
//! matches nothing, or every packet), or tcpdump on the three interfaces a container's packet
//! crosses in the host (filter that matches nothing, or every packet). Started before a run,
//! stopped after it, with what it lost or dropped.

use std::process::Stdio;

use anyhow::{Context as _, bail};
use tracer_tests::{testbed::Testbed, tracer::Tracer};

use super::tools::{Tcpdump, lost_from};

/// Where the monitor configuration serves its metrics (nothing scrapes them).
const MONITOR_METRICS: &str = "127.0.0.1:19499";

/// One compared configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Config {
    Untraced,
    TracerNoMatch,
    TracerAll,
    /// Every hook, TC included, with a filter that matches nothing: for what each hook costs.
    TracerEveryHookNoMatch,
    /// `--rules` (nf_tables tracing of the filter's packets), filter matches nothing.
    TracerRulesNoMatch,
    /// `--rules`, every packet matches: every packet's walk through the chains is reported.
    TracerRulesAll,
    TcpdumpNoMatch,
    TcpdumpAll,
    /// `tracer monitor` at its default sampling, no filter: the always-on configuration.
    Monitor,
}

impl Config {
    /// Every configuration compared to [`Config::Untraced`].
    pub const OBSERVED: [Config; 5] = [
        Config::TracerNoMatch,
        Config::TracerAll,
        Config::TcpdumpNoMatch,
        Config::TcpdumpAll,
        Config::Monitor,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Config::Untraced => "untraced",
            Config::TracerNoMatch => "tracer, filter matches nothing",
            Config::TracerAll => "tracer, every packet matches",
            Config::TracerEveryHookNoMatch => "tracer with every hook, filter matches nothing",
            Config::TracerRulesNoMatch => "tracer --rules, filter matches nothing",
            Config::TracerRulesAll => "tracer --rules, every packet matches",
            Config::TcpdumpNoMatch => "tcpdump -s 128, filter matches nothing",
            Config::TcpdumpAll => "tcpdump -s 128, every packet",
            Config::Monitor => "tracer monitor, default sampling",
        }
    }

    /// Starts what this configuration runs, for traffic on TCP port `port` from the first
    /// container; returns once all of it is ready.
    pub fn start(self, testbed: &Testbed, port: u16) -> anyhow::Result<Running> {
        let port = port.to_string();
        let (match_port, hooks, rules) = match self {
            Config::TracerNoMatch => (Some("1"), "default", false),
            Config::TracerAll => (Some(port.as_str()), "default", false),
            Config::TracerEveryHookNoMatch => (Some("1"), "all", false),
            Config::TracerRulesNoMatch => (Some("1"), "default", true),
            Config::TracerRulesAll => (Some(port.as_str()), "default", true),
            _ => (None, "", false),
        };
        let tracer = match match_port {
            _ if self == Config::Monitor => Some(Tracer::start_with_stdout(
                &["monitor", "--metrics", MONITOR_METRICS],
                Stdio::null(),
            )?),
            Some(match_port) => {
                let mut args = vec!["--port", match_port, "--output", "json", "--hooks", hooks];
                if rules {
                    args.push("--rules");
                }
                Some(Tracer::start_with_stdout(&args, Stdio::null())?)
            }
            None => None,
        };
        let filter: Option<&[&str]> = match self {
            Config::TcpdumpNoMatch => Some(&["port", "1"]),
            Config::TcpdumpAll => Some(&[]),
            _ => None,
        };
        let mut dumps = Vec::new();
        if let Some(filter) = filter {
            let veth = testbed.containers[0].host_veth.as_str();
            for iface in [veth, "docker0", "eth0"] {
                let mut args = vec!["-s", "128", "-w", "/dev/null"];
                args.extend_from_slice(filter);
                dumps.push(Tcpdump::start(&testbed.host, iface, &args)?);
            }
        }
        Ok(Running { tracer, dumps })
    }
}

/// What a configuration lost while it ran.
#[derive(Debug, Clone, Copy, Default)]
pub struct Overhead {
    /// Events tracer lost (tracer configurations only).
    pub lost: Option<u64>,
    /// Packets the kernel dropped from tcpdump's buffers, all interfaces together (tcpdump
    /// configurations only).
    pub dropped: Option<u64>,
    /// nf_tables trace messages the kernel could not deliver (tracer configurations only;
    /// only `--rules` makes any).
    pub rule_messages_lost: Option<u64>,
}

/// The nf_tables trace messages tracer's closing note says were lost (none when it says
/// nothing).
fn rule_messages_lost(stderr: &str) -> u64 {
    stderr
        .lines()
        .find_map(|line| {
            line.strip_prefix("tracer: note: ")?
                .split_once(" nf_tables trace messages were lost")?
                .0
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// A started configuration; dropping it stops everything too (for the error paths).
pub struct Running {
    tracer: Option<Tracer>,
    dumps: Vec<Tcpdump>,
}

impl Running {
    /// Process id of the running tracer, if any.
    pub fn tracer_pid(&self) -> Option<u32> {
        self.tracer.as_ref().map(Tracer::pid)
    }

    /// Stops everything and reports what was lost.
    pub fn finish(mut self) -> anyhow::Result<Overhead> {
        let mut overhead = Overhead::default();
        for dump in &mut self.dumps {
            let stopped = dump.stop()?;
            let dropped = stopped.dropped.with_context(|| {
                format!(
                    "tcpdump on {} did not report its drops: {}",
                    dump.iface(),
                    stopped.stderr.trim()
                )
            })?;
            *overhead.dropped.get_or_insert(0) += dropped;
        }
        if let Some(tracer) = self.tracer.take() {
            let finished = tracer.stop()?;
            if !finished.status.success() {
                bail!(
                    "tracer failed ({}): {}",
                    finished.status,
                    finished.stderr.trim()
                );
            }
            overhead.lost = Some(lost_from(&finished.stderr));
            overhead.rule_messages_lost = Some(rule_messages_lost(&finished.stderr));
        }
        Ok(overhead)
    }
}
