//! `registry`: a pure model of what a registry would serve for one store snapshot.
//!
//! [`Registry::build`] translates containers-storage vocabulary (images, layers, big
//! data) into distribution-spec vocabulary: [`Repo`]s with tags, [`Manifest`]s by
//! digest with their media type, and [`Blob`]s (config bytes or a layer to rebuild).
//! Manifests are served verbatim when every blob they name is the config or the
//! layer's uncompressed digest, with its size; otherwise rewritten deterministically
//! ([`manifest`]). One digest is one blob of one size: an image whose layer claims
//! another blob's digest with another size is excluded. Lists are verbatim only when
//! every child is present and verbatim. Images that cannot be served byte-exact are
//! listed in [`Registry::excluded`] with a typed [`Reason`], and so is every repository
//! whose path runs into another repository's own entries ([`RESERVED`], [`collision`]),
//! so what is served always lays out as one file tree. [`referrers`] (manifests by
//! `subject`), [`page`] (`n`/`last` paging) and [`index_page`] (the HTML index) are
//! further pure views of the model. This module does no I/O and knows nothing of FUSE.

pub mod compressed;
pub mod index_page;
pub mod manifest;
pub mod page;
pub mod reference;
pub mod referrers;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::store::{Image, LayerProblem, Snapshot};
use crate::tarsplit;
use crate::{Digest, Id};
pub use manifest::MediaType;
use manifest::{Stored, StoredKind};
pub use reference::{parse_name, Ref};

/// Repository that holds images with no name, tagged by their full image id.
pub const UNTAGGED_REPO: &str = "untagged";

/// Entries a repository's directory holds (and `v2/` itself: `_catalog`): a repository
/// nested in another may not start below one of them, or its path would run into that
/// repository's own entries. `_catalog` and the hidden `.ref`/`.after` entries are no
/// valid repository components anyway; they are listed so the rule does not rest on
/// the grammar. `referrers` is kept free for the referrers API.
pub const RESERVED: [&str; 5] = ["_catalog", "blobs", "manifests", "referrers", "tags"];
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Repo {
    pub tags: BTreeMap<String, Digest>,
    pub manifests: BTreeSet<Digest>,
    pub blobs: BTreeSet<Digest>,
}

#[derive(Debug, Clone)]
pub struct Manifest {
    pub digest: Digest,
    pub media_type: MediaType,
    pub bytes: Arc<[u8]>,
    /// True when these are the stored bytes, false when rewritten.
    pub verbatim: bool,
    /// The image it describes (for an index: the image that holds the list).
    pub image: Id,
    /// Blobs it names (config and layers), or for an index, its children.
    pub refs: Vec<Digest>,
}

#[derive(Debug, Clone)]
pub enum BlobSource {
    /// Bytes held in memory (image configs).
    Bytes(Arc<[u8]>),
    /// The uncompressed tar of a layer, rebuilt on demand.
    Layer(Id),
    /// A compressed form of the layer `diff` (its uncompressed digest), built and cached
    /// by [`crate::compress`] ([`compressed::apply`] adds these).
    Compressed { layer: Id, diff: Digest, codec: compressed::Codec },
}

#[derive(Debug, Clone)]
pub struct Blob {
    pub digest: Digest,
    pub size: u64,
    pub source: BlobSource,
}

/// An image (or, for [`Reason::RepoCollides`], a repository) left out, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Excluded {
    pub image: String,
    pub reason: Reason,
}

/// Why an image cannot be served byte-exact. Displays as `cstor-fs list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    #[error("layer {0}: parent chain loops")]
    ChainLoops(Id),
    #[error("layer {0} is missing from layers.json")]
    LayerMissing(Id),
    /// What `store` found wrong with the layer on disk.
    #[error("layer {layer}: {problem}")]
    LayerProblem { layer: Id, problem: LayerProblem },
    /// The full check of the layer's tar-split failed.
    #[error("layer {layer}: {error}")]
    LayerCheck { layer: Id, error: tarsplit::Error },
    #[error("layer {0}: size not known yet (diff-size unset)")]
    SizeUnknown(Id),
    #[error("layer {0}: no diff-digest")]
    NoDiffDigest(Id),
    #[error("no image config in big data")]
    NoConfig,
    #[error("image config unreadable: {0}")]
    ConfigUnreadable(String),
    #[error("blob {digest} would be served as {first} and as {second} bytes (damaged layer metadata)")]
    BlobSizes { digest: Digest, first: u64, second: u64 },
    /// The `manifest` big data item does not parse as a manifest.
    #[error("{0}")]
    ManifestInvalid(String),
    #[error("manifest unreadable: {0}")]
    ManifestUnreadable(String),
    #[error("no layer and no manifest list")]
    NoLayerNoList,
    #[error("none of the {0} images of the manifest list is in the store")]
    ListEmpty(usize),
    /// The repository's path runs into `entry` of repository `parent`.
    #[error("repository {repo} collides with the {entry}/ directory of repository {parent}")]
    RepoCollides { repo: String, entry: String, parent: String },
}

/// Results of full layer checks (tar-split parsed, size summed) done by the caller:
/// `Ok(size)` or `Err(why the layer cannot be rebuilt)`.
pub type LayerChecks = HashMap<Id, Result<u64, tarsplit::Error>>;

#[derive(Debug, Clone, Default)]
pub struct Registry {
    pub repos: BTreeMap<String, Repo>,
    pub manifests: HashMap<Digest, Manifest>,
    pub blobs: HashMap<Digest, Blob>,
    pub excluded: Vec<Excluded>,
    /// Names that cannot be mapped to a repository, and similar non-fatal problems.
    pub warnings: Vec<String>,
}

/// The served form of one image (not a list).
struct Served {
    manifest: Digest,
}

impl Registry {
    /// Builds the model. `checks` refines what the snapshot knows about layers.
    pub fn build(snap: &Snapshot, checks: &LayerChecks) -> Registry {
        let mut reg = Registry::default();
        // Pass 1: single-image manifests.
        let mut served: HashMap<Id, Served> = HashMap::new();
        // Stored manifest digest -> served manifest digest, to resolve list children.
        let mut by_stored: HashMap<Digest, Digest> = HashMap::new();
        for img in &snap.images {
            if img.top_layer.is_none() {
                continue;
            }
            match reg.serve_image(snap, checks, img) {
                Ok(s) => {
                    for (key, v) in &img.big_data {
                        if let (true, Ok(bytes)) = (key.starts_with("manifest"), v) {
                            let is_image = Stored::parse(bytes)
                                .and_then(|s| s.kind())
                                .is_ok_and(|k| !matches!(k, StoredKind::Index(_)));
                            if is_image {
                                by_stored.insert(Digest::of(bytes), s.manifest);
                            }
                        }
                    }
                    by_stored.insert(s.manifest, s.manifest);
                    served.insert(img.id, s);
                }
                Err(reason) => reg.excluded.push(Excluded { image: img.label(), reason }),
            }
        }
        // Pass 2: lists, and what each image's names point at.
        for img in &snap.images {
            let top = match reg.serve_list(img, &by_stored) {
                Ok(Some(list)) => list,
                Ok(None) => match served.get(&img.id) {
                    Some(s) => s.manifest,
                    None if img.top_layer.is_none() => {
                        reg.excluded.push(Excluded { image: img.label(), reason: Reason::NoLayerNoList });
                        continue;
                    }
                    None => continue,
                },
                Err(reason) => {
                    // A broken list still leaves the image itself servable.
                    match served.get(&img.id) {
                        Some(s) => {
                            reg.warnings.push(format!("{}: manifest list not served: {reason}", img.label()));
                            s.manifest
                        }
                        None => {
                            reg.excluded.push(Excluded { image: img.label(), reason });
                            continue;
                        }
                    }
                }
            };
            reg.name_image(img, top);
        }
        reg.drop_conflicting_repos();
        reg
    }

    fn serve_image(&mut self, snap: &Snapshot, checks: &LayerChecks, img: &Image) -> Result<Served, Reason> {
        let top = img.top_layer.expect("caller checked");
        // Walk top -> base, then reverse.
        let mut chain = Vec::new();
        let mut seen = BTreeSet::new();
        let mut cur = Some(top);
        while let Some(id) = cur {
            if !seen.insert(id) {
                return Err(Reason::ChainLoops(id));
            }
            let layer = snap.layers.get(&id).ok_or(Reason::LayerMissing(id))?;
            if let Some(p) = &layer.problem {
                return Err(Reason::LayerProblem { layer: id, problem: p.clone() });
            }
            let size = match checks.get(&id) {
                Some(Err(e)) => return Err(Reason::LayerCheck { layer: id, error: e.clone() }),
                Some(Ok(size)) => *size,
                None => layer.diff_size.ok_or(Reason::SizeUnknown(id))?,
            };
            let digest = layer.diff_digest.ok_or(Reason::NoDiffDigest(id))?;
            chain.push((id, digest, size));
            cur = layer.parent;
        }
        chain.reverse();

        let config_key = format!("sha256:{}", img.id);
        let config = match img.big_data.get(&config_key) {
            Some(v) => v.clone(),
            None => img
                .big_data
                .iter()
                .find(|(k, _)| k.starts_with("sha256:"))
                .map(|(_, v)| v.clone())
                .ok_or(Reason::NoConfig)?,
        }
        .map_err(Reason::ConfigUnreadable)?;
        let config_digest = Digest::of(&config);
        // One digest, one blob: a layer whose recorded diff digest is another blob's
        // (the config, or a layer of another size) would make a manifest name a size
        // that is not what is served under the digest.
        let wanted = std::iter::once((config_digest, config.len() as u64)).chain(chain.iter().map(|&(_, d, s)| (d, s)));
        let mut sizes: HashMap<Digest, u64> = HashMap::new();
        for (d, size) in wanted {
            let known = self.blobs.get(&d).map(|b| b.size).or_else(|| sizes.get(&d).copied());
            match known {
                Some(other) if other != size => {
                    return Err(Reason::BlobSizes { digest: d, first: other, second: size })
                }
                _ => {
                    sizes.insert(d, size);
                }
            }
        }

        // The `manifest` key first, then every other stored manifest: a re-pull may
        // have overwritten `manifest` while an earlier, servable one is kept.
        let mut stored: Vec<(Arc<[u8]>, Stored, StoredKind)> = Vec::new();
        let keys = std::iter::once("manifest")
            .chain(img.big_data.keys().map(String::as_str).filter(|k| k.starts_with("manifest-")));
        for key in keys {
            match img.big_data.get(key) {
                Some(Ok(b)) => {
                    let parsed = Stored::parse(b).and_then(|s| s.kind().map(|k| (s, k)));
                    match parsed {
                        Ok((s, k)) => stored.push((b.clone(), s, k)),
                        Err(e) if key == "manifest" => return Err(Reason::ManifestInvalid(e)),
                        Err(_) => {}
                    }
                }
                Some(Err(e)) if key == "manifest" => return Err(Reason::ManifestUnreadable(e.clone())),
                _ => {}
            }
        }
        // Digests and sizes both: a manifest must describe exactly the blobs served.
        let same = |d: &manifest::StoredDescriptor, digest: Digest, size: u64| {
            d.digest.parse() == Ok(digest) && d.size.and_then(|s| u64::try_from(s).ok()) == Some(size)
        };
        let servable = |s: &Stored| {
            let layers = s.layers.as_deref().unwrap_or_default();
            s.config.as_ref().is_some_and(|c| same(c, config_digest, config.len() as u64))
                && layers.len() == chain.len()
                && layers.iter().zip(&chain).all(|(d, &(_, diff, size))| same(d, diff, size))
        };
        let verbatim = stored.iter().find_map(|(b, s, k)| match k {
            StoredKind::Image(mt) if servable(s) => Some((b.clone(), *mt)),
            _ => None,
        });
        let (bytes, media_type, verbatim): (Arc<[u8]>, MediaType, bool) = match verbatim {
            Some((b, mt)) => (b, mt, true),
            None => {
                let first = stored.iter().find(|(_, _, k)| !matches!(k, StoredKind::Index(_)));
                let mt = match first.map(|(_, _, k)| *k) {
                    Some(StoredKind::Image(MediaType::DockerManifest)) | Some(StoredKind::Schema1) => {
                        MediaType::DockerManifest
                    }
                    _ => MediaType::OciManifest,
                };
                let layers: Vec<(Digest, u64)> = chain.iter().map(|&(_, d, s)| (d, s)).collect();
                let annotations = first.and_then(|(_, s, _)| s.annotations.as_ref());
                let b = manifest::rewrite_image(mt, (config_digest, config.len() as u64), &layers, annotations);
                (Arc::from(b), mt, false)
            }
        };
        let digest = Digest::of(&bytes);
        let mut refs = vec![config_digest];
        self.blobs.entry(config_digest).or_insert(Blob {
            digest: config_digest,
            size: config.len() as u64,
            source: BlobSource::Bytes(config),
        });
        for &(id, diff, size) in &chain {
            refs.push(diff);
            self.blobs.entry(diff).or_insert(Blob { digest: diff, size, source: BlobSource::Layer(id) });
        }
        self.manifests.insert(digest, Manifest { digest, media_type, bytes, verbatim, image: img.id, refs });
        Ok(Served { manifest: digest })
    }

    /// The list this image's names should point at, if it has one: a `podman manifest`
    /// list (no layer, `manifest` is an index), or the list an image was pulled through
    /// (its first recorded digest is that list's). An image that only later gained a
    /// list (pulled again through one) keeps its own manifest, as `podman push` would.
    fn serve_list(&mut self, img: &Image, by_stored: &HashMap<Digest, Digest>) -> Result<Option<Digest>, Reason> {
        let mut list = None;
        let pulled_via = img.first_digest.map(|d| format!("manifest-{d}"));
        for (key, v) in &img.big_data {
            let candidate =
                if img.top_layer.is_none() { key == "manifest" } else { pulled_via.as_deref() == Some(key.as_str()) };
            if let (true, Ok(bytes)) = (candidate, v) {
                if let Ok(s) = Stored::parse(bytes) {
                    if let Ok(StoredKind::Index(mt)) = s.kind() {
                        list = Some((bytes.clone(), s, mt));
                        break;
                    }
                }
            }
        }
        let Some((bytes, stored, mt)) = list else { return Ok(None) };
        let entries = stored.manifests.as_deref().unwrap_or_default();
        let mut children = Vec::new();
        let mut all_verbatim = true;
        for e in entries {
            let child = e.digest.parse::<Digest>().ok().and_then(|d| by_stored.get(&d).map(|s| (d, *s)));
            match child {
                Some((want, got)) => {
                    if want != got {
                        all_verbatim = false;
                    }
                    children.push((got, e.platform.as_ref()));
                }
                None => all_verbatim = false,
            }
        }
        if children.is_empty() {
            return Err(Reason::ListEmpty(entries.len()));
        }
        let (bytes, media_type, verbatim): (Arc<[u8]>, MediaType, bool) = if all_verbatim {
            (bytes, mt, true)
        } else {
            let kids: Vec<manifest::Child> = children
                .iter()
                .map(|(d, platform)| {
                    let m = &self.manifests[d];
                    manifest::Child {
                        media_type: m.media_type,
                        digest: *d,
                        size: m.bytes.len() as u64,
                        platform: *platform,
                    }
                })
                .collect();
            let out_mt = if mt == MediaType::DockerList && kids.iter().all(|k| k.media_type.is_docker()) {
                MediaType::DockerList
            } else {
                MediaType::OciIndex
            };
            (Arc::from(manifest::rewrite_index(out_mt, &kids)), out_mt, false)
        };
        let digest = Digest::of(&bytes);
        let refs = children.iter().map(|(d, _)| *d).collect();
        self.manifests.insert(digest, Manifest { digest, media_type, bytes, verbatim, image: img.id, refs });
        Ok(Some(digest))
    }

    fn name_image(&mut self, img: &Image, top: Digest) {
        let mut named = false;
        for name in &img.names {
            match parse_name(name) {
                Ok((repo, r)) => {
                    let tag = match r {
                        Ref::Tag(t) => Some(t),
                        // A digested name refers to the stored (maybe compressed) manifest;
                        // the repository still gets the image, under the served digest.
                        Ref::Digest(_) => None,
                    };
                    self.add_to_repo(&repo, tag, top);
                    named = true;
                }
                Err(e) => self.warnings.push(format!("{}: {e}", img.label())),
            }
        }
        if !named {
            self.add_to_repo(UNTAGGED_REPO, Some(img.id.hex()), top);
        }
    }

    fn add_to_repo(&mut self, repo: &str, tag: Option<String>, top: Digest) {
        let mut manifests = vec![top];
        let mut blobs = Vec::new();
        let mut i = 0;
        while i < manifests.len() {
            let m = &self.manifests[&manifests[i]];
            if m.media_type.is_index() {
                manifests.extend(m.refs.iter().copied());
            } else {
                blobs.extend(m.refs.iter().copied());
            }
            i += 1;
        }
        let r = self.repos.entry(repo.to_string()).or_default();
        if let Some(t) = tag {
            // Images come in podman's order of precedence (image store, graphroot,
            // additional stores): the first image with a name keeps it.
            r.tags.entry(t).or_insert(top);
        }
        r.manifests.extend(manifests);
        r.blobs.extend(blobs);
    }

    /// Leaves out every repository whose path runs into another repository's own
    /// entries: with `a/b` served, `a/b/tags`, `a/b/tags/list` or `a/b/manifests/x`
    /// would name a file or directory of `a/b` (see [`RESERVED`]). What remains can be
    /// laid out as a file tree without any two paths meeting.
    fn drop_conflicting_repos(&mut self) {
        let names: Vec<String> = self.repos.keys().cloned().collect();
        for name in names {
            if let Some((parent, entry)) = collision(&name, |p| self.repos.contains_key(p)) {
                self.repos.remove(&name);
                let reason =
                    Reason::RepoCollides { repo: name.clone(), entry: entry.to_string(), parent: parent.to_string() };
                self.excluded.push(Excluded { image: name.clone(), reason });
            }
        }
    }

    /// The repository names, sorted.
    pub fn catalog(&self) -> Vec<&str> {
        self.repos.keys().map(String::as_str).collect()
    }
}

/// The first repository `parent` (for which `is_repo` holds) whose reserved entry
/// `name` runs into, as (parent, entry). A parent that itself collides needs no care:
/// whatever it runs into, `name` runs into too.
pub fn collision(name: &str, is_repo: impl Fn(&str) -> bool) -> Option<(&str, &str)> {
    let mut end = 0;
    while let Some(i) = name[end..].find('/') {
        let parent = &name[..end + i];
        let rest = &name[end + i + 1..];
        let entry = rest.split('/').next().unwrap_or(rest);
        if RESERVED.contains(&entry) && is_repo(parent) {
            return Some((parent, entry));
        }
        end += i + 1;
    }
    None
}

#[cfg(test)]
mod tests;
