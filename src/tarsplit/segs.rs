//! The verbatim segment bytes of a layer (tar headers, padding, end blocks), kept
//! deflate-compressed in fixed-size chunks. Headers are mostly zeros, so a layer with
//! 100k files needs a few MiB here instead of ~60 MiB.

use std::io::{Read, Write};

use flate2::Compression;

/// Uncompressed size of a chunk.
const CHUNK: usize = 64 << 10;

#[derive(Debug, Default)]
pub struct Segs {
    chunks: Vec<Box<[u8]>>,
    /// The last, still growing chunk (uncompressed).
    tail: Vec<u8>,
}

/// A reader's most recently inflated chunk.
#[derive(Debug, Default)]
pub struct ChunkCache {
    chunk: Option<(usize, Vec<u8>)>,
}

fn deflate(data: &[u8]) -> Box<[u8]> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::with_capacity(data.len() / 8), Compression::fast());
    e.write_all(data).expect("writing to a Vec cannot fail");
    e.finish().expect("writing to a Vec cannot fail").into_boxed_slice()
}

impl Segs {
    /// Total bytes stored.
    pub fn len(&self) -> u64 {
        (self.chunks.len() * CHUNK + self.tail.len()) as u64
    }

    pub fn push(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let n = (CHUNK - self.tail.len()).min(bytes.len());
            self.tail.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.tail.len() == CHUNK {
                self.chunks.push(deflate(&self.tail));
                self.tail.clear();
            }
        }
    }

    pub fn finish(&mut self) {
        self.chunks.shrink_to_fit();
        self.tail.shrink_to_fit();
    }

    pub fn heap_bytes(&self) -> usize {
        self.chunks.iter().map(|c| c.len()).sum::<usize>() + self.tail.capacity()
    }

    /// Copies `out.len()` bytes from offset `off` (which the caller keeps in range).
    pub fn read(&self, mut off: u64, out: &mut [u8], cache: &mut ChunkCache) {
        let mut done = 0;
        while done < out.len() {
            let idx = (off / CHUNK as u64) as usize;
            let within = (off % CHUNK as u64) as usize;
            let src: &[u8] = if idx == self.chunks.len() {
                &self.tail
            } else {
                if cache.chunk.as_ref().map(|c| c.0) != Some(idx) {
                    let mut buf = Vec::with_capacity(CHUNK);
                    flate2::read::DeflateDecoder::new(&self.chunks[idx][..])
                        .read_to_end(&mut buf)
                        .expect("inflating bytes this process deflated cannot fail");
                    cache.chunk = Some((idx, buf));
                }
                &cache.chunk.as_ref().expect("just filled").1
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
        for piece in data.chunks(777) {
            s.push(piece);
        }
        s.finish();
        assert_eq!(s.len(), data.len() as u64);
        assert!(s.heap_bytes() < data.len() / 3, "{}", s.heap_bytes());
        let mut cache = ChunkCache::default();
        for (off, len) in [(0, 10), (65_530, 20), (131_000, 70_000), (299_990, 10), (5, 299_995)] {
            let mut out = vec![0u8; len];
            s.read(off as u64, &mut out, &mut cache);
            assert!(out == data[off..off + len], "{off}+{len}");
        }
    }
}
