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
//! from the file suffix; `.after/<last>` answers `tags/list?last=`. [`Tree::build`] is
//! total: a repository whose path would meet another's is skipped with a log line.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use crate::live::View;
use crate::registry::{Registry, Repo};
use crate::{Digest, Id};

pub const ROOT: u64 = 1;

#[derive(Debug, Clone)]
pub enum Content {
    Bytes(Arc<[u8]>),
    Layer { id: Id, size: u64 },
}

impl Content {
    pub fn size(&self) -> u64 {
        match self {
            Content::Bytes(b) => b.len() as u64,
            Content::Layer { size, .. } => *size,
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

/// Two paths of the tree met: `path` exists already (as another kind of node, or the
/// parent it was to go below is no directory).
#[derive(Debug)]
struct Collision {
    path: String,
}

struct Builder {
    nodes: HashMap<u64, Node>,
    /// Nodes added for the repository being laid out, undone if it collides.
    added: Vec<u64>,
    /// Directories that are repository path components (`v2/<a>/<b>`), the only
    /// existing nodes another repository may go below.
    path_dirs: HashSet<u64>,
}

impl Builder {
    /// Adds `name` below `parent`; a name already there is a [`Collision`].
    fn add(&mut self, parent: u64, name: &str, kind: Kind, immutable: bool) -> Result<u64, Collision> {
        let Some(Node { kind: Kind::Dir { children, .. }, path: parent_path, .. }) = self.nodes.get(&parent) else {
            let path = self.nodes.get(&parent).map_or_else(String::new, |n| n.path.clone());
            return Err(Collision { path });
        };
        let path = format!("{parent_path}/{name}");
        if children.contains_key(name) {
            return Err(Collision { path });
        }
        let mut ino = ino_of(&path);
        while ino <= ROOT || self.nodes.contains_key(&ino) {
            ino = ino.wrapping_add(1);
        }
        self.nodes.insert(ino, Node { parent, kind, immutable, path });
        if let Some(Node { kind: Kind::Dir { children, .. }, .. }) = self.nodes.get_mut(&parent) {
            children.insert(name.to_string(), ino);
        }
        self.added.push(ino);
        Ok(ino)
    }

    /// Removes what was added since the last [`Builder::commit`], newest first.
    fn undo(&mut self) {
        while let Some(ino) = self.added.pop() {
            self.path_dirs.remove(&ino);
            let Some(node) = self.nodes.remove(&ino) else { continue };
            if let Some(Node { kind: Kind::Dir { children, .. }, .. }) = self.nodes.get_mut(&node.parent) {
                children.retain(|_, c| *c != ino);
            }
        }
    }

    fn commit(&mut self) {
        self.added.clear();
    }

    fn dir(&mut self, parent: u64, name: &str) -> Result<u64, Collision> {
        self.add(parent, name, Kind::Dir { children: BTreeMap::new(), after_tags_of: None }, false)
    }

    /// A repository path component: reused if it is one already.
    fn path_dir(&mut self, parent: u64, name: &str) -> Result<u64, Collision> {
        let existing = match self.nodes.get(&parent) {
            Some(Node { kind: Kind::Dir { children, .. }, .. }) => children.get(name).copied(),
            _ => None,
        };
        match existing {
            Some(ino) if self.path_dirs.contains(&ino) => Ok(ino),
            _ => {
                let ino = self.dir(parent, name)?;
                self.path_dirs.insert(ino);
                Ok(ino)
            }
        }
    }

    fn file(&mut self, parent: u64, name: &str, content: Content, immutable: bool) -> Result<u64, Collision> {
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
    /// Lays `view` out. Total: a repository whose path would meet another's (which
    /// `registry` already leaves out, see [`crate::registry::collision`]) is skipped with a
    /// log line, never a panic.
    pub fn build(view: Arc<View>) -> Tree {
        let mut b = Builder { nodes: HashMap::new(), added: Vec::new(), path_dirs: HashSet::new() };
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
        let mut catalog =
            serde_json::to_vec(&serde_json::json!({ "repositories": reg.catalog() })).expect("plain JSON");
        catalog.push(b'\n');
        let v2 = b.dir(ROOT, "v2");
        let Ok(v2) = v2.and_then(|v2| b.file(v2, "_catalog", Content::Bytes(catalog.into()), false).map(|_| v2)) else {
            // Cannot happen in an empty tree; an empty tree beats a panic.
            return Tree { view, nodes: b.nodes };
        };
        b.commit();
        for (name, repo) in &reg.repos {
            match Tree::lay_out(&mut b, v2, reg, name, repo) {
                Ok(()) => b.commit(),
                Err(c) => {
                    b.undo();
                    log::error!(
                        "repository {name} not served: its path meets {} (a bug: registry should have left it out)",
                        c.path
                    );
                }
            }
        }
        Tree { view, nodes: b.nodes }
    }

    fn lay_out(b: &mut Builder, v2: u64, reg: &Registry, name: &str, repo: &Repo) -> Result<(), Collision> {
        let mut dir = v2;
        for c in name.split('/') {
            dir = b.path_dir(dir, c)?;
        }
        let tags = b.dir(dir, "tags")?;
        b.file(tags, "list", Content::Bytes(tags_json(reg, name, None).into()), false)?;
        b.add(tags, ".after", Kind::Dir { children: BTreeMap::new(), after_tags_of: Some(name.to_string()) }, false)?;
        let manifests = b.dir(dir, "manifests")?;
        let refs = b.dir(manifests, ".ref")?;
        for d in &repo.manifests {
            let Some(m) = reg.manifests.get(d) else { continue };
            let dn = digest_name(d);
            b.file(manifests, &dn, Content::Bytes(m.bytes.clone()), true)?;
            let rd = b.add(refs, &dn, Kind::Dir { children: BTreeMap::new(), after_tags_of: None }, true)?;
            b.file(rd, &format!("{dn}.{}", m.media_type.kind()), Content::Bytes(m.bytes.clone()), true)?;
        }
        for (tag, d) in &repo.tags {
            b.add(manifests, tag, Kind::Link(digest_name(d)), false)?;
            b.add(refs, tag, Kind::Link(digest_name(d)), false)?;
        }
        let blobs = b.dir(dir, "blobs")?;
        for d in &repo.blobs {
            let Some(blob) = reg.blobs.get(d) else { continue };
            let content = match &blob.source {
                crate::registry::BlobSource::Bytes(bytes) => Content::Bytes(bytes.clone()),
                crate::registry::BlobSource::Layer(id) => Content::Layer { id: *id, size: blob.size },
            };
            b.file(blobs, &digest_name(d), content, true)?;
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Blob, BlobSource};
    use crate::store::{ChangeToken, Driver, Location, Snapshot};

    fn view(repos: &[(&str, &[&str])]) -> Arc<View> {
        let mut registry = Registry::default();
        let config: Arc<[u8]> = Arc::from(&b"{}"[..]);
        let d = Digest::of(&config);
        registry.blobs.insert(d, Blob { digest: d, size: 2, source: BlobSource::Bytes(config) });
        for (name, tags) in repos {
            let repo = registry.repos.entry(name.to_string()).or_default();
            repo.blobs.insert(d);
            for t in *tags {
                repo.tags.insert(t.to_string(), d);
            }
        }
        let snapshot = Snapshot {
            location: Location { graphroot: "/nonexistent".into(), driver: Driver::Overlay },
            token: ChangeToken::default(),
            images: vec![],
            layers: Default::default(),
            warnings: vec![],
        };
        Arc::new(View { snapshot, registry, built: std::time::SystemTime::now() })
    }

    fn paths(t: &Tree) -> Vec<&str> {
        let mut p: Vec<&str> = t.nodes.values().map(|n| n.path.as_str()).collect();
        p.sort();
        p
    }

    #[test]
    fn colliding_repositories_are_skipped_not_a_panic() {
        // Regression: a model that lets these through reached `unreachable!`. The
        // registry leaves them out; the builder must survive them all the same.
        let clean = Tree::build(view(&[("localhost/app", &["x"])]));
        for other in
            ["localhost/app/tags/list", "localhost/app/manifests/x", "localhost/app/blobs", "localhost/app/tags"]
        {
            let t = Tree::build(view(&[("localhost/app", &["x"]), (other, &["1"])]));
            assert_eq!(paths(&t), paths(&clean), "{other}");
            // Every child link points at a node, every node's parent lists it.
            for (ino, n) in &t.nodes {
                if let Kind::Dir { children, .. } = &n.kind {
                    assert!(children.values().all(|c| t.nodes.contains_key(c)), "{other}");
                }
                if *ino != ROOT {
                    assert!(
                        matches!(&t.nodes[&n.parent].kind, Kind::Dir { children, .. } if children.values().any(|c| c == ino))
                    );
                }
            }
        }
        // Nested repositories that do not meet are both served.
        let t = Tree::build(view(&[("localhost/app", &["x"]), ("localhost/app/web", &["1"])]));
        assert!(paths(&t).contains(&"/v2/localhost/app/web/manifests/1"));
        assert!(paths(&t).contains(&"/v2/localhost/app/manifests/x"));
    }
}
