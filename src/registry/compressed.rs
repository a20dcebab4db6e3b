//! Compressed delivery, as a pure derivation over a built [`Registry`].
//!
//! Given which layers have a compressed blob ready (and verified) for a [`Codec`],
//! [`apply`] adds, for every image manifest whose layers are *all* ready, a second
//! manifest naming the compressed blobs (same config, so the same image ID), and for
//! every index whose children all have one, a second index naming those. Tags move to
//! the compressed form only then; until then they keep naming the uncompressed one.
//! Both stay reachable by digest. Docker schema 2 has no zstd layer type, so a Docker
//! manifest always gets gzip. Same inputs, same bytes: no I/O, no clock.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::Value;

use super::{Blob, BlobSource, Manifest, MediaType, Registry};
use crate::Digest;

pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// A compression format (the level and library are the compressor's business).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Codec {
    Zstd,
    Gzip,
}

impl Codec {
    pub fn name(self) -> &'static str {
        match self {
            Codec::Zstd => "zstd",
            Codec::Gzip => "gzip",
        }
    }

    /// The codec a manifest of `media_type` gets when `wanted` is asked for.
    pub fn for_manifest(wanted: Codec, media_type: MediaType) -> Codec {
        if media_type.is_docker() {
            Codec::Gzip
        } else {
            wanted
        }
    }

    fn layer_type(self, media_type: MediaType) -> &'static str {
        match (self, media_type.is_docker()) {
            (_, true) => DOCKER_LAYER_GZIP,
            (Codec::Zstd, false) => OCI_LAYER_ZSTD,
            (Codec::Gzip, false) => OCI_LAYER_GZIP,
        }
    }
}

/// A verified compressed blob of an uncompressed layer blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ready {
    pub digest: Digest,
    pub size: u64,
}

/// Ready compressed blobs by (uncompressed digest, codec).
pub type ReadyMap = HashMap<(Digest, Codec), Ready>;

/// The (uncompressed layer digest, codec) pairs the served images need, sorted, each once.
pub fn wanted(reg: &Registry, codec: Codec) -> Vec<(Digest, Codec)> {
    let mut out: Vec<(Digest, Codec)> = reg
        .manifests
        .values()
        .filter(|m| !m.media_type.is_index())
        .flat_map(|m| {
            let c = Codec::for_manifest(codec, m.media_type);
            m.refs.iter().skip(1).map(move |d| (*d, c))
        })
        .filter(|(d, _)| reg.blobs.get(d).is_some_and(|b| matches!(b.source, BlobSource::Layer(_))))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Adds the compressed manifests, indexes and blobs that `ready` allows, and points tags
/// at them. Returns how many manifests were added.
pub fn apply(reg: &mut Registry, codec: Codec, ready: &ReadyMap) -> usize {
    // Uncompressed manifest digest -> compressed manifest digest.
    let mut twin: BTreeMap<Digest, Digest> = BTreeMap::new();
    let mut images: Vec<&Manifest> = reg.manifests.values().filter(|m| !m.media_type.is_index()).collect();
    images.sort_by_key(|m| m.digest);
    let mut new_manifests = Vec::new();
    let mut new_blobs = Vec::new();
    for m in images {
        let c = Codec::for_manifest(codec, m.media_type);
        let Some((config, layers)) = m.refs.split_first() else { continue };
        let mut descs = Vec::new();
        for d in layers {
            let (Some(r), Some(blob)) = (ready.get(&(*d, c)), reg.blobs.get(d)) else { break };
            let BlobSource::Layer(layer) = blob.source else { break };
            descs.push((*d, *r, layer));
        }
        if descs.len() != layers.len() {
            continue;
        }
        let repl: Vec<(Digest, u64)> = descs.iter().map(|(_, r, _)| (r.digest, r.size)).collect();
        let Some(bytes) = image_manifest(&m.bytes, c.layer_type(m.media_type), &repl) else { continue };
        let digest = Digest::of(&bytes);
        let mut refs = vec![*config];
        for (diff, r, layer) in descs {
            refs.push(r.digest);
            new_blobs.push(Blob {
                digest: r.digest,
                size: r.size,
                source: BlobSource::Compressed { layer, diff, codec: c },
            });
        }
        twin.insert(m.digest, digest);
        new_manifests.push(Manifest {
            digest,
            media_type: m.media_type,
            bytes: Arc::from(bytes),
            verbatim: false,
            image: m.image,
            refs,
        });
    }
    let mut indexes: Vec<&Manifest> = reg.manifests.values().filter(|m| m.media_type.is_index()).collect();
    indexes.sort_by_key(|m| m.digest);
    for ix in indexes {
        if ix.refs.is_empty() || !ix.refs.iter().all(|d| twin.contains_key(d)) {
            continue;
        }
        let sizes: HashMap<Digest, u64> = new_manifests.iter().map(|m| (m.digest, m.bytes.len() as u64)).collect();
        let Some(bytes) = index(&ix.bytes, &twin, &sizes) else { continue };
        let digest = Digest::of(&bytes);
        let refs = ix.refs.iter().map(|d| twin[d]).collect();
        twin.insert(ix.digest, digest);
        new_manifests.push(Manifest {
            digest,
            media_type: ix.media_type,
            bytes: Arc::from(bytes),
            verbatim: false,
            image: ix.image,
            refs,
        });
    }
    let added = new_manifests.len();
    for b in new_blobs {
        // One digest, one blob: a compressed digest never collides with an existing one of
        // another size (it hashes other bytes); keep the first if it does.
        reg.blobs.entry(b.digest).or_insert(b);
    }
    for m in new_manifests {
        reg.manifests.entry(m.digest).or_insert(m);
    }
    for repo in reg.repos.values_mut() {
        let extra: Vec<Digest> = repo.manifests.iter().filter_map(|d| twin.get(d).copied()).collect();
        for d in extra {
            repo.manifests.insert(d);
            let m = &reg.manifests[&d];
            if !m.media_type.is_index() {
                repo.blobs.extend(m.refs.iter().copied());
            }
        }
        for target in repo.tags.values_mut() {
            if let Some(c) = twin.get(target) {
                *target = *c;
            }
        }
    }
    added
}

/// `bytes` (a served image manifest) with its layers replaced by `layers`, of `media_type`.
/// Layer annotations are dropped (they describe the uncompressed or original blob).
fn image_manifest(bytes: &[u8], media_type: &str, layers: &[(Digest, u64)]) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(bytes).ok()?;
    let list = v.get_mut("layers")?.as_array_mut()?;
    if list.len() != layers.len() {
        return None;
    }
    for (desc, (digest, size)) in list.iter_mut().zip(layers) {
        let obj = desc.as_object_mut()?;
        obj.remove("annotations");
        obj.remove("urls");
        obj.insert("mediaType".into(), Value::from(media_type));
        obj.insert("digest".into(), Value::from(digest.to_string()));
        obj.insert("size".into(), Value::from(*size));
    }
    serde_json::to_vec(&v).ok()
}

/// `bytes` (a served index) with each child replaced by its compressed twin.
fn index(bytes: &[u8], twin: &BTreeMap<Digest, Digest>, sizes: &HashMap<Digest, u64>) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(bytes).ok()?;
    for desc in v.get_mut("manifests")?.as_array_mut()? {
        let obj = desc.as_object_mut()?;
        let old: Digest = obj.get("digest")?.as_str()?.parse().ok()?;
        let new = twin.get(&old)?;
        obj.insert("digest".into(), Value::from(new.to_string()));
        obj.insert("size".into(), Value::from(*sizes.get(new)?));
    }
    serde_json::to_vec(&v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Repo, UNTAGGED_REPO};
    use crate::Id;

    fn d(n: u8) -> Digest {
        Digest::of(&[n])
    }

    fn id(n: u8) -> Id {
        d(n).as_id()
    }

    /// One OCI image with two layers and one Docker image with one, in one repository,
    /// plus an index over the OCI image.
    fn model() -> (Registry, Digest, Digest, Digest) {
        let mut reg = Registry::default();
        let config = d(1);
        reg.blobs.insert(config, Blob { digest: config, size: 2, source: BlobSource::Bytes(Arc::from(&b"{}"[..])) });
        for (n, size) in [(10u8, 100u64), (11, 200)] {
            reg.blobs.insert(d(n), Blob { digest: d(n), size, source: BlobSource::Layer(id(n)) });
        }
        let oci = crate::registry::manifest::rewrite_image(
            MediaType::OciManifest,
            (config, 2),
            &[(d(10), 100), (d(11), 200)],
            None,
        );
        let docker =
            crate::registry::manifest::rewrite_image(MediaType::DockerManifest, (config, 2), &[(d(10), 100)], None);
        let (od, dd) = (Digest::of(&oci), Digest::of(&docker));
        let plat = serde_json::json!({"architecture": "amd64", "os": "linux"});
        let ix = crate::registry::manifest::rewrite_index(
            MediaType::OciIndex,
            &[crate::registry::manifest::Child {
                media_type: MediaType::OciManifest,
                digest: od,
                size: oci.len() as u64,
                platform: Some(&plat),
            }],
        );
        let xd = Digest::of(&ix);
        for (dg, mt, bytes, refs) in [
            (od, MediaType::OciManifest, oci, vec![config, d(10), d(11)]),
            (dd, MediaType::DockerManifest, docker, vec![config, d(10)]),
            (xd, MediaType::OciIndex, ix, vec![od]),
        ] {
            reg.manifests.insert(
                dg,
                Manifest { digest: dg, media_type: mt, bytes: Arc::from(bytes), verbatim: false, image: id(1), refs },
            );
        }
        let mut repo = Repo::default();
        repo.tags.insert("oci".into(), od);
        repo.tags.insert("docker".into(), dd);
        repo.tags.insert("list".into(), xd);
        repo.manifests.extend([od, dd, xd]);
        repo.blobs.extend([config, d(10), d(11)]);
        reg.repos.insert(UNTAGGED_REPO.into(), repo);
        (reg, od, dd, xd)
    }

    fn ready(entries: &[(u8, Codec)]) -> ReadyMap {
        entries
            .iter()
            .map(|&(n, c)| ((d(n), c), Ready { digest: Digest::of(&[n, c as u8 + 100]), size: n as u64 }))
            .collect()
    }

    #[test]
    fn wanted_gives_docker_images_gzip() {
        let (reg, ..) = model();
        let w = wanted(&reg, Codec::Zstd);
        assert_eq!(w.len(), 3);
        assert!(w.contains(&(d(10), Codec::Zstd)) && w.contains(&(d(11), Codec::Zstd)));
        assert!(w.contains(&(d(10), Codec::Gzip)));
    }

    #[test]
    fn tags_move_only_when_every_layer_is_ready() {
        let (mut reg, od, dd, xd) = model();
        // One of two OCI layers ready, the Docker one not: nothing changes.
        assert_eq!(apply(&mut reg, Codec::Zstd, &ready(&[(10, Codec::Zstd)])), 0);
        let tags = &reg.repos[UNTAGGED_REPO].tags;
        assert_eq!((tags["oci"], tags["docker"], tags["list"]), (od, dd, xd));

        let (mut reg, od, dd, xd) = model();
        let r = ready(&[(10, Codec::Zstd), (11, Codec::Zstd), (10, Codec::Gzip)]);
        assert_eq!(apply(&mut reg, Codec::Zstd, &r), 3);
        let repo = &reg.repos[UNTAGGED_REPO];
        let (o2, d2, x2) = (repo.tags["oci"], repo.tags["docker"], repo.tags["list"]);
        assert!(o2 != od && d2 != dd && x2 != xd);
        // Both forms stay reachable by digest.
        for m in [od, dd, xd, o2, d2, x2] {
            assert!(repo.manifests.contains(&m) && reg.manifests.contains_key(&m));
        }
        let oci: Value = serde_json::from_slice(&reg.manifests[&o2].bytes).unwrap();
        assert_eq!(oci["config"]["digest"], d(1).to_string(), "same config, same image id");
        assert_eq!(oci["layers"][0]["mediaType"], OCI_LAYER_ZSTD);
        assert_eq!(oci["layers"][1]["digest"], r[&(d(11), Codec::Zstd)].digest.to_string());
        assert_eq!(oci["layers"][1]["size"], 11);
        let docker: Value = serde_json::from_slice(&reg.manifests[&d2].bytes).unwrap();
        assert_eq!(docker["layers"][0]["mediaType"], DOCKER_LAYER_GZIP);
        let ix: Value = serde_json::from_slice(&reg.manifests[&x2].bytes).unwrap();
        assert_eq!(ix["manifests"][0]["digest"], o2.to_string());
        assert_eq!(ix["manifests"][0]["size"], reg.manifests[&o2].bytes.len());
        assert_eq!(ix["manifests"][0]["platform"]["architecture"], "amd64");
        // Every digest named is served, and every manifest hashes to its digest.
        for m in reg.manifests.values() {
            assert_eq!(Digest::of(&m.bytes), m.digest);
            for r in &m.refs {
                assert!(reg.blobs.contains_key(r) || reg.manifests.contains_key(r));
                assert!(repo.blobs.contains(r) || repo.manifests.contains(r));
            }
        }
        let b = &reg.blobs[&r[&(d(11), Codec::Zstd)].digest];
        assert!(matches!(b.source, BlobSource::Compressed { diff, codec: Codec::Zstd, .. } if diff == d(11)));
    }

    #[test]
    fn same_inputs_same_bytes() {
        let r = ready(&[(10, Codec::Gzip), (11, Codec::Gzip)]);
        let (mut a, ..) = model();
        let (mut b, ..) = model();
        apply(&mut a, Codec::Gzip, &r);
        apply(&mut b, Codec::Gzip, &r);
        assert_eq!(a.repos, b.repos);
        let oci = a.repos[UNTAGGED_REPO].tags["oci"];
        let m: Value = serde_json::from_slice(&a.manifests[&oci].bytes).unwrap();
        assert_eq!(m["layers"][0]["mediaType"], OCI_LAYER_GZIP);
    }
}
