use std::path::PathBuf;

use super::*;
use crate::store::{ChangeToken, Driver, Layer, Location, Origin};

fn id(n: u8) -> Id {
    format!("{n:02x}").repeat(32).parse().unwrap()
}

fn layer(n: u8, parent: Option<u8>) -> Layer {
    Layer {
        id: id(n),
        origin: Origin::Graphroot,
        parent: parent.map(id),
        diff_digest: Some(Digest::of(&[n])),
        diff_size: Some(1024 * n as u64),
        problem: None,
    }
}

fn image(n: u8, names: &[&str], top: Option<u8>, big: Vec<(String, Vec<u8>)>) -> Image {
    Image {
        id: id(n),
        origin: Origin::Graphroot,
        names: names.iter().map(|s| s.to_string()).collect(),
        top_layer: top.map(id),
        big_data: big.into_iter().map(|(k, v)| (k, Ok(Arc::from(v)))).collect(),
        created: None,
        first_digest: None,
    }
}

fn snap(images: Vec<Image>, layers: Vec<Layer>) -> Snapshot {
    Snapshot {
        location: Location { graphroot: PathBuf::from("/nonexistent"), driver: Driver::Overlay },
        token: ChangeToken::default(),
        images,
        layers: layers.into_iter().map(|l| (l.id, l)).collect(),
        warnings: vec![],
    }
}

fn oci_manifest(config: &[u8], layer_digests: &[(Digest, u64)], mt: &str, layer_mt: &str) -> Vec<u8> {
    let layers: Vec<String> = layer_digests
        .iter()
        .map(|(d, size)| format!(r#"{{"mediaType":"{layer_mt}","digest":"{d}","size":{size}}}"#))
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{mt}","config":{{"mediaType":"x","digest":"{}","size":{}}},"layers":[{}]}}"#,
        Digest::of(config),
        config.len(),
        layers.join(",")
    )
    .into_bytes()
}

/// An image built locally: stored manifest names the diff digests.
fn built(n: u8, name: &str, layers: &[u8]) -> (Image, Vec<u8>) {
    let config = format!(r#"{{"n":{n}}}"#).into_bytes();
    let diffs: Vec<(Digest, u64)> = layers.iter().map(|&l| (Digest::of(&[l]), 1024 * l as u64)).collect();
    let m = oci_manifest(&config, &diffs, manifest::OCI_MANIFEST, manifest::OCI_LAYER_TAR);
    let cfg_key = format!("{}", Digest::of(&config));
    let img = Image {
        id: Digest::of(&config).as_id(),
        ..image(n, &[name], layers.last().copied(), vec![("manifest".into(), m.clone()), (cfg_key, config)])
    };
    (img, m)
}

#[test]
fn verbatim_when_layers_are_diff_digests() {
    let (img, m) = built(1, "localhost/app/web:v1", &[1, 2]);
    let reg = Registry::build(&snap(vec![img], vec![layer(1, None), layer(2, Some(1))]), &LayerChecks::new());
    assert!(reg.excluded.is_empty(), "{:?}", reg.excluded);
    let repo = &reg.repos["localhost/app/web"];
    let d = repo.tags["v1"];
    assert_eq!(d, Digest::of(&m));
    let man = &reg.manifests[&d];
    assert!(man.verbatim);
    assert_eq!(&*man.bytes, &m[..]);
    assert_eq!(repo.blobs.len(), 3);
    assert_eq!(reg.blobs[&Digest::of(&[2])].size, 2048);
}

#[test]
fn rewritten_when_layers_were_compressed_and_deterministic() {
    let config = b"{\"cfg\":1}".to_vec();
    let stored = oci_manifest(
        &config,
        &[(Digest::of(b"gz1"), 300)],
        manifest::DOCKER_MANIFEST,
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
    );
    let mk = || {
        let img = Image {
            id: Digest::of(&config).as_id(),
            ..image(
                1,
                &["docker.io/library/alpine:3"],
                Some(1),
                vec![("manifest".into(), stored.clone()), (Digest::of(&config).to_string(), config.clone())],
            )
        };
        Registry::build(&snap(vec![img], vec![layer(1, None)]), &LayerChecks::new())
    };
    let (a, b) = (mk(), mk());
    let da = a.repos["docker.io/library/alpine"].tags["3"];
    assert_eq!(da, b.repos["docker.io/library/alpine"].tags["3"]);
    let m = &a.manifests[&da];
    assert!(!m.verbatim);
    assert_eq!(m.media_type, MediaType::DockerManifest);
    let v: serde_json::Value = serde_json::from_slice(&m.bytes).unwrap();
    assert_eq!(v["layers"][0]["mediaType"], manifest::DOCKER_LAYER_TAR);
    assert_eq!(v["layers"][0]["digest"], Digest::of(&[1]).to_string());
    assert_eq!(v["layers"][0]["size"], 1024);
    assert_eq!(v["config"]["digest"], Digest::of(&config).to_string());
}

#[test]
fn bad_layers_exclude_the_image_with_a_reason() {
    let (img, _) = built(1, "localhost/a:1", &[1, 2]);
    let (img2, _) = built(2, "localhost/b:1", &[3]);
    let mut l2 = layer(2, Some(1));
    l2.problem = Some(LayerProblem::NoTarSplit("gone".into()));
    let s = snap(vec![img.clone(), img2.clone()], vec![layer(1, None), l2, layer(3, None)]);
    let reg = Registry::build(&s, &LayerChecks::new());
    assert_eq!(reg.excluded.len(), 1);
    assert_eq!(
        reg.excluded[0].reason,
        Reason::LayerProblem { layer: id(2), problem: LayerProblem::NoTarSplit("gone".into()) },
        "{:?}",
        reg.excluded
    );
    assert_eq!(reg.excluded[0].reason.to_string(), format!("layer {}: no tar-split metadata (gone)", id(2)));
    assert!(reg.excluded[0].image.contains("localhost/a:1"));
    assert!(reg.repos.contains_key("localhost/b"));
    // A failed full check excludes too.
    let mut checks = LayerChecks::new();
    let mismatch = tarsplit::Error::SizeMismatch { expected: 2, actual: 1 };
    checks.insert(id(3), Err(mismatch.clone()));
    let reg = Registry::build(&snap(vec![img, img2], vec![layer(1, None), layer(2, Some(1)), layer(3, None)]), &checks);
    assert_eq!(reg.excluded.len(), 1, "{:?}", reg.excluded);
    assert_eq!(reg.excluded[0].reason, Reason::LayerCheck { layer: id(3), error: mismatch });
    assert!(reg.excluded[0].reason.to_string().contains("diff-size"));
    assert!(reg.repos.contains_key("localhost/a"));
    // Missing parent.
    let (img, _) = built(1, "localhost/a:1", &[1, 2]);
    let reg = Registry::build(&snap(vec![img], vec![layer(2, Some(1))]), &LayerChecks::new());
    assert_eq!(reg.excluded[0].reason, Reason::LayerMissing(id(1)));
    assert!(reg.excluded[0].reason.to_string().contains("missing"));
}

#[test]
fn unnamed_images_are_tagged_by_id() {
    let (mut img, m) = built(1, "x", &[1]);
    img.names.clear();
    let iid = img.id;
    let reg = Registry::build(&snap(vec![img], vec![layer(1, None)]), &LayerChecks::new());
    assert_eq!(reg.repos[UNTAGGED_REPO].tags[&iid.hex()], Digest::of(&m));
}

#[test]
fn lists_verbatim_only_when_complete() {
    let (a, ma) = built(1, "localhost/multi-amd64:1", &[1]);
    let (b, mb) = built(2, "localhost/multi-arm64:1", &[2]);
    let list = |digests: &[(Digest, usize, &str)]| {
        let entries: Vec<String> = digests
            .iter()
            .map(|(d, s, arch)| format!(r#"{{"mediaType":"{}","digest":"{d}","size":{s},"platform":{{"architecture":"{arch}","os":"linux"}}}}"#, manifest::OCI_MANIFEST))
            .collect();
        format!(r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{}]}}"#, manifest::OCI_INDEX, entries.join(","))
            .into_bytes()
    };
    let full = list(&[(Digest::of(&ma), ma.len(), "amd64"), (Digest::of(&mb), mb.len(), "arm64")]);
    let list_img = image(9, &["localhost/multi:1"], None, vec![("manifest".into(), full.clone())]);
    let layers = vec![layer(1, None), layer(2, None)];
    let reg = Registry::build(&snap(vec![a.clone(), b, list_img.clone()], layers.clone()), &LayerChecks::new());
    let d = reg.repos["localhost/multi"].tags["1"];
    assert_eq!(d, Digest::of(&full));
    assert!(reg.manifests[&d].verbatim);
    assert_eq!(reg.repos["localhost/multi"].manifests.len(), 3);
    assert_eq!(reg.repos["localhost/multi"].blobs.len(), 4);
    // One child missing: rebuilt index of the one present, platform kept.
    let reg = Registry::build(&snap(vec![a, list_img], layers), &LayerChecks::new());
    let d = reg.repos["localhost/multi"].tags["1"];
    let m = &reg.manifests[&d];
    assert!(!m.verbatim);
    assert_eq!(m.media_type, MediaType::OciIndex);
    let v: serde_json::Value = serde_json::from_slice(&m.bytes).unwrap();
    assert_eq!(v["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(v["manifests"][0]["platform"]["architecture"], "amd64");
    assert_eq!(v["manifests"][0]["digest"], Digest::of(&ma).to_string());
}

#[test]
fn reserved_repo_names_conflict() {
    let (a, _) = built(1, "localhost/a:1", &[1]);
    let (b, _) = built(2, "localhost/a/tags:1", &[2]);
    let reg = Registry::build(&snap(vec![a, b], vec![layer(1, None), layer(2, None)]), &LayerChecks::new());
    assert!(reg.repos.contains_key("localhost/a"));
    assert!(!reg.repos.contains_key("localhost/a/tags"));
    assert_eq!(reg.excluded.len(), 1);
}

#[test]
fn repos_running_into_another_repos_entries_are_left_out() {
    // Regression: these reached `unreachable!` in the tree builder.
    let names = [
        "localhost/app:1",
        "localhost/app/tags/list:1",
        "localhost/app/manifests/x:1",
        "localhost/app/blobs:1",
        "localhost/app/blobs/sha256/x:1",
        "localhost/app/referrers/a:1",
        "localhost/app/tagsx/y:1",
        "localhost/app/web/tags:1",
    ];
    let images: Vec<Image> = names.iter().enumerate().map(|(i, n)| built(i as u8 + 1, n, &[1]).0).collect();
    let reg = Registry::build(&snap(images, vec![layer(1, None)]), &LayerChecks::new());
    let served: Vec<&str> = reg.catalog();
    assert_eq!(served, ["localhost/app", "localhost/app/tagsx/y", "localhost/app/web/tags"]);
    for x in &reg.excluded {
        let Reason::RepoCollides { repo, parent, .. } = &x.reason else { panic!("{x:?}") };
        assert_eq!((repo, parent.as_str()), (&x.image, "localhost/app"));
    }
    let reasons: Vec<(String, String)> = reg.excluded.iter().map(|x| (x.image.clone(), x.reason.to_string())).collect();
    let mut left: Vec<(&str, &str)> = reasons.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    left.sort();
    let want = |n: &str, e: &str| {
        (n.to_string(), format!("repository {n} collides with the {e}/ directory of repository localhost/app"))
    };
    let want = [
        want("localhost/app/blobs", "blobs"),
        want("localhost/app/blobs/sha256/x", "blobs"),
        want("localhost/app/manifests/x", "manifests"),
        want("localhost/app/referrers/a", "referrers"),
        want("localhost/app/tags/list", "tags"),
    ];
    let want: Vec<(&str, &str)> = want.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    assert_eq!(left, want);
    assert_eq!(collision("a/b/c", |p| p == "a"), None);
    assert_eq!(collision("a/tags", |p| p == "a"), Some(("a", "tags")));
    assert_eq!(collision("a/b/tags/c", |p| p == "a/b"), Some(("a/b", "tags")));
}

#[test]
fn pulled_list_serves_only_for_images_pulled_through_it() {
    let (mut img, m) = built(1, "docker.io/library/alpine:3", &[1]);
    let list = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{{"mediaType":"{}","digest":"{}","size":{},"platform":{{"architecture":"amd64","os":"linux"}}}},{{"mediaType":"{}","digest":"sha256:{}","size":1,"platform":{{"architecture":"arm64","os":"linux"}}}}]}}"#,
        manifest::OCI_INDEX, manifest::OCI_MANIFEST, Digest::of(&m), m.len(), manifest::OCI_MANIFEST, "ee".repeat(32)
    )
    .into_bytes();
    let ld = Digest::of(&list);
    img.big_data.insert(format!("manifest-{ld}"), Ok(Arc::from(list)));
    // Gained the list later: its own manifest is served.
    let reg = Registry::build(&snap(vec![img.clone()], vec![layer(1, None)]), &LayerChecks::new());
    assert_eq!(reg.repos["docker.io/library/alpine"].tags["3"], Digest::of(&m));
    // Pulled through it: an index of the one platform present.
    img.first_digest = Some(ld);
    let reg = Registry::build(&snap(vec![img], vec![layer(1, None)]), &LayerChecks::new());
    let top = &reg.manifests[&reg.repos["docker.io/library/alpine"].tags["3"]];
    assert_eq!(top.media_type, MediaType::OciIndex);
    assert!(!top.verbatim);
    assert_eq!(top.refs, vec![Digest::of(&m)]);
}

#[test]
fn verbatim_only_when_sizes_match_too() {
    // Found by fuzzing: a stored manifest naming the right digests with a wrong size
    // was served verbatim, promising a blob size that is not what is served.
    let (mut img, m) = built(1, "localhost/a:1", &[1, 2]);
    let config = img.big_data.iter().find(|(k, _)| k.starts_with("sha256:")).unwrap().1.clone().unwrap();
    let wrong = oci_manifest(
        &config,
        &[(Digest::of(&[1]), 1024), (Digest::of(&[2]), 2047)],
        manifest::OCI_MANIFEST,
        manifest::OCI_LAYER_TAR,
    );
    img.big_data.insert("manifest".into(), Ok(Arc::from(wrong.clone())));
    let reg = Registry::build(&snap(vec![img.clone()], vec![layer(1, None), layer(2, Some(1))]), &LayerChecks::new());
    let man = &reg.manifests[&reg.repos["localhost/a"].tags["1"]];
    assert!(!man.verbatim);
    let v: serde_json::Value = serde_json::from_slice(&man.bytes).unwrap();
    assert_eq!((&v["layers"][0]["size"], &v["layers"][1]["size"]), (&1024.into(), &2048.into()));
    // An earlier stored manifest with the right sizes is still served verbatim.
    img.big_data.insert(format!("manifest-{}", Digest::of(&m)), Ok(Arc::from(m.clone())));
    let reg = Registry::build(&snap(vec![img], vec![layer(1, None), layer(2, Some(1))]), &LayerChecks::new());
    let man = &reg.manifests[&reg.repos["localhost/a"].tags["1"]];
    assert!(man.verbatim);
    assert_eq!(&*man.bytes, &m[..]);
}

#[test]
fn one_digest_one_blob_size() {
    // Found by fuzzing: a layer whose recorded diff digest is the image's config digest
    // (or another layer's, with another size) made the manifest name one digest with
    // two sizes while only one blob is served under it.
    let (img, _) = built(1, "localhost/a:1", &[1]);
    let config = img.big_data.iter().find(|(k, _)| k.starts_with("sha256:")).unwrap().1.clone().unwrap();
    let mut l = layer(1, None);
    l.diff_digest = Some(Digest::of(&config));
    let reg = Registry::build(&snap(vec![img], vec![l]), &LayerChecks::new());
    assert_eq!(reg.excluded.len(), 1, "{:?}", reg.excluded);
    assert!(matches!(reg.excluded[0].reason, Reason::BlobSizes { .. }), "{:?}", reg.excluded);
    assert!(reg.excluded[0].reason.to_string().contains("would be served as"), "{:?}", reg.excluded);
    assert!(reg.manifests.is_empty());

    // Two images whose layers claim one diff digest with different sizes: the first
    // keeps the blob, the second is left out.
    let (a, _) = built(1, "localhost/a:1", &[1]);
    let (b, _) = built(2, "localhost/b:1", &[2]);
    let mut l2 = layer(2, None);
    l2.diff_digest = Some(Digest::of(&[1]));
    let reg = Registry::build(&snap(vec![a, b], vec![layer(1, None), l2]), &LayerChecks::new());
    assert!(reg.repos.contains_key("localhost/a"));
    assert!(!reg.repos.contains_key("localhost/b"));
    assert_eq!(reg.excluded.len(), 1, "{:?}", reg.excluded);
    let want = Reason::BlobSizes { digest: Digest::of(&[1]), first: 1024, second: 2048 };
    assert_eq!(reg.excluded[0].reason, want);
    assert!(reg.excluded[0].reason.to_string().contains("1024 and as 2048 bytes"), "{:?}", reg.excluded);
    for m in reg.manifests.values() {
        let v: serde_json::Value = serde_json::from_slice(&m.bytes).unwrap();
        for l in v["layers"].as_array().unwrap() {
            let d: Digest = l["digest"].as_str().unwrap().parse().unwrap();
            assert_eq!(l["size"], reg.blobs[&d].size);
        }
    }
}
