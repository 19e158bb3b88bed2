//! Reads the ring buffer and hands decoded events on in batches.
//!
//! The reader waits for the ring buffer's descriptor to become readable (tokio `AsyncFd`),
//! drains every record that is there, decodes it and sends the batch to the next stage. On
//! shutdown it drains once more, so events committed before the stop are not lost.

use std::{
    io::{self, Read, Write},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::mpsc, sync::watch};

use crate::decode::{HopEvent, decode};

/// Records that failed to decode, counted for the final statistics.
#[derive(Debug, Default)]
pub struct ReaderStats {
    pub records: AtomicU64,
    pub malformed: AtomicU64,
}

/// Upper bound on one batch, to keep latency and memory in check under load.
const MAX_BATCH: usize = 4096;

/// Where raw records are copied to with `--record`: each record as a little-endian `u32`
/// length followed by its bytes, the format [`read_recording`] reads back.
pub type Recorder = Box<dyn Write + Send>;

/// Reads `ring` until `stop` turns true, then drains it and returns.
pub async fn run(
    ring: RingBuf<MapData>,
    batches: mpsc::Sender<Vec<HopEvent>>,
    mut stop: watch::Receiver<bool>,
    stats: Arc<ReaderStats>,
    mut recorder: Option<Recorder>,
) -> anyhow::Result<()> {
    // SAFETY: the ring buffer owns its descriptor and is moved into the AsyncFd, so the
    // descriptor stays open for as long as it is registered.
    let mut ring = unsafe { AsyncFd::register(ring) }.map_err(|err| err.into_parts().1)?;
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let more = drain(guard.get_inner_mut(), &batches, &stats, &mut recorder).await?;
                guard.clear_ready();
                if !more {
                    return Ok(());
                }
            }
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    drain(ring.get_mut(), &batches, &stats, &mut recorder).await?;
                    if let Some(recorder) = recorder.as_mut() {
                        recorder.flush()?;
                    }
                    return Ok(());
                }
            }
        }
    }
}

/// Sends everything in the ring. Returns false when the receiver is gone.
async fn drain(
    ring: &mut RingBuf<MapData>,
    batches: &mpsc::Sender<Vec<HopEvent>>,
    stats: &ReaderStats,
    recorder: &mut Option<Recorder>,
) -> io::Result<bool> {
    loop {
        let mut batch = Vec::new();
        while batch.len() < MAX_BATCH {
            let Some(item) = ring.next() else { break };
            stats.records.fetch_add(1, Ordering::Relaxed);
            if let Some(recorder) = recorder.as_mut() {
                recorder.write_all(&(item.len() as u32).to_le_bytes())?;
                recorder.write_all(&item)?;
            }
            match decode(&item) {
                Ok(event) => batch.push(event),
                Err(err) => {
                    if stats.malformed.fetch_add(1, Ordering::Relaxed) == 0 {
                        log::warn!("dropping malformed event: {err}");
                    }
                }
            }
        }
        let full = batch.len() == MAX_BATCH;
        if !batch.is_empty() && batches.send(batch).await.is_err() {
            return Ok(false);
        }
        if !full {
            return Ok(true);
        }
    }
}

/// Reads records written by a [`Recorder`] back one at a time, for replay without the kernel.
pub struct Recording<R> {
    input: R,
}

impl<R: Read> Recording<R> {
    pub fn new(input: R) -> Self {
        Recording { input }
    }

    /// Reads the next record into `record`; false at the end of the recording.
    pub fn next_into(&mut self, record: &mut Vec<u8>) -> io::Result<bool> {
        let mut len = [0u8; 4];
        match self.input.read_exact(&mut len) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(err) => return Err(err),
        }
        record.resize(u32::from_le_bytes(len) as usize, 0);
        self.input.read_exact(record)?;
        Ok(true)
    }
}

/// Every record of a recording.
pub fn read_recording(input: impl Read) -> io::Result<Vec<Vec<u8>>> {
    let mut recording = Recording::new(input);
    let mut records = Vec::new();
    let mut record = Vec::new();
    while recording.next_into(&mut record)? {
        records.push(std::mem::take(&mut record));
    }
    Ok(records)
}
