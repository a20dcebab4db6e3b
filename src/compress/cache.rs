//! The on-disk cache of compressed blobs.
//!
//! `DIR/v1/<key>.blob` holds the compressed bytes, `DIR/v1/<key>.json` what they are
//! (uncompressed digest, codec, compressed digest and size) and the blob file's stamp
//! (dev, inode, size, mtime, ctime) when it was last fully checked. The key hashes
//! everything that decides the bytes: [`FORMAT`], codec, level, the library and its
//! version, and the uncompressed digest.
//!
//! Publishing is atomic: a temporary file is written, fsynced and renamed into place,
//! then checked in full (it hashes to what was written and decompresses to the
//! uncompressed digest), then its description is written the same way. Concurrent
//! builders of one entry (two mounts sharing the cache) write the same bytes, and the
//! last rename wins. A blob whose stamp differs from the recorded one is checked in full
//! before it is served; one that fails is removed and rebuilt, never served. The
//! description's mtime is the entry's last use, for least-recently-used eviction.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::Error;
use crate::registry::compressed::{Codec, Ready};
use crate::Digest;

/// Stands for the output-deciding choices of this code: zstd in multi-threaded mode with
/// a checksum, the content size pledged and recorded; gzip with mtime 0, no name, OS 255.
/// Bump it when any of them changes.
pub const FORMAT: &str = "cstor-fs-compress-1";
/// flate2's default backend. `tests::gzip_output_is_pinned` fails when a new version of
/// it compresses differently; then bump this.
const GZIP_ENGINE: &str = "flate2-1/miniz_oxide-0.9";

/// The identity of a file's contents as far as a cheap check goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    pub fn of(f: &File) -> io::Result<Stamp> {
        let m = f.metadata()?;
        Ok(Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// A ready, verified cache entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub ready: Ready,
    pub stamp: Stamp,
}

#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    format: String,
    diff: String,
    codec: String,
    digest: String,
    size: u64,
    stamp: Stamp,
}

/// The library (and version) that produces `codec`'s bytes.
pub fn engine(codec: Codec) -> String {
    match codec {
        Codec::Zstd => format!("zstd-{}", zstd::zstd_safe::version_string()),
        Codec::Gzip => GZIP_ENGINE.to_string(),
    }
}

/// The cache key of `diff` compressed with `codec` at `level`.
pub fn key(diff: &Digest, codec: Codec, level: i32) -> String {
    let text = format!("{FORMAT}\n{}\n{level}\n{}\n{diff}\n", codec.name(), engine(codec));
    Digest::of(text.as_bytes()).hex()
}

#[derive(Debug)]
pub struct Cache {
    dir: PathBuf,
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl Cache {
    pub fn new(root: &Path) -> Cache {
        Cache { dir: root.join("v1") }
    }

    pub fn blob_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.blob"))
    }

    fn meta_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    fn cache_err(&self, what: impl Into<String>) -> impl FnOnce(io::Error) -> Error + '_ {
        let what = what.into();
        move |source| Error::Cache { dir: self.dir.clone(), what, source }
    }

    fn read_meta(&self, key: &str, diff: &Digest, codec: Codec) -> Option<Meta> {
        let bytes = std::fs::read(self.meta_path(key)).ok()?;
        let m: Meta = serde_json::from_slice(&bytes).ok()?;
        (m.format == FORMAT && m.diff == diff.to_string() && m.codec == codec.name()).then_some(m)
    }

    fn write_meta(&self, key: &str, diff: &Digest, codec: Codec, e: &Entry) -> Result<(), Error> {
        let m = Meta {
            format: FORMAT.into(),
            diff: diff.to_string(),
            codec: codec.name().into(),
            digest: e.ready.digest.to_string(),
            size: e.ready.size,
            stamp: e.stamp,
        };
        let bytes = serde_json::to_vec(&m).expect("plain struct");
        let (tmp, mut f) = self.temp(key, "json")?;
        let r = f.write_all(&bytes).and_then(|_| f.sync_all()).and_then(|_| std::fs::rename(&tmp, self.meta_path(key)));
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r.map_err(self.cache_err("writing an entry's description"))
    }

    fn temp(&self, key: &str, ext: &str) -> Result<(PathBuf, File), Error> {
        if !self.dir.is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)
                .map_err(self.cache_err("creating it"))?;
        }
        let n = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!(".{key}.{ext}.{}.{n}.tmp", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(self.cache_err("creating a temporary file"))?;
        Ok((tmp, f))
    }

    fn remove(&self, key: &str) {
        let _ = std::fs::remove_file(self.blob_path(key));
        let _ = std::fs::remove_file(self.meta_path(key));
    }

    /// The entry for `key` if present and intact (a changed stamp costs a full check; a
    /// failed check removes the entry).
    pub fn lookup(&self, key: &str, diff: &Digest, codec: Codec) -> Option<Entry> {
        let meta = self.read_meta(key, diff, codec)?;
        let digest = meta.digest.parse().ok()?;
        let want = Entry { ready: Ready { digest, size: meta.size }, stamp: meta.stamp };
        match self.open_checked(key, &want, diff, codec) {
            Ok(f) => Stamp::of(&f).ok().map(|stamp| Entry { ready: want.ready, stamp }),
            Err(why) => {
                log::warn!("{why}: removing it");
                self.remove(key);
                None
            }
        }
    }

    /// Opens the blob of `want`, checked: the stamp recorded, or else a full check (then
    /// the new stamp is recorded). Marks the entry used.
    pub fn open_checked(&self, key: &str, want: &Entry, diff: &Digest, codec: Codec) -> Result<File, String> {
        let path = self.blob_path(key);
        let name = || format!("cache entry {}", path.display());
        let f = File::open(&path).map_err(|e| format!("{}: {e}", name()))?;
        let stamp = Stamp::of(&f).map_err(|e| format!("{}: {e}", name()))?;
        if stamp != want.stamp || stamp.size != want.ready.size {
            let got = check_file(&f, diff, codec).map_err(|why| format!("{}: {why}", name()))?;
            if got != want.ready {
                return Err(format!(
                    "{}: holds {} ({} bytes), not {}",
                    name(),
                    got.digest,
                    got.size,
                    want.ready.digest
                ));
            }
            let _ = self.write_meta(key, diff, codec, &Entry { ready: got, stamp });
        } else {
            // Last use, for eviction.
            let _ = File::options()
                .write(true)
                .open(self.meta_path(key))
                .and_then(|m| m.set_modified(std::time::SystemTime::now()));
        }
        Ok(f)
    }

    /// Builds an entry: `fill` writes the compressed bytes into a temporary file, which is
    /// fsynced, renamed into place, checked in full, and described.
    pub fn build(
        &self,
        key: &str,
        diff: &Digest,
        codec: Codec,
        fill: impl FnOnce(&mut File) -> Result<Ready, Error>,
    ) -> Result<Entry, Error> {
        let (tmp, mut f) = self.temp(key, "blob")?;
        let r = (|| {
            let ready = fill(&mut f)?;
            f.sync_all().map_err(self.cache_err("writing a compressed blob"))?;
            std::fs::rename(&tmp, self.blob_path(key)).map_err(self.cache_err("publishing a compressed blob"))?;
            Ok(ready)
        })();
        let ready = match r {
            Ok(r) => r,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let checked = Stamp::of(&f).map_err(|e| e.to_string()).and_then(|stamp| {
            let got = check_file(&f, diff, codec)?;
            if got != ready {
                return Err(format!("read back as {} ({} bytes), written as {}", got.digest, got.size, ready.digest));
            }
            Ok(stamp)
        });
        let stamp = match checked {
            Ok(s) => s,
            Err(why) => {
                // Never left where it could be served.
                self.remove(key);
                return Err(Error::Check { path: self.blob_path(key), why });
            }
        };
        let e = Entry { ready, stamp };
        if let Err(err) = self.write_meta(key, diff, codec, &e) {
            self.remove(key);
            return Err(err);
        }
        Ok(e)
    }

    /// Removes least recently used entries until the cache holds at most `max` bytes,
    /// sparing `keep` (just built) unless it alone is over the limit; removes temporary
    /// files of builders that died.
    pub fn evict(&self, max: u64, keep: Option<&str>) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else { return };
        let mut entries = Vec::new();
        let mut total = 0u64;
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Ok(m) = e.metadata() else { continue };
            if name.ends_with(".tmp") {
                let old = m.modified().ok().and_then(|t| t.elapsed().ok()).is_some_and(|a| a.as_secs() > 3600);
                if old {
                    let _ = std::fs::remove_file(e.path());
                }
                continue;
            }
            let Some(key) = name.strip_suffix(".blob") else { continue };
            let used = std::fs::metadata(self.meta_path(key)).and_then(|m| m.modified()).ok();
            total += m.len();
            entries.push((used, key.to_string(), m.len()));
        }
        if total <= max {
            return;
        }
        entries.sort();
        let (mut n, mut freed) = (0, 0u64);
        for (_, key, len) in entries
            .iter()
            .filter(|(_, k, _)| Some(k.as_str()) != keep)
            .chain(entries.iter().filter(|(_, k, _)| Some(k.as_str()) == keep))
        {
            if total <= max {
                break;
            }
            self.remove(key);
            total -= len;
            freed += len;
            n += 1;
        }
        log::info!(
            "compression cache {}: evicted {n} least recently used entries ({freed} bytes) to stay within {max} bytes",
            self.dir.display()
        );
    }
}

/// Positional reads from the start of a file, whatever its offset.
struct At<'a> {
    f: &'a File,
    off: u64,
}

impl Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.f.read_at(buf, self.off)?;
        self.off += n as u64;
        Ok(n)
    }
}

/// Reads the whole file: what it hashes to, and that it decompresses (as `codec`) to
/// exactly the bytes of `diff`, with nothing after the compressed stream.
pub fn check_file(f: &File, diff: &Digest, codec: Codec) -> Result<Ready, String> {
    let mut raw = io::BufReader::with_capacity(super::CHUNK, super::Hashing::new(At { f, off: 0 }));
    let mut plain = super::Hashing::new(io::sink());
    let r = match codec {
        Codec::Zstd => {
            zstd::stream::read::Decoder::with_buffer(&mut raw).and_then(|d| io::copy(&mut d.single_frame(), &mut plain))
        }
        Codec::Gzip => io::copy(&mut flate2::bufread::GzDecoder::new(&mut raw), &mut plain),
    };
    r.map_err(|e| format!("does not decompress: {e}"))?;
    // Trailing bytes would be served too: they must not be there.
    let rest = io::copy(&mut raw, &mut io::sink()).map_err(|e| e.to_string())?;
    if rest != 0 {
        return Err(format!("{rest} bytes after the compressed stream"));
    }
    let raw = raw.into_inner();
    let got = plain.digest();
    if got != *diff {
        return Err(format!("decompresses to {got} ({} bytes), not {diff}", plain.n));
    }
    Ok(Ready { digest: raw.digest(), size: raw.n })
}
