//! pcapng output (`-w FILE`): every hop becomes a packet record on an interface block named
//! after the hop's interface and namespace or container, with a comment carrying the flow,
//! the packet, the hook and the latency, so that Wireshark and tshark show the path.

use std::{
    borrow::Cow,
    collections::HashMap,
    io::{self, Write},
    time::Duration,
};

use pcap_file::{
    DataLink,
    pcapng::{
        PcapNgWriter,
        blocks::{
            enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption},
            interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
        },
    },
};

use super::{Output, RunStats, duration, encap_text, icmp_text, process_text};
use crate::{
    correlate::{HopLabel, PacketTrace, Record},
    names::NameTable,
};

/// Writes hops as pcapng packet records.
pub struct PcapngWriter<W: Write> {
    writer: PcapNgWriter<W>,
    /// Interface block ids by (namespace inode, ifindex, name).
    interfaces: HashMap<(u64, u32, [u8; 16]), u32>,
    snap_len: u32,
    realtime_offset_ns: i128,
}

impl<W: Write> PcapngWriter<W> {
    pub fn new(out: W, snap_len: u32, realtime_offset_ns: i128) -> anyhow::Result<Self> {
        Ok(PcapngWriter {
            writer: PcapNgWriter::new(out)?,
            interfaces: HashMap::new(),
            snap_len,
            realtime_offset_ns,
        })
    }

    /// One packet record per hop that carries the packet's bytes.
    pub fn packet(&mut self, packet: &PacketTrace, names: &NameTable) -> anyhow::Result<()> {
        let count = packet.hops.len();
        for (index, hop) in packet.hops.iter().enumerate() {
            let Some(headers) = &hop.event.headers else {
                continue;
            };
            let interface_id = self.interface(&HopLabel::of(hop), names)?;
            let wall = (i128::from(hop.event.ts_ns) + self.realtime_offset_ns).max(0) as u64;
            let mut comment = format!(
                "flow {} packet {} {}, hop {}/{count}: {} {} in {}, +{} (total {})",
                packet.flow_id,
                packet.packet_id,
                packet.direction.name(),
                index + 1,
                hop.event.hook.name(),
                hop.event.ifname,
                names.place(hop.event.netns_inode),
                duration(hop.since_prev_ns),
                duration(hop.since_first_ns),
            );
            if let Some(owner) = &packet.process {
                comment += &format!(", from {}", process_text(owner, names));
            }
            if let Some(outer) = &hop.event.encap {
                comment += &format!(", encapsulated: {}", encap_text(outer));
            }
            if let Some(error) = &hop.event.icmp {
                comment += &format!(", {}", icmp_text(error));
            }
            if let Some((_, rule)) = packet.nat_rules.iter().find(|(at, _)| *at == index) {
                comment += &format!(", NAT by {}", rule.describe());
            }
            if let Some(drop) = hop.event.drop {
                comment += &format!(
                    ", dropped: {} in {}",
                    names.drop_reason(drop.reason),
                    names.symbol(drop.location)
                );
                if let Some(rule) = &packet.drop_rule {
                    comment += &format!(" by {}", rule.describe());
                }
            }
            self.writer.write_pcapng_block(EnhancedPacketBlock {
                interface_id,
                timestamp: Duration::from_nanos(wall),
                // The record starts at the outer IP header of an encapsulated packet.
                original_len: u32::from(
                    hop.event
                        .encap
                        .as_ref()
                        .map_or(hop.event.ip_len, |e| e.ip_len),
                )
                .max(headers.len() as u32),
                data: Cow::Borrowed(headers),
                options: vec![EnhancedPacketOption::Comment(Cow::Owned(comment))],
            })?;
        }
        Ok(())
    }

    /// The interface block for a hop's interface, written the first time it is needed.
    fn interface(&mut self, label: &HopLabel, names: &NameTable) -> anyhow::Result<u32> {
        let key = (label.netns_inode, label.ifindex, label.ifname.0);
        if let Some(&id) = self.interfaces.get(&key) {
            return Ok(id);
        }
        let place = names.place(label.netns_inode);
        let ifname = if label.ifname.is_empty() {
            "(no device)".to_owned()
        } else {
            label.ifname.to_string()
        };
        let block = InterfaceDescriptionBlock {
            linktype: DataLink::RAW,
            snaplen: self.snap_len,
            options: vec![
                InterfaceDescriptionOption::IfName(Cow::Owned(format!("{ifname}@{place}"))),
                InterfaceDescriptionOption::IfDescription(Cow::Owned(format!(
                    "{ifname} (ifindex {}) in {place} (netns inode {})",
                    label.ifindex, label.netns_inode
                ))),
                // Nanosecond timestamps.
                InterfaceDescriptionOption::IfTsResol(9),
            ],
        };
        self.writer.write_pcapng_block(block)?;
        let id = self.interfaces.len() as u32;
        self.interfaces.insert(key, id);
        Ok(id)
    }
}

impl<W: Write> Output for PcapngWriter<W> {
    /// Packets only: NAT and flows are in the packets' comments.
    fn record(&mut self, record: &Record, names: &NameTable) -> io::Result<()> {
        match record {
            Record::Packet(packet) => self.packet(packet, names).map_err(io::Error::other),
            Record::Nat(_) | Record::Flow(_) => Ok(()),
        }
    }

    fn stats(&mut self, _stats: &RunStats) -> io::Result<()> {
        self.flush()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.get_mut().flush()
    }
}
