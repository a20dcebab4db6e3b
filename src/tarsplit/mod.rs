//! `tarsplit`: rebuild a layer's exact uncompressed tar from its tar-split metadata
//! and the layer's files, with random access.
//!
//! [`Index::open_gz`] reads the gzip'd JSON lines on demand, in batches, into a
//! compact offset table: raw segments (tar headers, padding, end blocks) are copied
//! into one arena, file payloads are recorded as (cleaned path, size, CRC-64). Reads
//! wait only for the part of the table they need, so a large layer's first bytes do
//! not wait for its whole index. [`LayerBlob`] couples an index with the layer's
//! directories and answers `read_at(offset, len)` without producing the whole tar;
//! [`IndexCache`] shares indexes between readers. A payload is served only after its
//! file was confirmed to be a regular file inside the layer directory with the
//! recorded size and CRC-64 (small payloads are read once, checked and served from
//! the reader's buffer); anything else is an I/O error naming the layer and path. A
//! parse that fails, or rebuilds a size other than the recorded one, fails every read;
//! a file entry with a payload but no CRC-64 fails the parse.
//! The index never holds file contents.

mod cache;
mod reader;
mod segs;
pub mod toc;

use crate::confine;

use std::borrow::Cow;
use std::io::{self, BufRead, BufReader, Read};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Condvar, Mutex, RwLock};

use base64::Engine as _;
use serde::Deserialize;

pub use cache::IndexCache;
pub use reader::{BlobReader, LayerBlob};

/// Longest JSON line accepted (a PAX header segment is a few KiB; names are bounded).
const MAX_LINE: u64 = 16 << 20;

/// Most file payloads one layer may have (~20 bytes of index each); a stream beyond
/// it is refused rather than indexed, whatever its recorded size.
const MAX_FILES: usize = 1 << 23;

/// Why a tar-split stream cannot be indexed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading tar-split: {0}")]
    Io(#[from] io::Error),
    #[error("tar-split line {line}: {msg}")]
    Format { line: u64, msg: String },
    #[error("tar-split rebuilds {actual} bytes but the layer records diff-size {expected} (sparse files or damaged metadata)")]
    SizeMismatch { expected: u64, actual: u64 },
    /// A composefs layer's table of contents cannot be read or used (why, in words).
    #[error("table of contents: {0}")]
    Toc(String),
}

#[derive(Debug, Clone, Copy)]
enum Src {
    /// Bytes of the segment arena from this offset.
    Seg { arena: u64 },
    /// The payload of file number `file`.
    File { file: u32 },
}

/// One run of verbatim segment bytes or one payload, from `start` to the next entry's
/// start (or the end of the table). 16 bytes: a layer has two per file.
#[derive(Debug, Clone, Copy)]
struct Entry {
    start: u64,
    /// [`Entry::FILE`] | file number, or the segment arena offset.
    what: u64,
}

impl Entry {
    const FILE: u64 = 1 << 63;

    fn src(&self) -> Src {
        if self.what & Entry::FILE != 0 {
            Src::File { file: self.what as u32 }
        } else {
            Src::Seg { arena: self.what }
        }
    }
}

#[derive(Debug)]
struct FileInfo {
    /// Range of the cleaned, relative path in the name arena.
    name: (u32, u32),
    /// The payload's CRC-64 as tar-split recorded it. `None` only until the parse ends,
    /// which then fails (so a reader refuses such a payload, and a full parse fails).
    crc: Option<u64>,
    /// Identity of the file on disk last confirmed to hold exactly the recorded content
    /// ([`stamp`] of its metadata; 0: never). A file changed or replaced since then has
    /// another stamp and is checked again.
    verified: AtomicU64,
}

/// What has been parsed so far: every entry up to `size` bytes of the tar is final.
#[derive(Debug, Default)]
struct Table {
    entries: Vec<Entry>,
    files: Vec<FileInfo>,
    segs: segs::Segs,
    names: Vec<u8>,
    size: u64,
}

impl Table {
    fn name(&self, file: u32) -> &[u8] {
        let (off, len) = self.files[file as usize].name;
        &self.names[off as usize..(off + len) as usize]
    }

    /// Index of the entry holding byte `offset` (which must be < size).
    fn entry_at(&self, offset: u64) -> usize {
        self.entries.partition_point(|e| e.start <= offset) - 1
    }

    /// Length of entry `i`.
    fn entry_len(&self, i: usize) -> u64 {
        self.entries.get(i + 1).map_or(self.size, |n| n.start) - self.entries[i].start
    }
}

/// How far the parse has come.
#[derive(Debug)]
enum State {
    /// Lines remain; `parsing` is set while one thread holds the parser.
    Running {
        parsing: bool,
    },
    Done,
    Failed(Error),
}

type Source = Box<dyn BufRead + Send>;

const RUNNING: u8 = 0;
const DONE: u8 = 1;
const FAILED: u8 = 2;

/// Offsets of every segment and payload of one layer tar.
///
/// An index may be built lazily ([`Index::open_gz`]): the tar-split is parsed in
/// batches as reads need them, so the first bytes of a large layer are served long
/// before its last line is read. A read waits until the table covers its range; a
/// read reaching the end of the blob waits for the whole parse and its size check.
/// Once a parse fails, every read of the index fails.
pub struct Index {
    table: RwLock<Table>,
    /// The size the layer records (`diff-size`), if any.
    expected: Option<u64>,
    state: Mutex<State>,
    progress: Condvar,
    /// `state` in brief, for readers: RUNNING, DONE or FAILED.
    status: AtomicU8,
    parser: Mutex<Option<Parser<Source>>>,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = self.table.read().unwrap_or_else(|p| p.into_inner());
        f.debug_struct("Index")
            .field("expected", &self.expected)
            .field("parsed", &t.size)
            .field("entries", &t.entries.len())
            .field("files", &t.files.len())
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct RawEntry<'a> {
    #[serde(rename = "type")]
    kind: u8,
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    name_raw: Option<Cow<'a, str>>,
    #[serde(default)]
    size: Option<i64>,
    #[serde(default, borrow)]
    payload: Option<Cow<'a, str>>,
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Lines parsed before the table is extended when a reader waits for an offset far
/// ahead (or the whole index is wanted); readers waiting nearer are served sooner.
const BATCH_LINES: usize = 2048;
/// Lines parsed past the offset a reader waits for (so a sequential reader does not
/// take a batch of its own for every read).
const AHEAD_LINES: usize = 256;

impl Index {
    /// Prepares to parse a gzip-compressed tar-split stream (`<layer>.tar-split.gz`)
    /// on demand; nothing is read yet. Errors surface from reads and [`Index::complete`].
    pub fn open_gz(r: impl Read + Send + 'static, expected_size: Option<u64>) -> Index {
        Index::lazy(Box::new(BufReader::with_capacity(256 << 10, flate2::read::GzDecoder::new(r))), expected_size)
    }

    /// Parses uncompressed tar-split JSON lines, all of them. When `expected_size` is
    /// given, the rebuilt length must equal it.
    pub fn parse(r: impl Read + Send + 'static, expected_size: Option<u64>) -> Result<Index, Error> {
        let ix = Index::lazy(Box::new(BufReader::with_capacity(256 << 10, r)), expected_size);
        ix.complete()?;
        Ok(ix)
    }

    fn lazy(src: Source, expected: Option<u64>) -> Index {
        Index {
            table: RwLock::default(),
            expected,
            state: Mutex::new(State::Running { parsing: false }),
            progress: Condvar::new(),
            status: AtomicU8::new(RUNNING),
            parser: Mutex::new(Some(Parser::new(src))),
        }
    }

    fn table(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Parses to the end (if not done yet) and returns the rebuilt size.
    pub fn complete(&self) -> Result<u64, Error> {
        self.ensure(u64::MAX)?;
        Ok(self.table().size)
    }

    /// Whether the parse already failed (a cache drops such an index).
    pub fn failed(&self) -> bool {
        self.status.load(Ordering::Acquire) == FAILED
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until every entry holding bytes below `end` is in the table. An `end`
    /// at or past the recorded size (or any `end` without one) waits for the whole
    /// parse, including the size check.
    fn ensure(&self, end: u64) -> Result<(), Error> {
        let whole = self.expected.is_none_or(|e| end >= e);
        let covered = |ix: &Index| !whole && ix.table().size >= end;
        match self.status.load(Ordering::Acquire) {
            DONE => return Ok(()),
            RUNNING if covered(self) => return Ok(()),
            _ => {}
        }
        let mut st = self.lock_state();
        loop {
            match &*st {
                State::Done => return Ok(()),
                State::Failed(e) => return Err(e.duplicate()),
                _ if covered(self) => return Ok(()),
                State::Running { parsing: true } => {
                    st = self.progress.wait(st).unwrap_or_else(|p| p.into_inner());
                    continue;
                }
                State::Running { parsing: false } => {}
            }
            *st = State::Running { parsing: true };
            drop(st);
            let result = {
                let mut parser = self.parser.lock().unwrap_or_else(|p| p.into_inner());
                match parser.as_mut() {
                    Some(p) => p.run(self, if whole { u64::MAX } else { end }),
                    None => Ok(true),
                }
            };
            let next = match result {
                Ok(false) => State::Running { parsing: false },
                Ok(true) => match self.finish() {
                    Ok(()) => State::Done,
                    Err(e) => State::Failed(e),
                },
                Err(e) => State::Failed(e),
            };
            if !matches!(next, State::Running { .. }) {
                *self.parser.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
            st = self.lock_state();
            let status = match next {
                State::Running { .. } => RUNNING,
                State::Done => DONE,
                State::Failed(_) => FAILED,
            };
            *st = next;
            self.status.store(status, Ordering::Release);
            self.progress.notify_all();
        }
    }

    /// Called once the last line was parsed: checks the size and trims the vectors.
    fn finish(&self) -> Result<(), Error> {
        let mut t = self.table.write().unwrap_or_else(|p| p.into_inner());
        if let Some(expected) = self.expected {
            if expected != t.size {
                return Err(Error::SizeMismatch { expected, actual: t.size });
            }
        }
        t.entries.shrink_to_fit();
        t.files.shrink_to_fit();
        t.names.shrink_to_fit();
        t.segs.finish();
        Ok(())
    }

    /// Wakes threads waiting for table growth (called after each batch is published).
    fn notify(&self) {
        let _st = self.lock_state();
        self.progress.notify_all();
    }

    /// Length of the rebuilt tar: the recorded size when there is one (a parse that
    /// disagrees fails every read), else the parsed size (parsing to the end).
    pub fn size(&self) -> u64 {
        match self.expected {
            Some(e) => e,
            None => {
                let _ = self.complete();
                self.table().size
            }
        }
    }

    /// Number of file payloads parsed so far.
    pub fn file_count(&self) -> usize {
        self.table().files.len()
    }

    /// Approximate heap bytes held, for cache accounting.
    pub fn heap_bytes(&self) -> usize {
        let t = self.table();
        t.entries.capacity() * std::mem::size_of::<Entry>()
            + t.files.capacity() * std::mem::size_of::<FileInfo>()
            + t.segs.heap_bytes()
            + t.names.capacity()
    }
}

/// A copy for every waiter of a failed parse and for the layer check results
/// (`io::Error` is not `Clone`: an I/O error keeps its kind and message).
impl Clone for Error {
    fn clone(&self) -> Error {
        self.duplicate()
    }
}

/// Same variant and fields; I/O errors by kind and message.
impl PartialEq for Error {
    fn eq(&self, other: &Error) -> bool {
        match (self, other) {
            (Error::Io(a), Error::Io(b)) => a.kind() == b.kind() && a.to_string() == b.to_string(),
            (Error::Format { line: a, msg: m }, Error::Format { line: b, msg: n }) => a == b && m == n,
            (Error::SizeMismatch { expected: a, actual: x }, Error::SizeMismatch { expected: b, actual: y }) => {
                a == b && x == y
            }
            (Error::Toc(a), Error::Toc(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Error {}

impl Error {
    fn duplicate(&self) -> Error {
        match self {
            Error::Io(e) => Error::Io(io::Error::new(e.kind(), e.to_string())),
            Error::Format { line, msg } => Error::Format { line: *line, msg: msg.clone() },
            Error::SizeMismatch { expected, actual } => Error::SizeMismatch { expected: *expected, actual: *actual },
            Error::Toc(why) => Error::Toc(why.clone()),
        }
    }
}

/// Entries parsed but not yet added to the table.
#[derive(Default)]
struct Batch {
    entries: Vec<Entry>,
    files: Vec<FileInfo>,
    names: Vec<u8>,
    segs: Vec<u8>,
}

/// The tar-split reader and the running totals of what it has produced.
struct Parser<R> {
    r: R,
    line: Vec<u8>,
    lineno: u64,
    /// Totals including the unpublished batch.
    size: u64,
    files: u32,
    names: u64,
    segs: u64,
    /// Whether the last entry produced is a segment run.
    in_segment: bool,
    /// The first file entry with a payload but no CRC-64: (line, why). It fails the parse
    /// at its end, after the size check, so a size mismatch is still reported as such.
    no_crc: Option<(u64, String)>,
    batch: Batch,
}

impl<R: BufRead> Parser<R> {
    fn new(r: R) -> Parser<R> {
        Parser {
            r,
            line: Vec::new(),
            lineno: 0,
            size: 0,
            files: 0,
            names: 0,
            segs: 0,
            in_segment: false,
            no_crc: None,
            batch: Batch::default(),
        }
    }

    /// Parses until the table covers `until` bytes (then at most a few lines more), or
    /// for a far `until` in batches, publishing each. Returns true at the end of the stream.
    fn run(&mut self, ix: &Index, until: u64) -> Result<bool, Error> {
        loop {
            let mut lines = 0;
            let end = loop {
                if !self.line()? {
                    break true;
                }
                if let Some(expected) = ix.expected {
                    if self.size > expected {
                        return Err(Error::SizeMismatch { expected, actual: self.size });
                    }
                }
                lines += 1;
                // A reader waiting for an offset gets it soon after it is parsed.
                if (self.size > until && lines >= AHEAD_LINES) || lines >= BATCH_LINES {
                    break false;
                }
            };
            if end {
                if let Some(expected) = ix.expected.filter(|e| *e != self.size) {
                    return Err(Error::SizeMismatch { expected, actual: self.size });
                }
                if let Some((line, msg)) = self.no_crc.take() {
                    return Err(Error::Format { line, msg });
                }
            }
            self.publish(ix);
            ix.notify();
            if end {
                return Ok(true);
            }
            if self.size > until {
                return Ok(false);
            }
        }
    }

    /// Moves the batch into the table.
    fn publish(&mut self, ix: &Index) {
        let b = &mut self.batch;
        let mut t = ix.table.write().unwrap_or_else(|p| p.into_inner());
        t.entries.append(&mut b.entries);
        t.files.append(&mut b.files);
        t.names.extend_from_slice(&b.names);
        b.names.clear();
        let full = t.segs.push(&b.segs);
        b.segs.clear();
        t.size = self.size;
        drop(t);
        // Chunks that filled up are compressed outside the lock, then swapped in.
        for (idx, raw) in full {
            let packed = segs::deflate(&raw);
            ix.table.write().unwrap_or_else(|p| p.into_inner()).segs.packed(idx, packed);
        }
    }

    fn grow(&mut self, len: u64) -> Result<u64, String> {
        let start = self.size;
        self.size = start.checked_add(len).ok_or("layer size overflows")?;
        Ok(start)
    }

    /// Reads and records one line; false at the end of the stream.
    fn line(&mut self) -> Result<bool, Error> {
        loop {
            self.line.clear();
            let n = (&mut self.r).take(MAX_LINE).read_until(b'\n', &mut self.line)?;
            if n == 0 {
                return Ok(false);
            }
            self.lineno += 1;
            let lineno = self.lineno;
            let bad = |msg: String| Error::Format { line: lineno, msg };
            if self.line.last() != Some(&b'\n') && n as u64 == MAX_LINE {
                return Err(bad(format!("line longer than {MAX_LINE} bytes")));
            }
            if self.line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let line = std::mem::take(&mut self.line);
            let r = self.entry(&line).map_err(bad);
            self.line = line;
            r?;
            return Ok(true);
        }
    }

    fn entry(&mut self, line: &[u8]) -> Result<(), String> {
        let e: RawEntry = serde_json::from_slice(line).map_err(|e| e.to_string())?;
        match e.kind {
            2 => {
                let Some(p) = e.payload.as_deref().filter(|p| !p.is_empty()) else { return Ok(()) };
                // Decoded straight onto the batch's segment bytes.
                let before = self.batch.segs.len();
                if let Err(e) = B64.decode_vec(p, &mut self.batch.segs) {
                    self.batch.segs.truncate(before);
                    return Err(format!("segment payload: {e}"));
                }
                self.push_segment(self.batch.segs.len() - before)
            }
            1 => {
                let size = e.size.unwrap_or(0);
                let size = u64::try_from(size).map_err(|_| format!("negative size {size}"))?;
                let raw_name: Cow<[u8]> = match e.name_raw.as_deref().filter(|s| !s.is_empty()) {
                    Some(b) => Cow::Owned(B64.decode(b).map_err(|e| format!("name_raw: {e}"))?),
                    None => Cow::Borrowed(e.name.as_deref().unwrap_or("").as_bytes()),
                };
                if size == 0 {
                    return Ok(());
                }
                let clean = clean_path(&raw_name)
                    .ok_or_else(|| format!("file entry {:?} names no file", String::from_utf8_lossy(&raw_name)))?;
                // Without the CRC-64 nothing could tell a changed file from the recorded one.
                let crc = match e.payload.as_deref().filter(|p| !p.is_empty()) {
                    None => {
                        if self.no_crc.is_none() {
                            let why = format!(
                                "file entry {:?} ({size} bytes) has no CRC-64 to check its payload against",
                                String::from_utf8_lossy(&clean)
                            );
                            self.no_crc = Some((self.lineno, why));
                        }
                        None
                    }
                    Some(p) => {
                        let mut b = [0u8; 8];
                        match B64.decode_slice(p, &mut b) {
                            Ok(8) => Some(u64::from_be_bytes(b)),
                            Ok(_) | Err(base64::DecodeSliceError::OutputSliceTooSmall) => {
                                return Err("file checksum is not 8 bytes".into())
                            }
                            Err(e) => return Err(format!("file checksum: {e}")),
                        }
                    }
                };
                self.push_file(&clean, size, crc)
            }
            k => Err(format!("unknown entry type {k}")),
        }
    }

    /// Records the `len` segment bytes just appended to the batch.
    fn push_segment(&mut self, len: usize) -> Result<(), String> {
        let len = len as u64;
        let start = self.grow(len)?;
        let arena = self.segs;
        self.segs += len;
        // Adjacent segments are one run of verbatim bytes (contiguous in the arena too):
        // the entry before already covers this one.
        if !self.in_segment {
            if arena >= Entry::FILE {
                return Err("layer too large".into());
            }
            self.batch.entries.push(Entry { start, what: arena });
            self.in_segment = true;
        }
        Ok(())
    }

    fn push_file(&mut self, path: &[u8], size: u64, crc: Option<u64>) -> Result<(), String> {
        let start = self.grow(size)?;
        let file = self.files;
        if file as usize >= MAX_FILES {
            return Err(format!("more than {MAX_FILES} files"));
        }
        self.files = file.checked_add(1).ok_or("too many files")?;
        let off = u32::try_from(self.names).map_err(|_| "file names too long")?;
        let len = u32::try_from(path.len()).map_err(|_| "file name too long")?;
        off.checked_add(len).ok_or("file names too long")?;
        self.names += u64::from(len);
        self.batch.names.extend_from_slice(path);
        self.batch.files.push(FileInfo { name: (off, len), crc, verified: AtomicU64::new(0) });
        self.batch.entries.push(Entry { start, what: Entry::FILE | u64::from(file) });
        self.in_segment = false;
        Ok(())
    }
}

/// A fingerprint of a payload file's identity and last change: device, inode, size,
/// mtime and ctime (any write, truncate, chmod or replacement changes it). Never 0.
pub(crate) fn stamp(md: &std::fs::Metadata) -> u64 {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (md.dev(), md.ino(), md.size(), md.mtime(), md.mtime_nsec(), md.ctime(), md.ctime_nsec()).hash(&mut h);
    h.finish() | 1
}

/// Cleans a tar entry name as if rooted at `/` (Go's `filepath.Clean("/" + name)`),
/// returning the relative path, or `None` for the root itself.
pub(crate) fn clean_path(name: &[u8]) -> Option<Vec<u8>> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in name.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return None;
    }
    Some(parts.join(&b'/'))
}

#[cfg(test)]
mod tests;
