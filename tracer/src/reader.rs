//! Reads the ring buffer and hands decoded events on in batches.
//!
//! The reader waits for the ring buffer's descriptor to become readable (tokio `AsyncFd`),
//! drains every record that is there, decodes it and sends the batch to the next stage. On
//! shutdown it drains once more, so events committed before the stop are not lost.

use std::{
    io::{self, Write},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::mpsc, sync::watch};

use crate::{
    clock::monotonic_ns,
    decode::{Decoder, HopEvent},
    recording::{self, SharedRecorder},
};

/// What the reader has done, shared with the session.
#[derive(Debug, Default)]
pub struct ReaderStats {
    /// Packet events read (the sockets' records, which name processes, are not counted).
    pub records: AtomicU64,
    /// Records that failed to decode.
    pub malformed: AtomicU64,
    /// Every event stamped before this kernel monotonic time has been read and handed over.
    pub drained_at: AtomicU64,
}

/// How long before a drain started an event may have been stamped and still not be committed
/// to the ring (programs stamp, then write).
const COMMIT_MARGIN_NS: u64 = 5_000_000;
/// How often the reader drains an idle ring, to keep `drained_at` moving.
const IDLE_DRAIN: std::time::Duration = std::time::Duration::from_millis(20);

/// Upper bound on one batch, to keep latency and memory in check under load.
const MAX_BATCH: usize = 4096;

/// Reads `ring` until `stop` turns true, then drains it and returns.
pub async fn run(
    ring: RingBuf<MapData>,
    batches: mpsc::Sender<Vec<HopEvent>>,
    mut stop: watch::Receiver<bool>,
    stats: Arc<ReaderStats>,
    recorder: Option<SharedRecorder>,
) -> anyhow::Result<()> {
    // SAFETY: the ring buffer owns its descriptor and is moved into the AsyncFd, so the
    // descriptor stays open for as long as it is registered.
    let mut ring = unsafe { AsyncFd::register(ring) }.map_err(|err| err.into_parts().1)?;
    let mut idle = tokio::time::interval(IDLE_DRAIN);
    let mut decoder = Decoder::new();
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let more = drain(guard.get_inner_mut(), &mut decoder, &batches, &stats, recorder.as_ref()).await?;
                guard.clear_ready();
                if !more {
                    return Ok(());
                }
            }
            _ = idle.tick() => {
                if !drain(ring.get_mut(), &mut decoder, &batches, &stats, recorder.as_ref()).await? {
                    return Ok(());
                }
            }
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    drain(ring.get_mut(), &mut decoder, &batches, &stats, recorder.as_ref()).await?;
                    if let Some(recorder) = &recorder {
                        recording::lock(recorder).flush()?;
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
    decoder: &mut Decoder,
    batches: &mpsc::Sender<Vec<HopEvent>>,
    stats: &ReaderStats,
    recorder: Option<&SharedRecorder>,
) -> io::Result<bool> {
    let started = monotonic_ns();
    loop {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let (mut records, mut malformed) = (0, 0);
        // Taken for one batch, and given back before the batch is sent: the session, which
        // the send may wait for, appends to the recording too.
        let mut taken = recorder.map(recording::lock);
        while batch.len() < MAX_BATCH {
            let Some(item) = ring.next() else { break };
            if let Some(recorder) = taken.as_mut() {
                recording::write(&mut **recorder, &item)?;
            }
            // Decoded straight from the ring's memory; the record is released when `item` is
            // dropped.
            // Packet events are counted; a socket's record only names processes.
            match decoder.record(&item) {
                Ok(Some(event)) => {
                    records += 1;
                    batch.push(event);
                }
                Ok(None) => {}
                Err(err) => {
                    records += 1;
                    if malformed == 0 && stats.malformed.load(Ordering::Relaxed) == 0 {
                        log::warn!("dropping malformed event: {err}");
                    }
                    malformed += 1;
                }
            }
        }
        drop(taken);
        stats.records.fetch_add(records, Ordering::Relaxed);
        if malformed > 0 {
            stats.malformed.fetch_add(malformed, Ordering::Relaxed);
        }
        let full = batch.len() == MAX_BATCH;
        if !batch.is_empty() && batches.send(batch).await.is_err() {
            return Ok(false);
        }
        if !full {
            stats
                .drained_at
                .store(started.saturating_sub(COMMIT_MARGIN_NS), Ordering::Release);
            return Ok(true);
        }
    }
}
