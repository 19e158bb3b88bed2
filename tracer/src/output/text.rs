//! Text output: one block per packet, in the spirit of tcpdump's lines, with the hops indented
//! under it, the NAT step shown where it happens, and a latency table per flow at the end.

use std::io::{self, Write};

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

/// Writes records as text.
pub struct TextWriter<W: Write> {
    out: W,
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC, to print wall-clock times for kernel timestamps.
    realtime_offset_ns: i128,
}

impl<W: Write> TextWriter<W> {
    pub fn new(out: W, realtime_offset_ns: i128) -> Self {
        TextWriter {
            out,
            realtime_offset_ns,
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
        let mut shown: Option<Tuple> = None;
        let mut outer: Option<&Encap> = None;
        for (at, hop) in packet.hops.iter().enumerate() {
            let event = &hop.event;
            // Where outer headers are added, changed or removed.
            match (outer, event.encap.as_deref()) {
                (before, Some(now)) if before != Some(now) => {
                    writeln!(self.out, "{:>27}ENCAP {}", "", encap_text(now))?;
                }
                (Some(before), None) => {
                    writeln!(self.out, "{:>27}DECAP {}", "", encap_text(before))?;
                }
                _ => {}
            }
            outer = event.encap.as_deref();
            let changed = event.has_l4 && shown.is_some_and(|t| t != event.tuple);
            if changed && let Some(before) = shown {
                let mut line = rewrite(&before, &event.tuple);
                if let Some((_, rule)) = packet.nat_rules.iter().find(|(hop, _)| *hop == at) {
                    line += &format!("  by {}", rule.describe());
                }
                writeln!(self.out, "{:>27}{line}", "")?;
            }
            let label = HopLabel::of(hop);
            let tuple_text = if changed || shown.is_none() {
                tuple(&event.tuple)
            } else {
                String::new()
            };
            // A socket freeing the packet it consumed is its delivery, not a drop.
            let delivered = event.drop.is_some_and(|drop| {
                is_normal_free(
                    &names.drop_reason(drop.reason),
                    &names.symbol(drop.location),
                )
            });
            let line = format!(
                "  {:>11} {:>11}  {:<17} {:<15} {:<19} {}",
                format!("+{}", duration(hop.since_prev_ns)),
                duration(hop.since_first_ns),
                names.place(event.netns_inode),
                ifname(&label),
                if delivered {
                    "delivered"
                } else {
                    event.hook.name()
                },
                tuple_text,
            );
            writeln!(self.out, "{}", line.trim_end())?;
            for (_, walk) in packet.walks.iter().filter(|(hop, _)| *hop == at) {
                for rule in walk {
                    // A policy says its verdict already.
                    let verdict = match rule.handle {
                        Some(_) => format!("  [{}]", rule.verdict),
                        None => String::new(),
                    };
                    writeln!(self.out, "{:>27}nft {}{verdict}", "", rule.describe())?;
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
                "{:>27}DROPPED in {} at {}: {}",
                "",
                names.place(last.event.netns_inode),
                names.symbol(drop.location),
                names.drop_reason(drop.reason),
            )?;
            if let Some(rule) = &packet.drop_rule {
                writeln!(self.out, "{:>27}by {}", "", rule.describe())?;
            }
        }
        Ok(())
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
        writeln!(
            self.out,
            "  {:<8}  {:<44} {:<44} {:>6} {:>9} {:>9} {:>9} {:>9}",
            "dir", "from", "to", "count", "min", "p50", "p99", "max"
        )?;
        for pair in &flow.hops {
            let l = &pair.latency;
            writeln!(
                self.out,
                "  {:<8}  {:<44} {:<44} {:>6} {:>9} {:>9} {:>9} {:>9}",
                pair.direction.name(),
                place(&pair.from, names),
                place(&pair.to, names),
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

fn ifname(label: &HopLabel) -> String {
    if label.ifname.is_empty() && label.ifindex == 0 {
        // Freed with no device: by the socket that had it.
        "(socket)".to_owned()
    } else if label.ifname.is_empty() {
        format!("if{}", label.ifindex)
    } else {
        label.ifname.to_string()
    }
}

/// `dropped in host at docker0 kfree_skb (NETFILTER_DROP in nft_do_chain+0x46f) by ip filter
/// FORWARD: ...; 2 retransmitted`: a flow's verdict in one line.
fn verdict_text(verdict: &Verdict, names: &NameTable) -> String {
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

fn place(label: &HopLabel, names: &NameTable) -> String {
    format!(
        "{} {} {}",
        names.place(label.netns_inode),
        ifname(label),
        label.hook.name()
    )
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
