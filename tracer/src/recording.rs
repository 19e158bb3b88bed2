//! The format of `--record` files: each raw ring buffer record as a little-endian `u32` length
//! followed by its bytes. The reader writes it; `tracer replay`, the golden tests and the
//! benchmarks read it back. A live trace's recording starts with one record of its own, the
//! [`Names`] a replay cannot learn from the events, and has another wherever the trace named
//! drop locations the recording had not named yet.

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    io::{self, Read, Write},
};

use memmap2::{Advice, Mmap, MmapOptions, UncheckedAdvice};

/// The first byte of a [`Names`] record. Not an `EventKind`: those are the small numbers the
/// kernel programs write first in theirs.
pub const NAMES: u8 = 0xa5;

/// What a replay cannot learn from the events: the names the recording kernel gives its drop
/// reasons (`enum skb_drop_reason`), whose values change between kernel versions, and the boot
/// it was made in, without which a replay cannot know whether this machine's kallsyms names
/// the recording's code addresses (they move at every boot), and the names of the drop
/// locations, so that a replay in another boot, or on another machine, names them too.
/// Recordings made before it have none and replay with drop reasons as numbers.
///
/// The first record names the reasons and the boot; later ones only drop locations, each
/// written by the live trace when it first named them (`kallsyms`), a few milliseconds of
/// events after the drop, long before the dropped packet's record is written.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Names {
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub drop_reasons: HashMap<u32, String>,
    /// `/proc/sys/kernel/random/boot_id` of the recording machine; absent in recordings made
    /// before it was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// Drop locations (code addresses) and their kernel functions (`function+0xoffset`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub drop_locations: BTreeMap<u64, String>,
}

impl Names {
    /// A later record: the names of drop locations.
    pub fn of_locations(locations: impl IntoIterator<Item = (u64, String)>) -> Names {
        Names {
            drop_locations: locations.into_iter().collect(),
            ..Names::default()
        }
    }

    /// Whether the recording says it was made in another boot than this one (a recording that
    /// does not say is read as before: as this boot's).
    pub fn made_elsewhere(&self) -> bool {
        self.boot_id.is_some() && self.boot_id != this_boot()
    }
}

/// This boot's id, which the kernel draws anew at every boot.
pub fn this_boot() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(id.trim().to_owned())
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

/// The recorder, shared by the ring buffer's reader, which copies the records, and the session,
/// which appends the names of drop locations as it learns them.
pub type SharedRecorder = std::sync::Arc<std::sync::Mutex<Recorder>>;

/// The shared recorder, taken. (A panic while it was held leaves at worst a record cut
/// short, which a replay leaves out.)
pub fn lock(recorder: &SharedRecorder) -> std::sync::MutexGuard<'_, Recorder> {
    recorder
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Appends one record.
pub fn write(out: &mut impl Write, record: &[u8]) -> io::Result<()> {
    let len = u32::try_from(record.len()).map_err(io::Error::other)?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(record)
}

/// Reads records written by [`write`] back one at a time, for replay without the kernel. A
/// last record cut short (a tracer killed while writing) ends the recording; [`left_out`]
/// says how many bytes it had.
///
/// [`left_out`]: Recording::left_out
pub struct Recording<R> {
    input: R,
    left_out: usize,
}

impl<R: Read> Recording<R> {
    pub fn new(input: R) -> Self {
        Recording { input, left_out: 0 }
    }

    /// Reads the next record into `record`; false at the end of the recording.
    pub fn next_into(&mut self, record: &mut Vec<u8>) -> io::Result<bool> {
        let mut len = [0u8; 4];
        match read_full(&mut self.input, &mut len)? {
            0 => return Ok(false),
            4 => {}
            got => {
                self.left_out = got;
                return Ok(false);
            }
        }
        let len = u32::from_le_bytes(len) as usize;
        record.resize(len, 0);
        let got = read_full(&mut self.input, record)?;
        if got < len {
            self.left_out = 4 + got;
            return Ok(false);
        }
        Ok(true)
    }

    /// Bytes after the last whole record, once the recording has ended.
    pub fn left_out(&self) -> usize {
        self.left_out
    }
}

/// A recording opened for replay. A regular file is mapped and its records are handed out
/// where they lie: reading it would copy every byte into the process first, which was a sixth
/// of a replay's time. Anything else (a pipe) is read.
pub enum Source {
    Mapped(Mapped),
    Read {
        recording: Recording<io::BufReader<Box<dyn Read>>>,
        record: Vec<u8>,
    },
}

/// A mapped recording, and how far it has been read.
pub struct Mapped {
    map: Mmap,
    at: usize,
    /// The pages before this offset were given back.
    released: usize,
    /// The pages before this offset were mapped ahead of the reading.
    populated: usize,
    left_out: usize,
}

/// A mapped recording is read through a window of this many bytes: the pages ahead of it are
/// mapped in one call (not a page fault every few pages) and those behind it are given back,
/// so that a replay's resident memory does not grow with the recording's size.
const WINDOW: usize = 256 << 10;

impl Source {
    /// The whole of `file`.
    pub fn open(file: File) -> io::Result<Source> {
        Source::open_first(file, None)
    }

    /// The first `bytes` of `file` (all of it with `None`).
    pub fn open_first(file: File, bytes: Option<u64>) -> io::Result<Source> {
        let metadata = file.metadata()?;
        let len = bytes.map_or(metadata.len(), |bytes| bytes.min(metadata.len()));
        if metadata.is_file()
            && len > 0
            && let Ok(len) = usize::try_from(len)
            // SAFETY: the mapping is read-only and only ever read as bytes. A file that another
            // process truncates while it is mapped faults on the pages it lost; a recording is
            // written once and replayed afterwards. A file system that cannot map the file
            // gets it read instead.
            && let Ok(map) = unsafe { MmapOptions::new().len(len).map(&file) }
        {
            return Ok(Source::Mapped(Mapped {
                map,
                at: 0,
                released: 0,
                populated: 0,
                left_out: 0,
            }));
        }
        let input: Box<dyn Read> = match bytes {
            Some(bytes) => Box::new(file.take(bytes)),
            None => Box::new(file),
        };
        Ok(Source::Read {
            recording: Recording::new(io::BufReader::new(input)),
            record: Vec::new(),
        })
    }

    /// The next record; `None` at the end of the recording.
    pub fn next_record(&mut self) -> io::Result<Option<&[u8]>> {
        match self {
            Source::Mapped(mapped) => Ok(mapped.next()),
            Source::Read { recording, record } => {
                Ok(recording.next_into(record)?.then_some(&record[..]))
            }
        }
    }

    /// Bytes after the last whole record, once the recording has ended: a last record cut
    /// short.
    pub fn left_out(&self) -> usize {
        match self {
            Source::Mapped(mapped) => mapped.left_out,
            Source::Read { recording, .. } => recording.left_out(),
        }
    }
}

impl Mapped {
    fn next(&mut self) -> Option<&[u8]> {
        self.slide();
        let rest = &self.map[self.at..];
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            self.left_out = rest.len();
            return None;
        };
        let len = u32::from_le_bytes(*len) as usize;
        if len > tail.len() {
            self.left_out = rest.len();
            return None;
        }
        self.at += 4 + len;
        Some(&tail[..len])
    }

    /// Moves the window on once the reading nears its end: maps the pages ahead and gives
    /// back those already read (they stay in the page cache; only this process's mapping of
    /// them goes).
    fn slide(&mut self) {
        if self.at + WINDOW / 2 < self.populated {
            return;
        }
        let start = self.at & !(page_size() - 1);
        if start > self.released {
            // SAFETY: the mapping is read-only and backed by the file, so the pages dropped
            // are read again from it if touched; nothing before `self.at` is borrowed any more
            // (a record handed out lives until the next call, which is this one).
            let released = unsafe {
                self.map.unchecked_advise_range(
                    UncheckedAdvice::DontNeed,
                    self.released,
                    start - self.released,
                )
            };
            if released.is_ok() {
                self.released = start;
            }
        }
        let from = self.populated.max(start);
        let to = (start + 2 * WINDOW).min(self.map.len());
        if to > from {
            // Before Linux 5.14 the kernel refuses it, and the pages are mapped as they are
            // read, a fault each few.
            let _ = self.map.advise_range(Advice::PopulateRead, from, to - from);
        }
        self.populated = to;
    }
}

/// Says that `path` ended within a record, whose `bytes` were left out: what a tracer killed
/// while writing leaves.
pub fn warn_cut_short(path: &std::path::Path, bytes: u64) {
    eprintln!(
        "tracer: warning: {} ends within a record; its last {bytes} bytes are left out",
        path.display()
    );
}

/// Reads until `buf` is full or the input ends; the bytes read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(read) => got += read,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(got)
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
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
            boot_id: Some("f1e2d3c4-0000-4000-8000-000000000001".to_owned()),
            drop_locations: BTreeMap::from([(
                0xffff_ffff_8100_0010,
                "nf_hook_slow+0x10".to_owned(),
            )]),
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
        // A later record: drop locations only.
        let mut later = Vec::new();
        write_names(
            &mut later,
            &Names::of_locations([(0xffff_ffff_8100_0010, "nf_hook_slow+0x10".to_owned())]),
        )
        .unwrap();
        assert_eq!(
            &later[4..],
            b"\xa5{\"drop_locations\":{\"18446744071578845200\":\"nf_hook_slow+0x10\"}}"
        );
        // A record of a tracer from before the boot id.
        let older = read_names(b"\xa5{\"drop_reasons\":{\"2\":\"NOT_SPECIFIED\"}}").unwrap();
        assert_eq!(older.unwrap().boot_id, None);
    }

    /// A recording of this boot, and one that does not say, have their code addresses named
    /// here; one of another boot does not, since its addresses are another kernel's.
    #[test]
    fn only_another_boots_recording_is_made_elsewhere() {
        let here = this_boot().expect("this machine has a boot id");
        assert_eq!(here.len(), 36, "{here}");
        let made_in = |boot_id: Option<&str>| Names {
            boot_id: boot_id.map(str::to_owned),
            ..Names::default()
        };
        assert!(!made_in(Some(&here)).made_elsewhere());
        assert!(!made_in(None).made_elsewhere());
        assert!(made_in(Some("f1e2d3c4-0000-4000-8000-000000000001")).made_elsewhere());
    }

    /// Records of different lengths, enough of them to cross several releases of a mapped
    /// recording's pages, and the bytes of their recording.
    fn many_records() -> (Vec<Vec<u8>>, Vec<u8>) {
        let records: Vec<Vec<u8>> = (0..40_000u32)
            .map(|n| (0..(n % 200 + 1)).map(|i| (n ^ i) as u8).collect())
            .collect();
        let mut bytes = Vec::new();
        for record in &records {
            write(&mut bytes, record).unwrap();
        }
        assert!(bytes.len() > 8 * WINDOW);
        (records, bytes)
    }

    /// Every record of `source`, and the bytes it left out.
    fn read_all(mut source: Source) -> (Vec<Vec<u8>>, usize) {
        let mut records = Vec::new();
        while let Some(record) = source.next_record().unwrap() {
            records.push(record.to_vec());
        }
        (records, source.left_out())
    }

    /// A file in the test's own directory, removed when dropped.
    struct TempFile(std::path::PathBuf);

    impl TempFile {
        fn new(name: &str, bytes: &[u8]) -> TempFile {
            let path = std::env::temp_dir()
                .join(format!("tracer-recording-{}-{name}", std::process::id()));
            std::fs::write(&path, bytes).unwrap();
            TempFile(path)
        }

        fn open(&self) -> File {
            File::open(&self.0).unwrap()
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// A file is mapped and a pipe is read, and both give every record as it was written,
    /// across the releases of a mapping's pages; a last record cut short is left out and
    /// counted, and so is a length prefix cut short.
    #[test]
    fn a_mapped_recording_and_a_piped_one_read_the_same() {
        let (records, mut bytes) = many_records();
        let whole = TempFile::new("whole", &bytes);
        let source = Source::open(whole.open()).unwrap();
        assert!(matches!(source, Source::Mapped(_)));
        assert_eq!(read_all(source), (records.clone(), 0));

        let (reader, mut writer) = io::pipe().unwrap();
        let feed = {
            let bytes = bytes.clone();
            std::thread::spawn(move || writer.write_all(&bytes))
        };
        let source = Source::open(File::from(std::os::fd::OwnedFd::from(reader))).unwrap();
        assert!(matches!(source, Source::Read { .. }));
        assert_eq!(read_all(source), (records.clone(), 0));
        feed.join().unwrap().unwrap();

        // A record cut short: its length prefix and 3 of its bytes.
        write(&mut bytes, &[9; 10]).unwrap();
        bytes.truncate(bytes.len() - 7);
        let cut = TempFile::new("cut", &bytes);
        assert_eq!(
            read_all(Source::open(cut.open()).unwrap()),
            (records.clone(), 7)
        );
        let mut piped = Recording::new(&bytes[..]);
        let (mut read, mut record) = (Vec::new(), Vec::new());
        while piped.next_into(&mut record).unwrap() {
            read.push(record.clone());
        }
        assert_eq!((read, piped.left_out()), (records.clone(), 7));

        // Only the first bytes asked for; a length prefix cut short.
        let whole_len = (bytes.len() - 7) as u64;
        let first = Source::open_first(cut.open(), Some(whole_len + 2)).unwrap();
        assert_eq!(read_all(first), (records, 2));
    }
}
