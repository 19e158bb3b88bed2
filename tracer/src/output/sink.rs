//! The chosen output on stdout, with the record-level decisions: `-c`, and the selection
//! (`-i`, `--container`, `--netns`) that decides which packets and flows are shown.

use std::{
    collections::{BTreeSet, HashSet},
    fs::File,
    io,
};

use super::{RunStats, json::JsonWriter, pcapng::PcapngWriter, text::TextWriter};
use crate::{
    cli::Format,
    correlate::{Correlator, PacketTrace, Record},
    names::{NameTable, kernel_symbol},
    select::{Place, touches},
};

/// Writes records to stdout in one format.
pub struct Sink {
    writer: Writer,
    places: BTreeSet<Place>,
    count: Option<u64>,
    /// Flows with a shown packet, when a selection hides some.
    shown_flows: HashSet<u64>,
    /// `-w`: every shown packet's hops also go to a pcapng file.
    pcapng: Option<PcapngWriter<io::BufWriter<File>>>,
}

enum Writer {
    Text(TextWriter<io::BufWriter<io::Stdout>>),
    Json(JsonWriter<io::BufWriter<io::Stdout>>),
}

impl Sink {
    pub fn new(
        format: Format,
        realtime_offset_ns: i128,
        places: BTreeSet<Place>,
        count: Option<u64>,
    ) -> Sink {
        let out = io::BufWriter::new(io::stdout());
        let writer = match format {
            Format::Text => Writer::Text(TextWriter::new(out, realtime_offset_ns)),
            Format::Json => Writer::Json(JsonWriter::new(out)),
        };
        Sink {
            writer,
            places,
            count,
            shown_flows: HashSet::new(),
            pcapng: None,
        }
    }

    /// Also writes shown packets to a pcapng file.
    pub fn write_pcapng(&mut self, writer: PcapngWriter<io::BufWriter<File>>) {
        self.pcapng = Some(writer);
    }

    /// Writes what the correlator has ready. Returns true once `-c` packets were written;
    /// later packets are not written.
    pub fn write_ready(
        &mut self,
        correlator: &mut Correlator,
        names: &mut NameTable,
        stats: &mut RunStats,
    ) -> io::Result<bool> {
        let mut wrote = false;
        while let Some(record) = correlator.pop() {
            if !self.shown(&record, stats) {
                continue;
            }
            if let Record::Packet(packet) = &record {
                name_drop_locations(packet, names);
                if let Some(pcapng) = &mut self.pcapng {
                    pcapng.packet(packet, names).map_err(io::Error::other)?;
                }
            }
            wrote = true;
            match &mut self.writer {
                Writer::Text(w) => w.record(&record, names)?,
                Writer::Json(w) => w.record(&record, names)?,
            }
        }
        if wrote {
            match &mut self.writer {
                Writer::Text(w) => w.flush()?,
                Writer::Json(w) => w.flush()?,
            }
            if let Some(pcapng) = &mut self.pcapng {
                pcapng.flush()?;
            }
        }
        Ok(self.count.is_some_and(|n| stats.packets >= n))
    }

    /// Whether to show `record`, counting what is shown.
    fn shown(&mut self, record: &Record, stats: &mut RunStats) -> bool {
        let selective = !self.places.is_empty();
        match record {
            Record::Packet(packet) => {
                if self.count.is_some_and(|n| stats.packets >= n) || !touches(packet, &self.places)
                {
                    return false;
                }
                if selective {
                    self.shown_flows.insert(packet.flow_id);
                }
                stats.packets += 1;
                true
            }
            Record::Nat(nat) => !selective || self.shown_flows.contains(&nat.flow_id),
            Record::Flow(flow) => {
                let shown = !selective || self.shown_flows.remove(&flow.flow_id);
                if shown {
                    stats.flows += 1;
                }
                shown
            }
        }
    }

    pub fn stats(&mut self, stats: &RunStats) -> io::Result<()> {
        match &mut self.writer {
            Writer::Text(w) => w.stats(stats),
            Writer::Json(w) => w.stats(stats),
        }
    }
}

/// Looks up the kernel functions that dropped the packet, once per address.
fn name_drop_locations(packet: &PacketTrace, names: &mut NameTable) {
    for hop in &packet.hops {
        if let Some(drop) = hop.event.drop
            && !names.has_symbol(drop.location)
            && let Some(symbol) = kernel_symbol(drop.location)
        {
            names.set_symbol(drop.location, symbol);
        }
    }
}
