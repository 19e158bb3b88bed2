//! What tracer's kernel programs cost, from the kernel's own accounting
//! (`kernel.bpf_stats_enabled`): per program, ns per run during iperf3 with a filter that
//! matches nothing and with one that matches every packet, each net of the empty-program
//! floor measured during the same traffic; and per packet forwarded out of the uplink (the
//! SNAT path), the programs' total time and how many of them ran.

use std::{collections::BTreeMap, fmt::Write as _, process::Command};

use anyhow::Context as _;
use serde_json::{Value, json};
use tracer_common::hook::program;
use tracer_tests::{netns::Netns, testbed::Testbed};

use super::{
    config::Config,
    floor::{self, Floor},
    tools::{IPERF_PORT, iperf3},
};

/// Every program tracer may load; which of them load depends on the kernel.
const PROGRAMS: [&str; 18] = [
    program::NET_DEV_QUEUE,
    program::NET_DEV_QUEUE_RAW,
    program::NET_DEV_START_XMIT,
    program::NET_DEV_START_XMIT_RAW,
    program::NETIF_RX,
    program::NETIF_RX_RAW,
    program::NETIF_RECEIVE_SKB,
    program::NETIF_RECEIVE_SKB_RAW,
    program::KFREE_SKB,
    program::KFREE_SKB_RAW,
    program::KFREE_SKB_BARE,
    program::KFREE_SKB_BARE_RAW,
    program::NF_NAT_MANIP_PKT_FENTRY,
    program::NF_NAT_MANIP_PKT_KPROBE,
    program::TC_INGRESS,
    program::TC_EGRESS,
    program::SOCK_CREATE,
    program::SOCK_RELEASE,
];

/// The kernel keeps BPF_OBJ_NAME_LEN (16) bytes of a program's name, NUL included.
const KERNEL_NAME_LEN: usize = 15;

/// Runs and total run time of a program over one measurement.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cost {
    pub runs: u64,
    pub total_ns: u64,
}

impl Cost {
    pub fn ns_per_run(self) -> f64 {
        if self.runs == 0 {
            f64::NAN
        } else {
            self.total_ns as f64 / self.runs as f64
        }
    }

    fn add(&mut self, other: Cost) {
        self.runs += other.runs;
        self.total_ns += other.total_ns;
    }

    fn since(self, before: Cost) -> Cost {
        Cost {
            runs: self.runs.saturating_sub(before.runs),
            total_ns: self.total_ns.saturating_sub(before.total_ns),
        }
    }
}

/// One measurement: tracer under one filter, iperf3 through the SNAT path.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    pub programs: BTreeMap<&'static str, Cost>,
    pub floor: Cost,
    /// Packets sent out of the host's uplink.
    pub forwarded: u64,
    pub lost: u64,
}

impl Measured {
    /// All of tracer's programs together.
    pub fn total(&self) -> Cost {
        let mut total = Cost::default();
        self.programs.values().for_each(|c| total.add(*c));
        total
    }

    /// Mean ns per run over all of tracer's programs, weighted by runs, less the floor.
    pub fn net_per_run(&self) -> f64 {
        self.total().ns_per_run() - self.floor.ns_per_run()
    }

    pub fn ns_per_forwarded(&self) -> f64 {
        self.total().total_ns as f64 / self.forwarded as f64
    }

    pub fn runs_per_forwarded(&self) -> f64 {
        self.total().runs as f64 / self.forwarded as f64
    }
}

pub struct Results {
    /// Filter matching nothing.
    pub miss: Measured,
    /// Filter matching every packet.
    pub hit: Measured,
    /// Every hook, TC included, filter matching nothing.
    pub every_hook: Measured,
}

pub fn run(testbed: &Testbed, seconds: u64) -> anyhow::Result<Results> {
    let _stats = BpfStats::enable()?;
    let _floor = Floor::attach(c"netif_receive_skb")?;
    Ok(Results {
        miss: measure(testbed, Config::TracerNoMatch, seconds)?,
        hit: measure(testbed, Config::TracerAll, seconds)?,
        every_hook: measure(testbed, Config::TracerEveryHookNoMatch, seconds)?,
    })
}

fn measure(testbed: &Testbed, config: Config, seconds: u64) -> anyhow::Result<Measured> {
    let running = config.start(testbed, IPERF_PORT)?;
    let pid = running
        .tracer_pid()
        .context("no tracer in this configuration")?;
    let (programs, floor) = snapshot(pid)?;
    let before = uplink_packets(&testbed.host, "eth0")?;
    let client = &testbed.containers[0].netns;
    iperf3(client, &["-P", "4", "-t", &seconds.to_string()])?;
    let forwarded = uplink_packets(&testbed.host, "eth0")? - before;
    let (programs_after, floor_after) = snapshot(pid)?;
    let lost = running.finish()?.lost.unwrap_or(0);
    Ok(Measured {
        programs: programs_after
            .into_iter()
            .map(|(name, after)| {
                let before = programs.get(name).copied().unwrap_or_default();
                (name, after.since(before))
            })
            .collect(),
        floor: floor_after.since(floor),
        forwarded,
        lost,
    })
}

/// Run statistics of tracer's programs (those process `pid` holds) and of our own floor
/// program. Programs are told apart by what their processes hold rather than by name alone,
/// since another tracer may be running on the machine.
fn snapshot(pid: u32) -> anyhow::Result<(BTreeMap<&'static str, Cost>, Cost)> {
    let ours = program_ids(&format!("/proc/{}/fdinfo", std::process::id()))?;
    let tracers = program_ids(&format!("/proc/{pid}/fdinfo"))?;
    let output = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .context("failed to run bpftool")?;
    let listing: Value =
        serde_json::from_slice(&output.stdout).context("failed to parse bpftool's listing")?;
    let (mut programs, mut floor) = (BTreeMap::new(), Cost::default());
    for entry in listing.as_array().into_iter().flatten() {
        let id = entry["id"].as_u64().unwrap_or_default();
        let name = entry["name"].as_str().unwrap_or_default();
        let cost = Cost {
            runs: entry["run_cnt"].as_u64().unwrap_or_default(),
            total_ns: entry["run_time_ns"].as_u64().unwrap_or_default(),
        };
        if ours.contains(&id) && name == floor::NAME {
            floor.add(cost);
        } else if tracers.contains(&id)
            && let Some(name) = identify(name, entry["type"].as_str().unwrap_or_default())
        {
            programs.entry(name).or_insert_with(Cost::default).add(cost);
        }
    }
    Ok((programs, floor))
}

/// Ids of the BPF programs a process holds, directly or through links (`prog_id:` lines in
/// the fdinfo of its descriptors).
fn program_ids(fdinfo: &str) -> anyhow::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(fdinfo).with_context(|| format!("failed to list {fdinfo}"))? {
        // Descriptors come and go while we read; a vanished one held nothing of interest.
        let Ok(text) = std::fs::read_to_string(entry?.path()) else {
            continue;
        };
        ids.extend(text.lines().filter_map(|line| {
            line.strip_prefix("prog_id:")
                .and_then(|id| id.trim().parse::<u64>().ok())
        }));
    }
    Ok(ids)
}

/// Tracer's name for a program bpftool lists as `name` of type `kind`. Older bpftool shows
/// the kernel's truncated name, under which some programs look alike (`net_dev_start_xmit`
/// and `net_dev_start_xmit_raw`); their types tell them apart.
fn identify(name: &str, kind: &str) -> Option<&'static str> {
    let truncated = |p: &str| p.get(..KERNEL_NAME_LEN).unwrap_or(p).to_owned();
    PROGRAMS.iter().copied().find(|&p| p == name).or_else(|| {
        PROGRAMS
            .iter()
            .copied()
            .find(|&p| truncated(p) == name && program_type(p) == kind)
    })
}

/// The type bpftool shows for one of tracer's programs.
fn program_type(program: &str) -> &'static str {
    if program.ends_with("_raw") {
        "raw_tracepoint"
    } else if program.ends_with("_kprobe") {
        "kprobe"
    } else if program.starts_with("tc_") {
        "sched_cls"
    } else {
        // tp_btf and fentry.
        "tracing"
    }
}

/// Packets `iface` in `netns` sent and received so far: every packet of the traffic crosses
/// the uplink once, the data out and the acknowledgements back.
fn uplink_packets(netns: &Netns, iface: &str) -> anyhow::Result<u64> {
    let output = netns.ip(&["-s", "-j", "link", "show", iface])?;
    let links: Value = serde_json::from_str(&output).context("failed to parse ip -j -s link")?;
    let count = |direction: &str| {
        links[0]["stats64"][direction]["packets"]
            .as_u64()
            .with_context(|| format!("no {direction} packet count for {iface} in {}", netns.name))
    };
    Ok(count("tx")? + count("rx")?)
}

/// `kernel.bpf_stats_enabled`, on while this lives and restored after.
struct BpfStats(String);

impl BpfStats {
    fn enable() -> anyhow::Result<BpfStats> {
        let path = "/proc/sys/kernel/bpf_stats_enabled";
        let before = std::fs::read_to_string(path).context("failed to read bpf_stats_enabled")?;
        std::fs::write(path, "1").context("failed to enable bpf_stats")?;
        Ok(BpfStats(before))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", self.0.trim());
    }
}

impl Results {
    pub fn markdown(&self) -> String {
        let mut md = String::from(
            "## Kernel program cost\n\n`kernel.bpf_stats_enabled=1`; run_time_ns / run_cnt of each of tracer's programs (those the tracer process holds), counted over one iperf3 run (4 TCP streams) with tracer filtering on a port nothing uses (no match) and on the iperf3 port (match), default hooks. `trc_floor` is an empty program (`r0 = 0; exit`) on `netif_receive_skb` during the same runs: the tracepoint call and the accounting itself, under any program. \"Net\" is ns per run less the floor's ns per run in the same measurement.\n\n| Program | no match: ns/run | net | runs | match: ns/run | net | runs |\n|---|---|---|---|---|---|---|\n",
        );
        let mut names: Vec<&str> = self.miss.programs.keys().copied().collect();
        names.extend(self.hit.programs.keys().copied());
        names.sort_unstable();
        names.dedup();
        for name in &names {
            let miss = self.miss.programs.get(name).copied().unwrap_or_default();
            let hit = self.hit.programs.get(name).copied().unwrap_or_default();
            let _ = writeln!(
                md,
                "| {name} | {} | {} |",
                cells(miss, &self.miss),
                cells(hit, &self.hit)
            );
        }
        let _ = writeln!(
            md,
            "| **all of tracer's, weighted by runs** | {} | {} |",
            cells(self.miss.total(), &self.miss),
            cells(self.hit.total(), &self.hit)
        );
        let _ = writeln!(
            md,
            "| trc_floor (empty program) | {:.0} | | {} | {:.0} | | {} |",
            self.miss.floor.ns_per_run(),
            self.miss.floor.runs,
            self.hit.floor.ns_per_run(),
            self.hit.floor.runs
        );
        let missing: Vec<&str> = PROGRAMS
            .iter()
            .copied()
            .filter(|p| !names.contains(p))
            .collect();
        let _ = writeln!(
            md,
            "\nNot loaded or never run on this kernel: {}.\n",
            missing.join(", ")
        );
        md += "Per packet forwarded through the uplink, either way (the SNAT path: the data out and the acknowledgements back; the uplink's tx and rx packets in the host namespace over the same run), every run of tracer's programs counted.\n\n| | no match | match |\n|---|---|---|\n";
        let (m, h) = (&self.miss, &self.hit);
        let _ = writeln!(
            md,
            "| packets forwarded | {} | {} |",
            m.forwarded, h.forwarded
        );
        let _ = writeln!(
            md,
            "| tracer's programs, ns per forwarded packet | {:.0} | {:.0} |",
            m.ns_per_forwarded(),
            h.ns_per_forwarded()
        );
        let _ = writeln!(
            md,
            "| tracer's programs run per forwarded packet | {:.2} | {:.2} |",
            m.runs_per_forwarded(),
            h.runs_per_forwarded()
        );
        let _ = writeln!(md, "| events lost | {} | {} |\n", m.lost, h.lost);
        md += &self.every_hook_markdown();
        md
    }

    /// What each hook costs, with every hook attached: per program, its net ns per run and
    /// how many times it ran per forwarded packet.
    fn every_hook_markdown(&self) -> String {
        let e = &self.every_hook;
        let mut md = String::from(
            "With every hook (`--hooks all`, TC included), filter matching nothing: what each program costs and how often it runs.\n\n| Program | net ns/run | runs per forwarded packet | net ns per forwarded packet |\n|---|---|---|---|\n",
        );
        for (name, cost) in &e.programs {
            let net = cost.ns_per_run() - e.floor.ns_per_run();
            let runs = cost.runs as f64 / e.forwarded as f64;
            let _ = writeln!(md, "| {name} | {net:.0} | {runs:.2} | {:.0} |", net * runs);
        }
        let _ = writeln!(
            md,
            "| **all** | {:.0} | {:.2} | {:.0} |\n",
            e.net_per_run(),
            e.runs_per_forwarded(),
            e.net_per_run() * e.runs_per_forwarded()
        );
        md
    }

    pub fn json(&self) -> Value {
        let measured = |m: &Measured| {
            let programs: Vec<Value> = m
                .programs
                .iter()
                .map(|(name, c)| json!({"program": name, "runs": c.runs, "total_ns": c.total_ns, "ns_per_run": c.ns_per_run(), "net_ns_per_run": c.ns_per_run() - m.floor.ns_per_run()}))
                .collect();
            json!({
                "programs": programs,
                "floor": {"runs": m.floor.runs, "ns_per_run": m.floor.ns_per_run()},
                "all": {"runs": m.total().runs, "ns_per_run": m.total().ns_per_run(), "net_ns_per_run": m.net_per_run()},
                "forwarded_packets": m.forwarded, "ns_per_forwarded_packet": m.ns_per_forwarded(),
                "runs_per_forwarded_packet": m.runs_per_forwarded(), "lost": m.lost,
            })
        };
        json!({
            "no_match": measured(&self.miss),
            "match": measured(&self.hit),
            "every_hook_no_match": measured(&self.every_hook),
        })
    }
}

/// "ns/run | net | runs" for one program in one measurement.
fn cells(cost: Cost, measured: &Measured) -> String {
    if cost.runs == 0 {
        return "- | - | 0".to_owned();
    }
    let ns = cost.ns_per_run();
    format!(
        "{ns:.0} | {:.0} | {}",
        ns - measured.floor.ns_per_run(),
        cost.runs
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifies_full_and_truncated_names() {
        assert_eq!(identify("net_dev_queue", "tracing"), Some("net_dev_queue"));
        assert_eq!(
            identify("net_dev_start_xmit", "tracing"),
            Some("net_dev_start_xmit")
        );
        assert_eq!(
            identify("net_dev_start_x", "tracing"),
            Some("net_dev_start_xmit")
        );
        assert_eq!(
            identify("net_dev_start_x", "raw_tracepoint"),
            Some("net_dev_start_xmit_raw")
        );
        assert_eq!(
            identify("nf_nat_manip_pk", "kprobe"),
            Some("nf_nat_manip_pkt_kprobe")
        );
        assert_eq!(
            identify("nf_nat_manip_pk", "tracing"),
            Some("nf_nat_manip_pkt_fentry")
        );
        assert_eq!(
            identify("netif_receive_s", "tracing"),
            Some("netif_receive_skb")
        );
        assert_eq!(identify("tc_ingress", "sched_cls"), Some("tc_ingress"));
        assert_eq!(identify("trc_floor", "raw_tracepoint"), None);
        assert_eq!(identify("something_else", "tracing"), None);
    }

    #[test]
    fn costs_per_forwarded_packet() {
        let mut m = Measured {
            floor: Cost {
                runs: 100,
                total_ns: 5_000,
            },
            forwarded: 100,
            ..Measured::default()
        };
        m.programs.insert(
            "net_dev_queue",
            Cost {
                runs: 200,
                total_ns: 20_000,
            },
        );
        m.programs.insert(
            "tc_egress",
            Cost {
                runs: 100,
                total_ns: 40_000,
            },
        );
        assert_eq!(m.total().ns_per_run(), 200.0);
        assert_eq!(m.net_per_run(), 150.0);
        assert_eq!(m.ns_per_forwarded(), 600.0);
        assert_eq!(m.runs_per_forwarded(), 3.0);
    }
}
