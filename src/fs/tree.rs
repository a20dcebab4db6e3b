//! The registry model laid out as a file tree, with stable inode numbers.
//!
//! ```text
//! v2/_catalog
//! v2/<repo...>/tags/list
//! v2/<repo...>/tags/.after/<last>                (hidden; any name: tags sorting after it)
//! v2/<repo...>/manifests/<tag>                   -> sha256:<hex>
//! v2/<repo...>/manifests/sha256:<hex>
//! v2/<repo...>/manifests/.ref/<tag>              -> sha256:<hex>
//! v2/<repo...>/manifests/.ref/sha256:<hex>/sha256:<hex>.<kind>
//! v2/<repo...>/blobs/sha256:<hex>
//! ```
//! The hidden `.ref` and `.after` entries exist for HTTP servers: `.ref/<ref>` lets a
//! server learn a tag's digest from the resolved path and the manifest's media type
//! from the file suffix; `.after/<last>` answers `tags/list?last=`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::live::View;
use crate::registry::compressed::Codec;
use crate::registry::Registry;
use crate::{Digest, Id};

pub const ROOT: u64 = 1;

#[derive(Debug, Clone)]
pub enum Content {
    Bytes(Arc<[u8]>),
    Layer { id: Id, size: u64 },
    Compressed(CompressedBlob),
}

/// A compressed layer blob from the cache (`crate::compress`).
#[derive(Debug, Clone)]
pub struct CompressedBlob {
    pub layer: Id,
    pub diff: Digest,
    pub codec: Codec,
    pub size: u64,
}

impl Content {
    pub fn size(&self) -> u64 {
        match self {
            Content::Bytes(b) => b.len() as u64,
            Content::Layer { size, .. } | Content::Compressed(CompressedBlob { size, .. }) => *size,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Kind {
    /// `after_tags_of`: this is a `.after` directory of that repository.
    Dir {
        children: BTreeMap<String, u64>,
        after_tags_of: Option<String>,
    },
    File(Content),
    Link(String),
}

#[derive(Debug, Clone)]
pub struct Node {
    pub parent: u64,
    pub kind: Kind,
    /// Named by digest: same name, same content, forever.
    pub immutable: bool,
    /// Path from the mount root, for messages.
    pub path: String,
}

/// One view's tree.
#[derive(Debug)]
pub struct Tree {
    pub view: Arc<View>,
    pub nodes: HashMap<u64, Node>,
}

/// FNV-1a: a stable inode number for a path.
pub fn ino_of(path: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in path.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

struct Builder {
    nodes: HashMap<u64, Node>,
}

impl Builder {
    fn add(&mut self, parent: u64, name: &str, kind: Kind, immutable: bool) -> u64 {
        if let Some(&existing) = self.children(parent).get(name) {
            return existing;
        }
        let path = format!("{}/{name}", self.nodes[&parent].path);
        let mut ino = ino_of(&path);
        while ino <= ROOT || self.nodes.contains_key(&ino) {
            ino = ino.wrapping_add(1);
        }
        self.nodes.insert(ino, Node { parent, kind, immutable, path });
        if let Some(Node { kind: Kind::Dir { children, .. }, .. }) = self.nodes.get_mut(&parent) {
            children.insert(name.to_string(), ino);
        }
        ino
    }

    fn children(&self, dir: u64) -> &BTreeMap<String, u64> {
        match &self.nodes[&dir].kind {
            Kind::Dir { children, .. } => children,
            _ => unreachable!("only directories get children"),
        }
    }

    fn dir(&mut self, parent: u64, name: &str) -> u64 {
        self.add(parent, name, Kind::Dir { children: BTreeMap::new(), after_tags_of: None }, false)
    }

    fn file(&mut self, parent: u64, name: &str, content: Content, immutable: bool) -> u64 {
        self.add(parent, name, Kind::File(content), immutable)
    }
}

/// `{"name":..,"tags":[..]}` for the tags of `repo` sorting after `last`.
pub fn tags_json(reg: &Registry, repo: &str, last: Option<&str>) -> Vec<u8> {
    let tags: Vec<&str> = reg
        .repos
        .get(repo)
        .map(|r| r.tags.keys().map(String::as_str).filter(|t| last.is_none_or(|l| *t > l)).collect())
        .unwrap_or_default();
    let mut out = serde_json::to_vec(&serde_json::json!({ "name": repo, "tags": tags })).expect("plain JSON");
    out.push(b'\n');
    out
}

fn digest_name(d: &Digest) -> String {
    d.to_string()
}

impl Tree {
    pub fn build(view: Arc<View>) -> Tree {
        let mut b = Builder { nodes: HashMap::new() };
        b.nodes.insert(
            ROOT,
            Node {
                parent: ROOT,
                kind: Kind::Dir { children: BTreeMap::new(), after_tags_of: None },
                immutable: false,
                path: String::new(),
            },
        );
        let reg = &view.registry;
        let v2 = b.dir(ROOT, "v2");
        let mut catalog =
            serde_json::to_vec(&serde_json::json!({ "repositories": reg.catalog() })).expect("plain JSON");
        catalog.push(b'\n');
        b.file(v2, "_catalog", Content::Bytes(catalog.into()), false);
        for (name, repo) in &reg.repos {
            let mut dir = v2;
            for c in name.split('/') {
                dir = b.dir(dir, c);
            }
            let tags = b.dir(dir, "tags");
            b.file(tags, "list", Content::Bytes(tags_json(reg, name, None).into()), false);
            b.add(tags, ".after", Kind::Dir { children: BTreeMap::new(), after_tags_of: Some(name.clone()) }, false);
            let manifests = b.dir(dir, "manifests");
            let refs = b.dir(manifests, ".ref");
            for d in &repo.manifests {
                let Some(m) = reg.manifests.get(d) else { continue };
                let dn = digest_name(d);
                b.file(manifests, &dn, Content::Bytes(m.bytes.clone()), true);
                let rd = b.add(refs, &dn, Kind::Dir { children: BTreeMap::new(), after_tags_of: None }, true);
                b.file(rd, &format!("{dn}.{}", m.media_type.kind()), Content::Bytes(m.bytes.clone()), true);
            }
            for (tag, d) in &repo.tags {
                b.add(manifests, tag, Kind::Link(digest_name(d)), false);
                b.add(refs, tag, Kind::Link(digest_name(d)), false);
            }
            let blobs = b.dir(dir, "blobs");
            for d in &repo.blobs {
                let Some(blob) = reg.blobs.get(d) else { continue };
                let content = match &blob.source {
                    crate::registry::BlobSource::Bytes(bytes) => Content::Bytes(bytes.clone()),
                    crate::registry::BlobSource::Layer(id) => Content::Layer { id: *id, size: blob.size },
                    crate::registry::BlobSource::Compressed { layer, diff, codec } => {
                        Content::Compressed(CompressedBlob {
                            layer: *layer,
                            diff: *diff,
                            codec: *codec,
                            size: blob.size,
                        })
                    }
                };
                b.file(blobs, &digest_name(d), content, true);
            }
        }
        Tree { view, nodes: b.nodes }
    }

    /// Entries of `old` that are gone (or changed identity) in `self`: (parent, name).
    pub fn vanished_since(&self, old: &Tree) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        for (ino, node) in &old.nodes {
            if let Kind::Dir { children, .. } = &node.kind {
                let now = match self.nodes.get(ino).map(|n| &n.kind) {
                    Some(Kind::Dir { children, .. }) => Some(children),
                    _ => None,
                };
                for (name, child) in children {
                    if now.and_then(|c| c.get(name)) != Some(child) {
                        out.push((*ino, name.clone()));
                    }
                }
            }
        }
        out
    }
}
