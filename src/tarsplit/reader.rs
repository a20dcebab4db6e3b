//! Random-access reads of a rebuilt layer tar.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::segs::ChunkCache;
use super::{confine, Index, Src, CRC64};
use crate::Id;

/// A layer's index plus the directories its payloads are read from.
#[derive(Debug)]
pub struct LayerBlob {
    layer: Id,
    index: Arc<Index>,
    /// Handles on the layer's content directories, in lookup order.
    dirs: Vec<OwnedFd>,
}

/// One reader's state over a [`LayerBlob`]: the last payload file it opened, so a
/// sequential stream does not reopen a file per read.
#[derive(Debug)]
pub struct BlobReader {
    blob: Arc<LayerBlob>,
    cur: Mutex<Option<(u32, Arc<File>)>>,
    chunk: Mutex<ChunkCache>,
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
        Ok(LayerBlob { layer, index, dirs })
    }

    pub fn size(&self) -> u64 {
        self.index.size
    }

    pub fn layer(&self) -> &Id {
        &self.layer
    }

    pub fn index(&self) -> &Arc<Index> {
        &self.index
    }

    fn err(&self, file: u32, what: impl std::fmt::Display) -> io::Error {
        io::Error::other(format!("layer {}: {}: {what}", self.layer, String::from_utf8_lossy(self.index.name(file))))
    }

    /// Opens payload `file`, checking it is a regular file of the recorded size, and
    /// that its content has the recorded CRC-64 (again whenever the file changed since).
    fn open_payload(&self, file: u32, size: u64) -> io::Result<File> {
        let name = self.index.name(file);
        let mut last = None;
        let mut found = None;
        for dir in &self.dirs {
            match confine::open_beneath(dir, name) {
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
        let info = &self.index.files[file as usize];
        let stamp = super::stamp(&md);
        if info.verified.load(Ordering::Acquire) != stamp {
            if let Some(want) = info.crc {
                let got = crc_of(&f, size).map_err(|e| self.err(file, e))?;
                if got != want {
                    return Err(
                        self.err(file, format_args!("payload CRC-64 {got:016x} differs from tar-split's {want:016x}"))
                    );
                }
            }
            info.verified.store(stamp, Ordering::Release);
        }
        Ok(f)
    }
}

fn crc_of(f: &File, size: u64) -> io::Result<u64> {
    let mut digest = CRC64.digest();
    let mut buf = vec![0u8; (256 << 10).min(size as usize).max(1)];
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
        BlobReader { blob, cur: Mutex::new(None), chunk: Mutex::default() }
    }

    pub fn blob(&self) -> &Arc<LayerBlob> {
        &self.blob
    }

    fn payload(&self, file: u32, size: u64) -> io::Result<Arc<File>> {
        let mut cur = self.cur.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((n, f)) = cur.as_ref() {
            if *n == file {
                return Ok(f.clone());
            }
        }
        let f = Arc::new(self.blob.open_payload(file, size)?);
        *cur = Some((file, f.clone()));
        Ok(f)
    }

    /// Fills `buf` with the tar bytes at `offset`; returns fewer bytes only at the end
    /// of the blob. Errors name the layer and the file that could not be read.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let ix = &*self.blob.index;
        if offset >= ix.size || buf.is_empty() {
            return Ok(0);
        }
        let mut done = 0usize;
        let mut i = ix.entry_at(offset);
        while done < buf.len() && i < ix.entries.len() {
            let e = ix.entries[i];
            let pos = offset + done as u64;
            let within = pos - e.start;
            let n = ((e.len - within) as usize).min(buf.len() - done);
            let out = &mut buf[done..done + n];
            match e.src {
                Src::Seg { arena } => {
                    let mut cache = self.chunk.lock().unwrap_or_else(|p| p.into_inner());
                    ix.segs.read(arena + within, out, &mut cache);
                }
                Src::File { file } => {
                    let f = self.payload(file, e.len)?;
                    let mut got = 0;
                    while got < n {
                        let r =
                            f.read_at(&mut out[got..], within + got as u64).map_err(|err| self.blob.err(file, err))?;
                        if r == 0 {
                            return Err(self.blob.err(file, "payload file shrank while reading"));
                        }
                        got += r;
                    }
                }
            }
            done += n;
            i += 1;
        }
        Ok(done)
    }
}
