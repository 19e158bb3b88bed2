//! What the two-node test asserts of the merged trace.
//!
//! Each node's recording is first replayed on its own (`tracer replay`), which says which
//! packets left a node and which reached it, by what survives the wire. Every packet of the
//! connection crossed: it left one node and reached the other, so the departures of each node
//! must be exactly the arrivals of the other. Then `tracer merge` must show each of those
//! packets once, its hops in path order (all of one node's, then all of the other's), no hop
//! earlier than the one before it by more than the stated uncertainty, node b's times moved by
//! the stated offset; the clocks must really differ (by far more than the uncertainty); and the
//! offset must agree with what the serial consoles tell of the two clocks. Merging the nodes'
//! JSON output must give the same clocks and packets as merging their recordings.

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;

use super::guest::ROUNDS;

/// Where node b's clock is against node a's, as the consoles tell it: a guest read its clock
/// between the host sending `clock` and reading the answer, so its offset to the host's clock
/// lies in an interval as wide as that round trip.
#[derive(Debug, Clone, Copy)]
pub struct ConsoleClock {
    /// The lowest and highest offset of b's clock minus a's consistent with the readings.
    low: i128,
    high: i128,
}

impl ConsoleClock {
    /// From (host time sent, guest clock, host time received) of nodes a and b.
    pub fn from_readings(readings: [(u64, u64, u64); 2]) -> ConsoleClock {
        let range = |(sent, value, received): (u64, u64, u64)| {
            let value = i128::from(value);
            (value - i128::from(received), value - i128::from(sent))
        };
        let ((a_low, a_high), (b_low, b_high)) = (range(readings[0]), range(readings[1]));
        ConsoleClock {
            low: b_low - a_high,
            high: b_high - a_low,
        }
    }
}

/// What the test found, for its closing line.
pub struct Report {
    offset_ns: i128,
    uncertainty_ns: i128,
    crossed: usize,
    console: ConsoleClock,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} packets crossed, each once; node b's clock offset {:+.6} s +/- {:.1} us \
             (consoles: {:+.6} to {:+.6} s)",
            self.crossed,
            self.offset_ns as f64 / 1e9,
            self.uncertainty_ns as f64 / 1e3,
            self.console.low as f64 / 1e9,
            self.console.high as f64 / 1e9,
        )
    }
}

/// Runs `tracer ARGS` and returns its stdout, failing with its stderr.
fn tracer(binary: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(binary)
        .args(args)
        .output()
        .with_context(|| format!("failed to run {}", binary.display()))?;
    if !output.status.success() {
        bail!(
            "tracer {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

fn lines(text: &str) -> anyhow::Result<Vec<Value>> {
    text.lines()
        .map(|line| serde_json::from_str(line).with_context(|| format!("bad JSON: {line}")))
        .collect()
}

/// The hops of each packet, in the order written.
fn packets(lines: &[Value]) -> Vec<Vec<&Value>> {
    let mut packets: BTreeMap<u64, Vec<&Value>> = BTreeMap::new();
    for hop in lines.iter().filter(|l| l["type"] == "hop") {
        let id = hop["packet_id"].as_u64().unwrap_or_default();
        packets.entry(id).or_default().push(hop);
    }
    packets.into_values().collect()
}

/// What a hop shows that the wire between the nodes does not change.
fn wire_key(hop: &Value) -> String {
    let field = |name: &str| hop[name].to_string();
    let encap = &hop["encap"];
    format!(
        "{} {}:{} > {}:{} id {} len {} {} seq {} ack {} {} vni {}",
        field("proto"),
        field("src_ip"),
        field("src_port"),
        field("dst_ip"),
        field("dst_port"),
        field("ip_id"),
        field("ip_len"),
        field("tcp_flags"),
        field("tcp_seq"),
        field("tcp_ack"),
        encap["kind"],
        encap["vni"],
    )
}

fn is_departure(hop: &Value) -> bool {
    let hook = hop["hook"].as_str().unwrap_or_default();
    matches!(hook, "net_dev_queue" | "net_dev_start_xmit" | "tc_egress")
        && hop["drop_reason"].is_null()
}

fn is_arrival(hop: &Value) -> bool {
    let hook = hop["hook"].as_str().unwrap_or_default();
    matches!(hook, "netif_receive_skb" | "netif_rx" | "tc_ingress")
}

/// The wire keys of one node's departures and arrivals, sorted, and its number of hops.
fn crossings(node: &str, replay: &[Value]) -> anyhow::Result<([Vec<String>; 2], usize)> {
    let mut keys = [Vec::new(), Vec::new()];
    let mut hops = 0;
    for packet in packets(replay) {
        hops += packet.len();
        let (first, last) = (packet[0], packet[packet.len() - 1]);
        match (is_departure(last), is_arrival(first)) {
            (true, false) => keys[0].push(wire_key(last)),
            (false, true) => keys[1].push(wire_key(first)),
            _ => bail!("node {node}: a packet that neither left nor arrived: {first} ... {last}"),
        }
    }
    keys.iter_mut().for_each(|k| k.sort());
    Ok((keys, hops))
}

/// Checks the merged trace of the nodes' `files` ([recording, JSON] per node) against each
/// node's own, and the clocks against the `consoles`' readings before and after the traffic.
pub fn check(
    dir: &Path,
    files: &[[PathBuf; 2]],
    binary: &Path,
    consoles: [ConsoleClock; 2],
) -> anyhow::Result<Report> {
    let arg = |node: &str, path: &Path| format!("{node}={}", path.display());
    let (a_rec, b_rec) = (arg("a", &files[0][0]), arg("b", &files[1][0]));
    let (a_json, b_json) = (arg("a", &files[0][1]), arg("b", &files[1][1]));
    // Each node on its own: what left it and what reached it.
    let mut seen = Vec::new();
    for (node, [record, _]) in ["a", "b"].into_iter().zip(files) {
        let replay = lines(&tracer(
            binary,
            &["replay", "-o", "json", &record.to_string_lossy()],
        )?)?;
        seen.push(crossings(node, &replay)?);
    }
    let ([a_left, a_reached], a_hops) = &seen[0];
    let ([b_left, b_reached], b_hops) = &seen[1];
    ensure!(
        a_left == b_reached,
        "what left node a is not what reached node b"
    );
    ensure!(
        b_left == a_reached,
        "what left node b is not what reached node a"
    );
    let crossed = a_left.len() + b_left.len();
    // SYN, SYN-ACK, the rounds' messages both ways, two FINs: at least.
    ensure!(crossed >= 2 * ROUNDS + 4, "only {crossed} packets crossed");

    let text = tracer(binary, &["merge", &a_rec, &b_rec])?;
    std::fs::write(dir.join("merged.txt"), &text)?;
    println!("{text}");
    let merged = lines(&tracer(binary, &["merge", &a_rec, &b_rec, "-o", "json"])?)?;
    std::fs::write(dir.join("merged.json"), serde_json::to_string(&merged)?)?;
    let clock = merged
        .iter()
        .find(|l| l["type"] == "clock" && l["node"] == "b")
        .context("no clock record for node b")?;
    ensure!(
        clock["basis"] == "two-way" && clock["via"] == "a",
        "{clock}"
    );
    let offset = i128::from(clock["offset_ns"].as_i64().context("offset_ns")?);
    let uncertainty = i128::from(clock["uncertainty_ns"].as_u64().context("uncertainty_ns")?);

    let packets = packets(&merged);
    ensure!(
        packets.len() == crossed,
        "{} merged packets for {crossed} that crossed",
        packets.len()
    );
    let mut departures = Vec::new();
    for hops in &packets {
        departures.push(in_order(hops, offset, uncertainty)?);
    }
    departures.sort();
    let mut expected: Vec<String> = a_left.iter().chain(b_left).cloned().collect();
    expected.sort();
    ensure!(
        departures == expected,
        "the merged packets are not the packets that crossed"
    );
    let hops: usize = packets.iter().map(Vec::len).sum();
    ensure!(
        hops == a_hops + b_hops,
        "{hops} merged hops for {} traced",
        a_hops + b_hops
    );

    // The clocks really differ, by far more than the merge is unsure of.
    ensure!(
        offset.abs() >= 100_000_000 && offset.abs() > 1000 * uncertainty,
        "offset {offset} ns +/- {uncertainty} ns: the clocks hardly differ"
    );
    // The consoles' view, across the traffic: the offset the packets give lies within it.
    let low = consoles[0].low.min(consoles[1].low);
    let high = consoles[0].high.max(consoles[1].high);
    ensure!(
        offset + uncertainty >= low && offset - uncertainty <= high,
        "offset {offset} +/- {uncertainty} ns is outside the consoles' {low} to {high} ns"
    );

    // The nodes' JSON output merges to the same.
    let from_json = lines(&tracer(binary, &["merge", &a_json, &b_json, "-o", "json"])?)?;
    let clocks = |lines: &[Value]| -> Vec<Value> {
        lines
            .iter()
            .filter(|l| l["type"] == "clock")
            .map(|l| {
                let mut l = l.clone();
                l["file"] = Value::Null;
                l
            })
            .collect()
    };
    ensure!(
        clocks(&from_json) == clocks(&merged),
        "JSON and recordings merge to other clocks"
    );
    ensure!(
        self::packets(&from_json).len() == crossed,
        "merging JSON joins other packets"
    );
    Ok(Report {
        offset_ns: offset,
        uncertainty_ns: uncertainty,
        crossed,
        console: ConsoleClock { low, high },
    })
}

/// Checks one merged packet: one node's hops, then the other's, in time order on each, the
/// crossing no earlier than `-uncertainty`, node b's times `offset` from its own; returns the
/// wire key of its departure.
fn in_order(hops: &[&Value], offset: i128, uncertainty: i128) -> anyhow::Result<String> {
    let node = |hop: &Value| hop["node"].as_str().unwrap_or_default().to_owned();
    let ts = |hop: &Value, key: &str| i128::from(hop[key].as_u64().unwrap_or_default());
    let first = node(hops[0]);
    let split = hops
        .iter()
        .position(|hop| node(hop) != first)
        .context("a merged packet on one node only")?;
    ensure!(
        hops[split..].iter().all(|hop| node(hop) != first),
        "a merged packet goes back to node {first}"
    );
    for hop in hops {
        let shift = if node(hop) == "b" { offset } else { 0 };
        ensure!(ts(hop, "ts_ns") == ts(hop, "node_ts_ns") - shift, "{hop}");
    }
    for pair in hops.windows(2) {
        let gap = ts(pair[1], "ts_ns") - ts(pair[0], "ts_ns");
        ensure!(
            gap >= -uncertainty && (gap >= 0 || node(pair[0]) != node(pair[1])),
            "a hop {gap} ns before the one before it: {}",
            pair[1]
        );
    }
    let (left, reached) = (hops[split - 1], hops[split]);
    ensure!(
        is_departure(left) && is_arrival(reached),
        "crossing {left} -> {reached}"
    );
    ensure!(
        wire_key(left) == wire_key(reached),
        "joined {left} to {reached}"
    );
    Ok(wire_key(left))
}
