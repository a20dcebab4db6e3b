//! Registry builds from synthetic snapshots: layers with chains, problems and checks;
//! images with names, configs and stored manifests (well-formed ones of every media
//! type naming the right or wrong digests, indexes over other images' manifests, and
//! raw bytes). Never panics; building is deterministic (same snapshot, same bytes);
//! every manifest hashes to its digest and is valid JSON; rewritten ones are exactly
//! the manifest of the model (config and layer digests and sizes of the blobs they
//! name); everything a repository lists exists. The model is then laid out as the
//! mount's file tree: never a panic, every repository with its tags/list, tags,
//! manifests and blobs where the HTTP configs look for them, and a consistent node
//! graph. Also the rewrite functions directly.
#![no_main]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use arbitrary::Arbitrary;
use cstor_fs::registry::manifest::{self, Child, MediaType, Stored};
use cstor_fs::registry::{BlobSource, LayerChecks, Registry};
use cstor_fs::store::{ChangeToken, Driver, Image, Layer, LayerProblem, Location, Origin, Snapshot};
use cstor_fs::fs::{Content, Kind, Tree, ROOT};
use cstor_fs::live::View;
use cstor_fs::tarsplit::Error;
use cstor_fs::{Digest, Id};
use cstor_fs_fuzz::{digest, id};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

const NAMES: [&str; 13] = [
    "localhost/a:v1",
    "localhost/a",
    "example.com:5000/x/y:latest",
    "docker.io/library/b@sha256:0101010101010101010101010101010101010101010101010101010101010101",
    "localhost/a/tags:v1",
    "localhost/a/blobs",
    "noslash",
    "LOCALHOST/A:v2",
    "localhost/a:bad tag",
    "localhost/a/manifests/x:1",
    "localhost/a/tags/list:1",
    "localhost/a/referrers/x/y:1",
    "localhost/a/b/blobs:1",
];

#[derive(Arbitrary, Debug)]
struct LayerIn {
    id: u8,
    parent: Option<u8>,
    diff: Option<u8>,
    size: Option<u16>,
    problem: bool,
}

#[derive(Arbitrary, Debug)]
enum Mt {
    Oci,
    Docker,
    OciIndex,
    DockerList,
    Schema1,
    Absent,
    Other(String),
}

#[derive(Arbitrary, Debug, Clone)]
enum DigestRef {
    Layer(u8),
    Config,
    /// A manifest written earlier in this input.
    Made(u8),
    Text(String),
}

#[derive(Arbitrary, Debug)]
enum Big {
    Raw(Vec<u8>),
    Image {
        mt: Mt,
        schema: Option<i8>,
        config: Option<DigestRef>,
        layers: Option<Vec<DigestRef>>,
        annotations: Option<BTreeMap<String, String>>,
    },
    Index {
        mt: Mt,
        children: Vec<(DigestRef, Option<String>)>,
    },
    Unreadable(String),
}

#[derive(Arbitrary, Debug)]
enum Key {
    Manifest,
    ManifestOf(DigestRef),
    OtherSha(u8),
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum NameIn {
    Pool(u8),
    Text(String),
}

#[derive(Arbitrary, Debug)]
struct ImageIn {
    /// Id is the config's digest (as podman makes it), else `id(n)`.
    id: Option<u8>,
    names: Vec<NameIn>,
    top: Option<u8>,
    config: Option<Vec<u8>>,
    config_under_id: bool,
    big: Vec<(Key, Big)>,
    first_digest: Option<DigestRef>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    layers: Vec<LayerIn>,
    images: Vec<ImageIn>,
    checks: Vec<(u8, Result<u16, String>)>,
    rewrite: Rewrite,
}

/// Direct inputs of `rewrite_image`: Docker or OCI, layers, annotations.
#[derive(Arbitrary, Debug)]
struct Rewrite {
    docker: bool,
    layers: Vec<(Option<u8>, u32)>,
    annotations: Option<BTreeMap<String, String>>,
}

fn mt_str(mt: &Mt) -> Option<&str> {
    Some(match mt {
        Mt::Oci => manifest::OCI_MANIFEST,
        Mt::Docker => manifest::DOCKER_MANIFEST,
        Mt::OciIndex => manifest::OCI_INDEX,
        Mt::DockerList => manifest::DOCKER_LIST,
        Mt::Schema1 => "application/vnd.docker.distribution.manifest.v1+prettyjws",
        Mt::Absent => return None,
        Mt::Other(s) => s,
    })
}

struct Ctx {
    made: Vec<Digest>,
    config: Digest,
}

impl Ctx {
    fn digest(&self, r: &DigestRef) -> String {
        match r {
            DigestRef::Layer(n) => digest(*n).to_string(),
            DigestRef::Config => self.config.to_string(),
            DigestRef::Made(n) if !self.made.is_empty() => self.made[*n as usize % self.made.len()].to_string(),
            DigestRef::Made(n) => digest(*n).to_string(),
            DigestRef::Text(s) => s.clone(),
        }
    }
    fn descriptor(&self, mt: &str, r: &DigestRef) -> Value {
        json!({"mediaType": mt, "digest": self.digest(r), "size": 1})
    }
}

fn snapshot(input: &Input) -> Snapshot {
    let mut layers = BTreeMap::new();
    for l in &input.layers {
        let layer = Layer {
            id: id(l.id),
            origin: Origin::Graphroot,
            parent: l.parent.map(id),
            diff_digest: l.diff.map(digest),
            diff_size: l.size.map(u64::from),
            problem: l.problem.then_some(LayerProblem::Incomplete),
        };
        layers.insert(layer.id, layer);
    }
    let mut made: Vec<Digest> = Vec::new();
    let mut images = Vec::new();
    for im in &input.images {
        let config = im.config.clone().unwrap_or_else(|| b"{}".to_vec());
        let config_digest = Digest::of(&config);
        let img_id = im.id.map_or(config_digest.as_id(), id);
        let mut big: BTreeMap<String, Result<Arc<[u8]>, String>> = BTreeMap::new();
        let key = if im.config_under_id { format!("sha256:{img_id}") } else { config_digest.to_string() };
        big.insert(key, Ok(Arc::from(config)));
        for (k, b) in &im.big {
            let ctx = Ctx { made: made.clone(), config: config_digest };
            let bytes: Result<Vec<u8>, String> = match b {
                Big::Raw(b) => Ok(b.clone()),
                Big::Unreadable(why) => Err(why.clone()),
                Big::Image { mt, schema, config, layers, annotations } => {
                    let mut o = serde_json::Map::new();
                    if let Some(s) = schema {
                        o.insert("schemaVersion".into(), json!(s));
                    }
                    if let Some(m) = mt_str(mt) {
                        o.insert("mediaType".into(), json!(m));
                    }
                    if let Some(c) = config {
                        o.insert("config".into(), ctx.descriptor(manifest::OCI_CONFIG, c));
                    }
                    if let Some(ls) = layers {
                        let ls: Vec<Value> = ls.iter().map(|r| ctx.descriptor("application/x", r)).collect();
                        o.insert("layers".into(), Value::Array(ls));
                    }
                    if let Some(a) = annotations {
                        o.insert("annotations".into(), json!(a));
                    }
                    Ok(serde_json::to_vec(&Value::Object(o)).unwrap())
                }
                Big::Index { mt, children } => {
                    let mut o = serde_json::Map::new();
                    o.insert("schemaVersion".into(), json!(2));
                    if let Some(m) = mt_str(mt) {
                        o.insert("mediaType".into(), json!(m));
                    }
                    let kids: Vec<Value> = children
                        .iter()
                        .map(|(r, os)| {
                            let mut d = ctx.descriptor(manifest::OCI_MANIFEST, r);
                            if let Some(os) = os {
                                d["platform"] = json!({"os": os, "architecture": "amd64"});
                            }
                            d
                        })
                        .collect();
                    o.insert("manifests".into(), Value::Array(kids));
                    Ok(serde_json::to_vec(&Value::Object(o)).unwrap())
                }
            };
            if let Ok(b) = &bytes {
                made.push(Digest::of(b));
            }
            let key = match k {
                Key::Manifest => "manifest".to_string(),
                Key::ManifestOf(r) => format!("manifest-{}", ctx.digest(r)),
                Key::OtherSha(n) => digest(*n).to_string(),
                Key::Other(s) => s.clone(),
            };
            big.insert(key, bytes.map(Arc::from));
        }
        let first_digest = im
            .first_digest
            .as_ref()
            .and_then(|r| Ctx { made: made.clone(), config: config_digest }.digest(r).parse().ok());
        images.push(Image {
            id: img_id,
            origin: Origin::Graphroot,
            names: im
                .names
                .iter()
                .map(|n| match n {
                    NameIn::Pool(i) => NAMES[*i as usize % NAMES.len()].to_string(),
                    NameIn::Text(s) => s.clone(),
                })
                .collect(),
            top_layer: im.top.map(id),
            big_data: big,
            created: None,
            first_digest,
        });
    }
    Snapshot {
        location: Location { graphroot: PathBuf::from("/nonexistent"), driver: Driver::Overlay },
        token: ChangeToken::default(),
        images,
        layers,
        warnings: Vec::new(),
    }
}

/// Everything a build produced, in a canonical order.
fn canonical(reg: &Registry) -> String {
    let mut manifests: Vec<_> = reg
        .manifests
        .values()
        .map(|m| (m.digest, m.media_type, m.bytes.clone(), m.verbatim, m.image, m.refs.clone()))
        .collect();
    manifests.sort_by_key(|m| m.0);
    let mut blobs: Vec<_> = reg.blobs.values().map(|b| format!("{b:?}")).collect();
    blobs.sort();
    format!("{:?}\n{manifests:?}\n{blobs:?}\n{:?}\n{:?}", reg.repos, reg.excluded, reg.warnings)
}

fn check_rewrites(input: &Input) {
    let Rewrite { docker, layers, annotations } = &input.rewrite;
    let mt = if *docker { MediaType::DockerManifest } else { MediaType::OciManifest };
    let layers: Vec<(Digest, u64)> =
        layers.iter().map(|&(d, s)| (d.map_or(Digest::of(b""), digest), s as u64)).collect();
    let config = (digest(0), 2);
    let b = manifest::rewrite_image(mt, config, &layers, annotations.as_ref());
    assert_eq!(b, manifest::rewrite_image(mt, config, &layers, annotations.as_ref()));
    let v: Value = serde_json::from_slice(&b).expect("rewritten manifest is JSON");
    assert_eq!(v["schemaVersion"], 2);
    assert_eq!(v["mediaType"], mt.as_str());
    assert_eq!(v["config"]["digest"], config.0.to_string());
    let got: Vec<(String, u64)> = v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["digest"].as_str().unwrap().to_string(), l["size"].as_u64().unwrap()))
        .collect();
    let want: Vec<(String, u64)> = layers.iter().map(|(d, s)| (d.to_string(), *s)).collect();
    assert_eq!(got, want);
    match annotations.as_ref().filter(|a| !a.is_empty() && !docker) {
        Some(a) => assert_eq!(v["annotations"], json!(a)),
        None => assert!(v.get("annotations").is_none()),
    }
    let stored = Stored::parse(&b).expect("rewritten manifest parses as stored");
    assert!(stored.kind().is_ok());

    let kids: Vec<Child> =
        layers.iter().map(|&(d, s)| Child { media_type: mt, digest: d, size: s, platform: None }).collect();
    let ix = manifest::rewrite_index(MediaType::OciIndex, &kids);
    let v: Value = serde_json::from_slice(&ix).expect("rewritten index is JSON");
    assert_eq!(v["manifests"].as_array().unwrap().len(), kids.len());
}

fuzz_target!(|input: Input| {
    check_rewrites(&input);
    let snap = snapshot(&input);
    for img in &snap.images {
        for b in img.big_data.values().flatten() {
            if let Ok(s) = Stored::parse(b) {
                let _ = s.kind();
            }
        }
    }
    let checks: LayerChecks = input
        .checks
        .iter()
        .map(|(n, r)| (id(*n), r.clone().map(u64::from).map_err(|msg| Error::Format { line: 1, msg })))
        .collect();
    let reg = Registry::build(&snap, &checks);
    let again = Registry::build(&snap, &checks);
    assert_eq!(canonical(&reg), canonical(&again), "two builds of one snapshot differ");

    let stored: Vec<&[u8]> = snap.images.iter().flat_map(|i| i.big_data.values().flatten().map(|b| &b[..])).collect();
    for (d, m) in &reg.manifests {
        assert_eq!(*d, m.digest);
        assert_eq!(Digest::of(&m.bytes), m.digest, "manifest bytes do not hash to their digest");
        let v: Value = serde_json::from_slice(&m.bytes).expect("served manifest is JSON");
        if m.verbatim {
            assert!(stored.contains(&&m.bytes[..]), "verbatim manifest is no stored item");
        } else {
            assert_eq!(v["schemaVersion"], 2);
            assert_eq!(v["mediaType"], m.media_type.as_str());
        }
        if m.media_type.is_index() {
            for child in &m.refs {
                let c = reg.manifests.get(child).expect("index child is served");
                assert!(!c.media_type.is_index());
            }
            if !m.verbatim {
                let kids = v["manifests"].as_array().unwrap();
                assert_eq!(kids.len(), m.refs.len());
                for (k, r) in kids.iter().zip(&m.refs) {
                    let c = &reg.manifests[r];
                    assert_eq!(k["digest"], r.to_string());
                    assert_eq!(k["size"], c.bytes.len());
                    assert_eq!(k["mediaType"], c.media_type.as_str());
                }
            }
        } else {
            let (config, layers) = m.refs.split_first().expect("a manifest names its config");
            let blob = |d: &Digest| reg.blobs.get(d).unwrap_or_else(|| panic!("blob {d} named but not served"));
            // Blobs are keyed by digest alone: a layer whose diff digest is some config's
            // digest is served from whichever came first (same digest, same bytes).
            for d in m.refs.iter() {
                match &blob(d).source {
                    BlobSource::Bytes(b) => assert_eq!(Digest::of(b), *d),
                    BlobSource::Layer(l) => assert_eq!(snap.layers[l].diff_digest, Some(*d)),
                    BlobSource::Compressed { .. } => unreachable!("Registry::build names no compressed blob"),
                }
            }
            let _ = (config, layers);
            // What the manifest says of each blob is what is served under that digest.
            let named: Vec<(String, Option<u64>)> = std::iter::once(&v["config"])
                .chain(v["layers"].as_array().unwrap())
                .map(|d| (d["digest"].as_str().unwrap().to_string(), d["size"].as_u64()))
                .collect();
            let refs: Vec<String> = m.refs.iter().map(Digest::to_string).collect();
            assert_eq!(named.iter().map(|n| &n.0).collect::<Vec<_>>(), refs.iter().collect::<Vec<_>>());
            for (d, size) in &named {
                let d: Digest = d.parse().unwrap();
                assert_eq!(Some(reg.blobs[&d].size), *size, "manifest {} names {d} with another size", m.digest);
            }
        }
        let _: Id = m.image;
    }
    for repo in reg.repos.values() {
        for d in repo.tags.values().chain(&repo.manifests) {
            assert!(reg.manifests.contains_key(d), "repository lists a manifest not served");
        }
        for d in &repo.blobs {
            assert!(reg.blobs.contains_key(d), "repository lists a blob not served");
        }
        for m in &repo.manifests {
            for r in &reg.manifests[m].refs {
                assert!(repo.blobs.contains(r) || repo.manifests.contains(r), "{m} names {r} outside its repository");
            }
        }
    }
    for (d, b) in &reg.blobs {
        assert_eq!(*d, b.digest);
        if let BlobSource::Bytes(bytes) = &b.source {
            assert_eq!(bytes.len() as u64, b.size);
        }
    }
    check_tree(snap, reg);
});

/// The tree of the model: total, consistent, and holding every repository whole.
fn check_tree(snapshot: Snapshot, registry: Registry) {
    let view = Arc::new(View { snapshot, registry, built: std::time::SystemTime::UNIX_EPOCH });
    let tree = Tree::build(view.clone());
    let reg = &view.registry;
    let by_path: BTreeMap<&str, &cstor_fs::fs::Node> = tree.nodes.values().map(|n| (n.path.as_str(), n)).collect();
    assert_eq!(by_path.len(), tree.nodes.len(), "two nodes share a path");
    for (ino, n) in &tree.nodes {
        if let Kind::Dir { children, .. } = &n.kind {
            for (name, c) in children {
                let child = tree.nodes.get(c).expect("a child link names a node");
                assert_eq!(child.path, format!("{}/{name}", n.path));
                assert_eq!(child.parent, *ino);
            }
        }
        if *ino != ROOT {
            let Kind::Dir { children, .. } = &tree.nodes[&n.parent].kind else { panic!("parent is no directory") };
            assert!(children.values().any(|c| c == ino), "{} is not listed by its parent", n.path);
        }
    }
    let file = |p: &str| match by_path.get(p).map(|n| &n.kind) {
        Some(Kind::File(c)) => c.clone(),
        other => panic!("{p}: {other:?}"),
    };
    for (name, repo) in &reg.repos {
        let base = format!("/v2/{name}");
        let Content::Bytes(list) = file(&format!("{base}/tags/list")) else { panic!("tags/list is bytes") };
        let v: Value = serde_json::from_slice(&list).expect("tags/list is JSON");
        assert_eq!(v["name"], name.as_str());
        for (tag, d) in &repo.tags {
            match by_path.get(format!("{base}/manifests/{tag}").as_str()).map(|n| &n.kind) {
                Some(Kind::Link(t)) => assert_eq!(*t, d.to_string()),
                other => panic!("{name}:{tag}: {other:?}"),
            }
        }
        for d in &repo.manifests {
            let Content::Bytes(b) = file(&format!("{base}/manifests/{d}")) else { panic!("manifest is bytes") };
            assert_eq!(Digest::of(&b), *d);
        }
        for d in &repo.blobs {
            assert_eq!(file(&format!("{base}/blobs/{d}")).size(), reg.blobs[d].size);
        }
    }
}
