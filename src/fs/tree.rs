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
//! v2/<repo...>/.referrers/sha256:<hex>            (hidden, computed: an OCI index, maybe empty)
//! v2/<repo...>/.referrers/.type/sha256:<hex>/<artifactType>   (the same, filtered)
//! v2/<repo...>/tags/.page/...                     (hidden, computed: `n` and `last`)
//! v2/.catalog/...                                 (hidden, computed: the same for _catalog)
//! index.html                                      (the browsable index)
//! ```
//! The hidden `.ref` and `.after` entries exist for HTTP servers: `.ref/<ref>` lets a
//! server learn a tag's digest from the resolved path and the manifest's media type
//! from the file suffix; `.after/<last>` answers `tags/list?last=`. [`Tree::build`] is
//! total: a repository whose path would meet another's is skipped with a log line.
//!
//! Pages (`.page` of a repository's tags, `.catalog` for the catalog) are [`Dyn`]
//! directories answered on lookup: `<n>/<last...>/@` is a symlink to
//! `.to/<n>/<next>` (a page of `n` names ending at `next`; more follow) holding one
//! file `<next>.next`, or to `.end/<last>` (or `.end/-`, everything) or `.none` holding one
//! file `end`. `last` may span components (`a/b/c`) or be one with `/` as `%2F`; `next`
//! is one component with `/` as `%2F`. A server learns `next` from the resolved path
//! (nginx `$realpath_root`) or the file name (a Caddy `try_files` glob) for the `Link` header.
//!
//! `.referrers/<digest>` answers any sha256 digest (the referrers API never says 404);
//! `.referrers/.type/<digest>/<artifactType>` filters, the type given as one
//! percent-encoded component (`application%2Fvnd.x%2Bjson`, as nginx passes a raw query
//! value) or as two (`application/vnd.x+json`, as Caddy passes a decoded one).
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use crate::live::View;
use crate::registry::compressed::Codec;
use crate::registry::page::{self, Listing, Target};
use crate::registry::{index_page, referrers};
use crate::registry::{Registry, Repo};
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
    /// A directory whose entries are computed on lookup.
    Dynamic(Dyn),
}

/// The computed directories of paginated listings (see the module docs).
#[derive(Debug, Clone)]
pub enum Dyn {
    /// `.page/` or `.catalog/`: `<n>/`, `.to/`, `.end/`, `.none/`.
    PageRoot(Listing),
    /// `<n>/<last...>/`: `@` links to the target; any other name extends `last`.
    Page { list: Listing, n: u64, last: Option<String>, depth: usize },
    /// `.to/` and `.to/<n>/`.
    To(Listing, Option<u64>),
    /// `.to/<n>/<next>/`: holds `<next>.next`.
    ToDir(Listing, u64, String),
    /// `.end/`.
    EndRoot(Listing),
    /// `.end/<last>/` (`-`: no `last`): holds `end`.
    EndDir(Listing, Option<String>),
    /// `.none/`: holds `end`, an empty list.
    NoneDir(Listing),
    /// `.referrers/` (`None`) and `.referrers/.type/` (`Some(None)`), `.type/<subject>/`
    /// (`Some(Some((subject, None)))`) and `.type/<subject>/<type>/` (`Some(Some((subject, Some(type))))`).
    Referrers(Arc<Referrers>, Option<Option<(Digest, Option<String>)>>),
}

/// A repository's referrers by subject.
pub type Referrers = BTreeMap<Digest, Vec<referrers::Referrer>>;

/// `%XX` decoded (invalid escapes kept as they are); `+` and space both mean `+`, as a
/// form-decoded query turns `+` into a space and media types hold no spaces.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b' ', ..) => {
                out.push(b'+');
                i += 1;
            }
            (c, ..) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).replace(' ', "+")
}

fn referrers_file(refs: &Referrers, subject: &Digest, artifact_type: Option<&str>) -> Kind {
    let list = refs.get(subject).map(Vec::as_slice).unwrap_or_default();
    let body = match artifact_type {
        None => referrers::index_json(list),
        Some(t) => referrers::index_json(list.iter().filter(|r| r.artifact_type.as_deref() == Some(t))),
    };
    Kind::File(Content::Bytes(body.into()))
}

fn dyn_dir(d: Dyn) -> Kind {
    Kind::Dynamic(d)
}

/// `n` as written in a request: 1 to 9 decimal digits.
fn parse_n(s: &str) -> Option<u64> {
    (!s.is_empty() && s.len() <= 9 && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten()
}

/// The entry `name` of a computed directory, if there is one.
pub fn dyn_lookup(reg: &Registry, d: &Dyn, name: &str) -> Option<Kind> {
    if name.is_empty() || name == "." || name == ".." {
        return None;
    }
    match d {
        Dyn::PageRoot(list) => match name {
            ".to" => Some(dyn_dir(Dyn::To(list.clone(), None))),
            ".end" => Some(dyn_dir(Dyn::EndRoot(list.clone()))),
            ".none" => Some(dyn_dir(Dyn::NoneDir(list.clone()))),
            _ => Some(dyn_dir(Dyn::Page { list: list.clone(), n: parse_n(name)?, last: None, depth: 0 })),
        },
        Dyn::Page { list, n, last, depth } => {
            let entries = list.entries(reg)?;
            if name == "@" {
                let up = "../".repeat(depth + 1);
                let target = match page::resolve(&entries, *n, last.as_deref()) {
                    Target::Next { n, next } => format!("{up}.to/{n}/{}", page::encode(&next)),
                    Target::End { after: Some(a) } => format!("{up}.end/{}", page::encode(&a)),
                    Target::End { after: None } => format!("{up}.end/-"),
                    Target::Empty => format!("{up}.none"),
                };
                return Some(Kind::Link(target));
            }
            if name.starts_with('.') || name.contains('@') || *depth >= 64 {
                return None;
            }
            let part = page::decode(name);
            let last = Some(match last {
                Some(l) => format!("{l}/{part}"),
                None => part,
            });
            Some(dyn_dir(Dyn::Page { list: list.clone(), n: *n, last, depth: depth + 1 }))
        }
        Dyn::To(list, None) => Some(dyn_dir(Dyn::To(list.clone(), Some(parse_n(name)?)))),
        Dyn::To(list, Some(n)) => {
            let next = page::decode(name);
            page::ending_at(&list.entries(reg)?, *n, &next)?;
            Some(dyn_dir(Dyn::ToDir(list.clone(), *n, next)))
        }
        Dyn::EndRoot(list) => {
            list.entries(reg)?;
            let after = (name != "-").then(|| page::decode(name));
            Some(dyn_dir(Dyn::EndDir(list.clone(), after)))
        }
        Dyn::Referrers(refs, None) if name == ".type" => Some(dyn_dir(Dyn::Referrers(refs.clone(), Some(None)))),
        Dyn::Referrers(refs, None) => Some(referrers_file(refs, &name.parse().ok()?, None)),
        Dyn::Referrers(refs, Some(None)) => {
            Some(dyn_dir(Dyn::Referrers(refs.clone(), Some(Some((name.parse().ok()?, None))))))
        }
        Dyn::Referrers(refs, Some(Some((subject, prefix)))) => {
            let part = percent_decode(name);
            let full = match prefix {
                Some(p) if !part.contains('/') => format!("{p}/{part}"),
                Some(_) => return None,
                None if part.contains('/') => part,
                None => {
                    return Some(dyn_dir(Dyn::Referrers(refs.clone(), Some(Some((*subject, Some(part)))))));
                }
            };
            referrers::split_media_type(&full)?;
            Some(referrers_file(refs, subject, Some(&full)))
        }
        Dyn::ToDir(..) | Dyn::EndDir(..) | Dyn::NoneDir(..) => {
            dyn_children(reg, d).into_iter().find(|(n, _)| n == name).map(|(_, k)| k)
        }
    }
}

/// The entries of a computed directory that can be listed (the page files).
pub fn dyn_children(reg: &Registry, d: &Dyn) -> Vec<(String, Kind)> {
    let file = |bytes: Vec<u8>| Kind::File(Content::Bytes(bytes.into()));
    match d {
        Dyn::ToDir(list, n, next) => {
            let Some(entries) = list.entries(reg) else { return Vec::new() };
            match page::ending_at(&entries, *n, next) {
                Some(names) => vec![(format!("{}.next", page::encode(next)), file(list.json(&names)))],
                None => Vec::new(),
            }
        }
        Dyn::EndDir(list, after) => match list.entries(reg) {
            Some(entries) => vec![("end".into(), file(list.json(&page::after(&entries, after.as_deref()))))],
            None => Vec::new(),
        },
        Dyn::NoneDir(list) => match list.entries(reg) {
            Some(_) => vec![("end".into(), file(list.json(&[])))],
            None => Vec::new(),
        },
        _ => Vec::new(),
    }
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
        let index = index_page::render(reg, &view.snapshot.images);
        let v2 = b.dir(ROOT, "v2").and_then(|v2| {
            b.file(v2, "_catalog", Content::Bytes(catalog.into()), false)?;
            b.add(v2, ".catalog", dyn_dir(Dyn::PageRoot(Listing::Catalog)), false)?;
            b.file(ROOT, "index.html", Content::Bytes(index.into_bytes().into()), false)?;
            Ok(v2)
        });
        let Ok(v2) = v2 else {
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
        b.add(tags, ".page", dyn_dir(Dyn::PageRoot(Listing::Tags(name.to_string()))), false)?;
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
                crate::registry::BlobSource::Compressed { layer, diff, codec } => {
                    Content::Compressed(CompressedBlob { layer: *layer, diff: *diff, codec: *codec, size: blob.size })
                }
            };
            b.file(blobs, &digest_name(d), content, true)?;
        }
        let refs = Arc::new(referrers::of_repo(reg, repo));
        b.add(dir, ".referrers", dyn_dir(Dyn::Referrers(refs, None)), false)?;
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

    fn reg() -> Registry {
        let mut reg = Registry::default();
        let d = Digest::of(b"m");
        for repo in ["a/x", "b", "c"] {
            let r = reg.repos.entry(repo.into()).or_default();
            for t in ["t1", "t2", "t3"] {
                r.tags.insert(t.into(), d);
            }
        }
        reg
    }

    /// Follows `path` from a computed directory; links are returned as they are.
    fn walk(reg: &Registry, root: Dyn, path: &str) -> Option<Kind> {
        let mut kind = Kind::Dynamic(root);
        for part in path.split('/') {
            let Kind::Dynamic(d) = &kind else { return None };
            kind = dyn_lookup(reg, d, part)?;
        }
        Some(kind)
    }

    fn link(k: Option<Kind>) -> String {
        match k {
            Some(Kind::Link(t)) => t,
            other => panic!("not a link: {other:?}"),
        }
    }

    fn bytes(k: Option<Kind>) -> String {
        match k {
            Some(Kind::File(Content::Bytes(b))) => String::from_utf8(b.to_vec()).unwrap(),
            other => panic!("not a file: {other:?}"),
        }
    }

    #[test]
    fn pages_link_to_their_target() {
        let reg = reg();
        let tags = || Dyn::PageRoot(Listing::Tags("b".into()));
        assert_eq!(link(walk(&reg, tags(), "2/@")), "../.to/2/t2");
        assert_eq!(bytes(walk(&reg, tags(), ".to/2/t2/t2.next")), "{\"name\":\"b\",\"tags\":[\"t1\",\"t2\"]}\n");
        assert_eq!(link(walk(&reg, tags(), "2/t2/@")), "../../.end/t2");
        assert_eq!(bytes(walk(&reg, tags(), ".end/t2/end")), "{\"name\":\"b\",\"tags\":[\"t3\"]}\n");
        assert_eq!(link(walk(&reg, tags(), "0/@")), "../.none");
        assert_eq!(bytes(walk(&reg, tags(), ".none/end")), "{\"name\":\"b\",\"tags\":[]}\n");
        assert_eq!(link(walk(&reg, tags(), "9/@")), "../.end/-");
        assert!(walk(&reg, tags(), ".to/2/t3/t3.next").is_some());
        assert!(walk(&reg, tags(), ".to/2/nope").is_none(), "not a tag");
        for bad in ["x/@", "-1/@", "1234567890/@", "2/../@", "2/.ref/@", "2/a@b/@"] {
            assert!(walk(&reg, tags(), bad).is_none(), "{bad}");
        }
        assert!(walk(&reg, Dyn::PageRoot(Listing::Tags("nope".into())), "1/@").is_none());
        // Catalog: `last` as components or with %2F; `next` with %2F.
        let cat = || Dyn::PageRoot(Listing::Catalog);
        assert_eq!(link(walk(&reg, cat(), "1/@")), "../.to/1/a%2Fx");
        assert_eq!(link(walk(&reg, cat(), "1/a/x/@")), "../../../.to/1/b");
        assert_eq!(link(walk(&reg, cat(), "1/a%2Fx/@")), "../../.to/1/b");
        assert_eq!(bytes(walk(&reg, cat(), ".to/1/a%2Fx/a%2Fx.next")), "{\"repositories\":[\"a/x\"]}\n");
        assert_eq!(dyn_children(&reg, &Dyn::ToDir(Listing::Catalog, 1, "a/x".into()))[0].0, "a%2Fx.next");
    }

    #[test]
    fn referrers_answer_any_digest_and_filter_however_encoded() {
        let reg = Registry::default();
        let subject = Digest::of(b"s");
        let r = referrers::Referrer {
            media_type: "application/vnd.oci.image.manifest.v1+json",
            digest: Digest::of(b"r"),
            size: 1,
            artifact_type: Some("application/vnd.x+json".into()),
            annotations: BTreeMap::new(),
        };
        let refs = Arc::new(Referrers::from([(subject, vec![r])]));
        let root = || Dyn::Referrers(refs.clone(), None);
        let count = |k: Option<Kind>| {
            let v: serde_json::Value = serde_json::from_str(&bytes(k)).unwrap();
            v["manifests"].as_array().unwrap().len()
        };
        assert_eq!(count(walk(&reg, root(), &subject.to_string())), 1);
        assert_eq!(count(walk(&reg, root(), &Digest::of(b"other").to_string())), 0);
        for t in [
            "application/vnd.x+json",
            "application%2Fvnd.x%2Bjson",
            "application/vnd.x%2bjson",
            "application/vnd.x json",
        ] {
            assert_eq!(count(walk(&reg, root(), &format!(".type/{subject}/{t}"))), 1, "{t}");
        }
        assert_eq!(count(walk(&reg, root(), &format!(".type/{subject}/application/other"))), 0);
        for bad in ["sha256:zz", ".type/sha256:zz/a/b", &format!(".type/{subject}/a%2F..%2Fb")] {
            assert!(walk(&reg, root(), bad).is_none(), "{bad}");
        }
        assert_eq!(percent_decode("a%2fb%2Bc+d%zz%"), "a/b+c+d%zz%");
    }
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
