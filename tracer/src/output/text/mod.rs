//! Text output: one block per packet, in the spirit of tcpdump's lines, with the hops indented
//! under it, the NAT step shown where it happens, and a latency table per flow at the end.

use std::{
    borrow::Cow,
    io::{self, Write},
};

use rustc_hash::FxHashMap;
use tracer_common::wire::tcp;

use super::{
    Output, RunStats, duration, encap_text, endpoint, icmp_text, process_text, tcp_flags, tuple,
};
use crate::{
    correlate::{
        Direction, FlowSummary, HopLabel, NatRecord, NatSource, PacketTrace, Record,
        verdict::{Kind, Verdict, is_normal_free},
    },
    decode::{Encap, HopEvent, Proto, Tuple},
    names::NameTable,
};

/// Width of each of the two time columns of a hop line (`+4.5us`, `21.1us`).
const TIME: usize = 11;
/// Where the place column of hop lines starts, after the two time columns: the lines that say
/// what happened between two hops (ENCAP, DECAP, NAT, nft, DROPPED) start there too. The time
/// columns have a fixed width, so this does not move when names widen the columns after it.
const INDENT: usize = 2 + TIME + 1 + TIME + 2;
/// The narrowest place, interface and hook columns of hop lines, wide enough for common names.
const HOP_COLUMNS: HopColumns = HopColumns {
    place: 17,
    ifname: 15,
    hook: 19,
};
/// The narrowest `from` and `to` columns of a flow's latency table.
const CELL: usize = 44;
/// Places whose names are kept; the cache starts over beyond this.
const MAX_PLACES: usize = 4096;

/// Writes records as text.
pub struct TextWriter<W: Write> {
    out: W,
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC, to print wall-clock times for kernel timestamps.
    realtime_offset_ns: i128,
    places: Places,
}

impl<W: Write> TextWriter<W> {
    pub fn new(out: W, realtime_offset_ns: i128) -> Self {
        TextWriter {
            out,
            realtime_offset_ns,
            places: Places::default(),
        }
    }

    fn packet(&mut self, packet: &PacketTrace, names: &NameTable) -> io::Result<()> {
        let Some(first) = packet.hops.first() else {
            return Ok(());
        };
        let process = packet
            .process
            .as_ref()
            .map(|owner| format!("  from {}", process_text(owner, names)))
            .unwrap_or_default();
        writeln!(
            self.out,
            "{} {}  (packet {}, flow {} {}){process}",
            clock(first.event.ts_ns, self.realtime_offset_ns),
            summary(&first.event),
            packet.packet_id,
            packet.flow_id,
            packet.direction.name(),
        )?;
        let columns = self.hop_columns(packet, names);
        let mut shown: Option<Tuple> = None;
        let mut outer: Option<&Encap> = None;
        for (at, hop) in packet.hops.iter().enumerate() {
            let event = &hop.event;
            // Where outer headers are added, changed or removed.
            match (outer, event.encap.as_deref()) {
                (before, Some(now)) if before != Some(now) => {
                    writeln!(self.out, "{:INDENT$}ENCAP {}", "", encap_text(now))?;
                }
                (Some(before), None) => {
                    writeln!(self.out, "{:INDENT$}DECAP {}", "", encap_text(before))?;
                }
                _ => {}
            }
            outer = event.encap.as_deref();
            let changed = event.has_l4 && shown.is_some_and(|t| t != event.tuple);
            if changed && let Some(before) = shown {
                let mut line = rewrite(&before, &event.tuple);
                let mut by = Vec::new();
                // IPVS rewrote the virtual service's address; a rule may have done the rest.
                if event.ipvs {
                    by.push("IPVS".to_owned());
                }
                if let Some((_, rule)) = packet.nat_rules.iter().find(|(hop, _)| *hop == at) {
                    by.push(rule.describe());
                }
                if !by.is_empty() {
                    line += &format!("  by {}", by.join("; "));
                }
                writeln!(self.out, "{:INDENT$}{line}", "")?;
            }
            let since_prev = duration(hop.since_prev_ns);
            write!(
                self.out,
                "  {:>pad$}+{since_prev} {:>TIME$}  {:<place_width$} {:<ifname_width$} ",
                "",
                duration(hop.since_first_ns),
                self.places.get(event.netns_inode, names),
                ifname(&HopLabel::of(hop)),
                // `+` and the duration, right-aligned together.
                pad = (TIME - 1).saturating_sub(since_prev.len()),
                place_width = columns.place,
                ifname_width = columns.ifname,
            )?;
            let hook = hook_text(event, names);
            if changed || shown.is_none() {
                writeln!(
                    self.out,
                    "{hook:<hook_width$} {}",
                    tuple(&event.tuple),
                    hook_width = columns.hook
                )?;
            } else {
                writeln!(self.out, "{hook}")?;
            }
            for (_, walk) in packet.walks.iter().filter(|(hop, _)| *hop == at) {
                for rule in walk {
                    // A policy says its verdict already.
                    let verdict = match rule.handle {
                        Some(_) => format!("  [{}]", rule.verdict),
                        None => String::new(),
                    };
                    writeln!(self.out, "{:INDENT$}nft {}{verdict}", "", rule.describe())?;
                }
            }
            if event.has_l4 || shown.is_none() {
                shown = Some(event.tuple);
            }
        }
        if let Some(last) = packet.hops.last()
            && let Some(drop) = last.event.drop
            && !is_normal_free(
                &names.drop_reason(drop.reason),
                &names.symbol(drop.location),
            )
        {
            writeln!(
                self.out,
                "{:INDENT$}DROPPED in {} at {}: {}",
                "",
                self.places.get(last.event.netns_inode, names),
                names.symbol(drop.location),
                names.drop_reason(drop.reason),
            )?;
            if let Some(rule) = &packet.drop_rule {
                writeln!(self.out, "{:INDENT$}by {}", "", rule.describe())?;
            }
        }
        Ok(())
    }

    /// The widths of the place, interface and hook columns of a packet's hop lines: its
    /// widest, or the usual widths where those are wider.
    fn hop_columns(&mut self, packet: &PacketTrace, names: &NameTable) -> HopColumns {
        let mut columns = HOP_COLUMNS;
        for hop in &packet.hops {
            let place = self.places.get(hop.event.netns_inode, names);
            columns.place = columns.place.max(place.chars().count());
            let label = HopLabel::of(hop);
            columns.ifname = columns.ifname.max(ifname(&label).chars().count());
            columns.hook = columns.hook.max(hook_text(&hop.event, names).len());
        }
        columns
    }

    fn nat(&mut self, nat: &NatRecord) -> io::Result<()> {
        write!(
            self.out,
            "flow {} {} {} (from conntrack): {} -> {}",
            nat.flow_id,
            nat.direction.name(),
            nat.kind.name(),
            tuple(&nat.before),
            tuple(&nat.after),
        )?;
        match &nat.rule {
            Some(rule) => writeln!(self.out, "  by {}", rule.describe()),
            None => writeln!(self.out),
        }
    }

    fn flow(&mut self, flow: &FlowSummary, names: &NameTable) -> io::Result<()> {
        writeln!(
            self.out,
            "flow {} {} {}, reply {}: {} original, {} reply packets",
            flow.flow_id,
            flow.orig.proto.name(),
            tuple(&flow.orig),
            tuple(&flow.reply),
            flow.packets[Direction::Original as usize],
            flow.packets[Direction::Reply as usize],
        )?;
        if let Some(verdict) = &flow.verdict {
            writeln!(self.out, "  verdict: {}", verdict_text(verdict, names))?;
            if verdict.kind != Kind::Delivered {
                writeln!(self.out, "  advice: {}", verdict.advice)?;
            }
        }
        if flow.hops.is_empty() {
            return Ok(());
        }
        let mut width = CELL;
        for pair in &flow.hops {
            for label in [&pair.from, &pair.to] {
                width = width.max(cell_len(self.places.get(label.netns_inode, names), label));
            }
        }
        writeln!(
            self.out,
            "  {:<8}  {:<width$} {:<width$} {:>6} {:>9} {:>9} {:>9} {:>9}",
            "dir", "from", "to", "count", "min", "p50", "p99", "max"
        )?;
        for pair in &flow.hops {
            write!(self.out, "  {:<8}  ", pair.direction.name())?;
            for label in [&pair.from, &pair.to] {
                let place = self.places.get(label.netns_inode, names);
                let pad = width - cell_len(place, label);
                write!(
                    self.out,
                    "{place} {} {}{:pad$} ",
                    ifname(label),
                    label.hook.name(),
                    ""
                )?;
            }
            let l = &pair.latency;
            writeln!(
                self.out,
                "{:>6} {:>9} {:>9} {:>9} {:>9}",
                l.count,
                duration(l.min_ns),
                duration(l.p50_ns),
                duration(l.p99_ns),
                duration(l.max_ns),
            )?;
        }
        Ok(())
    }
}

impl<W: Write> Output for TextWriter<W> {
    fn record(&mut self, record: &Record, names: &NameTable) -> io::Result<()> {
        match record {
            Record::Packet(packet) => self.packet(packet, names),
            // Observed translations are shown inside the packet; only those known from
            // conntrack alone need a line of their own.
            Record::Nat(nat) if nat.source == NatSource::Conntrack => self.nat(nat),
            Record::Nat(_) => Ok(()),
            Record::Flow(flow) => self.flow(flow, names),
        }
    }

    fn stats(&mut self, stats: &RunStats) -> io::Result<()> {
        writeln!(
            self.out,
            "{} events, {} lost, {} malformed; {} packets in {} flows",
            stats.events, stats.lost, stats.malformed, stats.packets, stats.flows
        )?;
        self.out.flush()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// `tcp 1.2.3.4:5 > 6.7.8.9:10 [S] seq 1 ack 0 len 60`
fn summary(event: &HopEvent) -> String {
    let mut text = format!("{} {}", event.tuple.proto.name(), tuple(&event.tuple));
    if event.tuple.proto == Proto::TCP && event.has_l4 {
        text += &format!(" [{}] seq {}", tcp_flags(event.tcp_flags), event.tcp_seq);
        if event.tcp_flags & tcp::ACK != 0 {
            text += &format!(" ack {}", event.tcp_ack);
        }
    }
    if event.fragment {
        text += " fragment";
    }
    if let Some(error) = &event.icmp {
        text += &format!(" {}", icmp_text(error));
    }
    text + &format!(" len {}", event.ip_len)
}

/// `NAT src 172.17.0.2:51116 -> 198.18.0.2:51116` for what changed between two hops.
fn rewrite(before: &Tuple, after: &Tuple) -> String {
    let mut parts = Vec::new();
    if (before.src, before.src_port) != (after.src, after.src_port) {
        parts.push(format!(
            "src {} -> {}",
            endpoint(before.src, before.src_port),
            endpoint(after.src, after.src_port)
        ));
    }
    if (before.dst, before.dst_port) != (after.dst, after.dst_port) {
        parts.push(format!(
            "dst {} -> {}",
            endpoint(before.dst, before.dst_port),
            endpoint(after.dst, after.dst_port)
        ));
    }
    format!("NAT {}", parts.join(", "))
}

/// The interface of a hop: its name, `if<index>` where it has none, or `(socket)`.
pub(super) fn ifname(label: &HopLabel) -> Cow<'_, str> {
    if label.ifname.is_empty() && label.ifindex == 0 {
        // Freed with no device: by the socket that had it.
        Cow::Borrowed("(socket)")
    } else if label.ifname.is_empty() {
        Cow::Owned(format!("if{}", label.ifindex))
    } else {
        label.ifname.as_str()
    }
}

/// The hook of a hop line: its hook, or `delivered` where a socket frees the packet it
/// consumed, which is its delivery, not a drop.
fn hook_text(event: &HopEvent, names: &NameTable) -> &'static str {
    let delivered = event.drop.is_some_and(|drop| {
        is_normal_free(
            &names.drop_reason(drop.reason),
            &names.symbol(drop.location),
        )
    });
    if delivered {
        "delivered"
    } else {
        event.hook.name()
    }
}

/// `dropped in host at docker0 kfree_skb (NETFILTER_DROP in nft_do_chain+0x46f) by ip filter
/// FORWARD: ...; 2 retransmitted`: a flow's verdict in one line.
pub(super) fn verdict_text(verdict: &Verdict, names: &NameTable) -> String {
    let mut text = verdict.kind.name().to_owned();
    if let Some(at) = &verdict.place {
        let preposition = if verdict.kind == Kind::Unanswered {
            ", last seen"
        } else {
            ""
        };
        text += &format!(
            "{preposition} in {} at {} {}",
            names.place(at.netns_inode),
            ifname(at),
            at.hook.name()
        );
    }
    match (&verdict.reason, verdict.location) {
        (Some(reason), Some(location)) => {
            text += &format!(" ({reason} in {})", names.symbol(location));
        }
        (Some(reason), None) => text += &format!(" ({reason})"),
        _ => {}
    }
    if let Some(mtu) = verdict.mtu {
        text += &format!(", mtu {mtu}");
    }
    if let Some(rule) = &verdict.rule {
        text += &format!(" by {}", rule.describe());
    }
    if verdict.packets > 1 {
        text += &format!("; {} packets", verdict.packets);
    }
    if verdict.retransmitted > 0 {
        text += &format!("; {} retransmitted", verdict.retransmitted);
    }
    text
}

/// The length of `place ifname hook`, a cell of a flow's latency table, in characters.
fn cell_len(place: &str, label: &HopLabel) -> usize {
    place.chars().count() + 1 + ifname(label).chars().count() + 1 + label.hook.name().len()
}

/// The widths of the columns of hop lines that hold names.
#[derive(Debug, Clone, Copy)]
struct HopColumns {
    place: usize,
    ifname: usize,
    hook: usize,
}

/// The names of the places seen, kept while the names stay the same: a packet's hops are in a
/// few places, and each is named for the width of its column and again on its line.
#[derive(Default)]
struct Places {
    version: u64,
    names: FxHashMap<u64, Box<str>>,
}

impl Places {
    /// The name of the namespace with `inode`, as [`NameTable::place`] gives it.
    fn get(&mut self, inode: u64, names: &NameTable) -> &str {
        if self.version != names.places_version() || self.names.len() >= MAX_PLACES {
            self.version = names.places_version();
            self.names.clear();
        }
        self.names
            .entry(inode)
            .or_insert_with(|| names.place(inode).into_boxed_str())
    }
}

/// `HH:MM:SS.micros` (UTC) of a kernel monotonic timestamp.
fn clock(ts_ns: u64, realtime_offset_ns: i128) -> String {
    let wall = (i128::from(ts_ns) + realtime_offset_ns).max(0) as u128;
    let micros = (wall / 1_000) % 1_000_000;
    let secs = (wall / 1_000_000_000) % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:06}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60,
        micros
    )
}

#[cfg(test)]
mod tests;
