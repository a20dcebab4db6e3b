//! `compress`: opt-in compressed delivery (`compress=zstd|gzip[:LEVEL]`).
//!
//! A [`Compressor`] builds, for each layer an image needs, one compressed blob per codec,
//! in the background (one layer at a time, at low CPU priority; zstd uses a fixed pool of
//! worker threads), into a cache directory shared by every mount and `serve` of any store
//! ([`cache`]). A blob becomes *ready* only once it is on disk (fsynced, renamed into
//! place) and verified: its bytes hash to the digest recorded, and they decompress to the
//! layer's uncompressed digest. [`Compressor::apply`] then lets
//! [`crate::registry::compressed::apply`] derive the compressed manifests from what is
//! ready; `live` calls it on every publish and republishes when a blob became ready.
//!
//! Output is deterministic (fixed parameters, zstd's multi-threaded mode whose output does
//! not depend on the number of workers, the source size pledged, gzip with mtime 0 and no
//! name), so a blob evicted or damaged is rebuilt byte for byte under the digest already
//! published. Everything that could change the bytes (format parameters, codec, level,
//! library version) is part of the cache key.

pub mod cache;

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use sha2::Digest as _;

use crate::live::{Live, View};
use crate::registry::compressed::{self, Codec, Ready, ReadyMap};
use crate::registry::Registry;
use crate::tarsplit::BlobReader;
use crate::{Digest, Id};
use cache::{Cache, Entry};

/// Default levels: zstd 3 (its own default), gzip 6 (gzip's).
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;
pub const DEFAULT_GZIP_LEVEL: u32 = 6;
/// Default cache size limit.
pub const DEFAULT_CACHE_SIZE: u64 = 10 << 30;
/// zstd worker threads. Any count >= 1 gives the same bytes (zstd's multi-threaded
/// format does not depend on it; `tests::zstd_output_does_not_depend_on_workers`).
const ZSTD_WORKERS: u32 = 2;
/// After a failed build, wait this long before trying that blob again.
const RETRY: Duration = Duration::from_secs(60);
const CHUNK: usize = 1 << 20;

/// `zstd[:LEVEL]` or `gzip[:LEVEL]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    pub codec: Codec,
    pub level: i32,
}

impl FromStr for Spec {
    type Err = String;
    fn from_str(s: &str) -> Result<Spec, String> {
        let (name, level) = match s.split_once(':') {
            Some((n, l)) => (n, Some(l.parse::<i32>().map_err(|_| format!("compression level {l:?}: not a number"))?)),
            None => (s, None),
        };
        let spec = match name {
            "zstd" => Spec { codec: Codec::Zstd, level: level.unwrap_or(DEFAULT_ZSTD_LEVEL) },
            "gzip" => Spec { codec: Codec::Gzip, level: level.unwrap_or(DEFAULT_GZIP_LEVEL as i32) },
            _ => return Err(format!("unknown compression {name:?} (zstd or gzip, optionally :LEVEL)")),
        };
        let range = match spec.codec {
            Codec::Zstd => 1..=19,
            Codec::Gzip => 1..=9,
        };
        if !range.contains(&spec.level) {
            return Err(format!("{name} level {} is outside {range:?}", spec.level));
        }
        Ok(spec)
    }
}

impl std::fmt::Display for Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.codec.name(), self.level)
    }
}

/// A size with an optional K/M/G/T suffix (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("size {s:?}: unknown suffix {c:?} (K, M, G or T)")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("size {s:?}: not a number of bytes (e.g. 500M, 10G)"))
}

/// The cache directory used when none is given: /var/cache/cstor-fs for root,
/// `$XDG_CACHE_HOME/cstor-fs` (or `~/.cache/cstor-fs`) otherwise.
pub fn default_cache_dir() -> PathBuf {
    if crate::sys::euid() == 0 {
        return PathBuf::from("/var/cache/cstor-fs");
    }
    let xdg = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()).map(PathBuf::from);
    let home = || std::env::var_os("HOME").filter(|x| !x.is_empty()).map(|h| PathBuf::from(h).join(".cache"));
    xdg.or_else(home).unwrap_or_else(std::env::temp_dir).join("cstor-fs")
}

/// What compressed delivery was asked for.
#[derive(Debug, Clone)]
pub struct Settings {
    pub spec: Spec,
    pub dir: PathBuf,
    pub max_bytes: u64,
}

impl Settings {
    /// The level a blob of `codec` is built with (Docker images get gzip in zstd mode,
    /// at gzip's default level).
    pub fn level(&self, codec: Codec) -> i32 {
        if codec == self.spec.codec {
            self.spec.level
        } else {
            match codec {
                Codec::Zstd => DEFAULT_ZSTD_LEVEL,
                Codec::Gzip => DEFAULT_GZIP_LEVEL as i32,
            }
        }
    }
}

/// Why a compressed blob could not be built or served.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("layer {layer}: reading it: {source}")]
    Layer { layer: Id, source: io::Error },
    #[error("layer {layer} rebuilt to {got} ({size} bytes), not its digest {diff}")]
    LayerDigest { layer: Id, diff: Digest, got: Digest, size: u64 },
    #[error("compressing layer {layer} ({codec}): {source}")]
    Encode { layer: Id, codec: &'static str, source: io::Error },
    #[error("cache {dir}: {what}: {source}")]
    Cache { dir: PathBuf, what: String, source: io::Error },
    #[error("cache entry {path}: {why}")]
    Check { path: PathBuf, why: String },
    #[error("{0}")]
    Gone(String),
}

impl Error {
    /// Whether this is the cache directory being unusable (read-only, full, not ours).
    pub fn is_cache_unusable(&self) -> bool {
        match self {
            Error::Cache { source, .. } | Error::Encode { source, .. } => matches!(
                source.raw_os_error(),
                Some(libc::ENOSPC | libc::EROFS | libc::EACCES | libc::EPERM | libc::EDQUOT)
            ),
            _ => false,
        }
    }
}

/// What `list` shows for one wanted blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ready(Ready),
    NotBuilt,
}

/// The background compressor and the ready blobs (see the module doc).
pub struct Compressor {
    settings: Settings,
    cache: Cache,
    /// Ready and verified blobs, by (uncompressed digest, codec). Within a process an
    /// entry stays known even when evicted: it is rebuilt, to the same bytes, on open.
    known: Mutex<HashMap<(Digest, Codec), Entry>>,
    queue: Mutex<VecDeque<(Digest, Codec, Id)>>,
    wake: Condvar,
    /// Blobs queued or done in this process: each is built at most once.
    queued: Mutex<HashSet<(Digest, Codec)>>,
    failed: Mutex<HashMap<(Digest, Codec), Instant>>,
    /// One builder per cache entry in this process.
    building: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    dirty: AtomicBool,
    live: OnceLock<Weak<Live>>,
    last_error: Mutex<String>,
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compressor").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl Compressor {
    /// Refuses a cache directory inside any of `store_dirs` (the store is never written).
    pub fn new(settings: Settings, store_dirs: &[PathBuf]) -> Result<Compressor, String> {
        let canon = |p: &Path| {
            // The cache may not exist yet: canonicalize its nearest existing ancestor.
            let mut base = p.to_path_buf();
            let mut rest = Vec::new();
            while !base.exists() {
                match (base.file_name().map(|n| n.to_os_string()), base.parent()) {
                    (Some(n), Some(parent)) => {
                        rest.push(n);
                        base = parent.to_path_buf();
                    }
                    _ => break,
                }
            }
            let mut c = base.canonicalize().unwrap_or(base);
            c.extend(rest.iter().rev());
            c
        };
        let dir = canon(&settings.dir);
        for s in store_dirs {
            if dir.starts_with(canon(s)) {
                return Err(format!(
                    "the compression cache {} is inside the store {}: cstor-fs never writes the store; pick another cache=",
                    settings.dir.display(),
                    s.display()
                ));
            }
        }
        Ok(Compressor {
            cache: Cache::new(&settings.dir),
            settings,
            known: Mutex::default(),
            queue: Mutex::default(),
            wake: Condvar::new(),
            queued: Mutex::default(),
            failed: Mutex::default(),
            building: Mutex::default(),
            dirty: AtomicBool::new(false),
            live: OnceLock::new(),
            last_error: Mutex::default(),
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Couples the compressor with the state it reads layers from (`Live::set_compressor`).
    pub fn attach(&self, live: Weak<Live>) {
        let _ = self.live.set(live);
    }

    fn key(&self, diff: &Digest, codec: Codec) -> String {
        cache::key(diff, codec, self.settings.level(codec))
    }

    /// Adds the compressed manifests that the ready blobs allow (see
    /// [`compressed::apply`]).
    pub fn apply(&self, reg: &mut Registry) {
        let ready: ReadyMap = lock(&self.known).iter().map(|(k, e)| (*k, e.ready)).collect();
        compressed::apply(reg, self.settings.spec.codec, &ready);
    }

    /// Whether a blob became ready (or was lost) since the last call.
    pub fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::AcqRel)
    }

    /// The state of one wanted blob.
    pub fn status(&self, diff: &Digest, codec: Codec) -> Status {
        match lock(&self.known).get(&(*diff, codec)) {
            Some(e) => Status::Ready(e.ready),
            None => Status::NotBuilt,
        }
    }

    /// Queues every blob `view` needs that is not ready, not queued before, and did not
    /// fail within [`RETRY`].
    pub fn want(&self, view: &View) {
        let wanted = compressed::wanted(&view.registry, self.settings.spec.codec);
        let known = lock(&self.known);
        let mut queued = lock(&self.queued);
        let mut failed = lock(&self.failed);
        failed.retain(|_, t| t.elapsed() < RETRY);
        let mut q = lock(&self.queue);
        for (diff, codec) in wanted {
            let k = (diff, codec);
            if known.contains_key(&k) || failed.contains_key(&k) || !queued.insert(k) {
                continue;
            }
            if let Some(crate::registry::BlobSource::Layer(id)) = view.registry.blobs.get(&diff).map(|b| &b.source) {
                q.push_back((diff, codec, *id));
            }
        }
        drop(q);
        self.wake.notify_all();
    }

    /// Takes up what the cache already holds for `view`'s blobs, without building
    /// (for `list` and `verify`). A damaged entry is left out (and removed).
    pub fn scan(&self, view: &View) {
        for (diff, codec) in compressed::wanted(&view.registry, self.settings.spec.codec) {
            if let Some(e) = self.cache.lookup(&self.key(&diff, codec), &diff, codec) {
                lock(&self.known).insert((diff, codec), e);
                self.dirty.store(true, Ordering::Release);
            }
        }
    }

    /// Starts the background worker (after daemonizing and entering a user namespace).
    pub fn start(self: &Arc<Self>) -> io::Result<()> {
        let me = self.clone();
        std::thread::Builder::new().name("compress".into()).spawn(move || me.work())?;
        Ok(())
    }

    fn live(&self) -> Option<Arc<Live>> {
        self.live.get().and_then(Weak::upgrade)
    }

    fn work(&self) {
        // Compression yields to serving: nice 10 for this thread and the zstd workers it
        // starts (threads inherit it).
        crate::sys::nice_this_thread(10);
        let mut busy = false;
        loop {
            if let Some(live) = self.live() {
                self.want(&live.view());
            }
            let job = {
                let q = lock(&self.queue);
                let (mut q, _) = self
                    .wake
                    .wait_timeout_while(q, Duration::from_secs(30), |q| q.is_empty())
                    .unwrap_or_else(|p| p.into_inner());
                q.pop_front()
            };
            let Some((diff, codec, layer)) = job else {
                if busy {
                    busy = false;
                    log::info!("compression idle: {} compressed blobs ready", lock(&self.known).len());
                }
                continue;
            };
            busy = true;
            self.one(&diff, codec, &layer);
            if lock(&self.queue).is_empty() {
                busy = false;
                log::info!("compression idle: {} compressed blobs ready", lock(&self.known).len());
            }
        }
    }

    /// Makes one blob ready: from the cache if there, else built.
    fn one(&self, diff: &Digest, codec: Codec, layer: &Id) {
        let key = self.key(diff, codec);
        let entry = match self.cache.lookup(&key, diff, codec) {
            Some(e) => Ok(e),
            None => self.build(&key, layer, diff, codec),
        };
        match entry {
            Ok(e) => {
                lock(&self.known).insert((*diff, codec), e);
                self.dirty.store(true, Ordering::Release);
                self.cache.evict(self.settings.max_bytes, Some(&key));
            }
            Err(e) => {
                lock(&self.failed).insert((*diff, codec), Instant::now());
                lock(&self.queued).remove(&(*diff, codec));
                self.report(&e);
            }
        }
    }

    /// One log line per distinct problem.
    fn report(&self, e: &Error) {
        let msg = if e.is_cache_unusable() {
            format!(
                "compression cache {} is unusable ({e}); serving uncompressed, retrying every {}s",
                self.settings.dir.display(),
                RETRY.as_secs()
            )
        } else {
            format!("compression: {e}; that image is served uncompressed")
        };
        let mut last = lock(&self.last_error);
        if *last != msg {
            log::error!("{msg}");
            *last = msg;
        }
    }

    /// Builds (or rebuilds) one entry, serialised per entry within this process.
    fn build(&self, key: &str, layer: &Id, diff: &Digest, codec: Codec) -> Result<Entry, Error> {
        let one = lock(&self.building).entry(key.to_string()).or_default().clone();
        let _held = lock(&one);
        // Another thread may have built it meanwhile.
        if let Some(e) = self.cache.lookup(key, diff, codec) {
            return Ok(e);
        }
        let live = self.live().ok_or_else(|| Error::Gone("shutting down".into()))?;
        let view = live.view();
        let blob = live.open_layer(&view, layer).map_err(|source| Error::Layer { layer: *layer, source })?;
        let t = Instant::now();
        let size = blob.size();
        let reader = BlobReader::new(blob);
        let level = self.settings.level(codec);
        let e = self.cache.build(key, diff, codec, |out| encode(&reader, size, layer, diff, codec, level, out))?;
        log::info!(
            "compressed layer {} ({}:{level}): {size} -> {} bytes in {:.1}s",
            layer.short(),
            codec.name(),
            e.ready.size,
            t.elapsed().as_secs_f64()
        );
        Ok(e)
    }

    /// Opens a ready blob for serving: checked by its stamp, fully when the stamp changed;
    /// a damaged, truncated or evicted entry is rebuilt (to the same bytes) first.
    pub fn open(&self, layer: &Id, diff: &Digest, codec: Codec) -> Result<(File, Ready), Error> {
        let want = lock(&self.known).get(&(*diff, codec)).copied();
        let Some(want) = want else {
            return Err(Error::Gone(format!("no compressed ({}) blob of {diff} is ready", codec.name())));
        };
        let key = self.key(diff, codec);
        match self.cache.open_checked(&key, &want, diff, codec) {
            Ok(f) => {
                // Checked in full if the stamp changed (another mount rebuilt it): keep
                // the new stamp, so the next open is cheap again.
                if let Ok(stamp) = cache::Stamp::of(&f) {
                    if stamp != want.stamp {
                        lock(&self.known).insert((*diff, codec), Entry { ready: want.ready, stamp });
                    }
                }
                return Ok((f, want.ready));
            }
            Err(why) => log::warn!("{why}: rebuilding it"),
        }
        let rebuilt = self.build(&key, layer, diff, codec).and_then(|e| {
            if e.ready != want.ready {
                // Cannot happen with a deterministic compressor under one key.
                return Err(Error::Check {
                    path: self.cache.blob_path(&key),
                    why: format!(
                        "rebuilt as {} ({} bytes), published as {}",
                        e.ready.digest, e.ready.size, want.ready.digest
                    ),
                });
            }
            Ok(e)
        });
        match rebuilt {
            Ok(e) => {
                lock(&self.known).insert((*diff, codec), e);
                // Opened before evicting: a blob over the whole limit is still served.
                let f = self
                    .cache
                    .open_checked(&key, &e, diff, codec)
                    .map_err(|why| Error::Check { path: self.cache.blob_path(&key), why: why.to_string() });
                self.cache.evict(self.settings.max_bytes, Some(&key));
                f.map(|f| (f, e.ready))
            }
            Err(e) => {
                // Not servable: take the compressed manifests naming it down (and try
                // again after RETRY).
                lock(&self.known).remove(&(*diff, codec));
                lock(&self.queued).remove(&(*diff, codec));
                lock(&self.failed).insert((*diff, codec), Instant::now());
                self.dirty.store(true, Ordering::Release);
                self.report(&e);
                Err(e)
            }
        }
    }

    /// Fully checks a ready blob (for `verify`): its bytes hash to its digest and
    /// decompress to `diff`. Returns what it hashed to and its size.
    pub fn verify(&self, diff: &Digest, codec: Codec) -> Result<(Digest, u64), Error> {
        let want = lock(&self.known).get(&(*diff, codec)).copied();
        let Some(want) = want else {
            return Err(Error::Gone(format!("no compressed ({}) blob of {diff} is ready", codec.name())));
        };
        // The file as it is now (not the stamp): `verify` reads everything.
        let path = self.cache.blob_path(&self.key(diff, codec));
        let f = File::open(&path).map_err(|e| Error::Check { path: path.clone(), why: e.to_string() })?;
        let got = cache::check_file(&f, diff, codec).map_err(|why| Error::Check { path: path.clone(), why })?;
        if got != want.ready {
            log::warn!(
                "{}: holds {} ({} bytes), published as {}",
                path.display(),
                got.digest,
                got.size,
                want.ready.digest
            );
        }
        Ok((got.digest, got.size))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counts and hashes what passes through.
struct Hashing<W> {
    inner: W,
    hash: sha2::Sha256,
    n: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
}

impl<W> Hashing<W> {
    fn new(inner: W) -> Hashing<W> {
        Hashing { inner, hash: sha2::Sha256::new(), n: 0 }
    }
    fn digest(&self) -> Digest {
        Digest::from_sha256(self.hash.clone().finalize().into())
    }
}

/// Compresses `size` bytes of `reader` into `out`, checking they hash to `diff`.
/// Returns the compressed digest and size.
fn encode(
    reader: &BlobReader,
    size: u64,
    layer: &Id,
    diff: &Digest,
    codec: Codec,
    level: i32,
    out: &mut File,
) -> Result<Ready, Error> {
    let enc_err = |source| Error::Encode { layer: *layer, codec: codec.name(), source };
    let mut sink = Hashing::new(io::BufWriter::with_capacity(CHUNK, out));
    let mut input = sha2::Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    let mut pump = |w: &mut dyn Write| -> Result<(), Error> {
        loop {
            let n = reader.read_at(off, &mut buf).map_err(|source| Error::Layer { layer: *layer, source })?;
            if n == 0 {
                return Ok(());
            }
            input.update(&buf[..n]);
            w.write_all(&buf[..n]).map_err(enc_err)?;
            off += n as u64;
        }
    };
    match codec {
        Codec::Zstd => {
            let mut z = zstd_encoder(&mut sink, level, size).map_err(enc_err)?;
            pump(&mut z)?;
            z.finish().map_err(enc_err)?;
        }
        Codec::Gzip => {
            let mut g = gzip_encoder(&mut sink, level);
            pump(&mut g)?;
            g.finish().map_err(enc_err)?;
        }
    }
    sink.flush().map_err(enc_err)?;
    let got = Digest::from_sha256(input.finalize().into());
    if got != *diff || off != size {
        return Err(Error::LayerDigest { layer: *layer, diff: *diff, got, size: off });
    }
    Ok(Ready { digest: sink.digest(), size: sink.n })
}

/// The zstd encoder with the parameters the cache key's format version stands for.
fn zstd_encoder<W: Write>(w: W, level: i32, size: u64) -> io::Result<zstd::stream::write::Encoder<'static, W>> {
    let mut z = zstd::stream::write::Encoder::new(w, level)?;
    z.multithread(ZSTD_WORKERS)?;
    z.include_checksum(true)?;
    z.include_contentsize(true)?;
    z.set_pledged_src_size(Some(size))?;
    Ok(z)
}

/// The gzip encoder: no name, mtime 0, OS byte 255 ("unknown"), like `gzip -n`.
fn gzip_encoder<W: Write>(w: W, level: i32) -> flate2::write::GzEncoder<W> {
    flate2::GzBuilder::new().mtime(0).operating_system(255).write(w, flate2::Compression::new(level as u32))
}

#[cfg(test)]
mod tests;
