//! Issue: core library. Layers rebuilt through `tarsplit` equal what skopeo exports,
//! hash to their diff digests, and random reads equal slices of the whole.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use cstor_fs::live::{Live, View};
use cstor_fs::registry::BlobSource;
use cstor_fs::store::{config, Store};
use cstor_fs::tarsplit::BlobReader;
use cstor_fs::{Digest, Id};

use crate::common::*;

pub(crate) fn live(storage: &Path, driver: &str) -> Arc<Live> {
    let req = config::Request { graphroot: Some(storage.to_path_buf()), driver: Some(driver.parse().unwrap()) };
    let loc = config::resolve(&req, &config::Env::default()).unwrap();
    Arc::new(Live::new(Store::open(loc).unwrap(), 64 << 20).unwrap())
}

fn read_layer(live: &Live, view: &View, id: &Id) -> Vec<u8> {
    let r = BlobReader::new(live.open_layer(view, id).unwrap());
    let mut out = vec![0u8; r.blob().size() as usize];
    let mut off = 0;
    while off < out.len() {
        let end = (off + (1 << 20)).min(out.len());
        let n = r.read_at(off as u64, &mut out[off..end]).unwrap();
        assert!(n > 0, "short read at {off}");
        off += n;
    }
    out
}

/// Every layer of every served image: size and sha256 match; returns them by digest.
pub(crate) fn all_layers(live: &Live) -> BTreeMap<Digest, Vec<u8>> {
    let view = live.view();
    assert!(view.registry.excluded.is_empty(), "left out: {:?}", view.registry.excluded);
    let mut out = BTreeMap::new();
    for (d, b) in &view.registry.blobs {
        if let BlobSource::Layer(id) = &b.source {
            let bytes = read_layer(live, &view, id);
            assert_eq!(bytes.len() as u64, b.size, "layer {id} size");
            assert_eq!(format!("sha256:{}", sha256_hex(&bytes)), d.to_string(), "layer {id} digest");
            out.insert(*d, bytes);
        }
    }
    out
}

pub(crate) fn check_against_skopeo(fx: &Fixture, layers: &BTreeMap<Digest, Vec<u8>>) {
    check_against_skopeo_min(fx, layers, 10);
}

/// Exports every image of `fx` with skopeo and compares each layer with ours; at least
/// `min` layers must be compared.
pub(crate) fn check_against_skopeo_min(fx: &Fixture, layers: &BTreeMap<Digest, Vec<u8>>, min: usize) {
    let tmp = TempDir::new("skopeo");
    let mut compared = 0;
    for (name, kind) in &fx.images {
        if kind.contains("manifest-list") || name.starts_with("127.0.0.1") {
            continue;
        }
        let out = tmp.path().join(name.replace(['/', ':'], "_"));
        let src =
            format!("containers-storage:[{}@{}+{}/run]{name}", fx.driver, fx.storage.display(), fx.root.display());
        run(&mut fx.tool("skopeo", &["copy", "--quiet", &src, &format!("dir:{}", out.display())]));
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
        for l in manifest["layers"].as_array().unwrap() {
            let d: Digest = l["digest"].as_str().unwrap().parse().unwrap();
            let theirs = std::fs::read(out.join(d.hex())).unwrap();
            let ours =
                layers.get(&d).unwrap_or_else(|| panic!("{name}: skopeo exported layer {d} that we do not serve"));
            assert!(ours == &theirs, "{name}: layer {d} differs from skopeo's export");
            compared += 1;
        }
    }
    assert!(compared >= min, "only {compared} layers compared");
}

#[test]
fn overlay_layers_rebuild_exactly_and_equal_skopeo_export() {
    let fx = Fixture::shared("overlay");
    let layers = all_layers(&live(&fx.storage, "overlay"));
    check_against_skopeo(fx, &layers);
}

#[test]
fn vfs_layers_rebuild_exactly_and_equal_skopeo_export() {
    let fx = Fixture::shared("vfs");
    let layers = all_layers(&live(&fx.storage, "vfs"));
    check_against_skopeo(fx, &layers);
}

/// The base layer holds every awkward kind of entry the fixture puts in it.
#[test]
fn base_layer_content_is_complete() {
    base_layer_check(Fixture::shared("overlay"));
}

pub(crate) fn base_layer_check(fx: &Fixture) {
    let h = live(&fx.storage, fx.driver);
    let view = h.view();
    let repo = &view.registry.repos["localhost/base"];
    let m = &view.registry.manifests[&repo.tags["1"]];
    let layer = m.refs[1];
    let BlobSource::Layer(id) = view.registry.blobs[&layer].source else { panic!("not a layer") };
    let bytes = read_layer(&h, &view, &id);
    let mut seen = BTreeMap::new();
    let mut ar = tar::Archive::new(&bytes[..]);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path_bytes().into_owned();
        let hdr = e.header().clone();
        let xattrs = e.pax_extensions().unwrap().map(|x| x.count()).unwrap_or(0);
        seen.insert(
            String::from_utf8_lossy(&path).to_string(),
            (hdr.entry_type(), hdr.mode().unwrap(), e.size(), xattrs),
        );
        let _ = std::io::copy(&mut e, &mut std::io::sink());
    }
    type Entry<'a> = (&'a String, &'a (tar::EntryType, u32, u64, usize));
    let has = |pred: &dyn Fn(&Entry) -> bool, what: &str| {
        assert!(seen.iter().any(|kv| pred(&kv)), "no {what} in the base layer");
    };
    has(&|(_, v)| v.0 == tar::EntryType::Link, "hardlink");
    has(&|(_, v)| v.0 == tar::EntryType::Symlink, "symlink");
    has(&|(k, _)| k.rsplit('/').next().unwrap().len() > 100, "name over 100 bytes");
    has(&|(k, _)| k.len() > 255, "path over 255 bytes");
    has(&|(k, _)| k.contains('\u{fffd}'), "non-UTF-8 name");
    has(&|(_, v)| v.0 == tar::EntryType::Regular && v.2 == 0, "empty file");
    has(&|(_, v)| v.0 == tar::EntryType::Regular && v.1 & 0o7777 == 0, "mode 0000 file");
    has(&|(_, v)| v.1 & 0o4000 != 0, "setuid file");
    has(&|(_, v)| v.3 > 0, "file with xattrs (PAX records)");
    has(&|(_, v)| v.2 >= 100_000_000, "100 MB file");
    has(&|(k, _)| k.matches('/').count() >= 40, "directory 40 deep");
}

#[test]
fn random_reads_equal_slices_of_the_whole() {
    random_reads_check(Fixture::shared("overlay"));
}

pub(crate) fn random_reads_check(fx: &Fixture) {
    let h = live(&fx.storage, fx.driver);
    let view = h.view();
    let mut s = 0x2545f4914f6cdd1du64;
    let mut rnd = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let mut checked = 0;
    for b in view.registry.blobs.values() {
        let BlobSource::Layer(id) = &b.source else { continue };
        let whole = read_layer(&h, &view, id);
        // Offsets around every header and payload boundary, plus random ones.
        let mut offsets = Vec::new();
        let mut ar = tar::Archive::new(&whole[..]);
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            for base in [e.raw_header_position(), e.raw_file_position(), e.raw_file_position() + e.size()] {
                offsets.extend([base.saturating_sub(1), base, base + 1, base.saturating_sub(512)]);
            }
        }
        offsets.extend((0..200).map(|_| rnd() % whole.len() as u64));
        // A fresh reader per layer: no state from the sequential pass.
        let r = BlobReader::new(h.open_layer(&view, id).unwrap());
        for off in offsets {
            let off = off.min(whole.len() as u64);
            let len = (rnd() % 300_000) as usize + 1;
            let mut buf = vec![0u8; len];
            let n = r.read_at(off, &mut buf).unwrap();
            let end = (off as usize + len).min(whole.len());
            assert_eq!(n, end - off as usize, "layer {id} read at {off}+{len}");
            assert!(buf[..n] == whole[off as usize..end], "layer {id} bytes at {off}+{len}");
            checked += 1;
        }
    }
    assert!(checked > 1000);
}

#[test]
fn verbatim_manifests_keep_podman_digest_and_rewrites_are_stable() {
    verbatim_and_rewritten_check(Fixture::shared("overlay"));
}

pub(crate) fn verbatim_and_rewritten_check(fx: &Fixture) {
    let a = live(&fx.storage, "overlay");
    let b = live(&fx.storage, "overlay");
    let (va, vb) = (a.view(), b.view());
    let (ra, rb) = (&va.registry, &vb.registry);
    let mut verbatim = 0;
    let mut rewritten = 0;
    for (name, kind) in &fx.images {
        let Ok((repo, cstor_fs::registry::Ref::Tag(tag))) = cstor_fs::registry::parse_name(name) else { continue };
        let served = ra.repos[&repo].tags[&tag];
        assert_eq!(served, rb.repos[&repo].tags[&tag], "{name}: digest differs between two snapshots");
        let m = &ra.manifests[&served];
        let podman = stdout(&mut fx.tool("podman", &["image", "inspect", "--format", "{{.Digest}}", name]));
        if kind.starts_with("built")
            || kind.starts_with("imported")
            || kind.starts_with("buildah")
            || kind.starts_with("docker-schema2")
        {
            assert!(m.verbatim, "{name} ({kind}) should be served verbatim");
            // podman 5 reports the digest of the newest manifest written for the image; the
            // arm64 part got a pushed (compressed) one when its list was pulled back, so
            // there the served (built) digest must be one of the image's repo digests.
            let newer_manifest = fx.tools == Tools::Podman5 && name == "localhost/multi/part:arm64";
            if newer_manifest {
                let repo_digests =
                    stdout(&mut fx.tool("podman", &["image", "inspect", "--format", "{{.RepoDigests}}", name]));
                assert!(repo_digests.contains(&format!("@{served}")), "{name}: {served} not in {repo_digests}");
                assert_ne!(served.to_string(), podman.trim(), "{name}: podman 5 should report the newer manifest");
            } else {
                assert_eq!(served.to_string(), podman.trim(), "{name}: served digest vs podman's");
            }
            verbatim += 1;
        }
        // (Images pulled back into a store that already had them keep their built manifest.)
        if kind.starts_with("pulled") && !kind.contains("same-image-as") && !kind.contains("own-list") {
            assert!(!m.verbatim, "{name} ({kind}) names compressed layers: must be rewritten");
            rewritten += 1;
        }
    }
    assert!(verbatim >= 4 && rewritten >= 3, "verbatim {verbatim}, rewritten {rewritten}");
    let docker = &ra.manifests[&ra.repos["localhost/dockerfmt"].tags["1"]];
    assert_eq!(docker.media_type.as_str(), "application/vnd.docker.distribution.manifest.v2+json");
    let list = &ra.manifests[&ra.repos["localhost/multi"].tags["1"]];
    assert!(list.media_type.is_index());
    assert_eq!(list.refs.len(), 2, "both platforms of the local list are present");
}

#[test]
fn store_changes_show_in_the_next_snapshot() {
    let s = MiniStore::new("overlay");
    s.import("localhost/one:1", &[("a.txt", b"one")]);
    let h = live(&s.storage, "overlay");
    assert!(h.refresh().unwrap().is_none(), "nothing changed yet");
    let v1 = h.view();
    assert_eq!(v1.registry.catalog(), vec!["localhost/one"]);
    s.import("localhost/two:1", &[("b.txt", b"two")]);
    run(&mut s.tool("podman", &["tag", "localhost/one:1", "localhost/one:again"]));
    run(&mut s.tool("podman", &["rmi", "localhost/one:1"]));
    let v2 = h.refresh().unwrap().expect("a new view");
    assert_eq!(v2.registry.catalog(), vec!["localhost/one", "localhost/two"]);
    assert_eq!(v2.registry.repos["localhost/one"].tags.keys().collect::<Vec<_>>(), vec!["again"]);
    // The old view is intact for whoever still holds it.
    assert_eq!(v1.registry.repos["localhost/one"].tags.keys().collect::<Vec<_>>(), vec!["1"]);
    for b in v2.registry.blobs.values() {
        if let BlobSource::Layer(id) = &b.source {
            assert_eq!(sha256_hex(&read_layer(&h, &v2, id)), b.digest.hex());
        }
    }
}

#[test]
fn read_only_bind_mount_of_the_store_is_served() {
    let fx = Fixture::shared("overlay");
    let tmp = TempDir::new("robind");
    let ro = tmp.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    run(Command::new("mount").arg("--bind").arg(&fx.storage).arg(&ro));
    run(Command::new("mount").args(["-o", "remount,bind,ro"]).arg(&ro));
    let h = live(&ro, "overlay");
    let view = h.view();
    assert!(view.snapshot.warnings.is_empty(), "{:?}", view.snapshot.warnings);
    let d = view.registry.repos["localhost/app/web"].tags["v1"];
    for blob in &view.registry.manifests[&d].refs {
        if let BlobSource::Layer(id) = &view.registry.blobs[blob].source {
            assert_eq!(sha256_hex(&read_layer(&h, &view, id)), blob.hex());
        }
    }
    run(Command::new("umount").arg(&ro));
}

#[test]
fn cli_list_and_verify() {
    let fx = Fixture::shared("overlay");
    let out = stdout(Command::new(BIN).arg("list").arg("--storage").arg(&fx.storage));
    assert!(out.contains("localhost/app/web"), "{out}");
    assert!(out.contains("tag v1 -> sha256:"), "{out}");
    assert!(out.contains("verbatim") && out.contains("rewritten"), "{out}");
    let out = stdout(Command::new(BIN).arg("verify").arg("--storage").arg(&fx.storage));
    assert!(out.contains(" 0 failed"), "{out}");
    let out = stdout(Command::new(BIN).args(["verify", "--storage"]).arg(&fx.storage).arg("localhost/app/web:v1"));
    assert!(out.lines().filter(|l| l.starts_with("ok ")).count() >= 5, "{out}");
}

#[test]
fn cli_verify_fails_on_a_damaged_layer() {
    let s = MiniStore::new("overlay");
    s.import("localhost/dmg:1", &[("f.txt", b"original content")]);
    let h = live(&s.storage, "overlay");
    let view = h.view();
    let BlobSource::Layer(id) =
        view.registry.blobs.values().find(|b| matches!(b.source, BlobSource::Layer(_))).unwrap().source
    else {
        unreachable!()
    };
    std::fs::write(s.storage.join(format!("overlay/{id}/diff/f.txt")), b"ORIGINAL content").unwrap();
    let out = Command::new(BIN).arg("verify").arg("--storage").arg(&s.storage).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("FAIL") && text.contains("f.txt") && text.contains("CRC"), "{text}");
}
