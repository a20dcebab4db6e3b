//! `tarsplit`: rebuild a layer's exact uncompressed tar from its tar-split metadata
//! and the layer's files, with random access.
//!
//! [`Index::parse`] reads the gzip'd JSON lines once into a compact offset table:
//! raw segments (tar headers, padding, end blocks) are copied into one arena, file
//! payloads are recorded as (cleaned path, size, CRC-64). [`LayerBlob`] couples an
//! index with the layer's directories and answers `read_at(offset, len)` without
//! producing the whole tar; [`IndexCache`] shares indexes between readers. A payload
//! is served only after its file was confirmed to be a regular file inside the layer
//! directory with the recorded size and CRC-64; anything else is an I/O error naming
//! the layer and path. The index never holds file contents.

mod cache;
mod reader;
mod segs;

use crate::confine;

use std::borrow::Cow;
use std::io::{self, BufRead, BufReader, Read};
use std::sync::atomic::AtomicU64;

use base64::Engine as _;
use serde::Deserialize;

pub use cache::IndexCache;
pub use reader::{BlobReader, LayerBlob};

/// CRC-64 as tar-split computes it (Go `hash/crc64` with the ISO table).
pub(crate) const CRC64: crc::Crc<u64, crc::Table<16>> = crc::Crc::<u64, crc::Table<16>>::new(&crc::CRC_64_GO_ISO);

/// Longest JSON line accepted (a PAX header segment is a few KiB; names are bounded).
const MAX_LINE: u64 = 16 << 20;

/// Most file payloads one layer may have (~60 bytes of index each); a stream beyond
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
    #[error("tar-split rebuilds more than the layer's diff-size {expected} (stopped at line {line})")]
    TooLarge { expected: u64, line: u64 },
}

#[derive(Debug, Clone, Copy)]
enum Src {
    /// `len` bytes of the segment arena from this offset.
    Seg { arena: u64 },
    /// The payload of file number `file`.
    File { file: u32 },
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    start: u64,
    len: u64,
    src: Src,
}

#[derive(Debug)]
struct FileInfo {
    /// Range of the cleaned, relative path in the name arena.
    name: (u32, u32),
    crc: Option<u64>,
    /// Identity of the file on disk last confirmed to hold exactly the recorded content
    /// ([`stamp`] of its metadata; 0: never). A file changed or replaced since then has
    /// another stamp and is checked again.
    verified: AtomicU64,
}

/// Offsets of every segment and payload of one layer tar.
#[derive(Debug)]
pub struct Index {
    entries: Vec<Entry>,
    files: Vec<FileInfo>,
    segs: segs::Segs,
    names: Vec<u8>,
    size: u64,
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

impl Index {
    /// Parses a gzip-compressed tar-split stream (`<layer>.tar-split.gz`).
    pub fn parse_gz(r: impl Read, expected_size: Option<u64>) -> Result<Index, Error> {
        Index::parse(flate2::read::GzDecoder::new(r), expected_size)
    }

    /// Parses uncompressed tar-split JSON lines. When `expected_size` is given, the
    /// rebuilt length must equal it.
    pub fn parse(r: impl Read, expected_size: Option<u64>) -> Result<Index, Error> {
        let mut r = BufReader::with_capacity(256 << 10, r);
        let mut ix =
            Index { entries: Vec::new(), files: Vec::new(), segs: segs::Segs::default(), names: Vec::new(), size: 0 };
        let mut line = Vec::new();
        let mut lineno = 0u64;
        let mut scratch = Vec::new();
        loop {
            line.clear();
            let n = (&mut r).take(MAX_LINE).read_until(b'\n', &mut line)?;
            if n == 0 {
                break;
            }
            lineno += 1;
            let bad = |msg: String| Error::Format { line: lineno, msg };
            if line.last() != Some(&b'\n') && n as u64 == MAX_LINE {
                return Err(bad(format!("line longer than {MAX_LINE} bytes")));
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let e: RawEntry = serde_json::from_slice(&line).map_err(|e| bad(e.to_string()))?;
            match e.kind {
                2 => {
                    let Some(p) = e.payload.as_deref().filter(|p| !p.is_empty()) else { continue };
                    scratch.clear();
                    B64.decode_vec(p, &mut scratch).map_err(|e| bad(format!("segment payload: {e}")))?;
                    ix.push_segment(&scratch).map_err(bad)?;
                }
                1 => {
                    let size = e.size.unwrap_or(0);
                    let size = u64::try_from(size).map_err(|_| bad(format!("negative size {size}")))?;
                    let raw_name: Cow<[u8]> = match e.name_raw.as_deref().filter(|s| !s.is_empty()) {
                        Some(b) => Cow::Owned(B64.decode(b).map_err(|e| bad(format!("name_raw: {e}")))?),
                        None => Cow::Borrowed(e.name.as_deref().unwrap_or("").as_bytes()),
                    };
                    if size == 0 {
                        continue;
                    }
                    let crc = match e.payload.as_deref().filter(|p| !p.is_empty()) {
                        None => None,
                        Some(p) => {
                            let b = B64.decode(p).map_err(|e| bad(format!("file checksum: {e}")))?;
                            let b: [u8; 8] = b.try_into().map_err(|_| bad("file checksum is not 8 bytes".into()))?;
                            Some(u64::from_be_bytes(b))
                        }
                    };
                    let clean = clean_path(&raw_name).ok_or_else(|| {
                        bad(format!("file entry {:?} names no file", String::from_utf8_lossy(&raw_name)))
                    })?;
                    ix.push_file(&clean, size, crc).map_err(bad)?;
                }
                k => return Err(bad(format!("unknown entry type {k}"))),
            }
            // Stop as soon as the stream outgrows the layer: a small, highly compressed
            // tar-split must not make us index millions of entries before refusing it.
            if let Some(expected) = expected_size.filter(|&e| ix.size > e) {
                return Err(Error::TooLarge { expected, line: lineno });
            }
        }
        if let Some(expected) = expected_size {
            if expected != ix.size {
                return Err(Error::SizeMismatch { expected, actual: ix.size });
            }
        }
        ix.entries.shrink_to_fit();
        ix.segs.finish();
        ix.names.shrink_to_fit();
        ix.files.shrink_to_fit();
        Ok(ix)
    }

    fn grow(&mut self, len: u64) -> Result<u64, String> {
        let start = self.size;
        self.size = start.checked_add(len).ok_or("layer size overflows")?;
        Ok(start)
    }

    fn push_segment(&mut self, bytes: &[u8]) -> Result<(), String> {
        let start = self.grow(bytes.len() as u64)?;
        let arena = self.segs.len();
        self.segs.push(bytes);
        // Adjacent segments are one run of verbatim bytes: keep them as one entry.
        if let Some(last) = self.entries.last_mut() {
            if let Src::Seg { arena: a } = last.src {
                if a + last.len == arena {
                    last.len += bytes.len() as u64;
                    return Ok(());
                }
            }
        }
        self.entries.push(Entry { start, len: bytes.len() as u64, src: Src::Seg { arena } });
        Ok(())
    }

    fn push_file(&mut self, path: &[u8], size: u64, crc: Option<u64>) -> Result<(), String> {
        let start = self.grow(size)?;
        if self.files.len() >= MAX_FILES {
            return Err(format!("more than {MAX_FILES} files"));
        }
        let file = u32::try_from(self.files.len()).map_err(|_| "too many files")?;
        let off = u32::try_from(self.names.len()).map_err(|_| "file names too long")?;
        let len = u32::try_from(path.len()).map_err(|_| "file name too long")?;
        off.checked_add(len).ok_or("file names too long")?;
        self.names.extend_from_slice(path);
        self.files.push(FileInfo { name: (off, len), crc, verified: AtomicU64::new(0) });
        self.entries.push(Entry { start, len: size, src: Src::File { file } });
        Ok(())
    }

    /// Length of the rebuilt tar.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Number of file payloads.
    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    /// Approximate heap bytes held, for cache accounting.
    pub fn heap_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Entry>()
            + self.files.capacity() * std::mem::size_of::<FileInfo>()
            + self.segs.heap_bytes()
            + self.names.capacity()
    }

    fn name(&self, file: u32) -> &[u8] {
        let (off, len) = self.files[file as usize].name;
        &self.names[off as usize..(off + len) as usize]
    }

    /// Index of the entry holding byte `offset` (which must be < size).
    fn entry_at(&self, offset: u64) -> usize {
        self.entries.partition_point(|e| e.start <= offset) - 1
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
