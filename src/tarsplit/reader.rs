//! Random-access reads of a rebuilt layer tar.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::segs::ChunkCache;
use super::toc::Objects;
use super::{confine, Index, Src};
use crate::Id;

/// Payloads up to this size are read once, into the reader's buffer, CRC-checked
/// there and served from it (instead of a CRC pass and then the reads).
pub(crate) const SMALL_PAYLOAD: u64 = 256 << 10;

/// A layer's index plus the directories its payloads are read from.
#[derive(Debug)]
pub struct LayerBlob {
    layer: Id,
    index: Arc<Index>,
    /// Handles on the layer's content directories, in lookup order.
    dirs: Vec<OwnedFd>,
    /// For a content-addressed (composefs) layer: where each payload's object is.
    objects: Option<Arc<Objects>>,
}

/// One reader's state over a [`LayerBlob`]: the last payload it opened (a file, or
/// the content of a small one), so a sequential stream does not reopen a file per read.
#[derive(Debug)]
pub struct BlobReader {
    blob: Arc<LayerBlob>,
    cur: Mutex<Current>,
    chunk: Mutex<ChunkCache>,
}

#[derive(Debug, Default)]
struct Current {
    /// The payload `file` is held, as `Open` or in `buf`.
    file: Option<u32>,
    open: Option<Arc<File>>,
    /// A small payload's content at its start (when `open` is `None`), else scratch
    /// for CRC passes.
    buf: Vec<u8>,
}

impl LayerBlob {
    /// Couples `index` with `dirs` (opened now: a layer removed later keeps the
    /// directories it had, and fails only when its files are gone).
    pub fn new(layer: Id, index: Arc<Index>, dirs: &[std::path::PathBuf]) -> io::Result<LayerBlob> {
        let dirs = dirs
            .iter()
            .enumerate()
            .filter_map(|(i, d)| match confine::open_dir(d) {
                Ok(fd) => Some(Ok(fd)),
                // Lower directories are optional; the layer's own is not.
                Err(_) if i > 0 => None,
                Err(e) => Some(Err(io::Error::new(e.kind(), format!("layer {layer}: {}: {e}", d.display())))),
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(LayerBlob { layer, index, dirs, objects: None })
    }

    /// Looks payloads up by content instead of by name: each regular file's payload is
    /// the object `objects` names for it (a composefs layer's `diff/<hex[..2]>/<hex[2..]>`).
    /// The object is checked like any payload (regular file, size, CRC-64).
    pub fn with_objects(mut self, objects: Arc<Objects>) -> LayerBlob {
        self.objects = Some(objects);
        self
    }

    pub fn size(&self) -> u64 {
        self.index.size()
    }

    pub fn layer(&self) -> &Id {
        &self.layer
    }

    pub fn index(&self) -> &Arc<Index> {
        &self.index
    }

    fn err(&self, file: u32, what: impl std::fmt::Display) -> io::Error {
        let name = String::from_utf8_lossy(self.index.table().name(file)).into_owned();
        io::Error::other(format!("layer {}: {name}: {what}", self.layer))
    }

    /// Opens payload `file`, checking it is a regular file of the recorded size.
    /// Returns it with the recorded CRC-64, its [`super::stamp`], and whether this very
    /// file (same identity, unchanged since) was checked already.
    fn open_payload(&self, file: u32, size: u64) -> io::Result<(File, u64, u64, bool)> {
        let (name, crc, verified) = {
            let t = self.index.table();
            let info = &t.files[file as usize];
            (t.name(file).to_vec(), info.crc, info.verified.load(Ordering::Acquire))
        };
        let path = match &self.objects {
            None => name,
            Some(objects) => objects
                .object_path(&name)
                .ok_or_else(|| self.err(file, "the layer's table of contents names no content object for it"))?,
        };
        let mut last = None;
        let mut found = None;
        for dir in &self.dirs {
            match confine::open_beneath(dir, &path) {
                Ok(f) => {
                    found = Some(f);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => last = Some(e),
                Err(e) => return Err(self.err(file, format_args!("cannot open payload: {e}"))),
            }
        }
        let Some(f) = found else {
            let e = last.unwrap_or_else(|| io::Error::from(io::ErrorKind::NotFound));
            return Err(self.err(file, format_args!("payload file missing: {e}")));
        };
        let md = f.metadata().map_err(|e| self.err(file, e))?;
        if !md.file_type().is_file() {
            return Err(self.err(file, "payload is not a regular file"));
        }
        if md.size() != size {
            return Err(self.err(file, format_args!("payload is {} bytes, tar-split records {size}", md.size())));
        }
        let stamp = super::stamp(&md);
        let Some(crc) = crc else {
            // The parse fails at its end for this entry; until then, refuse the payload.
            return Err(self.err(file, "tar-split records no CRC-64 for this payload"));
        };
        if verified == failed(stamp) {
            // This very file already failed its CRC check: do not hash it again.
            return Err(self.err(file, "payload CRC-64 differs from tar-split's (checked before)"));
        }
        Ok((f, crc, stamp, verified == stamp))
    }

    /// Compares a payload's CRC-64 with the recorded one and records the outcome for
    /// the file as identified by `stamp`, for every reader of this index.
    fn check_crc(&self, file: u32, got: u64, want: u64, stamp: u64) -> io::Result<()> {
        if got != want {
            self.index.table().files[file as usize].verified.store(failed(stamp), Ordering::Release);
            return Err(self.err(file, format_args!("payload CRC-64 {got:016x} differs from tar-split's {want:016x}")));
        }
        self.index.table().files[file as usize].verified.store(stamp, Ordering::Release);
        Ok(())
    }
}

/// The `verified` value recording that the file with `stamp` failed its check (stamps
/// have their low bit set; this one has it clear).
fn failed(stamp: u64) -> u64 {
    stamp & !1
}

/// Fills `out` from the start of `f`.
fn read_exact_at(f: &File, out: &mut [u8]) -> io::Result<()> {
    let mut off = 0;
    while off < out.len() {
        let n = f.read_at(&mut out[off..], off as u64)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "payload shorter than recorded"));
        }
        off += n;
    }
    Ok(())
}

fn crc64(data: &[u8]) -> u64 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64GoIso, data)
}

/// CRC-64 of the first `size` bytes of `f`, read through `buf`.
fn crc_of(f: &File, size: u64, buf: &mut Vec<u8>) -> io::Result<u64> {
    let mut digest = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64GoIso);
    if buf.len() < (256 << 10) {
        buf.resize(256 << 10, 0);
    }
    let mut off = 0u64;
    while off < size {
        let want = buf.len().min((size - off) as usize);
        let n = f.read_at(&mut buf[..want], off)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "payload shorter than recorded"));
        }
        digest.update(&buf[..n]);
        off += n as u64;
    }
    Ok(digest.finalize())
}

impl BlobReader {
    pub fn new(blob: Arc<LayerBlob>) -> BlobReader {
        BlobReader { blob, cur: Mutex::default(), chunk: Mutex::default() }
    }

    pub fn blob(&self) -> &Arc<LayerBlob> {
        &self.blob
    }

    /// Copies `out.len()` bytes of payload `file` (of `size` bytes) from `within`.
    /// A payload not checked yet is checked first: a small one by reading it whole
    /// (straight into `out` when `out` is the whole payload, else into the reader's
    /// buffer, which then serves the following reads), a large one by a CRC pass.
    fn read_payload(&self, file: u32, size: u64, within: u64, out: &mut [u8]) -> io::Result<()> {
        let mut cur = self.cur.lock().unwrap_or_else(|p| p.into_inner());
        if cur.file != Some(file) {
            cur.file = None;
            cur.open = None;
            let (f, want, stamp, verified) = self.blob.open_payload(file, size)?;
            let blob = &self.blob;
            if !verified && size <= SMALL_PAYLOAD {
                if within == 0 && out.len() as u64 == size {
                    read_exact_at(&f, out).map_err(|e| blob.err(file, e))?;
                    blob.check_crc(file, crc64(out), want, stamp)?;
                    // Served whole from `out`; the file stays open for any re-read.
                    cur.open = Some(Arc::new(f));
                    cur.file = Some(file);
                    return Ok(());
                }
                let n = size as usize;
                if cur.buf.len() < n {
                    cur.buf.resize(n, 0);
                }
                read_exact_at(&f, &mut cur.buf[..n]).map_err(|e| blob.err(file, e))?;
                blob.check_crc(file, crc64(&cur.buf[..n]), want, stamp)?;
            } else {
                if !verified {
                    let got = crc_of(&f, size, &mut cur.buf).map_err(|e| blob.err(file, e))?;
                    blob.check_crc(file, got, want, stamp)?;
                }
                cur.open = Some(Arc::new(f));
            }
            cur.file = Some(file);
        }
        let Some(f) = cur.open.clone() else {
            // A small payload: its checked content is at the start of the buffer.
            let w = within as usize;
            out.copy_from_slice(&cur.buf[w..w + out.len()]);
            return Ok(());
        };
        drop(cur);
        let mut got = 0;
        while got < out.len() {
            let r = f.read_at(&mut out[got..], within + got as u64).map_err(|err| self.blob.err(file, err))?;
            if r == 0 {
                return Err(self.blob.err(file, "payload file shrank while reading"));
            }
            got += r;
        }
        Ok(())
    }

    /// Fills `buf` with the tar bytes at `offset`; returns fewer bytes only at the end
    /// of the blob. Errors name the layer and the file that could not be read. Waits
    /// for the index to cover the range if it is still being built.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let ix = &*self.blob.index;
        let size = ix.size();
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let end = offset.saturating_add(buf.len() as u64).min(size);
        ix.ensure(end).map_err(|e| io::Error::other(format!("layer {}: {e}", self.blob.layer)))?;
        let buf = &mut buf[..(end - offset) as usize];
        let mut done = 0usize;
        let mut i = ix.table().entry_at(offset);
        while done < buf.len() {
            let pos = offset + done as u64;
            let t = ix.table();
            let Some(&e) = t.entries.get(i) else { break };
            let len = t.entry_len(i);
            let within = pos - e.start;
            let n = ((len - within) as usize).min(buf.len() - done);
            let out = &mut buf[done..done + n];
            match e.src() {
                Src::Seg { arena } => {
                    let mut cache = self.chunk.lock().unwrap_or_else(|p| p.into_inner());
                    t.segs.read(arena + within, out, &mut cache);
                }
                Src::File { file } => {
                    drop(t);
                    self.read_payload(file, len, within, out)?;
                }
            }
            done += n;
            i += 1;
        }
        Ok(done)
    }
}
