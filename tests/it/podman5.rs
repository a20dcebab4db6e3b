//! Issue: every store podman users have. The fidelity checks of the podman 4.3 store, run
//! on a store written by a current podman (5.x from Debian trixie, in a chroot), which
//! adds zstd:chunked images pulled with partial pulls (also with `use_hard_links` and
//! `convert_images`), `toc-digest`/`big-data-names` in layers.json and chunked layer big
//! data. Tools that read or write this store are podman 5's own.

use std::os::unix::fs::MetadataExt;
use std::process::Command;

use crate::common::*;
use crate::serve::{podman_pull_same_id, skopeo_copies};
use crate::store::{
    all_layers, check_against_skopeo, check_against_skopeo_min, live, random_reads_check, verbatim_and_rewritten_check,
};

fn fx() -> &'static Fixture {
    Fixture::podman5()
}

/// The fixture is what it claims to be: podman 5 wrote it, and it holds partially pulled
/// layers (a TOC digest, chunked big data) and files hard-linked across layers.
#[test]
fn podman5_store_has_what_podman5_writes() {
    let fx = fx();
    let version = stdout(&mut fx.tool("podman", &["--version"]));
    assert!(version.starts_with("podman version 5."), "{version}");
    let layers: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fx.storage.join("overlay-layers/layers.json")).expect("layers.json"))
            .unwrap();
    let chunked: Vec<_> = layers
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l.get("toc-digest").is_some())
        .filter(|l| l["big-data-names"].as_array().is_some_and(|n| n.iter().any(|k| k == "zstd-chunked-manifest")))
        .collect();
    assert!(chunked.len() >= 3, "partially pulled layers: {}", chunked.len());
    // use_hard_links: the two identical files of the hardlinks image share an inode with
    // the same file in another layer.
    let mut linked = 0;
    for l in &chunked {
        let diff = fx.storage.join("overlay").join(l["id"].as_str().unwrap()).join("diff/p5");
        if let Ok(m) = std::fs::metadata(diff.join("same-2.txt")) {
            if m.nlink() > 2 {
                linked += 1;
            }
        }
    }
    assert!(linked >= 1, "no file hard-linked across layers");
    for (name, _) in &fx.images {
        if name.starts_with("localhost/p5/") {
            run(&mut fx.tool("podman", &["image", "exists", name]));
        }
    }
}

#[test]
fn podman5_layers_rebuild_exactly_and_equal_skopeo_export() {
    let fx = fx();
    let layers = all_layers(&live(&fx.storage, fx.driver));
    check_against_skopeo(fx, &layers);
    let partial = fx.images.iter().filter(|(_, k)| k.contains("partial")).count();
    assert!(partial >= 2, "partial-pull images in the fixture: {partial}");
}

#[test]
fn podman5_random_reads_equal_slices_of_the_whole() {
    random_reads_check(fx());
}

#[test]
fn podman5_verbatim_manifests_keep_podman_digest_and_rewrites_are_stable() {
    verbatim_and_rewritten_check(fx());
}

/// Served by nginx: skopeo 1.18 copies by tag and digest, podman 5 pulls every image
/// (partially pulled ones included) back with the same image ID.
#[test]
fn podman5_pulls_the_same_image_ids_back() {
    let fx = fx();
    let s = Serve::start(&fx.storage, "nginx");
    skopeo_copies(&s, fx);
    podman_pull_same_id(&s, fx);
    let dst = MiniStore::with_tools("overlay", fx.tools);
    for name in ["localhost/p5/chunked:1", "localhost/p5/hardlinks:1", "localhost/p5/converted:1"] {
        let remote = format!("{}/{name}", s.addr);
        run(&mut dst.tool("podman", &["pull", "-q", "--tls-verify=false", &remote]));
        let id = |mut c: std::process::Command| stdout(&mut c).trim().to_string();
        let inspect = |n| ["image", "inspect", "--format", "{{.Id}}", n];
        assert_eq!(id(dst.tool("podman", &inspect(&remote))), id(fx.tool("podman", &inspect(name))), "{name}");
    }
}

/// A store with `use_composefs`: every layer is content-addressed (a composefs blob, files
/// named by digest under `diff/`), and each is served byte-exact through its table of
/// contents, equal to what podman 5's skopeo exports.
#[test]
fn composefs_layers_rebuild_exactly_and_equal_skopeo_export() {
    let fx = Fixture::composefs();
    let layers_dir = fx.storage.join("overlay");
    let composefs = std::fs::read_dir(&layers_dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().join("composefs-data/composefs.blob").is_file())
        .count();
    assert!(composefs >= 3, "composefs layers: {composefs}");
    let layers = all_layers(&live(&fx.storage, fx.driver));
    assert!(layers.len() >= 3, "served layers: {}", layers.len());
    check_against_skopeo_min(fx, &layers, 2);
    random_reads_check(fx);
}

/// The objects of a composefs layer get the checks every payload gets: a changed object
/// fails its CRC-64, a missing one is an error naming the file, never other bytes.
#[test]
fn composefs_objects_are_checked_like_any_payload() {
    let fx = Fixture::composefs();
    let tmp = TempDir::new("cfs");
    let copy = tmp.path().join("storage");
    run(Command::new("cp").arg("-a").arg(&fx.storage).arg(&copy));
    // The layer with the random file: find its object through the layer's own TOC.
    let mut damaged = None;
    for e in std::fs::read_dir(copy.join("overlay")).unwrap() {
        let dir = e.unwrap().path();
        let Ok(objs) = std::fs::read_dir(dir.join("diff")) else { continue };
        if !dir.join("composefs-data").exists() {
            continue;
        }
        for sub in objs {
            for obj in std::fs::read_dir(sub.unwrap().path()).unwrap() {
                let obj = obj.unwrap().path();
                if std::fs::metadata(&obj).unwrap().len() == 300000 {
                    damaged = Some(obj);
                }
            }
        }
    }
    let obj = damaged.expect("no 300000-byte object (p5/random.bin) in the composefs store");
    let verify = |what: &str| {
        let out = Command::new(BIN).args(["verify", "--storage"]).arg(&copy).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!out.status.success(), "{what}: verify passed:\n{text}");
        text
    };
    // Same size, one byte changed.
    let mut bytes = std::fs::read(&obj).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&obj, &bytes).unwrap();
    let text = verify("changed object");
    assert!(text.contains("p5/random.bin") && text.contains("CRC-64"), "{text}");
    // Gone.
    std::fs::remove_file(&obj).unwrap();
    let text = verify("missing object");
    assert!(text.contains("p5/random.bin") && text.contains("missing"), "{text}");
}
