//! The verbatim segment bytes of a layer (tar headers, padding, end blocks), kept
//! deflate-compressed in fixed-size chunks. Headers are mostly zeros, so a layer with
//! 100k files needs a few MiB here instead of ~60 MiB. While an index is being built,
//! a chunk that just filled stays readable uncompressed until its compressed form
//! (made outside the index lock) replaces it.

use std::io::{Read, Write};
use std::sync::Arc;

use flate2::Compression;

/// Uncompressed size of a chunk.
const CHUNK: usize = 64 << 10;

#[derive(Debug)]
enum Chunk {
    Raw(Arc<[u8]>),
    Deflated(Box<[u8]>),
}

#[derive(Debug, Default)]
pub struct Segs {
    chunks: Vec<Chunk>,
    /// The last, still growing chunk (uncompressed).
    tail: Vec<u8>,
}

/// A reader's most recently inflated chunk.
#[derive(Debug, Default)]
pub struct ChunkCache {
    chunk: Option<(usize, Vec<u8>)>,
}

pub fn deflate(data: &[u8]) -> Box<[u8]> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::with_capacity(data.len() / 8), Compression::fast());
    e.write_all(data).expect("writing to a Vec cannot fail");
    e.finish().expect("writing to a Vec cannot fail").into_boxed_slice()
}

impl Segs {
    /// Total bytes stored.
    #[cfg(test)]
    pub fn len(&self) -> u64 {
        (self.chunks.len() * CHUNK + self.tail.len()) as u64
    }

    /// Appends `bytes`; returns the chunks that filled up, to be compressed by the
    /// caller and handed back with [`Segs::packed`].
    #[must_use]
    pub fn push(&mut self, mut bytes: &[u8]) -> Vec<(usize, Arc<[u8]>)> {
        let mut full = Vec::new();
        while !bytes.is_empty() {
            if self.tail.capacity() < CHUNK {
                self.tail.reserve_exact(CHUNK - self.tail.len());
            }
            let n = (CHUNK - self.tail.len()).min(bytes.len());
            self.tail.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.tail.len() == CHUNK {
                let raw: Arc<[u8]> = Arc::from(&self.tail[..]);
                full.push((self.chunks.len(), raw.clone()));
                self.chunks.push(Chunk::Raw(raw));
                self.tail.clear();
            }
        }
        full
    }

    /// Replaces raw chunk `idx` by its compressed form.
    pub fn packed(&mut self, idx: usize, deflated: Box<[u8]>) {
        self.chunks[idx] = Chunk::Deflated(deflated);
    }

    pub fn finish(&mut self) {
        self.chunks.shrink_to_fit();
        self.tail.shrink_to_fit();
    }

    pub fn heap_bytes(&self) -> usize {
        let chunks: usize = self
            .chunks
            .iter()
            .map(|c| match c {
                Chunk::Raw(r) => r.len(),
                Chunk::Deflated(d) => d.len(),
            })
            .sum();
        chunks + self.chunks.capacity() * std::mem::size_of::<Chunk>() + self.tail.capacity()
    }

    /// Copies `out.len()` bytes from offset `off` (which the caller keeps in range).
    pub fn read(&self, mut off: u64, out: &mut [u8], cache: &mut ChunkCache) {
        let mut done = 0;
        while done < out.len() {
            let idx = (off / CHUNK as u64) as usize;
            let within = (off % CHUNK as u64) as usize;
            let src: &[u8] = match self.chunks.get(idx) {
                None => &self.tail,
                Some(Chunk::Raw(r)) => r,
                Some(Chunk::Deflated(d)) => {
                    if cache.chunk.as_ref().map(|c| c.0) != Some(idx) {
                        let mut buf = match cache.chunk.take() {
                            Some((_, mut b)) => {
                                b.clear();
                                b
                            }
                            None => Vec::with_capacity(CHUNK),
                        };
                        flate2::read::DeflateDecoder::new(&d[..])
                            .read_to_end(&mut buf)
                            .expect("inflating bytes this process deflated cannot fail");
                        cache.chunk = Some((idx, buf));
                    }
                    &cache.chunk.as_ref().expect("just filled").1
                }
            };
            let n = (src.len() - within).min(out.len() - done);
            out[done..done + n].copy_from_slice(&src[within..within + n]);
            done += n;
            off += n as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_what_was_pushed() {
        let data: Vec<u8> = (0..300_000u32).map(|i| if i % 512 < 100 { (i % 251) as u8 } else { 0 }).collect();
        let mut s = Segs::default();
        let mut cache = ChunkCache::default();
        for (i, piece) in data.chunks(777).enumerate() {
            let full = s.push(piece);
            // Raw chunks are readable before they are compressed; compress every other batch late.
            if i % 2 == 0 {
                for (idx, raw) in full {
                    s.packed(idx, deflate(&raw));
                }
            } else {
                let mut out = vec![0u8; s.len() as usize];
                s.read(0, &mut out, &mut cache);
                assert!(out == data[..out.len()]);
                for (idx, raw) in full {
                    s.packed(idx, deflate(&raw));
                }
            }
        }
        s.finish();
        assert_eq!(s.len(), data.len() as u64);
        assert!(s.heap_bytes() < data.len() / 3, "{}", s.heap_bytes());
        for (off, len) in [(0, 10), (65_530, 20), (131_000, 70_000), (299_990, 10), (5, 299_995)] {
            let mut out = vec![0u8; len];
            s.read(off as u64, &mut out, &mut cache);
            assert!(out == data[off..off + len], "{off}+{len}");
        }
    }
}
