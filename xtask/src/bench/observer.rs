//! Observer effect: how much tracer slows the packets it watches, measured with a clock of
//! its own. tcpdump captures a container's `eth0` and the host's uplink; a packet's time
//! between the two is the uplink timestamp less the container one, matched across the NAT by
//! what MASQUERADE leaves alone (raw sequence and acknowledgement numbers, flags, payload
//! length). Rounds come in pairs, one with tracer off and one with it on, in a random order
//! within each pair; the effect is the median over pairs of the on round's median over the off
//! round's, with a distribution-free confidence interval: this machine's latency drifts between
//! rounds by as much as the effect. With tracer on, its own JSON hops give its view of the
//! same stretch (container `eth0` to uplink, both at `net_dev_queue`).

use std::{
    collections::HashMap,
    fmt::Write as _,
    fs::File,
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::Context as _;
use serde_json::{Value, json};
use tracer_tests::{
    testbed::{SERVER_ADDR, Testbed},
    tracer::Tracer,
    traffic,
};

use super::{
    pairs::ci_text,
    pcap::{Segment, tcp_segments},
    stats::{Interval, Rng, Stat, median_ci, percentile},
    tools::{Tcpdump, lost_from},
};

const PORT: u16 = 10077;
/// Request/response exchanges per connection, and their size.
const EXCHANGES: usize = 3;
const CHUNK: usize = 100;
/// Longer than tcpdump's buffer timeout (1 s): see `measure`.
const CAPTURE_SETTLE: Duration = Duration::from_millis(1500);

/// One round: latencies in ns, tcpdump's and (tracer on) tracer's.
pub struct Round {
    pub tracer_on: bool,
    pub tcpdump_ns: Vec<f64>,
    pub tracer_ns: Vec<f64>,
    pub lost: Option<u64>,
}

pub struct Results {
    rounds: Vec<Round>,
    connections: usize,
}

pub fn run(testbed: &Testbed, quick: bool, rng: &mut Rng) -> anyhow::Result<Results> {
    // A round takes about two seconds. Eight pairs gave an interval as wide as the effect
    // (+28%, 95% CI -14% to +41%), sixteen leave it between the 4th and the 13th ratio.
    let (pairs, connections) = if quick { (1, 20) } else { (16, 100) };
    let dir = TempDir::new()?;
    let mut results = Vec::new();
    for pair in 0..pairs {
        let order = if rng.coin() {
            [false, true]
        } else {
            [true, false]
        };
        for tracer_on in order {
            eprintln!(
                "xtask: bench: observer effect: pair {}/{pairs}, tracer {}",
                pair + 1,
                if tracer_on { "on" } else { "off" }
            );
            results.push(measure(testbed, tracer_on, connections, &dir.0)?);
        }
    }
    Ok(Results {
        rounds: results,
        connections,
    })
}

fn measure(
    testbed: &Testbed,
    tracer_on: bool,
    connections: usize,
    dir: &Path,
) -> anyhow::Result<Round> {
    let ctr = &testbed.containers[0];
    let (ctr_pcap, uplink_pcap, hops) = (
        dir.join("container.pcap"),
        dir.join("uplink.pcap"),
        dir.join("hops.json"),
    );
    let port = PORT.to_string();
    let capture = |path: &Path| {
        let path = path.to_str().expect("temporary paths are UTF-8").to_owned();
        let args = [
            "-Z",
            "root",
            "-s",
            "128",
            "--time-stamp-precision",
            "nano",
            "-w",
            &path,
            "tcp",
            "port",
            &port,
        ];
        args.map(str::to_owned)
    };
    let listener = traffic::listen(&testbed.remote, SocketAddr::from((SERVER_ADDR, PORT)))?;
    let args = capture(&ctr_pcap);
    let mut at_ctr = Tcpdump::start(&ctr.netns, "eth0", &args.each_ref().map(String::as_str))?;
    let args = capture(&uplink_pcap);
    let mut at_uplink =
        Tcpdump::start(&testbed.host, "eth0", &args.each_ref().map(String::as_str))?;
    let tracer = if tracer_on {
        let out = File::create(&hops).context("failed to create the hops file")?;
        Some(Tracer::start_with_stdout(
            &["--port", &port, "--output", "json"],
            Stdio::from(out),
        )?)
    } else {
        None
    };
    exchange(testbed, &listener, connections)?;
    // tcpdump reads captured packets a ring block at a time, and a block is handed over when
    // full or after libpcap's timeout of a second; stopped before, it loses what is pending.
    std::thread::sleep(CAPTURE_SETTLE);
    at_ctr.stop()?;
    at_uplink.stop()?;
    let lost = match tracer {
        Some(tracer) => Some(lost_from(&tracer.stop()?.stderr)),
        None => None,
    };
    let read = |path: &Path| -> anyhow::Result<Vec<Segment>> {
        let bytes = std::fs::read(path).with_context(|| format!("failed to read {path:?}"))?;
        tcp_segments(&bytes).with_context(|| format!("failed to parse {path:?}"))
    };
    let tcpdump_ns = latencies(&read(&ctr_pcap)?, &read(&uplink_pcap)?, PORT);
    let tracer_ns = if tracer_on {
        let text = std::fs::read_to_string(&hops).context("failed to read tracer's hops")?;
        tracer_latencies(&text, ctr.netns.inode()?, testbed.host.inode()?)
    } else {
        Vec::new()
    };
    Ok(Round {
        tracer_on,
        tcpdump_ns,
        tracer_ns,
        lost,
    })
}

/// `connections` connections from the first container to the listener, one after the other,
/// each with a few request/response exchanges, closed by the client.
fn exchange(testbed: &Testbed, listener: &TcpListener, connections: usize) -> anyhow::Result<()> {
    let dst = SocketAddr::from((SERVER_ADDR, PORT));
    std::thread::scope(|scope| {
        let server = scope.spawn(|| -> anyhow::Result<()> {
            for _ in 0..connections {
                let mut stream = traffic::accept(listener)?;
                stream.set_nodelay(true)?;
                let mut buf = [0u8; CHUNK];
                loop {
                    let n = stream.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    stream.write_all(&buf[..n])?;
                }
            }
            Ok(())
        });
        let client = (|| -> anyhow::Result<()> {
            for _ in 0..connections {
                let mut stream = traffic::connect_from(&testbed.containers[0].netns, None, dst)?;
                stream.set_nodelay(true)?;
                let mut buf = [0u8; CHUNK];
                for _ in 0..EXCHANGES {
                    stream.write_all(&[b'x'; CHUNK])?;
                    stream.read_exact(&mut buf)?;
                }
                stream.shutdown(Shutdown::Write)?;
                // The server's FIN: the connection is over on both sides.
                stream.read_to_end(&mut Vec::new())?;
            }
            Ok(())
        })();
        let served = server.join().expect("the server thread does not panic");
        client.and(served)
    })
}

/// Per packet sent to `port`, its time from the `first` capture to the `second`, in ns. A
/// packet is known by (raw seq, raw ack, flags, payload length); one whose key appears more
/// than once in either capture (a retransmission) is left out.
fn latencies(first: &[Segment], second: &[Segment], port: u16) -> Vec<f64> {
    type Key = (u32, u32, u8, u32);
    let index = |segments: &[Segment]| {
        let mut seen: HashMap<Key, Option<u64>> = HashMap::new();
        for s in segments.iter().filter(|s| s.dst_port == port) {
            seen.entry((s.seq, s.ack, s.flags, s.payload_len))
                .and_modify(|ts| *ts = None)
                .or_insert(Some(s.ts_ns));
        }
        seen
    };
    let (first, second) = (index(first), index(second));
    let mut out: Vec<f64> = first
        .iter()
        .filter_map(|(key, ts)| Some(second.get(key).copied()?? as f64 - (*ts)? as f64))
        .collect();
    out.sort_by(f64::total_cmp);
    out
}

/// tracer's own container `eth0` -> uplink time per packet, in ns: between its
/// `net_dev_queue` hops on `eth0` in the container's namespace and in the host's.
fn tracer_latencies(json_lines: &str, container: u64, host: u64) -> Vec<f64> {
    let mut hops: HashMap<u64, (Option<u64>, Option<u64>)> = HashMap::new();
    for hop in json_lines
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        if hop["type"] != "hop" || hop["hook"] != "net_dev_queue" || hop["ifname"] != "eth0" {
            continue;
        }
        let (Some(id), Some(ts), Some(netns)) = (
            hop["packet_id"].as_u64(),
            hop["ts_ns"].as_u64(),
            hop["netns_inode"].as_u64(),
        ) else {
            continue;
        };
        let entry = hops.entry(id).or_default();
        if netns == container {
            entry.0 = Some(ts);
        } else if netns == host {
            entry.1 = Some(ts);
        }
    }
    let mut out: Vec<f64> = hops
        .values()
        .filter_map(|&(c, h)| Some(h? as f64 - c? as f64))
        .collect();
    out.sort_by(f64::total_cmp);
    out
}

/// A directory for the captures, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<TempDir> {
        let path = std::env::temp_dir().join(format!("tracer-bench-{}", std::process::id()));
        std::fs::create_dir_all(&path).context("failed to create a temporary directory")?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Results {
    fn pooled(&self, tracer_on: bool, tracer_view: bool) -> Vec<f64> {
        self.rounds
            .iter()
            .filter(|r| r.tracer_on == tracer_on)
            .flat_map(|r| {
                if tracer_view {
                    &r.tracer_ns
                } else {
                    &r.tcpdump_ns
                }
            })
            .copied()
            .collect()
    }

    /// The smallest and largest of the rounds' own medians, for the spread between rounds.
    fn round_medians(&self, tracer_on: bool, tracer_view: bool) -> (f64, f64) {
        self.rounds
            .iter()
            .filter(|r| r.tracer_on == tracer_on)
            .map(|r| {
                let values = if tracer_view {
                    &r.tracer_ns
                } else {
                    &r.tcpdump_ns
                };
                Stat::of(values).median
            })
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), m| {
                (lo.min(m), hi.max(m))
            })
    }

    /// Median latency with tracer on over the median with it off (tcpdump's clock), all
    /// rounds of each pooled.
    fn pooled_ratio(&self) -> f64 {
        Stat::of(&self.pooled(true, false)).median / Stat::of(&self.pooled(false, false)).median
    }

    /// Per pair of rounds, the on round's median latency over the off round's (tcpdump's
    /// clock).
    fn pair_ratios(&self) -> Vec<f64> {
        self.rounds
            .chunks_exact(2)
            .map(|pair| {
                let median = |on: bool| {
                    let round = pair.iter().find(|r| r.tracer_on == on);
                    round.map_or(f64::NAN, |r| Stat::of(&r.tcpdump_ns).median)
                };
                median(true) / median(false)
            })
            .collect()
    }

    /// The effect: the median of the pairs' ratios.
    pub fn ratio(&self) -> f64 {
        Stat::of(&self.pair_ratios()).median
    }

    /// The 95% interval of [`Results::ratio`], when there are pairs enough for one.
    pub fn ratio_ci(&self) -> Option<Interval> {
        median_ci(&self.pair_ratios(), 0.95)
    }

    /// Events tracer lost over all rounds.
    pub fn lost(&self) -> u64 {
        self.rounds.iter().filter_map(|r| r.lost).sum()
    }

    pub fn markdown(&self) -> String {
        let rounds = self.rounds.len() / 2;
        let mut md = format!(
            "## Observer effect\n\nContainer `eth0` -> uplink time of the packets a container sends, from tcpdump timestamps at both ends (`tcpdump -s 128 --time-stamp-precision nano`, filter `tcp port {PORT}`), packets matched across MASQUERADE by raw sequence and acknowledgement numbers, flags and payload length (retransmissions left out). Each round is {} connections from the container, each with {EXCHANGES} request/response exchanges of {CHUNK} bytes; {rounds} pairs of rounds, one with tracer off and one with it on (`--port {PORT} --output json`, default hooks), in a random order within each pair; the table pools the rounds of each kind, and the rounds' own medians give the spread between rounds.\n\n| tracer | packets | median | rounds' medians | p90 |\n|---|---|---|---|---|\n",
            self.connections
        );
        for (label, on, view) in [
            ("off", false, false),
            ("on", true, false),
            (
                "on, tracer's own view (net_dev_queue to net_dev_queue)",
                true,
                true,
            ),
        ] {
            let values = self.pooled(on, view);
            let (lo, hi) = self.round_medians(on, view);
            let _ = writeln!(
                md,
                "| {label} | {} | {:.1} us | {:.1}-{:.1} us | {:.1} us |",
                values.len(),
                Stat::of(&values).median / 1e3,
                lo / 1e3,
                hi / 1e3,
                percentile(&values, 90.0) / 1e3
            );
        }
        let ratios: Vec<String> = self
            .pair_ratios()
            .iter()
            .map(|r| format!("{r:.3}"))
            .collect();
        let _ = writeln!(
            md,
            "\nPer pair, the on round's median over the off round's: {} (in the order run). Their median: {:.3} ({:+.1}%), 95% CI {}; the pooled medians' ratio {:.3}. Events tracer lost in these rounds: {}.\n",
            ratios.join(", "),
            self.ratio(),
            (self.ratio() - 1.0) * 100.0,
            ci_text(self.ratio_ci()),
            self.pooled_ratio(),
            self.lost()
        );
        md
    }

    pub fn json(&self) -> Value {
        let summary = |on, view| {
            let v = self.pooled(on, view);
            json!({"packets": v.len(), "median_ns": Stat::of(&v).median, "p90_ns": percentile(&v, 90.0)})
        };
        let rounds: Vec<Value> = self
            .rounds
            .iter()
            .map(|r| {
                json!({"tracer_on": r.tracer_on, "packets": r.tcpdump_ns.len(),
                            "median_ns": Stat::of(&r.tcpdump_ns).median,
                            "tracer_median_ns": Stat::of(&r.tracer_ns).median, "lost": r.lost})
            })
            .collect();
        json!({
            "connections_per_round": self.connections, "off": summary(false, false),
            "on": summary(true, false), "on_tracer_view": summary(true, true),
            "ratio_of_medians": self.pooled_ratio(), "pair_ratios": self.pair_ratios(),
            "ratio": self.ratio(), "ratio_ci": self.ratio_ci().map(|ci| ci.json()),
            "lost": self.lost(), "rounds": rounds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(ts_ns: u64, dst_port: u16, seq: u32, flags: u8) -> Segment {
        Segment {
            ts_ns,
            src_port: 40000,
            dst_port,
            seq,
            ack: 0,
            flags,
            payload_len: 0,
        }
    }

    #[test]
    fn matches_packets_across_the_nat() {
        let ctr = [
            seg(1_000, PORT, 1, 0x02),
            seg(2_000, PORT, 2, 0x10),
            seg(3_000, 40000, 9, 0x12), // a reply: not counted
            seg(4_000, PORT, 3, 0x18),
            seg(4_500, PORT, 3, 0x18), // retransmitted: ambiguous
        ];
        let uplink = [
            seg(1_012, PORT, 1, 0x02),
            seg(2_030, PORT, 2, 0x10),
            seg(4_020, PORT, 3, 0x18),
            seg(9_000, PORT, 4, 0x10), // never seen at the container
        ];
        assert_eq!(latencies(&ctr, &uplink, PORT), vec![12.0, 30.0]);
    }

    #[test]
    fn reads_tracer_hops() {
        let line = |id: u64, hook: &str, ifname: &str, netns: u64, ts: u64| {
            json!({"type": "hop", "packet_id": id, "hook": hook, "ifname": ifname,
                   "netns_inode": netns, "ts_ns": ts})
            .to_string()
        };
        let text = [
            line(1, "net_dev_queue", "eth0", 11, 100),
            line(1, "netif_receive_skb", "docker0", 22, 150),
            line(1, "net_dev_queue", "eth0", 22, 180),
            line(2, "net_dev_queue", "eth0", 11, 500),
            line(3, "net_dev_queue", "eth0", 22, 700),
            json!({"type": "stats"}).to_string(),
            "not json".to_owned(),
        ]
        .join("\n");
        assert_eq!(tracer_latencies(&text, 11, 22), vec![80.0]);
    }
}
