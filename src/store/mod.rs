//! `store`: containers-storage on disk, parsed into immutable [`Snapshot`]s.
//!
//! [`config::resolve`] finds the graphroot and driver; [`Store`] reads `images.json`,
//! `layers.json` and the images' manifest/config big data under brief OFD read locks
//! ([`lock`]), producing a [`Snapshot`] plus typed [`Warning`]s (a layer a cheap check
//! finds unusable carries a [`LayerProblem`]). [`Store::token`] is a cheap
//! change check (lock tokens + stat of the JSON files). Every byte read here is
//! untrusted: ids become path components only after [`Id`] parsing, sizes are capped,
//! and a malformed entry costs that entry (a warning), never the whole store.

pub mod config;
mod lock;
mod raw;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use base64::Engine as _;

use crate::{Digest, Id};

pub use config::Location;

/// Caps on what one store file may hold, so a hostile store cannot exhaust memory.
const MAX_JSON: u64 = 256 << 20;
const MAX_BIG_DATA: u64 = 16 << 20;
/// A zstd:chunked table of contents runs to ~200 bytes a file.
const MAX_TOC: u64 = 512 << 20;

/// A storage driver whose layers cstor-fs can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Driver {
    Overlay,
    Vfs,
}

impl Driver {
    pub fn name(self) -> &'static str {
        match self {
            Driver::Overlay => "overlay",
            Driver::Vfs => "vfs",
        }
    }
}

impl FromStr for Driver {
    type Err = Error;
    fn from_str(s: &str) -> Result<Driver, Error> {
        match s {
            "overlay" | "overlay2" => Ok(Driver::Overlay),
            "vfs" => Ok(Driver::Vfs),
            other => Err(Error::Config(format!("storage driver {other:?} is not supported (overlay and vfs are)"))),
        }
    }
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Errors reading the store. Each names the file it is about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    #[error("{0}")]
    Config(String),
}

impl Error {
    pub(crate) fn io(path: &Path, source: io::Error) -> Error {
        Error::Io { path: path.to_path_buf(), source }
    }
    pub(crate) fn format(path: &Path, msg: impl fmt::Display) -> Error {
        Error::Format { path: path.to_path_buf(), msg: msg.to_string() }
    }
}

/// Which of the stores podman reads an image or layer record comes from, in podman's
/// order of precedence: the image store (`imagestore`), the graphroot, then each
/// read-only additional image store (`additionalimagestores`) in configured order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    ImageStore,
    Graphroot,
    Additional(usize),
}

/// One image of `images.json`, with the big data cstor-fs serves already read.
#[derive(Debug, Clone)]
pub struct Image {
    pub id: Id,
    /// The store whose `images.json` lists it.
    pub origin: Origin,
    /// Fully qualified names as stored (`localhost/a:v1`, `docker.io/x/y@sha256:..`).
    pub names: Vec<String>,
    /// Top layer; `None` for manifest lists.
    pub top_layer: Option<Id>,
    /// Big data by key: `manifest`, `manifest-sha256:<d>`, `sha256:<config>`.
    /// `Err` holds why a listed item could not be read.
    pub big_data: BTreeMap<String, Result<Arc<[u8]>, String>>,
    pub created: Option<String>,
    /// The digest of the first manifest written for the image (c/storage never updates
    /// it): a hint of how the image entered the store, never a digest to serve under.
    pub first_digest: Option<Digest>,
}

impl Image {
    /// The name to use for this image in messages: its first name, else its short id.
    pub fn label(&self) -> String {
        match self.names.first() {
            Some(n) => format!("{n} ({})", self.id.short()),
            None => format!("image {}", self.id.short()),
        }
    }
}

/// One layer of `layers.json`.
#[derive(Debug, Clone)]
pub struct Layer {
    pub id: Id,
    /// The store whose layer records list it (its files are there too).
    pub origin: Origin,
    pub parent: Option<Id>,
    /// The uncompressed digest (DiffID), if recorded.
    pub diff_digest: Option<Digest>,
    /// Length of the uncompressed tar, if recorded (c/storage writes -1 when unknown).
    pub diff_size: Option<u64>,
    /// Why this layer cannot be rebuilt byte-exact, if a cheap check already knows.
    pub problem: Option<LayerProblem>,
}

/// Why a layer cannot be rebuilt byte-exact, as a cheap check (flags, stat) finds it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayerProblem {
    #[error("layer is flagged incomplete (an interrupted pull)")]
    Incomplete,
    #[error("layer has no diff-digest")]
    NoDiffDigest,
    #[error("tar-split metadata is not a regular file")]
    TarSplitNotRegular,
    /// The tar-split file cannot be stat'ed (the error's text).
    #[error("no tar-split metadata ({0})")]
    NoTarSplit(String),
    #[error("composefs layer: its table of contents is not a regular file")]
    ComposefsTocNotRegular,
    /// A composefs layer whose table of contents cannot be stat'ed (the error's text).
    #[error("composefs layer without a table of contents ({0})")]
    ComposefsNoToc(String),
    #[error("layer files are a symlink (additional layer store)")]
    FilesAreSymlink,
    #[error("{} is not a directory", .0.display())]
    FilesNotADirectory(PathBuf),
    /// The layer's files directory cannot be stat'ed (the error's text).
    #[error("{}: {error}", path.display())]
    FilesUnreadable { path: PathBuf, error: String },
}

/// An immutable view of the store at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub location: Location,
    pub token: ChangeToken,
    pub images: Vec<Image>,
    pub layers: BTreeMap<Id, Layer>,
    /// Entries that could not be read, each naming the file and entry.
    pub warnings: Vec<Warning>,
}

/// A non-fatal problem reading the store: `file` and what was wrong in it. Displays as
/// `list` and the logs show it (`<file>: <what>`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {what}", file.display())]
pub struct Warning {
    pub file: PathBuf,
    pub what: WarningKind,
}

/// What a [`Warning`] is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WarningKind {
    /// The lock file could not be read-locked (the error's text); read without it.
    #[error("cannot take a read lock ({0}); reading without it")]
    NoReadLock(String),
    /// The JSON array is damaged; the complete entries were kept.
    #[error("{error}; using the {kept} complete entries {}", match skipped { 0 => "before the damage".to_string(), n => format!("and skipping {n} damaged part(s)") })]
    Salvaged { error: String, kept: usize, skipped: usize },
    /// An entry that does not decode (`label` names it: `entry 3` or `entry 3 (id ...)`).
    #[error("{label}: {error}")]
    BadEntry { label: String, error: String },
    #[error("entry {0}: duplicate layer id")]
    DuplicateLayer(usize),
    #[error("entry {entry}: {error}")]
    BadLayer { entry: usize, error: String },
    #[error("entry {entry}: image id: {error}")]
    BadImageId { entry: usize, error: String },
    #[error("entry {entry}: duplicate image id {id}")]
    DuplicateImage { entry: usize, id: Id },
    #[error("image {image}: layer: {error}")]
    BadTopLayer { image: Id, error: String },
    /// An image store or additional image store that does not exist (`file` is its path).
    #[error("this {0} does not exist (yet); nothing read from it")]
    StoreMissing(&'static str),
    /// An image store or additional image store that cannot be read (the error's text).
    #[error("this {what} not read: {error}")]
    StoreNotRead { what: &'static str, error: String },
}

/// What kind of store `origin` is, in words.
fn origin_kind(origin: Origin) -> &'static str {
    match origin {
        Origin::ImageStore => "image store",
        Origin::Graphroot => "graphroot",
        Origin::Additional(_) => "additional image store",
    }
}

fn warn(file: &Path, what: WarningKind) -> Warning {
    Warning { file: file.to_path_buf(), what }
}

/// Cheap fingerprint of the store's metadata; differs after any write podman makes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeToken {
    locks: Vec<Option<Vec<u8>>>,
    files: Vec<Option<FileStamp>>,
}

/// (device, inode, mtime seconds, mtime nanoseconds, size) of a watched file.
type FileStamp = (u64, u64, i64, i64, u64);

/// Where a layer's rebuild inputs live.
#[derive(Debug, Clone)]
pub struct LayerFiles {
    pub tar_split: PathBuf,
    /// Directories to look payloads up in, in order (overlay: diff, then lowers).
    pub content_dirs: Vec<PathBuf>,
    /// A composefs layer keeps its files content-addressed under `diff/`; this is its
    /// table of contents (the `zstd-chunked-manifest` layer big data), which names them.
    pub toc: Option<PathBuf>,
}

/// An opened store location. Cheap to share; all reads are done on demand.
#[derive(Debug)]
pub struct Store {
    location: Location,
    /// `imagestore` and `additionalimagestores` from storage.conf.
    others: config::ImageStores,
    /// Results of the per-layer file checks; layers never change once complete.
    layer_checks: Mutex<HashMap<Id, Option<LayerProblem>>>,
}

impl Store {
    pub fn open(location: Location) -> Result<Store, Error> {
        let s = Store { location, others: config::ImageStores::default(), layer_checks: Mutex::default() };
        for dir in [s.layers_dir(Origin::Graphroot), s.images_dir(Origin::Graphroot)] {
            let md = std::fs::metadata(&dir).map_err(|e| Error::io(&dir, e))?;
            if !md.is_dir() {
                return Err(Error::format(&dir, "not a directory"));
            }
        }
        Ok(s)
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    /// Also reads the images of the `imagestore` and of each additional image store
    /// (a store that cannot be read is a warning of each snapshot, not an error).
    pub fn with_image_stores(mut self, others: config::ImageStores) -> Store {
        self.others = others;
        self
    }

    /// The stores read, in podman's order of precedence.
    pub fn origins(&self) -> Vec<Origin> {
        let mut out = Vec::new();
        if self.others.image_store.is_some() {
            out.push(Origin::ImageStore);
        }
        out.push(Origin::Graphroot);
        out.extend((0..self.others.additional.len()).map(Origin::Additional));
        out
    }

    /// The directory of the store `origin` names.
    pub fn root(&self, origin: Origin) -> &Path {
        match origin {
            Origin::ImageStore => self.others.image_store.as_deref().unwrap_or(&self.location.graphroot),
            Origin::Graphroot => &self.location.graphroot,
            Origin::Additional(i) => self.others.additional.get(i).map_or(&self.location.graphroot, |p| p.as_path()),
        }
    }

    fn layers_dir(&self, origin: Origin) -> PathBuf {
        self.root(origin).join(format!("{}-layers", self.location.driver))
    }

    fn images_dir(&self, origin: Origin) -> PathBuf {
        self.root(origin).join(format!("{}-images", self.location.driver))
    }

    /// Lock files (layers before images, store by store) and the JSON files whose
    /// changes a refresh watches.
    fn watched(&self) -> (Vec<PathBuf>, Vec<PathBuf>) {
        let (mut locks, mut files) = (Vec::new(), Vec::new());
        for o in self.origins() {
            let (l, i) = (self.layers_dir(o), self.images_dir(o));
            locks.extend([l.join("layers.lock"), i.join("images.lock")]);
            files.extend([l.join("layers.json"), l.join("volatile-layers.json"), i.join("images.json")]);
        }
        (locks, files)
    }

    /// The current change fingerprint. Reads 2x64 bytes and stats 2 files.
    pub fn token(&self) -> ChangeToken {
        let (locks, files) = self.watched();
        ChangeToken {
            locks: locks.iter().map(|p| lock::peek_token(p)).collect(),
            files: files
                .iter()
                .map(|p| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.size())))
                .collect(),
        }
    }

    /// Reads a consistent snapshot: layers.lock then images.lock are read-locked while
    /// the JSON files and the images' big data are read.
    pub fn load(&self) -> Result<Snapshot, Error> {
        let mut warnings = Vec::new();
        let (lock_paths, _) = self.watched();
        let mut locks = Vec::new();
        let missing: Vec<Origin> = self.origins().into_iter().filter(|o| !self.root(*o).is_dir()).collect();
        for o in &missing {
            warnings.push(warn(self.root(*o), WarningKind::StoreMissing(origin_kind(*o))));
        }
        for p in lock_paths.iter().filter(|p| !missing.iter().any(|o| p.starts_with(self.root(*o)))) {
            match lock::read_lock(p) {
                Ok(l) => locks.push(l),
                // A store never written by this podman version, or one we may not open:
                // read without the lock rather than not at all.
                Err(e) => warnings.push(warn(p, WarningKind::NoReadLock(e.to_string()))),
            }
        }
        let token = self.token();
        let mut layers = BTreeMap::new();
        let mut images = Vec::new();
        for origin in self.origins() {
            let l = self.layers_dir(origin);
            let i = self.images_dir(origin);
            // The graphroot is the store itself: failing to read it fails the load. The
            // others are extra: one that cannot be read costs its images (a warning).
            let extra = origin != Origin::Graphroot;
            let mut read = || -> Result<(), Error> {
                for name in ["layers.json", "volatile-layers.json"] {
                    for (id, layer) in self.read_layers(origin, &l.join(name), &mut warnings)? {
                        // The first store to list a layer is where podman reads it.
                        layers.entry(id).or_insert(layer);
                    }
                }
                images.extend(self.read_images(origin, &i.join("images.json"), &mut warnings)?);
                Ok(())
            };
            match read() {
                Ok(()) => {}
                Err(e) if extra => warnings.push(warn(
                    self.root(origin),
                    WarningKind::StoreNotRead { what: origin_kind(origin), error: e.to_string() },
                )),
                Err(e) => return Err(e),
            }
        }
        drop(locks);
        Ok(Snapshot { location: self.location.clone(), token, images, layers, warnings })
    }

    fn read_array(&self, path: &Path, warnings: &mut Vec<Warning>) -> Result<Vec<serde_json::Value>, Error> {
        let bytes = match read_capped(path, MAX_JSON) {
            Ok(b) => b,
            // A fresh store has no images.json until the first image is written.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(path, e)),
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Vec::new());
        }
        match serde_json::from_slice(&bytes) {
            Ok(v) => Ok(v),
            Err(e) => {
                // Damaged (a crash mid-write, a bad edit): keep every complete entry. Only
                // a file that is not an array at all is refused, so a refresh keeps the
                // last good state and a first load fails naming the file.
                let got = salvage_array(&bytes);
                if !got.array {
                    return Err(Error::format(path, e));
                }
                let what =
                    WarningKind::Salvaged { error: e.to_string(), kept: got.entries.len(), skipped: got.skipped };
                warnings.push(warn(path, what));
                Ok(got.entries)
            }
        }
    }

    /// How `list` names a store: its kind and path.
    pub fn describe(&self, origin: Origin) -> String {
        format!("{} {}", origin_kind(origin), self.root(origin).display())
    }

    fn read_layers(
        &self,
        origin: Origin,
        path: &Path,
        warnings: &mut Vec<Warning>,
    ) -> Result<BTreeMap<Id, Layer>, Error> {
        let mut out = BTreeMap::new();
        for (i, v) in self.read_array(path, warnings)?.into_iter().enumerate() {
            let label = entry_label(i, &v);
            let raw: raw::RawLayer = match serde_json::from_value(v) {
                Ok(r) => r,
                Err(e) => {
                    warnings.push(warn(path, WarningKind::BadEntry { label, error: e.to_string() }));
                    continue;
                }
            };
            match self.layer_from_raw(origin, raw) {
                Ok(l) => {
                    if out.insert(l.id, l).is_some() {
                        warnings.push(warn(path, WarningKind::DuplicateLayer(i)));
                    }
                }
                Err(error) => warnings.push(warn(path, WarningKind::BadLayer { entry: i, error })),
            }
        }
        Ok(out)
    }

    fn layer_from_raw(&self, origin: Origin, raw: raw::RawLayer) -> Result<Layer, String> {
        let id: Id = raw.id.parse().map_err(|e| format!("layer id: {e}"))?;
        let ctx = |what: &str, e: crate::digest::ParseError| format!("layer {id}: {what}: {e}");
        let parent = match raw.parent.as_deref() {
            None | Some("") => None,
            Some(p) => Some(p.parse().map_err(|e| ctx("parent", e))?),
        };
        let diff_digest = match raw.diff_digest.as_deref() {
            None | Some("") => None,
            Some(d) => Some(d.parse().map_err(|e| ctx("diff-digest", e))?),
        };
        let diff_size = raw.diff_size.and_then(|s| u64::try_from(s).ok());
        let flag = |k: &str| raw.flags.as_ref().and_then(|f| f.get(k)).is_some_and(|v| v != false);
        let problem = if flag("incomplete") {
            Some(LayerProblem::Incomplete)
        } else if diff_digest.is_none() {
            Some(LayerProblem::NoDiffDigest)
        } else {
            self.check_layer_files(&id, origin)
        };
        Ok(Layer { id, origin, parent, diff_digest, diff_size, problem })
    }

    /// Stat-only checks that the files a rebuild needs are there and usable.
    fn check_layer_files(&self, id: &Id, origin: Origin) -> Option<LayerProblem> {
        if let Some(cached) = self.layer_checks.lock().unwrap_or_else(|p| p.into_inner()).get(id) {
            return cached.clone();
        }
        let files = self.layer_files(id, origin);
        let problem = (|| {
            match std::fs::symlink_metadata(&files.tar_split) {
                Ok(m) if m.is_file() => {}
                Ok(_) => return Some(LayerProblem::TarSplitNotRegular),
                Err(e) => return Some(LayerProblem::NoTarSplit(e.to_string())),
            }
            let own = &files.content_dirs[0];
            if let Some(toc) = &files.toc {
                match std::fs::symlink_metadata(toc) {
                    Ok(m) if m.is_file() => {}
                    Ok(_) => return Some(LayerProblem::ComposefsTocNotRegular),
                    Err(e) => return Some(LayerProblem::ComposefsNoToc(e.to_string())),
                }
            }
            match std::fs::symlink_metadata(own) {
                Ok(m) if m.is_dir() => None,
                Ok(m) if m.file_type().is_symlink() => Some(LayerProblem::FilesAreSymlink),
                Ok(_) => Some(LayerProblem::FilesNotADirectory(own.clone())),
                Err(e) => Some(LayerProblem::FilesUnreadable { path: own.clone(), error: e.to_string() }),
            }
        })();
        // Only cache definite answers about present layers; a missing layer may be mid-write.
        if problem.is_none() {
            self.layer_checks.lock().unwrap_or_else(|p| p.into_inner()).insert(*id, None);
        }
        problem
    }

    /// Paths of a layer's tar-split and its own content directory.
    ///
    /// The layer records of the graphroot also cover layers written to the image store
    /// (`imagestore`): their files are there when it has them.
    pub fn layer_files(&self, id: &Id, origin: Origin) -> LayerFiles {
        let dir = |root: &Path| match self.location.driver {
            Driver::Overlay => root.join("overlay").join(id.hex()),
            Driver::Vfs => root.join("vfs/dir").join(id.hex()),
        };
        let mut own = dir(self.root(origin));
        if let (Origin::Graphroot, Some(image_store)) = (origin, &self.others.image_store) {
            let there = dir(image_store);
            if there.exists() {
                own = there;
            }
        }
        let layers_dir = self.layers_dir(origin);
        let (own, toc) = match self.location.driver {
            Driver::Overlay => {
                let composefs = own.join("composefs-data").exists();
                let toc =
                    composefs.then(|| layers_dir.join(id.hex()).join(big_data_file_name("zstd-chunked-manifest")));
                (own.join("diff"), toc)
            }
            Driver::Vfs => (own, None),
        };
        LayerFiles { tar_split: layers_dir.join(format!("{id}.tar-split.gz")), content_dirs: vec![own], toc }
    }

    /// The bytes of a composefs layer's table of contents (see [`LayerFiles::toc`]),
    /// capped in size; `None` for a layer that has none.
    pub fn read_toc(&self, files: &LayerFiles) -> Option<io::Result<Vec<u8>>> {
        files.toc.as_ref().map(|p| read_capped(p, MAX_TOC))
    }

    /// [`Store::layer_files`] plus, for overlay, the lower layers' diff dirs listed in
    /// the layer's `lower` file (uppermost first), resolved through `l/` links.
    pub fn layer_files_with_lowers(&self, id: &Id, origin: Origin) -> io::Result<LayerFiles> {
        let mut files = self.layer_files(id, origin);
        if self.location.driver != Driver::Overlay {
            return Ok(files);
        }
        // `l/` links are relative to the overlay directory that holds the layer.
        let Some(overlay) = files.content_dirs[0].parent().and_then(Path::parent).map(Path::to_path_buf) else {
            return Ok(files);
        };
        let lower = match read_capped(&overlay.join(id.hex()).join("lower"), 1 << 20) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(files),
            Err(e) => return Err(e),
        };
        for link in String::from_utf8_lossy(&lower).trim().split(':') {
            // Each entry is `l/<short>`, a symlink to `../<layer id>/diff`.
            let Some(short) = link.strip_prefix("l/") else { continue };
            if short.is_empty() || !short.bytes().all(|b| b.is_ascii_alphanumeric()) {
                continue;
            }
            let Ok(target) = std::fs::read_link(overlay.join("l").join(short)) else { continue };
            let t = target.to_string_lossy();
            let Some(lid) = t.strip_prefix("../").and_then(|r| r.strip_suffix("/diff")) else {
                continue;
            };
            if let Ok(lid) = lid.parse::<Id>() {
                files.content_dirs.push(overlay.join(lid.hex()).join("diff"));
            }
        }
        Ok(files)
    }

    fn read_images(&self, origin: Origin, path: &Path, warnings: &mut Vec<Warning>) -> Result<Vec<Image>, Error> {
        let mut out: Vec<Image> = Vec::new();
        // Big data is opened beneath this handle: no symlink in the image's directory
        // (or in place of it) can point the read outside the store.
        let images_dir = crate::confine::open_dir(&self.images_dir(origin)).map_err(|e| e.to_string());
        for (i, v) in self.read_array(path, warnings)?.into_iter().enumerate() {
            let label = entry_label(i, &v);
            let raw: raw::RawImage = match serde_json::from_value(v) {
                Ok(r) => r,
                Err(e) => {
                    warnings.push(warn(path, WarningKind::BadEntry { label, error: e.to_string() }));
                    continue;
                }
            };
            let id: Id = match raw.id.parse() {
                Ok(id) => id,
                Err(e) => {
                    warnings.push(warn(path, WarningKind::BadImageId { entry: i, error: e.to_string() }));
                    continue;
                }
            };
            if out.iter().any(|img| img.id == id) {
                warnings.push(warn(path, WarningKind::DuplicateImage { entry: i, id }));
                continue;
            }
            let top_layer = match raw.layer.as_deref() {
                None | Some("") => None,
                Some(l) => match l.parse::<Id>() {
                    Ok(l) => Some(l),
                    Err(e) => {
                        warnings.push(warn(path, WarningKind::BadTopLayer { image: id, error: e.to_string() }));
                        continue;
                    }
                },
            };
            let big_data = raw
                .big_data_names
                .unwrap_or_default()
                .into_iter()
                .filter(|k| k.starts_with("manifest") || k.starts_with("sha256:"))
                .map(|k| {
                    let v = self.read_big_data(origin, images_dir.as_ref(), &id, &k);
                    (k, v)
                })
                .collect();
            out.push(Image {
                id,
                origin,
                names: raw.names.unwrap_or_default(),
                top_layer,
                big_data,
                created: raw.created,
                first_digest: raw.digest.as_deref().and_then(|d| d.parse().ok()),
            });
        }
        Ok(out)
    }
}

impl Store {
    /// Reads one big-data item, confined to the images directory, capped in size, and
    /// checked against the digest its key names (`sha256:<d>`, `manifest-sha256:<d>`).
    fn read_big_data(
        &self,
        origin: Origin,
        dir: Result<&OwnedFd, &String>,
        id: &Id,
        key: &str,
    ) -> Result<Arc<[u8]>, String> {
        let name = big_data_file_name(key);
        let file = self.images_dir(origin).join(id.hex()).join(&name);
        let dir = dir.map_err(|e| format!("{}: {e}", self.images_dir(origin).display()))?;
        let rel = format!("{}/{name}", id.hex());
        let bytes = crate::confine::open_regular_beneath(dir, rel.as_bytes())
            .and_then(|f| read_file_capped(f, MAX_BIG_DATA))
            .map_err(|e| format!("{}: {e}", file.display()))?;
        let named = key.strip_prefix("manifest-").unwrap_or(key);
        if named.starts_with("sha256:") {
            let actual = Digest::of(&bytes);
            match named.parse::<Digest>() {
                Ok(d) if d == actual => {}
                Ok(_) => return Err(format!("{}: content hashes to {actual}, not to its key {key}", file.display())),
                Err(e) => return Err(format!("{}: big-data key {key:?}: {e}", file.display())),
            }
        }
        Ok(Arc::from(bytes))
    }
}

/// The file name c/storage gives a big-data item: the key itself when it has only
/// `[.0-9a-z]`, else `=` + base64(key).
pub fn big_data_file_name(key: &str) -> String {
    if !key.is_empty() && key.bytes().all(|b| b == b'.' || b.is_ascii_digit() || b.is_ascii_lowercase()) {
        key.to_string()
    } else {
        format!("={}", base64::engine::general_purpose::STANDARD.encode(key))
    }
}

/// `entry <i>`, plus the entry's id when it has a string one (for warnings).
fn entry_label(i: usize, v: &serde_json::Value) -> String {
    match v.get("id").and_then(serde_json::Value::as_str) {
        Some(id) => format!("entry {i} (id {:?})", id.chars().take(80).collect::<String>()),
        None => format!("entry {i}"),
    }
}

/// What [`salvage_array`] recovered from a damaged JSON array.
#[derive(Debug, Default)]
struct Salvaged {
    /// The complete elements, in order.
    entries: Vec<serde_json::Value>,
    /// Damaged stretches skipped to reach later elements.
    skipped: usize,
    /// Whether the input starts like an array at all (else it is not a store file).
    array: bool,
}

/// The complete elements of a damaged JSON array of objects. After damage it resyncs
/// at the next `,{` whose object parses, has an `"id"` and ends at `,` or `]`, so a
/// syntax error inside one entry costs that entry only. The number of resync attempts
/// is bounded, so hostile input costs linear time.
fn salvage_array(bytes: &[u8]) -> Salvaged {
    const MAX_ATTEMPTS: usize = 4096;
    let mut out = Salvaged::default();
    let skip_ws = |mut i: usize| {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    // One element at `i`: its value and the index after the `,`/`]` that ends it.
    let element = |i: usize| -> Option<(serde_json::Value, usize, bool)> {
        let mut it = serde_json::Deserializer::from_slice(&bytes[i..]).into_iter::<serde_json::Value>();
        let v = it.next()?.ok()?;
        let j = skip_ws(i + it.byte_offset());
        match bytes.get(j) {
            Some(b',') => Some((v, j + 1, false)),
            Some(b']') => Some((v, j + 1, true)),
            _ => None,
        }
    };
    let mut i = skip_ws(0);
    if bytes.get(i) != Some(&b'[') {
        return out;
    }
    out.array = true;
    i += 1;
    let mut attempts = 0;
    loop {
        i = skip_ws(i);
        if i >= bytes.len() || bytes[i] == b']' {
            return out;
        }
        if let Some((v, next, last)) = element(i) {
            out.entries.push(v);
            if last {
                return out;
            }
            i = next;
            continue;
        }
        // Damage: find the next element start that parses as a whole entry.
        out.skipped += 1;
        let mut j = i + 1;
        let found = loop {
            let Some(k) = bytes[j.min(bytes.len())..].iter().position(|&b| b == b',') else { break None };
            let comma = j + k;
            let open = skip_ws(comma + 1);
            j = comma + 1;
            if bytes.get(open) != Some(&b'{') {
                continue;
            }
            attempts += 1;
            if attempts > MAX_ATTEMPTS {
                break None;
            }
            if let Some((v, next, last)) = element(open) {
                if v.get("id").is_some_and(serde_json::Value::is_string) {
                    break Some((v, next, last));
                }
            }
        };
        match found {
            Some((v, next, last)) => {
                out.entries.push(v);
                if last {
                    return out;
                }
                i = next;
            }
            None => return out,
        }
    }
}

/// Reads a whole file, refusing files larger than `cap` bytes.
fn read_capped(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    read_file_capped(crate::confine::open_regular(path)?, cap)
}

fn read_file_capped(f: File, cap: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    f.take(cap + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > cap {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("larger than {cap} bytes")));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salvages_the_entries_before_damage() {
        let whole = br#"[{"id":"a"}, {"id":"b"} ,{"id":"c"}]"#;
        let got = salvage_array(whole);
        assert_eq!((got.entries.len(), got.skipped, got.array), (3, 0, true));
        let got = salvage_array(&whole[..20]);
        assert_eq!((got.entries.len(), got.skipped), (1, 1));
        let got = salvage_array(br#"[{"id":"a"},{"id":"b"}, x, {"id":"c"}]"#);
        assert_eq!((got.entries.len(), got.skipped), (3, 1));
        assert!(!salvage_array(b"{}").array);
        assert!(!salvage_array(b"").array);
        assert_eq!(salvage_array(b"[").entries.len(), 0);
        assert!(salvage_array(br#"[{"id":"a","#).array);
    }

    #[test]
    fn salvage_resyncs_after_a_damaged_entry() {
        // A lost `:` inside the middle entry, and a stray byte.
        let got = salvage_array(br#"[{"id":"a","n":[1]},{"id" "b","x":{"y":1}},{"id":"c"}]"#);
        let ids: Vec<_> = got.entries.iter().map(|v| v["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["a", "c"]);
        assert_eq!(got.skipped, 1);
        // A nested object without an id is not taken for an entry.
        let got = salvage_array(br#"[{"id" "b","m":[1,{"k":2}]},{"id":"c"}]"#);
        let ids: Vec<_> = got.entries.iter().map(|v| v["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["c"]);
        // Damage to the end: nothing after it, no endless scan.
        let got = salvage_array(&[b"[{\"id\":\"a\"},{".as_slice(), &b",{".repeat(100_000)].concat());
        assert_eq!(got.entries.len(), 1);
    }

    #[test]
    fn big_data_names() {
        assert_eq!(big_data_file_name("manifest"), "manifest");
        assert_eq!(
            big_data_file_name("sha256:abc"),
            format!("={}", base64::engine::general_purpose::STANDARD.encode("sha256:abc"))
        );
        assert_eq!(big_data_file_name("manifest-sha256:x"), "=bWFuaWZlc3Qtc2hhMjU2Ong=");
    }
}
