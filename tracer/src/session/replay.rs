//! `tracer replay`: a recording (`--record`) through the same session a live trace uses,
//! without the kernel. The events' own timestamps are the clock, so packets complete and flows
//! end as they did live.

use super::Session;
use crate::{
    decode::{Decoder, Entry},
    output::RunStats,
    recording::Source,
};

/// Records between two clock ticks.
const TICK_EVERY: u64 = 1024;

/// Feeds every record of `input` to `session` and finishes it.
pub fn run(input: &mut Source, mut session: Session<'_>) -> anyhow::Result<RunStats> {
    let (mut events, mut malformed) = (0, 0);
    let mut latest = 0;
    let mut decoder = Decoder::new();
    while let Some(record) = input.next_record()? {
        // Packet events are counted; a socket's record only names processes.
        match decoder.entry(record) {
            Entry::Event(event) => {
                events += 1;
                latest = latest.max(event.ts_ns);
                session.push([event]);
            }
            Entry::Names(names) => {
                let boot_id = names.boot_id.clone().unwrap_or_default();
                if session.name_from_recording(names) {
                    eprintln!(
                        "tracer: the recording was made in another boot (boot id {boot_id}): \
                         drop locations it does not name itself are shown as addresses, \
                         which this machine's kallsyms cannot name"
                    );
                }
            }
            Entry::Nothing => {}
            Entry::Malformed => {
                events += 1;
                malformed += 1;
            }
        }
        if events % TICK_EVERY == 0 {
            session.tick(latest);
            session.write_ready()?;
        }
    }
    Ok(session.finish(|stats| {
        stats.events = events;
        stats.malformed = malformed;
    })?)
}
