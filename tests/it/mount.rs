//! Issue: the FUSE mount. Real mounts of real stores, read with std and coreutils.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn repos(v2: &Path) -> Vec<String> {
    json(&v2.join("_catalog"))["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn tree_serves_every_blob_and_manifest_byte_exact() {
    tree_check(Fixture::shared("overlay"));
}

/// Mounts `fx` and walks the whole tree: every manifest and blob byte-exact.
pub(crate) fn tree_check(fx: &Fixture) {
    let m = Daemon::mount(&fx.storage, "");
    let v2 = m.v2();
    let repos = repos(&v2);
    assert!(repos.contains(&"localhost/app/web".to_string()) && repos.contains(&"untagged".to_string()), "{repos:?}");
    let list_out = stdout(Command::new(BIN).arg("list").arg("--storage").arg(&fx.storage));
    let mut blobs_checked = 0;
    let mut hashed = std::collections::BTreeSet::new();
    for repo in &repos {
        let dir = v2.join(repo);
        let tags = json(&dir.join("tags/list"));
        assert_eq!(tags["name"], repo.as_str());
        for tag in tags["tags"].as_array().unwrap() {
            let tag = tag.as_str().unwrap();
            let target = std::fs::read_link(dir.join("manifests").join(tag)).unwrap();
            let digest = target.to_str().unwrap().to_string();
            let by_tag = std::fs::read(dir.join("manifests").join(tag)).unwrap();
            let by_digest = std::fs::read(dir.join("manifests").join(&digest)).unwrap();
            assert!(by_tag == by_digest, "{repo}:{tag}");
            assert_eq!(format!("sha256:{}", sha256_hex(&by_tag)), digest, "{repo}:{tag}");
            // The server-facing name carries the media type.
            let refdir = dir.join("manifests/.ref").join(tag);
            let typed: Vec<_> =
                std::fs::read_dir(&refdir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
            assert_eq!(typed.len(), 1, "{typed:?}");
            let kind = typed[0].strip_prefix(&format!("{digest}.")).unwrap();
            let man = json(&dir.join("manifests").join(&digest));
            // OCI allows leaving mediaType out (podman import does).
            let mt = match man["mediaType"].as_str() {
                Some(mt) => mt.to_string(),
                None if man.get("manifests").is_some() => "application/vnd.oci.image.index.v1+json".into(),
                None => "application/vnd.oci.image.manifest.v1+json".into(),
            };
            let expect = match mt.as_str() {
                "application/vnd.oci.image.manifest.v1+json" => "oci-manifest",
                "application/vnd.oci.image.index.v1+json" => "oci-index",
                "application/vnd.docker.distribution.manifest.v2+json" => "docker-manifest",
                "application/vnd.docker.distribution.manifest.list.v2+json" => "docker-list",
                other => panic!("{other}"),
            };
            assert_eq!(kind, expect);
            assert!(std::fs::read(refdir.join(&typed[0])).unwrap() == by_tag);
        }
        for e in std::fs::read_dir(dir.join("blobs")).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            let size = e.metadata().unwrap().len();
            assert!(list_out.contains(&format!("blob {name} {size} bytes")), "ls size of {repo} {name}");
            // The same blob in several repositories is the same node content: hash once.
            if hashed.insert(name.clone()) {
                assert_eq!(format!("sha256:{}", sha256_file(&e.path())), name, "{repo} blob");
            }
            blobs_checked += 1;
        }
    }
    assert!(blobs_checked >= 20, "{blobs_checked}");
    // People browse it: ls -l shows where tags point, tar lists a layer.
    let ls = stdout(Command::new("ls").arg("-l").arg(v2.join("localhost/app/web/manifests")));
    assert!(ls.contains("v1 -> sha256:"), "{ls}");
    assert!(!ls.contains(".ref"), "hidden entries stay out of plain ls: {ls}");
    let web = json(&v2.join("localhost/app/web/manifests/v1"));
    let top = web["layers"].as_array().unwrap().last().unwrap()["digest"].as_str().unwrap().to_string();
    let listing = stdout(Command::new("tar").arg("tvf").arg(v2.join("localhost/app/web/blobs").join(&top)));
    assert!(!listing.is_empty());
    // tags/list?last=
    let after = json(&v2.join("localhost/app/web/tags/.after/latest"));
    assert_eq!(after["tags"], serde_json::json!(["v1"]));
    let after = json(&v2.join("localhost/app/web/tags/.after/a-tag-that-does-not-exist"));
    assert_eq!(after["tags"], serde_json::json!(["latest", "v1"]));
}

fn errno_of<T>(r: std::io::Result<T>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

#[test]
fn writes_fail_with_erofs() {
    let s = MiniStore::new("overlay");
    s.import("localhost/ro:1", &[("f", b"x")]);
    let m = Daemon::mount(&s.storage, "");
    let v2 = m.v2();
    let tags = v2.join("localhost/ro/tags/list");
    assert_eq!(errno_of(std::fs::write(v2.join("new"), b"x")), Some(libc::EROFS));
    assert_eq!(errno_of(std::fs::OpenOptions::new().write(true).open(&tags)), Some(libc::EROFS));
    assert_eq!(errno_of(std::fs::create_dir(v2.join("d"))), Some(libc::EROFS));
    assert_eq!(errno_of(std::fs::remove_file(&tags)), Some(libc::EROFS));
    assert_eq!(errno_of(std::fs::rename(&tags, v2.join("x"))), Some(libc::EROFS));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(errno_of(std::fs::set_permissions(&tags, std::fs::Permissions::from_mode(0o644))), Some(libc::EROFS));
    let md = std::fs::metadata(&tags).unwrap();
    assert_eq!(md.permissions().mode() & 0o7777, 0o444);
    assert_eq!(std::fs::metadata(v2.join("localhost")).unwrap().permissions().mode() & 0o7777, 0o555);
    drop(m);
    // What the files show is configurable.
    let m = Daemon::mount(&s.storage, "uid=33,gid=34,file_mode=0440,dir_mode=0550");
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(m.v2().join("localhost/ro/tags/list")).unwrap();
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (33, 34, 0o440));
    let md = std::fs::metadata(m.v2().join("localhost")).unwrap();
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (33, 34, 0o550));
}

#[test]
fn changes_show_within_a_second_and_removed_layers_fail_with_eio() {
    let s = MiniStore::new("overlay");
    s.import("localhost/keep:1", &[("k", b"keep")]);
    // Two 8 MiB payloads: reading the first leaves the second unopened and uncached.
    let big1: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
    let big2: Vec<u8> = (0..8u32 << 20).map(|i| (i % 241) as u8).collect();
    s.import("localhost/gone:1", &[("one", &big1), ("two", &big2)]);
    let m = Daemon::mount(&s.storage, "");
    let v2 = m.v2();
    let man = json(&v2.join("localhost/gone/manifests/1"));
    let layer = man["layers"][0]["digest"].as_str().unwrap().to_string();
    let blob = v2.join("localhost/gone/blobs").join(&layer);
    let f = std::fs::File::open(&blob).unwrap();
    let mut head = vec![0u8; 4096];
    f.read_exact_at(&mut head, 0).unwrap();

    // A new image appears within a second.
    s.import("localhost/new:1", &[("n", b"new")]);
    let t = Instant::now();
    wait_for("localhost/new in the tree", Duration::from_secs(5), || v2.join("localhost/new/tags/list").exists());
    let appeared = t.elapsed();
    assert!(repos(&v2).contains(&"localhost/new".to_string()));
    // A removed one disappears within a second.
    run(&mut s.tool("podman", &["rmi", "localhost/gone:1"]));
    let t = Instant::now();
    wait_for("localhost/gone to vanish", Duration::from_secs(5), || {
        !v2.join("localhost/gone").exists() && !blob.exists()
    });
    let vanished = t.elapsed();
    assert!(!repos(&v2).contains(&"localhost/gone".to_string()));
    assert!(
        appeared < Duration::from_secs(1) && vanished < Duration::from_secs(1),
        "appeared {appeared:?}, vanished {vanished:?}"
    );

    // The open file: the unread second payload is gone, so a read there is EIO.
    let size = f.metadata().unwrap().len();
    let mut tail = vec![0u8; 4096];
    let r = f.read_exact_at(&mut tail, size - 4096 - 1024);
    assert_eq!(errno_of(r), Some(libc::EIO), "read of a removed layer must fail with EIO");
    // Other files keep working.
    let keep = v2.join("localhost/keep/manifests/1");
    assert!(std::fs::read(keep).is_ok());
}

/// mount(8) runs helpers with no PATH, so mount.fuse3's shell finds `cstor-fs` only in
/// the default path: put this build at /usr/local/bin/cstor-fs for the test, and put
/// back whatever was there.
struct InstalledBinary {
    backup: Option<PathBuf>,
    placed: bool,
}

const INSTALLED: &str = "/usr/local/bin/cstor-fs";

impl InstalledBinary {
    fn new() -> InstalledBinary {
        let dst = Path::new(INSTALLED);
        if std::fs::read(dst).ok() == std::fs::read(BIN).ok() {
            return InstalledBinary { backup: None, placed: false };
        }
        let backup = dst.exists().then(|| {
            let b = PathBuf::from(format!("{INSTALLED}.before-test-{}", std::process::id()));
            std::fs::rename(dst, &b).unwrap();
            b
        });
        std::os::unix::fs::symlink(BIN, dst).unwrap();
        InstalledBinary { backup, placed: true }
    }
}

impl Drop for InstalledBinary {
    fn drop(&mut self) {
        if self.placed {
            let _ = std::fs::remove_file(INSTALLED);
        }
        if let Some(b) = &self.backup {
            let _ = std::fs::rename(b, INSTALLED);
        }
    }
}

#[test]
fn mount8_fstab_style_allow_other_and_umount() {
    let fx = Fixture::shared("overlay");
    let tmp = TempDir::new("mount8");
    let _bin = InstalledBinary::new();
    let path = std::env::var("PATH").unwrap();
    let mnt = tmp.path().join("m");
    std::fs::create_dir(&mnt).unwrap();
    // -t fuse.cstor-fs STORE MOUNTPOINT, as in fstab.
    let t = Instant::now();
    run(Command::new("mount")
        .env("PATH", &path)
        .args(["-t", "fuse.cstor-fs"])
        .arg(&fx.storage)
        .arg(&mnt)
        .args(["-o", "allow_other,nodev,nosuid,noatime"]));
    assert!(is_mounted(&mnt), "mount(8) returned before the mount was live");
    eprintln!("mount(8) took {:?}", t.elapsed());
    // Another user can read it (allow_other, modes 0444/0555).
    let out = stdout(Command::new("runuser").args(["-u", "nobody", "--", "cat"]).arg(mnt.join("v2/_catalog")));
    assert!(out.contains("localhost/app/web"), "{out}");
    run(Command::new("umount").arg(&mnt));
    wait_for("umount", Duration::from_secs(5), || !is_mounted(&mnt));
    // -t fuse with the program as the source and the store as an option.
    run(Command::new("mount")
        .env("PATH", &path)
        .args(["-t", "fuse", "cstor-fs"])
        .arg(&mnt)
        .arg("-o")
        .arg(format!("storage={},ro,allow_other,auto_unmount", fx.storage.display())));
    assert!(std::fs::read(mnt.join("v2/_catalog")).is_ok());
    run(Command::new("fusermount3").arg("-u").arg(&mnt));
    wait_for("fusermount3 -u", Duration::from_secs(5), || !is_mounted(&mnt));
    // A failed mount says why and exits non-zero.
    let out = Command::new(BIN).arg(tmp.path().join("no-such-store")).arg(&mnt).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-store"), "{err}");
    assert!(!is_mounted(&mnt));
}

#[test]
fn two_foreground_mounts_at_once() {
    let fx = Fixture::shared("overlay");
    let mut a = Daemon::mount(&fx.storage, "");
    let b = Daemon::mount(&fx.storage, "");
    assert_eq!(std::fs::read(a.v2().join("_catalog")).unwrap(), std::fs::read(b.v2().join("_catalog")).unwrap());
    a.unmount();
    assert!(!is_mounted(a.dir()));
    assert!(std::fs::read(b.v2().join("localhost/app/web/tags/list")).is_ok());
}

#[test]
fn concurrent_readers_get_correct_bytes() {
    let fx = Fixture::shared("overlay");
    let m = Daemon::mount(&fx.storage, "");
    let v2 = m.v2();
    let mut blobs: Vec<PathBuf> = Vec::new();
    for repo in ["localhost/app/web", "localhost/pulled/gzip", "localhost/edited"] {
        for e in std::fs::read_dir(v2.join(repo).join("blobs")).unwrap() {
            blobs.push(e.unwrap().path());
        }
    }
    let mut expected = BTreeMap::new();
    for b in &blobs {
        expected.insert(b.clone(), std::fs::read(b).unwrap());
    }
    let expected = std::sync::Arc::new(expected);
    let blobs = std::sync::Arc::new(blobs);
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let (expected, blobs) = (expected.clone(), blobs.clone());
            std::thread::spawn(move || {
                let mut s = 0x9e3779b97f4a7c15u64 ^ (t + 1);
                for i in 0..200 {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    // Half the threads share one blob, the others spread out.
                    let b = if t % 2 == 0 { &blobs[0] } else { &blobs[(s as usize) % blobs.len()] };
                    let want = &expected[b];
                    if i % 50 == 0 {
                        let mut all = Vec::new();
                        std::fs::File::open(b).unwrap().read_to_end(&mut all).unwrap();
                        assert!(all == *want, "{}", b.display());
                        continue;
                    }
                    let f = std::fs::File::open(b).unwrap();
                    let off = s % (want.len() as u64).max(1);
                    let len = ((s >> 20) % 2_000_000) as usize + 1;
                    let mut buf = vec![0u8; len];
                    let mut got = 0;
                    while got < len {
                        let n = f.read_at(&mut buf[got..], off + got as u64).unwrap();
                        if n == 0 {
                            break;
                        }
                        got += n;
                    }
                    let end = (off as usize + len).min(want.len());
                    assert_eq!(got, end - off as usize);
                    assert!(buf[..got] == want[off as usize..end], "{} at {off}", b.display());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}
