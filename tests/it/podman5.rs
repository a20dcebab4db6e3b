//! Issue: every store podman users have. The fidelity checks of the podman 4.3 store, run
//! on a store written by a current podman (5.x from Debian trixie, in a chroot), which
//! adds zstd:chunked images pulled with partial pulls (also with `use_hard_links` and
//! `convert_images`), `toc-digest`/`big-data-names` in layers.json and chunked layer big
//! data. Tools that read or write this store are podman 5's own.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

use cstor_fs::live::Live;
use cstor_fs::store::{config, Store};

use crate::common::*;
use crate::mount::tree_check;
use crate::serve::{podman_pull_same_id, skopeo_copies};
use crate::store::{
    all_layers, base_layer_check, check_against_skopeo, check_against_skopeo_min, live, random_reads_check,
    verbatim_and_rewritten_check,
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
fn podman5_vfs_layers_rebuild_exactly_and_equal_skopeo_export() {
    let fx = Fixture::podman5_vfs();
    let layers = all_layers(&live(&fx.storage, fx.driver));
    check_against_skopeo(fx, &layers);
}

#[test]
fn podman5_base_layer_content_is_complete() {
    base_layer_check(fx());
}

#[test]
fn podman5_random_reads_equal_slices_of_the_whole() {
    random_reads_check(fx());
}

#[test]
fn podman5_tree_serves_every_blob_and_manifest_byte_exact() {
    tree_check(fx());
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
    let s = Daemon::serve(&fx.storage, "nginx");
    skopeo_copies(&s, fx);
    podman_pull_same_id(&s, fx);
    let dst = MiniStore::with_tools("overlay", fx.tools);
    for name in ["localhost/p5/chunked:1", "localhost/p5/hardlinks:1", "localhost/p5/converted:1"] {
        let remote = format!("{}/{name}", s.addr());
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

/// `cstor-fs list` for the store podman reads as graphroot + image store + additional
/// image store: one line per image and name, `ID NAME` pairs as `podman images --all`.
fn listed_images(out: &str) -> BTreeSet<(String, String)> {
    let mut set = BTreeSet::new();
    let images = out.split("\nimages:\n").nth(1).expect("an images: section");
    for line in images.lines().take_while(|l| l.starts_with("  ")) {
        let Some(rest) = line.strip_prefix("    ") else { continue };
        let (id, rest) = rest.split_once(' ').unwrap();
        let names = rest.split(" served as ").next().unwrap();
        for n in names.split(' ') {
            set.insert((id.to_string(), n.replace("<none>", "<none>:<none>")));
        }
    }
    set
}

fn cli_with_conf(fx: &Fixture, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .arg("--storage")
        .arg(&fx.storage)
        .env("CONTAINERS_STORAGE_CONF", fx.root.join("conf/storage.conf"))
        .output()
        .unwrap()
}

#[test]
fn image_store_and_additional_stores_are_served_like_podman_lists_them() {
    let fx = Fixture::multi_store();
    let out = cli_with_conf(fx, &["list"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list = String::from_utf8(out.stdout).unwrap();
    let ours = listed_images(&list);
    let podman = stdout(&mut fx.tool(
        "podman",
        &["images", "--all", "--no-trunc", "--format", "{{.ID}} {{.Repository}}:{{.Tag}} {{.Digest}}"],
    ));
    let mut theirs = BTreeSet::new();
    for line in podman.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let id = f[0].trim_start_matches("sha256:").to_string();
        theirs.insert((id.clone(), f[1].to_string()));
        // Imported and built here: served verbatim, under podman's own digest.
        let served = list.lines().find(|l| l.starts_with(&format!("    {id} "))).unwrap();
        assert!(served.contains(f[2]), "{id}: podman's digest {} not served: {served}", f[2]);
    }
    assert_eq!(ours, theirs, "cstor-fs list vs podman images --all\n{list}\n{podman}");
    assert!(theirs.len() >= 6, "{podman}");
    for store in ["from image store", "from graphroot", "from additional image store"] {
        assert!(list.contains(store), "{store}: {list}");
    }
    // The name in two stores is the graphroot's image's, as podman resolves it.
    let both =
        stdout(&mut fx.tool("podman", &["image", "inspect", "--format", "{{.Digest}}", "localhost/multi/both:1"]));
    assert!(list.contains(&format!("localhost/multi/both\n  tag 1 -> {}", both.trim())), "{list}");
    // Every blob of every store byte-exact.
    let out = cli_with_conf(fx, &["verify"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains(" 0 failed"), "{text}{}", String::from_utf8_lossy(&out.stderr));
}

/// Each store is watched like the graphroot: an image added to the additional store
/// shows in the next view; a store that cannot be read is a warning.
#[test]
fn additional_stores_are_watched_and_an_unreadable_one_is_a_warning() {
    let fx = Fixture::multi_store();
    let tmp = TempDir::new("multi");
    let copy = tmp.path().join("m");
    run(Command::new("cp").arg("-a").arg(&fx.root).arg(&copy));
    let conf = |name: &str, body: String| {
        let p = copy.join("conf").join(name);
        std::fs::write(&p, body).unwrap();
        p
    };
    let graph = copy.join("graph");
    let ais = copy.join("ais");
    let main_conf = conf(
        "copy.conf",
        format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}/run\"\nimagestore = \"{}/images\"\n\
             [storage.options]\nadditionalimagestores = [\"{}\"]\n",
            graph.display(),
            copy.display(),
            copy.display(),
            ais.display()
        ),
    );
    let ais_conf = conf(
        "copy-ais.conf",
        format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}/ais-run\"\n",
            ais.display(),
            copy.display()
        ),
    );
    let env = config::Env { storage_conf: Some(main_conf), ..config::Env::default() };
    let req = config::Request { graphroot: Some(graph.clone()), driver: None };
    let (loc, others) = config::resolve_all(&req, &env).unwrap();
    assert_eq!(others.additional, std::slice::from_ref(&ais));
    let live = Live::new(Store::open(loc).unwrap().with_image_stores(others), 64 << 20).unwrap();
    let before = live.view().registry.repos.len();
    assert!(live.view().registry.repos.contains_key("localhost/multi/in-additional"));
    let tar = tmp.path().join("new.tar");
    {
        let mut b = tar::Builder::new(std::fs::File::create(&tar).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_size(4);
        h.set_mode(0o644);
        b.append_data(&mut h, "new.txt", &b"new\n"[..]).unwrap();
        b.into_inner().unwrap();
    }
    // (podman's own database records the store's old path: start it afresh.)
    let _ = std::fs::remove_file(ais.join("db.sql"));
    let script = format!(
        "export HOME={0}; CONTAINERS_STORAGE_CONF={1} podman import -q {2} localhost/multi/added:1",
        copy.display(),
        ais_conf.display(),
        tar.display()
    );
    run(&mut tools_cmd(fx.tools, &copy, "bash", &["-c", &script]));
    let view = live.refresh().unwrap().expect("a change in the additional store is a new view");
    assert_eq!(view.registry.repos.len(), before + 1);
    assert!(view.registry.repos.contains_key("localhost/multi/added"));
    // An additional store that is not a store: a warning, the rest still served.
    let broken = conf(
        "broken.conf",
        format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}/run\"\n\
             [storage.options]\nadditionalimagestores = [\"{}\", \"{}\"]\n",
            graph.display(),
            copy.display(),
            copy.join("conf/broken.conf").display(),
            copy.join("nowhere").display()
        ),
    );
    let out = Command::new(BIN)
        .args(["list", "--storage"])
        .arg(&graph)
        .env("CONTAINERS_STORAGE_CONF", &broken)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("localhost/multi/in-graphroot"), "{text}");
    assert!(text.contains("nowhere: this additional image store does not exist"), "{text}");
    assert!(text.contains("broken.conf"), "{text}");
}

/// Layer records in `volatile-layers.json` (where containers-storage keeps the records of
/// volatile layers) are read like those of `layers.json`.
#[test]
fn layers_recorded_in_volatile_layers_json_are_read() {
    let s = MiniStore::new("overlay");
    s.import("localhost/vol:1", &[("v.txt", b"volatile record\n")]);
    let dir = s.storage.join("overlay-layers");
    let layers: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(dir.join("layers.json")).unwrap()).unwrap();
    assert_eq!(layers.len(), 1);
    std::fs::write(dir.join("volatile-layers.json"), serde_json::to_vec(&layers).unwrap()).unwrap();
    std::fs::write(dir.join("layers.json"), b"[]").unwrap();
    let out = Command::new(BIN).args(["verify", "--storage"]).arg(&s.storage).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("3 verified, 0 failed"), "{text}");
    let list = stdout(Command::new(BIN).args(["list", "--storage"]).arg(&s.storage));
    assert!(list.contains("localhost/vol\n  tag 1 -> sha256:") && !list.contains("left out"), "{list}");
}
