//! The format of `--record` files: each raw ring buffer record as a little-endian `u32` length
//! followed by its bytes. The reader writes it; `tracer replay`, the golden tests and the
//! benchmarks read it back. A live trace's recording starts with one record of its own, the
//! [`Names`] a replay cannot learn from the events.

use std::{
    collections::HashMap,
    io::{self, Read, Write},
};

/// The first byte of a [`Names`] record. Not an `EventKind`: those are the small numbers the
/// kernel programs write first in theirs.
pub const NAMES: u8 = 0xa5;

/// What a replay cannot learn from the events: the names the recording kernel gives its drop
/// reasons (`enum skb_drop_reason`), whose values change between kernel versions. Recordings
/// made before it have none and replay with drop reasons as numbers.
#[derive(Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Names {
    pub drop_reasons: HashMap<u32, String>,
}

/// Appends the [`Names`] record.
pub fn write_names(out: &mut impl Write, names: &Names) -> io::Result<()> {
    let mut record = vec![NAMES];
    serde_json::to_writer(&mut record, names)?;
    write(out, &record)
}

/// The names in `record`, when it is a [`Names`] record (an error when it is one that does
/// not parse).
pub fn read_names(record: &[u8]) -> Option<Result<Names, serde_json::Error>> {
    let (&first, json) = record.split_first()?;
    (first == NAMES).then(|| serde_json::from_slice(json))
}

/// Where raw records are copied to with `--record`.
pub type Recorder = Box<dyn Write + Send>;

/// Appends one record.
pub fn write(out: &mut impl Write, record: &[u8]) -> io::Result<()> {
    let len = u32::try_from(record.len()).map_err(io::Error::other)?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(record)
}

/// Reads records written by [`write`] back one at a time, for replay without the kernel.
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

/// The records of a whole recording held in memory, and what follows the last record that
/// fits its length prefix: nothing for a complete recording, a record cut short when the
/// writer was killed, or all of it when the bytes are not a recording.
pub fn split(bytes: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let mut records = Vec::new();
    let mut rest = bytes;
    while let Some((len, tail)) = rest.split_first_chunk::<4>() {
        let len = u32::from_le_bytes(*len) as usize;
        if len == 0 || len > tail.len() {
            break;
        }
        let (record, tail) = tail.split_at(len);
        records.push(record);
        rest = tail;
    }
    (records, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names come back from a recording as they were written, and only from their record.
    #[test]
    fn names_travel_in_their_own_record() {
        let names = Names {
            drop_reasons: HashMap::from([
                (2, "NOT_SPECIFIED".to_owned()),
                (5, "NETFILTER_DROP".to_owned()),
            ]),
        };
        let mut bytes = Vec::new();
        write_names(&mut bytes, &names).unwrap();
        write(&mut bytes, &[1, 0, 0, 0]).unwrap();
        let records = read_recording(&bytes[..]).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(read_names(&records[0]).unwrap().unwrap(), names);
        assert!(read_names(&records[1]).is_none());
        assert!(read_names(&[]).is_none());
        assert!(read_names(&[NAMES, b'{']).unwrap().is_err());
    }
}
